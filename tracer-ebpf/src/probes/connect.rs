//! `connect()` failures and destinations (classic syscall tracepoints:
//! per-syscall, cheap).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{AF_INET, AF_INET6, flags, kind};

use crate::{
    emit::{emit, read_failed, tracing},
    maps::{CONNECTS, ConnectArgs},
    read::{fill_task, read},
};

const EINPROGRESS: i64 = 115;

program! {
    /// `syscalls:sys_enter_connect`: remember where the task connects to.
    #[tracepoint(category = "syscalls", name = "sys_enter_connect")]
    pub fn tcptrace_connect_enter(TracePointContext) -> u32 = try_connect_enter;
}

#[inline(always)]
fn try_connect_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    tracing()?;
    // Field offsets from tracefs format: uservaddr at 24.
    // SAFETY: reads the tracepoint record through bpf_probe_read_kernel (no
    // dereference in Rust; a bad offset is an error); `uservaddr` is a
    // pointer-sized field at offset 24 (tracefs format).
    let uaddr: u64 = unsafe { ctx.read_at(24) }.map_err(read_failed)?;
    if uaddr == 0 {
        return Ok(0);
    }
    // SAFETY (this and the reads below): bpf_probe_read_user copies from any
    // user address and fails, without faulting, where it is not readable; the
    // results are integers and byte arrays, valid for any bit pattern.
    let family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16) }.map_err(read_failed)?;
    let mut args = ConnectArgs { addr: [0; 16], family, port: 0, _pad: 0, sk: 0 };
    // SAFETY: as above.
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }.map_err(read_failed)?;
    args.port = u16::from_be(port);
    if family == AF_INET as u16 {
        // SAFETY: as above.
        let a: [u8; 4] =
            unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]) }.map_err(read_failed)?;
        args.addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 as u16 {
        // SAFETY: as above.
        args.addr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) }.map_err(read_failed)?;
    } else {
        return Ok(0);
    }
    if CONNECTS.insert(bpf_get_current_pid_tgid(), args, 0).is_err() {
        // Only when 16384 connects are in flight at once: worth telling.
        warn!(ctx, "connect() table full: timewait reuse and connect errors may be missed");
    }
    Ok(0)
}

program! {
    /// `syscalls:sys_exit_connect`: report failures (EADDRNOTAVAIL is the direct
    /// symptom of ephemeral port exhaustion).
    #[tracepoint(category = "syscalls", name = "sys_exit_connect")]
    pub fn tcptrace_connect_exit(TracePointContext) -> u32 = try_connect_exit;
}

#[inline(always)]
fn try_connect_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    tracing()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the reference is copied at once; the entry is keyed by this
    // task's pid_tgid and only this task inserts or removes it (here and in
    // sys_enter_connect), so nothing changes it meanwhile; map values stay
    // valid while the program runs.
    let Some(args) = (unsafe { CONNECTS.get(pid_tgid) }).copied() else {
        return Ok(0);
    };
    let _ = CONNECTS.remove(pid_tgid);
    // SAFETY: as for `uservaddr`: a probe read of the record's `ret` field, a
    // long at offset 16 (tracefs format).
    let ret: i64 = unsafe { ctx.read_at(16) }.map_err(read_failed)?;
    if ret >= 0 || ret == -EINPROGRESS {
        return Ok(0);
    }
    emit(|event| {
        event.kind = kind::CONNECT_ERROR;
        // The syscall's own task: by construction the process that connects.
        event.flags |= flags::OWNED_BY_USER;
        fill_task(event);
        event.family = args.family as u8;
        event.daddr = args.addr;
        event.dport = args.port;
        event.set_errno((-ret) as u32);
        event.netns = current_netns()?;
        Ok(())
    });
    Ok(0)
}

#[inline(always)]
fn current_netns() -> Result<u32, i32> {
    // SAFETY: a BPF helper without preconditions; the address it returns is
    // only read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = read(task, config!(task_nsproxy))?;
    if nsproxy == 0 {
        return Ok(0);
    }
    let net: u64 = read(nsproxy, config!(nsproxy_net_ns))?;
    read(net, config!(net_ns_inum))
}
