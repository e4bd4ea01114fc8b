//! Epochs end to end: stale coordinators refused by number, a deposed master refusing writes, a
//! failover left half done completed by the next coordinator, a two-node set failing over and
//! taking its old master back.

use std::time::Duration;

use serde_json::json;
use trove_guest::flows::Taskmanager;
use trove_guest::replication::epoch::Topology;

use crate::flows::{add_set, create, has_set, role, topology};
use crate::harness::*;

/// The whole host of `g` dies: its agent first (so nothing restarts Redis), then its Redis.
fn kill_host(g: &mut Guest) {
    g.kill_agent();
    let pid = g.redis_pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
}

/// Three guests, guest 0 the master of the others, holding the set `name` everywhere.
async fn replicated_set(name: &str) -> (Vec<Guest>, Taskmanager, tempfile::TempDir) {
    let (g, mut tm, dir) = topology(3, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1], &g[2]])).await.unwrap();
    add_set(&g[0], name, 0..300).await;
    for r in [&g[1], &g[2]] {
        eventually(10, "replicated", || async { has_set(r, name, 0..300).await }).await;
    }
    (g, tm, dir)
}

/// A second coordinator on the same inventory file (another watcher host, a hand-run command).
async fn second(tm: &Taskmanager) -> Taskmanager {
    let inventory = trove_guest::flows::Inventory::load(&tm.inventory.path).unwrap();
    Taskmanager::connect(inventory).await.unwrap()
}

async fn write_refusal(g: &Guest) -> Option<String> {
    let mut con = g.redis(None).await;
    match tokio::time::timeout(Duration::from_secs(2), redis::cmd("SET").arg("probe").arg("1").query_async::<()>(&mut con)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".into()),
    }
}

