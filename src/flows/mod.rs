//! Taskmanager-side flows (prepare; create, detach, promote, eject) driven over RPC, as Trove orders them.
//! Flows return values and collect per-guest errors; printing is the CLI's job.

pub mod create;
pub mod eject;
pub mod epoch;
pub mod inventory;
pub mod prepare;
pub mod promote;
pub mod region;
pub mod show;
pub mod trove_api;
pub mod trove_sync;
pub mod watch;

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::rpc::{client::RpcClient, crypto::Cipher, AmqpOptions};
pub use inventory::Inventory;

/// Trove's `agent_call_low_timeout`.
pub const LOW_TIMEOUT: Duration = Duration::from_secs(15);
/// Trove's `agent_call_high_timeout`.
pub const HIGH_TIMEOUT: Duration = Duration::from_secs(180);
/// Trove's `agent_replication_snapshot_timeout`.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a status probe may take before a guest counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long eject waits for the old master before it counts as dead.
pub const DEAD_MASTER_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest and shortest wait for a silent master once its replicas have answered and a
/// majority of them report their link down (`live_all_within`, `silent_master_grace`).
pub const SILENT_MASTER_GRACE: Duration = Duration::from_millis(100);
pub const SILENT_MASTER_GRACE_MIN: Duration = Duration::from_millis(25);

/// How long a silent master is still waited for: ten times what its replicas took to answer (a
/// live agent answers about as fast as they do), within the bounds above.
pub fn silent_master_grace(replicas_took: Duration) -> Duration {
    (replicas_took * 10).clamp(SILENT_MASTER_GRACE_MIN, SILENT_MASTER_GRACE)
}

/// Trove's replica-source template (`replica_source.config.template`).
pub const REPLICA_SOURCE_CONFIG: &str = "repl-diskless-sync yes\nrepl-diskless-sync-delay 10\n";
/// Trove's replica template (`replica.config.template`).
pub const REPLICA_CONFIG: &str = "slave-read-only yes\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inventory(#[from] inventory::Error),
    #[error("{0}")]
    Refused(String),
    #[error("{guest}: {method} failed: {reason}")]
    Guest { guest: String, method: String, reason: String },
    #[error("{} guest(s) failed:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Partial(Vec<Error>),
    #[error(transparent)]
    Rpc(#[from] crate::rpc::Error),
}

/// A guest's live replication view, as `get_replication_status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub id: String,
    pub status: Option<Value>,
    pub error: Option<String>,
    /// The guest said it has never been prepared (not merely that it could not answer).
    pub unprepared: bool,
    /// The agent gave no answer at all within the timeout.
    pub silent: bool,
    /// Its Redis crashed as a replica source and waits, not restarted, for a failover.
    pub held: bool,
}

impl Live {
    pub fn role(&self) -> Option<&str> {
        self.status.as_ref()?.get("role")?.as_str()
    }
    pub fn addr(&self) -> Option<(String, u64)> {
        let s = self.status.as_ref()?;
        Some((s.get("host")?.as_str()?.to_owned(), s.get("port")?.as_u64()?))
    }
    pub fn master_addr(&self) -> Option<(String, u64)> {
        let s = self.status.as_ref()?;
        Some((s.get("master_host")?.as_str()?.to_owned(), s.get("master_port")?.as_u64()?))
    }
    pub fn offset(&self) -> i64 {
        self.status.as_ref().and_then(|s| s.get("offset")).and_then(Value::as_i64).unwrap_or(-1)
    }
}

/// The taskmanager: an RPC client plus the inventory that names guests and their keys.
pub struct Taskmanager {
    pub client: RpcClient,
    pub inventory: Inventory,
    /// Live statuses taken just before the command (the cross-check); flows reuse them.
    pub recent: Vec<Live>,
    /// The epoch this command claimed (`flows::epoch`): every state-changing call carries it.
    pub epoch: Option<u64>,
    /// How long an agent has to answer a promise or an accept (`flows::epoch::EPOCH_TIMEOUT` in
    /// the watcher; a command run by hand waits as long as Trove's low timeout).
    pub epoch_timeout: Duration,
    /// Told the new master's id and epoch the moment it takes writes, before the others are
    /// re-pointed (the watcher announces it to clients at once).
    pub on_writable: Option<tokio::sync::mpsc::UnboundedSender<(String, u64)>>,
}

