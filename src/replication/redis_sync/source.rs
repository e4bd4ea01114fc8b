//! The replica source: its snapshot for new replicas, persistence and diskless settings, enable_as_master and demote.


use serde_json::Value;

use super::super::{Dataset, Error, Result, Snapshot, SnapshotRequest};
use super::detach::clear_master_auth;
use super::{RedisSync, NAME};
use crate::datastore::redis::admin::Admin;
use crate::datastore::redis::conf;
use crate::datastore::redis::info::Role;
use crate::datastore::redis::state::{MasterSettings, SOURCE_PING_PERIOD_S};

impl RedisSync {
    /// Turns on the default save points when neither RDB nor AOF is on, or refuses.
    async fn ensure_persistence(&self, admin: &mut Admin, allow: Option<bool>) -> Result<()> {
        let save = admin.config_get("save").await?.unwrap_or_default();
        let aof = admin.config_get("appendonly").await?.unwrap_or_default();
        if !save.trim().is_empty() || aof == "yes" {
            return Ok(());
        }
        if !allow.unwrap_or(self.settings.enable_persistence) {
            return Err(Error::Refused(
                "the master has persistence off (no RDB save points, no AOF); a replica source must persist its data. \
                 Turn on 'save' or 'appendonly', or allow the agent to (replication.enable_persistence, or the caller's enable_persistence flag)"
                    .into(),
            ));
        }
        let save = self.settings.default_save.clone();
        admin.config_set("save", &save).await?;
        self.manager.update(|s| s.persistence = Some(save.clone())).await?;
        tracing::info!(save = %save, "persistence was off on the replica source; turned on RDB save points");
        Ok(())
    }

    /// Applies diskless-sync settings at runtime; the caller persists the returned settings.
    async fn apply_master_settings(&self, admin: &mut Admin, config: Option<&str>, replica_count: Option<u32>) -> Result<MasterSettings> {
        let (diskless, delay) = parse_source_config(config);
        let diskless = diskless.unwrap_or(self.settings.diskless_sync);
        let mut delay = delay.unwrap_or(self.settings.diskless_sync_delay);
        if replica_count == Some(1) {
            delay = 0; // the delay only gathers several replicas into one transfer
        }
        let max_replicas = match self.settings.diskless_sync_max_replicas {
            0 => replica_count,
            n => Some(n),
        };
        admin.config_set("repl-diskless-sync", if diskless { "yes" } else { "no" }).await?;
        admin.config_set("repl-diskless-sync-delay", &delay.to_string()).await?;
        let mut persisted_max = None;
        if let Some(n) = max_replicas {
            if self.manager.major() >= 7 {
                admin.config_set("repl-diskless-sync-max-replicas", &n.to_string()).await?;
                persisted_max = Some(n);
            }
        }
        let major = self.manager.major();
        admin.config_set(&conf::spelled_for("repl-ping-replica-period", major), &SOURCE_PING_PERIOD_S.to_string()).await?;
        let fence = self.fence_size();
        if fence > 0 {
            admin.config_set(&conf::spelled_for("min-replicas-max-lag", major), &self.settings.min_replicas_max_lag.to_string()).await?;
        }
        // Armed at runtime only once enough replicas are connected (see `maintain`), so that
        // creating replicas or promoting never refuses writes while the replicas attach; lowered
        // at once when the topology has shrunk.
        self.arm_split_brain_fence(admin).await?;
        Ok(MasterSettings {
            diskless_sync: diskless,
            diskless_sync_delay: delay,
            diskless_sync_max_replicas: persisted_max,
            min_replicas_to_write: fence,
            min_replicas_max_lag: self.settings.min_replicas_max_lag,
        })
    }

