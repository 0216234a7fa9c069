//! `aadgate run`: the pingora server, the admin listener and the reload triggers.

pub mod admin;
pub mod proxy;
pub mod reload;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};

use crate::config;
use crate::metrics::Metrics;

/// SIGTERM and SIGINT drain in-flight requests; SIGQUIT hands the listeners to a new process
/// started with `--upgrade`.
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining in-flight requests"); ShutdownSignal::GracefulTerminate }
            _ = int.recv() => { tracing::info!("SIGINT: draining in-flight requests"); ShutdownSignal::GracefulTerminate }
            _ = quit.recv() => { tracing::info!("SIGQUIT: handing listeners over"); ShutdownSignal::GracefulUpgrade }
        }
    }
}

/// Serves with the configuration at `path` until a shutdown signal. Returns only on a start-up
/// error; a normal shutdown exits the process with status 0.
pub fn run(path: PathBuf, upgrade: bool) -> Result<(), String> {
    let config = config::load(&path, None).map_err(|e| e.to_string())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let metrics = Arc::new(Metrics::new());
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("aadgate-control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let handle = control.handle().clone();
    std::thread::Builder::new()
        .name("aadgate-control".into())
        .spawn(move || control.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("cannot start the control thread: {e}"))?;

    let server_settings = config.server.clone();
    let state = state::SharedState::new(config, path, metrics, handle.clone());
    if let Some(addr) = server_settings.admin_listen {
        match handle.block_on(tokio::net::TcpListener::bind(addr)) {
            Ok(listener) => {
                handle.spawn(admin::serve(listener, state.clone()));
            }
            // During a graceful upgrade the old process still holds the admin port until it
            // exits: keep trying in the background instead of failing the hand-over.
            Err(e) if upgrade && e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::info!(%addr, "admin_listen still held by the old process; will bind once it exits");
                let state = state.clone();
                handle.spawn(async move {
                    let listener = loop {
                        match tokio::net::TcpListener::bind(addr).await {
                            Ok(l) => break l,
                            Err(_) => {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await
                            }
                        }
                    };
                    tracing::info!(%addr, "admin listener bound");
                    admin::serve(listener, state).await;
                });
            }
            Err(e) => return Err(format!("cannot listen on admin_listen {addr}: {e}")),
        }
    }
    handle.spawn(reload::on_sighup(state.clone()));
    handle.spawn(reload::on_file_change(state.clone()));

    let conf = ServerConf {
        threads: server_settings.workers,
        grace_period_seconds: Some(server_settings.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: server_settings.upgrade_sock.to_string_lossy().into_owned(),
        pid_file: std::env::temp_dir()
            .join("aadgate.pid")
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, proxy::Gateway { state });
    for addr in &server_settings.listen {
        match &server_settings.tls {
            Some(tls) => service
                .add_tls(
                    &addr.to_string(),
                    &tls.cert.to_string_lossy(),
                    &tls.key.to_string_lossy(),
                )
                .map_err(|e| format!("cannot set up TLS on {addr}: {e}"))?,
            None => service.add_tcp(&addr.to_string()),
        }
    }
    server.add_service(service);
    tracing::info!(listen = ?server_settings.listen, admin = ?server_settings.admin_listen, "aadgate serving");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    tracing::info!("shutdown complete");
    std::process::exit(0)
}
