//! The coordinator's side of the epochs: the set's topology read from its agents, and changed as
//! a Paxos register before the first step of any promote, eject, detach, create or re-attach.
//!
//! A change claims the next epoch from a quorum (a majority of the replicas of the current
//! topology; its master alone when it has none), adopts the highest topology any of them accepted,
//! and has the new topology accepted by a quorum of the same kind before acting. Every
//! state-changing call then carries the epoch (`Taskmanager::epoch`), and an agent that promised a
//! higher one refuses it.

use std::time::Duration;

use serde_json::{json, Value};

use super::{Error, Live, Taskmanager};
use crate::replication::epoch::{Record, Topology};

/// How long an agent has to answer a promise or an accept when the watcher asks (a command run by
/// hand gives Trove's `agent_call_low_timeout`, `Taskmanager::epoch_timeout`): a quorum answers in
/// milliseconds, and the watcher asks again next round.
pub const EPOCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds a claim retries when it meets a newer topology or a higher promise.
const CLAIM_ROUNDS: usize = 4;

/// Methods that change replication state: they carry the epoch.
pub const EPOCH_METHODS: &[&str] =
    &["attach_replica", "detach_replica", "enable_as_master", "demote_replication_master", "make_read_only", "get_replication_snapshot"];

/// A claimed epoch and the topology current in it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub epoch: u64,
    /// The topology to change: the highest accepted one the quorum reported.
    pub topology: Topology,
    /// The epoch that topology was accepted in (0: read from the inventory, no epoch yet).
    pub accepted: u64,
}

/// Who must agree to change `t`: a majority of its replicas, or its master when it has none.
pub fn quorum_of(t: &Topology) -> (Vec<String>, usize) {
    if t.replicas.is_empty() {
        return (vec![t.master.clone()], 1);
    }
    (t.replicas.clone(), t.replicas.len() / 2 + 1)
}

/// The highest accepted topology among the records the guests reported.
pub fn highest(records: &[(String, Record)]) -> Option<(u64, Topology)> {
    records.iter().filter_map(|(_, r)| Some((r.accepted, r.topology.clone()?))).max_by_key(|(e, _)| *e)
}

/// The epoch record a status carries.
pub fn record_of(l: &Live) -> Option<Record> {
    serde_json::from_value(l.status.as_ref()?.get("epoch")?.clone()).ok()
}

/// The set's topology as its guests report it (the highest accepted epoch), or None before any epoch.
pub fn topology_of(lives: &[Live]) -> Option<(u64, Topology)> {
    let records: Vec<(String, Record)> = lives.iter().filter_map(|l| Some((l.id.clone(), record_of(l)?))).collect();
    highest(&records)
}

impl Taskmanager {
    /// The topology the inventory records (sets that have no epoch yet).
    pub fn inventory_topology(&self) -> Option<Topology> {
        let master = super::watch::current_master(&self.inventory).or_else(|| self.inventory.guests.first().map(|g| g.id.clone()))?;
        Some(Topology::new(&master, self.inventory.replicas_of(&master)))
    }