impl Taskmanager {
    pub async fn connect(inventory: Inventory) -> Result<Self, Error> {
        let mut opts = AmqpOptions::new(&inventory.transport_url, &inventory.control_exchange, "trove-guestctl");
        opts.durable = inventory.durable_queues;
        opts.quorum = inventory.quorum_queues;
        let client = RpcClient::connect(&opts).await?;
        Ok(Taskmanager { client, inventory, recent: Vec::new(), epoch: None, epoch_timeout: LOW_TIMEOUT, on_writable: None })
    }

    /// Opens the RPC connection again (after a broker restart).
    pub async fn reconnect(&mut self) -> Result<(), Error> {
        let mut opts = AmqpOptions::new(&self.inventory.transport_url, &self.inventory.control_exchange, "trove-guestctl");
        opts.durable = self.inventory.durable_queues;
        opts.quorum = self.inventory.quorum_queues;
        self.client = RpcClient::connect(&opts).await?;
        Ok(())
    }

    /// Closes the RPC connection.
    pub async fn close(&self) {
        self.client.close().await
    }

    fn cipher(&self, guest: &str) -> Option<Cipher> {
        let key = self.inventory.guest(guest)?.key.clone()?;
        Some(Cipher::new(&secrecy::SecretString::from(key)))
    }

    /// One guest call, with Trove's version and the given timeout; errors name the guest and method.
    pub async fn call(&self, guest: &str, method: &str, args: Value, timeout: Duration) -> Result<Value, Error> {
        let mut args: Map<String, Value> = args.as_object().cloned().unwrap_or_default();
        if let Some(e) = self.epoch.filter(|_| epoch::EPOCH_METHODS.contains(&method)) {
            args.insert("epoch".into(), json!(e));
        }
        let topic = format!("guestagent.{guest}");
        self.client
            .call(&topic, method, args, "1.0", timeout, self.cipher(guest).as_ref())
            .await
            .map_err(|e| Error::Guest { guest: guest.into(), method: method.into(), reason: describe(&e) })
    }

    pub async fn cast(&self, guest: &str, method: &str, args: Value) -> Result<(), Error> {
        let args: Map<String, Value> = args.as_object().cloned().unwrap_or_default();
        let topic = format!("guestagent.{guest}");
        self.client
            .cast(&topic, method, args, "1.0", self.cipher(guest).as_ref())
            .await
            .map_err(|e| Error::Guest { guest: guest.into(), method: method.into(), reason: describe(&e) })
    }

    /// `rpc_ping` within `timeout`.
    pub async fn ping(&self, guest: &str, timeout: Duration) -> bool {
        matches!(self.call(guest, "rpc_ping", json!({}), timeout).await, Ok(Value::Bool(true)))
    }

    /// Live status of one guest; unreachable guests give an error after `PROBE_TIMEOUT`.
    pub async fn live(&self, guest: &str) -> Live {
        self.live_within(guest, PROBE_TIMEOUT).await
    }

    pub async fn live_within(&self, guest: &str, timeout: Duration) -> Live {
        let topic = format!("guestagent.{guest}");
        match self.client.call(&topic, "get_replication_status", Map::new(), "1.0", timeout, self.cipher(guest).as_ref()).await {
            Ok(status) => Live { id: guest.into(), status: Some(status), error: None, unprepared: false, silent: false, held: false },
            Err(e) => {
                let unprepared = matches!(&e, crate::rpc::Error::Remote { failure, .. } if failure.is_not_prepared());
                let silent = matches!(e, crate::rpc::Error::Timeout { .. });
                let held = matches!(&e, crate::rpc::Error::Remote { failure, .. } if failure.is_held_back());
                let error = Error::Guest { guest: guest.into(), method: "get_replication_status".into(), reason: describe(&e) };
                Live { id: guest.into(), status: None, error: Some(error.to_string()), unprepared, silent, held }
            }
        }
    }

