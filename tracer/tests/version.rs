//! `tcptrace --version` names the commit and the sha256 of the kernel programs'
//! object that the binary really embeds. The ground truth is found here
//! independently: the BPF ELF object is located in the binary's own bytes and
//! hashed, and the commit is asked of git.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::process::Command;

use object::{
    LittleEndian,
    elf::{EM_BPF, FileHeader64},
    read::elf::{FileHeader as _, SectionHeader as _},
};
use sha2::{Digest as _, Sha256};

/// Every little-endian 64-bit ELF object for the BPF machine inside `binary`,
/// each cut at its end: the furthest of its section header table and its
/// sections' file contents.
fn embedded_bpf_objects(binary: &[u8]) -> Vec<&[u8]> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = binary[from..].windows(4).position(|w| w == b"\x7fELF") {
        let data = &binary[from + pos..];
        from += pos + 1;
        let Ok(header) = FileHeader64::<LittleEndian>::parse(data) else { continue };
        let Ok(endian) = header.endian() else { continue };
        if header.e_machine(endian) != EM_BPF {
            continue;
        }
        let sections = header.section_headers(endian, data).unwrap();
        let table_end =
            header.e_shoff(endian) + sections.len() as u64 * u64::from(header.e_shentsize(endian));
        let end = sections
            .iter()
            .filter_map(|s| s.file_range(endian))
            .map(|(offset, size)| offset + size)
            .chain([table_end])
            .max()
            .unwrap();
        found.push(&data[..usize::try_from(end).unwrap()]);
    }
    found
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn version_names_the_embedded_bpf_object_and_the_commit() {
    let exe = env!("CARGO_BIN_EXE_tcptrace");
    let out = Command::new(exe).arg("--version").output().unwrap();
    assert!(out.status.success(), "tcptrace --version: {}", out.status);
    let line = String::from_utf8(out.stdout).unwrap();
    let line = line.trim_end();

    let binary = std::fs::read(exe).unwrap();
    let objects = embedded_bpf_objects(&binary);
    assert_eq!(objects.len(), 1, "exactly one BPF object embedded in {exe}");
    let sha = hex(&Sha256::digest(objects[0]));

    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    let printed_commit = line
        .split_once("(commit ")
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(commit, _)| commit)
        .unwrap_or_else(|| panic!("no commit in {line:?}"));
    match commit {
        Some(full) => assert!(
            printed_commit.len() >= 7 && full.starts_with(printed_commit),
            "{line:?} names commit {printed_commit}, HEAD is {full}"
        ),
        None => assert_eq!(printed_commit, "unknown", "no git here"),
    }
    assert_eq!(
        line,
        format!("tcptrace {} (commit {printed_commit}, bpf sha256:{sha})", env!("CARGO_PKG_VERSION"))
    );
}
