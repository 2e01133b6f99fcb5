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
    // clap prints its own one-line usage errors and exits with status 2.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tracer::run::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcptrace: error: {}", error::one_line(&err));
            ExitCode::from(error::exit_status(&err) as u8)
        }
    }
}
