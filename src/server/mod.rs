//! `aadgate run`: the pingora server, the admin listener and the reload triggers.

pub(crate) mod admin;
pub(crate) mod proxy;
pub(crate) mod reload;
pub(crate) mod state;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};

use aadgate_core::runtime::Runtime;

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

/// The private runtime folder for the upgrade socket and the pid file (SPEC section 8):
/// `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`; the first entry when it lists
/// several), else `$XDG_RUNTIME_DIR/aadgate`, else `/run/aadgate`. Empty and relative values
/// are ignored, so the result is never relative and never `/tmp`.
pub(crate) fn runtime_dir(
    runtime_directory: Option<&OsStr>,
    xdg_runtime_dir: Option<&OsStr>,
) -> PathBuf {
    let absolute = |p: &Path| p.is_absolute() && p != Path::new("/tmp");
    if let Some(first) = runtime_directory
        .and_then(|v| std::env::split_paths(v).next())
        .filter(|p| absolute(p))
    {
        return first;
    }
    if let Some(xdg) = xdg_runtime_dir.map(Path::new).filter(|p| absolute(p)) {
        return xdg.join("aadgate");
    }
    PathBuf::from("/run/aadgate")
}

/// Why `aadgate run` could not start serving. Each text names what failed and includes the
/// cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    /// The configuration file has errors (each with its file:line:col).
    #[error("{0}")]
    Config(aadgate_core::config::ConfigErrors),
    /// The private runtime folder cannot be created.
    #[error("cannot create the runtime folder {}: {error}", dir.display())]
    CreateRuntimeDir { dir: PathBuf, error: std::io::Error },
    /// The private runtime folder cannot be examined.
    #[error("cannot read the runtime folder {}: {error}", dir.display())]
    ReadRuntimeDir { dir: PathBuf, error: std::io::Error },
    /// Something other than a folder is at the runtime folder's path.
    #[error("the runtime folder {} is not a folder", dir.display())]
    RuntimeDirNotAFolder { dir: PathBuf },
    /// The runtime folder is open to other users and cannot be made mode 0700.
    #[error(
        "the runtime folder {} is open to other users and cannot be made private (mode 0700): {error}",
        dir.display()
    )]
    RuntimeDirNotPrivate { dir: PathBuf, error: std::io::Error },
    /// The tokio runtime for the admin listener and reloads cannot be built.
    #[error("cannot start the control runtime: {0}")]
    ControlRuntime(std::io::Error),
    /// The thread of that runtime cannot be started.
    #[error("cannot start the control thread: {0}")]
    ControlThread(std::io::Error),
    /// `admin_listen` cannot be bound.
    #[error("cannot listen on admin_listen {addr}: {error}")]
    AdminListen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The TLS certificate or key of `[server.tls]` is refused by the listener.
    #[error("cannot set up TLS on {addr}: {error}")]
    Tls {
        addr: SocketAddr,
        error: Box<pingora::Error>,
    },
}

/// Creates `dir` (with its missing parents) mode 0700, or makes an existing one 0700 when
/// group or others can reach it. Runs once at start when `upgrade_sock` is not set.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| ServerError::CreateRuntimeDir {
            dir: dir.to_path_buf(),
            error,
        })?;
    let meta = std::fs::metadata(dir).map_err(|error| ServerError::ReadRuntimeDir {
        dir: dir.to_path_buf(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(ServerError::RuntimeDirNotAFolder {
            dir: dir.to_path_buf(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|error| {
            ServerError::RuntimeDirNotPrivate {
                dir: dir.to_path_buf(),
                error,
            }
        })?;
    }
    Ok(())
}

/// Binds the admin listener and serves it on the control runtime. During a graceful upgrade
/// the old process still holds the port until it exits: then it keeps trying in the background
/// instead of failing the hand-over.
fn start_admin(
    handle: &tokio::runtime::Handle,
    addr: SocketAddr,
    upgrade: bool,
    state: &Arc<state::SharedState>,
) -> Result<(), ServerError> {
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
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                    }
                };
                tracing::info!(%addr, "admin listener bound");
                admin::serve(listener, state).await;
            });
        }
        Err(error) => return Err(ServerError::AdminListen { addr, error }),
    }
    Ok(())
}