#[tokio::test]
async fn a_replaced_coordinator_is_refused_by_number() {
    let (g, mut tm, _dir) = topology(3, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1], &g[2]])).await.unwrap();
    let old = tm.epoch.expect("create claims an epoch");
    let mut other = second(&tm).await;
    let claim = other.claim().await.unwrap();
    assert!(claim.epoch > old);
    assert_eq!(claim.topology, Topology::new(&g[0].id, vec![g[1].id.clone(), g[2].id.clone()]));
    // The first coordinator, replaced, is refused by every agent that promised the new epoch.
    let err = tm.call(&g[1].id, "detach_replica", json!({"for_failover": true}), Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(err.contains("stale epoch"), "{err}");
    assert_eq!(role(&g[1]).await, "replica", "a refused call changes nothing");
    // A call without an epoch (Trove's taskmanager) is refused on a managed set, unless it cannot
    // undo a failover (a snapshot of the master, a fence).
    tm.epoch = None;
    let err = tm.call(&g[1].id, "detach_replica", json!({"for_failover": false}), Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(err.contains("without an epoch"), "{err}");
    tm.call(&g[0].id, "get_replication_snapshot", json!({"snapshot_info": {}}), Duration::from_secs(30)).await.unwrap();
    // Handed back to Trove, the set serves epoch-less calls again.
    other.release().await.unwrap();
    tm.call(&g[2].id, "detach_replica", json!({"for_failover": false}), Duration::from_secs(5)).await.unwrap();
    assert_eq!(role(&g[2]).await, "master");
    // And a released set can be managed again (its topology from the inventory).
    let again = other.claim().await.unwrap();
    assert_eq!(again.topology.master, g[0].id);
    // A claim needs a quorum of the replicas: with both replicas' agents gone, nobody acts.
    let mut g = g;
    g[1].kill_agent();
    g[2].kill_agent();
    let err = other.claim().await.unwrap_err().to_string();
    assert!(err.contains("no quorum"), "{err}");
}

#[tokio::test]
async fn a_deposed_master_refuses_writes_and_the_next_coordinator_completes_the_switch() {
    let (g, mut tm, _dir) = topology(3, &[]).await;
    let (m, a, b) = (&g[0], &g[1], &g[2]);
    tm.create_replicas(create(m, &[a, b])).await.unwrap();
    add_set(m, "before", 0..300).await;
    // A coordinator has the switch to `a` accepted, then dies before its first step.
    let claim = tm.claim().await.unwrap();
    let next = Topology::new(&a.id, vec![b.id.clone(), m.id.clone()]);
    tm.commit(&claim, &next).await.unwrap();
    // The old master's agent learnt it is deposed: its Redis refuses writes (a real refusal).
    eventually(5, "the deposed master refuses writes", || async { write_refusal(m).await.is_some_and(|e| e.contains("NOREPLICAS")) }).await;
    let err = tm.call(&m.id, "make_read_only", json!({"read_only": false}), Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(err.contains("names") && err.contains(&a.id), "{err}");
    assert_eq!(role(a).await, "replica", "nothing acted yet");
    // The next coordinator adopts the accepted topology and completes it, the old master included.
    let mut next_tm = second(&tm).await;
    let claim = next_tm.claim().await.unwrap();
    assert_eq!(claim.topology, next);
    next_tm.commit(&claim, &claim.topology).await.unwrap();
    let lives = next_tm.live_all().await;
    next_tm.install(&claim, &claim.topology, &lives, None).await.unwrap();
    assert_eq!(role(a).await, "master");
    for r in [b, m] {
        assert!(linked_replica_of(r.port, a.port).await, "{} does not follow the new master", r.id);
        assert!(has_set(r, "before", 0..300).await);
    }
    assert!(has_set(a, "before", 0..300).await, "the new master caught up with the old one first");
    add_set(a, "after", 0..100).await;
    eventually(10, "the old master gets the new writes", || async { has_set(m, "after", 0..100).await }).await;
}

#[tokio::test]
async fn a_two_node_set_fails_over_and_takes_its_old_master_back() {
    let (mut g, mut tm, _dir) = topology(2, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1]])).await.unwrap();
    add_set(&g[0], "before", 0..200).await;
    eventually(10, "replicated", || async { has_set(&g[1], "before", 0..200).await }).await;
    // The whole master host dies: its agent, then its Redis.
    kill_host(&mut g[0]);
    let report = tm.eject(&g[0].id, false).await.unwrap();
    assert_eq!(report.new_master, g[1].id);
    assert_eq!(role(&g[1]).await, "master");
    add_set(&g[1], "after", 0..200).await;
    // The host comes back: its agent starts its Redis from its files, a master with an old epoch.
    g[0].start_agent();
    wait_ping(&client().await, &g[0]).await;
    let mut again = second(&tm).await;
    let claim = again.claim().await.unwrap();
    assert_eq!(claim.topology.master, g[1].id, "the topology comes from the surviving agent, not the returning one");
    again.commit(&claim, &claim.topology).await.unwrap();
    let lives = again.live_all().await;
    again.install(&claim, &claim.topology, &lives, None).await.unwrap();
    eventually(20, "the old master follows the new one", || async { linked_replica_of(g[0].port, g[1].port).await }).await;
    eventually(10, "with every write made after the failover", || async { has_set(&g[0], "after", 0..200).await }).await;
}

