//! Secrets never leak: a full create / promote / eject through `trove_guest::flows::Taskmanager`
//! with secure RPC (an instance key per guest), a master password and a RabbitMQ password of our
//! own, agents at `trace` level. Then every agent and Redis log line, every message on the broker
//! (RabbitMQ's firehose: every request, reply and heartbeat), every process argument list, and the
//! environment of every redis-server the agents started are scanned for those secrets.
//! redis.conf and the agent state file must be mode 0600.
//!
//! The flows run on an isolated RabbitMQ node (scripts/rabbitmq.sh) so the test can own a user
//! and turn the firehose on without touching the shared broker.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use redis::AsyncCommands;
use serde_json::json;
use trove_guest::flows::{create::CreateOptions, Inventory, Taskmanager};
use trove_guest::rpc::{client::RpcClient, AmqpOptions};

use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// An isolated RabbitMQ node for one test (also used by tls.rs)
// ---------------------------------------------------------------------------------------------

pub(crate) struct RabbitNode {
    pub name: String,
    pub port: u16,
    env: Vec<(String, String)>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port p with p and p+20000 (the node's distribution port) both free, below 45536.
pub(crate) fn node_port() -> u16 {
    for _ in 0..200 {
        let p: u16 = 20000 + rand_u16() % 15000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(p) && free(p + 20000) {
            return p;
        }
    }
    panic!("no free port pair for a RabbitMQ node");
}

fn rand_u16() -> u16 {
    u16::from_str_radix(&trove_guest::rpc::envelope::new_id()[..4], 16).unwrap()
}

impl RabbitNode {
    /// Starts node `name` from a clean state with extra scripts/rabbitmq.sh environment.
    pub(crate) fn start(name: &str, env: &[(&str, String)]) -> RabbitNode {
        let node = RabbitNode { name: name.into(), port: node_port(), env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() };
        // A node left running by an interrupted run goes first; its old state with it.
        node.script("stop");
        let state_root = std::env::var("TROVE_RABBIT_STATE").unwrap_or_else(|_| "/tmp/trove-rabbit".into());
        let _ = std::fs::remove_dir_all(Path::new(&state_root).join(name).join("mnesia"));
        let out = node.script("start");
        assert!(
            out.status.success(),
            "cannot start RabbitMQ node {name} on 127.0.0.1:{} (scripts/rabbitmq.sh start): {}",
            node.port,
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }

    fn script(&self, cmd: &str) -> std::process::Output {
        Command::new("bash")
            .arg(root().join("scripts/rabbitmq.sh"))
            .args([cmd, &self.name, &self.port.to_string()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("cannot run scripts/rabbitmq.sh")
    }

    /// `rabbitmqctl -n <node> <args>` with the node's own cookie and environment.
    pub(crate) fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"eval "$(bash "$0" env "$1" "$2")" && rabbitmqctl -q -n "$1@localhost" "${@:3}""#)
            .arg(root().join("scripts/rabbitmq.sh"))
            .args([self.name.as_str(), &self.port.to_string()])
            .args(args)
            .output()
            .expect("cannot run rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl {} failed: {}{}", args[0], String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn server_log(&self) -> String {
        let state_root = std::env::var("TROVE_RABBIT_STATE").unwrap_or_else(|_| "/tmp/trove-rabbit".into());
        std::fs::read_to_string(Path::new(&state_root).join(&self.name).join("log").join(format!("{}@localhost.log", self.name))).unwrap_or_default()
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.script("stop");
    }
}

// ---------------------------------------------------------------------------------------------
// Scanning
// ---------------------------------------------------------------------------------------------

/// The forms a secret could take in text: itself, JSON-escaped, and as the decimal byte list a
/// `Debug` of a byte buffer prints (how lapin logs frames at trace level).
fn forms(secret: &str) -> Vec<String> {
    let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
    vec![secret.to_owned(), json!(secret).to_string().trim_matches('"').to_owned(), bytes.join(", ")]
}

struct Scan {
    secrets: Vec<(String, String)>,
    findings: Vec<String>,
    scanned: BTreeSet<String>,
}

impl Scan {
    fn check(&mut self, what: &str, text: &str) {
        self.scanned.insert(what.split(':').next().unwrap_or(what).to_owned());
        for (name, secret) in &self.secrets {
            for f in forms(secret) {
                if let Some(at) = text.find(&f) {
                    let line = text[..at].rsplit('\n').next().unwrap_or("");
                    let start = at.saturating_sub(line.len().min(120));
                    let end = (at + f.len() + 40).min(text.len());
                    let ctx = String::from_utf8_lossy(&text.as_bytes()[start..end]);
                    self.findings.push(format!("{name} in {what}: ...{ctx}..."));
                    break;
                }
            }
        }
    }
}

/// Every readable `/proc/<pid>/cmdline` (arguments NUL-separated), with the pid.
fn all_cmdlines() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            out.push((pid, String::from_utf8_lossy(&raw).replace('\0', " ")));
        }
    }
    out
}

fn ppid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

/// The agent and redis-server processes of a guest: (agent pid, redis pid).
fn guest_pids(g: &Guest) -> Option<(i32, i32)> {
    let redis = g.redis_pid()?;
    Some((ppid(redis)?, redis))
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_secret_leaks_through_create_promote_eject() {
    let started = Instant::now();
    let tag = &trove_guest::rpc::envelope::new_id()[..12];
    let master_pw = format!("MasterPw-{tag}");
    let rabbit_user = format!("tm-{tag}");
    let rabbit_pw = format!("RabbitPw-{tag}");
    let keys: Vec<String> = (0..3).map(|i| format!("InstKey{i}{}", &trove_guest::rpc::envelope::new_id()[..25])).collect();

    let node = RabbitNode::start("trove-secrets", &[]);
    node.ctl(&["add_user", &rabbit_user, &rabbit_pw]);
    node.ctl(&["set_permissions", "-p", "/", &rabbit_user, ".*", ".*", ".*"]);
    node.ctl(&["trace_on", "-p", "/"]);
    let url = format!("rabbit://{rabbit_user}:{rabbit_pw}@127.0.0.1:{}/", node.port);

    // The firehose: a copy of every message published or delivered on the vhost.
    let opts = AmqpOptions::new(&url, EXCHANGE, "it-secrets-firehose");
    let conn = trove_guest::rpc::connection::connect(&opts).await.unwrap_or_else(|e| panic!("isolated RabbitMQ node unreachable: {e}"));
    let ch = conn.create_channel().await.unwrap();
    let fq = ch.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default()).await.unwrap();
    ch.queue_bind(fq.name().as_str(), "amq.rabbitmq.trace", "#", QueueBindOptions::default(), FieldTable::default()).await.unwrap();
    let mut consumer = ch.basic_consume(fq.name().as_str(), "", BasicConsumeOptions { no_ack: true, ..Default::default() }, FieldTable::default()).await.unwrap();
    let captured: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = captured.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let meta = format!("{} {:?}", d.routing_key.as_str(), d.properties.headers());
            sink.lock().unwrap().push((meta, String::from_utf8_lossy(&d.data).into_owned()));
        }
    });

