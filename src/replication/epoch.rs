//! Epochs on the agent: the durable promise and the accepted topology of its replica set.
//!
//! Coordinators (`trove-guestctl` and its watcher) change a set's topology as a Paxos register
//! (CASPaxos): they ask the agents to promise a new epoch, adopt the highest topology accepted by
//! any agent that promised, have the new topology accepted, and then act, every call carrying the
//! epoch. An agent refuses a call whose epoch is lower than the one it promised, so a coordinator
//! that was replaced (a paused watcher, one cut off, a stale hand-run command) is fenced by number,
//! as a Raft term fences an old leader. The record is written (fsync'd, 0600) before an answer.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// The topology a coordinator had accepted: the master, the replicas that follow it (they count
/// in the quorum for the next change), and members to re-attach (an ejected master, a replica
/// that could not be re-pointed): they follow it once back, and count again from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub master: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returning: Vec<String>,
    /// Trove's own calls change this set too (a watcher keeps Trove's records and adopts what
    /// Trove's promote, eject or detach did): the agents admit Trove's epoch-less calls.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trove: bool,
}

impl Topology {
    pub fn new(master: &str, replicas: Vec<String>) -> Topology {
        Topology { master: master.to_owned(), replicas, returning: Vec::new(), trove: false }
    }

    /// Every member that must follow the master: replicas and returning ones.
    pub fn followers(&self) -> impl Iterator<Item = &String> {
        self.replicas.iter().chain(&self.returning)
    }

    pub fn has(&self, id: &str) -> bool {
        self.master == id || self.followers().any(|r| r == id)
    }
}

/// What an agent stores and reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The highest epoch this agent promised: calls of lower epochs are refused.
    pub promised: u64,
    /// The epoch of the accepted topology (0: none).
    pub accepted: u64,
    pub topology: Option<Topology>,
}

/// The agent's epoch record, loaded at start and written through on every change.
pub struct Epochs {
    path: PathBuf,
    me: String,
    record: Mutex<Record>,
    /// Trove's own epoch-less call changed this guest's part in a Trove-kept set since the last
    /// accepted epoch: the topology no longer deposes it until a watcher adopts Trove's.
    trove_changed: std::sync::atomic::AtomicBool,
}