/// Serves with the configuration at `path` until a shutdown signal. Returns only on a start-up
/// error; a normal shutdown exits the process with status 0.
pub(crate) fn run(path: PathBuf, upgrade: bool) -> Result<(), ServerError> {
    let runtime = Runtime::load(&path, None).map_err(ServerError::Config)?;
    for w in &runtime.config().warnings {
        tracing::warn!("{w}");
    }
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("aadgate-control")
        .enable_all()
        .build()
        .map_err(ServerError::ControlRuntime)?;
    let handle = control.handle().clone();
    std::thread::Builder::new()
        .name("aadgate-control".into())
        .spawn(move || control.block_on(std::future::pending::<()>()))
        .map_err(ServerError::ControlThread)?;

    let server_settings = runtime.config().server.clone();
    let state = state::SharedState::new(runtime, path, handle.clone());
    if let Some(addr) = server_settings.admin_listen {
        start_admin(&handle, addr, upgrade, &state)?;
    }
    handle.spawn(reload::on_sighup(state.clone()));
    handle.spawn(reload::on_file_change(state.clone()));

    // The upgrade socket and the pid file live in a private folder, never in /tmp.
    let upgrade_sock = match &server_settings.upgrade_sock {
        Some(explicit) => explicit.clone(),
        None => {
            let dir = runtime_dir(
                std::env::var_os("RUNTIME_DIRECTORY").as_deref(),
                std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            );
            ensure_private_dir(&dir)?;
            tracing::info!(folder = %dir.display(), "runtime folder");
            dir.join("upgrade.sock")
        }
    };
    let pid_file = upgrade_sock
        .parent()
        .map_or_else(|| PathBuf::from("aadgate.pid"), |d| d.join("aadgate.pid"));
    let conf = ServerConf {
        threads: server_settings.workers,
        grace_period_seconds: Some(server_settings.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: upgrade_sock.to_string_lossy().into_owned(),
        pid_file: pid_file.to_string_lossy().into_owned(),
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
    if let Some(proxy) = service.app_logic_mut() {
        // SPEC section 13: cleartext HTTP/2 with prior knowledge beside HTTP/1.1 (pingora
        // peeks at the connection preface), when `h2c = true`.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = server_settings.h2c;
        proxy.server_options = Some(options);
    }
    for addr in &server_settings.listen {
        match &server_settings.tls {
            Some(tls) => {
                let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
                    &tls.cert.to_string_lossy(),
                    &tls.key.to_string_lossy(),
                )
                .map_err(|error| ServerError::Tls { addr: *addr, error })?;
                // ALPN: h2, then http/1.1.
                settings.enable_h2();
                service.add_tls_with_settings(&addr.to_string(), None, settings);
            }
            None => service.add_tcp(&addr.to_string()),
        }
    }
    server.add_service(service);
    tracing::info!(listen = ?server_settings.listen, admin = ?server_settings.admin_listen, "aadgate serving");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    tracing::info!("shutdown complete");
    crate::log_writer::flush();
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_folder_is_private_and_never_tmp() {
        let os = |s: &'static str| Some(OsStr::new(s));
        for (runtime_directory, xdg, want) in [
            (os("/run/aadgate"), os("/run/user/1000"), "/run/aadgate"),
            (os("/run/a:/run/b"), None, "/run/a"),
            (None, os("/run/user/1000"), "/run/user/1000/aadgate"),
            (os(""), os("relative"), "/run/aadgate"),
            (os("/tmp"), os("/tmp"), "/run/aadgate"),
            (None, None, "/run/aadgate"),
        ] {
            assert_eq!(
                runtime_dir(runtime_directory, xdg),
                PathBuf::from(want),
                "{runtime_directory:?} {xdg:?}"
            );
        }
    }

    #[test]
    fn the_runtime_folder_is_created_or_tightened_to_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).expect("created");
        let mode = |d: &Path| {
            std::fs::metadata(d)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        assert_eq!(mode(&dir), Some(0o700));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&dir).expect("tightened");
        assert_eq!(mode(&dir), Some(0o700));
    }

    #[test]
    fn a_runtime_folder_that_cannot_be_a_folder_is_a_start_up_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").expect("write");
        assert!(matches!(
            ensure_private_dir(&file),
            Err(ServerError::CreateRuntimeDir { dir, .. } | ServerError::RuntimeDirNotAFolder { dir }) if dir == file
        ));
        let below = file.join("aadgate");
        assert!(matches!(
            ensure_private_dir(&below),
            Err(ServerError::CreateRuntimeDir { dir, .. }) if dir == below
        ));
    }
}