    let c = RpcClient::connect(&AmqpOptions::new(&url, EXCHANGE, "it-secrets")).await.unwrap();
    // redis-server overwrites /proc/<pid>/environ with its process title, so the agents run it
    // through a wrapper that records the environment it was given, then execs the real server.
    let wrap_dir = tempfile::tempdir().unwrap();
    let wrapper = wrap_dir.path().join("redis-server");
    let env_log = wrap_dir.path().join("redis-env.txt");
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"ARGS: $*\" >> '{0}'\nenv >> '{0}'\nexec redis-server \"$@\"\n", env_log.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper_s = wrapper.display().to_string();
    let env = [("TROVE_GUESTAGENT__RPC__TRANSPORT_URL", url.as_str()), ("TROVE_GUESTAGENT__LOG__LEVEL", "trace"), ("TROVE_GUESTAGENT__REDIS__BINARY", wrapper_s.as_str())];
    let mut g = Vec::new();
    for key in &keys {
        g.push(spawn_guest(&c, Some(key), &env).await);
    }
    for x in &g {
        prepare(&c, x, Some(&master_pw), None).await;
    }
    let mut con = g[0].redis(Some(&master_pw)).await;
    let _: () = con.set("before", "1").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let inv_path = dir.path().join("inventory.toml");
    let mut text = format!("transport_url = \"{url}\"\ncontrol_exchange = \"{EXCHANGE}\"\n");
    for (x, key) in g.iter().zip(&keys) {
        text.push_str(&format!("\n[[guest]]\nid = \"{}\"\nkey = \"{key}\"\n", x.id));
    }
    std::fs::write(&inv_path, text).unwrap();
    let mut tm = Taskmanager::connect(Inventory::load(&inv_path).unwrap()).await.unwrap();

