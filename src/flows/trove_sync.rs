//! The watcher's side of Trove's records: after a failover, Trove's own eject (or, while the old master still heartbeats, its promote) brings `slave_of_id` in line with the accepted topology; the agents answer those calls without a change.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::trove_api::{Answer, TroveApi};
use super::Live;
use crate::discovery::metrics::WatchStats;
use crate::replication::epoch::Topology;

/// How often the lease holder reads Trove's records.
const PERIOD: Duration = Duration::from_secs(2);

/// What the watcher keeps between looks at Trove.
pub struct TroveSync {
    api: TroveApi,
    next: Option<Instant>,
    /// The last state logged, so a wait is logged once, not every look.
    said: String,
}

/// What one look decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Trove's records match the accepted topology.
    InLine,
    /// Trove runs a task on the set, or cannot be read: look again later.
    Wait(String),
    /// Ask Trove to eject `old` (its recorded master), or to promote the accepted master.
    Eject { old: String },
    Promote { new: String },
    /// Trove's records differ in a way its eject and promote cannot mend.
    Stuck(String),
}

impl TroveSync {
    pub fn new(api: TroveApi) -> TroveSync {
        TroveSync { api, next: None, said: String::new() }
    }

    /// One look (at most every `PERIOD`): reads Trove's records of `members` and asks Trove to
    /// act when they differ from the accepted `topology`, which the guests match. Returns the
    /// action Trove accepted, if any.
    pub async fn look(&mut self, topology: &Topology, members: &[String], lives: &[Live], stats: &WatchStats) -> Option<String> {
        let now = Instant::now();
        if self.next.is_some_and(|n| now < n) {
            return None;
        }
        self.next = Some(now + PERIOD);
        let records = match self.api.instances().await {
            Ok(r) => r,
            Err(error) => {
                self.say(format!("cannot read Trove's records: {error}"), true);
                return None;
            }
        };
        let step = decide(topology, members, lives, &|id| records.get(id).map(|r| (r.busy(), r.replica_of.clone())));
        stats.trove_in_line.store(if step == Step::InLine { 2 } else { 1 }, Ordering::Relaxed);
        let (action, id) = match step {
            Step::InLine => {
                self.say(format!("Trove's records match the accepted topology (master {})", topology.master), false);
                return None;
            }
            Step::Wait(why) | Step::Stuck(why) => {
                self.say(why, true);
                return None;
            }
            Step::Eject { old } => ("eject_replica_source", old),
            Step::Promote { new } => ("promote_to_replica_source", new),
        };
        match self.api.action(&id, action).await {
            Ok(Answer::Accepted) => {
                stats.trove_actions.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%action, instance = %id, master = %topology.master, "decision: Trove's records name another master; Trove accepted its own action to bring them in line");
                self.said.clear();
                // Trove's task shows on the next look, and is waited for.
                Some(format!("{action} {id}"))
            }
            Ok(Answer::Refused(message)) if action == "eject_replica_source" && message.contains("current heartbeat") => {
                self.say(format!("Trove refuses to eject {id} while its heartbeat is current; waiting for it to expire"), false);
                None
            }
            Ok(Answer::Refused(message)) => {
                self.say(format!("Trove refused {action} {id}: {message}"), true);
                None
            }
            Err(error) => {
                self.say(error.to_string(), true);
                None
            }
        }
    }

    fn say(&mut self, text: String, warn: bool) {
        if self.said != text {
            if warn {
                tracing::warn!(trove = %text, "Trove's records");
            } else {
                tracing::info!(trove = %text, "Trove's records");
            }
            self.said = text;
        }
    }
}

/// What the watcher does about guests that differ from the accepted topology, given Trove's records.
#[derive(Debug, PartialEq, Eq)]
pub enum Adopt {
    /// Trove runs a task on the set (its own promote, eject or detach in flight): wait for it.
    Wait(String),
    /// The guests are as Trove records them, which differs from the accepted topology: Trove's own
    /// promote, eject or detach did it. The watcher accepts this topology in a new epoch.
    Take(Topology),
    /// Not Trove's doing: the watcher makes the guests match the accepted topology.
    No,
}

impl TroveSync {
    /// Reads Trove's records (at once, not every `PERIOD`) for guests that differ from `accepted`.
    pub async fn adopt(&mut self, accepted: &Topology, members: &[String], lives: &[Live]) -> Adopt {
        let records = match self.api.instances().await {
            Ok(r) => r,
            Err(error) => {
                // Without Trove's records the watcher cannot tell Trove's change from a stray.
                self.say(format!("cannot read Trove's records: {error}"), true);
                return Adopt::Wait(error.to_string());
            }
        };
        let got = troves_change(accepted, members, lives, &|id| records.get(id).map(|r| (r.busy(), r.replica_of.clone())));
        if let Adopt::Wait(why) = &got {
            self.say(why.clone(), false);
        }
        got
    }
}

