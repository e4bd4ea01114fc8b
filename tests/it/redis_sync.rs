//! RedisSync through the agent over RabbitMQ against real redis-server processes.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::harness::*;

const PW: &str = "s3cret pass\"word";

async fn run_id(g: &Guest, pw: Option<&str>) -> String {
    info(&mut g.redis(pw).await, "server").await.run_id().unwrap().to_owned()
}

async fn stat(g: &Guest, pw: Option<&str>, key: &str) -> i64 {
    info(&mut g.redis(pw).await, "stats").await.stat(key).unwrap_or(0)
}

/// Master with a password, one replica created through snapshot + prepare.
async fn pair(c: &trove_guest::rpc::client::RpcClient, pw: Option<&str>) -> (Guest, Guest, Value) {
    let master = spawn_guest(c, None, &[]).await;
    let replica = spawn_guest(c, None, &[]).await;
    prepare(c, &master, pw, None).await;
    let mut snapshot = call(c, &master, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "instance_id": master.id, "replica_number": 1, "replica_count": 1},
        "replica_source_config": "repl-diskless-sync yes\nrepl-diskless-sync-delay 10\n",
    }))
    .await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(c, &replica, None, Some(snapshot.clone())).await;
    (master, replica, snapshot)
}

#[tokio::test]
async fn create_replica_with_password_keeps_master_running() {
    let c = client().await;
    let master = spawn_guest(&c, None, &[]).await;
    prepare(&c, &master, Some(PW), None).await;
    let mut m = master.redis(Some(PW)).await;
    let _: () = m.set("before", "1").await.unwrap();
    let run_before = run_id(&master, Some(PW)).await;
    let snapshot = call(&c, &master, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "replica_count": 1}, "replica_source_config": null,
    }))
    .await;
    assert_eq!(snapshot["replication_strategy"], "RedisSyncReplication");
    assert_eq!(snapshot["master"]["host"], "127.0.0.1");
    assert_eq!(snapshot["master"]["port"], master.port);
    assert_eq!(snapshot["master"]["requirepass"], PW);
    assert_eq!(snapshot["dataset"]["datastore_manager"], "redis");
    assert!(snapshot["log_position"].is_null());
    assert_eq!(run_id(&master, Some(PW)).await, run_before, "snapshot restarted the master");

    let replica = spawn_guest(&c, None, &[]).await;
    let mut snap = snapshot.clone();
    snap["config"] = json!("slave-read-only yes\n");
    prepare(&c, &replica, None, Some(snap)).await;
    let mut r = replica.redis(None).await;
    let v: Option<String> = r.get("before").await.unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    let _: () = m.set("after", "2").await.unwrap();
    eventually(10, "write reaches the replica", || async {
        let mut r = replica.redis(None).await;
        r.get::<_, Option<String>>("after").await.unwrap().as_deref() == Some("2")
    })
    .await;
    let err = r.set::<_, _, ()>("x", "1").await.unwrap_err();
    assert!(err.to_string().contains("read only"), "{err}");
    // Persisted: replicaof, masterauth (quoted), read-only; file mode 0600.
    let conf = std::fs::read_to_string(replica.config_file()).unwrap();
    let d = trove_guest::datastore::redis::conf::parse(&conf).unwrap();
    use trove_guest::datastore::redis::conf::lookup;
    assert_eq!(lookup(&d, "replicaof"), Some(format!("127.0.0.1 {}", master.port)));
    assert_eq!(lookup(&d, "masterauth").as_deref(), Some(PW));
    assert_eq!(lookup(&d, "replica-read-only").as_deref(), Some("yes"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(replica.config_file()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(run_id(&master, Some(PW)).await, run_before, "attach restarted the master");
    assert!(!replica.log().contains("s3cret") && !master.log().contains("s3cret"), "password in logs");

    // Context, last txn, latest txn id.
    let ctx = call(&c, &master, "get_replica_context", json!({})).await;
    assert_eq!(ctx["master"]["port"], master.port);
    let last = call(&c, &replica, "get_last_txn", json!({})).await;
    assert_eq!(last[0], "127.0.0.1");
    assert!(last[1].as_i64().unwrap() >= 0);
    let latest = call(&c, &master, "get_latest_txn_id", json!({})).await;
    call(&c, &replica, "wait_for_txn", json!({"txn": latest})).await;
}

#[tokio::test]
async fn replica_survives_kill_9_and_idempotent_attach() {
    let c = client().await;
    let (master, replica, snapshot) = pair(&c, Some(PW)).await;
    let full_before = stat(&master, Some(PW), "sync_full").await;
    let replica_run = run_id(&replica, None).await;
    // Same attach again: no change, no resync, no restart.
    call(&c, &replica, "attach_replica", json!({"replica_info": {"master": snapshot["master"]}, "slave_config": "slave-read-only yes", "restart": false})).await;
    assert_eq!(stat(&master, Some(PW), "sync_full").await, full_before);
    assert_eq!(run_id(&replica, None).await, replica_run);
    // kill -9 the replica's Redis; the supervisor restarts it from the persisted config.
    let pid = replica.redis_pid().unwrap();
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    eventually(20, "replica back as a replica of the same master", || async {
        if replica.redis_pid() == Some(pid) {
            return false;
        }
        linked_replica_of(replica.port, master.port).await
    })
    .await;
    let err = replica.redis(None).await.set::<_, _, ()>("x", "1").await.unwrap_err();
    assert!(err.to_string().contains("read only"), "{err}");
}

#[tokio::test]
async fn replica_of_a_replica_is_refused() {
    let c = client().await;
    let (_master, replica, _) = pair(&c, None).await;
    let third = spawn_guest(&c, None, &[]).await;
    prepare(&c, &third, None, None).await;
    let conf_before = std::fs::read(third.config_file()).unwrap();
    let ctx = call(&c, &replica, "get_replica_context", json!({})).await;
    let f = call_err(&c, &third, "attach_replica", json!({"replica_info": ctx, "slave_config": ""})).await;
    assert_eq!(f.class, "GuestError");
    assert!(f.message.contains("replica of a replica"), "{}", f.message);
    assert_eq!(std::fs::read(third.config_file()).unwrap(), conf_before);
    // The replica cannot be a replica source either.
    let f = call_err(&c, &replica, "get_replication_snapshot", json!({"snapshot_info": {}, "replica_source_config": null})).await;
    assert!(f.message.contains("replica of a replica"), "{}", f.message);
}

#[tokio::test]
async fn bad_arguments_leave_redis_untouched() {
    let c = client().await;
    let (master, replica, _) = pair(&c, None).await;
    let conf_before = std::fs::read(replica.config_file()).unwrap();
    let host_cases = ["10.0.0.1\nslaveof 6.6.6.6 1", "a b", "", "#x", "\"q\""];
    for host in host_cases {
        let f = call_err(&c, &replica, "attach_replica", json!({"replica_info": {"master": {"host": host, "port": master.port}}, "slave_config": ""})).await;
        assert_eq!(f.class, "TypeError", "{host:?}: {}", f.message);
        assert!(f.message.contains("master.host"), "{}", f.message);
    }
    let bad = [
        json!({"replica_info": {"master": {"host": "127.0.0.1", "port": 0}}}),
        json!({"replica_info": {"master": {"host": "127.0.0.1", "port": 65536}}}),
        json!({"replica_info": {"master": {"host": "127.0.0.1", "port": "6379x"}}}),
        json!({"replica_info": {"master": {"host": "127.0.0.1", "port": master.port, "requirepass": 1234}}}),
        json!({"replica_info": "not an object"}),
        json!({"replica_info": {"no_master": 1}}),
        json!({}),
    ];
    for a in bad {
        let f = call_err(&c, &replica, "attach_replica", a.clone()).await;
        assert_eq!(f.class, "TypeError", "{a}: {}", f.message);
    }
    assert_eq!(std::fs::read(replica.config_file()).unwrap(), conf_before, "redis.conf changed");
    let r = info(&mut replica.redis(None).await, "replication").await.replication().unwrap();
    assert_eq!(r.master_port, Some(master.port));
}

#[tokio::test]
async fn wait_for_txn_times_out_clearly() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REPLICATION__WAIT_FOR_TXN_TIMEOUT", "1")]).await;
    prepare(&c, &g, None, None).await;
    let f = call_err(&c, &g, "wait_for_txn", json!({"txn": 1_000_000_000i64})).await;
    assert_eq!(f.class, "GuestError");
    assert!(f.message.contains("did not reach 1000000000"), "{}", f.message);
    let f = call_err(&c, &g, "wait_for_txn", json!({"txn": "12"})).await;
    assert_eq!(f.class, "TypeError");
}

#[tokio::test]
async fn detach_makes_a_writable_master_with_the_data() {
    let c = client().await;
    let (master, replica, _) = pair(&c, None).await;
    let _: () = master.redis(None).await.set("k", "v").await.unwrap();
    eventually(10, "replicated", || async { replica.redis(None).await.get::<_, Option<String>>("k").await.unwrap().is_some() }).await;
    let run = run_id(&replica, None).await;
    call(&c, &replica, "detach_replica", json!({"for_failover": false})).await;
    call(&c, &replica, "detach_replica", json!({"for_failover": false})).await;
    let mut r = replica.redis(None).await;
    let _: () = r.set("new", "1").await.unwrap();
    assert_eq!(r.get::<_, Option<String>>("k").await.unwrap().as_deref(), Some("v"));
    assert_eq!(run_id(&replica, None).await, run);
    let d = trove_guest::datastore::redis::conf::parse(&std::fs::read_to_string(replica.config_file()).unwrap()).unwrap();
    assert_eq!(trove_guest::datastore::redis::conf::lookup(&d, "replicaof"), None);
}

#[tokio::test]
async fn persistence_rule() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    let mut con = g.redis(None).await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("save").arg("").query_async(&mut con).await.unwrap();
    call(&c, &g, "get_replication_snapshot", json!({"snapshot_info": {}, "replica_source_config": null})).await;
    let save: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut con).await.unwrap();
    assert!(!save[1].is_empty(), "persistence was not turned on");

    let strict = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REPLICATION__ENABLE_PERSISTENCE", "false")]).await;
    prepare(&c, &strict, None, None).await;
    let mut con = strict.redis(None).await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("save").arg("").query_async(&mut con).await.unwrap();
    let f = call_err(&c, &strict, "get_replication_snapshot", json!({"snapshot_info": {}, "replica_source_config": null})).await;
    assert!(f.message.contains("persistence"), "{}", f.message);
}

