//! `RedisSync`: Trove's RedisSyncReplication without restarts, with held-back failover detach and a real write fence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Dataset, Error, MasterRef, ReplicationStrategy, Result, Snapshot, SnapshotRequest};
use crate::config::ReplicationSettings;
use crate::datastore::redis::admin::{Admin, Target, TlsClient};
use crate::datastore::redis::conf;
use crate::datastore::redis::info::Role;
use crate::datastore::redis::state::{MasterSettings, ReplicaOf};
use crate::datastore::redis::RedisManager;

pub const NAME: &str = "RedisSyncReplication";

/// A write fence in force on this (master) node.
struct Fence {
    /// `repl-ping-replica-period` before the fence, restored when it lifts.
    saved_ping_period: Option<String>,
    /// `min-replicas-to-write` before the fence, when that mechanism was used (Redis < 6.2).
    saved_min_replicas: Option<String>,
    expiry: CancellationToken,
}

pub struct RedisSync {
    manager: Arc<RedisManager>,
    settings: ReplicationSettings,
    /// Serializes every call that changes replication state, timers included.
    op: Arc<Mutex<()>>,
    fence: Arc<Mutex<Option<Fence>>>,
    pending_detach: std::sync::Mutex<Option<CancellationToken>>,
}

impl RedisSync {
    pub fn new(manager: Arc<RedisManager>, settings: ReplicationSettings) -> Self {
        manager.set_dual_channel(settings.dual_channel_replication);
        RedisSync {
            manager,
            settings,
            op: Arc::default(),
            fence: Arc::default(),
            pending_detach: std::sync::Mutex::new(None),
        }
    }

    fn cancel_pending_detach(&self) -> bool {
        match self.pending_detach.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    async fn admin(&self) -> Result<Admin> {
        Ok(self.manager.admin().await?)
    }

    fn advertise_host(&self) -> String {
        self.manager.settings.advertise_host.clone().unwrap_or_else(default_route_ipv4)
    }

    /// The port replicas reach: the TLS port with TLS replication, else the plain one.
    fn replication_port(&self) -> u16 {
        if self.settings.tls_replication {
            self.manager.settings.tls_port
        } else {
            self.manager.settings.port
        }
    }

    async fn master_ref(&self) -> MasterRef {
        use secrecy::ExposeSecret;
        let (requirepass, masteruser) = match &self.settings.replication_user {
            Some(user) => (self.settings.replication_password.as_ref().map(|p| p.expose_secret().to_owned()), Some(user.clone())),
            None => (self.manager.snapshot_state().await.requirepass(), None),
        };
        MasterRef {
            host: self.advertise_host(),
            port: self.replication_port(),
            requirepass,
            masteruser,
            tls: self.settings.tls_replication,
        }
    }

    /// The TLS client for reaching a master's tls-port, from this node's certificate settings.
    fn tls_client(&self) -> Option<TlsClient> {
        Some(TlsClient { files: self.manager.settings.tls_files()?, verify_hostname: self.manager.settings.tls_verify_hostname })
    }

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
        if self.settings.min_replicas_to_write > 0 {
            admin.config_set(&conf::spelled_for("min-replicas-max-lag", major), &self.settings.min_replicas_max_lag.to_string()).await?;
            // Armed at runtime only once enough replicas are connected (see `maintain`), so that
            // creating replicas or promoting never refuses writes while the replicas attach.
            self.arm_split_brain_fence(admin).await?;
        }
        Ok(MasterSettings {
            diskless_sync: diskless,
            diskless_sync_delay: delay,
            diskless_sync_max_replicas: persisted_max,
            min_replicas_to_write: self.settings.min_replicas_to_write,
            min_replicas_max_lag: self.settings.min_replicas_max_lag,
        })
    }

    /// Lifts the fence, if any: unpause, restore the ping period and min-replicas.
    async fn lift_fence(&self, admin: &mut Admin) -> Result<()> {
        let Some(fence) = self.fence.lock().await.take() else { return Ok(()) };
        fence.expiry.cancel();
        restore_fence(admin, &fence, self.manager.major()).await?;
        tracing::info!("write fence lifted");
        Ok(())
    }

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