    /// Live status of every guest in the inventory, in parallel.
    pub async fn live_all(&self) -> Vec<Live> {
        self.live_all_within(PROBE_TIMEOUT).await
    }

    /// Live status of every guest, each given `timeout` to answer, except a master whose agent is
    /// silent while a majority of its replicas report their link to it down: once the others have
    /// answered, it gets `silent_master_grace` more (an eject of a dead host does not wait out the
    /// whole timeout; a live agent answers about as fast as the others).
    pub async fn live_all_within(&self, timeout: Duration) -> Vec<Live> {
        use futures_util::future::{join_all, select, Either};
        let ids: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
        let Some(master) = watch::current_master(&self.inventory) else {
            return join_all(ids.iter().map(|id| self.live_within(id, timeout))).await;
        };
        let replicas = self.inventory.replicas_of(&master);
        let asked = tokio::time::Instant::now();
        let others = Box::pin(join_all(ids.iter().filter(|id| **id != master).map(|id| self.live_within(id, timeout))));
        let probe = Box::pin(self.live_within(&master, timeout));
        let (mut lives, master_live) = match select(probe, others).await {
            Either::Left((m, others)) => (others.await, m),
            Either::Right((lives, probe)) => {
                let down = lives
                    .iter()
                    .filter(|l| replicas.contains(&l.id))
                    .filter(|l| l.status.as_ref().is_some_and(|s| s.get("link_up") != Some(&json!(true))))
                    .count();
                if down > replicas.len() / 2 {
                    let grace = silent_master_grace(asked.elapsed());
                    // A master whose agent's queue has no consumer will not answer: no need to
                    // wait out the grace (its agent died with it, as a host does).
                    let topic = format!("guestagent.{master}");
                    let no_agent = async {
                        match self.client.consumers(&topic).await {
                            Some(0) => {}
                            _ => std::future::pending().await,
                        }
                    };
                    let silent = |why: String| Live { id: master.clone(), status: None, error: Some(why), unprepared: false, silent: true, held: false };
                    let of = replicas.len();
                    let m = tokio::select! {
                        m = probe => m,
                        _ = tokio::time::sleep(grace) => silent(format!("{master}: no answer within {grace:?} after its replicas answered, {down} of {of} reporting their link down")),
                        _ = no_agent => silent(format!("{master}: its agent's queue has no consumer, {down} of {of} replicas reporting their link down")),
                    };
                    (lives, m)
                } else {
                    (lives, probe.await)
                }
            }
        };
        lives.push(master_live);
        ids.iter().filter_map(|id| lives.iter().position(|l| l.id == *id).map(|i| lives[i].clone())).collect()
    }

    /// Compares the inventory with what guests report; returns one line per disagreement.
    pub fn disagreements(&self, live: &[Live]) -> Vec<String> {
        let by_addr: std::collections::HashMap<(String, u64), String> =
            live.iter().filter_map(|l| Some((l.addr()?, l.id.clone()))).collect();
        let mut out = Vec::new();
        for l in live {
            let Some(entry) = self.inventory.guest(&l.id) else { continue };
            let Some(role) = l.role() else { continue };
            let live_master = l.master_addr().and_then(|a| by_addr.get(&a).cloned());
            match (role, entry.replica_of.as_deref()) {
                ("master", Some(m)) => out.push(format!("{}: inventory says replica of {m}, but it is a master", l.id)),
                ("replica", None) => out.push(format!(
                    "{}: inventory says standalone, but it replicates from {}",
                    l.id,
                    live_master.unwrap_or_else(|| "an unknown master".into())
                )),
                ("replica", Some(m)) if live_master.as_deref().is_some_and(|lm| lm != m) => out.push(format!(
                    "{}: inventory says replica of {m}, but it replicates from {}",
                    l.id,
                    live_master.unwrap_or_default()
                )),
                _ => {}
            }
        }
        out
    }

    fn require(&self, id: &str) -> Result<(), Error> {
        if self.inventory.guest(id).is_none() {
            return Err(Error::Refused(format!("guest {id} is not in the inventory {}", self.inventory.path.display())));
        }
        Ok(())
    }

