//! `trove-guestctl watch` through the `redis` crate's own Sentinel client (a client no one here wrote): discovery, auth, and a whole-host death of the master.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncCommands, AsyncConnectionConfig, ConnectionAddr, RedisResult, Role};
use trove_guest::flows::Inventory;

use crate::flows::create;
use crate::harness::*;

/// Redis's `requirepass` on every guest.
const REDIS_PW: &str = "rs-redis-secret";
/// The watchers' discovery password (inventory `discovery_password`).
const DISCOVERY_PW: &str = "rs-discovery-secret";
const DOWN_AFTER_MS: u64 = 1000;
/// Keys written and WAITed for before the kill.
const BEFORE: u64 = 500;
/// Writes the new master must acknowledge before the writer stops.
const AFTER: usize = 100;
/// The loss bound: of the old master's writes, only those it acknowledged from `TAIL` before the
/// kill on (its unreplicated tail) may be missing on the new master.
const TAIL: Duration = Duration::from_millis(500);
/// The old master acknowledges nothing later than this after the kill was sent (it is dead).
const DEAD_AFTER: Duration = Duration::from_secs(1);
/// Writes the old master must acknowledge before `TAIL` (the check covers them).
const MIN_EARLY: usize = 100;

/// A Sentinel client of the crate for `kind`, pointed at the watchers; `discovery_pw` is what it gives them.
fn sentinel_client(name: &str, watchers: &[u16], kind: SentinelServerType, discovery_pw: Option<&str>) -> SentinelClient {
    let addrs = watchers.iter().map(|p| ConnectionAddr::Tcp("127.0.0.1".into(), *p));
    let mut b = SentinelClientBuilder::new(addrs, name.into(), kind).unwrap().set_client_to_redis_password(REDIS_PW.into());
    if let Some(pw) = discovery_pw {
        b = b.set_client_to_sentinel_password(pw.into());
    }
    b.build().unwrap()
}

/// Asks the watchers (through the crate) for a node and connects to it; returns its port too.
async fn connect(sc: &mut SentinelClient) -> RedisResult<(u16, MultiplexedConnection)> {
    let timeout = || redis::RedisError::from((redis::ErrorKind::IoError, "discovery timed out"));
    let client = tokio::time::timeout(Duration::from_secs(3), sc.async_get_client()).await.map_err(|_| timeout())??;
    let port = match &client.get_connection_info().addr {
        ConnectionAddr::Tcp(_, p) => *p,
        other => panic!("the Sentinel client gave a non-TCP address {other:?}"),
    };
    let config = AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(1)).set_response_timeout(Duration::from_secs(2));
    let con = client.get_multiplexed_async_connection_with_config(&config).await?;
    Ok((port, con))
}