    /// Sets `min-replicas-to-write` once the master has that many connected replicas.
    async fn arm_split_brain_fence(&self, admin: &mut Admin) -> Result<()> {
        let want = self.settings.min_replicas_to_write;
        let repl = admin.replication().await?;
        let online = repl.replicas.iter().filter(|r| r.state == "online").count() as u32;
        if repl.role != Role::Master || online < want {
            return Ok(());
        }
        let key = conf::spelled_for("min-replicas-to-write", self.manager.major());
        if admin.config_get(&key).await?.as_deref() != Some(want.to_string().as_str()) {
            admin.config_set(&key, &want.to_string()).await?;
            tracing::info!(min_replicas_to_write = want, "split-brain fence armed");
        }
        Ok(())
    }

    /// A node that is no replica source must not refuse writes for want of replicas.
    async fn drop_min_replicas(&self, admin: &mut Admin) -> Result<()> {
        if self.settings.min_replicas_to_write > 0 && self.manager.snapshot_state().await.master.is_none() {
            admin.config_set(&conf::spelled_for("min-replicas-to-write", self.manager.major()), "0").await?;
        }
        Ok(())
    }

    /// Polls until the link is up, the sync is over and the replica has the master's offset,
    /// read from the master (on `remote`, the connection the attach checked it with) once the link
    /// is up. Polls every 5 ms for the first second (a partial resync takes ~10 ms), then 100 ms.
    async fn wait_synced(&self, admin: &mut Admin, master: &MasterRef, remote: &mut Admin) -> Result<()> {
        let timeout = Duration::from_secs(self.settings.sync_timeout);
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut target: Option<i64> = None;
        loop {
            let mut repl = admin.replication().await?;
            if repl.linked() && target.is_none() {
                target = Some(remote.replication().await?.master_repl_offset);
                // The master's offset is read after the replica's: look again before sleeping.
                repl = admin.replication().await?;
            }
            if repl.linked() && target.is_some_and(|t| repl.applied_offset() >= t) {
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, offset = repl.applied_offset(), "replica linked and caught up");
                return Ok(());
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
}

/// Forgets the old master's credentials (`masterauth`, and `masteruser` on Redis >= 6) and
/// turns `tls-replication` off when it was on; the caller persists the state without the replica.
async fn clear_master_auth(admin: &mut Admin, manager: &RedisManager) -> crate::datastore::Result<()> {
    admin.config_set("masterauth", "").await?;
    if manager.major() >= 6 {
        admin.config_set("masteruser", "").await?;
    }
    if manager.snapshot_state().await.replica.is_some_and(|r| r.tls) {
        admin.config_set("tls-replication", "no").await?;
    }
    Ok(())
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

/// Connects to a (remote) master with its password.
async fn connect_master(master: &MasterRef, settings: &ReplicationSettings, tls: Option<TlsClient>) -> Result<Admin> {
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

/// The IPv4 address of the default-route interface (Trove's `get_my_ipv4`), else loopback.
pub fn default_route_ipv4() -> String {
    let iface = std::fs::read_to_string("/proc/net/route").ok().and_then(|t| {
        t.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(1) == Some(&"00000000")).then(|| cols[0].to_owned())
        })
    });
    if let (Some(iface), Ok(addrs)) = (iface, nix::ifaddrs::getifaddrs()) {
        for a in addrs {
            if a.interface_name == iface {
                if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                    return sin.ip().to_string();
                }
            }
        }
    }
    "127.0.0.1".into()
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

#[async_trait]
impl ReplicationStrategy for RedisSync {
    fn name(&self) -> &'static str {
        NAME
    }

    fn backup_required(&self) -> bool {
        false
    }