/// Trove's newest promote order on three nodes: no full resync anywhere, no restart.
#[tokio::test]
async fn trove_promote_order_continues_partially() {
    let c = client().await;
    let (old, cand, snapshot) = pair(&c, None).await;
    let other = spawn_guest(&c, None, &[]).await;
    prepare(&c, &other, None, Some(snapshot)).await;
    let _: () = old.redis(None).await.set("a", "1").await.unwrap();
    let runs = (run_id(&old, None).await, run_id(&cand, None).await, run_id(&other, None).await);
    let cand_full = stat(&cand, None, "sync_full").await;

    call(&c, &old, "make_read_only", json!({"read_only": true})).await;
    let latest = call(&c, &old, "get_latest_txn_id", json!({})).await;
    call(&c, &cand, "wait_for_txn", json!({"txn": latest})).await;
    call(&c, &cand, "detach_replica", json!({"for_failover": true})).await;
    call(&c, &cand, "enable_as_master", json!({"replica_source_config": "repl-diskless-sync yes\nrepl-diskless-sync-delay 10\n"})).await;
    call(&c, &cand, "make_read_only", json!({"read_only": false})).await;
    let ctx = call(&c, &cand, "get_replica_context", json!({})).await;
    call(&c, &other, "detach_replica", json!({"for_failover": true})).await;
    call(&c, &other, "attach_replica", json!({"replica_info": ctx, "slave_config": "slave-read-only yes", "restart": true})).await;
    call(&c, &old, "attach_replica", json!({"replica_info": ctx, "slave_config": "slave-read-only yes", "restart": false})).await;
    call(&c, &old, "demote_replication_master", json!({})).await;

    assert_eq!(stat(&cand, None, "sync_full").await, cand_full, "a survivor did a full resync");
    assert!(stat(&cand, None, "sync_partial_ok").await >= 2);
    assert_eq!((run_id(&old, None).await, run_id(&cand, None).await, run_id(&other, None).await), runs, "a node restarted");
    let _: () = cand.redis(None).await.set("b", "2").await.unwrap();
    for g in [&old, &other] {
        eventually(10, "new write on every node", || async { g.redis(None).await.get::<_, Option<String>>("b").await.unwrap().is_some() }).await;
        assert!(g.redis(None).await.set::<_, _, ()>("z", "1").await.is_err(), "old nodes must be read-only");
    }
    let status = call(&c, &old, "get_replication_status", json!({})).await;
    assert_eq!(status["role"], "replica");
    assert_eq!(status["fenced"], false);
}