impl Epochs {
    /// Loads the record at `path` (none yet: epoch 0). `me` is this guest's id.
    pub fn load(path: PathBuf, me: &str) -> Result<Epochs> {
        let record = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Refused(format!("corrupt epoch file {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(crate::datastore::Error::io(&path, e).into()),
        };
        Ok(Epochs { path, me: me.to_owned(), record: Mutex::new(record), trove_changed: Default::default() })
    }

    /// An in-memory record (unit tests).
    #[cfg(test)]
    fn scratch(dir: &std::path::Path, me: &str) -> Epochs {
        Epochs::load(dir.join("epoch.json"), me).unwrap()
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn record(&self) -> Record {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, record: &Record) -> Result<()> {
        let text = serde_json::to_vec_pretty(record).map_err(|e| Error::Refused(e.to_string()))?;
        crate::datastore::redis::state::write_private(&self.path, &text)?;
        crate::datastore::redis::state::sync_dir(&self.path);
        Ok(())
    }

    /// Promises `epoch` if it is higher than any promised before; returns whether it did, and the
    /// record (with the accepted topology the coordinator must adopt).
    pub fn promise(&self, epoch: u64) -> Result<(bool, Record)> {
        let mut r = self.lock();
        if epoch <= r.promised {
            return Ok((false, r.clone()));
        }
        let mut next = r.clone();
        next.promised = epoch;
        self.save(&next)?;
        *r = next;
        tracing::info!(epoch, "promised epoch");
        Ok((true, r.clone()))
    }

    /// Accepts `topology` at `epoch` unless a higher epoch was promised; None releases the set to
    /// epoch-less callers (Trove's taskmanager).
    pub fn accept(&self, epoch: u64, topology: Option<Topology>) -> Result<Record> {
        if epoch == 0 {
            return Err(Error::InvalidArgument { name: "epoch".into(), reason: "must be positive".into() });
        }
        let mut r = self.lock();
        if epoch < r.promised {
            return Err(Error::StaleEpoch { got: epoch, promised: r.promised });
        }
        let next = Record { promised: epoch, accepted: epoch, topology };
        self.save(&next)?;
        *r = next;
        self.trove_changed.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(epoch, master = %r.topology.as_ref().map(|t| t.master.as_str()).unwrap_or(""), "accepted topology");
        Ok(r.clone())
    }

    /// Admits a state-changing call of `epoch` (None: a call from Trove's taskmanager, which
    /// carries none). A higher epoch is learnt (promised). An epoch-less call is admitted only on a
    /// guest that has never promised an epoch, or when `epochless_ok` (the call cannot undo a
    /// failover: a snapshot, or a fence).
    pub fn admit(&self, epoch: Option<u64>, method: &str, epochless_ok: bool) -> Result<()> {
        let mut r = self.lock();
        match epoch {
            Some(e) if e < r.promised => Err(Error::StaleEpoch { got: e, promised: r.promised }),
            Some(e) if e > r.promised => {
                let mut next = r.clone();
                next.promised = e;
                self.save(&next)?;
                *r = next;
                Ok(())
            }
            Some(_) => Ok(()),
            None if r.topology.is_none() || epochless_ok => Ok(()),
            None if r.topology.as_ref().is_some_and(|t| t.trove) => {
                tracing::info!(method, epoch = r.accepted, "Trove's own call on a set it keeps: admitted; the watcher adopts what it changes");
                self.trove_changed.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            None => Err(Error::Refused(format!(
                "{method} without an epoch refused: this guest's replica set is managed under epoch {} \
                 (trove-guestctl); a call outside the epochs could undo a failover. Run it with trove-guestctl \
                 (or hand the set back to Trove with trove-guestctl release)",
                r.promised
            ))),
        }
    }

    /// The accepted topology names this guest the master of replicas: a restart of its Redis from
    /// a snapshot must not serve as master before a coordinator compares it with them.
    pub fn guards_start(&self) -> bool {
        let r = self.lock();
        r.topology.as_ref().is_some_and(|t| t.master == self.me && !t.replicas.is_empty())
    }

    /// This guest is in the accepted topology, and not as its master: if its Redis is a master it
    /// must not take writes.
    pub fn deposed(&self) -> bool {
        if self.trove_changed.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let r = self.lock();
        r.topology.as_ref().is_some_and(|t| t.master != self.me && t.followers().any(|x| *x == self.me))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(master: &str, replicas: &[&str]) -> Topology {
        Topology::new(master, replicas.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_promise_is_given_once_per_epoch_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let e = Epochs::scratch(dir.path(), "a");
        assert!(e.promise(3).unwrap().0);
        assert!(!e.promise(3).unwrap().0, "one vote per epoch");
        assert!(!e.promise(2).unwrap().0);
        let again = Epochs::scratch(dir.path(), "a");
        assert_eq!(again.record().promised, 3);
        let mode = std::fs::metadata(dir.path().join("epoch.json")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn lower_epochs_are_refused_and_higher_ones_learnt() {
        let dir = tempfile::tempdir().unwrap();
        let e = Epochs::scratch(dir.path(), "b");
        e.admit(None, "detach_replica", false).unwrap();
        e.accept(5, Some(topo("a", &["b", "c"]))).unwrap();
        assert!(e.deposed());
        assert!(matches!(e.admit(Some(4), "attach_replica", false), Err(Error::StaleEpoch { got: 4, promised: 5 })));
        assert!(matches!(e.accept(4, Some(topo("b", &["a"]))), Err(Error::StaleEpoch { .. })));
        e.admit(Some(7), "attach_replica", false).unwrap();
        assert_eq!(e.record().promised, 7);
        assert!(matches!(e.accept(6, Some(topo("b", &["a"]))), Err(Error::StaleEpoch { .. })));
        let err = e.admit(None, "detach_replica", false).unwrap_err().to_string();
        assert!(err.contains("epoch 7"), "{err}");
        e.admit(None, "get_replication_snapshot", true).unwrap();
        e.accept(8, Some(topo("b", &["a", "c"]))).unwrap();
        assert!(!e.deposed(), "the master of the accepted topology");
        e.accept(9, Some(topo("a", &["c"]))).unwrap();
        assert!(!e.deposed(), "not a member any more (detached)");
        e.accept(10, None).unwrap();
        e.admit(None, "detach_replica", false).expect("a released set serves Trove's epoch-less calls");
        assert!(matches!(e.admit(Some(9), "detach_replica", false), Err(Error::StaleEpoch { .. })));
    }
}
