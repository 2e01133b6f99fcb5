//! The kernel/userspace ABI: types shared by the kernel programs (`tracer-ebpf`,
//! built for the BPF target) and the userspace collector (`tracer`, which
//! builds this crate with the `user` feature).
//!
//! Everything that crosses the kernel/userspace boundary is `#[repr(C)]` and made
//! of fixed-size integers only: no enums, no `Option`, no `bool`. Userspace
//! validates every field when it decodes a record (see `tracer/src/pipeline/decode.rs`);
//! the enums here ([`TcpState`], [`CaState`]) are what it decodes to.
//!
//! - `event`: the ring-buffer record [`RawEvent`], its layout (pinned at compile
//!   time, [`EVENT_LAYOUT_VERSION`]), its [`kind`]s and [`flags`], and the named
//!   accessors of its per-kind fields;
//! - `config`: [`KernelConfig`], the load-time constants (struct offsets from BTF);
//! - `tcp`: the kernel's TCP states and congestion-avoidance states.
#![no_std]

mod config;
mod event;
mod summary;
mod tcp;

pub use config::{Field, KernelConfig, ablate};
pub use event::{EVENT_LAYOUT_VERSION, EndFacts, RAW_EVENT_SIZE, RawEvent, flags, kind};
pub use summary::{
    NO_TASK, RAW_SUMMARY_SIZE, RawSummary, STEP_OWNER, STEP_STATE, SUMMARY_STEPS, SummaryStep, SummaryTask,
};
pub use tcp::{CaState, TcpState};

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Events a program wanted to emit (after filtering).
    pub const SEEN: u32 = 0;
    /// Summary mode: transitions sent one event each because the table of
    /// pending sockets (`PENDING`) was full (nothing is lost: those sockets
    /// fall back to the full stream). Until 0.x this slot was unused.
    pub const PENDING_FULL: u32 = 1;
    /// Events lost because the ring buffer was full (reserve failed).
    pub const LOST: u32 = 2;
    /// Memory reads that failed: while filling an event (the event is still
    /// emitted, those fields zero), or before one could begin (a program could
    /// not tell whether or what to emit: the event is lost, counted only here).
    pub const READ_ERRORS: u32 = 3;
    /// Number of slots.
    pub const COUNT: u32 = 4;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Names of maps and programs, shared so that userspace never misspells them.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const CONFIG: &str = "CONFIG";
    /// `CONTROL[0]`: 1 while tracing. Every program checks it first, so that
    /// all hooks start and stop at one instant although they are attached
    /// and detached one by one.
    pub const CONTROL: &str = "CONTROL";
    /// Summary mode: each socket's pending steps, by cookie.
    pub const PENDING: &str = "PENDING";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are `repr(C)`, made only of integers and arrays of
    // integers, with explicit padding (for `RawEvent` checked at compile time:
    // its fields tile it, see `event.rs`): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RawEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelConfig {}
    // SAFETY: as above (no implicit padding: checked in `summary.rs`).
    unsafe impl aya::Pod for super::RawSummary {}
}