#[tokio::test]
async fn a_master_back_from_its_snapshot_starts_guarded_and_feeds_no_replica() {
    let (mut g, mut tm, _dir) = topology(3, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1], &g[2]])).await.unwrap();
    // A snapshot on disk, then writes it lacks, on both replicas.
    eventually(30, "a snapshot written", || async { redis::cmd("SAVE").query_async::<()>(&mut g[0].redis(None).await).await.is_ok() }).await;
    add_set(&g[0], "after-save", 0..300).await;
    for r in [&g[1], &g[2]] {
        eventually(10, "replicated", || async { has_set(r, "after-save", 0..300).await }).await;
    }
    // The host dies and comes back: its agent starts Redis from the snapshot, guarded.
    kill_host(&mut g[0]);
    g[0].start_agent();
    wait_ping(&client().await, &g[0]).await;
    eventually(20, "the old master serves again, guarded", || async {
        tm.live(&g[0].id).await.status.is_some_and(|s| s["guarded"] == json!(true))
    })
    .await;
    let refusal = write_refusal(&g[0]).await.unwrap_or_default();
    assert!(refusal.contains("ReadOnly") || refusal.contains("READONLY"), "a guarded start must refuse writes: {refusal:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in [&g[1], &g[2]] {
        assert!(has_set(r, "after-save", 0..300).await, "{} resynced from the older snapshot", r.id);
    }
    // The eject promotes the most current replica and re-attaches the old master to it.
    let report = tm.eject(&g[0].id, false).await.unwrap();
    let new = g.iter().find(|x| x.id == report.new_master).unwrap();
    eventually(30, "the old master follows the new one", || async { linked_replica_of(g[0].port, new.port).await }).await;
    eventually(10, "with the writes its snapshot lacked", || async { has_set(&g[0], "after-save", 0..300).await }).await;
}

/// The coordinator of an eject dies (kill -9 between two calls) after each of its steps; the next
/// one, doing what the watcher does, ends with one writable master, the chosen candidate once its
/// topology was accepted, every write kept, and no orphan.
#[tokio::test]
async fn an_eject_whose_coordinator_dies_at_any_step_is_completed() {
    for step in ["claimed", "accepted", "candidate detached", "candidate enabled", "one replica re-pointed"] {
        let (mut g, mut tm, _dir) = replicated_set("before").await;
        kill_host(&mut g[0]);
        let (m, cand, other) = (g[0].id.clone(), g[1].id.clone(), g[2].id.clone());
        // The dying coordinator, step by step, as eject and install order them.
        let long = Duration::from_secs(30);
        let claim = tm.claim().await.unwrap();
        if step != "claimed" {
            let next = Topology { master: cand.clone(), replicas: vec![other.clone()], returning: vec![m.clone()], trove: false };
            tm.commit(&claim, &next).await.unwrap();
        }
        if matches!(step, "candidate detached" | "candidate enabled" | "one replica re-pointed") {
            tm.call(&cand, "detach_replica", json!({"for_failover": true}), long).await.unwrap();
        }
        if matches!(step, "candidate enabled" | "one replica re-pointed") {
            tm.call(&cand, "enable_as_master", json!({}), long).await.unwrap();
        }
        if step == "one replica re-pointed" {
            tm.call(&other, "detach_replica", json!({"for_failover": true}), long).await.unwrap();
        }
        drop(tm);
        // The next coordinator: the accepted topology's master is dead, eject it; else complete.
        let mut next = second_of(&_dir).await;
        let current = next.claim().await.unwrap();
        let master = if current.topology.master == m {
            next.eject(&m, false).await.unwrap_or_else(|e| panic!("{step}: {e}")).new_master
        } else {
            next.commit(&current, &current.topology).await.unwrap();
            let lives = next.live_all().await;
            next.install(&current, &current.topology, &lives, Some(&m)).await.unwrap_or_else(|e| panic!("{step}: {e}"));
            current.topology.master.clone()
        };
        if step != "claimed" {
            assert_eq!(master, cand, "{step}: the accepted candidate must be the one completed");
        }
        let (w, r) = if master == cand { (&g[1], &g[2]) } else { (&g[2], &g[1]) };
        assert_eq!(role(w).await, "master", "{step}");
        assert!(write_refusal(w).await.is_none(), "{step}: the new master must take writes");
        eventually(20, "the other replica follows the new master", || async { linked_replica_of(r.port, w.port).await }).await;
        assert!(write_refusal(r).await.is_some(), "{step}: an orphaned writable master remains");
        assert!(has_set(w, "before", 0..300).await && has_set(r, "before", 0..300).await, "{step}: writes lost");
    }
}

