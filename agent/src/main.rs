use std::process::ExitCode;

use clap::Parser;
use sonde::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "sonde: invalid --log filter {:?}: {e}; using \"info\"",
            cli.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    // Colour for a person at a terminal only: no escape codes in log files,
    // `kubectl logs` or journald (and none with NO_COLOR set).
    let colour = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    };
    // While `sonde top` draws, logs go to a file instead of the screen.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sonde::top::LogWriter)
        .with_ansi(colour)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sonde: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli
        .command
        .unwrap_or_else(|| Command::Run(default_run_args()));
    rt.block_on(sonde::commands::dispatch(command))
}

fn default_run_args() -> sonde::cli::RunArgs {
    // Parse an empty `run` so env vars and defaults apply as for `sonde run`.
    match Cli::parse_from(["sonde", "run"]).command {
        Some(Command::Run(a)) => a,
        _ => unreachable!("`run` parses to Command::Run"),
    }
}
