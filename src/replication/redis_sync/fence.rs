//! Write fences: the promote's (CLIENT PAUSE WRITE, or min-replicas on Redis 6.0) and the split-brain one (min-replicas-to-write).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::super::Result;
use super::RedisSync;
use crate::datastore::redis::admin::Admin;
use crate::datastore::redis::conf;
use crate::datastore::redis::info::Role;

/// `min-replicas-to-write` out of reach: the master refuses every write (`NOREPLICAS`).
const HELD_MIN_REPLICAS: &str = "100000";

/// A write fence in force on this (master) node.
pub(super) struct Fence {
    /// `repl-ping-replica-period` before the fence, restored when it lifts.
    saved_ping_period: Option<String>,
    /// `min-replicas-to-write` before the fence, when that mechanism was used (Redis < 6.2).
    saved_min_replicas: Option<String>,
    expiry: CancellationToken,
    /// Held for a deposed master: no expiry.
    held: bool,
}

impl RedisSync {
    /// Lifts the fence, if any: unpause, restore the ping period and min-replicas.
    pub(super) async fn lift_fence(&self, admin: &mut Admin) -> Result<()> {
        if self.epochs.deposed() && admin.replication().await?.role == Role::Master {
            tracing::info!("write fence kept: this master is deposed by the accepted epoch");
            return Ok(());
        }
        let Some(fence) = self.fence.lock().await.take() else { return Ok(()) };
        fence.expiry.cancel();
        restore_fence(admin, &fence, self.manager.major()).await?;
        tracing::info!("write fence lifted");
        Ok(())
    }

    /// Sets `min-replicas-to-write` once the master has that many connected replicas.
    /// `min-replicas-to-write` for this master: the operator's, or, when the accepted topology has
    /// two or more replicas (`fence_majority`), `fence_for(n)`.
    pub(super) fn fence_size(&self) -> u32 {
        let replicas = self.epochs.record().topology.filter(|t| t.master == self.epochs.me()).map_or(0, |t| t.replicas.len() as u32);
        let fence = if self.settings.fence_majority && replicas >= 2 { fence_for(replicas) } else { 0 };
        self.settings.min_replicas_to_write.max(fence)
    }

    pub(super) async fn arm_split_brain_fence(&self, admin: &mut Admin) -> Result<()> {
        let want = self.fence_size();
        if self.fence.lock().await.is_some() {
            return Ok(()); // a write fence in force owns min-replicas-to-write
        }
        let key = conf::spelled_for("min-replicas-to-write", self.manager.major());
        let recorded = self.manager.snapshot_state().await.master.map_or(0, |m| m.min_replicas_to_write);
        if want < recorded {
            // The accepted topology shrank (a detach): the fence asks for no more replicas than the
            // master now has, or it would refuse every write for replicas it no longer has.
            admin.config_set(&key, &want.to_string()).await?;
            self.manager
                .update(|s| {
                    if let Some(m) = s.master.as_mut() {
                        m.min_replicas_to_write = want;
                    }
                })
                .await?;
            tracing::info!(min_replicas_to_write = want, was = recorded, "split-brain fence lowered to the accepted topology");
            return Ok(());
        }
        if want == 0 {
            return Ok(());
        }
        let repl = admin.replication().await?;
        let online = repl.replicas.iter().filter(|r| r.state == "online").count() as u32;
        if repl.role != Role::Master || online < want {
            return Ok(());
        }
        if admin.config_get(&key).await?.as_deref() != Some(want.to_string().as_str()) {
            let lag = self.settings.min_replicas_max_lag;
            admin.config_set(&conf::spelled_for("min-replicas-max-lag", self.manager.major()), &lag.to_string()).await?;
            admin.config_set(&key, &want.to_string()).await?;
            self.manager
                .update(|s| {
                    if let Some(m) = s.master.as_mut() {
                        m.min_replicas_to_write = want;
                        m.min_replicas_max_lag = lag;
                    }
                })
                .await?;
            tracing::info!(min_replicas_to_write = want, min_replicas_max_lag = lag, "split-brain fence armed");
        }
        Ok(())
    }

