//! Booting the way Trove boots a guest: only Trove's injected guest_info.conf and trove-guestagent.conf (`--config-dir`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::json;
use trove_guest::flows::{create::CreateOptions, Inventory, Taskmanager};

use crate::harness::*;

/// guest_info.conf exactly as Trove 26's taskmanager writes it (`Instance.get_injected_files`).
fn guest_info(id: &str, key: &str) -> String {
    format!(
        "[DEFAULT]\nguest_id={id}\ndatastore_manager=redis\ndatastore_version=7.0\ntenant_id=4c4fe1ac0e6c4d2a8c1a6bd5e0e3c0a1\ndatastore_registry_ext=redis:trove.guestagent.datastore.redis.manager.Manager\nreplication_strategy=trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication\nssl_mode=None\nnetwork_isolation=False\ninstance_rpc_encr_key={key}\n"
    )
}

/// An operator's trove-guestagent.conf, injected next to it from the taskmanager's `guest_config`.
fn guestagent_conf(log_dir: &Path) -> String {
    format!(
        "[DEFAULT]\nlog_dir = {}\nlog_file = agent.log\nignore_users = os_admin\ncontrol_exchange = {EXCHANGE}\ntransport_url = {}\ncommand_process_timeout = 60\nuse_syslog = False\ndebug = True\nreport_interval = 2\n\n[oslo_messaging_rabbit]\nheartbeat_timeout_threshold = 30\nheartbeat_rate = 2\nrabbit_quorum_queue = false\n\n[service_credentials]\nauth_url = http://keystone:5000/v3\nregion_name = RegionOne\nproject_name = service\npassword = not-used-by-the-agent\nproject_domain_name = Default\nuser_domain_name = Default\nusername = trove\n\n[redis]\n# Trove's datastore section: the agent reads its replication and volume options.\nmount_point = /var/lib/redis\n",
        log_dir.display(),
        amqp_url()
    )
}

/// A guest whose agent knows nothing but Trove's two files (and where its Redis lives).
async fn trove_booted(c: &trove_guest::rpc::client::RpcClient) -> Guest {
    let id = uuid_like();
    let key = unique("k").replace('-', "").repeat(3)[..32].to_owned();
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("conf.d");
    std::fs::create_dir(&conf_dir).unwrap();
    std::fs::write(conf_dir.join("guest_info.conf"), guest_info(&id, &key)).unwrap();
    std::fs::write(conf_dir.join("trove-guestagent.conf"), guestagent_conf(dir.path())).unwrap();
    spawn_guest_from_conf_dir(c, &id, &key, dir, conf_dir).await
}

