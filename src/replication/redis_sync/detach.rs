//! Detaching a replica, at once or held back for a failover.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::super::Result;
use super::RedisSync;
use crate::datastore::redis::admin::Admin;
use crate::datastore::redis::info::Role;
use crate::datastore::redis::RedisManager;

impl RedisSync {
    async fn detach_now(&self) -> Result<()> {
        let mut admin = self.admin().await?;
        let repl = admin.replication().await?;
        if repl.role == Role::Replica {
            admin.replicaof_no_one().await?;
            tracing::info!("detached: now a standalone master");
        }
        clear_master_auth(&mut admin, &self.manager).await?;
        self.manager.set_replica(None).await?;
        self.drop_min_replicas(&mut admin).await
    }

    pub(super) async fn detach_from_master(&self, for_failover: bool) -> Result<()> {
        let _op = self.op.lock().await;
        if !for_failover {
            self.cancel_pending_detach();
            return self.detach_now().await;
        }
        let mut admin = self.admin().await?;
        if admin.replication().await?.role != Role::Replica {
            return Ok(());
        }
        // Held back: stay a read-only replica so the next attach retargets with PSYNC, and the
        // next enable_as_master detaches for real. If neither comes, detach after the grace period.
        let token = CancellationToken::new();
        if let Some(old) = self.pending_detach.lock().unwrap_or_else(|p| p.into_inner()).replace(token.clone()) {
            old.cancel();
        }
        let grace = Duration::from_secs(self.settings.failover_detach_grace);
        let manager = self.manager.clone();
        let op = self.op.clone();
        let epochs = self.epochs.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(grace) => {
                    let _op = op.lock().await;
                    if token.is_cancelled() { return; }
                    // The accepted topology names another master: this guest stays its replica (a
                    // coordinator that died half way must not leave an orphaned writable master).
                    if epochs.deposed() {
                        tracing::warn!(grace_s = grace.as_secs(), "held-back failover detach not completed: the accepted epoch names another master");
                        return;
                    }
                    let result = async {
                        let mut admin = manager.admin().await?;
                        admin.replicaof_no_one().await?;
                        clear_master_auth(&mut admin, &manager).await?;
                        manager.set_replica(None).await
                    }.await;
                    match result {
                        Ok(()) => tracing::warn!(grace_s = grace.as_secs(), "held-back failover detach completed on its own (no attach or enable_as_master came)"),
                        Err(error) => tracing::error!(%error, "held-back detach failed"),
                    }
                }
            }
        });
        tracing::info!(grace_s = grace.as_secs(), "failover detach held back until attach_replica or enable_as_master");
        Ok(())
    }
}

/// Forgets the old master's credentials (`masterauth`, and `masteruser` on Redis >= 6) and
/// turns `tls-replication` off when it was on; the caller persists the state without the replica.
pub(super) async fn clear_master_auth(admin: &mut Admin, manager: &RedisManager) -> crate::datastore::Result<()> {
    admin.config_set("masterauth", "").await?;
    if manager.major() >= 6 {
        admin.config_set("masteruser", "").await?;
    }
    if manager.snapshot_state().await.replica.is_some_and(|r| r.tls) {
        admin.config_set("tls-replication", "no").await?;
    }
    Ok(())
}
