//! What a node reports: its replication status and offsets, and the wait for an offset.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::super::{Error, Result};
use super::RedisSync;
use crate::datastore::redis::info::Role;
use crate::datastore::redis::service;

impl RedisSync {
    pub(super) async fn latest_offset(&self) -> Result<i64> {
        Ok(self.admin().await?.replication().await?.applied_offset())
    }

    pub(super) async fn last_offset(&self) -> Result<(Option<String>, i64)> {
        let repl = self.admin().await?.replication().await?;
        Ok((repl.master_host.clone(), repl.applied_offset()))
    }

    pub(super) async fn wait_offset(&self, txn: i64) -> Result<()> {
        let timeout = Duration::from_secs(self.settings.wait_for_txn_timeout);
        let started = Instant::now();
        let mut admin = self.admin().await?;
        loop {
            let offset = admin.replication().await?.applied_offset();
            if offset >= txn {
                tracing::info!(txn, offset, elapsed_ms = started.elapsed().as_millis() as u64, "reached offset");
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "replication offset {offset} did not reach {txn} within {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(super) async fn replication_status(&self) -> Result<Value> {
        let mut admin = self.admin().await?;
        let info = admin.info("all").await?;
        let repl = info.replication().ok_or_else(|| Error::Refused("INFO has no replication section".into()))?;
        let fenced = self.fence.lock().await.is_some();
        // Our own measure of the master's liveness, at sub-second resolution (`liveness`).
        let heard_ms = match (&repl.master_host, repl.master_port) {
            (Some(host), Some(port)) if repl.role == Role::Replica => self.heard.ms_ago(host, port),
            _ => None,
        };
        // The split-brain fence this master's agent set: a watcher that sees the master only
        // through silent links waits until the fence must have stopped a cut-off master's writes.
        let write_fence = match self.manager.snapshot_state().await.master {
            Some(m) if repl.role == Role::Master && m.min_replicas_to_write > 0 => {
                json!({"min_replicas": m.min_replicas_to_write, "max_lag_s": m.min_replicas_max_lag})
            }
            _ => Value::Null,
        };
        let pending = self.pending_detach.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        Ok(json!({
            "role": repl.role,
            "replid": repl.replid,
            "replid2": repl.replid2,
            "offset": repl.applied_offset(),
            "master_repl_offset": repl.master_repl_offset,
            "master_host": repl.master_host,
            "master_port": repl.master_port,
            "link_up": repl.master_link_up,
            "master_last_io_seconds_ago": repl.master_last_io_seconds_ago,
            "master_heard_ms_ago": heard_ms,
            "sync_in_progress": repl.master_sync_in_progress,
            "read_only": repl.slave_read_only.unwrap_or(false) && repl.role == Role::Replica || fenced,
            "fenced": fenced,
            "write_fence": write_fence,
            "pending_failover_detach": pending,
            // Started guarded (a replica of nobody) until a coordinator decides.
            "guarded": repl.role == Role::Replica
                && repl.master_host.as_deref() == Some(service::GUARD_MASTER.0)
                && repl.master_port.map(|p| p.to_string()).as_deref() == Some(service::GUARD_MASTER.1),
            "replicas": repl.replicas,
            "sync_full": info.stat("sync_full"),
            "sync_partial_ok": info.stat("sync_partial_ok"),
            "run_id": info.run_id(),
            "server": info.server().map(|s| json!({"name": s.name(), "version": s.version_string()})),
            "port": self.replication_port(),
            "tls": self.settings.tls_replication,
            "host": self.advertise_host(),
        }))
    }
}