    pub(super) async fn source_snapshot(&self, request: SnapshotRequest) -> Result<Snapshot> {
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        let repl = admin.replication().await?;
        if repl.role == Role::Replica {
            return Err(Error::Refused(format!(
                "this instance is a replica of {}:{}; a replica cannot be a replica source (replica of a replica is not allowed)",
                repl.master_host.unwrap_or_default(),
                repl.master_port.unwrap_or_default()
            )));
        }
        self.manager.apply_dual_channel(&mut admin).await?;
        self.ensure_persistence(&mut admin, request.enable_persistence).await?;
        let used = admin.info("memory").await?.used_memory().unwrap_or(0);
        let free = self.manager.free_disk()?;
        let needed = (used as f64 * self.settings.disk_headroom) as u64;
        if needed > free {
            return Err(Error::Refused(format!(
                "not enough disk for a dump: need {needed} bytes ({}x used_memory {used}), {free} free in {}",
                self.settings.disk_headroom,
                self.manager.data_dir().display()
            )));
        }
        let master = self.apply_master_settings(&mut admin, request.replica_source_config.as_deref(), request.replica_count).await?;
        let (diskless, delay) = (master.diskless_sync, master.diskless_sync_delay);
        self.manager.set_master(Some(master)).await?;
        // Several replicas under a diskless delay: start their one transfer once they all wait.
        // Not with Valkey's dual-channel sync: its RDB channels would not share the agent's fork.
        let gather = diskless && delay > 0 && !self.settings.dual_channel_replication;
        if let Some(want) = request.replica_count.filter(|n| *n >= 2 && gather) {
            super::gather::spawn(self.manager.clone(), want, delay);
        }
        let fs = self.manager.filesystem_stats(None)?;
        Ok(Snapshot {
            dataset: Dataset {
                datastore_manager: "redis".into(),
                dataset_size: ((used as f64 / 1024f64.powi(3)) * 100.0).round() / 100.0,
                volume_size: fs["total"].as_f64().unwrap_or(0.0),
                snapshot_id: None,
            },
            replication_strategy: NAME.into(),
            master: self.master_ref().await,
            log_position: Value::Null,
        })
    }

    pub(super) async fn enable_master(&self, replica_source_config: Option<&str>) -> Result<()> {
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        self.manager.apply_dual_channel(&mut admin).await?;
        self.cancel_pending_detach();
        if admin.replication().await?.role == Role::Replica {
            admin.replicaof_no_one().await?;
            tracing::info!("now a master (the replication history is kept for the old replicas' partial resync)");
        }
        clear_master_auth(&mut admin, &self.manager).await?;
        self.ensure_persistence(&mut admin, None).await?;
        let master = self.apply_master_settings(&mut admin, replica_source_config, None).await?;
        // One write of redis.conf for both changes.
        self.manager
            .update(|s| {
                s.replica = None;
                s.master = Some(master);
            })
            .await?;
        self.lift_fence(&mut admin).await?;
        Ok(())
    }

    pub(super) async fn demote_master(&self) -> Result<()> {
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        self.lift_fence(&mut admin).await?;
        self.manager.set_master(None).await?;
        self.drop_min_replicas(&mut admin).await
    }
}

/// Reads `repl-diskless-sync` and `repl-diskless-sync-delay` from Trove's replica-source template.
pub fn parse_source_config(config: Option<&str>) -> (Option<bool>, Option<u32>) {
    let mut diskless = None;
    let mut delay = None;
    for d in conf::parse(config.unwrap_or("")).unwrap_or_default() {
        match (d.key.as_str(), d.args.first().map(String::as_str)) {
            ("repl-diskless-sync", Some(v)) => diskless = Some(matches!(v, "yes" | "true" | "1")),
            ("repl-diskless-sync-delay", Some(v)) => delay = v.parse().ok(),
            _ => {}
        }
    }
    (diskless, delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_config() {
        let cases = [
            (None, (None, None)),
            (Some("repl-diskless-sync yes\nrepl-diskless-sync-delay 10\n"), (Some(true), Some(10))),
            (Some("repl-diskless-sync no"), (Some(false), None)),
            (Some("# nothing\n"), (None, None)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_source_config(input), want, "{input:?}");
        }
    }
}