    /// `detach-replica`: the replica becomes a writable standalone master that keeps its data.
    pub async fn detach(&mut self, replica: &str) -> Result<(), Error> {
        self.require(replica)?;
        let live = self.live(replica).await;
        if self.inventory.guest(replica).and_then(|g| g.replica_of.clone()).is_none() && live.role() != Some("replica") {
            return Err(Error::Refused(format!("{replica} is not a replica")));
        }
        // The set shrinks first (in a new epoch): a detached guest is no member, never deposed.
        let claim = self.claim().await?;
        let mut next = claim.topology.clone();
        next.replicas.retain(|r| r != replica);
        self.commit(&claim, &next).await?;
        tracing::info!(guest = replica, epoch = claim.epoch, "detach_replica(for_failover=false)");
        self.call(replica, "detach_replica", json!({"for_failover": false}), HIGH_TIMEOUT).await?;
        self.inventory.set_replica_of(replica, None)?;
        Ok(())
    }
}

impl Taskmanager {
    /// Re-points `movers` at the master `context` describes, directly and in parallel, as Trove
    /// does each one: `detach_replica(for_failover=true)` then `attach_replica`; a mover in
    /// `masters` (its Redis is a master: an old master) only attaches. Errors are returned per guest.
    /// Fences `master` (a pause: its clients wait) and returns its final offset, from the fence's
    /// own answer (`report_offset`), or asked after it from an agent that does not give one.
    pub async fn fence_offset(&self, master: &str) -> Result<u64, Error> {
        let fenced = self.call(master, "make_read_only", json!({"read_only": true, "report_offset": true}), HIGH_TIMEOUT).await?;
        match fenced["offset"].as_u64() {
            Some(offset) => Ok(offset),
            None => Ok(self.call(master, "get_latest_txn_id", json!({}), HIGH_TIMEOUT).await?.as_u64().unwrap_or(0)),
        }
    }

    /// Makes `master` a writable master once it has caught up to `catch_up_to`, hinting the
    /// watchers as it asks, so that they look at it while it takes over.
    pub async fn enable_master(&self, master: &str, catch_up_to: u64) -> Result<(), Error> {
        let args = json!({"replica_source_config": self.inventory.replica_source_config, "catch_up_to": catch_up_to, "detach": true});
        let (enabled, ()) = tokio::join!(self.call(master, "enable_as_master", args, HIGH_TIMEOUT), self.client.hint(&self.inventory.name, Some(master)));
        enabled.map(|_| ())
    }

    /// Tells `on_writable` that `master` takes writes, and hints the set's watchers to look at it
    /// now (`rpc::hint`), so that they announce it before the others are re-pointed.
    pub async fn writable(&self, master: &str) {
        if let Some(tx) = &self.on_writable {
            let _ = tx.send((master.to_owned(), self.epoch.unwrap_or_default()));
        }
        self.client.hint(&self.inventory.name, Some(master)).await;
    }

    pub async fn repoint_calls(&self, movers: &[String], masters: &[String], context: &Value) -> Vec<Result<(), Error>> {
        futures_util::future::join_all(movers.iter().map(|r| {
            let is_master = masters.contains(r);
            async move {
                // A replica is retargeted by the attach itself (`REPLICAOF new-master`, a partial
                // resync): Trove's detach before it would be one more round trip.
                let args = json!({"replica_info": context, "slave_config": REPLICA_CONFIG, "restart": !is_master});
                self.call(r, "attach_replica", args, HIGH_TIMEOUT).await.map(|_| ())
            }
        }))
        .await
    }

