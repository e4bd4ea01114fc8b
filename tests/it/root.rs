//! Trove's root calls and diagnostics against real agents and redis-servers: a master and its
//! replica under a root password, the replication link through it, restarts, hostile inputs.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{json, Value};
use trove_guest::datastore::redis::conf;

use crate::harness::*;

/// Spaces, quotes, a hash and non-ASCII: quoting in redis.conf is exercised.
const PW: &str = "r00t pw \"q\" 'é' #x";

/// A master and one replica created as Trove creates it (snapshot, then prepare).
async fn pair(c: &trove_guest::rpc::client::RpcClient) -> (Guest, Guest) {
    let master = spawn_guest(c, None, &[]).await;
    let replica = spawn_guest(c, None, &[]).await;
    prepare(c, &master, None, None).await;
    let mut snapshot = call(c, &master, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "instance_id": master.id, "replica_number": 1, "replica_count": 1},
        "replica_source_config": null,
    }))
    .await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(c, &replica, None, Some(snapshot)).await;
    (master, replica)
}

/// What a client without a password gets from `g`: Ok on PING, or the server's error text.
async fn ping_without_password(g: &Guest) -> Result<(), String> {
    ping_with(g, None).await
}

/// PING as a client giving `pw` (AUTH at connect): Ok, or the server's error text.
async fn ping_with(g: &Guest, pw: Option<&str>) -> Result<(), String> {
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp("127.0.0.1".into(), g.port),
        redis: redis::RedisConnectionInfo { password: pw.map(str::to_owned), ..Default::default() },
    };
    let mut con = redis::Client::open(info).unwrap().get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
    redis::cmd("PING").query_async::<String>(&mut con).await.map(|_| ()).map_err(|e| e.to_string())
}

async fn config_get(g: &Guest, pw: Option<&str>, key: &str) -> String {
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query_async(&mut g.redis(pw).await).await.unwrap();
    v.get(1).cloned().unwrap_or_default()
}

