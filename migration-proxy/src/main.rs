//! `migration-proxy` binary: serves the HTTP API (default) or runs `copy`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use migration_proxy::config::{Cli, Command};
use migration_proxy::metrics::Metrics;
use migration_proxy::{Legacy, Proxy, ServeOptions, copy, serve, serve_admin};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime: the exporters must not be built inside it.
    let telemetry = match service_kit::telemetry::init(&cli.telemetry, "migration-proxy") {
        Ok(t) => t,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("migration-proxy: {e}");
            }
            return ExitCode::from(2);
        }
    };
    // `copy` on a terminal shows a progress bar: log lines from this thread
    // and the runtime's (the copy's, the clients' background tasks) are
    // written above it, not across it.
    let terminal_logs = match cli.command {
        Some(Command::Copy(_)) => copy::TerminalLogs::new(),
        _ => None,
    };
    let _main_thread_logs = terminal_logs.as_ref().map(copy::TerminalLogs::set_default);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(logs) = terminal_logs {
        builder.on_thread_start(move || logs.install_on_this_thread());
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "migration-proxy failed.");
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    let legacy = Legacy::new(
        cli.aerospike.aerospike_namespace.clone(),
        cli.aerospike.aerospike_timeout,
    );
    let registry = Arc::new(service_kit::prom::Registry::default());
    registry.register(Arc::clone(&legacy) as Arc<dyn service_kit::prom::Collect>);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            // SIGHUP must not stop the proxy (its default action): it has no
            // file to reopen.
            service_kit::on_hangup(|| {});
            let listener = tokio::net::TcpListener::bind(cli.serve.listen)
                .await
                .with_context(|| format!("cannot listen on {}", cli.serve.listen))?;
            let admin = tokio::net::TcpListener::bind(cli.serve.admin_listen)
                .await
                .with_context(|| format!("cannot listen on {}", cli.serve.admin_listen))?;
            let open_files = service_kit::server::raise_open_files_limit(cli.serve.max_connections);
            tracing::info!(
                addr = %listener.local_addr()?,
                admin = %admin.local_addr()?,
                open_files,
                aerospike = %cli.aerospike.aerospike_hosts,
                namespace = %cli.aerospike.aerospike_namespace,
                auth = cli.serve.auth_token.is_some(),
                "Listening."
            );
            if cli.serve.auth_token.is_none() {
                tracing::warn!(
                    "MIGRATION_AUTH_TOKEN is not set: /v1 requests are not authenticated."
                );
            }
            tokio::spawn(
                Arc::clone(&legacy).connect_forever(cli.aerospike.aerospike_hosts.clone()),
            );
            let proxy = Proxy::new(
                Arc::clone(&legacy),
                metrics,
                registry,
                ServeOptions {
                    auth_token: cli.serve.auth_token.clone(),
                    max_inflight: cli.serve.max_inflight,
                    max_connections: cli.serve.max_connections,
                    header_timeout: cli.serve.header_timeout,
                    body_timeout: cli.serve.body_timeout,
                    drain_timeout: cli.serve.drain_timeout,
                },
            );
            let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
            let admin = tokio::spawn(serve_admin(admin, Arc::clone(&proxy), async {
                let _ = admin_stopped.await;
            }));
            let clean = serve(listener, proxy, service_kit::shutdown_signal()).await;
            // The admin listener answers probes until the drain is over.
            let _ = admin_stop.send(());
            let _ = admin.await;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Copy(args) => {
            let report = copy::run(&cli.aerospike, &args, &legacy).await?;
            #[allow(clippy::print_stdout)]
            {
                println!("{report}");
            }
            // A record that failed, or a (set, partition) whose scan failed
            // (its records were not all read): the copy is incomplete.
            Ok(if report.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
