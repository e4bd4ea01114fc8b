//! End-to-end flows through trove_guest::flows against agents in separate processes (Trove's scenario checklist).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::json;
use trove_guest::flows::{create::CreateOptions, Error, Taskmanager};

use crate::harness::*;

pub(crate) async fn topology(n: usize, env: &[(&str, &str)]) -> (Vec<Guest>, Taskmanager, tempfile::TempDir) {
    let c = client().await;
    let mut guests = Vec::new();
    for _ in 0..n {
        guests.push(spawn_guest(&c, None, env).await);
    }
    for g in &guests {
        prepare(&c, g, None, None).await;
    }
    let (tm, dir) = taskmanager(&guests).await;
    (guests, tm, dir)
}

pub fn create(master: &Guest, replicas: &[&Guest]) -> CreateOptions {
    CreateOptions {
        master: master.id.clone(),
        replicas: replicas.iter().map(|g| g.id.clone()).collect(),
        count: None,
        enable_persistence: false,
        config_contents: None,
    }
}

pub(crate) async fn add_set(g: &Guest, name: &str, range: std::ops::Range<u32>) {
    let mut con = g.redis(None).await;
    for n in range {
        let _: () = con.set(format!("user:{n}"), format!("id:{n}")).await.unwrap();
    }
    let _: () = con.set(name, "value_set").await.unwrap();
}

pub(crate) async fn has_set(g: &Guest, name: &str, range: std::ops::Range<u32>) -> bool {
    let mut con = g.redis(None).await;
    if con.get::<_, Option<String>>(name).await.unwrap().is_none() {
        return false;
    }
    for n in [range.start, range.end - 1, (range.start + range.end) / 2] {
        if con.get::<_, Option<String>>(format!("user:{n}")).await.unwrap() != Some(format!("id:{n}")) {
            return false;
        }
    }
    true
}

pub(crate) async fn role(g: &Guest) -> String {
    let r = info(&mut g.redis(None).await, "replication").await.replication().unwrap();
    format!("{:?}", r.role).to_lowercase()
}

