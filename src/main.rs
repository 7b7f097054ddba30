//! The `quintet` binary: parse the command line, start logging, run until done or signalled.

use std::process::ExitCode;

use clap::Parser;
use quintet::config::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = quintet::telemetry::init_logging(&cli.config.log, cli.config.log_format) {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(quintet::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, the whole cause chain, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
