//! Create replicas: one snapshot of the master for all of them, attached in parallel, done when caught up.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::{collect, Error, Taskmanager, LOW_TIMEOUT, REPLICA_CONFIG, SNAPSHOT_TIMEOUT};
use crate::replication::epoch::Topology;

/// How often a long attach checks that the guest still answers, and how many misses fail it.
const WATCH_EVERY: Duration = Duration::from_secs(5);
const WATCH_MISSES: usize = 3;

pub struct CreateOptions {
    pub master: String,
    /// Named replicas; empty means pick `count` spare guests.
    pub replicas: Vec<String>,
    pub count: Option<usize>,
    /// Let the master turn persistence on when it is off (otherwise refuse).
    pub enable_persistence: bool,
    /// The configuration `prepare` sends to guests that were never prepared (None: the agent's default).
    pub config_contents: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreateReport {
    pub master: String,
    pub replicas: Vec<String>,
    pub snapshot_ms: u64,
    pub total_ms: u64,
}

impl Taskmanager {
    /// Guests that neither replicate nor have replicas.
    pub fn spares(&self, except: &str) -> Vec<String> {
        self.inventory
            .guests
            .iter()
            .filter(|g| g.id != except && g.replica_of.is_none() && self.inventory.replicas_of(&g.id).is_empty())
            .map(|g| g.id.clone())
            .collect()
    }

    pub async fn create_replicas(&mut self, opts: CreateOptions) -> Result<CreateReport, Error> {
        let started = Instant::now();
        let master = opts.master.clone();
        self.require(&master)?;
        if let Some(m) = self.inventory.guest(&master).and_then(|g| g.replica_of.clone()) {
            return Err(Error::Refused(format!("{master} is a replica of {m}; a replica of a replica is not allowed")));
        }
        let targets = if opts.replicas.is_empty() {
            let want = opts.count.unwrap_or(1);
            let spares = self.spares(&master);
            if spares.len() < want {
                return Err(Error::Refused(format!("asked for {want} replicas but only {} spare guests exist: {spares:?}", spares.len())));
            }
            spares.into_iter().take(want).collect()
        } else {
            for r in &opts.replicas {
                self.require(r)?;
                if r == &master {
                    return Err(Error::Refused(format!("{r} cannot replicate from itself")));
                }
                if let Some(m) = self.inventory.guest(r).and_then(|g| g.replica_of.clone()) {
                    if m != master {
                        return Err(Error::Refused(format!("{r} already replicates from {m}; detach it first")));
                    }
                }
                if !self.inventory.replicas_of(r).is_empty() {
                    return Err(Error::Refused(format!("{r} has replicas of its own; it cannot become a replica")));
                }
            }
            opts.replicas.clone()
        };
        let first = Topology::new(&master, self.inventory.replicas_of(&master));
        let claim = self.claim_from(Some(first)).await?;
        if claim.topology.master != master {
            return Err(Error::Refused(format!("epoch {} names {} the master of this set, not {master}", claim.accepted, claim.topology.master)));
        }
        let live = self.live(&master).await;
        match live.role() {
            Some("master") => {}
            Some(role) => return Err(Error::Refused(format!("{master} is a {role} now; a replica of a replica is not allowed"))),
            None => return Err(Error::Refused(format!("{master} is not serving: {}", live.error.unwrap_or_default()))),
        }
        tracing::info!(%master, replicas = ?targets, "creating replicas");
        // Trove asks first whether a backup is needed (never for Redis).
        let backup = self.call(&master, "backup_required_for_replication", json!({}), LOW_TIMEOUT).await?;
        if backup != json!(false) {
            return Err(Error::Refused(format!("{master} requires a backup for replication, which this tool does not take")));
        }
        let snap_started = Instant::now();
        let snapshot_info = json!({
            "name": format!("Replication snapshot for {}", targets.join(",")),
            "description": "Backup image used to initialize replication slave",
            "instance_id": master, "parent_id": null, "tenant_id": null, "state": "NEW",
            "datastore_version_id": null, "deleted": false, "replica_number": 1, "id": null,
            "replica_count": targets.len(), "enable_persistence": opts.enable_persistence,
        });
        let mut snapshot = self
            .call(&master, "get_replication_snapshot", json!({"snapshot_info": snapshot_info, "replica_source_config": self.inventory.replica_source_config}), SNAPSHOT_TIMEOUT)
            .await?;
        let snapshot_ms = snap_started.elapsed().as_millis() as u64;
        snapshot["config"] = json!(REPLICA_CONFIG);
        tracing::info!(%master, snapshot_ms, "snapshot taken; attaching replicas in parallel");
        // Record each replica as soon as it is in, so an interrupted command leaves the inventory true.
        let mut record = self.inventory.clone();
        let mut pending: futures_util::stream::FuturesUnordered<_> = targets
            .iter()
            .map(|r| {
                let this = &*self;
                let (snapshot, opts) = (&snapshot, &opts);
                async move { (r.clone(), this.attach_watched(r, snapshot, opts).await) }
            })
            .collect();
        let mut outcome = Vec::new();
        while let Some((r, res)) = futures_util::StreamExt::next(&mut pending).await {
            if res.is_ok() {
                record.set_replica_of(&r, Some(&master))?;
                tracing::info!(replica = %r, "replica linked and caught up");
            }
            outcome.push(res);
        }
        drop(pending);
        self.inventory = record;
        // The set grows by the replicas that are in, in the claimed epoch.
        // A returning member that follows again counts in the quorum from now on.
        let mut next = claim.topology.clone();
        let joined: Vec<String> =
            targets.iter().filter(|r| self.inventory.guest(r).and_then(|g| g.replica_of.as_deref()) == Some(master.as_str())).cloned().collect();
        next.returning.retain(|r| !joined.contains(r));
        for r in joined {
            if !next.replicas.contains(&r) {
                next.replicas.push(r);
            }
        }
        self.commit(&claim, &next).await?;
        collect(outcome)?;
        Ok(CreateReport { master, replicas: targets, snapshot_ms, total_ms: started.elapsed().as_millis() as u64 })
    }

