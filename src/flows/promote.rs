//! Promote a replica to replica source: fence, catch up, promote, re-point everyone in parallel, demote.

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::{collect, Error, Taskmanager, HIGH_TIMEOUT};
use crate::replication::epoch::Topology;

#[derive(Debug, Serialize)]
pub struct PromoteReport {
    pub new_master: String,
    pub old_master: String,
    /// From the fence on the old master until the candidate accepts writes.
    pub writes_blocked_ms: u64,
    pub total_ms: u64,
}

impl Taskmanager {
    pub async fn promote(&mut self, candidate: &str) -> Result<PromoteReport, Error> {
        let started = Instant::now();
        self.require(candidate)?;
        let claim = self.claim().await?;
        let current = claim.topology.clone();
        let old = current.master.clone();
        if !current.replicas.iter().any(|r| r == candidate) {
            return Err(Error::Refused(format!(
                "{candidate} is not a replica of the current master {old} (epoch {}); only a replica can be promoted",
                claim.accepted
            )));
        }
        let others: Vec<String> = current.replicas.iter().filter(|r| *r != candidate).cloned().collect();
        // Reuse the pre-command probe when there is one (as eject does); otherwise probe now.
        let mut live = match self.recent.iter().find(|l| l.id == old) {
            Some(l) => l.clone(),
            None => self.live(&old).await,
        };
        if live.silent {
            // Silence is not death for a planned switchover: a broker failover (a quorum queue's
            // leader election) can hold a call for seconds. Ask once more, with time to answer.
            tracing::info!(%old, "the replica source did not answer the probe; asking again");
            live = self.live_within(&old, super::LOW_TIMEOUT).await;
        }
        if live.role() != Some("master") {
            return Err(Error::Refused(format!(
                "the replica source {old} is not a live master ({}); use eject-replica-source for a dead master",
                live.error.unwrap_or_else(|| "it reports another role".into())
            )));
        }
        tracing::info!(%candidate, %old, ?others, epoch = claim.epoch, "promoting");
        // How replicas will reach the candidate does not change when it becomes master: ask now,
        // outside the write-blocked window.
        let context = self.call(candidate, "get_replica_context", json!({}), HIGH_TIMEOUT).await?;
        let mut next = Topology::new(candidate, others.clone());
        next.replicas.push(old.clone());
        next.returning = current.returning.clone();
        // 1. Fence the old master (a pause: its clients wait, and its offset is final) while the
        // replicas accept the new topology, in parallel. The candidate becomes master only after
        // both, at exactly the fenced offset, so writes taken between the two are not lost; a
        // coordinator that dies after the accept leaves a switch that the next one completes
        // (`install` fences the old master and catches the candidate up). The old master is asked
        // to accept after its re-point, outside the pause: accepting first would depose it, and a
        // deposed master refuses writes instead of holding them.
        let fence_at = Instant::now();
        let skip = vec![old.clone()];
        let (fenced, accepted) = tokio::join!(self.fence_offset(&old), self.accept(&claim, &next, &skip));
        if let Err(error) = accepted {
            // Not accepted by a quorum: nothing changes hands, and the pause goes.
            let _ = self.call(&old, "make_read_only", json!({"read_only": false}), HIGH_TIMEOUT).await;
            return Err(error);
        }
        let latest = fenced.map_err(|e| {
            Error::Refused(format!("{e}; epoch {} names {candidate} the master: the next command or the watcher completes the switch", claim.epoch))
        })?;
        // 2. The candidate catches up to exactly the fenced offset, detaches and becomes master,
        // in one call.
        self.enable_master(candidate, latest).await?;
        self.writable(candidate).await;
        // 3. Unfence the candidate (a no-op unless it was fenced) while the other replicas and the
        // old master are re-pointed directly, in parallel (partial resync). The writers of the old
        // master wait until its re-point, so nothing else (inventory fsyncs) runs before it.
        let mut movers = others.clone();
        movers.push(old.clone());
        let old_only = vec![old.clone()];
        let unfence = async {
            let r = self.call(candidate, "make_read_only", json!({"read_only": false}), HIGH_TIMEOUT).await;
            (r, fence_at.elapsed().as_millis() as u64)
        };
        let ((unfenced, writes_blocked_ms), results) = tokio::join!(unfence, self.repoint_calls(&movers, &old_only, &context));
        tracing::info!(%candidate, writes_blocked_ms, "new master accepts writes");
        unfenced?;
        // 4. The old master drops its replica-source settings, once it follows the candidate. One
        // that could not be re-pointed stays fenced (deposed) for the watcher to re-attach.
        let old_followed = results.last().is_some_and(Result::is_ok);
        let mut outcome = results;
        if old_followed {
            outcome.push(self.call(&old, "demote_replication_master", json!({}), HIGH_TIMEOUT).await.map(|_| ()));
            let args = json!({"epoch": claim.epoch, "topology": next});
            if let Err(error) = self.call(&old, "epoch_accept", args, self.epoch_timeout).await {
                // The quorum has accepted already; the old master learns the epoch at the next change.
                tracing::warn!(%old, %error, "the old master did not record the new epoch");
            }
            outcome.push(self.mirror(&next));
        } else {
            tracing::warn!(%old, "the old master could not be re-pointed: it stays fenced, in the topology as a member to re-attach");
            let mut back = next.clone();
            back.replicas.retain(|r| *r != old);
            back.returning.push(old.clone());
            outcome.push(self.commit(&claim, &back).await);
        }
        collect(outcome)?;
        Ok(PromoteReport { new_master: candidate.into(), old_master: old, writes_blocked_ms, total_ms: started.elapsed().as_millis() as u64 })
    }
}