/// A Trove-style instance id (a UUID), unique per run.
fn uuid_like() -> String {
    let hex = trove_guest::rpc::envelope::new_id().replace('-', "");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[tokio::test]
async fn agent_booted_from_trove_files_prepares_and_replicates() {
    let c = client().await;
    let master = trove_booted(&c).await;
    let replica = trove_booted(&c).await;
    // Secure RPC is on (the key came from guest_info.conf): a plaintext call is refused.
    let plain = c.call(&master.topic(), "get_replication_status", Default::default(), "1.0", std::time::Duration::from_secs(10), None).await;
    assert!(plain.is_err(), "a plaintext call reached a guest with an instance key: {plain:?}");
    for g in [&master, &replica] {
        prepare(&c, g, None, None).await;
        let log = g.log();
        assert!(log.contains("Trove options not used by this agent"), "no debug line on ignored options:\n{log}");
        assert!(log.contains("[DEFAULT] datastore_version") && log.contains("[service_credentials] password"), "{log}");
        assert!(!log.contains("not-used-by-the-agent") && !log.contains(g.key.as_deref().unwrap()), "a secret reached the log");
        // The cast's request id, from its encrypted context, is in the log (its "request done"
        // line follows the handler's return, which can trail Redis answering).
        let done = |l: &str| l.contains("method=prepare") && l.contains("request_id=\"req-") && l.contains("kind=\"cast\"");
        eventually(10, "the prepare cast's log line with its request id", || async { g.log().lines().any(done) }).await;
    }
    let mut con = master.redis(None).await;
    let _: () = con.set("boot:k", "v1").await.unwrap();

    let inv_dir = tempfile::tempdir().unwrap();
    let inv = inv_dir.path().join("inventory.toml");
    let mut text = format!("transport_url = \"{}\"\ncontrol_exchange = \"{EXCHANGE}\"\n", amqp_url());
    for g in [&master, &replica] {
        text.push_str(&format!("\n[[guest]]\nid = \"{}\"\nkey = \"{}\"\n", g.id, g.key.as_deref().unwrap()));
    }
    std::fs::write(&inv, text).unwrap();
    let mut tm = Taskmanager::connect(Inventory::load(&inv).unwrap()).await.unwrap();
    let report = tm
        .create_replicas(CreateOptions {
            master: master.id.clone(),
            replicas: vec![replica.id.clone()],
            count: None,
            enable_persistence: false,
            config_contents: None,
        })
        .await
        .unwrap();
    assert_eq!(report.replicas.len(), 1);
    eventually(30, "replica linked to the master", || linked_replica_of(replica.port, master.port)).await;
    eventually(10, "data on the replica", || async {
        replica.redis(None).await.get::<_, Option<String>>("boot:k").await.unwrap().as_deref() == Some("v1")
    })
    .await;
    tm.close().await;
}

#[test]
fn trove_value_the_agent_cannot_honour_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("guest_info.conf"), guest_info("0c3f2a8e-0000-4b4e-9a43-3f5f0b7f0a11", "0123456789abcdef0123456789abcdef")).unwrap();
    std::fs::write(dir.path().join("trove-guestagent.conf"), "[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:1/\n[oslo_messaging_rabbit]\nssl = True\nssl_cert_file = /etc/trove/client.pem\n").unwrap();
    for args in [vec!["--config-dir".to_owned(), dir.path().display().to_string()], vec![format!("--config-file={}", dir.path().join("trove-guestagent.conf").display())]] {
        let out = Command::new(env!("CARGO_BIN_EXE_trove-guestagent")).env_clear().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("[oslo_messaging_rabbit] ssl_cert_file") && err.contains("trove-guestagent.conf"), "{err}");
    }
    // A missing --config-dir is a configuration error too.
    let out = Command::new(env!("CARGO_BIN_EXE_trove-guestagent")).env_clear().arg("--config-dir=/nonexistent/conf.d").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

async fn linked_or_listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// Trove 26's stock Redis configuration as Trove renders it, its run directory moved to `run_dir`.
fn trove_template(run_dir: &Path) -> String {
    include_str!("../data/trove/redis-config.rendered").replace("/var/run/redis", &run_dir.display().to_string())
}

fn prepare_args(config: &str) -> serde_json::Value {
    json!({
        "packages": null, "databases": [], "memory_mb": 512, "users": [], "device_path": null,
        "mount_point": "/var/lib/redis", "backup_info": null, "config_contents": config,
        "root_password": null, "overrides": {}, "cluster_config": null, "snapshot": null,
    })
}

#[tokio::test]
async fn trove_stock_template_starts_redis_with_its_run_dir() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    let run = g.dir.path().join("run/redis");
    assert!(!run.exists());
    call(&c, &g, "prepare", prepare_args(&trove_template(&run))).await;
    // The socket and pidfile Trove's template names are there, and Redis answers on the socket.
    let sock = run.join("redis.sock");
    assert!(sock.exists(), "no unix socket; agent log:\n{}", g.log());
    let pid: i32 = std::fs::read_to_string(run.join("redis-server.pid")).unwrap().trim().parse().unwrap();
    let mut con = redis::Client::open(format!("unix://{}", sock.display())).unwrap().get_multiplexed_async_connection().await.unwrap();
    let info = info(&mut con, "server").await;
    assert_eq!(info.get("process_id"), Some(pid.to_string().as_str()));
    assert!(g.log().contains("created redis runtime directories"), "{}", g.log());
}