/// Whether the guests, which differ from `accepted`, are as Trove records them (see `Adopt`).
pub fn troves_change(accepted: &Topology, members: &[String], lives: &[Live], record: &dyn Fn(&str) -> Option<(bool, Option<String>)>) -> Adopt {
    if let Some(busy) = members.iter().find(|m| record(m).is_some_and(|(busy, _)| busy)) {
        return Adopt::Wait(format!("Trove runs a task on {busy}: waiting for it before acting on the guests"));
    }
    let of = |id: &str| record(id).and_then(|(_, of)| of);
    let masters: Vec<&String> = members.iter().filter(|m| record(m).is_some() && of(m).is_none() && members.iter().any(|r| of(r).as_deref() == Some(m.as_str()))).collect();
    let master = match masters.as_slice() {
        [master] => *master,
        // No member follows another (Trove detached the last replica): the accepted master stays
        // the master of a set of one, if Trove records it standalone.
        [] if record(&accepted.master).is_some() && of(&accepted.master).is_none() => &accepted.master,
        _ => return Adopt::No,
    };
    let replicas: Vec<String> = members.iter().filter(|r| of(r).as_deref() == Some(master.as_str())).cloned().collect();
    if accepted.master == *master && accepted.replicas.iter().all(|r| replicas.contains(r)) && replicas.iter().all(|r| accepted.replicas.contains(r)) {
        return Adopt::No;
    }
    let live = |id: &str| lives.iter().find(|l| l.id == id);
    let Some(master_live) = live(master).filter(|l| l.role() == Some("master") && l.status.as_ref().and_then(|s| s.get("fenced")) != Some(&json!(true))) else {
        return Adopt::No;
    };
    let addr = master_live.addr();
    let follow = replicas.iter().all(|r| live(r).is_some_and(|l| l.role() == Some("replica") && addr.is_some() && l.master_addr() == addr));
    if !follow {
        return Adopt::No;
    }
    Adopt::Take(Topology::new(master, replicas))
}

/// What to ask of Trove, given its records (`record(id)`: whether Trove runs a task on it, and
/// its `replica_of`) and the guests, which match the accepted `topology`.
pub fn decide(topology: &Topology, members: &[String], lives: &[Live], record: &dyn Fn(&str) -> Option<(bool, Option<String>)>) -> Step {
    let master = &topology.master;
    let Some((_, master_of)) = record(master) else {
        return Step::Stuck(format!("Trove has no instance {master}"));
    };
    if let Some(busy) = members.iter().find(|m| record(m).is_some_and(|(busy, _)| busy)) {
        return Step::Wait(format!("Trove runs a task on {busy}"));
    }
    // A follower Trove records as standalone (an old master Trove's eject left so) does not count.
    let in_line = master_of.is_none()
        && topology.followers().all(|r| record(r).is_none_or(|(_, of)| of.is_none() || of.as_deref() == Some(master.as_str())));
    if in_line {
        return Step::InLine;
    }
    // Trove records the accepted master as a replica of `old`: Trove's eject of `old` makes its
    // most current replica the master, and the accepted master ranks first (`get_last_txn`).
    let Some(old) = master_of else {
        return Step::Stuck(format!("Trove records {master} as a master, but not all its replicas as following it"));
    };
    // While `old` still heartbeats, Trove refuses the eject; its promote of the accepted master
    // works once `old` follows it (re-attached), as Trove then asks `old` only to stay a replica.
    let old_follows = lives.iter().find(|l| l.id == old).is_some_and(|l| {
        let s = l.status.as_ref();
        l.role() == Some("replica") && s.and_then(|s| s.get("link_up")) == Some(&json!(true)) && {
            let want = lives.iter().find(|m| &m.id == master).and_then(Live::addr);
            want.is_some() && l.master_addr() == want
        }
    });
    if old_follows {
        Step::Promote { new: master.clone() }
    } else {
        Step::Eject { old }
    }
}

