//! `create_backup` and the restore's `backup_info`: Trove's arguments, the conductor's reports, the boot report of interrupted backups.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::args::Args;
use super::{not_supported, Guest};
use crate::config::BackupSettings;
use crate::datastore::redis::backup;
use crate::datastore::redis::backup_marker::BackupMarker;
use crate::rpc::backoff::Backoff;
use crate::rpc::{CallContext, RemoteFailure};

/// Casts to Trove's conductor other than heartbeats (the agent sends them through `rpc::conductor`).
#[async_trait]
pub trait Conductor: Send + Sync {
    /// `update_backup(instance_id, backup_id, sent, **fields)`; a failure to send is logged and returned.
    async fn update_backup(&self, backup_id: &str, fields: Map<String, Value>) -> Result<(), crate::rpc::Error>;
}

/// Backups: the agent's settings, where their progress is reported, and the marker of those running.
pub struct Backups {
    pub settings: BackupSettings,
    pub conductor: Arc<dyn Conductor>,
    pub marker: Arc<BackupMarker>,
}

/// The fields of a FAILED report, as Trove's own guests send them.
fn failed_fields() -> Map<String, Value> {
    fields(&[("state", json!("FAILED")), ("success", json!(false)), ("backup_type", json!("full"))])
}

/// Sends one `update_backup` until the broker takes it (retries 1 s, doubling to 30 s), or until
/// `cancel` fires; true when sent.
async fn report_until_sent(conductor: &dyn Conductor, id: &str, fields: Map<String, Value>, cancel: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        if conductor.update_backup(id, fields.clone()).await.is_ok() {
            return true;
        }
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// At boot, before any call is served: the backups a previous agent started and never reported
/// finished. An unreadable marker is logged and removed.
pub fn interrupted_backups(marker: &BackupMarker) -> Vec<String> {
    match marker.read() {
        Ok(list) => list.into_iter().map(|s| s.id).collect(),
        Err(error) => {
            tracing::error!(%error, "backup marker unreadable, removed; an interrupted backup it named stays BUILDING in Trove");
            if let Err(error) = marker.discard() {
                tracing::error!(%error, "cannot remove the backup marker");
            }
            Vec::new()
        }
    }
}

/// Reports each backup `ids` names FAILED (it was interrupted by an agent restart), retrying until
/// the conductor's cast is sent or `cancel` fires, then takes it off the marker.
pub async fn report_interrupted(ids: Vec<String>, conductor: Arc<dyn Conductor>, marker: Arc<BackupMarker>, cancel: CancellationToken) {
    for id in ids {
        if !report_until_sent(&*conductor, &id, failed_fields(), &cancel).await {
            return;
        }
        tracing::error!(backup = %id, "backup FAILED: interrupted by an agent restart (reported to the conductor)");
        if let Err(error) = marker.finish(&id) {
            tracing::error!(backup = %id, %error, "cannot take the backup off the marker");
        }
    }
}

impl Guest {
    /// `create_backup(backup_info)`: Trove's cast. Records the backup in the marker, reports
    /// BUILDING, then COMPLETED (checksum, location, size in GB) or FAILED to the conductor, as
    /// Trove's own guests do; the final report is retried until sent, then the marker is cleared.
    pub(super) async fn create_backup(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let info = a.req_object("backup_info")?;
        let id = info.get("id").and_then(Value::as_str).filter(|id| backup::valid_id(id));
        let id = id.ok_or_else(|| a.wrong("backup_info.id", "a backup id (letters, digits, '-' and '_')"))?.to_owned();
        let conductor = self.backups.conductor.clone();
        let refuse = |why: String| {
            let conductor = conductor.clone();
            let id = id.clone();
            async move {
                tracing::error!(backup = %id, error = %why, "backup failed");
                let _ = conductor.update_backup(&id, failed_fields()).await;
                RemoteFailure::guest_error(&format!("Failed to create backup {id}, error: {why}"))
            }
        };
        let _running = match self.backup_running.try_lock() {
            Ok(guard) => guard,
            Err(_) => return Err(refuse("another backup is running on this instance".into()).await),
        };
        let spec = match self.backup_spec(&id, &info, ctx) {
            Ok(spec) => spec,
            Err(why) => return Err(refuse(why).await),
        };
        // Recorded before BUILDING is reported: a backup Trove sees BUILDING is always in the marker.
        if let Err(e) = self.backups.marker.begin(&id) {
            return Err(refuse(format!("cannot record the backup as started: {e}")).await);
        }
        let used = self.manager.filesystem_stats(None).ok().and_then(|s| s["used"].as_f64()).unwrap_or(0.0);
        let _ = conductor.update_backup(&id, fields(&[("size", json!(used)), ("state", json!("BUILDING")), ("backup_type", json!("full"))])).await;
        tracing::info!(backup = %id, container = %spec.container, "backup started");
        let (report, outcome) = match backup::create(&self.manager, &spec).await {
            Ok(done) => {
                tracing::info!(backup = %id, location = %done.location, checksum = %done.checksum, bytes = done.size, segments = done.segments, "backup completed");
                let gb = done.size as f64 / 1024f64.powi(3);
                let report = fields(&[
                    ("size", json!(gb)),
                    ("state", json!("COMPLETED")),
                    ("backup_type", json!("full")),
                    ("checksum", json!(done.checksum)),
                    ("location", json!(done.location)),
                    ("success", json!(true)),
                ]);
                (report, Ok(Value::Null))
            }
            Err(e) => {
                tracing::error!(backup = %id, error = %e, "backup failed");
                (failed_fields(), Err(RemoteFailure::guest_error(&format!("Failed to create backup {id}, error: {e}"))))
            }
        };
        // Until the final report is sent the marker stays: an agent stopped meanwhile leaves the
        // backup to the next agent's FAILED report rather than BUILDING for ever.
        report_until_sent(&*conductor, &id, report, &CancellationToken::new()).await;
        if let Err(error) = self.backups.marker.finish(&id) {
            tracing::error!(backup = %id, %error, "cannot take the backup off the marker");
        }
        outcome
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

    /// `prepare`'s `backup_info` (Trove: id, location, checksum, storage_driver, swift_url). A
    /// snapshot backup (`cinder`) needs the volume Trove made from the snapshot (`device_path`).
    pub(super) fn restore_spec(&self, a: &Args<'_>, info: &Map<String, Value>, ctx: &CallContext) -> Result<backup::Restore, RemoteFailure> {
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned).filter(|v| !v.is_empty());
        let id = text("id").filter(|id| backup::valid_id(id)).ok_or_else(|| a.wrong("backup_info.id", "a backup id (letters, digits, '-' and '_')"))?;
        match text("storage_driver").as_deref() {
            None | Some("swift") => {}
            Some("cinder") => {
                if a.opt_str("device_path")?.filter(|d| !d.is_empty()).is_none() {
                    return Err(a.wrong("device_path", "the volume Trove created from the snapshot (a snapshot backup restores from it)"));
                }
                return Ok(backup::Restore::Snapshot { id });
            }
            Some(driver) => return Err(not_supported(&format!("restore from storage driver '{driver}'"))),
        }
        let location = text("location").ok_or_else(|| a.wrong("backup_info.location", "the backup's Swift location"))?;
        let swift_url = text("swift_url").ok_or_else(|| a.wrong("backup_info.swift_url", "the Swift storage URL"))?;
        let checksum = text("checksum");
        if checksum.as_ref().is_some_and(|c| c.len() != 32 || !c.chars().all(|ch| ch.is_ascii_hexdigit())) {
            return Err(a.wrong("backup_info.checksum", "an MD5 in hex"));
        }
        let token = ctx.auth_token.as_ref().ok_or_else(|| RemoteFailure::guest_error("prepare from a backup: the request carries no auth_token for Swift"))?;
        let s = &self.backups.settings;
        Ok(backup::Restore::Swift(backup::RestoreSpec {
            id,
            location,
            checksum,
            swift_url,
            token: secrecy::SecretString::from(secrecy::ExposeSecret::expose_secret(token).to_owned()),
            key: s.aes_cbc_key.clone(),
            insecure: s.swift_api_insecure,
        }))
    }

}

pub(super) fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails the first `failures` casts (the broker is down), then takes them.
    struct Flaky {
        failures: Mutex<usize>,
        sent: Mutex<Vec<(String, Map<String, Value>)>>,
    }

    #[async_trait]
    impl Conductor for Flaky {
        async fn update_backup(&self, backup_id: &str, fields: Map<String, Value>) -> Result<(), crate::rpc::Error> {
            let mut left = self.failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(crate::rpc::Error::NotConnected);
            }
            self.sent.lock().unwrap().push((backup_id.to_owned(), fields));
            Ok(())
        }
    }

    fn setup(failures: usize) -> (tempfile::TempDir, Arc<Flaky>, Arc<BackupMarker>) {
        let dir = tempfile::tempdir().unwrap();
        let marker = Arc::new(BackupMarker::new(dir.path().join("state.backup")));
        (dir, Arc::new(Flaky { failures: Mutex::new(failures), sent: Mutex::new(Vec::new()) }), marker)
    }

    #[tokio::test]
    async fn an_interrupted_backup_is_reported_failed_after_a_retry_and_only_it_leaves_the_marker() {
        let (_dir, conductor, marker) = setup(1);
        marker.begin("old").unwrap();
        let ids = interrupted_backups(&marker);
        assert_eq!(ids, ["old"]);
        // A backup started after boot, before the report went out, is not reported.
        marker.begin("new").unwrap();
        report_interrupted(ids, conductor.clone(), marker.clone(), CancellationToken::new()).await;
        let sent = conductor.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "old");
        assert_eq!(sent[0].1, failed_fields());
        assert_eq!(marker.read().unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>(), ["new"]);
    }

    #[tokio::test]
    async fn an_unsent_report_keeps_the_marker() {
        let (_dir, conductor, marker) = setup(usize::MAX);
        marker.begin("old").unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        report_interrupted(vec!["old".into()], conductor.clone(), marker.clone(), cancel).await;
        assert!(conductor.sent.lock().unwrap().is_empty());
        assert_eq!(marker.read().unwrap().len(), 1);
    }

    #[test]
    fn an_unreadable_marker_is_removed_and_names_nothing() {
        let (_dir, _conductor, marker) = setup(0);
        std::fs::write(marker.path(), b"not a marker").unwrap();
        assert!(interrupted_backups(&marker).is_empty());
        assert!(!marker.path().exists());
    }
}
