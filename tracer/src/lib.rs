//! tcptrace userspace. Data flows top to bottom (docs/ARCHITECTURE.md):
//!
//! - [`kernel`]: load the BPF programs, attach them to the hooks, detach.
//! - [`pipeline`]: drain the ring buffer into a bounded channel
//!   ([`pipeline::collect`]), validate raw records into [`event::Event`]s
//!   ([`pipeline::decode`]), apply the socket filters ([`pipeline::filter`])
//!   and hand them to the tracker on its own thread.
//! - [`track`]: connection records, attribution, dwell histograms ([`stats`]).
//! - [`output`]: what is printed while tracing: the `--events` stream, the
//!   live view, the HdrHistogram log.
//! - [`report`]: the final report (text and JSON) and its diagnoses;
//!   [`metrics`]: the same figures for Prometheus.
//! - [`host`]: facts about the machine the events do not carry (namespaces,
//!   cgroups, sockets open before tracing, the clock).
//! - [`commands`]: `run`, `record`/`report`, `serve`, `demo`, `check`;
//!   [`cli`] parses their arguments, [`record_file`] is the recording format.

pub mod cli;
pub mod commands;
pub mod drop_reason;
pub mod error;
pub mod event;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod record_file;
pub mod report;
pub mod stats;
pub mod track;
pub mod workload;
