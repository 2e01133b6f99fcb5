//! tcptrace userspace. Data flows top to bottom (docs/ARCHITECTURE.md):
//!
//! - [`kernel`]: load the BPF programs, attach them to the hooks, detach.
//! - [`collect`]: drain the ring buffer into a bounded channel.
//! - [`decode`]: validate raw records into [`event::Event`]s.
//! - [`track`]: connection records, attribution, dwell histograms ([`stats`]).
//! - [`output`]: the `--events` stream.
//! - [`report`]: the final report, text and JSON.
//! - [`cli`], [`run`]: the command line and the `run` command.

pub mod cgroup;
pub mod check;
pub mod cli;
pub mod clock;
pub mod collect;
pub mod decode;
pub mod demo;
pub mod diagnose;
pub mod error;
pub mod event;
pub mod filter;
pub mod hdrlog;
pub mod kernel;
pub mod live;
pub mod metrics;
pub mod netns;
pub mod output;
pub mod pipeline;
pub mod record;
pub mod recording;
pub mod report;
pub mod run;
pub mod serve;
pub mod snapshot;
pub mod stats;
pub mod track;
