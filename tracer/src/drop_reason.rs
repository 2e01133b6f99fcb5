//! Names of the kernel's reasons for dropping a packet (`enum
//! skb_drop_reason`). Their values differ between kernels (each release
//! inserts new ones in the middle), so the names come from the traced
//! kernel's BTF, or from a record file's header when replaying, once per
//! run; events and the tracker keep only the number.

use std::sync::OnceLock;

/// The enum's prefix, left out of the names shown.
const PREFIX: &str = "SKB_DROP_REASON_";

static NAMES: OnceLock<Vec<(u32, String)>> = OnceLock::new();

/// Sets the table for this run (the first call wins: one kernel per run).
pub fn set(names: Vec<(u32, String)>) {
    let _ = NAMES.set(names);
}

/// The table in force (empty before [`set`]), for record files.
pub fn table() -> Vec<(u32, String)> {
    NAMES.get().cloned().unwrap_or_default()
}

/// The short name of `reason` (`NO_SOCKET`, `TCP_LISTEN_OVERFLOW`), or
/// `reason N` when the table lacks it.
pub fn name(reason: u32) -> String {
    name_in(NAMES.get().map_or(&[][..], Vec::as_slice), reason)
}

fn name_in(table: &[(u32, String)], reason: u32) -> String {
    match table.iter().find(|(v, _)| *v == reason) {
        Some((_, full)) => full.strip_prefix(PREFIX).unwrap_or(full).to_string(),
        None => format!("reason {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_prefix_and_unknown_values_keep_their_number() {
        let table = vec![(3, "SKB_DROP_REASON_NO_SOCKET".to_string()), (1, "SKB_CONSUMED".to_string())];
        assert_eq!(name_in(&table, 3), "NO_SOCKET");
        assert_eq!(name_in(&table, 1), "SKB_CONSUMED");
        assert_eq!(name_in(&table, 77), "reason 77");
    }
}
