//! Errors the user can act on (missing privileges, no BTF, bad input): printed
//! as one line, exit status 2. Anything else is a bug and exits 1.

use std::fmt;

/// Exit status for usage and environment errors (also clap's).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for unexpected failures.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug)]
pub struct EnvError(String);

impl EnvError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvError {}

/// The exit status for an error chain: 2 when any link is an [`EnvError`].
pub fn exit_status(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<EnvError>()) { EXIT_USAGE } else { EXIT_FAILURE }
}

/// One line: the whole context chain joined with ": ", newlines flattened.
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}
