//! `tcptrace` binary: parse the command line, run the command, turn errors
//! into one line on stderr and an exit status (2: usage or environment).

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{
    cli::{Cli, Command},
    error,
};

fn main() -> ExitCode {
    one_malloc_arena();
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

/// glibc gives each thread that allocates an arena of its own (up to eight
/// per CPU), and what is freed stays with its arena: the event batches that
/// the ring-buffer reader allocates and the tracker thread frees left 50-80
/// bytes of retained heap per tracked socket in the memory benchmark (live
/// sockets 259 -> 212 bytes each, TIME_WAIT records 222 -> 144 with one
/// arena). Our few threads hand over whole batches, so one arena's lock is
/// not contended. (musl, the dist binaries' libc, has no per-thread arenas.)
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any thread is started;
    // mallopt only changes the allocator's settings.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