#[tokio::test]
async fn replication_scenario_checklist() {
    let (g, mut tm, _dir) = topology(3, &[]).await;
    let (m, r1, r2) = (&g[0], &g[1], &g[2]);
    add_set(m, "small", 1000..2000).await;
    // Several replicas at once.
    let report = tm.create_replicas(create(m, &[r1, r2])).await.unwrap();
    assert_eq!(report.replicas.len(), 2);
    add_set(m, "tiny", 1..100).await;
    for r in [r1, r2] {
        eventually(10, "data on every replica", || async { has_set(r, "small", 1000..2000).await && has_set(r, "tiny", 1..100).await }).await;
        assert!(r.redis(None).await.set::<_, _, ()>("x", "1").await.is_err(), "replicas reject writes");
    }
    // Refusals: promote the master, eject a replica, eject a healthy master, replica of a replica.
    assert!(matches!(tm.promote(&m.id).await, Err(Error::Refused(_))));
    assert!(matches!(tm.eject(&r1.id, false).await, Err(Error::Refused(_))));
    match tm.eject(&m.id, false).await {
        Err(Error::Refused(msg)) => assert!(msg.contains("alive"), "{msg}"),
        other => panic!("eject of a live master: {other:?}"),
    }
    let (extra, _) = (spawn_guest(&client().await, None, &[]).await, ());
    // Not in the inventory: refused; a replica as a source: refused.
    assert!(matches!(tm.create_replicas(create(r1, &[&extra])).await, Err(Error::Refused(_))));
    // Promote replica1; the old master and replica2 follow it.
    tm.promote(&r1.id).await.unwrap();
    assert_eq!(role(r1).await, "master");
    assert_eq!(role(m).await, "replica");
    assert_eq!(tm.inventory.guest(&m.id).unwrap().replica_of.as_deref(), Some(r1.id.as_str()));
    add_set(r1, "tiny2", 500..600).await;
    for r in [m, r2] {
        eventually(10, "tiny2 on every replica of the new master", || async { has_set(r, "tiny2", 500..600).await }).await;
    }
    // Promote the original back.
    tm.promote(&m.id).await.unwrap();
    assert_eq!(role(m).await, "master");
    add_set(m, "tiny3", 3000..3100).await;
    for r in [r1, r2] {
        eventually(10, "tiny3 everywhere", || async { has_set(r, "tiny3", 3000..3100).await }).await;
    }
    // With two replicas the master's split-brain fence is armed (half of them, rounded up).
    eventually(15, "the master's split-brain fence armed", || async {
        let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("min-replicas-to-write").query_async(&mut m.redis(None).await).await.unwrap();
        v[1] == "1"
    })
    .await;
    // Detach replica1: writable, keeps the data.
    tm.detach(&r1.id).await.unwrap();
    let mut con = r1.redis(None).await;
    let _: () = con.set("after-detach", "1").await.unwrap();
    assert!(has_set(r1, "small", 1000..2000).await);
    assert!(tm.inventory.guest(&r1.id).unwrap().replica_of.is_none());
    let (rows, disagreements) = tm.show().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    assert_eq!(rows.iter().filter(|r| r.role == "master").count(), 2);
    // Detach the last replica: the master's fence goes with the replicas it counted on, so the
    // master, now alone, still takes writes.
    tm.detach(&r2.id).await.unwrap();
    eventually(5, "the master alone takes writes (its fence lowered)", || async {
        m.redis(None).await.set::<_, _, ()>("after-last-detach", "1").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn eject_picks_the_most_current_replica() {
    let (g, mut tm, _dir) = topology(3, &[]).await;
    let (mut m, a, b) = {
        let mut it = g.into_iter();
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    tm.create_replicas(create(&m, &[&a, &b])).await.unwrap();
    // b lags: stop its Redis and cut its link (so nothing buffered reaches it later), then write.
    let b_pid = b.redis_pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &b_pid]).status().unwrap();
    let _: () = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query_async(&mut m.redis(None).await).await.unwrap();
    // Valkey closes killed replicas asynchronously: write only once b is off the master's list,
    // and a is back on it (the split-brain fence, one replica of two, refuses writes until then).
    eventually(10, "b cut off from the master, a linked again", || async {
        let r = info(&mut m.redis(None).await, "replication").await.replication().unwrap();
        !r.replicas.iter().any(|x| x.port == b.port) && r.replicas.iter().any(|x| x.port == a.port && x.state == "online")
    })
    .await;
    add_set(&m, "late", 1..500).await;
    eventually(10, "a has the late writes", || async { has_set(&a, "late", 1..500).await }).await;
    // The master dies: agent first (so nothing restarts Redis), then Redis.
    m.kill_agent();
    let m_pid = m.redis_pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-9", &m_pid]).status().unwrap();
    std::process::Command::new("kill").args(["-CONT", &b_pid]).status().unwrap();
    let started = Instant::now();
    let report = tm.eject(&m.id, false).await.unwrap();
    eprintln!("eject took {:?}: {:?}", started.elapsed(), report.evidence);
    assert_eq!(report.new_master, a.id, "the most current replica must win");
    let offsets: Vec<i64> = report.evidence.iter().map(|c| c.offset).collect();
    assert!(offsets.iter().min() < offsets.iter().max(), "the lag was not real: {offsets:?}");
    assert_eq!(role(&a).await, "master");
    eventually(10, "b follows a and gets the late writes", || async { has_set(&b, "late", 1..500).await }).await;
    assert_eq!(tm.inventory.guest(&b.id).unwrap().replica_of.as_deref(), Some(a.id.as_str()));
    drop(m);
}

/// kill -9 of a master's redis-server while its agent lives: the agent does not restart it from its
/// snapshot (its replica would resync from it and drop every later write); it says so, eject promotes
/// the replica with every write, and create-replicas brings the old master back as its replica.
#[tokio::test]
async fn a_crashed_master_is_held_back_for_eject_and_loses_nothing() {
    let (mut g, mut tm, _dir) = topology(2, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1]])).await.unwrap();
    // The agent restarts and adopts its running server: that server is held too when it crashes.
    g[0].kill_agent();
    g[0].start_agent();
    let id = g[0].id.clone();
    eventually(30, "the restarted agent answers", || async { tm.live(&id).await.status.is_some() }).await;
    let (m, r) = (&g[0], &g[1]);
    // A snapshot on disk, then writes it lacks, all of them on the replica.
    // SAVE fails while a background save (the replica's sync, a save point) is still running.
    eventually(30, "a snapshot written", || async { redis::cmd("SAVE").query_async::<()>(&mut m.redis(None).await).await.is_ok() }).await;
    add_set(m, "after-save", 7000..7500).await;
    eventually(10, "the replica has the writes made after the snapshot", || async { has_set(r, "after-save", 7000..7500).await }).await;
    let pid = m.redis_pid().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    // Asked at once (before the supervisor's next look), the agent already says so.
    let live = tm.live(&m.id).await;
    assert!(live.held, "get_replication_status should say the restart is held back: {live:?}\n{}", m.log());
    // The supervisor looks every 0.5 s and restarts a crashed server 0.5 s later: 3 s is plenty.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", m.port)).is_err(), "the crashed master was restarted\n{}", m.log());
    assert!(tm.live(&m.id).await.held);
    assert!(has_set(r, "after-save", 7000..7500).await, "the replica lost the writes made after the snapshot");
    let report = tm.eject(&m.id, false).await.unwrap();
    assert_eq!(report.new_master, r.id);
    assert!(has_set(r, "after-save", 7000..7500).await);
    // Re-attach: the old master starts again, as a replica of the new one, and gets every write.
    tm.create_replicas(create(r, &[m])).await.unwrap();
    assert_eq!(role(m).await, "replica");
    assert!(linked_replica_of(m.port, r.port).await);
    assert!(has_set(m, "after-save", 7000..7500).await);
    assert!(m.log().contains("held back"), "the hold is not in the agent log");
}