#[tokio::test]
async fn redis_that_cannot_start_fails_prepare_at_once_saying_why() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    let run = g.dir.path().join("run/redis");
    // Redis parses this (the agent's check passes) but exits at start: the module is not there.
    let config = format!("{}requirepass \"pw-SECRET-1\"\nloadmodule {}\n", trove_template(&run), g.dir.path().join("no-such-module.so").display());
    let started = Instant::now();
    let failure = call_err(&c, &g, "prepare", prepare_args(&config)).await;
    let took = started.elapsed();
    let message = format!("{failure:?}");
    assert!(took < Duration::from_secs(20), "prepare failed only after {took:?} (start_timeout is 60 s): {message}");
    assert!(message.contains("exited while starting"), "{message}");
    assert!(message.contains("no-such-module.so"), "the reason from Redis's log is missing: {message}");
    assert!(!message.contains("pw-SECRET-1") && !g.log().contains("pw-SECRET-1"), "a password leaked: {message}");
    eprintln!("prepare failed after {took:?}: {message}");
    // The agent does not keep restarting a server that cannot start (its restart backoff starts at 0.5 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(g.log().matches("started redis-server").count(), 1, "{}", g.log());
    assert!(!linked_or_listening(g.port).await, "a redis-server is listening after the failed prepare");
}

/// Heartbeats cast to `topic` on the control exchange: (status, sent) in arrival order.
pub(crate) async fn capture_heartbeats(topic: &str) -> (lapin::Connection, std::sync::Arc<std::sync::Mutex<Vec<(String, f64)>>>) {
    capture_casts(topic, |req| {
        assert_eq!(req.method, "heartbeat");
        let status = req.args["payload"]["service_status"].as_str().unwrap().to_owned();
        (status, req.args["sent"].as_f64().unwrap())
    })
    .await
}

#[tokio::test]
async fn heartbeats_of_a_fast_prepare_are_spaced_and_in_order() {
    let c = client().await;
    let topic = unique("conductor");
    let (_conn, seen) = capture_heartbeats(&topic).await;
    let g = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic), ("TROVE_GUESTAGENT__CONDUCTOR__REPORT_INTERVAL", "60")]).await;
    // Trove's prepare is a cast: new -> building -> healthy within a fraction of a second.
    prepare(&c, &g, None, None).await;
    eventually(20, "a healthy heartbeat", || async { seen.lock().unwrap().last().is_some_and(|(s, _)| s == "healthy") }).await;
    let beats = seen.lock().unwrap().clone();
    eprintln!("heartbeats: {beats:?}");
    assert_eq!(beats.first().map(|b| b.0.as_str()), Some("new"), "{beats:?}");
    // Never backwards: each status is at or after the previous one in new -> building -> healthy.
    let rank = |s: &str| ["new", "building", "healthy"].iter().position(|x| *x == s).unwrap_or_else(|| panic!("unexpected status {s}"));
    for pair in beats.windows(2) {
        assert!(rank(&pair[1].0) >= rank(&pair[0].0), "out of order: {beats:?}");
        // Spaced by [conductor] heartbeat_spacing_ms (1000); `sent` is the agent's wall clock.
        assert!(pair[1].1 - pair[0].1 >= 0.95, "two heartbeats {:.3}s apart: {beats:?}", pair[1].1 - pair[0].1);
    }
}

#[tokio::test]
async fn guestctl_prepare_sends_troves_payload_and_refuses_a_prepared_guest() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.toml");
    std::fs::write(&inv, format!("transport_url = \"{}\"\ncontrol_exchange = \"{EXCHANGE}\"\n\n[[guest]]\nid = \"{}\"\n", amqp_url(), g.id)).unwrap();
    let conf = dir.path().join("redis.conf");
    std::fs::write(&conf, g.config_contents(None)).unwrap();
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trove-guestctl")).arg("--inventory").arg(&inv).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let conf_arg = conf.display().to_string();
    // A new guest says what it waits for.
    let (code, out) = ctl(&["call", &g.id, "get_replication_status"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not been prepared yet"), "{out}");
    let (code, out) = ctl(&["prepare", "--config", &conf_arg, "--memory-mb", "1024", &g.id]);
    assert_eq!(code, Some(0), "{out}\n{}", g.log());
    assert!(out.contains("prepared, Redis serves as master"), "{out}");
    assert!(g.log().contains("prepare finished"), "{}", g.log());
    let mut con = g.redis(None).await;
    let _: () = con.set("k", "v").await.unwrap();
    // A second prepare would drop replication settings: refused, nothing changed (exit 3).
    let (code, out) = ctl(&["prepare", &g.id]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("already prepared"), "{out}");
    assert_eq!(con.get::<_, Option<String>>("k").await.unwrap().as_deref(), Some("v"));
    // A guest not in the inventory is refused too.
    assert_eq!(ctl(&["prepare", "nosuch"]).0, Some(3));
}
