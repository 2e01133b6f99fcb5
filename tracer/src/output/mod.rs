//! Everything written to stdout while tracing: the `--events` stream.
//! Reports have their own module (`crate::report`).

pub mod events;
