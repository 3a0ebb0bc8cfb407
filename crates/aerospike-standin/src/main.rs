//! `aerospike-standin --listen 127.0.0.1:PORT`: see the library.

use std::net::SocketAddr;

use clap::Parser;

/// A wire-compatible, in-memory stand-in for one Aerospike node (tests and
/// local runs). What it implements and what not: crates/aerospike-standin.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (port 0: any free port, printed in the log).
    #[arg(
        long,
        env = "AEROSPIKE_STANDIN_LISTEN",
        default_value = "127.0.0.1:3000"
    )]
    listen: SocketAddr,
    /// Namespaces it serves, comma-separated.
    #[arg(
        long,
        env = "AEROSPIKE_STANDIN_NAMESPACES",
        default_value = "tracking,test",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    aerospike_standin::run(cli.listen, cli.namespaces).await?;
    Ok(())
}
