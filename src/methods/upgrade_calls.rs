//! `pre_upgrade`, `upgrade` and `rebuild`: Trove's datastore-version upgrade and a rebuilt image.

use serde_json::Value;

use super::args::Args;
use super::{to_failure, Guest};
use crate::datastore::redis::upgrade;
use crate::datastore::ServiceStatus;
use crate::rpc::RemoteFailure;

impl Guest {
    /// `pre_upgrade` (a call): reports upgrading until the upgrade ends; answers what serves now.
    pub(super) async fn pre_upgrade(&self) -> Result<Value, RemoteFailure> {
        let _guard = self.lifecycle.lock().await;
        self.set_status(ServiceStatus::Upgrading);
        Ok(upgrade::pre_upgrade(&self.manager).await)
    }

    /// `upgrade` (a cast): Trove then waits for healthy; any failure reports failed, so Trove
    /// stops waiting, while Redis serves on as before (refused) or on the old binary (rolled back).
    pub(super) async fn upgrade(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        let _guard = self.lifecycle.lock().await;
        let version = a.req_object("upgrade_info").and_then(|info| match info.get("datastore_version") {
            Some(Value::String(v)) if !v.trim().is_empty() => Ok(v.clone()),
            _ => Err(a.wrong("upgrade_info.datastore_version", "a datastore version name")),
        });
        let result = match version {
            Ok(v) => upgrade::upgrade(&self.manager, &v).await.map_err(|e| to_failure(a, e.into())),
            Err(f) => Err(f),
        };
        match result {
            Ok(done) => {
                tracing::info!(%done, "upgrade finished");
                self.refresh_status().await;
                Ok(Value::Null)
            }
            Err(failure) => {
                tracing::error!(error = %failure.message, "upgrade failed");
                self.set_status(ServiceStatus::Failed);
                Err(failure)
            }
        }
    }

    /// `rebuild` (a cast, on the new image): Redis on the data already on disk, as a prepare would.
    pub(super) async fn rebuild(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        let ds_version = a.required("ds_version")?.as_str().filter(|v| !v.trim().is_empty()).map(str::to_owned);
        let ds_version = ds_version.ok_or_else(|| a.wrong("ds_version", "a datastore version name"))?;
        let config_contents = a.opt_str("config_contents")?;
        let overrides = a.overrides("config_overrides", false)?;
        let _guard = self.lifecycle.lock().await;
        self.set_status(ServiceStatus::Building);
        match upgrade::rebuild(&self.manager, &ds_version, config_contents, overrides).await {
            Ok(()) => {
                self.set_status(ServiceStatus::Healthy);
                Ok(Value::Null)
            }
            Err(error) => {
                self.set_status(ServiceStatus::Failed);
                Err(to_failure(a, error.into()))
            }
        }
    }

}
