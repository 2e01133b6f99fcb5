//! Making one system call fail in a child process (a seccomp filter installed
//! between fork and exec): the natural way to make a hook's attach fail.

use std::{io, os::unix::process::CommandExt, process::Command};

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// offsetof(struct seccomp_data, nr) and (.., arch).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// After fork, before exec: system call `nr` fails with `errno` in the
/// child (and everything it execs); every other call is allowed.
pub fn fail_syscall(command: &mut Command, nr: libc::c_long, errno: i32) {
    let filter = [
        op(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        op(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        op(BPF_LD_W_ABS, 0, 0, DATA_NR),
        op(BPF_JEQ_K, 0, 1, nr as u32),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (errno as u32 & 0xffff)),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec only prctl(2) is called, with pointers to
    // data that lives in this (copied) address space until exec.
    unsafe {
        command.pre_exec(move || {
            let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