    let mut secrets: Vec<(String, String)> = vec![("master password".into(), master_pw.clone()), ("RabbitMQ password".into(), rabbit_pw.clone())];
    for (i, k) in keys.iter().enumerate() {
        secrets.push((format!("instance key {i}"), k.clone()));
    }
    let mut scan = Scan { secrets, findings: Vec::new(), scanned: BTreeSet::new() };
    let mut pids_seen = BTreeSet::new();
    let mut redis_env_checked = 0;
    let mut sample = |scan: &mut Scan, g: &[&Guest], step: &str| {
        for (pid, cmdline) in all_cmdlines() {
            scan.check(&format!("cmdline: /proc/{pid}/cmdline ({step})"), &cmdline);
        }
        for x in g {
            if let Some((agent, redis)) = guest_pids(x) {
                pids_seen.insert(agent);
                pids_seen.insert(redis);
                let cmd = std::fs::read(format!("/proc/{agent}/cmdline")).unwrap_or_default();
                assert!(String::from_utf8_lossy(&cmd).contains("trove-guestagent"), "pid {agent} is not the agent of {}", x.id);
                let cmd = std::fs::read(format!("/proc/{redis}/cmdline")).unwrap_or_default();
                assert!(String::from_utf8_lossy(&cmd).contains("redis-server"), "pid {redis} is not the redis-server of {}", x.id);
                redis_env_checked += 1;
            }
        }
    };