/// A writer records every acknowledged write during the promote; all of them must be on the new master.
#[tokio::test]
async fn promote_loses_no_acknowledged_write() {
    let (g, mut tm, _dir) = topology(3, &[]).await;
    tm.create_replicas(create(&g[0], &[&g[1], &g[2]])).await.unwrap();
    let ports: Vec<u16> = g.iter().map(|x| x.port).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(ports.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = tm.promote(&g[1].id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, longest_pause) = writer.await.unwrap();
    let mut con = g[1].redis(None).await;
    let mut lost = 0;
    for n in &acked {
        if con.get::<_, Option<String>>(format!("w:{n}")).await.unwrap().is_none() {
            lost += 1;
        }
    }
    eprintln!("promote: {} acknowledged writes, {lost} lost, longest pause {longest_pause:?}, fence-to-writable {} ms", acked.len(), report.writes_blocked_ms);
    assert!(acked.len() > 50, "the writer made too few writes: {}", acked.len());
    assert_eq!(lost, 0, "acknowledged writes lost in the promote");
}

/// Writes w:1, w:2, ... to whichever node is master; returns the acknowledged numbers and the longest gap.
pub async fn write_loop(ports: Vec<u16>, stop: Arc<AtomicBool>) -> (Vec<u64>, Duration) {
    let mut acked = Vec::new();
    let mut n = 0u64;
    let mut last_ack = Instant::now();
    let mut longest = Duration::ZERO;
    let mut current: Option<redis::aio::MultiplexedConnection> = None;
    while !stop.load(Ordering::SeqCst) {
        if current.is_none() {
            current = find_master(&ports).await;
            if current.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        }
        n += 1;
        let con = current.as_mut().unwrap();
        let r: redis::RedisResult<()> = tokio::time::timeout(Duration::from_secs(5), con.set(format!("w:{n}"), n))
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::IoError, "timeout"))));
        match r {
            Ok(()) => {
                acked.push(n);
                longest = longest.max(last_ack.elapsed());
                last_ack = Instant::now();
            }
            Err(_) => current = None,
        }
    }
    (acked, longest)
}

async fn find_master(ports: &[u16]) -> Option<redis::aio::MultiplexedConnection> {
    for p in ports {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{p}")) else { continue };
        let Ok(Ok(mut con)) = tokio::time::timeout(Duration::from_millis(300), client.get_multiplexed_async_connection()).await else { continue };
        let Ok(Ok(text)) = tokio::time::timeout(Duration::from_millis(300), redis::cmd("INFO").arg("replication").query_async::<String>(&mut con)).await else { continue };
        if text.contains("role:master") {
            return Some(con);
        }
    }
    None
}