/// The status a guest reports, for the unit tests.
#[cfg(test)]
fn live(id: &str, status: serde_json::Value) -> Live {
    Live { id: id.into(), status: Some(status), error: None, unprepared: false, silent: false, held: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn records(r: &[(&str, bool, Option<&str>)]) -> HashMap<String, (bool, Option<String>)> {
        r.iter().map(|(id, busy, of)| (id.to_string(), (*busy, of.map(str::to_owned)))).collect()
    }

    #[test]
    fn trove_is_asked_to_eject_its_recorded_master_then_waited_for() {
        let t = Topology { master: "b".into(), replicas: vec!["c".into()], returning: vec!["a".into()], trove: true };
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let b = live("b", json!({"role": "master", "host": "10.0.0.2", "port": 6379}));
        let c = live("c", json!({"role": "replica", "link_up": true, "master_host": "10.0.0.2", "master_port": 6379}));
        let lives = vec![Live { id: "a".into(), status: None, error: Some("no answer".into()), unprepared: false, silent: true, held: false }, b.clone(), c.clone()];
        let stale = records(&[("a", false, None), ("b", false, Some("a")), ("c", false, Some("a"))]);
        let got = decide(&t, &members, &lives, &|id| stale.get(id).cloned());
        assert_eq!(got, Step::Eject { old: "a".into() });
        let busy = records(&[("a", true, None), ("b", false, Some("a")), ("c", false, Some("a"))]);
        assert!(matches!(decide(&t, &members, &lives, &|id| busy.get(id).cloned()), Step::Wait(_)));
        let done = records(&[("a", false, None), ("b", false, None), ("c", false, Some("b"))]);
        assert_eq!(decide(&t, &members, &lives, &|id| done.get(id).cloned()), Step::InLine);
        // the old master is back and follows the accepted master: Trove's promote instead
        let a = live("a", json!({"role": "replica", "link_up": true, "master_host": "10.0.0.2", "master_port": 6379}));
        let lives = vec![a, b, c];
        assert_eq!(decide(&t, &members, &lives, &|id| stale.get(id).cloned()), Step::Promote { new: "b".into() });
        let standalone = records(&[("a", false, None), ("b", false, None), ("c", false, None)]);
        assert_eq!(decide(&t, &members, &lives, &|id| standalone.get(id).cloned()), Step::InLine, "detached in Trove's records");
        let odd = records(&[("a", false, None), ("b", false, None), ("c", false, Some("a"))]);
        assert!(matches!(decide(&t, &members, &lives, &|id| odd.get(id).cloned()), Step::Stuck(_)));
    }

    #[test]
    fn what_troves_own_promote_or_detach_did_is_adopted_once_its_task_ends() {
        let accepted = Topology::new("b", vec!["c".into(), "a".into()]);
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // Trove promoted c: c is master, a and b follow it
        let lives = vec![
            live("a", json!({"role": "replica", "master_host": "10.0.0.3", "master_port": 6379})),
            live("b", json!({"role": "replica", "master_host": "10.0.0.3", "master_port": 6379})),
            live("c", json!({"role": "master", "host": "10.0.0.3", "port": 6379})),
        ];
        let running = records(&[("a", false, Some("b")), ("b", false, None), ("c", true, Some("b"))]);
        assert!(matches!(troves_change(&accepted, &members, &lives, &|id| running.get(id).cloned()), Adopt::Wait(_)));
        let done = records(&[("a", false, Some("c")), ("b", false, Some("c")), ("c", false, None)]);
        assert_eq!(troves_change(&accepted, &members, &lives, &|id| done.get(id).cloned()), Adopt::Take(Topology::new("c", vec!["a".into(), "b".into()])));
        // Trove's records say so, the guests do not (a stray): not Trove's doing
        let stray = vec![lives[0].clone(), live("b", json!({"role": "master", "host": "10.0.0.2", "port": 6379})), lives[2].clone()];
        assert_eq!(troves_change(&accepted, &members, &stray, &|id| done.get(id).cloned()), Adopt::No);
        // Trove detached a from b: b keeps c only
        let lives = vec![
            live("a", json!({"role": "master", "host": "10.0.0.1", "port": 6379})),
            live("b", json!({"role": "master", "host": "10.0.0.2", "port": 6379})),
            live("c", json!({"role": "replica", "master_host": "10.0.0.2", "master_port": 6379})),
        ];
        let detached = records(&[("a", false, None), ("b", false, None), ("c", false, Some("b"))]);
        assert_eq!(troves_change(&accepted, &members, &lives, &|id| detached.get(id).cloned()), Adopt::Take(Topology::new("b", vec!["c".into()])));
        // Trove detached the last replica: a set of one
        let lives2 = vec![lives[1].clone(), live("c", json!({"role": "master", "host": "10.0.0.3", "port": 6379}))];
        let last = records(&[("b", false, None), ("c", false, None)]);
        let pair = Topology::new("b", vec!["c".into()]);
        let two: Vec<String> = vec!["b".into(), "c".into()];
        assert_eq!(troves_change(&pair, &two, &lives2, &|id| last.get(id).cloned()), Adopt::Take(Topology::new("b", vec![])));
        // Trove's records match the accepted topology: the mismatch is not Trove's doing
        let same = records(&[("a", false, Some("b")), ("b", false, None), ("c", false, Some("b"))]);
        assert_eq!(troves_change(&accepted, &members, &lives, &|id| same.get(id).cloned()), Adopt::No);
    }
}
