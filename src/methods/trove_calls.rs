//! Trove's epoch-less replication calls on a set under epochs: a call that asks for what the accepted topology and Redis already are is answered without a change, so Trove's own eject or promote can bring its records in line after a watcher's failover.

use serde_json::{json, Value};

use super::args::Args;
use super::{to_failure, Guest, RemoteFailure};
use crate::replication::MasterRef;

/// How long after Trove's `wait_for_txn` its promote may make this guest the master.
const CAUGHT_UP_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Added to the accepted master's offset in `get_last_txn` (2^50 bytes: more than a replica can
/// receive between Trove's reads).
const MASTER_RANK: i64 = 1 << 50;

/// What an epoch-less call asks of this guest.
pub(super) enum Asks<'x> {
    /// To be the master (`enable_as_master`, `detach_replica` on Trove's new master,
    /// `make_read_only(false)`).
    Master,
    /// To follow this master (`attach_replica`).
    Follows(&'x MasterRef),
    /// To stay or become a replica of the set (`detach_replica(for_failover)` before an attach,
    /// `demote_replication_master`).
    Replica,
}

impl Guest {
    /// Whether `a` carries no epoch, this guest's set is managed under one, and the call asks for
    /// what the accepted topology names this guest and its Redis already is.
    pub(super) async fn agrees(&self, a: &Args<'_>, asks: Asks<'_>) -> Result<bool, RemoteFailure> {
        if a.opt_u64("epoch")?.is_some() {
            return Ok(false);
        }
        let record = self.epochs.record();
        let Some(topology) = record.topology.as_ref() else { return Ok(false) };
        let me = self.epochs.me();
        let follower = topology.master != me && topology.followers().any(|f| f == me);
        let status = self.strategy.status().await.map_err(|e| to_failure(a, e))?;
        let role = status.get("role").and_then(Value::as_str);
        let agrees = match asks {
            Asks::Master => topology.master == me && role == Some("master"),
            Asks::Replica => follower && role == Some("replica") && status.get("guarded") != Some(&json!(true)),
            Asks::Follows(m) => {
                follower
                    && role == Some("replica")
                    && status.get("master_host").and_then(Value::as_str) == Some(m.host.as_str())
                    && status.get("master_port").and_then(Value::as_u64) == Some(u64::from(m.port))
            }
        };
        if agrees {
            tracing::info!(method = a.method, epoch = record.accepted, "an epoch-less call asks for the accepted topology as it is: nothing to change");
        }
        Ok(agrees)
    }

    /// In a set Trove keeps, Trove's epoch-less call that would make this guest a writable master
    /// while the accepted topology names another (`enable_as_master`, `make_read_only(false)`) is
    /// admitted only after Trove's promote fenced that master: this guest's last epoch-less
    /// `wait_for_txn` reached the fenced master's offset within `CAUGHT_UP_FOR`, and its offset has
    /// not moved since (a master still taking writes would have moved it). Trove's eject, which
    /// fences nobody, is refused here unless it picked the accepted master (`agrees`).
    pub(super) async fn trove_may_unfence(&self, a: &Args<'_>) -> Result<(), RemoteFailure> {
        let record = self.epochs.record();
        let Some(topology) = record.topology.as_ref().filter(|t| t.trove && t.master != self.epochs.me()) else { return Ok(()) };
        let caught_up = *self.trove_caught_up.lock().unwrap_or_else(|p| p.into_inner());
        let (_, offset) = self.strategy.last_txn().await.map_err(|e| to_failure(a, e))?;
        match caught_up {
            Some((txn, at)) if at.elapsed() <= CAUGHT_UP_FOR && offset == txn => Ok(()),
            _ => Err(to_failure(
                a,
                crate::replication::Error::Refused(format!(
                    "{} refused: epoch {} names {} the master of this set, and this guest has not caught up with a fenced master \
                     (Trove's promote fences the master and waits for its offset first)",
                    a.method, record.accepted, topology.master
                )),
            )),
        }
    }

    /// Trove's `get_last_txn` ranks the replicas of a dead master for its eject. In a set under
    /// epochs the accepted master ranks above its replicas even at an equal offset (a replica
    /// never holds more of the same history than its master), so that Trove's eject picks the
    /// master a watcher already promoted. Trove reads the guests one after another while writes
    /// go on, so the master's figure is its offset plus `MASTER_RANK`, which a replica's later,
    /// larger offset cannot reach.
    pub(super) fn rank_offset(&self, master_host: Option<&String>, offset: i64) -> i64 {
        let record = self.epochs.record();
        let leads = master_host.is_none() && record.topology.as_ref().is_some_and(|t| t.master == self.epochs.me());
        if leads {
            offset.saturating_add(MASTER_RANK)
        } else {
            offset
        }
    }
}
