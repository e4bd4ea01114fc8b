//! What differs between Redis 6.0–7.4 and Valkey: identity, options the server's own parser
//! accepts, diskless sync set explicitly, and a pair of guests on two different servers.

use redis::AsyncCommands;
use serde_json::json;

use crate::harness::*;

async fn config_get(g: &Guest, key: &str) -> String {
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query_async(&mut g.redis(None).await).await.unwrap();
    v.get(1).cloned().unwrap_or_else(|| panic!("CONFIG GET {key} returned {v:?}"))
}

/// The agent reports the server it drives, Valkey by its own version, and logs it at start-up.
#[tokio::test]
async fn agent_identifies_the_server() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    let (name, (a, b, p)) = server_version();
    let status = call(&c, &g, "get_replication_status", json!({})).await;
    assert_eq!(status["server"], json!({"name": name, "version": format!("{a}.{b}.{p}")}), "{status}");
    assert!(g.log().contains(&format!("server detected server={name} {a}.{b}.{p}")), "{}", g.log());
    let (tm, _dir) = taskmanager(std::slice::from_ref(&g)).await;
    let (rows, _) = tm.show().await;
    assert_eq!(rows[0].server.as_deref(), Some(format!("{name} {a}.{b}.{p}").as_str()), "trove-guestctl show --json");
}

/// Overrides are parsed by the server binary itself: Valkey accepts `repl-diskless-load
/// flush-before-load`, Redis refuses it; `repl-diskless-sync-max-replicas` exists from 7.0 on.
/// A refused value leaves redis.conf byte-identical.
#[tokio::test]
async fn config_is_checked_by_the_server_itself() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    let (name, version) = server_version();
    // Valkey's `primaryauth`/`primaryuser` are `masterauth`/`masteruser`: managed by the agent.
    for key in ["primaryauth", "primaryuser"] {
        let f = call_err(&c, &g, "apply_overrides", json!({"overrides": {key: "x"}})).await;
        assert!(f.message.contains("managed by the replication strategy"), "{key}: {}", f.message);
    }
    let cases = [
        ("repl-diskless-load", "flush-before-load", name == "valkey"),
        ("repl-diskless-sync-max-replicas", "2", name == "valkey" || version >= (7, 0, 0)),
        ("repl-diskless-load", "swapdb", true),
    ];
    for (key, value, accepted) in cases {
        let before = std::fs::read(g.config_file()).unwrap();
        let overrides = json!({"overrides": {key: value}});
        if accepted {
            call(&c, &g, "apply_overrides", overrides.clone()).await;
            assert_eq!(config_get(&g, key).await, value, "{key} {value}");
            call(&c, &g, "update_overrides", json!({"overrides": {key: value}, "remove": false})).await;
            let d = trove_guest::datastore::redis::conf::parse(&std::fs::read_to_string(g.config_file()).unwrap()).unwrap();
            assert_eq!(trove_guest::datastore::redis::conf::lookup(&d, key).as_deref(), Some(value));
        } else {
            for method in ["apply_overrides", "update_overrides"] {
                let mut a = overrides.clone();
                a["remove"] = json!(false);
                if method == "apply_overrides" {
                    a.as_object_mut().unwrap().remove("remove");
                }
                let f = call_err(&c, &g, method, a).await;
                assert!(f.message.contains("rejects the configuration") && f.message.contains(key), "{method} {key}: {}", f.message);
                assert!(!f.message.contains(value), "the refused value is echoed: {}", f.message);
                assert_eq!(std::fs::read(g.config_file()).unwrap(), before, "{method} {key} changed redis.conf");
            }
        }
    }
}

/// `repl-diskless-sync` defaults to no on Redis 6 and yes on 7.0+: the agent sets what the
/// replica-source configuration says, both ways, on every server. A replica source also pings its
/// replicas every second (the watcher's silent-link rule relies on it), at once and in the file.
#[tokio::test]
async fn diskless_sync_is_set_explicitly() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    assert_eq!(config_get(&g, "repl-ping-replica-period").await, "10", "Redis's default before the guest is a source");
    for want in ["no", "yes", "no"] {
        let config = format!("repl-diskless-sync {want}\nrepl-diskless-sync-delay 3\n");
        call(&c, &g, "get_replication_snapshot", json!({"snapshot_info": {}, "replica_source_config": config})).await;
        assert_eq!(config_get(&g, "repl-diskless-sync").await, want);
        assert_eq!(config_get(&g, "repl-diskless-sync-delay").await, "3");
        assert_eq!(config_get(&g, "repl-ping-replica-period").await, "1");
    }
    let file = std::fs::read_to_string(g.config_file()).unwrap();
    assert!(file.lines().any(|l| l.trim() == "repl-ping-replica-period 1"), "not in redis.conf:\n{file}");
}

/// A master on `TROVE_TEST_REDIS_MASTER_SERVER` (default: the server under test) with a replica on
/// the server under test: create with data, then promote the replica in Trove's order with no lost
/// write, the old master following by partial resync.
#[tokio::test]
async fn pair_across_servers_creates_and_promotes() {
    let c = client().await;
    let master_bin = std::env::var("TROVE_TEST_REDIS_MASTER_SERVER").ok().filter(|s| !s.is_empty()).unwrap_or_else(server_binary);
    let old = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REDIS__BINARY", master_bin.as_str())]).await;
    let new = spawn_guest(&c, None, &[]).await;
    prepare(&c, &old, None, None).await;
    let mut m = old.redis(None).await;
    for i in 0..200 {
        let _: () = m.set(format!("k{i}"), i).await.unwrap();
    }
    let mut snapshot = call(&c, &old, "get_replication_snapshot", json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null})).await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(&c, &new, None, Some(snapshot)).await;
    let n: i64 = new.redis(None).await.get("k199").await.unwrap();
    assert_eq!(n, 199);

    promote_in_trove_order(&c, &old, &new).await;
    let n: i64 = old.redis(None).await.get("k199").await.unwrap();
    assert_eq!(n, 199);
}