/// Waits until `replica` (reached with `pw`) is linked to `master` and has `key` = `value`.
async fn replicated(replica: &Guest, pw: Option<&str>, master: &Guest, key: &str, value: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut con = replica.redis(pw).await;
        let r = info(&mut con, "replication").await.replication().unwrap();
        let got: Option<String> = redis::cmd("GET").arg(key).query_async(&mut con).await.unwrap();
        if r.master_port == Some(master.port) && r.linked() && got.as_deref() == Some(value) {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("replica never had {key}={value} over a live link ({r:?}, got {got:?})\n{}", replica.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set(g: &Guest, pw: Option<&str>, key: &str, value: &str) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut g.redis(pw).await).await.unwrap();
}

/// The replication connection is dropped, so the link has to authenticate again.
async fn kill_replica_links(master: &Guest, pw: Option<&str>) {
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query_async(&mut master.redis(pw).await).await.unwrap();
}

fn files(g: &Guest) -> (String, String) {
    let state = g.dir.path().join("redis.conf.agent.json");
    for p in [g.config_file(), state.clone()] {
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    (std::fs::read_to_string(g.config_file()).unwrap(), std::fs::read_to_string(state).unwrap())
}

fn requirepass_in_file(g: &Guest) -> Option<String> {
    conf::lookup(&conf::parse(&files(g).0).unwrap(), "requirepass")
}

#[tokio::test]
async fn root_on_a_master_and_its_replica() {
    let c = client().await;
    let (mut master, replica) = pair(&c).await;
    assert_eq!(call(&c, &master, "is_root_enabled", json!({})).await, json!(false));
    assert_eq!(call(&c, &master, "get_root_password", json!({})).await, Value::Null);

    // On the replica first: its master does not take the password, so masterauth stays as it was.
    call(&c, &replica, "enable_root_with_password", json!({"root_password": PW})).await;
    assert_eq!(config_get(&replica, Some(PW), "masterauth").await, "");
    set(&master, None, "before", "1").await;
    kill_replica_links(&master, None).await;
    replicated(&replica, Some(PW), &master, "before", "1").await;

    // Trove's order: the master, then each replica with the same password.
    let user = call(&c, &master, "enable_root_with_password", json!({"root_password": PW})).await;
    assert_eq!(user, json!({"_name": "-", "_password": PW}));
    let refused = ping_without_password(&master).await.unwrap_err();
    assert!(refused.contains("NOAUTH"), "a client without the password: {refused}");
    assert_eq!(call(&c, &master, "is_root_enabled", json!({})).await, json!(true));
    assert_eq!(call(&c, &master, "get_root_password", json!({})).await, json!(PW));
    // The agent's own connection follows the new password.
    assert_eq!(call(&c, &master, "get_replication_status", json!({})).await["role"], "master");
    call(&c, &replica, "enable_root_with_password", json!({"root_password": PW})).await;
    assert_eq!(config_get(&replica, Some(PW), "masterauth").await, PW);
    assert!(ping_without_password(&replica).await.unwrap_err().contains("NOAUTH"));

    // The link authenticates with it: new data after a forced reconnect.
    kill_replica_links(&master, Some(PW)).await;
    set(&master, Some(PW), "after_root", "2").await;
    replicated(&replica, Some(PW), &master, "after_root", "2").await;
    assert_eq!(call(&c, &replica, "get_replication_status", json!({})).await["role"], "replica");

    // Persisted, quoted, 0600, never logged.
    for g in [&master, &replica] {
        assert_eq!(requirepass_in_file(g).as_deref(), Some(PW));
        assert!(files(g).1.contains("\"root\""));
        assert!(!g.log().contains(PW) && !g.log().contains("r00t pw"), "the password is in {}'s log", g.id);
    }
    let replica_conf = conf::parse(&files(&replica).0).unwrap();
    assert_eq!(conf::lookup(&replica_conf, "masterauth").as_deref(), Some(PW));

    // An agent restart keeps root; so does a crash of the replica's Redis (a master's restart is
    // held back by design): it comes back from redis.conf with both passwords.
    master.kill_agent();
    master.start_agent();
    wait_ping(&c, &master).await;
    assert_eq!(call(&c, &master, "is_root_enabled", json!({})).await, json!(true));
    assert_eq!(call(&c, &master, "get_root_password", json!({})).await, json!(PW));
    assert_eq!(call(&c, &master, "get_replication_status", json!({})).await["role"], "master");
    let pid = replica.redis_pid().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    eventually(20, "replica's Redis restarted by its agent", || async { replica.redis_pid().is_some_and(|p| p != pid) }).await;
    eventually(20, "replica's Redis serving again, with the password", || async {
        matches!(ping_without_password(&replica).await, Err(e) if e.contains("NOAUTH"))
    })
    .await;
    set(&master, Some(PW), "after_crash", "3").await;
    replicated(&replica, Some(PW), &master, "after_crash", "3").await;
    eventually(20, "the replica's agent reaches its restarted Redis", || async {
        try_call(&c, &replica, "get_replication_status", json!({})).await.is_ok_and(|s| s["role"] == "replica")
    })
    .await;

    // Disable: the master, then the replica; no password again, and the link follows.
    assert_eq!(call(&c, &master, "disable_root", json!({})).await, Value::Null);
    ping_without_password(&master).await.unwrap();
    call(&c, &replica, "disable_root", json!({})).await;
    ping_without_password(&replica).await.unwrap();
    assert_eq!(config_get(&replica, None, "masterauth").await, "");
    for g in [&master, &replica] {
        assert_eq!(call(&c, g, "is_root_enabled", json!({})).await, json!(false));
        assert_eq!(call(&c, g, "get_root_password", json!({})).await, Value::Null);
        assert_eq!(requirepass_in_file(g), None);
        assert!(!files(g).1.contains("\"root\""));
    }
    kill_replica_links(&master, None).await;
    set(&master, None, "after_disable", "4").await;
    replicated(&replica, None, &master, "after_disable", "4").await;
    assert!(linked_replica_of(replica.port, master.port).await);
}

#[tokio::test]
async fn generated_root_and_hostile_inputs_change_nothing() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    let f = call_err(&c, &g, "enable_root", json!({})).await;
    assert!(f.message.contains("prepared"), "{}", f.message);
    prepare(&c, &g, None, None).await;

    let user = call(&c, &g, "enable_root", json!({})).await;
    assert_eq!(user["_name"], "-");
    let pw = user["_password"].as_str().unwrap().to_owned();
    assert!(pw.len() == 36 && pw.chars().all(|ch| ch.is_ascii_alphanumeric()), "{pw}");
    assert!(ping_without_password(&g).await.unwrap_err().contains("NOAUTH"));
    let _: String = redis::cmd("PING").query_async(&mut g.redis(Some(&pw)).await).await.unwrap();

    let before = files(&g);
    let long = "s3cr3t".repeat(50);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("a number", json!(12345), "a string or null"),
        ("a list", json!(["a"]), "a string or null"),
        ("an object", json!({"p": "a"}), "a string or null"),
        ("a boolean", json!(true), "a string or null"),
        ("empty", json!(""), "non-empty"),
        ("too long", json!(long), "at most 256 bytes"),
        ("a newline", json!("line1\nrequirepass x"), "control characters"),
        ("a NUL", json!("a\u{0}b"), "control characters"),
    ];
    for (what, bad, words) in cases {
        let f = call_err(&c, &g, "enable_root_with_password", json!({"root_password": bad})).await;
        assert_eq!(f.class, "TypeError", "{what}: {f:?}");
        assert!(f.message.contains("'root_password'") && f.message.contains(words), "{what}: {}", f.message);
        assert!(!f.message.contains("s3cr3t") && !f.message.contains("line1"), "{what}: the error repeats the password: {}", f.message);
        assert_eq!(files(&g), before, "{what} changed the files");
        assert_eq!(config_get(&g, Some(&pw), "requirepass").await, pw, "{what} changed the live password");
    }
    // A configuration group cannot take the password over while root is on.
    for method in ["update_overrides", "apply_overrides"] {
        let f = call_err(&c, &g, method, json!({"overrides": {"requirepass": "other"}, "remove": false})).await;
        assert!(f.message.contains("root"), "{method}: {}", f.message);
        assert_eq!(files(&g), before, "{method} changed the files");
        assert_eq!(config_get(&g, Some(&pw), "requirepass").await, pw);
    }
    assert_eq!(call(&c, &g, "get_root_password", json!({})).await, json!(pw));

    // A new password replaces it; null generates one, as enable_root does.
    call(&c, &g, "enable_root_with_password", json!({"root_password": PW})).await;
    let old = ping_with(&g, Some(&pw)).await.unwrap_err();
    assert!(old.contains("WRONGPASS") || old.contains("AuthenticationFailed"), "the old password: {old}");
    ping_with(&g, Some(PW)).await.unwrap();
    let again = call(&c, &g, "enable_root_with_password", json!({"root_password": null})).await;
    let generated = again["_password"].as_str().unwrap();
    assert!(generated.len() == 36 && generated != pw);
    assert_eq!(config_get(&g, Some(generated), "requirepass").await, generated);
    assert!(!g.log().contains(generated) && !g.log().contains(&pw));

    // Disable twice: no password, and idempotent.
    call(&c, &g, "disable_root", json!({})).await;
    call(&c, &g, "disable_root", json!({})).await;
    ping_without_password(&g).await.unwrap();
    assert_eq!(call(&c, &g, "is_root_enabled", json!({})).await, json!(false));
}

