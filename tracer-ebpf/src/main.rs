//! tcptrace kernel programs.
//!
//! Every program turns one kernel hook into at most one fixed-size
//! [`RawEvent`](tracer_common::RawEvent) in the `EVENTS` ring buffer, or in
//! summary mode adds it to the socket's pending steps (`summary`). Programs do no aggregation: the connection state
//! machine lives in userspace (`tracer/src/track`), where it can be unit-tested.
//!
//! Struct offsets are not compiled in: userspace reads them from the running
//! kernel's BTF and sets the read-only global `CONFIG` before loading, so the
//! same object works on every kernel that has the hooks (see docs/ARCHITECTURE.md).
//!
//! - `config`: the `CONFIG` global and `config!`, which reads it;
//! - `maps`: every map and the types of their values;
//! - `read`: reading kernel memory (sockets, the current task);
//! - `emit`: the `tracing` prologue, the `STATS` counters, `emit`;
//! - `summary`: summary mode, a socket's transitions sent together;
//! - `requests`: summary mode, a request's start sent with its end;
//! - `probes`: the programs, one module per concern (state transitions, held
//!   children, other socket events, retransmits, timers, `connect()`), and
//!   empty programs on the same hooks for the benchmark's calibration.
#![no_std]
#![no_main]
// Inline BPF assembly for one atomic add (`count`); the crate builds on nightly.
#![feature(asm_experimental_arch)]
// `#[inline(always)]` on closures (`send_held`).
#![feature(stmt_expr_attributes)]

#[macro_use]
mod config;
mod emit;
mod maps;
mod probes;
mod read;
mod requests;
mod summary;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