/// Promotes `new` (a replica of `old`) in Trove's order; `old` must follow by partial resync.
async fn promote_in_trove_order(c: &trove_guest::rpc::client::RpcClient, old: &Guest, new: &Guest) {
    call(c, old, "make_read_only", json!({"read_only": true})).await;
    let latest = call(c, old, "get_latest_txn_id", json!({})).await;
    call(c, new, "wait_for_txn", json!({"txn": latest})).await;
    call(c, new, "detach_replica", json!({"for_failover": true})).await;
    call(c, new, "enable_as_master", json!({"replica_source_config": null})).await;
    call(c, new, "make_read_only", json!({"read_only": false})).await;
    let ctx = call(c, new, "get_replica_context", json!({})).await;
    call(c, old, "attach_replica", json!({"replica_info": ctx, "slave_config": "slave-read-only yes", "restart": false})).await;
    call(c, old, "demote_replication_master", json!({})).await;

    let _: () = new.redis(None).await.set("after", "1").await.unwrap();
    eventually(10, "the old master follows the new one", || async { old.redis(None).await.get::<_, Option<String>>("after").await.unwrap().is_some() }).await;
    let s = call(c, new, "get_replication_status", json!({})).await;
    assert!(s["sync_partial_ok"].as_i64().unwrap() >= 1, "the old master did not continue partially: {s}");
    assert_eq!(s["sync_full"].as_i64().unwrap(), 0, "the new master served a full resync: {s}");
}

const DUAL_CHANNEL: (&str, &str) = ("TROVE_GUESTAGENT__REPLICATION__DUAL_CHANNEL_REPLICATION", "true");

/// `[replication] dual_channel_replication` on Valkey 8.0+: create with 10 MB of data (the master
/// really syncs over the RDB channel, and the replica has every key when the create returns, so
/// the doubled listing and the negative sync remainder did not pass for "caught up"), the setting
/// rendered and set on both nodes, then a promote in Trove's order. On any other server the agent
/// refuses to start, naming the setting.
#[tokio::test]
async fn dual_channel_replication_setting() {
    let (name, version) = server_version();
    if name != "valkey" || version < (8, 0, 0) {
        return dual_channel_is_refused_at_start_up().await;
    }
    let c = client().await;
    let old = spawn_guest(&c, None, &[DUAL_CHANNEL]).await;
    let new = spawn_guest(&c, None, &[DUAL_CHANNEL]).await;
    prepare(&c, &old, None, None).await;
    let mut m = old.redis(None).await;
    let value = "v".repeat(5000);
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for i in chunk * 100..(chunk + 1) * 100 {
            pipe.set(format!("k{i}"), &value).ignore();
        }
        let _: () = pipe.query_async(&mut m).await.unwrap();
    }
    let mut snapshot = call(&c, &old, "get_replication_snapshot", json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null})).await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(&c, &new, None, Some(snapshot)).await;
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut new.redis(None).await).await.unwrap();
    assert_eq!(keys, 2000, "the create returned before the replica had the data");
    let master_log = std::fs::read_to_string(old.dir.path().join("data/redis-server.log")).unwrap_or_default();
    assert!(master_log.contains("Full sync will continue with dedicated RDB channel"), "no dual-channel sync in the master's log:\n{master_log}");
    let s = call(&c, &old, "get_replication_status", json!({})).await;
    assert_eq!(s["replicas"].as_array().map(Vec::len), Some(1), "{s}");
    for g in [&old, &new] {
        assert_eq!(config_get(g, "dual-channel-replication-enabled").await, "yes");
        let d = trove_guest::datastore::redis::conf::parse(&std::fs::read_to_string(g.config_file()).unwrap()).unwrap();
        assert_eq!(trove_guest::datastore::redis::conf::lookup(&d, "dual-channel-replication-enabled").as_deref(), Some("yes"));
    }
    promote_in_trove_order(&c, &old, &new).await;
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut old.redis(None).await).await.unwrap();
    assert_eq!(keys, 2001);
}

/// A server without dual-channel replication: the agent exits at start-up and says why.
async fn dual_channel_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trove-guestagent"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TROVE_GUESTAGENT__RPC__TRANSPORT_URL", amqp_url())
        .env("TROVE_GUESTAGENT__GUEST__ID", unique("g"))
        .env("TROVE_GUESTAGENT__REDIS__SERVICE", "supervised")
        .env("TROVE_GUESTAGENT__REDIS__BINARY", server_binary())
        .env("TROVE_GUESTAGENT__REDIS__CONFIG_FILE", dir.path().join("redis.conf"))
        .env("TROVE_GUESTAGENT__REDIS__DATA_DIR", dir.path().join("data"))
        .env("TROVE_GUESTAGENT__REDIS__PORT", free_port().to_string())
        .env(DUAL_CHANNEL.0, DUAL_CHANNEL.1)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the agent started: {text}");
    assert!(text.contains("replication.dual_channel_replication is on") && text.contains("has no dual-channel replication"), "{text}");
    assert!(!dir.path().join("redis.conf").exists(), "a redis.conf was written before the refusal");
}