    async fn snapshot(&self, request: SnapshotRequest) -> Result<Snapshot> {
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
                self.manager.settings.data_dir.display()
            )));
        }
        let master = self.apply_master_settings(&mut admin, request.replica_source_config.as_deref(), request.replica_count).await?;
        self.manager.set_master(Some(master)).await?;
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

    async fn attach(&self, master: &MasterRef, _replica_config: Option<&str>) -> Result<()> {
        validate_master(master)?;
        let _op = self.op.lock().await;
        let tls = self.check_transport(master)?;
        self.manager.apply_dual_channel(&mut self.admin().await?).await?;
        let held_back = self.cancel_pending_detach();
        let mut remote = connect_master(master, &self.settings, tls).await?;
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
        let mut admin = self.admin().await?;
        let own_info = admin.info("default").await?;
        let own_run_id = own_info.run_id();
        if own_run_id.is_some() && own_run_id == remote_info.run_id() {
            return Err(Error::Refused(format!("{}:{} is this instance itself", master.host, master.port)));
        }
        let repl = own_info.replication().ok_or_else(|| Error::Refused("local INFO has no replication section".into()))?;
        let desired = ReplicaOf {
            host: master.host.clone(),
            port: master.port,
            masterauth: master.requirepass.clone(),
            masteruser: master.masteruser.clone(),
            tls: master.tls,
        };
        if desired.masteruser.is_some() && self.manager.major() < 6 {
            return Err(Error::Refused("masteruser (ACL replication user) needs Redis 6 or newer".into()));
        }
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
            tracing::info!(
                master = %format!("{}:{}", master.host, master.port),
                from_role = ?repl.role,
                held_back_detach = held_back,
                "replicating (direct retarget keeps the history for a partial resync)"
            );
        }
        // Now a replica: client writes are refused by replica-read-only, so the fence can go.
        self.lift_fence(&mut admin).await?;
        self.wait_synced(&mut admin, master, &mut remote).await
    }

    async fn detach(&self, for_failover: bool) -> Result<()> {
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
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(grace) => {
                    let _op = op.lock().await;
                    if token.is_cancelled() { return; }
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

    async fn enable_as_master(&self, replica_source_config: Option<&str>) -> Result<()> {
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

    async fn demote(&self) -> Result<()> {
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        self.lift_fence(&mut admin).await?;
        self.manager.set_master(None).await?;
        self.drop_min_replicas(&mut admin).await
    }

    async fn replica_context(&self) -> Result<MasterRef> {
        Ok(self.master_ref().await)
    }

    async fn latest_txn_id(&self) -> Result<i64> {
        Ok(self.admin().await?.replication().await?.applied_offset())
    }

    async fn last_txn(&self) -> Result<(Option<String>, i64)> {
        let repl = self.admin().await?.replication().await?;
        Ok((repl.master_host.clone(), repl.applied_offset()))
    }

    async fn wait_for_txn(&self, txn: i64) -> Result<()> {
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

    async fn make_read_only(&self, read_only: bool) -> Result<()> {
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        if !read_only {
            return self.lift_fence(&mut admin).await;
        }
        if admin.replication().await?.role == Role::Replica {
            return Ok(()); // replicas already refuse client writes
        }
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
        // Redis 6.0 has no CLIENT PAUSE WRITE: min-replicas-to-write refuses writes instead.
        let saved_min_replicas = if pause_write {
            admin.pause_writes(ms, true).await?;
            None
        } else {
            let key = conf::spelled_for("min-replicas-to-write", major);
            let saved = match guard.as_ref() {
                Some(f) => f.saved_min_replicas.clone(),
                None => admin.config_get(&key).await?,
            };
            admin.config_set(&key, "100000").await?;
            saved.or(Some("0".into()))
        };
        let expiry = CancellationToken::new();
        *guard = Some(Fence { saved_ping_period, saved_min_replicas, expiry: expiry.clone() });
        drop(guard);
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

    async fn maintain(&self) -> Result<()> {
        if self.settings.min_replicas_to_write == 0 || self.manager.snapshot_state().await.master.is_none() {
            return Ok(());
        }
        let _op = self.op.lock().await;
        let mut admin = self.admin().await?;
        self.arm_split_brain_fence(&mut admin).await
    }

    async fn status(&self) -> Result<Value> {
        let mut admin = self.admin().await?;
        let info = admin.info("all").await?;
        let repl = info.replication().ok_or_else(|| Error::Refused("INFO has no replication section".into()))?;
        let fenced = self.fence.lock().await.is_some();
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
            "sync_in_progress": repl.master_sync_in_progress,
            "read_only": repl.slave_read_only.unwrap_or(false) && repl.role == Role::Replica || fenced,
            "fenced": fenced,
            "pending_failover_detach": pending,
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

    #[test]
    fn master_validation() {
        let m = |host: &str, port| MasterRef { host: host.into(), port, requirepass: None, masteruser: None, tls: false };
        assert!(validate_master(&m("10.0.0.1", 6379)).is_ok());
        for bad in [m("", 1), m("a b", 1), m("a\nslaveof x", 1), m("#", 1), m("h", 0)] {
            assert!(validate_master(&bad).is_err(), "{bad:?}");
        }
    }
}