    /// A node that is no replica source must not refuse writes for want of replicas.
    pub(super) async fn drop_min_replicas(&self, admin: &mut Admin) -> Result<()> {
        if (self.settings.min_replicas_to_write > 0 || self.settings.fence_majority) && self.manager.snapshot_state().await.master.is_none() {
            admin.config_set(&conf::spelled_for("min-replicas-to-write", self.manager.major()), "0").await?;
        }
        Ok(())
    }

    pub(super) async fn set_read_only(&self, read_only: bool) -> Result<()> {
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        if !read_only {
            return self.lift_fence(&mut admin).await;
        }
        if admin.replication().await?.role == Role::Replica {
            return Ok(()); // replicas already refuse client writes
        }
        if self.fence.lock().await.as_ref().is_some_and(|f| f.held) {
            return Ok(()); // a deposed master already refuses writes
        }
        self.install_fence(&mut admin, true).await
    }

    /// A master that the accepted topology names as a replica (deposed) takes no writes: the fence
    /// goes up without an expiry, and only an attach or an epoch naming it master lifts it.
    pub(super) async fn hold_if_deposed(&self) -> Result<()> {
        if !self.epochs.deposed() {
            return Ok(());
        }
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        if admin.replication().await?.role != Role::Master || !self.epochs.deposed() {
            return Ok(());
        }
        let held = match self.fence.lock().await.as_ref() {
            // A promote's pause is in force: it ends in a re-point, or expires into the held fence.
            Some(f) if !f.held => return Ok(()),
            Some(_) => true,
            None => false,
        };
        let key = conf::spelled_for("min-replicas-to-write", self.manager.major());
        if held && admin.config_get(&key).await?.as_deref() == Some(HELD_MIN_REPLICAS) {
            return Ok(());
        }
        tracing::warn!("this master is deposed by a newer epoch: it refuses writes until it is re-attached");
        self.install_fence(&mut admin, false).await
    }

    /// Puts the write fence up; `expires`: it lifts itself after `fence_timeout` (a promote's).
    async fn install_fence(&self, admin: &mut Admin, expires: bool) -> Result<()> {
        let major = self.manager.major();
        let pause_write = match admin.info("server").await?.server() {
            Some(server) => server.has_pause_write(),
            None => major >= 7,
        };
        let mut guard = self.fence.lock().await;
        let ms = self.settings.fence_timeout;
        if let Some(f) = guard.as_ref() {
            f.expiry.cancel();
        }
        let period_key = conf::spelled_for("repl-ping-replica-period", major);
        // Keep PINGs from moving the offset while fenced (they would force a full resync later).
        let saved_ping_period = match guard.as_ref() {
            Some(f) => f.saved_ping_period.clone(),
            None => admin.config_get(&period_key).await?,
        };
        admin.config_set(&period_key, "3600").await?;
        // A promote's fence pauses writes (clients wait, then go on); Redis 6.0 has no CLIENT PAUSE
        // WRITE, and a deposed master must refuse at once (clients rediscover): min-replicas-to-write.
        let expiry = CancellationToken::new();
        let saved_min_replicas = if pause_write && expires {
            admin.pause_writes(ms, true).await?;
            tokio::spawn(close_on_departure(admin.clone(), expiry.clone()));
            None
        } else {
            let key = conf::spelled_for("min-replicas-to-write", major);
            let was_paused = guard.as_ref().is_some_and(|f| f.saved_min_replicas.is_none());
            let saved = match guard.as_ref().and_then(|f| f.saved_min_replicas.clone()) {
                Some(saved) => Some(saved),
                None => admin.config_get(&key).await?,
            };
            admin.config_set(&key, HELD_MIN_REPLICAS).await?;
            if was_paused {
                let _ = admin.unpause().await;
            }
            saved.or(Some("0".into()))
        };
        *guard = Some(Fence { saved_ping_period, saved_min_replicas, expiry: expiry.clone(), held: !expires });
        drop(guard);
        if !expires {
            return Ok(());
        }
        // The fence must never outlive a crashed promote.
        let fence = self.fence.clone();
        let manager = self.manager.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = expiry.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {
                    if let Some(f) = fence.lock().await.take() {
                        if let Ok(mut admin) = manager.admin().await {
                            let _ = restore_fence(&mut admin, &f, manager.major()).await;
                        }
                        tracing::warn!(timeout_ms = ms, "write fence expired");
                    }
                }
            }
        });
        tracing::info!(timeout_ms = ms, "write fence in place");
        Ok(())
    }

    pub(super) async fn maintain_fence(&self) -> Result<()> {
        self.hold_if_deposed().await?;
        // A fence to arm, or one armed for a topology that has since shrunk.
        match self.manager.snapshot_state().await.master {
            None => return Ok(()),
            Some(m) if m.min_replicas_to_write == 0 && self.fence_size() == 0 => return Ok(()),
            Some(_) => {}
        }
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        self.arm_split_brain_fence(&mut admin).await
    }
}

