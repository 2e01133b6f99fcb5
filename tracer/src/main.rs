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
            // The message's first paragraph ("the following required arguments
            // were not provided: --output <FILE>"), on one line; the usage
            // block after it would break the one-line promise.
            let rendered = err.to_string();
            let message: Vec<&str> =
                rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let message = message.join(" ");
            eprintln!("tcptrace: error: {} (see tcptrace --help)", message.trim_start_matches("error: "));
            return ExitCode::from(error::EXIT_USAGE as u8);
        }
    };
    let result = match cli.command {
        Command::Run(args) => tracer::commands::run::run(args),
        Command::Record(args) => tracer::commands::record::record(args),
        Command::Report(args) => tracer::commands::record::report(args),
        Command::Demo(args) => tracer::commands::demo::demo(args),
        Command::Serve(args) => tracer::commands::serve::serve(args),
        Command::Man { out } => tracer::cli::write_man_pages(&out),
        Command::Check => match tracer::commands::check::check() {
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