/// A replica that attaches to a fenced master (a promote under way) leaves the master's offset
/// where it was: its sync marker would put the old master ahead of its successor, and the old
/// master's replicas would then resync in full. On a paused master the marker is never applied.
#[tokio::test]
async fn an_attach_to_a_fenced_master_leaves_its_offset() {
    let c = client().await;
    let (old, _cand, snapshot) = pair(&c, None).await;
    let late = spawn_guest(&c, None, &[]).await;
    call(&c, &old, "make_read_only", json!({"read_only": true})).await;
    let before = call(&c, &old, "get_latest_txn_id", json!({})).await;
    prepare(&c, &late, None, Some(snapshot)).await;
    let after = call(&c, &old, "get_latest_txn_id", json!({})).await;
    assert_eq!(after, before, "the attach moved the fenced master's offset");
    assert_eq!(call(&c, &late, "get_replication_status", json!({})).await["role"], "replica");
}

/// A fence that nobody lifts expires by itself.
#[tokio::test]
async fn fence_expires() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REPLICATION__FENCE_TIMEOUT", "1000")]).await;
    prepare(&c, &g, None, None).await;
    call(&c, &g, "make_read_only", json!({"read_only": true})).await;
    let started = std::time::Instant::now();
    let mut con = g.redis(None).await;
    if server_version().1 >= (6, 2, 0) {
        // CLIENT PAUSE WRITE holds the write until the fence expires.
        let _: () = con.set("k", "v").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500), "the write was not held back by the fence");
    } else {
        // Redis 6.0 has no CLIENT PAUSE WRITE: min-replicas-to-write refuses the write instead.
        let refused = con.set::<_, _, ()>("k", "v").await.expect_err("a fenced Redis 6.0 took a write");
        assert!(refused.to_string().contains("NOREPLICAS"), "{refused}");
    }
    eventually(5, "fence gone", || async { call(&c, &g, "get_replication_status", json!({})).await["fenced"] == false }).await;
    let _: () = con.set("k", "v2").await.expect("the expired fence still refuses writes");
    assert!(started.elapsed() >= Duration::from_millis(900), "the fence lifted before its timeout");
}

