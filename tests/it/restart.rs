//! After a redis-server restart, the very next call of every replication method works.

use serde_json::{json, Value};

use crate::harness::*;

const PW: &str = "restart-secret";

/// kill -9 the guest's redis-server and wait until the agent has restarted it and it answers
/// (linked to `master_port` again when it is a replica).
async fn crash_redis(g: &Guest, master_port: Option<u16>) {
    let pid = g.redis_pid().expect("redis pid");
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    eventually(30, "redis-server restarted by the agent", || async {
        if !matches!(g.redis_pid(), Some(p) if p != pid) {
            return false;
        }
        match master_port {
            Some(m) => linked_replica_of(g.port, m).await,
            None => {
                // Up when it answers PING, with or without a password.
                let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", g.port)) else { return false };
                let Ok(mut con) = client.get_multiplexed_async_connection().await else { return false };
                match redis::cmd("PING").query_async::<String>(&mut con).await {
                    Ok(_) => true,
                    Err(e) => e.to_string().contains("NOAUTH"),
                }
            }
        }
    })
    .await;
}

/// Restarts `g`'s Redis, then makes exactly one call, which must succeed.
async fn after_restart(c: &trove_guest::rpc::client::RpcClient, g: &Guest, master_port: Option<u16>, method: &str, a: Value) -> Value {
    crash_redis(g, master_port).await;
    match try_call(c, g, method, a).await {
        Ok(v) => v,
        Err(e) => panic!("first {method} after a redis restart failed: {e}\n{}", g.log()),
    }
}

#[tokio::test]
async fn first_call_after_a_redis_restart_works() {
    let c = client().await;
    // The master's crashes are restarted at once here (no hold for a failover): this test is
    // about the calls that follow any restart.
    let master = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REDIS__HOLD_SOURCE_RESTART_S", "0")]).await;
    let replica = spawn_guest(&c, None, &[]).await;
    prepare(&c, &master, Some(PW), None).await;
    let snapshot = call(&c, &master, "get_replication_snapshot", json!({"snapshot_info": {"id": null, "replica_count": 1}, "replica_source_config": null})).await;
    let mut snap = snapshot.clone();
    snap["config"] = json!("slave-read-only yes\n");
    prepare(&c, &replica, None, Some(snap)).await;
    let m = Some(master.port);

    let status = after_restart(&c, &replica, m, "get_replication_status", json!({})).await;
    assert_eq!(status["role"], "replica");
    after_restart(&c, &replica, m, "get_last_txn", json!({})).await;
    let latest = after_restart(&c, &master, None, "get_latest_txn_id", json!({})).await;
    after_restart(&c, &replica, m, "wait_for_txn", json!({"txn": latest})).await;
    after_restart(&c, &master, None, "get_replica_context", json!({})).await;
    after_restart(&c, &master, None, "get_replication_snapshot", json!({"snapshot_info": {"id": null, "replica_count": 1}, "replica_source_config": null})).await;
    after_restart(&c, &replica, m, "attach_replica", json!({"replica_info": {"master": snapshot["master"]}, "slave_config": "slave-read-only yes", "restart": false})).await;
    after_restart(&c, &master, None, "make_read_only", json!({"read_only": true})).await;
    after_restart(&c, &master, None, "make_read_only", json!({"read_only": false})).await;
    after_restart(&c, &master, None, "cleanup_source_on_replica_detach", json!({"replica_info": {"id": replica.id}})).await;
    after_restart(&c, &replica, m, "detach_replica", json!({"for_failover": false})).await;
    after_restart(&c, &replica, None, "enable_as_master", json!({"replica_source_config": null})).await;
    after_restart(&c, &master, None, "demote_replication_master", json!({})).await;
    let status = call(&c, &replica, "get_replication_status", json!({})).await;
    assert_eq!(status["role"], "master");
    assert!(!replica.log().contains(PW) && !master.log().contains(PW), "password in a log");
}

