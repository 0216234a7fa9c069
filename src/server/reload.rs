//! Reload triggers: SIGHUP, and changes of the configuration file or `[tenants] file` on disk —
//! including Kubernetes' atomic symlink swap of a mounted ConfigMap (`..data` replaced), which
//! is seen by watching the files' folders rather than the files.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::state::{fingerprint, SharedState};

/// Events arriving within this window are handled as one reload.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);

/// Reloads on SIGHUP. Runs until the process exits.
pub(crate) async fn on_sighup(state: Arc<SharedState>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload by file change only");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let s = state.clone();
        // Loading reads files and may parse certificates: keep it off the async threads.
        let _ = tokio::task::spawn_blocking(move || s.reload("SIGHUP")).await;
    }
}

/// Reloads when a watched file's content changes. Runs until the process exits.
pub(crate) async fn on_file_change(state: Arc<SharedState>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = match notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration files; reload with SIGHUP");
            return;
        }
    };
    let mut watched_dirs: HashSet<PathBuf> = HashSet::new();
    let mut files = state.watched_files();
    let watch_dirs = |watcher: &mut notify::RecommendedWatcher,
                      files: &[PathBuf],
                      dirs: &mut HashSet<PathBuf>| {
        for f in files {
            let dir = f
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| PathBuf::from("."));
            if dirs.insert(dir.clone()) {
                if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder");
                }
            }
        }
    };
    watch_dirs(&mut watcher, &files, &mut watched_dirs);
    let mut last = fingerprint(&files);
    while let Some(event) = rx.recv().await {
        // Other files in the same folders (a log file next to the config) change all the time.
        if !concerns(&event, &files) {
            continue;
        }
        // Collect the burst of events one change makes (write, rename, symlink swap).
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let now = fingerprint(&files);
        if now == last {
            continue;
        }
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || s.reload("file change")).await;
        if matches!(result, Ok(Ok(_))) {
            files = state.watched_files();
            watch_dirs(&mut watcher, &files, &mut watched_dirs);
        }
        last = fingerprint(&files);
    }
}

/// Whether a folder event may concern a watched file: it names one of them, or a Kubernetes
/// atomic-writer entry (`..data`, `..2026_11_22_…`), or it carries no path (an overflow or a
/// rescan request), or it is an error.
fn concerns(event: &notify::Result<notify::Event>, files: &[PathBuf]) -> bool {
    let Ok(event) = event else { return true };
    if event.paths.is_empty() || event.need_rescan() {
        return true;
    }
    event.paths.iter().any(|p| {
        let name = p.file_name();
        name.is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))
            || files.iter().any(|f| f.file_name() == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{EventKind, ModifyKind};

    fn event(paths: &[&str]) -> notify::Result<notify::Event> {
        let mut e = notify::Event::new(EventKind::Modify(ModifyKind::Any));
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn only_events_that_may_concern_a_watched_file_count() {
        let files = vec![
            PathBuf::from("/etc/aadgate/aadgate.toml"),
            PathBuf::from("tenants.txt"),
        ];
        assert!(concerns(&event(&["/etc/aadgate/aadgate.toml"]), &files));
        assert!(concerns(&event(&["/etc/aadgate/tenants.txt"]), &files));
        assert!(concerns(&event(&["/etc/aadgate/..data"]), &files));
        assert!(concerns(
            &event(&["/etc/aadgate/..2026_11_22_02_00_00.123"]),
            &files
        ));
        assert!(concerns(
            &event(&["/etc/aadgate/x.tmp", "/etc/aadgate/aadgate.toml"]),
            &files
        ));
        assert!(concerns(&event(&[]), &files));
        assert!(concerns(&Err(notify::Error::generic("overflow")), &files));
        assert!(!concerns(&event(&["/etc/aadgate/gateway.log"]), &files));
        assert!(!concerns(
            &event(&["/etc/aadgate/.aadgate.toml.swp"]),
            &files
        ));
    }
}