/// Closes a paused master's client connections the moment one of the replicas that were online
/// when the pause began leaves it: in a promote that is the successor's `REPLICAOF NO ONE`, so the
/// clients waiting on the pause rediscover the new master then, not at the re-point one round trip
/// later. Looks every `DEPARTURE_POLL` while the pause is up, for at most `DEPARTURE_WATCH`. Best
/// effort: a client closed early only reconnects (its paused write was never applied). The first
/// look, which names the replicas to watch, is made here, so the fence answers without waiting
/// for it: the successor leaves only after the coordinator has that answer.
async fn close_on_departure(mut admin: Admin, paused: CancellationToken) {
    let Ok(first) = admin.replication().await else { return };
    let online: Vec<(String, u16)> = first.replicas.into_iter().filter(|r| r.state == "online").map(|r| (r.ip, r.port)).collect();
    if online.is_empty() {
        return;
    }
    let until = tokio::time::Instant::now() + DEPARTURE_WATCH;
    while tokio::time::Instant::now() < until {
        tokio::select! {
            _ = paused.cancelled() => return,
            _ = tokio::time::sleep(DEPARTURE_POLL) => {}
        }
        let Ok(repl) = admin.replication().await else { return };
        if repl.role != Role::Master {
            return;
        }
        let left = online.iter().find(|(ip, port)| !repl.replicas.iter().any(|r| &r.ip == ip && r.port == *port && r.state == "online"));
        if let Some((ip, port)) = left {
            match admin.kill_clients().await {
                Ok(killed) => tracing::info!(killed, replica = %format!("{ip}:{port}"), "a replica left the paused master (its successor took over?): closed its client connections"),
                Err(error) => tracing::warn!(%error, "could not close the paused master's client connections"),
            }
            return;
        }
    }
}

/// How often a paused master looks for a departing replica (`close_on_departure`).
const DEPARTURE_POLL: Duration = Duration::from_millis(1);
/// How long it looks: a promote's successor takes over within a few round trips.
const DEPARTURE_WATCH: Duration = Duration::from_secs(5);

/// The fence of a master with `n` replicas: half of them, rounded up. A failover needs a majority
/// of the replicas (`n / 2 + 1`) unlinked from the master and promised to the coordinator, so a
/// master cut off from them keeps at most `n - (n / 2 + 1)` replicas: one fewer than this.
pub(super) fn fence_for(n: u32) -> u32 {
    n.div_ceil(2)
}

async fn restore_fence(admin: &mut Admin, fence: &Fence, major: u32) -> Result<()> {
    let period_key = conf::spelled_for("repl-ping-replica-period", major);
    let min_key = conf::spelled_for("min-replicas-to-write", major);
    if let Some(saved) = &fence.saved_min_replicas {
        admin.config_set(&min_key, saved).await?;
    } else {
        // Unpausing an unpaused server is harmless.
        let _ = admin.unpause().await;
    }
    if let Some(period) = &fence.saved_ping_period {
        admin.config_set(&period_key, period).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fence_for;

    #[test]
    fn the_fence_is_one_more_than_a_master_cut_off_from_a_failover_quorum_keeps() {
        for n in 2..=9u32 {
            let quorum = n / 2 + 1;
            assert_eq!(fence_for(n), n - quorum + 1, "{n} replicas");
        }
        assert_eq!((fence_for(2), fence_for(3), fence_for(4), fence_for(5)), (1, 2, 2, 3));
    }
}