/// A master paused by a promote's fence closes its clients the moment a replica leaves it (its
/// successor's `REPLICAOF NO ONE`), so they rediscover then; their paused writes were never applied.
#[tokio::test]
async fn a_paused_master_closes_its_clients_when_its_successor_leaves() {
    let c = client().await;
    let (master, replica, _) = pair(&c, None).await;
    eventually(15, "the replica online", || async {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut master.redis(None).await).await.unwrap();
        info.contains("state=online")
    })
    .await;
    call(&c, &master, "make_read_only", json!({"read_only": true})).await;
    let mut paused = master.redis(None).await;
    if server_version().1 < (6, 2, 0) {
        // Redis 6.0 has no CLIENT PAUSE WRITE: the fence refuses writes at once, nobody waits.
        let refused = paused.set::<_, _, ()>("paused", "1").await.expect_err("a fenced Redis 6.0 took a write");
        assert!(refused.to_string().contains("NOREPLICAS"), "{refused}");
        return;
    }
    let write = tokio::spawn(async move { paused.set::<_, _, ()>("paused", "1").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the fence did not hold the write");
    call(&c, &replica, "enable_as_master", json!({"detach": true})).await;
    // The fence lasts 60 s: a write still held after 10 s was not closed.
    let answer = tokio::time::timeout(Duration::from_secs(10), write).await.expect("the paused client was not closed when the replica left").unwrap();
    let error = answer.expect_err("the paused write was taken");
    assert!(error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error(), "not a closed connection: {error}");
    call(&c, &master, "make_read_only", json!({"read_only": false})).await;
    let applied: Option<String> = master.redis(None).await.get("paused").await.unwrap();
    assert_eq!(applied, None, "the closed client's paused write was applied");
}

/// With min_replicas_to_write, a master cut off from its replicas stops taking writes.
#[tokio::test]
async fn split_brain_fence_refuses_writes_without_replicas() {
    let c = client().await;
    let env = [("TROVE_GUESTAGENT__REPLICATION__MIN_REPLICAS_TO_WRITE", "1"), ("TROVE_GUESTAGENT__REPLICATION__MIN_REPLICAS_MAX_LAG", "1")];
    let master = spawn_guest(&c, None, &env).await;
    let replica = spawn_guest(&c, None, &env).await;
    prepare(&c, &master, None, None).await;
    let mut snapshot = call(&c, &master, "get_replication_snapshot", json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null})).await;
    // No replica yet: the master still takes writes.
    let _: () = master.redis(None).await.set("before", "1").await.unwrap();
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(&c, &replica, None, Some(snapshot)).await;
    eventually(15, "fence armed once the replica is online", || async {
        let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("min-replicas-to-write").query_async(&mut master.redis(None).await).await.unwrap();
        v[1] == "1"
    })
    .await;
    let pid = replica.redis_pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let refused = async {
        for _ in 0..100 {
            if let Err(e) = master.redis(None).await.set::<_, _, ()>("during", "1").await {
                return Some(e.to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
    .await;
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let refused = refused.expect("a master without replicas kept taking writes");
    assert!(refused.to_lowercase().contains("replicas"), "{refused}");
    // The fence is written to redis.conf, so a restarted master is fenced too.
    let conf = std::fs::read_to_string(master.config_file()).unwrap();
    assert!(conf.contains("min-replicas-to-write 1"), "{conf}");
}

/// Resizes, resets and user overrides never drop or override the replication settings; a restart keeps them.
#[tokio::test]
async fn config_changes_keep_replication() {
    let c = client().await;
    let (master, replica, _) = pair(&c, None).await;
    let new_base = replica.config_contents(None).replace("save 3600 1", "save 60 100");
    call(&c, &replica, "reset_configuration", json!({"configuration": {"config_contents": new_base}})).await;
    // Replication keys in stored overrides are refused, and nothing of the call is stored.
    let state_before = std::fs::read_to_string(replica.dir.path().join("redis.conf.agent.json")).ok();
    let f = call_err(&c, &replica, "update_overrides", json!({"overrides": {"slaveof": "6.6.6.6 1", "masterauth": "x", "maxmemory-policy": "allkeys-lru"}, "remove": false})).await;
    assert!(f.message.contains("managed by the replication strategy"), "{}", f.message);
    let state_after = std::fs::read_to_string(replica.dir.path().join("redis.conf.agent.json")).ok();
    assert_eq!(state_before, state_after, "a refused update_overrides changed the state file");
    call(&c, &replica, "update_overrides", json!({"overrides": {"maxmemory-policy": "allkeys-lru"}, "remove": false})).await;
    let f = call_err(&c, &replica, "apply_overrides", json!({"overrides": {"slaveof": "6.6.6.6 1"}})).await;
    assert!(f.message.contains("managed by the replication strategy"), "{}", f.message);
    call(&c, &replica, "apply_overrides", json!({"overrides": {"maxmemory-policy": "allkeys-lru"}})).await;
    use trove_guest::datastore::redis::conf::{lookup, parse};
    let d = parse(&std::fs::read_to_string(replica.config_file()).unwrap()).unwrap();
    assert_eq!(lookup(&d, "replicaof"), Some(format!("127.0.0.1 {}", master.port)));
    assert_eq!(lookup(&d, "maxmemory-policy").as_deref(), Some("allkeys-lru"));
    assert_eq!(lookup(&d, "save").as_deref(), Some("60 100"));
    // A resize (start_db_with_conf_changes) restarts Redis with new contents: still a replica.
    call(&c, &replica, "start_db_with_conf_changes", json!({"config_contents": new_base, "ds_version": "7.0"})).await;
    eventually(20, "replica again after the restart", || async {
        linked_replica_of(replica.port, master.port).await
    })
    .await;
}

/// Trove's images rename CONFIG; every replication method still works.
#[tokio::test]
async fn renamed_config_command() {
    let c = client().await;
    let master = spawn_guest(&c, None, &[]).await;
    let replica = spawn_guest(&c, None, &[]).await;
    for g in [&master, &replica] {
        let mut a = json!({"config_contents": format!("{}rename-command CONFIG cfg_8d1f2a\n", g.config_contents(Some(PW))), "overrides": {}, "snapshot": null});
        if g.id == replica.id {
            let mut snap = call(&c, &master, "get_replication_snapshot", json!({"snapshot_info": {}, "replica_source_config": null})).await;
            snap["config"] = json!("slave-read-only yes\n");
            a["snapshot"] = snap;
        }
        call(&c, g, "prepare", a).await;
    }
    let status = call(&c, &replica, "get_replication_status", json!({})).await;
    assert_eq!(status["role"], "replica");
    assert_eq!(status["link_up"], true);
    call(&c, &master, "make_read_only", json!({"read_only": true})).await;
    call(&c, &master, "make_read_only", json!({"read_only": false})).await;
    call(&c, &replica, "detach_replica", json!({"for_failover": false})).await;
    let err = redis::cmd("CONFIG").arg("GET").arg("save").query_async::<Vec<String>>(&mut master.redis(Some(PW)).await).await;
    assert!(err.is_err(), "CONFIG should be renamed in this test");
}

/// Replicas authenticate as an ACL replication user (masteruser) when the master's agent names one.
#[tokio::test]
async fn acl_replication_user() {
    let c = client().await;
    let env = [("TROVE_GUESTAGENT__REPLICATION__REPLICATION_USER", "repl"), ("TROVE_GUESTAGENT__REPLICATION__REPLICATION_PASSWORD", "repl pw\"1")];
    let master = spawn_guest(&c, None, &env).await;
    let replica = spawn_guest(&c, None, &[]).await;
    let conf = format!("{}user repl on \">repl pw\\\"1\" +psync +replconf +ping +info\n", master.config_contents(Some(PW)));
    call(&c, &master, "prepare", json!({"config_contents": conf, "overrides": {}, "snapshot": null})).await;
    let mut snap = call(&c, &master, "get_replication_snapshot", json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null})).await;
    assert_eq!(snap["master"]["masteruser"], "repl");
    assert_eq!(snap["master"]["requirepass"], "repl pw\"1");
    snap["config"] = json!("slave-read-only yes\n");
    prepare(&c, &replica, None, Some(snap)).await;
    let _: () = master.redis(Some(PW)).await.set("acl", "1").await.unwrap();
    eventually(10, "replicated through the ACL user", || async { replica.redis(None).await.get::<_, Option<String>>("acl").await.unwrap().is_some() }).await;
    use trove_guest::datastore::redis::conf::{lookup, parse};
    let d = parse(&std::fs::read_to_string(replica.config_file()).unwrap()).unwrap();
    assert_eq!(lookup(&d, "masteruser").as_deref(), Some("repl"));
    assert_eq!(lookup(&d, "masterauth").as_deref(), Some("repl pw\"1"));
    call(&c, &replica, "detach_replica", json!({"for_failover": false})).await;
    let d = parse(&std::fs::read_to_string(replica.config_file()).unwrap()).unwrap();
    assert_eq!(lookup(&d, "masteruser"), None);
}

/// Two replicas of one create under a diskless delay get one transfer, started once both wait
/// (the master's agent gathers them) instead of after the delay.
#[tokio::test]
async fn two_replicas_share_one_diskless_transfer_without_the_delay() {
    let c = client().await;
    // max-replicas above the create's count: Redis alone would wait the whole delay (as 6.2 always does).
    let master = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REPLICATION__DISKLESS_SYNC_MAX_REPLICAS", "8")]).await;
    let (r1, r2) = (spawn_guest(&c, None, &[]).await, spawn_guest(&c, None, &[]).await);
    prepare(&c, &master, Some(PW), None).await;
    let mut m = master.redis(Some(PW)).await;
    for chunk in 0..20 {
        let pairs: Vec<(String, String)> = (0..1000).map(|i| (format!("k{chunk}:{i}"), "v".repeat(100))).collect();
        let _: () = m.mset(&pairs).await.unwrap();
    }
    // Every server logs each fork for replication (Redis 6.0 has no total_forks).
    let server_log = master.dir.path().join("data/redis-server.log");
    let forks = || std::fs::read_to_string(&server_log).unwrap().matches("Starting BGSAVE for SYNC").count();
    let forks_before = forks();
    let started = std::time::Instant::now();
    let mut snapshot = call(&c, &master, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "replica_count": 2},
        "replica_source_config": "repl-diskless-sync yes\nrepl-diskless-sync-delay 8\n",
    }))
    .await;
    snapshot["config"] = json!("slave-read-only yes\n");
    tokio::join!(prepare(&c, &r1, None, Some(snapshot.clone())), prepare(&c, &r2, None, Some(snapshot.clone())));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "two replicas took {took:?} under an 8 s delay\n{}", master.log());
    assert_eq!(forks() - forks_before, 1, "one fork serves both replicas\n{}", std::fs::read_to_string(&server_log).unwrap());
    for r in [&r1, &r2] {
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut r.redis(None).await).await.unwrap();
        assert_eq!(n, 20_000);
    }
    // The operator's delay is back at runtime and was never changed in redis.conf.
    let delay: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("repl-diskless-sync-delay").query_async(&mut m).await.unwrap();
    assert_eq!(delay[1], "8");
    let conf = trove_guest::datastore::redis::conf::parse(&std::fs::read_to_string(master.config_file()).unwrap()).unwrap();
    assert_eq!(trove_guest::datastore::redis::conf::lookup(&conf, "repl-diskless-sync-delay").as_deref(), Some("8"));
    // Only the two replicas are reported (the pseudo-replica is gone).
    let status = call(&c, &master, "get_replication_status", json!({})).await;
    assert_eq!(info(&mut m, "replication").await.replication().unwrap().replicas.len(), 2, "{status}");
    let log = master.log();
    assert!(log.contains("started their one transfer"), "{log}");
    assert!(!log.contains("s3cret"), "password in the master's log");
}

/// A create of two where only one replica comes: the gather gives up after the delay, changes
/// nothing, and Redis syncs the one replica as configured.
#[tokio::test]
async fn a_gather_whose_replicas_do_not_all_come_changes_nothing() {
    let c = client().await;
    let master = spawn_guest(&c, None, &[]).await;
    let replica = spawn_guest(&c, None, &[]).await;
    prepare(&c, &master, None, None).await;
    let mut m = master.redis(None).await;
    let _: () = m.set("k", "v").await.unwrap();
    let mut snapshot = call(&c, &master, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "replica_count": 2},
        "replica_source_config": "repl-diskless-sync yes\nrepl-diskless-sync-delay 2\n",
    }))
    .await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(&c, &replica, None, Some(snapshot)).await;
    let v: Option<String> = replica.redis(None).await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    eventually(10, "the gather gives up", || async { master.log().contains("not every replica came within the delay") }).await;
    assert!(!master.log().contains("started their one transfer"), "{}", master.log());
    let delay: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("repl-diskless-sync-delay").query_async(&mut m).await.unwrap();
    assert_eq!(delay[1], "2");
}
