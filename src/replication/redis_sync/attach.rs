//! Attaching a replica: transport checks, the retarget, and the wait for the initial sync.

use std::time::{Duration, Instant};


use super::super::{Error, MasterRef, Result};
use super::RedisSync;
use crate::config::ReplicationSettings;
use crate::datastore::redis::admin::{Admin, Target, TlsClient};
use crate::datastore::redis::conf;
use crate::datastore::redis::info::Role;
use crate::datastore::redis::state::ReplicaOf;

impl RedisSync {
    /// Refuses a master this node cannot, or must not, replicate from as offered.
    fn check_transport(&self, master: &MasterRef) -> Result<Option<TlsClient>> {
        let at = format!("{}:{}", master.host, master.port);
        if !master.tls {
            if self.settings.tls_replication {
                return Err(Error::Refused(format!(
                    "master {at} offers plain replication, and this guest replicates only over TLS (replication.tls_replication)"
                )));
            }
            return Ok(None);
        }
        if self.manager.major() < 6 {
            return Err(Error::Refused("TLS replication needs Redis 6 or newer".into()));
        }
        match self.tls_client() {
            Some(tls) => Ok(Some(tls)),
            None => Err(Error::Refused(format!(
                "master {at} replicates over TLS, and this guest has no TLS certificates (redis.tls_cert_file, tls_key_file, tls_ca_cert_file)"
            ))),
        }
    }

    /// Closes a demoted master's client connections (best effort: its clients otherwise meet
    /// READONLY when the fence lifts).
    async fn close_clients(&self) {
        let killed = match self.admin().await {
            Ok(mut admin) => admin.kill_clients().await.map_err(Error::from),
            Err(error) => Err(error),
        };
        match killed {
            Ok(killed) => tracing::info!(killed, "closed the demoted master's client connections"),
            Err(error) => tracing::warn!(%error, "could not close the demoted master's client connections"),
        }
    }

    pub(super) async fn attach_to(&self, master: &MasterRef, _replica_config: Option<&str>) -> Result<()> {
        validate_master(master)?;
        let _op = self.op.lock().await;
        let tls = self.check_transport(master)?;
        // Under the write fence (a switchover's old master) its clients wait on the pause either
        // way: they are closed before the re-point's own round trips, so they rediscover the new
        // master sooner, and whoever reconnects here waits on the pause as before (closed again
        // after REPLICAOF).
        if self.fence.lock().await.is_some() {
            self.close_clients().await;
        }
        // A crashed replica source held back has no server to ask yet: it is checked once started.
        let held = self.manager.held().await;
        if !held {
            self.manager.apply_dual_channel(&mut self.admin().await?).await?;
        }
        let held_back = self.cancel_pending_detach();
        let mut remote = connect_master(master, &self.settings, tls.clone()).await?;
        // One INFO each (server and replication sections) keeps the checks to two round trips.
        let remote_info = remote.info("default").await?;
        let remote_repl = remote_info
            .replication()
            .ok_or_else(|| Error::Refused(format!("{}:{} sent INFO without a replication section", master.host, master.port)))?;
        if remote_repl.role == Role::Replica {
            return Err(Error::Refused(format!(
                "{}:{} is itself a replica of {}:{}; a replica of a replica is not allowed",
                master.host,
                master.port,
                remote_repl.master_host.unwrap_or_default(),
                remote_repl.master_port.unwrap_or_default()
            )));
        }
        let desired = ReplicaOf {
            host: master.host.clone(),
            port: master.port,
            masterauth: master.requirepass.clone(),
            masteruser: master.masteruser.clone(),
            tls: master.tls,
            master_ports: master.ssl_ports,
        };
        if desired.masteruser.is_some() && self.manager.major() < 6 {
            return Err(Error::Refused("masteruser (ACL replication user) needs Redis 6 or newer".into()));
        }
        if held {
            // A crashed replica source whose restart was held back: it comes back as a replica of
            // the new master (a full sync replaces its stale data), never as a master again.
            self.manager
                .update(|s| {
                    s.replica = Some(desired.clone());
                    s.master = None;
                })
                .await?;
            self.manager.start().await?;
            tracing::info!(master = %format!("{}:{}", master.host, master.port), "the crashed replica source restarts as a replica");
        }
        let mut admin = self.admin().await?;
        if held {
            self.manager.apply_dual_channel(&mut admin).await?;
        }
        let own_info = admin.info("default").await?;
        let own_run_id = own_info.run_id();
        if own_run_id.is_some() && own_run_id == remote_info.run_id() {
            return Err(Error::Refused(format!("{}:{} is this instance itself", master.host, master.port)));
        }
        let repl = own_info.replication().ok_or_else(|| Error::Refused("local INFO has no replication section".into()))?;
        let state = self.manager.snapshot_state().await;
        let already = repl.role == Role::Replica
            && repl.master_host.as_deref() == Some(master.host.as_str())
            && repl.master_port == Some(master.port)
            && state.replica.as_ref() == Some(&desired);
        if already {
            tracing::info!(master = %format!("{}:{}", master.host, master.port), "already a replica of this master; nothing to change");
        } else {
            let major = self.manager.major();
            admin.config_set("masterauth", master.requirepass.as_deref().unwrap_or("")).await?;
            if major >= 6 {
                admin.config_set("masteruser", master.masteruser.as_deref().unwrap_or("")).await?;
            }
            admin.config_set(&conf::spelled_for("replica-read-only", major), "yes").await?;
            if master.tls || state.replica.as_ref().is_some_and(|r| r.tls) {
                admin.config_set("tls-replication", if master.tls { "yes" } else { "no" }).await?;
            }
            self.manager.set_replica(Some(desired)).await?;
            admin.replicaof(&master.host, master.port).await?;
            if repl.role == Role::Master {
                // A demoted master: its clients (paused by the fence) reconnect and rediscover
                // the new master now, rather than meet READONLY when the pause lifts.
                self.close_clients().await;
            }
            tracing::info!(
                master = %format!("{}:{}", master.host, master.port),
                from_role = ?repl.role,
                held_back_detach = held_back,
                "replicating (direct retarget keeps the history for a partial resync)"
            );
        }
        // Root holds on the replica too: the master's root password becomes its requirepass.
        if let Some(password) = &master.root_password {
            crate::datastore::redis::root::follow_master(&self.manager, password).await?;
        }
        // Now a replica: client writes are refused by replica-read-only, so the fence can go.
        self.lift_fence(&mut admin).await?;
        self.wait_synced(&mut admin, master, &mut remote, tls).await
    }

