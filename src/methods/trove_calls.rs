//! Trove's epoch-less replication calls on a set under epochs: a call that asks for what the accepted topology and Redis already are is answered without a change, so Trove's own eject or promote can bring its records in line after a watcher's failover.

use serde_json::{json, Value};

use super::args::Args;
use super::{to_failure, Guest, RemoteFailure};
use crate::replication::MasterRef;

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

    /// Trove's `get_last_txn` ranks the replicas of a dead master for its eject. In a set under
    /// epochs the accepted master ranks above its replicas even at an equal offset (a replica
    /// never holds more of the same history than its master), so that Trove's eject picks the
    /// master a watcher already promoted.
    pub(super) fn rank_offset(&self, master_host: Option<&String>, offset: i64) -> i64 {
        let record = self.epochs.record();
        let leads = master_host.is_none() && record.topology.as_ref().is_some_and(|t| t.master == self.epochs.me());
        if leads {
            offset.saturating_add(1)
        } else {
            offset
        }
    }
}
