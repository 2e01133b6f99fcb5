//! The process a report row is about, written as the row's `"pid"` and
//! `"comm"` fields.

use std::borrow::Cow;

use serde::{Serialize, Serializer, ser::SerializeStruct};

use crate::event::Owner;

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
            Self::Process(owner) => Some(owner.pid),
            Self::Unknown | Self::Label(_) => None,
        }
    }

    /// The name as JSON writes it (invalid UTF-8 replaced), or the label.
    pub fn comm(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::Process(owner) => Some(owner.comm.lossy()),
            Self::Label(label) => Some(Cow::Borrowed(label)),
            Self::Unknown => None,
        }
    }

    /// The name for terminals, escaped from its raw bytes (`\x1b`, `\xff`)
    /// as the event stream shows it; or the label.
    pub fn comm_text(&self) -> Option<String> {
        match self {
            Self::Process(owner) => Some(owner.comm.to_string()),
            Self::Label(label) => Some(label.clone()),
            Self::Unknown => None,
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
        let mut row = s.serialize_struct("RowOwner", 2)?;
        row.serialize_field("pid", &self.pid())?;
        row.serialize_field("comm", &self.comm())?;
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
        let expected = "{\"netns\":1,\"pid\":7,\"comm\":\"a\\u001b\u{fffd}b\",\"count\":2}";
        assert_eq!(json(RowOwner::Process(owner)), expected);
        assert_eq!(json(RowOwner::Unknown), r#"{"netns":1,"pid":null,"comm":null,"count":2}"#);
        assert_eq!(
            json(RowOwner::Label("(other)".into())),
            r#"{"netns":1,"pid":null,"comm":"(other)","count":2}"#
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