async fn second_of(dir: &tempfile::TempDir) -> Taskmanager {
    let inventory = trove_guest::flows::Inventory::load(&dir.path().join("inventory.toml")).unwrap();
    Taskmanager::connect(inventory).await.unwrap()
}

/// An ejected master stays a returning member (no vote) until it follows again; re-attached with
/// create-replicas it counts again, and a second eject works with it as a replica.
#[tokio::test]
async fn an_ejected_master_counts_again_once_re_attached() {
    let (mut g, mut tm, dir) = topology(3, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1], &g[2]])).await.unwrap();
    kill_host(&mut g[0]);
    let first = tm.eject(&g[0].id, false).await.unwrap().new_master;
    let claim = second_of(&dir).await.claim().await.unwrap();
    assert_eq!(claim.topology.returning, vec![g[0].id.clone()], "{:?}", claim.topology);
    g[0].start_agent();
    wait_ping(&client().await, &g[0]).await;
    let new = g.iter().position(|x| x.id == first).unwrap();
    let mut tm = second_of(&dir).await;
    tm.create_replicas(create(&g[new], &[&g[0]])).await.unwrap();
    let claim = tm.claim().await.unwrap();
    assert!(claim.topology.returning.is_empty() && claim.topology.replicas.contains(&g[0].id), "{:?}", claim.topology);
    // The new master dies too: the set fails over again, to a replica.
    kill_host(&mut g[new]);
    let mut tm = second_of(&dir).await;
    let second = tm.eject(&first, false).await.unwrap().new_master;
    assert_ne!(second, first);
    let w = g.iter().find(|x| x.id == second).unwrap();
    assert_eq!(role(w).await, "master");
}

/// Trove's eject or promote after a watcher's failover, without an epoch: the calls that ask for
/// the accepted topology as it is are answered without a change; the others are refused.
#[tokio::test]
async fn troves_calls_that_match_the_accepted_topology_change_nothing() {
    let (g, mut tm, _dir) = replicated_set("trove-calls").await;
    tm.epoch = None;
    let t = Duration::from_secs(10);
    // Trove's eject ranks the replicas by get_last_txn: the accepted master ranks first even at an
    // equal offset.
    let txn = |v: serde_json::Value| v[1].as_i64().unwrap();
    eventually(10, "replica 1 caught up", || async {
        let m = tm.call(&g[0].id, "get_latest_txn_id", json!({}), t).await.unwrap().as_i64().unwrap();
        let r = txn(tm.call(&g[1].id, "get_last_txn", json!({}), t).await.unwrap());
        m == r
    })
    .await;
    let m = txn(tm.call(&g[0].id, "get_last_txn", json!({}), t).await.unwrap());
    let r = txn(tm.call(&g[1].id, "get_last_txn", json!({}), t).await.unwrap());
    assert!(m > r, "the accepted master ranks {m}, its caught-up replica {r}");
    // The accepted master: Trove's detach (for a failover), enable_as_master, make_read_only(false).
    tm.call(&g[0].id, "detach_replica", json!({"for_failover": true}), t).await.unwrap();
    tm.call(&g[0].id, "enable_as_master", json!({}), t).await.unwrap();
    tm.call(&g[0].id, "make_read_only", json!({"read_only": false}), t).await.unwrap();
    // A replica: detach for the failover, then attach to the master it already follows, demote.
    tm.call(&g[1].id, "detach_replica", json!({"for_failover": true}), t).await.unwrap();
    let master = json!({"replica_info": {"master": {"host": "127.0.0.1", "port": g[0].port}}});
    tm.call(&g[1].id, "attach_replica", master, t).await.unwrap();
    tm.call(&g[1].id, "demote_replication_master", json!({}), t).await.unwrap();
    // What the accepted topology does not say is refused: the replica as master, an attach elsewhere.
    let err = tm.call(&g[1].id, "enable_as_master", json!({}), t).await.unwrap_err().to_string();
    assert!(err.contains("without an epoch"), "{err}");
    let elsewhere = json!({"replica_info": {"master": {"host": "127.0.0.1", "port": g[2].port}}});
    let err = tm.call(&g[1].id, "attach_replica", elsewhere, t).await.unwrap_err().to_string();
    assert!(err.contains("without an epoch"), "{err}");
    let err = tm.call(&g[0].id, "demote_replication_master", json!({}), t).await.unwrap_err().to_string();
    assert!(err.contains("without an epoch"), "{err}");
    // Nothing changed: same roles, and a write on the master reaches both replicas.
    assert_eq!(role(&g[0]).await, "master");
    assert_eq!(role(&g[1]).await, "replica");
    add_set(&g[0], "trove-calls-after", 0..10).await;
    for r in [&g[1], &g[2]] {
        eventually(10, "replicated after Trove's calls", || async { has_set(r, "trove-calls-after", 0..10).await }).await;
    }
}

