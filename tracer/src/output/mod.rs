//! Everything written to stdout while tracing: the `--events` stream.
//! Reports have their own module (`crate::report`).

pub mod events;
pub mod hdrlog;
pub mod live;

/// How output is written (`--format`): every command's stream and report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and tables for people.
    Text,
    /// One JSON object per line for machines.
    Json,
}
