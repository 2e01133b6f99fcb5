//! Empty on purpose: this library target exists only so that `tracer` can
//! build-depend on this package (see tracer/Cargo.toml), as aya's own
//! `test/integration-ebpf` does. The programs are the binary (`src/main.rs`);
//! the types they share with userspace live in `tracer-common`.
#![no_std]
