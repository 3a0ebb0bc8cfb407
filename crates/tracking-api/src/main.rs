//! `tracking-api` binary: reads the configuration, builds the adapters and
//! serves until SIGTERM / SIGINT, then drains. Decides nothing itself.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracking_api::config::{Cli, Command, Config};
use tracking_api::{app, bootstrap, build_state, serve, serve_admin};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.config.validate() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("tracking-api: {e}");
        }
        return ExitCode::from(2);
    }
    // Before the runtime: the exporters must not be built inside it.
    let telemetry = match service_kit::telemetry::init(&cli.telemetry, "tracking-api") {
        Ok(t) => t,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tracking-api: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.config.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let code = match runtime.block_on(run(command, cli.config)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tracking-api failed.");
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    telemetry.shutdown();
    code
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bootstrap => {
            for done in bootstrap(&config).await? {
                tracing::info!(store = ?config.session_store, sink = ?config.sink.sink, "{done}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let state = build_state(&config).await?;
            // SIGHUP (log rotation): the file outputs continue in new files
            // at their paths.
            let outputs = Arc::clone(&state);
            service_kit::on_hangup(move || {
                outputs.parts.sink.reopen();
                outputs.parts.deadletters.reopen();
            });
            // An output gone for good (stdout's reader closed) ends the
            // process like SIGTERM, and its exit status says so.
            let gone = state.parts.sink.gone();
            let shutdown = async move {
                tokio::select! {
                    () = service_kit::shutdown_signal() => {}
                    () = gone => {}
                }
            };
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let admin = tokio::net::TcpListener::bind(config.admin_listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
            let open_files =
                service_kit::server::raise_open_files_limit(config.http.max_connections);
            tracing::info!(
                addr = %listener.local_addr()?,
                admin = %admin.local_addr()?,
                open_files,
                store = ?config.session_store,
                sink = ?config.sink.sink,
                "Listening."
            );
            let app = app(state);
            let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
            let admin = tokio::spawn(serve_admin(admin, app.clone(), async {
                let _ = admin_stopped.await;
            }));
            let report = serve(listener, app, shutdown, config.serve_options()).await;
            // The admin listener answers probes (readiness 503) until the drain is over.
            let _ = admin_stop.send(());
            let _ = admin.await;
            Ok(if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
