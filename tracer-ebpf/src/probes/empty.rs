//! Empty programs, one per hook the real programs use: `tcptrace run
//! --calibrate-empty` attaches these instead, so that `cargo xtask bench` can
//! measure what the hooks themselves cost (the kernel's call into a BPF
//! program and back): no tracer on these hooks can be cheaper. Never attached
//! otherwise.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

/// One empty `tp_btf` program per `name => hook`.
macro_rules! empty_btf {
    ($($name:ident => $hook:literal),* $(,)?) => {$(
        #[doc = concat!("Empty program on `tp_btf/", $hook, "` (calibration).")]
        #[btf_tracepoint(function = $hook)]
        pub fn $name(_ctx: BtfTracePointContext) -> i32 {
            0
        }
    )*};
}

empty_btf! {
    tcptrace_empty_state => "inet_sock_set_state",
    tcptrace_empty_send_reset => "tcp_send_reset",
    tcptrace_empty_receive_reset => "tcp_receive_reset",
    tcptrace_empty_sendmsg => "tcp_sendmsg_locked",
    tcptrace_empty_sk_error => "inet_sk_error_report",
    tcptrace_empty_retransmit => "tcp_retransmit_skb",
    tcptrace_empty_synack => "tcp_retransmit_synack",
    tcptrace_empty_timer_start => "timer_start",
    tcptrace_empty_timer_expire => "timer_expire_entry",
    tcptrace_empty_timer_expire_exit => "timer_expire_exit",
    tcptrace_empty_timer_cancel => "timer_cancel",
    tcptrace_empty_drop => "kfree_skb",
}

/// Empty program on `tracepoint/syscalls/sys_enter_connect` (calibration).
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn tcptrace_empty_connect_enter(_ctx: TracePointContext) -> u32 {
    0
}

/// Empty program on `tracepoint/syscalls/sys_exit_connect` (calibration).
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn tcptrace_empty_connect_exit(_ctx: TracePointContext) -> u32 {
    0
}

/// Empty program on `tracepoint/syscalls/sys_exit_accept4` (calibration).
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn tcptrace_empty_accept4_exit(_ctx: TracePointContext) -> u32 {
    0
}

/// Empty program on `tracepoint/syscalls/sys_exit_accept` (calibration).
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn tcptrace_empty_accept_exit(_ctx: TracePointContext) -> u32 {
    0
}
