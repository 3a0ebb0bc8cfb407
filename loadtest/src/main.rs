//! `loadtest`: the project's open-model load generator.
//!
//! Not built yet. This binary only describes its interface and refuses to
//! run, so nothing mistakes it for a working generator.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Open-model HTTP load generator for the tracking API.
///
/// NOT IMPLEMENTED YET: every command exits with status 2.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send requests at a constant arrival rate (not implemented yet).
    Run,
    /// Merge several JSON reports exactly (not implemented yet).
    Merge,
    /// The least an HTTP endpoint can do, as a reference (not implemented yet).
    Baseline,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    #[allow(clippy::print_stderr)]
    {
        eprintln!("loadtest: not implemented yet; see `loadtest --help`");
    }
    ExitCode::from(2)
}
