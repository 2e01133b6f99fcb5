//! `tcptrace` binary: parse the command line, run the command, turn errors
//! into one line on stderr and an exit status (2: usage or environment).

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{
    cli::{Cli, Command},
    error,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .format_timestamp(None)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version: clap's own output, exit 0.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // clap's first line ("error: unexpected argument ...") is the message;
            // the usage block after it would break the one-line promise.
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "tcptrace: error: {} (see tcptrace --help)",
                first.trim_start_matches("error: ").trim()
            );
            return ExitCode::from(error::EXIT_USAGE as u8);
        }
    };
    let result = match cli.command {
        Command::Run(args) => tracer::run::run(args),
        Command::Check => match tracer::check::check() {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(error::EXIT_USAGE as u8),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcptrace: error: {}", error::one_line(&err));
            ExitCode::from(error::exit_status(&err) as u8)
        }
    }
}