/// A set Trove keeps (a watcher with `[trove]` in its inventory): Trove's eject that picked a
/// replica while the accepted master serves is refused; Trove's own promote (the master fenced,
/// the candidate caught up with its offset) is admitted, call by call, as Trove makes it.
#[tokio::test]
async fn troves_own_promote_is_admitted_on_a_set_trove_keeps_and_a_stale_eject_is_not() {
    let (g, mut tm, _dir) = replicated_set("trove-kept").await;
    tm.inventory.trove = Some(trove_guest::flows::inventory::TroveApiConf {
        url: "http://127.0.0.1:9/v1.0/project".into(),
        token_file: "/nonexistent".into(),
    });
    let claim = tm.claim().await.unwrap();
    let topology = claim.topology.clone();
    tm.commit(&claim, &topology).await.unwrap();
    tm.epoch = None;
    let t = Duration::from_secs(10);
    // Trove's eject with a stale picture chose replica 1: refused, nothing changes.
    let err = tm.call(&g[1].id, "enable_as_master", json!({}), t).await.unwrap_err().to_string();
    assert!(err.contains("has not caught up with a fenced master"), "{err}");
    assert_eq!(role(&g[1]).await, "replica");
    assert!(write_refusal(&g[0]).await.is_none(), "the accepted master still takes writes");
    // Trove's promote of replica 1, step by step as its taskmanager calls them.
    tm.call(&g[0].id, "make_read_only", json!({"read_only": true}), t).await.unwrap();
    let txn = tm.call(&g[0].id, "get_latest_txn_id", json!({}), t).await.unwrap();
    tm.call(&g[1].id, "wait_for_txn", json!({"txn": txn}), t).await.unwrap();
    tm.call(&g[1].id, "detach_replica", json!({"for_failover": true}), t).await.unwrap();
    tm.call(&g[1].id, "enable_as_master", json!({}), t).await.unwrap();
    tm.call(&g[1].id, "make_read_only", json!({"read_only": false}), t).await.unwrap();
    let new_master = json!({"replica_info": {"master": {"host": "127.0.0.1", "port": g[1].port}}});
    tm.call(&g[2].id, "detach_replica", json!({"for_failover": true}), t).await.unwrap();
    tm.call(&g[2].id, "attach_replica", new_master.clone(), t).await.unwrap();
    tm.call(&g[0].id, "attach_replica", new_master, t).await.unwrap();
    tm.call(&g[0].id, "demote_replication_master", json!({}), t).await.unwrap();
    assert_eq!(role(&g[1]).await, "master");
    assert_eq!(role(&g[0]).await, "replica");
    // The new master takes writes although the accepted topology still names guest 0 (until the
    // watcher adopts Trove's topology), and they reach both replicas.
    eventually(10, "the new master takes writes", || async { write_refusal(&g[1]).await.is_none() }).await;
    add_set(&g[1], "trove-kept-after", 0..10).await;
    for r in [&g[0], &g[2]] {
        eventually(10, "replicated from the promoted guest", || async { has_set(r, "trove-kept-after", 0..10).await }).await;
    }
}