async fn connect_eventually(sc: &mut SentinelClient, what: &str) -> (u16, MultiplexedConnection) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(sc).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("the Sentinel client never found {what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What the writer saw: acknowledged writes (key number, port, when), failed attempts, discoveries.
struct Writes {
    acked: Vec<(u64, u16, Instant)>,
    errors: usize,
    discoveries: usize,
    last_error: String,
}

/// Writes w:1, w:2, ... through the Sentinel client until `AFTER` writes were acknowledged by a node
/// other than `old_port` (or 60 s pass). On any error it drops the connection and asks discovery again.
async fn write_through_sentinel(mut sc: SentinelClient, old_port: u16, started: Arc<AtomicBool>) -> Writes {
    let mut w = Writes { acked: Vec::new(), errors: 0, discoveries: 0, last_error: String::new() };
    let mut current: Option<(u16, MultiplexedConnection)> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0u64;
    while w.acked.iter().filter(|a| a.1 != old_port).count() < AFTER && Instant::now() < deadline {
        if current.is_none() {
            match connect(&mut sc).await {
                Ok(c) => {
                    w.discoveries += 1;
                    current = Some(c);
                }
                Err(e) => {
                    w.errors += 1;
                    w.last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let (port, con) = current.as_mut().unwrap();
        n += 1;
        match con.set::<_, _, ()>(format!("w:{n}"), n).await {
            Ok(()) => {
                w.acked.push((n, *port, Instant::now()));
                started.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                w.errors += 1;
                w.last_error = e.to_string();
                current = None;
            }
        }
    }
    w
}

async fn role(con: &mut MultiplexedConnection) -> Role {
    redis::cmd("ROLE").query_async(con).await.unwrap()
}

/// Three guests with `requirepass`, a master and its two replicas, and the inventory of a watched
/// set with a name (and so a watcher lease) of its own, since other runs may share the broker.
async fn watched_set(c: &trove_guest::rpc::client::RpcClient, prefix: &str, extra: &str) -> (Vec<Guest>, String, [u16; 2], trove_guest::flows::Taskmanager, tempfile::TempDir) {
    let mut guests = Vec::new();
    for _ in 0..3 {
        guests.push(spawn_guest(c, None, &[]).await);
    }
    for g in &guests {
        prepare(c, g, Some(REDIS_PW), None).await;
    }
    let name = unique(prefix);
    let listen = [free_port(), free_port()];
    let settings = format!("name = \"{name}\"\nwatchers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n{extra}", listen[0], listen[1]);
    let (mut tm, dir) = taskmanager_with(&guests, &settings).await;
    tm.create_replicas(create(&guests[0], &[&guests[1], &guests[2]])).await.unwrap();
    (guests, name, listen, tm, dir)
}

/// One master and two replicas (every Redis with `requirepass`), two watchers with a discovery
/// password. Through the crate's Sentinel client only: the master and a replica are found, auth is
/// enforced, and after kill -9 of the master's Redis and agent the client reaches the new master,
/// which has every write WAITed for before the kill and every write it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_sentinel_client_follows_the_watchers_through_a_host_death() {
    let c = client().await;
    let (mut guests, name, listen, tm, dir) = watched_set(&c, "rsset", &format!("discovery_password = \"{DISCOVERY_PW}\"\n")).await;
    tm.close().await;
    drop(tm);
    let inventory = dir.path().join("inventory.toml");
    let (old, replica_ports) = (guests[0].port, [guests[1].port, guests[2].port]);

    // Two watchers: the first takes the lease, then the second serves discovery beside it.
    let mut watchers = vec![Watcher::start(&inventory, listen[0], dir.path().join("watch0.log"), DOWN_AFTER_MS, &[])];
    eventually(20, "the first watcher holds the lease", || async { watchers[0].log().contains("holds the lease") }).await;
    watchers.push(Watcher::start(&inventory, listen[1], dir.path().join("watch1.log"), DOWN_AFTER_MS, &[]));
    // Each watcher alone names the master (the crate reports only the last watcher's error).
    for p in listen {
        let (port, _) = connect_eventually(&mut sentinel_client(&name, &[p], SentinelServerType::Master, Some(DISCOVERY_PW)), "the master").await;
        assert_eq!(port, old, "watcher {p} named {port}, not the master {old}");
    }

    // 1. The master, found through discovery at both watchers.
    let mut master_sc = sentinel_client(&name, &listen, SentinelServerType::Master, Some(DISCOVERY_PW));
    let (port, mut master) = connect_eventually(&mut master_sc, "the master").await;
    assert_eq!(port, old, "discovery named {port}, not the master {old}");
    assert!(matches!(role(&mut master).await, Role::Primary { .. }));

    // 2. Auth: without the discovery password, or with a wrong one, the crate gets no master.
    // (The crate reports a refused AUTH as AuthenticationFailed, not the server's WRONGPASS text.)
    for pw in [None, Some("not-the-password")] {
        let mut sc = sentinel_client(&name, &listen, SentinelServerType::Master, pw);
        match connect(&mut sc).await {
            Ok((port, _)) => panic!("discovery answered a client with password {pw:?}: master {port}"),
            Err(e) => {
                eprintln!("discovery password {pw:?}: refused ({e})");
                let expected = if pw.is_none() { e.code() == Some("NOAUTH") } else { e.kind() == redis::ErrorKind::AuthenticationFailed };
                assert!(expected, "password {pw:?}: refused for another reason: {e}");
            }
        }
    }

    // 3. Writes on the master, WAITed for; read back through a replica found by discovery.
    for n in 0..BEFORE {
        let _: () = master.set(format!("pre:{n}"), n).await.unwrap();
    }
    let synced: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut master).await.unwrap();
    assert!(synced >= 1, "WAIT 1: no replica acknowledged the writes ({synced})");
    let mut replica_sc = sentinel_client(&name, &listen, SentinelServerType::Replica, Some(DISCOVERY_PW));
    let (rport, mut replica) = connect_eventually(&mut replica_sc, "a replica").await;
    assert!(replica_ports.contains(&rport), "discovery named {rport} as a replica; the replicas are {replica_ports:?}");
    assert!(matches!(role(&mut replica).await, Role::Replica { primary_port, .. } if primary_port == old));
    let last = format!("pre:{}", BEFORE - 1);
    eventually(10, "the last write on the replica", || {
        let (mut replica, last) = (replica.clone(), last.clone());
        async move { replica.get::<_, Option<u64>>(&last).await.ok().flatten() == Some(BEFORE - 1) }
    })
    .await;
    let refused = replica.set::<_, _, ()>("on-replica", 1).await;
    assert!(refused.is_err_and(|e| e.code() == Some("READONLY")), "the replica took a write");

    // 4. A writer through the Sentinel client, then a whole-host death of the master.
    let started = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_through_sentinel(sentinel_client(&name, &listen, SentinelServerType::Master, Some(DISCOVERY_PW)), old, started.clone()));
    eventually(10, "the writer's first acknowledged write", || async { started.load(Ordering::SeqCst) }).await;
    // Long enough that the old master acknowledges writes before the loss window too.
    tokio::time::sleep(TAIL + Duration::from_secs(1)).await;
    let pid = guests[0].redis_pid().expect("the master's redis-server pid");
    // The agent first (so nothing restarts Redis), then Redis: the whole host is gone.
    guests[0].kill_agent();
    let killed = Instant::now();
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    // Its pidfile now names a dead process: the guest's cleanup must not signal a reused pid.
    let _ = std::fs::remove_file(guests[0].dir.path().join("redis.pid"));
    let w = writer.await.unwrap();

    let on_new: Vec<&(u64, u16, Instant)> = w.acked.iter().filter(|a| a.1 != old).collect();
    assert!(on_new.len() >= AFTER, "the writer did not reach a new master within 60 s: {} writes there, {} errors, last: {}", on_new.len(), w.errors, w.last_error);
    let new = on_new[0].1;
    assert!(on_new.iter().all(|a| a.1 == new), "writes acknowledged by more than one new node");
    assert!(replica_ports.contains(&new), "the new master {new} is not one of the replicas {replica_ports:?}");
    let writable_after = on_new[0].2 - killed;
    let on_old: Vec<&(u64, u16, Instant)> = w.acked.iter().filter(|a| a.1 == old).collect();
    let old_after_kill = on_old.iter().filter(|a| a.2 > killed).count();

    // 5. The new master, as discovery now names it, has every WAITed write and every write it acknowledged.
    let (port, mut master) = connect_eventually(&mut master_sc, "the new master").await;
    assert_eq!(port, new, "discovery names {port}; the writer reached {new}");
    assert!(matches!(role(&mut master).await, Role::Primary { .. }));
    let mut lost_waited = 0;
    for n in 0..BEFORE {
        if master.get::<_, Option<u64>>(format!("pre:{n}")).await.unwrap() != Some(n) {
            lost_waited += 1;
        }
    }
    let mut lost_new = 0;
    for a in &on_new {
        if master.get::<_, Option<u64>>(format!("w:{}", a.0)).await.unwrap() != Some(a.0) {
            lost_new += 1;
        }
    }
    // Writes the old master acknowledged without a WAIT: asynchronous replication may lose its
    // tail, the writes it acknowledged from TAIL before the kill on; nothing earlier.
    let (mut lost_early, mut lost_tail, mut tail) = (0, 0, 0);
    for a in &on_old {
        let lost = master.get::<_, Option<u64>>(format!("w:{}", a.0)).await.unwrap() != Some(a.0);
        if a.2 + TAIL >= killed {
            tail += 1;
            lost_tail += usize::from(lost);
        } else {
            lost_early += usize::from(lost);
        }
    }
    let last_old = on_old.last().map(|a| a.2.saturating_duration_since(killed));
    eprintln!(
        "redis-rs Sentinel: writable on {new} {writable_after:?} after the kill; {} writes acknowledged by the old master ({} lost: {lost_early} of {} before the last {TAIL:?}, {lost_tail} of {tail} in it (the bound); {old_after_kill} read after kill -9 was sent, the last {last_old:?} after), {} by the new one ({lost_new} lost); {lost_waited} of {BEFORE} WAITed writes lost; {} errors, {} discoveries, last error: {}",
        on_old.len(),
        lost_early + lost_tail,
        on_old.len() - tail,
        on_new.len(),
        w.errors,
        w.discoveries,
        w.last_error
    );
    assert_eq!(lost_waited, 0, "writes WAITed for before the kill are missing on the new master");
    assert_eq!(lost_new, 0, "writes the new master acknowledged are missing");
    assert!(on_old.len() - tail >= MIN_EARLY, "only {} writes acknowledged by the old master before the last {TAIL:?}", on_old.len() - tail);
    assert_eq!(lost_early, 0, "writes the old master acknowledged more than {TAIL:?} before the kill are missing on the new master");
    assert!(last_old.is_some_and(|d| d < DEAD_AFTER), "the old master acknowledged a write {last_old:?} after the kill (or none at all)");

    // 6. The watcher ejected the old master: the inventory says so, the new master (ROLE through the
    // crate) serves the other replica, and the watchers still answer ROLE as Sentinels.
    let id_of = |port: u16| guests.iter().find(|g| g.port == port).unwrap().id.clone();
    let (old_id, new_id) = (id_of(old), id_of(new));
    let other = replica_ports.into_iter().find(|p| *p != new).unwrap();
    eventually(10, "the inventory records the eject", || async {
        let Ok(inv) = Inventory::load(&inventory) else { return false };
        let follows_new = |id: &str| inv.guest(id).and_then(|g| g.replica_of.clone()).as_deref() == Some(new_id.as_str());
        inv.guest(&new_id).is_some_and(|g| g.replica_of.is_none()) && follows_new(&old_id) && follows_new(&id_of(other))
    })
    .await;
    eventually(20, "the other replica linked to the new master", || {
        let mut master = master.clone();
        async move { matches!(role(&mut master).await, Role::Primary { replicas, .. } if replicas.iter().any(|r| r.port == other)) }
    })
    .await;
    let sentinel = master_sc.async_get_sentinel_client().await.expect("a watcher as a Sentinel");
    let mut sentinel = sentinel.get_multiplexed_async_connection().await.unwrap();
    match role(&mut sentinel).await {
        Role::Sentinel { primary_names } => assert_eq!(primary_names, vec![name.clone()]),
        other => panic!("the watcher's ROLE: {other:?}"),
    }
    // A replica found now is the other one (the old master is dead), and has the writer's last write.
    let (rport, mut replica) = connect_eventually(&mut replica_sc, "a replica of the new master").await;
    assert_eq!(rport, other, "discovery named {rport} as a replica");
    let (last_n, _, _) = *on_new[on_new.len() - 1];
    eventually(10, "the writer's last write on the replica", || {
        let mut replica = replica.clone();
        async move { replica.get::<_, Option<u64>>(format!("w:{last_n}")).await.ok().flatten() == Some(last_n) }
    })
    .await;
    assert!(watchers.iter().any(|w| w.log().contains("eject done")), "no watcher logged the eject");
    for line in watchers.iter().flat_map(|w| w.log().lines().filter(|l| l.contains("decision:") || l.contains("eject done")).map(str::to_owned).collect::<Vec<_>>()) {
        eprintln!("watcher: {line}");
    }
    assert!(replica.set::<_, _, ()>("on-replica", 1).await.is_err(), "the replica took a write");
    drop(watchers);
    drop(guests);
}

/// A promote run by hand (not by a watcher) hints the set's watchers (`rpc::hint`): both the lease
/// holder and the standby probe at once and name the new master. Their down-after is long, so
/// their own probe rounds are 250 ms apart; the check is the hint, logged by each watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_by_hand_hints_every_watcher_of_the_set() {
    let c = client().await;
    let (guests, name, listen, mut tm, dir) = watched_set(&c, "hintset", "").await;
    let inventory = dir.path().join("inventory.toml");
    let start = |i: usize| Watcher::start(&inventory, listen[i], dir.path().join(format!("watch{i}.log")), 30_000, &[]);
    let watchers = vec![start(0), start(1)];
    for (i, p) in listen.iter().enumerate() {
        let (port, _) =
            connect_eventually(&mut sentinel_client(&name, &[*p], SentinelServerType::Master, None), "the master")
                .await;
        assert_eq!(port, guests[0].port, "watcher {i} named {port}, not the master");
    }
    for w in &watchers {
        assert!(!w.log().contains("topology hint"), "a hint before any change: {}", w.log());
    }

    tm.promote(&guests[1].id).await.expect("the promote by hand");
    for (i, w) in watchers.iter().enumerate() {
        eventually(10, "the watcher took the promote's hint", || async {
            w.log().contains("topology hint: probing now")
        })
        .await;
        let (port, _) = connect_eventually(
            &mut sentinel_client(&name, &[listen[i]], SentinelServerType::Master, None),
            "the new master",
        )
        .await;
        assert_eq!(port, guests[1].port, "watcher {i} named {port} after the promote, not the new master");
    }
    tm.close().await;
}