    /// Makes the guests match an accepted topology `t` (in the claimed epoch): its master a
    /// writable master, and every reachable replica that does not follow it re-pointed. `lives`
    /// is a fresh probe of the guests; `dead` (an ejected master) may be unreachable without an
    /// error. Completes a failover that a dead coordinator left half done.
    pub async fn install(&mut self, claim: &epoch::Claim, t: &crate::replication::epoch::Topology, lives: &[Live], dead: Option<&str>) -> Result<(), Error> {
        let live_of = |id: &str| lives.iter().find(|l| l.id == id);
        let m = &t.master;
        let master_live = live_of(m).ok_or_else(|| Error::Refused(format!("{m} was not probed")))?;
        if master_live.status.is_none() {
            return Err(Error::Refused(format!("the master {m} of the accepted topology is unreachable: {}", master_live.error.clone().unwrap_or_default())));
        }
        if master_live.role() != Some("master") {
            // A live old master it still follows is fenced, and the new master catches up with it
            // first (a promote that its coordinator left half done loses nothing).
            let followed = master_live.master_addr();
            let source = t.followers().filter_map(|r| live_of(r)).find(|l| l.role() == Some("master") && l.addr() == followed);
            let mut latest = 0;
            if let Some(old) = source {
                latest = self.fence_offset(&old.id).await?;
            }
            tracing::info!(master = %m, "making the accepted master a writable master");
            self.enable_master(m, latest).await?;
        }
        let (unfenced, context) = tokio::join!(
            self.call(m, "make_read_only", json!({"read_only": false}), HIGH_TIMEOUT),
            self.call(m, "get_replica_context", json!({}), HIGH_TIMEOUT)
        );
        unfenced?;
        self.writable(m).await;
        let context = context?;
        let (host, port) = (context["master"]["host"].as_str().unwrap_or_default().to_owned(), context["master"]["port"].as_u64().unwrap_or(0));
        let mut movers = Vec::new();
        let mut masters = Vec::new();
        let mut unreachable = Vec::new();
        let mut following = Vec::new();
        for r in t.followers() {
            match live_of(r) {
                Some(l) if l.held || l.role() == Some("master") => {
                    masters.push(r.clone());
                    movers.push(r.clone());
                }
                Some(l) if l.role() == Some("replica") && l.master_addr() == Some((host.clone(), port)) => following.push(r.clone()),
                Some(l) if l.status.is_some() => movers.push(r.clone()),
                // A returning member is re-attached when it answers; only a replica is missed.
                _ if Some(r.as_str()) == dead || t.returning.contains(r) => {}
                _ => unreachable.push(r.clone()),
            }
        }
        let mut outcome = self.repoint_calls(&movers, &masters, &context).await;
        for (r, res) in movers.iter().zip(&outcome) {
            if res.is_ok() {
                following.push(r.clone());
                tracing::info!(guest = %r, master = %m, was_master = masters.contains(r), "re-attached");
            }
        }
        // Returning members that follow again count in the quorum from now on.
        let back: Vec<String> = t.returning.iter().filter(|r| following.contains(r)).cloned().collect();
        if !back.is_empty() {
            let mut next = t.clone();
            next.returning.retain(|r| !back.contains(r));
            next.replicas.extend(back);
            self.commit(claim, &next).await?;
        }
        for s in unreachable {
            outcome.push(Err(Error::Guest { guest: s, method: "get_replication_status".into(), reason: "unreachable; it stays in the topology and is re-attached when it answers".into() }));
        }
        collect(outcome)
    }
}

/// A readable reason for an RPC error: the remote message, not the plumbing.
pub fn describe(e: &crate::rpc::Error) -> String {
    match e {
        crate::rpc::Error::Remote { failure, .. } => failure
            .kwargs
            .get("original_message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}: {}", failure.class, failure.message)),
        crate::rpc::Error::Timeout { timeout, .. } => format!("no answer within {timeout:?} (is the agent running?)"),
        other => other.to_string(),
    }
}

/// Collects the errors of a fan-out; Ok when none failed.
pub fn collect(results: Vec<Result<(), Error>>) -> Result<(), Error> {
    let errors: Vec<Error> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() { Ok(()) } else { Err(Error::Partial(errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_master_is_waited_for_ten_times_what_its_replicas_took_within_bounds() {
        assert_eq!(silent_master_grace(Duration::from_millis(4)), Duration::from_millis(40));
        assert_eq!(silent_master_grace(Duration::from_micros(300)), SILENT_MASTER_GRACE_MIN);
        assert_eq!(silent_master_grace(Duration::from_millis(50)), SILENT_MASTER_GRACE);
    }
}