/// A redis-server from another config and dir on the guest's port is not adopted after an agent
/// restart: the agent refuses to drive it, says why, and leaves it running.
#[tokio::test]
async fn a_stray_server_on_the_port_is_not_adopted() {
    let c = client().await;
    let mut g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    g.kill_agent();
    let pid = g.redis_pid().unwrap();
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    eventually(10, "the guest's redis-server gone", || async { !port_answers(g.port).await }).await;
    let other = tempfile::tempdir().unwrap();
    let mut stray = KillOnDrop(std::process::Command::new("redis-server")
        .args(["--port", &g.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir"])
        .arg(other.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap());
    eventually(10, "the stray redis-server answers", || async { port_answers(g.port).await }).await;

    g.start_agent();
    wait_ping(&c, &g).await;
    let f = call_err(&c, &g, "get_replication_status", json!({})).await;
    assert!(f.message.contains("did not start") && f.message.contains(&other.path().display().to_string()), "{}", f.message);
    let f = call_err(&c, &g, "restart", json!({})).await;
    assert!(f.message.contains("did not start"), "{}", f.message);
    assert!(matches!(stray.0.try_wait(), Ok(None)), "the agent stopped a server it does not own");
    assert!(g.log().contains("not starting redis"), "{}", g.log());

    // Once it is gone, restart starts the guest's own server again.
    drop(stray);
    call(&c, &g, "restart", json!({})).await;
    let status = call(&c, &g, "get_replication_status", json!({})).await;
    assert_eq!(status["role"], "master");
}

async fn port_answers(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else { return false };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else { return false };
    redis::cmd("PING").query_async::<String>(&mut con).await.is_ok()
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `stop_db(do_not_start_on_reboot=True)`: Redis stays down when the agent starts again (a reboot);
/// `restart` starts it and undoes that, so the next boot starts it again.
#[tokio::test]
async fn stop_db_without_start_on_reboot_keeps_redis_down_at_boot() {
    let c = client().await;
    let mut g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    call(&c, &g, "stop_db", json!({"do_not_start_on_reboot": true})).await;
    assert!(!port_answers(g.port).await, "stop_db left redis running");
    g.kill_agent();
    g.start_agent();
    wait_ping(&c, &g).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!port_answers(g.port).await, "redis started at boot after stop_db(do_not_start_on_reboot)");
    assert!(g.log().contains("not starting it"), "{}", g.log());
    call(&c, &g, "restart", json!({})).await;
    assert!(port_answers(g.port).await);
    // A plain stop_db, then a boot: Redis starts again.
    call(&c, &g, "stop_db", json!({"do_not_start_on_reboot": false})).await;
    g.kill_agent();
    g.start_agent();
    wait_ping(&c, &g).await;
    eventually(20, "redis started at boot", || async { port_answers(g.port).await }).await;
}

/// Redis refuses a SIGTERM while it writes its first AOF ("Writing initial AOF, can't exit") and
/// runs on; a restart issued then waits for the AOF instead of timing out, and loses nothing.
#[tokio::test]
async fn a_restart_during_the_first_aof_rewrite_waits_for_it() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    let mut r = g.redis(None).await;
    for i in 0..4 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg("kept").query_async(&mut r).await.unwrap();
    }
    // 0.4 s per key: the AOF rewrite that CONFIG SET appendonly yes starts takes 1.6 s.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("rdb-key-save-delay").arg("400000").query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("appendonly").arg("yes").query_async(&mut r).await.unwrap();
    let info: String = redis::cmd("INFO").arg("persistence").query_async(&mut r).await.unwrap();
    assert!(info.contains("aof_rewrite_in_progress:1"), "no AOF rewrite in progress: {info}");
    let pid = g.redis_pid().unwrap();
    call(&c, &g, "restart", json!({})).await;
    assert_ne!(g.redis_pid(), Some(pid), "restart did not restart redis");
    let mut r = g.redis(None).await;
    for i in 0..4 {
        let v: Option<String> = redis::cmd("GET").arg(format!("k{i}")).query_async(&mut r).await.unwrap();
        assert_eq!(v.as_deref(), Some("kept"), "k{i} lost across the restart");
    }
}
