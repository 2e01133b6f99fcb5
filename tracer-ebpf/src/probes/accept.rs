//! `accept()` returning a TCP socket: the end of a child's wait in its
//! listener's accept queue, and the process that owns it from then on.
//! Classic syscall tracepoints (per syscall, cheap): these kernels have no
//! kprobes for `inet_csk_accept`, and no tracepoint inside accept.
use aya_ebpf::{helpers::bpf_get_current_task, macros::tracepoint, programs::TracePointContext};
use tracer_common::{AF_INET, AF_INET6, flags, kind};

use crate::{
    emit::{emit, read_failed, tracing},
    read::{fill_sock_fields, fill_task, is_tcp, read},
    summary,
};

program! {
    /// `syscalls:sys_exit_accept4` (what glibc's and most runtimes' accept use).
    #[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
    pub fn tcptrace_accept4_exit(TracePointContext) -> u32 = try_accept_exit;
}

program! {
    /// `syscalls:sys_exit_accept` (the older syscall, still used on x86_64).
    #[tracepoint(category = "syscalls", name = "sys_exit_accept")]
    pub fn tcptrace_accept_exit(TracePointContext) -> u32 = try_accept_exit;
}

#[inline(always)]
fn try_accept_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    tracing()?;
    // SAFETY: a probe read of the record's `ret` field, a long at offset 16
    // (tracefs format of every sys_exit_* event).
    let ret: i64 = unsafe { ctx.read_at(16) }.map_err(read_failed)?;
    if ret < 0 {
        return Ok(0);
    }
    let sk = socket_of_fd(ret as u64).map_err(read_failed)?;
    if sk == 0 {
        return Ok(0);
    }
    let family: u16 = read(sk, config!(skc_family)).map_err(read_failed)?;
    if (family != AF_INET as u16 && family != AF_INET6 as u16) || !is_tcp(sk).map_err(read_failed)? {
        return Ok(0);
    }
    // Summary mode: noted in the child's pending entry, sent with its steps.
    if config!(summaries) != 0
        && let Ok(cookie) = stored_cookie(sk)
        && summary::note_accept(cookie)
    {
        return Ok(0);
    }
    emit(|event| {
        event.kind = kind::ACCEPTED;
        fill_sock_fields(event, sk)?;
        // The syscall's own task: by construction the process that accepts.
        event.flags |= flags::OWNED_BY_USER;
        fill_task(event);
        event.cookie = stored_cookie(sk)?;
        Ok(())
    });
    Ok(0)
}

/// The `struct sock` behind descriptor `fd` of the current task:
/// `task->files->fdt->fd[fd]->private_data` (a `struct socket`, since
/// accept() returns only sockets) `->sk`. 0 when a link is missing.
#[inline(always)]
fn socket_of_fd(fd: u64) -> Result<u64, i32> {
    // SAFETY: a BPF helper without preconditions; the address it returns is
    // only read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, config!(task_files))?;
    if files == 0 {
        return Ok(0);
    }
    let fdt: u64 = read(files, config!(files_fdt))?;
    let max_fds: u32 = read(fdt, config!(fdt_max_fds))?;
    if fd >= max_fds as u64 {
        return Ok(0);
    }
    let fds: u64 = read(fdt, config!(fdt_fd))?;
    let file: u64 = read(fds + fd * 8, 0)?;
    if file == 0 {
        return Ok(0);
    }
    let socket: u64 = read(file, config!(file_private_data))?;
    if socket == 0 {
        return Ok(0);
    }
    read(socket, config!(socket_sk))
}

/// The cookie the state program gave this socket (`bpf_get_socket_cookie`
/// is not available to syscall tracepoints): the one the kernel stored at
/// the first request, or the address-based one on kernels without the
/// helper (`KernelConfig::cookie_mask`).
#[inline(always)]
fn stored_cookie(sk: u64) -> Result<u64, i32> {
    let mask = config!(cookie_mask);
    if mask != 0 {
        return Ok(sk ^ mask);
    }
    read(sk, config!(skc_cookie))
}
