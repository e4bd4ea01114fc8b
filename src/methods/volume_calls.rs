//! `mount_volume`, `unmount_volume`, `resize_fs` and the volume arguments of `prepare`.

use serde_json::Value;

use super::args::Args;
use super::{to_failure, Guest};
use crate::rpc::RemoteFailure;

impl Guest {
    /// `mount_point`: given, or the data volume's, or `redis.data_dir` (Trove's `[redis] mount_point`).
    pub(super) fn mount_point_arg(&self, a: &Args<'_>) -> Result<String, RemoteFailure> {
        Ok(a.opt_str("mount_point")?.unwrap_or_else(|| self.manager.settings.data_dir.display().to_string()))
    }

    /// `device_path`: given, or the data volume's.
    pub(super) async fn device_arg(&self, a: &Args<'_>) -> Result<String, RemoteFailure> {
        match a.opt_str("device_path")? {
            Some(d) => Ok(d),
            None => self.manager.volume().await.map(|v| v.device).ok_or_else(|| a.wrong("device_path", "a device path (this guest has no data volume)")),
        }
    }

    /// The volume calls: one at a time with the lifecycle calls; they never start or stop Redis.
    pub(super) async fn volume_call(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        let recorded = self.manager.volume().await;
        let mount_point = match a.opt_str("mount_point")? {
            Some(m) => m,
            None => recorded.map(|v| v.mount_point.display().to_string()).unwrap_or(self.mount_point_arg(a)?),
        };
        let _guard = self.lifecycle.lock().await;
        let volumes = self.manager.volumes();
        let result = match a.method {
            "mount_volume" => {
                let device = self.device_arg(a).await?;
                volumes.mount(&device, &mount_point, a.opt_bool("write_to_fstab", false)?).await
            }
            "unmount_volume" => volumes.unmount(a.opt_str("device_path")?.as_deref(), &mount_point).await,
            _ => {
                // `online` (API 1.1): a mounted file system grows online either way.
                a.opt_bool("online", false)?;
                let device = self.device_arg(a).await?;
                volumes.resize(&device, &mount_point).await
            }
        };
        result.map(|_| Value::Null).map_err(|e| to_failure(a, e.into()))
    }

}