    /// Sends `method` to every guest and gathers the answers: all of them, or, once `need` of
    /// `members` have answered, those that come within `silent_master_grace` more, and none more
    /// from guests the pre-command probe found silent (a dead guest does not hold a failover up).
    async fn ask_all(&self, method: &str, args: Value, members: &[String], need: usize, skip: &[String]) -> Vec<(String, Result<Value, Error>)> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let ids: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).filter(|id| !skip.contains(id)).collect();
        let started = tokio::time::Instant::now();
        let mut pending: FuturesUnordered<_> = ids
            .iter()
            .map(|id| {
                let args = args.clone();
                async move { (id.clone(), self.call(id, method, args, self.epoch_timeout).await) }
            })
            .collect();
        let silent: Vec<&String> = self.recent.iter().filter(|l| l.status.is_none()).map(|l| &l.id).collect();
        let mut out: Vec<(String, Result<Value, Error>)> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if deadline.is_some() && ids.iter().all(|id| out.iter().any(|(o, _)| o == id) || silent.contains(&id)) {
                break;
            }
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            let Some(answer) = next else { break };
            out.push(answer);
            if deadline.is_none() && out.iter().filter(|(id, r)| r.is_ok() && members.contains(id)).count() >= need {
                deadline = Some(tokio::time::Instant::now() + super::silent_master_grace(started.elapsed()));
            }
        }
        let missing: Vec<String> = ids.iter().filter(|id| !out.iter().any(|(o, _)| o == *id)).cloned().collect();
        for id in missing {
            out.push((id.clone(), Err(Error::Guest { guest: id, method: method.into(), reason: "no answer once a quorum had answered".into() })));
        }
        out
    }

    /// `epoch_promise` to every guest (epoch 0 only reads); each answer or its error.
    async fn promise_all(&self, epoch: u64, members: &[String], need: usize) -> Vec<(String, Result<(bool, Record), String>)> {
        self.ask_all("epoch_promise", json!({"epoch": epoch}), members, need, &[])
            .await
            .into_iter()
            .map(|(id, r)| {
                let r = match r {
                    Ok(v) => parse_promise(&v).ok_or_else(|| format!("{id}: unreadable epoch_promise answer")),
                    Err(e) => Err(e.to_string()),
                };
                (id, r)
            })
            .collect()
    }

    /// Claims the next epoch for a topology change (see the module). Sets `self.epoch`.
    pub async fn claim(&mut self) -> Result<Claim, Error> {
        self.claim_from(None).await
    }

    /// As `claim`; a set with no epoch yet starts from `first` (else the inventory's topology).
    /// The records come from the probe taken just before the command (`recent`), or a read round.
    pub async fn claim_from(&mut self, first: Option<Topology>) -> Result<Claim, Error> {
        let ids: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
        let mut known: Vec<(String, Record)> = self.recent.iter().filter_map(|l| Some((l.id.clone(), record_of(l)?))).collect();
        if known.is_empty() {
            let read = self.promise_all(0, &ids, ids.len() / 2 + 1).await;
            known = read.into_iter().filter_map(|(id, r)| Some((id, r.ok()?.1))).collect();
        }
        let mut floor = 0;
        let mut last_error = String::new();
        for _ in 0..CLAIM_ROUNDS {
            // The newest accepted record wins; a release (no topology) hands back to the inventory.
            let newest = known.iter().map(|(_, r)| r.accepted).max().unwrap_or(0);
            let (accepted, topology) = match highest(&known).filter(|(e, _)| *e == newest) {
                Some(h) => h,
                None => (newest, first.clone().or_else(|| self.inventory_topology()).ok_or_else(|| Error::Refused("the inventory names no guest".into()))?),
            };
            let epoch = known.iter().map(|(_, r)| r.promised).max().unwrap_or(0).max(floor) + 1;
            let (members, need) = quorum_of(&topology);
            let answers = self.promise_all(epoch, &members, need).await;
            let mut granted = 0;
            let mut newer = false;
            let mut refusals = Vec::new();
            for (id, r) in &answers {
                match r {
                    Ok((ok, rec)) => {
                        if rec.accepted > accepted {
                            newer = true;
                        }
                        floor = floor.max(rec.promised);
                        known.retain(|(k, _)| k != id);
                        known.push((id.clone(), rec.clone()));
                        if *ok && members.contains(id) {
                            granted += 1;
                        } else if !ok {
                            refusals.push(format!("{id} promised epoch {}", rec.promised));
                        }
                    }
                    Err(e) if members.contains(id) => refusals.push(e.clone()),
                    Err(_) => {}
                }
            }
            if newer {
                last_error = "a newer topology appeared while claiming".into();
                continue;
            }
            if granted >= need {
                tracing::info!(epoch, master = %topology.master, replicas = ?topology.replicas, granted, need, "epoch claimed");
                self.epoch = Some(epoch);
                return Ok(Claim { epoch, topology, accepted });
            }
            last_error = format!("{granted} of {need} needed promises from {members:?} for epoch {epoch} ({})", refusals.join("; "));
            if refusals.iter().any(|r| r.contains("promised epoch")) {
                continue; // outbid: try again above the higher promise
            }
            break;
        }
        Err(Error::Refused(format!("no quorum for a new epoch: {last_error}")))
    }

    /// Has `topology` accepted in the claimed epoch by a quorum of the claim's topology (and by
    /// every other guest that answers). The inventory's `replica_of` follows, for `show`.
    pub async fn commit(&mut self, claim: &Claim, topology: &Topology) -> Result<(), Error> {
        self.accept(claim, topology, &[]).await?;
        self.mirror(topology)
    }

    /// The accept phase alone: `topology` accepted by a quorum in the claimed epoch, every guest
    /// but `skip` asked (a promote asks the old master after its re-point, outside the pause).
    pub async fn accept(&self, claim: &Claim, topology: &Topology, skip: &[String]) -> Result<(), Error> {
        self.accept_all(claim, Some(topology), skip).await?;
        tracing::info!(epoch = claim.epoch, master = %topology.master, replicas = ?topology.replicas, "topology accepted");
        Ok(())
    }

    /// The inventory mirrors an accepted topology (for `show`), in one save.
    pub fn mirror(&mut self, topology: &Topology) -> Result<(), Error> {
        let mut changed = false;
        for g in self.inventory.guests.iter_mut() {
            let follows = topology.followers().any(|r| *r == g.id).then(|| topology.master.clone());
            if g.replica_of != follows {
                g.replica_of = follows;
                changed = true;
            }
        }
        if changed {
            self.inventory.save()?;
        }
        Ok(())
    }

    /// `trove-guestctl release`: a new epoch with no topology, accepted by a quorum; the agents
    /// then serve Trove's epoch-less calls again. Returns the epoch.
    pub async fn release(&mut self) -> Result<u64, Error> {
        let claim = self.claim().await?;
        self.accept_all(&claim, None, &[]).await?;
        tracing::info!(epoch = claim.epoch, "the set is released to epoch-less callers");
        Ok(claim.epoch)
    }

    async fn accept_all(&self, claim: &Claim, topology: Option<&Topology>, skip: &[String]) -> Result<(), Error> {
        let (members, need) = quorum_of(&claim.topology);
        // An inventory with Trove's API: Trove's own calls change the set too (`flows::trove_sync`).
        let topology = topology.map(|t| Topology { trove: self.inventory.trove.is_some(), ..t.clone() });
        let answers = self.ask_all("epoch_accept", json!({"epoch": claim.epoch, "topology": topology}), &members, need, skip).await;
        let accepted = answers.iter().filter(|(id, r)| r.is_ok() && members.contains(id)).count();
        if accepted < need {
            let errors: Vec<String> = answers.iter().filter_map(|(_, r)| r.as_ref().err().map(|e| e.to_string())).collect();
            return Err(Error::Refused(format!(
                "epoch {} not accepted by a quorum ({accepted} of {need} from {members:?}): {}",
                claim.epoch,
                errors.join("; ")
            )));
        }
        Ok(())
    }
}

fn parse_promise(v: &Value) -> Option<(bool, Record)> {
    Some((v.get("promised")?.as_bool()?, serde_json::from_value(v.get("record")?.clone()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(accepted: u64, master: &str) -> Record {
        Record { promised: accepted, accepted, topology: Some(Topology::new(master, vec![])) }
    }

    #[test]
    fn the_highest_accepted_topology_wins_and_quorums_are_replica_majorities() {
        let records = vec![("a".to_string(), rec(3, "a")), ("b".to_string(), rec(5, "b")), ("c".to_string(), Record::default())];
        assert_eq!(highest(&records).unwrap().1.master, "b");
        assert!(highest(&[("c".to_string(), Record::default())]).is_none());
        let t = |n: usize| Topology::new("m", (0..n).map(|i| format!("r{i}")).collect());
        assert_eq!(quorum_of(&t(0)).1, 1);
        assert_eq!(quorum_of(&t(0)).0, vec!["m".to_string()]);
        assert_eq!(quorum_of(&t(1)).1, 1, "a two-node set: its replica");
        assert_eq!(quorum_of(&t(2)).1, 2);
        assert_eq!(quorum_of(&t(3)).1, 2);
        assert_eq!(quorum_of(&t(4)).1, 3);
    }
}