    /// Polls until the link is up, the sync is over and the replica has the master's offset,
    /// read from the master (on `remote`, the connection the attach checked it with) once the link
    /// is up, just after a marker moved it (`SYNC_MARKER`): a replica that has it receives the
    /// master's stream. After a diskless sync Redis 7 holds a replica's stream until its first
    /// `REPLCONF ACK`, and an ACK that comes before the master calls the transfer done is not
    /// counted: the stream then waits up to a second for the next one, while the master takes
    /// writes that no replica has. Polls every 5 ms for the first second (a partial resync takes
    /// ~10 ms), then 100 ms.
    async fn wait_synced(&self, admin: &mut Admin, master: &MasterRef, remote: &mut Admin, tls: Option<TlsClient>) -> Result<()> {
        let timeout = Duration::from_secs(self.settings.sync_timeout);
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut target: Option<i64> = None;
        let (mut nudger, mut last_nudge, mut nudges): (Option<Admin>, Option<Instant>, u32) = (None, None, 0);
        loop {
            let mut repl = admin.replication().await?;
            if repl.linked() && target.is_none() {
                if !self.mark(master, tls.clone()).await {
                    tracing::debug!("the master took no sync marker; its offset is read as it is");
                }
                target = Some(remote.replication().await?.master_repl_offset);
                // The master's offset is read after the replica's: look again before sleeping.
                repl = admin.replication().await?;
            }
            if repl.linked() && target.is_some_and(|t| repl.applied_offset() >= t) {
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, nudges, offset = repl.applied_offset(), "replica linked and caught up");
                return Ok(());
            }
            if repl.linked() && last_nudge.is_none_or(|t| t.elapsed() >= NUDGE_PERIOD) {
                // Linked but short of the marker: the master may hold the stream until this
                // replica's next ACK (a diskless sync's first ACK, if it came too early, is not
                // counted). Ask for the ACK now rather than wait up to a second for it.
                last_nudge = Some(Instant::now());
                if nudger.is_none() {
                    nudger = Admin::connect(&self.manager.target().await).await.ok();
                }
                if let Some(n) = nudger.as_mut() {
                    if n.request_ack().await.is_ok() {
                        nudges += 1;
                    }
                }
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "replica did not finish its initial sync with {}:{} within {}s (link {}, sync in progress: {})",
                    master.host,
                    master.port,
                    timeout.as_secs(),
                    if repl.master_link_up == Some(true) { "up" } else { "down" },
                    repl.master_sync_in_progress
                )));
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(
                    elapsed_s = started.elapsed().as_secs(),
                    link_up = repl.master_link_up == Some(true),
                    sync_in_progress = repl.master_sync_in_progress,
                    offset = repl.applied_offset(),
                    "waiting for initial sync"
                );
            }
            let pause = if started.elapsed() < Duration::from_secs(1) { 5 } else { 100 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Publishes the sync marker on `master`, over a connection of its own that is dropped if the
    /// marker is not taken within `MARKER_WAIT` (a paused master: a dropped client's held command
    /// never runs). Not on a master whose write fence is up (min-replicas-to-write beyond its
    /// good replicas: a fenced or deposed master), which takes no writes to lose, and whose
    /// offset must stay where its successor took over, or its replicas resync in full. False: no
    /// marker (also an ACL replication user without PUBLISH).
    async fn mark(&self, master: &MasterRef, tls: Option<TlsClient>) -> bool {
        let marked = tokio::time::timeout(MARKER_WAIT, async {
            let mut con = connect_master(master, &self.settings, tls).await?;
            if let Some(good) = con.replication().await?.min_slaves_good_slaves {
                let key = conf::spelled_for("min-replicas-to-write", self.manager.major());
                let wanted = con.config_get(&key).await.ok().flatten().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
                if wanted > good {
                    tracing::info!(wanted, good, "the master's write fence is up: no sync marker");
                    return Ok(false);
                }
            }
            con.publish_marker(SYNC_MARKER).await?;
            Ok::<_, Error>(true)
        })
        .await;
        matches!(marked, Ok(Ok(true)))
    }
}

