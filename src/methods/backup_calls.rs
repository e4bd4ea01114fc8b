//! `create_backup` and the restore's `backup_info`: Trove's arguments, the conductor's reports.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::args::Args;
use super::{not_supported, Guest};
use crate::config::BackupSettings;
use crate::datastore::redis::backup;
use crate::rpc::{CallContext, RemoteFailure};

/// Casts to Trove's conductor other than heartbeats (the agent sends them through `rpc::conductor`).
#[async_trait]
pub trait Conductor: Send + Sync {
    /// `update_backup(instance_id, backup_id, sent, **fields)`; a failure to send is logged.
    async fn update_backup(&self, backup_id: &str, fields: Map<String, Value>);
}

/// Backups: the agent's settings and where their progress is reported.
pub struct Backups {
    pub settings: BackupSettings,
    pub conductor: Arc<dyn Conductor>,
}

impl Guest {
    /// `create_backup(backup_info)`: Trove's cast. Reports BUILDING, then COMPLETED (checksum,
    /// location, size in GB) or FAILED to the conductor, as Trove's own guests do.
    pub(super) async fn create_backup(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let info = a.req_object("backup_info")?;
        let id = info.get("id").and_then(Value::as_str).filter(|id| backup::valid_id(id));
        let id = id.ok_or_else(|| a.wrong("backup_info.id", "a backup id (letters, digits, '-' and '_')"))?.to_owned();
        let conductor = self.backups.conductor.clone();
        let fail = |why: String| {
            let conductor = conductor.clone();
            let id = id.clone();
            async move {
                tracing::error!(backup = %id, error = %why, "backup failed");
                conductor.update_backup(&id, fields(&[("state", json!("FAILED")), ("success", json!(false)), ("backup_type", json!("full"))])).await;
                RemoteFailure::guest_error(&format!("Failed to create backup {id}, error: {why}"))
            }
        };
        let _running = match self.backup_running.try_lock() {
            Ok(guard) => guard,
            Err(_) => return Err(fail("another backup is running on this instance".into()).await),
        };
        let spec = match self.backup_spec(&id, &info, ctx) {
            Ok(spec) => spec,
            Err(why) => return Err(fail(why).await),
        };
        let used = self.manager.filesystem_stats(None).ok().and_then(|s| s["used"].as_f64()).unwrap_or(0.0);
        conductor.update_backup(&id, fields(&[("size", json!(used)), ("state", json!("BUILDING")), ("backup_type", json!("full"))])).await;
        tracing::info!(backup = %id, container = %spec.container, "backup started");
        match backup::create(&self.manager, &spec).await {
            Ok(done) => {
                tracing::info!(backup = %id, location = %done.location, checksum = %done.checksum, bytes = done.size, segments = done.segments, "backup completed");
                let gb = done.size as f64 / 1024f64.powi(3);
                conductor
                    .update_backup(
                        &id,
                        fields(&[
                            ("size", json!(gb)),
                            ("state", json!("COMPLETED")),
                            ("backup_type", json!("full")),
                            ("checksum", json!(done.checksum)),
                            ("location", json!(done.location)),
                            ("success", json!(true)),
                        ]),
                    )
                    .await;
                Ok(Value::Null)
            }
            Err(e) => Err(fail(e.to_string()).await),
        }
    }

    pub(super) fn backup_spec(&self, id: &str, info: &Map<String, Value>, ctx: &CallContext) -> Result<backup::BackupSpec, String> {
        let s = &self.backups.settings;
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned).filter(|v| !v.is_empty());
        if info.get("parent").is_some_and(|p| !p.is_null()) {
            return Err("incremental backups are not supported for Redis (an RDB is always whole)".into());
        }
        if let Some(driver) = text("storage_driver").filter(|d| d != "swift") {
            return Err(format!("storage driver '{driver}' is not supported (only swift)"));
        }
        let swift_url = text("swift_url").ok_or("Missing swift_url in backup metadata.")?;
        let token = ctx.auth_token.as_ref().ok_or("the request carries no auth_token for Swift")?;
        let container = text("swift_container").unwrap_or_else(|| s.swift_container.clone());
        if container.contains('/') {
            return Err(format!("swift_container '{container}' is not a container name"));
        }
        let metadata = ["datastore", "datastore_version"].iter().filter_map(|k| Some((k.to_string(), text(k)?))).collect();
        Ok(backup::BackupSpec {
            id: id.to_owned(),
            container,
            swift_url,
            token: secrecy::SecretString::from(secrecy::ExposeSecret::expose_secret(token).to_owned()),
            metadata,
            key: s.aes_cbc_key.clone(),
            segment_max_size: s.segment_max_size,
            insecure: s.swift_api_insecure,
            snapshot_timeout: std::time::Duration::from_secs(s.snapshot_timeout),
        })
    }

    /// `prepare`'s `backup_info` (Trove: id, location, checksum, storage_driver, swift_url).
    pub(super) fn restore_spec(&self, a: &Args<'_>, info: &Map<String, Value>, ctx: &CallContext) -> Result<backup::RestoreSpec, RemoteFailure> {
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned).filter(|v| !v.is_empty());
        let id = text("id").filter(|id| backup::valid_id(id)).ok_or_else(|| a.wrong("backup_info.id", "a backup id (letters, digits, '-' and '_')"))?;
        if let Some(driver) = text("storage_driver").filter(|d| d != "swift") {
            return Err(not_supported(&format!("restore from storage driver '{driver}'")));
        }
        let location = text("location").ok_or_else(|| a.wrong("backup_info.location", "the backup's Swift location"))?;
        let swift_url = text("swift_url").ok_or_else(|| a.wrong("backup_info.swift_url", "the Swift storage URL"))?;
        let checksum = text("checksum");
        if checksum.as_ref().is_some_and(|c| c.len() != 32 || !c.chars().all(|ch| ch.is_ascii_hexdigit())) {
            return Err(a.wrong("backup_info.checksum", "an MD5 in hex"));
        }
        let token = ctx.auth_token.as_ref().ok_or_else(|| RemoteFailure::guest_error("prepare from a backup: the request carries no auth_token for Swift"))?;
        let s = &self.backups.settings;
        Ok(backup::RestoreSpec {
            id,
            location,
            checksum,
            swift_url,
            token: secrecy::SecretString::from(secrecy::ExposeSecret::expose_secret(token).to_owned()),
            key: s.aes_cbc_key.clone(),
            insecure: s.swift_api_insecure,
        })
    }

}

pub(super) fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

