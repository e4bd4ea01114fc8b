//! Gathers the replicas of one create into one diskless transfer, started as soon as they all wait.
//!
//! With `repl-diskless-sync-delay` > 0 Redis never forks in `SYNC`/`PSYNC`; its once-a-second
//! `replicationCron` does, after the delay (Redis 6.2) or once max-replicas wait (7.0+). Here the
//! master's agent watches `INFO replication`; once `want` replicas wait, it sets the delay to 0 for
//! an instant and sends one `PSYNC ? -1` of its own: with delay 0 Redis forks at once, and that
//! fork serves every replica waiting with the same capabilities. The pseudo-replica's connection
//! is closed on `+FULLRESYNC` (Redis drops it from the transfer) and the delay is put back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datastore::redis::admin::Admin;
use crate::datastore::redis::RedisManager;

/// How often the waiting replicas are counted.
const POLL: Duration = Duration::from_millis(10);
/// How long the pseudo-replica waits for `+FULLRESYNC` (a transfer already running makes it wait
/// for the next one: it is then dropped before it gets one). Redis 6.0 forks for a diskless sync
/// only in its once-a-second cron, even at delay 0: the wait covers one tick with room to spare.
const PSYNC_WAIT: Duration = Duration::from_millis(2500);

/// Starts the gather for `want` replicas under the operator's `delay_s` (never longer).
pub(super) fn spawn(manager: Arc<RedisManager>, want: u32, delay_s: u32) {
    tokio::spawn(async move {
        let started = Instant::now();
        match gather(&manager, want, delay_s).await {
            Ok(Outcome::Started(n)) => tracing::info!(replicas = n, want, after_ms = started.elapsed().as_millis() as u64, "diskless sync: the replicas are all waiting; started their one transfer now"),
            Ok(Outcome::AlreadyRunning) => tracing::info!(want, "diskless sync: Redis started the transfer itself (a fork was running); nothing to gather"),
            Ok(Outcome::TimedOut(n)) => tracing::info!(waiting = n, want, delay_s, "diskless sync: not every replica came within the delay; Redis starts the transfer as configured"),
            Err(e) => tracing::warn!(error = %e, "diskless sync: gathering the replicas failed; Redis starts the transfer as configured"),
        }
    });
}

enum Outcome {
    Started(usize),
    AlreadyRunning,
    TimedOut(usize),
}

async fn gather(manager: &RedisManager, want: u32, delay_s: u32) -> crate::datastore::Result<Outcome> {
    // Past the delay (plus one cron tick) Redis has started the transfer itself.
    let deadline = Instant::now() + Duration::from_secs(u64::from(delay_s) + 1);
    let mut admin = manager.admin().await?;
    let server = admin.info("server").await?.server();
    let valkey_version = server.filter(|s| s.valkey).map(|s| s.version_string());
    // A fork already running (a save point's BGSAVE, an AOF rewrite, or the replicas' own
    // transfer, which INFO also shows as "wait_bgsave") is waited out: a replica still waiting
    // once no child runs waits for a transfer that has not begun.
    let mut busy_seen = false;
    let linked = |r: &crate::datastore::redis::info::ConnectedReplica| r.state == "online" || r.state == "send_bulk";
    let linked_before = admin.replication().await?.replicas.iter().filter(|r| linked(r)).count();
    let waiting = loop {
        // One round trip: the default INFO holds both the replication and the persistence sections.
        let info = admin.info("default").await?;
        let replicas = info.replication().map(|r| r.replicas).unwrap_or_default();
        let waiting = replicas.iter().filter(|r| r.state == "wait_bgsave").count();
        if busy_seen && replicas.iter().filter(|r| linked(r)).count() >= linked_before + want as usize {
            // The fork that ran was their transfer: they are linked.
            return Ok(Outcome::AlreadyRunning);
        }
        let busy = ["rdb_bgsave_in_progress", "aof_rewrite_in_progress"].iter().any(|k| info.get(k) == Some("1"));
        busy_seen |= busy;
        if !busy && waiting >= want as usize {
            break waiting;
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::TimedOut(waiting));
        }
        tokio::time::sleep(POLL).await;
    };
    admin.config_set("repl-diskless-sync-delay", "0").await?;
    let target = manager.target().await;
    let psync = tokio::time::timeout(PSYNC_WAIT, async {
        // Dropped at the end of this block: the pseudo-replica lives until `+FULLRESYNC`.
        let mut pseudo = Admin::connect(&target).await?;
        pseudo.psync_full(valkey_version.as_deref()).await
    })
    .await;
    let restored = admin.config_set("repl-diskless-sync-delay", &delay_s.to_string()).await;
    match psync {
        Ok(Ok(reply)) if reply.starts_with("FULLRESYNC") => {}
        Ok(Ok(other)) => tracing::debug!(reply = %other.chars().take(40).collect::<String>(), "diskless sync: unexpected PSYNC answer"),
        Ok(Err(e)) => return restored.and(Err(e)),
        Err(_) => {
            restored?;
            tracing::info!(wait_ms = PSYNC_WAIT.as_millis() as u64, "diskless sync: no +FULLRESYNC for the gather's own connection in time");
            return Ok(Outcome::AlreadyRunning);
        }
    }
    restored?;
    Ok(Outcome::Started(waiting))
}
