//! A program's `recursion_misses`, read with `BPF_OBJ_GET_INFO_BY_FD`.
//!
//! The kernel skips a tracing program (tp_btf, and since Linux 6.7 also a
//! classic tracepoint program) when the same program is already running on
//! that CPU, e.g. when a softirq interrupts it and hits the same hook, and
//! counts the skipped run in `bpf_prog_info.recursion_misses` (Linux >= 5.12).
//! aya 0.14's `ProgramInfo` keeps that field private, so it is read here with
//! the system call itself.

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `BPF_OBJ_GET_INFO_BY_FD` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `struct bpf_prog_info` of include/uapi/linux/bpf.h up to and including
/// `recursion_misses` (the kernel's struct goes on; the prefix is enough:
/// the kernel fills `min(info_len, its size)` bytes and says how many). Every
/// field is zero on the way in, which tells the kernel not to fill any of the
/// arrays (`map_ids`, `jited_prog_insns`, ...).
#[repr(C)]
#[derive(Debug, Default)]
#[allow(dead_code, reason = "the kernel's layout, field by field: only recursion_misses is read")]
struct BpfProgInfo {
    type_: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    /// `gpl_compatible:1` and 31 bits of padding.
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    /// Linux >= 5.12 (commit 9ed9e9ba2337, "bpf: Count the number of times
    /// recursion was prevented").
    recursion_misses: u64,
}

// The UAPI layout (include/uapi/linux/bpf.h; the same offsets in this host's
// kernel BTF: `recursion_misses` at bit 1664). A kernel that predates a field
// returns a shorter `info_len`, checked below.
const _: () = assert!(offset_of!(BpfProgInfo, name) == 64);
const _: () = assert!(offset_of!(BpfProgInfo, run_time_ns) == 192);
const _: () = assert!(offset_of!(BpfProgInfo, run_cnt) == 200);
const _: () = assert!(offset_of!(BpfProgInfo, recursion_misses) == 208);
const _: () = assert!(size_of::<BpfProgInfo>() == 216);

/// The `info` member of `union bpf_attr` used by `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    /// In: the size of our buffer. Out: how many bytes the kernel filled.
    info_len: u32,
    info: u64,
}

const _: () = assert!(size_of::<InfoAttr>() == 16);

/// Whether a kernel that filled `info_len` bytes of `bpf_prog_info`
/// reported `recursion_misses`.
fn has_recursion_misses(info_len: u32) -> bool {
    info_len as usize >= offset_of!(BpfProgInfo, recursion_misses) + size_of::<u64>()
}

/// What the kernel counts of a program since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Runs and their total time (`run_cnt`, `run_time_ns`): counted only
    /// while `kernel.bpf_stats_enabled` is 1.
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Runs skipped because the program was already running on that CPU;
    /// None where the kernel does not report it (before Linux 5.12).
    pub recursion_misses: Option<u64>,
}

/// How often the kernel skipped the program behind `fd` because it was
/// already running on that CPU, since it was loaded. `Ok(None)`: this kernel
/// does not report it (before Linux 5.12).
pub fn recursion_misses(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    Ok(program_stats(fd)?.recursion_misses)
}

/// [`ProgramStats`] of the program behind `fd`.
pub fn program_stats(fd: BorrowedFd<'_>) -> io::Result<ProgramStats> {
    let mut info = BpfProgInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<BpfProgInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: `attr` is a valid `bpf_attr.info` of the size passed (the kernel
    // zero-extends a shorter attr); `info` is writable for `info_len` bytes,
    // and both outlive the call. The kernel writes at most `info_len` bytes
    // of `info` and the `info_len` field of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::from_mut(&mut attr),
            size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ProgramStats {
        run_cnt: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: has_recursion_misses(attr.info_len).then_some(info.recursion_misses),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_returning_a_shorter_struct_has_no_recursion_misses() {
        // Linux 5.1-5.11: bpf_prog_info ends with run_cnt.
        assert!(!has_recursion_misses(208));
        // 4.13: the first version.
        assert!(!has_recursion_misses(40));
        assert!(!has_recursion_misses(0));
        // 5.12 and later fill our whole prefix.
        assert!(has_recursion_misses(216));
    }

    #[test]
    fn a_file_that_is_no_program_is_an_error_not_a_count() {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let fd = std::os::fd::AsFd::as_fd(&file);
        assert!(recursion_misses(fd).is_err());
    }
}