    /// `attach_one`, failing early when the guest stops answering pings (its reply would never come:
    /// requests are acked on receipt, so a lost agent or network loses the reply too).
    async fn attach_watched(&self, replica: &str, snapshot: &Value, opts: &CreateOptions) -> Result<(), Error> {
        let attach = self.attach_one(replica, snapshot, opts);
        let watchdog = async {
            let mut missed = 0;
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if self.ping(replica, WATCH_EVERY).await {
                    missed = 0;
                } else {
                    missed += 1;
                    tracing::warn!(%replica, missed, "guest does not answer rpc_ping during the attach");
                    if missed >= WATCH_MISSES {
                        return Error::Guest {
                            guest: replica.into(),
                            method: "attach_replica".into(),
                            reason: format!("the guest stopped answering (no rpc_ping reply for {}s); re-run the command when it is back", (WATCH_EVERY * WATCH_MISSES as u32 * 2).as_secs()),
                        };
                    }
                }
            }
        };
        tokio::select! {
            res = attach => res,
            err = watchdog => Err(err),
        }
    }

    /// Attaches one replica: `attach_replica` on a running guest, `prepare(snapshot=...)` on a new one.
    async fn attach_one(&self, replica: &str, snapshot: &Value, opts: &CreateOptions) -> Result<(), Error> {
        if !self.ping(replica, LOW_TIMEOUT).await {
            return Err(Error::Guest { guest: replica.into(), method: "rpc_ping".into(), reason: "the agent does not answer".into() });
        }
        let live = self.live(replica).await;
        if !live.unprepared {
            if live.status.is_none() && !live.held {
                // Preparing a guest that is only unreachable or restarting would replace its
                // configuration and drop its overrides: only a guest that says it is new is prepared.
                let why = live.error.unwrap_or_default();
                return Err(Error::Guest { guest: replica.into(), method: "get_replication_status".into(), reason: format!("cannot tell whether the guest is prepared ({why}); nothing was sent to it, re-run the command when it answers") });
            }
            let mut info = json!({"master": snapshot["master"]});
            // The master's client TLS, when it has some (Trove's snapshot keys).
            for key in ["ssl_mode", "cert_container"] {
                if let Some(v) = snapshot.get(key) {
                    info[key] = v.clone();
                }
            }
            self.call(replica, "attach_replica", json!({"replica_info": info, "slave_config": REPLICA_CONFIG, "restart": false}), SNAPSHOT_TIMEOUT)
                .await?;
            return Ok(());
        }
        // It says it was never prepared: Trove's path, prepare with the snapshot, then wait for the sync.
        tracing::info!(%replica, "guest not prepared yet; casting prepare with the snapshot");
        self.cast(replica, "prepare", json!({
            "packages": null, "databases": [], "memory_mb": null, "users": [], "device_path": null,
            "mount_point": null, "backup_info": null, "config_contents": opts.config_contents,
            "root_password": null, "overrides": {}, "cluster_config": null, "snapshot": snapshot,
        }))
        .await?;
        let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            let live = self.live(replica).await;
            if let Some(s) = &live.status {
                if s["role"] == "replica" && s["link_up"] == true && s["sync_in_progress"] == false {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Guest { guest: replica.into(), method: "prepare".into(), reason: "replica did not finish syncing".into() });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

