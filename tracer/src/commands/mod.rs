//! The subcommands, one module each: what `tcptrace <command>` runs.

pub mod check;
pub mod demo;
pub mod record;
pub mod run;
pub mod serve;