    // Create: g0 master, g1 and g2 replicas.
    let create = tm
        .create_replicas(CreateOptions { master: g[0].id.clone(), replicas: vec![g[1].id.clone(), g[2].id.clone()], count: None, enable_persistence: false, config_contents: None })
        .await
        .unwrap_or_else(|e| panic!("create failed: {e}"));
    sample(&mut scan, &[&g[0], &g[1], &g[2]], "after create");
    // Promote g1.
    let promote = tm.promote(&g[1].id).await.unwrap_or_else(|e| panic!("promote failed: {e}"));
    sample(&mut scan, &[&g[0], &g[1], &g[2]], "after promote");
    let _: () = g[1].redis(Some(&master_pw)).await.set("after-promote", "1").await.unwrap();
    // Eject: g1 dies (agent, then Redis); the most current of g0 and g2 takes over.
    let mut dead = g.remove(1);
    let dead_pids = guest_pids(&dead);
    dead.kill_agent();
    if let Some((_, redis)) = dead_pids {
        Command::new("kill").args(["-9", &redis.to_string()]).status().unwrap();
    }
    let eject = tm.eject(&dead.id, false).await.unwrap_or_else(|e| panic!("eject failed: {e}"));
    let new_master = g.iter().find(|x| x.id == eject.new_master).expect("the new master is one of the survivors");
    let _: () = new_master.redis(Some(&master_pw)).await.set("after-eject", "1").await.unwrap();
    let other = g.iter().find(|x| x.id != eject.new_master).unwrap();
    eventually(10, "the survivor replicates from the new master", || async {
        other.redis(Some(&master_pw)).await.get::<_, Option<String>>("after-eject").await.unwrap().is_some()
    })
    .await;
    sample(&mut scan, &[&g[0], &g[1]], "after eject");
    g.push(dead);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Results the taskmanager got back, and everything on the wire.
    scan.check("reports: create/promote/eject reports", &format!("{create:?} {promote:?} {eject:?} {}", json!(eject.evidence)));
    let captured = captured.lock().unwrap().clone();
    let replies = captured.iter().filter(|(meta, body)| meta.starts_with("publish. ") && body.contains("ending")).count();
    let requests = captured.iter().filter(|(meta, _)| meta.starts_with("publish.trove ")).count();
    for (i, (meta, body)) in captured.iter().enumerate() {
        scan.check(&format!("broker: message {i} ({})", meta.split(' ').next().unwrap_or("")), &format!("{meta}\n{body}"));
    }
    // Logs: agents at trace level, and the Redis servers they ran.
    for x in &g {
        let log = x.log();
        assert!(log.lines().filter(|l| l.contains("TRACE")).count() > 100, "agent {} did not log at trace level", x.id);
        scan.check(&format!("agent-log: {}", x.log_file().display()), &log);
        let redis_log = std::fs::read_to_string(x.dir.path().join("data/redis-server.log")).unwrap_or_default();
        scan.check(&format!("redis-log: {}", x.id), &redis_log);
        for f in [x.config_file(), x.dir.path().join("redis.conf.agent.json")] {
            let mode = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
        }
        let conf = std::fs::read_to_string(x.config_file()).unwrap();
        assert!(conf.contains(&master_pw), "redis.conf of {} should hold requirepass (the check above is not vacuous)", x.id);
        let leftovers: Vec<_> = std::fs::read_dir(x.dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    }
    let inv_mode = std::fs::metadata(&inv_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(inv_mode, 0o600, "the inventory (it holds the keys) has mode {inv_mode:o}");
    scan.check("rabbitmq-log: server log", &node.server_log());
    // The datastore process does not need the agent's configuration (keys, transport URL).
    let env_text = std::fs::read_to_string(&env_log).unwrap_or_default();
    let starts = env_text.lines().filter(|l| l.starts_with("ARGS: ") && l.contains("redis.conf")).count();
    assert!(starts >= 3, "the wrapper saw {starts} redis-server starts:\n{env_text}");
    assert!(env_text.contains("PATH="), "the wrapper recorded no environment");
    scan.check("redis-environ: environment given to redis-server", &env_text);
    for line in env_text.lines().filter(|l| l.starts_with("TROVE_GUESTAGENT")) {
        scan.findings.push(format!("agent configuration passed to redis-server: {}", line.split('=').next().unwrap_or(line)));
    }

    eprintln!(
        "secrets: scanned {} broker messages ({requests} requests, {replies} replies), {} agent logs, {} process samples (pids {:?}), {redis_env_checked} guest process checks in {:.1}s",
        captured.len(),
        g.len(),
        scan.scanned.len(),
        pids_seen,
        started.elapsed().as_secs_f64()
    );
    assert!(requests >= 30 && replies >= 30, "the firehose saw too little traffic: {requests} requests, {replies} replies");
    assert!(pids_seen.len() >= 6, "agent/redis processes not found: {pids_seen:?}");
    assert!(redis_env_checked >= 8, "guest processes checked: {redis_env_checked}");
    for what in ["cmdline", "redis-environ", "broker", "agent-log", "redis-log", "reports"] {
        assert!(scan.scanned.contains(what), "nothing scanned for {what}");
    }
    assert!(scan.findings.is_empty(), "{} secret leak(s):\n{}", scan.findings.len(), scan.findings.join("\n"));
}
