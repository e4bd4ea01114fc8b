//! Eject a dead replica source: choose the most current replica by history and offset, promote it, re-point the rest.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::{Error, Live, Taskmanager};
use crate::replication::epoch::Topology;

/// How long an eject asks a returning member that the pre-command probe did not see.
const RETURNING_PROBE: std::time::Duration = std::time::Duration::from_millis(200);

/// One replica's evidence for the choice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub replid: Option<String>,
    pub offset: i64,
    pub last_io_seconds: Option<i64>,
    pub master: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EjectReport {
    pub old_master: String,
    pub new_master: String,
    pub evidence: Vec<Candidate>,
    pub skipped: Vec<String>,
    pub total_ms: u64,
}

/// Picks the most current replica: shared history first (the replication ID most replicas hold),
/// then the highest offset, then the smallest non-negative `master_last_io_seconds_ago`, then the id.
pub fn choose(candidates: &[Candidate]) -> Result<&Candidate, String> {
    let masters: std::collections::BTreeSet<_> = candidates.iter().filter_map(|c| c.master.clone()).collect();
    if masters.len() > 1 {
        return Err(format!("the replicas do not all follow the same master: {masters:?}"));
    }
    let mut by_history: HashMap<Option<&str>, (usize, i64)> = HashMap::new();
    for c in candidates {
        let e = by_history.entry(c.replid.as_deref()).or_insert((0, i64::MIN));
        e.0 += 1;
        e.1 = e.1.max(c.offset);
    }
    let history = by_history
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(a.1 .1.cmp(&b.1 .1)).then(b.0.cmp(a.0)))
        .map(|(h, _)| *h)
        .ok_or("no reachable replica")?;
    candidates
        .iter()
        .filter(|c| c.replid.as_deref() == history)
        .max_by(|a, b| {
            let io = |c: &Candidate| match c.last_io_seconds {
                Some(s) if s >= 0 => -s,
                _ => i64::MIN,
            };
            a.offset.cmp(&b.offset).then(io(a).cmp(&io(b))).then(b.id.cmp(&a.id))
        })
        .ok_or_else(|| "no reachable replica".into())
}

fn candidate(l: &Live) -> Option<Candidate> {
    let s = l.status.as_ref()?;
    if s.get("role")? != "replica" {
        return None;
    }
    Some(Candidate {
        id: l.id.clone(),
        replid: s.get("replid").and_then(Value::as_str).map(str::to_owned),
        offset: l.offset(),
        last_io_seconds: s.get("master_last_io_seconds_ago").and_then(Value::as_i64),
        master: l.master_addr().map(|(h, p)| format!("{h}:{p}")),
    })
}

impl Taskmanager {
    pub async fn eject(&mut self, master: &str, force: bool) -> Result<EjectReport, Error> {
        let started = Instant::now();
        self.require(master)?;
        let claim = self.claim().await?;
        let current = claim.topology.clone();
        if current.master != master {
            return Err(Error::Refused(format!("epoch {} names {} the master of this set, not {master}; nothing to eject", claim.accepted, current.master)));
        }
        let replicas = current.replicas.clone();
        if replicas.is_empty() {
            return Err(Error::Refused(format!("{master} is not a replica source (it has no replicas)")));
        }
        let live_master = match self.recent.iter().find(|l| l.id == master) {
            Some(l) => l.clone(),
            None => self.live_within(master, super::DEAD_MASTER_TIMEOUT).await,
        };
        if live_master.role() == Some("master") && !force {
            return Err(Error::Refused(format!(
                "{master} is alive and serving as master; eject is for a dead master (use promote-to-replica-source, or --force)"
            )));
        }
        let mut live: Vec<Live> = futures_util::future::join_all(replicas.iter().map(|r| self.live(r))).await;
        let skipped: Vec<String> = live.iter().filter(|l| l.status.is_none()).map(|l| l.id.clone()).collect();
        let evidence: Vec<Candidate> = live.iter().filter_map(candidate).collect();
        let chosen = choose(&evidence).map_err(Error::Refused)?.clone();
        tracing::info!(new_master = %chosen.id, offset = chosen.offset, ?skipped, epoch = claim.epoch, "chose the most current replica");
        let new = chosen.id.clone();
        // The old master stays in the set as a replica: deposed, it is re-attached when it returns.
        // The old master, and replicas that did not answer, are re-attached when they return; they
        // do not count in the quorum meanwhile (a dead member must not block the next change).
        let mut next = Topology::new(&new, replicas.iter().filter(|r| **r != new && !skipped.contains(r)).cloned().collect());
        next.returning = current.returning.iter().chain(&skipped).chain(std::iter::once(&master.to_owned())).filter(|r| **r != new).cloned().collect();
        self.commit(&claim, &next).await?;
        live.push(live_master);
        // Returning members (an earlier dead master) as the pre-command probe saw them, else asked
        // briefly: one that does not answer is re-attached later, it must not slow the eject.
        let this = &*self;
        let returning: Vec<Live> = futures_util::future::join_all(current.returning.iter().map(|r| async move {
            match this.recent.iter().find(|l| l.id == *r) {
                Some(l) => l.clone(),
                None => this.live_within(r, RETURNING_PROBE).await,
            }
        }))
        .await;
        live.extend(returning);
        self.install(&claim, &next, &live, Some(master)).await?;
        Ok(EjectReport { old_master: master.into(), new_master: new, evidence, skipped, total_ms: started.elapsed().as_millis() as u64 })
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, replid: &str, offset: i64, io: i64) -> Candidate {
        Candidate { id: id.into(), replid: Some(replid.into()), offset, last_io_seconds: Some(io), master: Some("m:1".into()) }
    }

    #[test]
    fn choice_table() {
        let cases: Vec<(Vec<Candidate>, &str)> = vec![
            (vec![c("a", "h", 100, -1), c("b", "h", 200, -1)], "b"),
            (vec![c("a", "h", 200, 3), c("b", "h", 200, 1)], "b"),
            (vec![c("a", "h", 200, -1), c("b", "h", 200, 5)], "b"),
            (vec![c("b", "h", 200, -1), c("a", "h", 200, -1)], "a"),
            (vec![c("a", "h", 0, -1), c("b", "h", 0, -1)], "a"),
            // Another history with a larger offset is not comparable: the shared history wins.
            (vec![c("a", "h", 100, -1), c("b", "h", 90, -1), c("x", "other", 9999, 0)], "a"),
        ];
        for (cands, want) in cases {
            assert_eq!(choose(&cands).unwrap().id, want, "{cands:?}");
        }
        let mut split = vec![c("a", "h", 1, 0), c("b", "h", 2, 0)];
        split[1].master = Some("other:2".into());
        assert!(choose(&split).unwrap_err().contains("same master"));
        assert!(choose(&[]).is_err());
    }
}
