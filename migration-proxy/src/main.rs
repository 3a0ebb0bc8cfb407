//! `migration-proxy`: the HTTP service in front of the on-prem Aerospike
//! cluster used during the parallel run.
//!
//! Not built yet. This binary only describes its interface and refuses to
//! run, so nothing mistakes it for a working service.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// HTTP front of the legacy Aerospike session store (parallel-run period).
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
    /// Serve GET/PUT /v1/sessions/{client_id} over Aerospike (not implemented yet).
    Serve,
    /// Bulk-copy the legacy sets into Bigtable (not implemented yet).
    Copy,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    #[allow(clippy::print_stderr)]
    {
        eprintln!("migration-proxy: not implemented yet; see `migration-proxy --help`");
    }
    ExitCode::from(2)
}
