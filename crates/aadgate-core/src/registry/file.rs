//! The registry in a JSON file (`[tenants] registry`), for one gateway or replicas sharing a
//! volume.
//!
//! - Writes are atomic: the new content goes to a temporary file in the same folder, is
//!   flushed to disk, and replaces the registry with `rename`; a reader sees the old file or
//!   the new one, never half of one, and a failed write leaves the old file as it was.
//! - Writers take an exclusive lock on `<registry>.lock` around read-modify-write, so the
//!   gateway and `aadgate tenants` never overwrite each other's change.
//! - The version is the file's inode, size and modification time: it changes with every
//!   write, including an edit by hand or a restore from backup.
//! - A missing file is an empty registry (created on the first change); a file that cannot be
//!   read or parsed is an error, never an empty registry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{Applied, Change, RegistryError, RegistryStore, Snapshot, Version};

/// Longest wait for another writer's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The registry as a JSON file; see the module documentation.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path` (the file need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unavailable(format!(
            "tenant registry {}: {what}: {e}",
            self.path.display()
        ))
    }

    fn version_of(meta: &fs::Metadata) -> Version {
        use std::os::unix::fs::MetadataExt;
        format!(
            "{}:{}:{}.{}",
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        )
    }

    fn read_version(&self) -> Result<Option<Version>, RegistryError> {
        match fs::metadata(&self.path) {
            Ok(m) => Ok(Some(Self::version_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.unavailable("cannot be read", e)),
        }
    }

    fn read(&self) -> Result<(Snapshot, Option<Version>), RegistryError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Snapshot::default(), None))
            }
            Err(e) => return Err(self.unavailable("cannot be read", e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| self.unavailable("cannot be read", e))?;
        let mut text = String::new();
        io::Read::read_to_string(&mut file, &mut text)
            .map_err(|e| self.unavailable("cannot be read", e))?;
        let snapshot = Snapshot::from_json(&text)
            .map_err(|e| self.unavailable("is not a valid registry", e))?;
        Ok((snapshot, Some(Self::version_of(&meta))))
    }

    fn write(&self, snapshot: &Snapshot) -> Result<(), RegistryError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tenants.json".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(snapshot.to_json().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // The rename itself is durable once the folder is synced.
            File::open(dir)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.unavailable("cannot be written", e)
        })
    }

    /// Takes the writers' lock, waiting at most [`LOCK_WAIT`] for another writer.
    fn lock(&self, lock: &File) -> Result<(), RegistryError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(()),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    // A writer holds it for a few milliseconds; this runs on a blocking thread.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(self.unavailable(
                        "is locked by another writer",
                        format!("still locked after {}s", LOCK_WAIT.as_secs()),
                    ))
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(self.unavailable("cannot be locked", e))
                }
            }
        }
    }

    fn update_locked(
        &self,
        change: &Change,
        now: i64,
    ) -> Result<(Snapshot, Option<Version>, Applied), RegistryError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| self.unavailable("its lock file cannot be opened", e))?;
        self.lock(&lock)?;
        let (mut snapshot, version) = self.read()?;
        let applied = snapshot.apply(change, now)?;
        if applied == Applied::Unchanged {
            return Ok((snapshot, version, applied));
        }
        self.write(&snapshot)?;
        let version = self.read_version()?;
        Ok((snapshot, version, applied))
        // The lock is released when `lock` is dropped.
    }
}

#[async_trait]
impl RegistryStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn version(&self) -> Result<Option<Version>, RegistryError> {
        self.read_version()
    }

    async fn load(&self) -> Result<(Snapshot, Option<Version>), RegistryError> {
        let store = self.clone();
        blocking(move || store.read()).await
    }

    async fn update(
        &self,
        change: &Change,
        now: i64,
    ) -> Result<(Snapshot, Option<Version>, Applied), RegistryError> {
        let store = self.clone();
        let change = change.clone();
        blocking(move || store.update_locked(&change, now)).await
    }
}

/// Runs file work off the async threads when a multi-threaded runtime is there to do it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| RegistryError::Unavailable(format!("registry task failed: {e}")))?
        }
        _ => f(),
    }
}