/// The channel of the attach's marker (`wait_synced`): nothing subscribes to it.
const SYNC_MARKER: &str = "__trove_guest__:replica-synced";
/// How often a linked replica short of the marker asks its Redis to ACK (`Admin::request_ack`).
const NUDGE_PERIOD: Duration = Duration::from_millis(20);
/// How long the marker may take before the attach reads the master's offset without it.
const MARKER_WAIT: Duration = Duration::from_millis(500);

/// Connects to a (remote) master with its password.
pub(super) async fn connect_master(master: &MasterRef, settings: &ReplicationSettings, tls: Option<TlsClient>) -> Result<Admin> {
    let target = Target {
        host: master.host.clone(),
        port: master.port,
        password: master.requirepass.clone().map(secrecy::SecretString::from),
        username: master.masteruser.clone(),
        config_command: "CONFIG".into(),
        timeout: Duration::from_secs(settings.master_probe_timeout),
        tls,
    };
    Admin::connect(&target).await.map_err(|e| match e {
        crate::datastore::Error::Command { reason, .. } if reason.contains("WRONGPASS") || reason.contains("NOAUTH") || reason.contains("invalid password") || reason.contains("AuthenticationFailed") => {
            Error::Refused(format!("master {}:{} refused the replication password", master.host, master.port))
        }
        other => Error::Refused(format!("cannot reach master {}:{}: {other}", master.host, master.port)),
    })
}

/// Checks a master reference before anything touches Redis or its config.
pub fn validate_master(master: &MasterRef) -> Result<()> {
    if !conf::is_valid_host(&master.host) {
        return Err(Error::InvalidArgument {
            name: "master.host".into(),
            reason: "must be a host name or IP address (letters, digits, '.', '-', ':')".into(),
        });
    }
    if master.port == 0 {
        return Err(Error::InvalidArgument { name: "master.port".into(), reason: "must be 1..65535".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_validation() {
        let m = |host: &str, port| MasterRef { host: host.into(), port, requirepass: None, masteruser: None, tls: false, ssl_ports: None, root_password: None };
        assert!(validate_master(&m("10.0.0.1", 6379)).is_ok());
        for bad in [m("", 1), m("a b", 1), m("a\nslaveof x", 1), m("#", 1), m("h", 0)] {
            assert!(validate_master(&bad).is_err(), "{bad:?}");
        }
    }
}