/// A create that fails for one guest (its agent is down) names it; re-running converges.
#[tokio::test]
async fn interrupted_create_converges_when_rerun() {
    let (mut g, mut tm, _dir) = topology(3, &[]).await;
    g[2].kill_agent();
    let opts = create(&g[0], &[&g[1], &g[2]]);
    match tm.create_replicas(opts).await {
        Err(Error::Partial(errors)) => {
            assert_eq!(errors.len(), 1);
            assert!(errors[0].to_string().contains(&g[2].id), "{}", errors[0]);
        }
        other => panic!("expected a partial failure, got {other:?}"),
    }
    assert_eq!(tm.inventory.guest(&g[1].id).unwrap().replica_of.as_deref(), Some(g[0].id.as_str()));
    g[2].start_agent();
    wait_ping(&client().await, &g[2]).await;
    let full_before = info(&mut g[0].redis(None).await, "stats").await.stat("sync_full").unwrap();
    tm.create_replicas(create(&g[0], &[&g[1], &g[2]])).await.unwrap();
    assert_eq!(tm.inventory.guest(&g[2].id).unwrap().replica_of.as_deref(), Some(g[0].id.as_str()));
    let full_after = info(&mut g[0].redis(None).await, "stats").await.stat("sync_full").unwrap();
    assert_eq!(full_after - full_before, 1, "only the missing replica may sync; the linked one must not resync");
    let _ = json!({});
}

/// The replica-source settings come from the inventory (Trove's rendered template); an empty one
/// leaves diskless sync to each agent's `[replication] diskless_sync`.
#[tokio::test]
async fn replica_source_config_comes_from_the_inventory() {
    let c = client().await;
    let diskless = |g: &Guest| {
        let port = g.port;
        async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("repl-diskless-sync").query_async(&mut con).await.unwrap();
            v[1].clone()
        }
    };
    // 1. The inventory says disk-based sync; the agent's own setting (diskless) loses.
    let g1 = vec![spawn_guest(&c, None, &[]).await, spawn_guest(&c, None, &[]).await];
    // 2. The inventory says nothing; this master's agent is set to disk-based sync.
    let g2 = vec![spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REPLICATION__DISKLESS_SYNC", "false")]).await, spawn_guest(&c, None, &[]).await];
    for g in g1.iter().chain(&g2) {
        prepare(&c, g, None, None).await;
    }
    for (guests, setting) in [(&g1, "replica_source_config = \"repl-diskless-sync no\\n\"\n"), (&g2, "replica_source_config = \"\"\n")] {
        assert_eq!(diskless(&guests[0]).await, "yes", "Redis 7's default, before the create");
        let (mut tm, _dir) = taskmanager_with(guests, setting).await;
        tm.create_replicas(create(&guests[0], &[&guests[1]])).await.unwrap();
        assert_eq!(diskless(&guests[0]).await, "no", "with inventory setting {setting:?}");
        let conf = std::fs::read_to_string(guests[0].config_file()).unwrap();
        assert!(conf.contains("\nrepl-diskless-sync no\n"), "not persisted:\n{conf}");
        assert!(linked_replica_of(guests[1].port, guests[0].port).await);
    }
}

/// A prepared guest whose Redis does not answer is never re-prepared: create-replicas fails for
/// it, naming it, and its configuration and overrides are untouched.
#[tokio::test]
async fn create_never_reprepares_a_guest_that_cannot_answer() {
    let c = client().await;
    let (g, mut tm, _dir) = topology(2, &[]).await;
    call(&c, &g[1], "update_overrides", json!({"overrides": {"maxmemory-policy": "allkeys-lru"}, "remove": false})).await;
    call(&c, &g[1], "stop_db", json!({})).await;
    let conf_before = std::fs::read_to_string(g[1].config_file()).unwrap();
    let state_before = std::fs::read_to_string(g[1].dir.path().join("redis.conf.agent.json")).unwrap();
    let prepares = g[1].log().matches("method=prepare").count();
    match tm.create_replicas(create(&g[0], &[&g[1]])).await {
        Err(Error::Partial(errors)) => {
            assert_eq!(errors.len(), 1);
            let e = errors[0].to_string();
            assert!(e.contains(&g[1].id) && e.contains("cannot tell whether the guest is prepared"), "{e}");
        }
        other => panic!("expected a refusal for the silent guest, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(g[1].config_file()).unwrap(), conf_before, "redis.conf changed");
    assert_eq!(std::fs::read_to_string(g[1].dir.path().join("redis.conf.agent.json")).unwrap(), state_before, "state changed");
    assert_eq!(g[1].log().matches("method=prepare").count(), prepares, "prepare was sent to a prepared guest");
    call(&c, &g[1], "restart", json!({})).await;
    tm.create_replicas(create(&g[0], &[&g[1]])).await.unwrap();
    let conf = std::fs::read_to_string(g[1].config_file()).unwrap();
    assert!(conf.contains("maxmemory-policy"), "the override was dropped:\n{conf}");
}
