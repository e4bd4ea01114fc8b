//! Snapshot backups (Trove 23+): `pre_create_backup` saves Redis's dataset and freezes the data volume's file system for Cinder's snapshot; `post_create_backup` thaws it; a timer thaws a freeze nobody ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::backup;
use super::manager::RedisManager;
use crate::datastore::volume;
use crate::datastore::{Error, Result};

/// How long `fsfreeze` itself may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

struct Frozen {
    mount_point: PathBuf,
    /// Tells this freeze's safety timer apart from a later one's.
    generation: u64,
}

/// The one freeze this agent holds, if any.
pub struct Freezer {
    held: Arc<Mutex<Option<Frozen>>>,
    next: std::sync::atomic::AtomicU64,
    /// Longest freeze; then the timer thaws.
    timeout: Duration,
    /// Longest wait for Redis's background save.
    save_timeout: Duration,
}

impl Freezer {
    pub fn new(timeout: Duration, save_timeout: Duration) -> Freezer {
        Freezer { held: Arc::new(Mutex::new(None)), next: Default::default(), timeout, save_timeout }
    }

    /// `pre_create_backup`: a fresh RDB on the volume (BGSAVE, waited for; an AOF's writes are
    /// in the kernel already and the freeze flushes them), then `fsfreeze -f` on the volume's
    /// mount point, and a timer that thaws it after `timeout`. A freeze this agent already holds
    /// is thawed first. Redis's own writes to the volume block until the thaw.
    pub async fn freeze(&self, manager: &RedisManager) -> Result<PathBuf> {
        let vol = manager.volume().await.ok_or_else(|| {
            Error::Refused("this guest has no data volume (prepare had no device_path): there is no volume file system to freeze for a snapshot backup".into())
        })?;
        if !manager.volumes().is_mounted(&vol).await? {
            return Err(Error::Refused(format!("the data volume {} is not mounted at {}: nothing to freeze", vol.device, vol.mount_point.display())));
        }
        let mut held = self.held.lock().await;
        if let Some(old) = held.take() {
            tracing::warn!(mount_point = %old.mount_point.display(), "a freeze was still held: thawing it before the new one");
            thaw_fs(&old.mount_point).await?;
        }
        if manager.admin().await.is_ok() {
            backup::save(manager, self.save_timeout).await?;
        } else {
            tracing::info!("redis is not running: the volume holds its last saved state");
        }
        volume::run_tool("fsfreeze", &["-f".into(), vol.mount_point.clone().into_os_string()], TOOL_TIMEOUT).await?;
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *held = Some(Frozen { mount_point: vol.mount_point.clone(), generation });
        tracing::info!(mount_point = %vol.mount_point.display(), timeout = ?self.timeout, "data volume frozen for a snapshot");
        let cell = self.held.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let mut held = cell.lock().await;
            if held.as_ref().is_some_and(|f| f.generation == generation) {
                let f = held.take().expect("checked");
                match thaw_fs(&f.mount_point).await {
                    Ok(_) => tracing::warn!(mount_point = %f.mount_point.display(), ?timeout, "no post_create_backup within the freeze timeout: the data volume was thawed"),
                    Err(error) => tracing::error!(mount_point = %f.mount_point.display(), %error, "the freeze timeout passed and the thaw failed"),
                }
            }
        });
        Ok(vol.mount_point)
    }

    /// `post_create_backup`: thaws the held freeze, or the volume's file system if this agent
    /// lost track of one (a restart); a file system that is not frozen is fine. Returns whether
    /// it was frozen.
    pub async fn thaw(&self, manager: &RedisManager) -> Result<bool> {
        let mut held = self.held.lock().await;
        let mount_point = match held.take() {
            Some(f) => f.mount_point,
            None => match manager.volume().await {
                Some(v) => v.mount_point,
                None => return Err(Error::Refused("this guest has no data volume (prepare had no device_path): nothing to thaw".into())),
            },
        };
        let thawed = thaw_fs(&mount_point).await?;
        tracing::info!(mount_point = %mount_point.display(), thawed, "post_create_backup: data volume thawed");
        Ok(thawed)
    }

    /// Whether a freeze is held.
    pub async fn frozen(&self) -> bool {
        self.held.lock().await.is_some()
    }
}

/// `fsfreeze -u`; false when the file system was not frozen (the kernel's EINVAL).
async fn thaw_fs(mount_point: &std::path::Path) -> Result<bool> {
    match volume::run_tool("fsfreeze", &["-u".into(), mount_point.as_os_str().to_owned()], TOOL_TIMEOUT).await {
        Ok(_) => Ok(true),
        Err(Error::Service(why)) if why.contains("Invalid argument") => Ok(false),
        Err(e) => Err(e),
    }
}
