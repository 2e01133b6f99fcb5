//! The process a report row is about, written as the row's `"pid"`,
//! `"comm"` and `"workload"` fields.

use std::{borrow::Cow, sync::Arc};

use serde::{Serialize, Serializer, ser::SerializeStruct};

use crate::{
    event::Owner,
    workload::{WorkloadOut, resolve::Workloads},
};

/// Flattened into a row (`#[serde(flatten)]`) it writes `"pid"` and
/// `"comm"`, null when unknown. It keeps the tracker's [`Owner`] as it is
/// (the name as its 16 raw bytes), so building a row allocates nothing for
/// it: the name becomes text only when the row is written, lossy UTF-8 for
/// JSON and escaped from the raw bytes for terminals.
#[derive(Clone, Debug, PartialEq)]
pub enum RowOwner {
    /// No process was seen for the row.
    Unknown,
    Process(Owner),
    /// A process whose cgroup names its workload (unit, container, pod).
    InWorkload(Owner, Arc<WorkloadOut>),
    /// A row that sums the rows beyond a cap: no pid, the label in `comm`.
    Label(String),
}

impl From<Option<Owner>> for RowOwner {
    fn from(owner: Option<Owner>) -> Self {
        owner.map_or(Self::Unknown, Self::Process)
    }
}

impl RowOwner {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Process(owner) | Self::InWorkload(owner, _) => Some(owner.pid),
            Self::Unknown | Self::Label(_) => None,
        }
    }

    /// The name as JSON writes it (invalid UTF-8 replaced), or the label.
    pub fn comm(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::Process(owner) | Self::InWorkload(owner, _) => Some(owner.comm.lossy()),
            Self::Label(label) => Some(Cow::Borrowed(label)),
            Self::Unknown => None,
        }
    }

    /// The name for terminals, escaped from its raw bytes (`\x1b`, `\xff`)
    /// as the event stream shows it; or the label.
    pub fn comm_text(&self) -> Option<String> {
        match self {
            Self::Process(owner) | Self::InWorkload(owner, _) => Some(owner.comm.to_string()),
            Self::Label(label) => Some(label.clone()),
            Self::Unknown => None,
        }
    }

    /// The owner, when the row has a process.
    pub fn owner(&self) -> Option<&Owner> {
        match self {
            Self::Process(owner) | Self::InWorkload(owner, _) => Some(owner),
            Self::Unknown | Self::Label(_) => None,
        }
    }

    pub fn workload(&self) -> Option<&WorkloadOut> {
        match self {
            Self::InWorkload(_, workload) => Some(workload),
            _ => None,
        }
    }

    /// The WORKLOAD cell of a text table: the workload's label, `-` when
    /// none is known.
    pub fn workload_cell(&self) -> String {
        self.workload().map_or_else(|| "-".to_string(), |w| w.label.clone())
    }

    /// Names the workload of a process row from its cgroup.
    pub fn place(&mut self, workloads: &mut Workloads) {
        if let Self::Process(owner) = self
            && let Some(workload) = workloads.of_process(owner.cgroup, owner.pid)
        {
            *self = Self::InWorkload(*owner, Arc::new(WorkloadOut::from(workload.as_ref())));
        }
    }

    /// The PID and COMM cells of a text table, `-` for what is unknown.
    pub fn cells(&self) -> (String, String) {
        let pid = self.pid().map_or_else(|| "-".to_string(), |p| p.to_string());
        (pid, self.comm_text().unwrap_or_else(|| "-".to_string()))
    }
}

impl Serialize for RowOwner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut row = s.serialize_struct("RowOwner", 3)?;
        row.serialize_field("pid", &self.pid())?;
        row.serialize_field("comm", &self.comm())?;
        row.serialize_field("workload", &self.workload())?;
        row.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;

    #[derive(Serialize)]
    struct Row {
        netns: u32,
        #[serde(flatten)]
        owner: RowOwner,
        count: u64,
    }

    fn json(owner: RowOwner) -> String {
        serde_json::to_string(&Row { netns: 1, owner, count: 2 }).expect("json")
    }

    #[test]
    fn flattened_it_writes_pid_and_comm_in_place() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"a\x1b\xffb");
        let owner = Owner { pid: 7, comm: Comm::new(raw), cgroup: 3 };
        let expected = "{\"netns\":1,\"pid\":7,\"comm\":\"a\\u001b\u{fffd}b\",\"workload\":null,\"count\":2}";
        assert_eq!(json(RowOwner::Process(owner)), expected);
        assert_eq!(
            json(RowOwner::Unknown),
            r#"{"netns":1,"pid":null,"comm":null,"workload":null,"count":2}"#
        );
        assert_eq!(
            json(RowOwner::Label("(other)".into())),
            r#"{"netns":1,"pid":null,"comm":"(other)","workload":null,"count":2}"#
        );
    }

    #[test]
    fn text_cells_escape_the_raw_bytes() {
        let owner = Owner { pid: 7, comm: Comm::new(*b"a\x1b\xffb\0\0\0\0\0\0\0\0\0\0\0\0"), cgroup: 3 };
        assert_eq!(RowOwner::Process(owner).cells(), ("7".to_string(), r"a\x1b\xffb".to_string()));
        assert_eq!(RowOwner::Unknown.cells(), ("-".to_string(), "-".to_string()));
        assert_eq!(RowOwner::Label("(other)".into()).cells(), ("-".to_string(), "(other)".to_string()));
    }
}
