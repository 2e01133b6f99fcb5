//! The programs, one module per concern. Each program's name
//! (`tcptrace_*`) is how userspace finds it (`tracer/src/kernel/mod.rs`).

/// Declares a program's entry point, the aya template's shape around its body
/// `try_*` (which stops early through `?` and otherwise returns `Ok(0)`):
/// `program! { #[btf_tracepoint(function = "hook")] pub fn tcptrace_hook(BtfTracePointContext)
/// -> i32 = try_hook; }`, with the program's doc comment first.
macro_rules! program {
    ($(#[$attr:meta])* pub fn $name:ident($ctx:ty) -> $ret:ty = $body:ident;) => {
        $(#[$attr])*
        pub fn $name(ctx: $ctx) -> $ret {
            match $body(&ctx) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

pub(crate) mod accept;
pub(crate) mod connect;
pub(crate) mod drops;
pub(crate) mod empty;
pub(crate) mod held;
pub(crate) mod retransmit;
pub(crate) mod socket;
pub(crate) mod state;
pub(crate) mod timers;