#[tokio::test]
async fn diagnostics_and_hwinfo_as_trove_shows_them() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    let d = call(&c, &g, "get_diagnostics", json!({})).await;
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["version", "fd_size", "vm_size", "vm_peak", "vm_rss", "vm_hwm", "threads"]);
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    // The agent's own process: tokio's workers make it multi-threaded, and it is resident.
    assert!(d["threads"].as_u64().unwrap() > 1, "{d}");
    assert!(d["vm_rss"].as_u64().unwrap() > 1000 && d["vm_peak"].as_u64().unwrap() >= d["vm_size"].as_u64().unwrap(), "{d}");
    let h = call(&c, &g, "get_hwinfo", json!({})).await;
    let online = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    assert!(h["num_cpus"].as_u64().unwrap() >= online, "{h}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total: u64 = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let mem = h["mem_total"].as_u64().unwrap();
    assert!(mem > 0 && mem <= total, "{h} vs MemTotal {total}");
}

/// Replicas that join after root was enabled on the master take its password as their own
/// (`root_password` in the snapshot and replica context): Trove's prepare path and
/// `attach_replica`; then a promote, as Trove's taskmanager runs it, and a detach keep every
/// member behind the same password with its link authenticating.
#[tokio::test]
async fn replicas_created_after_root_and_a_promote_keep_auth() {
    let c = client().await;
    let master = spawn_guest(&c, None, &[]).await;
    let (r1, r2) = (spawn_guest(&c, None, &[]).await, spawn_guest(&c, None, &[]).await);
    prepare(&c, &master, None, None).await;
    prepare(&c, &r2, None, None).await;
    call(&c, &master, "enable_root_with_password", json!({"root_password": PW})).await;
    set(&master, Some(PW), "k0", "0").await;

    let mut snapshot = call(&c, &master, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "instance_id": master.id, "replica_number": 1, "replica_count": 2},
        "replica_source_config": null,
    }))
    .await;
    assert_eq!(snapshot["master"]["root_password"], json!(PW));
    snapshot["config"] = json!("slave-read-only yes\n");
    // A new instance: Trove's prepare with the snapshot.
    prepare(&c, &r1, None, Some(snapshot.clone())).await;
    // A running one: attach_replica with the master's reference.
    call(&c, &r2, "attach_replica", json!({"replica_info": {"master": snapshot["master"]}, "slave_config": null, "restart": false})).await;
    for r in [&r1, &r2] {
        replicated(r, Some(PW), &master, "k0", "0").await;
        let refused = ping_without_password(r).await.unwrap_err();
        assert!(refused.contains("NOAUTH"), "a client without the password on {}: {refused}", r.id);
        assert_eq!(call(&c, r, "is_root_enabled", json!({})).await, json!(true));
        assert_eq!(config_get(r, Some(PW), "masterauth").await, PW);
        assert_eq!(requirepass_in_file(r).as_deref(), Some(PW));
    }

    // Trove's promote of r1: detach it, make it the master, re-point the others, demote the old.
    call(&c, &r1, "detach_replica", json!({"for_failover": true})).await;
    call(&c, &r1, "enable_as_master", json!({"replica_source_config": null})).await;
    let context = call(&c, &r1, "get_replica_context", json!({})).await;
    assert_eq!(context["master"]["root_password"], json!(PW));
    for g in [&master, &r2] {
        call(&c, g, "attach_replica", json!({"replica_info": context, "slave_config": null, "restart": false})).await;
    }
    call(&c, &master, "demote_replication_master", json!({})).await;
    set(&r1, Some(PW), "k1", "1").await;
    for g in [&master, &r2] {
        kill_replica_links(&r1, Some(PW)).await;
        replicated(g, Some(PW), &r1, "k1", "1").await;
        assert_eq!(config_get(g, Some(PW), "masterauth").await, PW);
    }
    for g in [&master, &r1, &r2] {
        assert!(ping_without_password(g).await.unwrap_err().contains("NOAUTH"), "{}", g.id);
    }

    // A detached replica keeps root (its own password) and forgets its master's.
    call(&c, &r2, "detach_replica", json!({"for_failover": false})).await;
    assert!(ping_without_password(&r2).await.unwrap_err().contains("NOAUTH"));
    assert_eq!(config_get(&r2, Some(PW), "masterauth").await, "");
    assert_eq!(call(&c, &r2, "is_root_enabled", json!({})).await, json!(true));

    // Persisted 0600 (files() checks the modes), never logged.
    for g in [&master, &r1, &r2] {
        files(g);
        assert!(!g.log().contains(PW) && !g.log().contains("r00t pw"), "the password is in {}'s log", g.id);
    }
}
