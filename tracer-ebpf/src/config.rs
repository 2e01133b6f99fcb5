//! The read-only global `CONFIG` (struct offsets and kernel addresses, set
//! by userspace before load) and `config!`, which reads it.
use tracer_common::KernelConfig;

/// Set by userspace before load (read-only data, frozen: the verifier treats
/// every field as a known constant).
#[unsafe(no_mangle)]
pub(crate) static CONFIG: KernelConfig = KernelConfig::ZERO;

/// `config!(field)`: one field of `CONFIG`, a load-time constant (not
/// Rust's `cfg!`, which is compile-time configuration). Volatile, or the
/// compiler would fold the all-zero initializer into the code.
/// `ablated!(BIT)`: whether the benchmark asked to leave this piece of work
/// out (`KernelConfig::ablate`; always false in real runs, and then the
/// verifier drops the test with the dead branch).
macro_rules! ablated {
    ($bit:ident) => {
        config!(ablate) & tracer_common::ablate::$bit != 0
    };
}

macro_rules! config {
    ($field:ident) => {
        // SAFETY: a field of a static, so aligned and valid for reads; the
        // program never writes CONFIG (rodata, frozen by userspace before
        // load).
        unsafe { core::ptr::read_volatile(&$crate::config::CONFIG.$field) }
    };
}
