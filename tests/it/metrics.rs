//! Prometheus metrics: the agents' /metrics on a real replica set, and a real Prometheus with the shipped alert rules.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::flows::create;
use crate::harness::*;

const PW: &str = "metrics-Secret-pw-7f3a";

async fn scrape(port: u16) -> String {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    resp.text().await.unwrap()
}

/// The value of the first sample of `name` whose labels contain every one of `labels` (`k="v"`).
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !labels.iter().all(|want| rest.contains(want)) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

async fn guest_with_metrics(c: &trove_guest::rpc::client::RpcClient) -> (Guest, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    (spawn_guest(c, None, &[("TROVE_GUESTAGENT__METRICS__LISTEN", &listen)]).await, port)
}

fn kill_redis(g: &Guest) {
    let pid = g.redis_pid().expect("redis pid");
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
}

/// A master and its replica, each agent serving /metrics (Redis with a password): roles, link,
/// offsets, the connected replica's labels, RPC and heartbeat counters, no secret, and the
/// replica's link down (and the master's held restart) once the master's Redis is killed.
#[tokio::test]
async fn agents_export_replication_state() {
    let c = client().await;
    let (m, mp) = guest_with_metrics(&c).await;
    let (r, rp) = guest_with_metrics(&c).await;
    for g in [&m, &r] {
        prepare(&c, g, Some(PW), None).await;
    }
    let guests = [m, r];
    let (mut tm, _dir) = taskmanager(&guests).await;
    let (m, r) = (&guests[0], &guests[1]);
    tm.create_replicas(create(m, &[r])).await.unwrap();
    let mut con = m.redis(Some(PW)).await;
    for n in 0..100 {
        let _: () = con.set(format!("k{n}"), n).await.unwrap();
    }
    let master_offset = info(&mut con, "replication").await.replication().unwrap().master_repl_offset;
    let slave_port = format!("slave_port=\"{}\"", r.port);
    eventually(20, "the replica's metrics reach the master's offset", || async {
        sample(&scrape(rp).await, "redis_slave_repl_offset", &[]).unwrap_or(0.0) >= master_offset as f64
    })
    .await;

    let body = scrape(mp).await;
    assert_eq!(sample(&body, "redis_up", &[]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_instance_info", &["role=\"master\"", &format!("tcp_port=\"{}\"", m.port)]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_connected_slaves", &[]), Some(1.0), "{body}");
    assert!(sample(&body, "redis_master_repl_offset", &[]).unwrap() >= master_offset as f64);
    let replica = ["slave_ip=\"127.0.0.1\"", slave_port.as_str(), "slave_state=\"online\""];
    assert!(sample(&body, "redis_connected_slave_offset_bytes", &replica).is_some(), "{body}");
    assert!(sample(&body, "redis_connected_slave_lag_seconds", &replica).is_some(), "{body}");
    assert_eq!(sample(&body, "redis_master_link_up", &[]), None, "a master has no link: {body}");
    assert_eq!(sample(&body, "trove_guestagent_restart_held_back", &[]), Some(0.0));
    assert_eq!(sample(&body, "trove_guestagent_write_fenced", &[]), Some(0.0));
    assert_eq!(sample(&body, "trove_guestagent_status", &["status=\"healthy\""]), Some(1.0), "{body}");
    assert_eq!(body.matches("# TYPE redis_connected_slaves ").count(), 1);

    let body = scrape(rp).await;
    let link = ["master_host=\"127.0.0.1\"".to_owned(), format!("master_port=\"{}\"", m.port)];
    let link: Vec<&str> = link.iter().map(String::as_str).collect();
    assert_eq!(sample(&body, "redis_instance_info", &["role=\"slave\""]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_master_link_up", &link), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_master_sync_in_progress", &link), Some(0.0), "{body}");
    assert!(sample(&body, "redis_master_last_io_seconds_ago", &link).unwrap() >= 0.0);
    assert!(sample(&body, "redis_slave_info", &["read_only=\"1\""]).is_some(), "{body}");
    assert!(sample(&body, "redis_replica_resyncs_full", &[]).is_some(), "{body}");

    // RPC counters move with calls; an unknown method is counted without its name.
    let calls = |b: &str| sample(b, "trove_guestagent_rpc_calls_total", &["method=\"get_replication_status\"", "outcome=\"ok\""]).unwrap_or(0.0);
    let before = calls(&scrape(rp).await);
    call(&c, r, "get_replication_status", json!({})).await;
    call(&c, r, "get_replication_status", json!({})).await;
    call_err(&c, r, "no_such_method_xyz", json!({})).await;
    let body = scrape(rp).await;
    assert_eq!(calls(&body), before + 2.0, "{body}");
    assert_eq!(sample(&body, "trove_guestagent_rpc_calls_total", &["method=\"unknown\"", "outcome=\"NoSuchMethod\""]), Some(1.0), "{body}");
    assert!(!body.contains("no_such_method_xyz"));
    eventually(10, "heartbeats counted", || async { sample(&scrape(rp).await, "trove_guestagent_heartbeats_sent_total", &[]).unwrap_or(0.0) >= 1.0 }).await;

    // Nothing secret: the password is in neither body.
    for p in [mp, rp] {
        let body = scrape(p).await;
        assert!(!body.contains(PW), "the password leaked into /metrics:\n{body}");
    }

    // Bad requests neither crash the agent nor stop the endpoint.
    for raw in [&b"\x00\xff garbage\r\n\r\n"[..], b"POST /metrics HTTP/1.1\r\n\r\n", &[b'x'; 20000][..]] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", rp)).await.unwrap();
        let _ = s.write_all(raw).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(out.starts_with(b"HTTP/1.1 4"), "{}", String::from_utf8_lossy(&out));
    }
    call(&c, r, "rpc_ping", json!({})).await;

    // A hung master (SIGSTOP): the replica's link goes down at its repl-timeout (2 s here), the
    // master's agent answers its scrape with redis_up 0 rather than hanging, and both recover.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("repl-timeout").arg("2").query_async(&mut r.redis(Some(PW)).await).await.unwrap();
    let pid = m.redis_pid().unwrap().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let stopped = Instant::now();
    let hung = async {
        eventually(15, "redis_master_link_up 0 on the replica of a hung master", || async { sample(&scrape(rp).await, "redis_master_link_up", &link) == Some(0.0) }).await;
        let t = Instant::now();
        let b = scrape(mp).await;
        (sample(&b, "redis_up", &[]), t.elapsed())
    };
    let hung = tokio::time::timeout(Duration::from_secs(30), hung).await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let (up, took) = hung.expect("the hung master's checks took over 30 s");
    eprintln!("link down {:.1} s after SIGSTOP; the hung master's scrape took {took:?}", stopped.elapsed().as_secs_f64());
    assert_eq!(up, Some(0.0), "a hung Redis is not up");
    assert!(took < Duration::from_secs(4), "the scrape of a hung Redis took {took:?}");
    eventually(20, "the link back up after SIGCONT", || async { sample(&scrape(rp).await, "redis_master_link_up", &link) == Some(1.0) }).await;
    assert_eq!(sample(&scrape(mp).await, "redis_up", &[]), Some(1.0));

    // The master's Redis dies: the replica says its link is down, the master's agent that its
    // Redis is down and its restart held back.
    kill_redis(m);
    eventually(15, "redis_master_link_up 0 on the replica", || async { sample(&scrape(rp).await, "redis_master_link_up", &link) == Some(0.0) }).await;
    eventually(15, "redis_up 0 and the held restart on the master", || async {
        let b = scrape(mp).await;
        sample(&b, "redis_up", &[]) == Some(0.0) && sample(&b, "trove_guestagent_restart_held_back", &[]) == Some(1.0)
    })
    .await;
    tm.close().await;
}

/// The shipped rules directory.
fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/prometheus")
}

/// A binary of Debian's `prometheus` package; the tests fail (never skip) without it.
fn prometheus_tool(name: &str) -> String {
    let found = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()));
    match found {
        Some(f) => f.display().to_string(),
        None => panic!("{name} not found: install Debian's prometheus package (scripts/services.sh does: apt-get install prometheus)"),
    }
}

/// `promtool check rules` and `promtool test rules` on the shipped rules and their unit tests.
#[test]
fn alert_rules_pass_promtool() {
    let promtool = prometheus_tool("promtool");
    let dir = rules_dir();
    for args in [["check", "rules", "redis-replication-rules.yml"], ["test", "rules", "redis-replication-rules.test.yml"]] {
        let out = Command::new(&promtool).args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "promtool {args:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default());
        }
    }
}

impl Prometheus {
    /// Scrapes `targets` (one replica set) every second, with the shipped rules, their `for`
    /// durations shortened to 2 s so the test runs in seconds (promtool tests the real ones).
    async fn start(jobs: &[(&str, &[u16])]) -> Prometheus {
        let binary = prometheus_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let rules = std::fs::read_to_string(rules_dir().join("redis-replication-rules.yml")).unwrap();
        let short: String = rules.lines().map(|l| if l.trim_start().starts_with("for: ") { format!("{}for: 2s\n", &l[..l.len() - l.trim_start().len()]) } else { format!("{l}\n") }).collect();
        assert_ne!(short, rules, "no `for` to shorten");
        std::fs::write(dir.path().join("rules.yml"), short).unwrap();
        let mut config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nscrape_configs:\n".to_owned();
        for (job, ports) in jobs {
            let targets: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n        labels:\n          replica_set: test\n", targets.join(", ")));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus");
        let p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/-/ready")).await {
                if resp.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    async fn api(&self, path: &str) -> Value {
        let text = reqwest::get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port)).await.unwrap().text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"].clone()
    }

    /// Alert name → state (`pending` or `firing`).
    async fn alerts(&self) -> Vec<(String, String)> {
        let data = self.api("alerts").await;
        data["alerts"].as_array().unwrap().iter().map(|a| (a["labels"]["alertname"].as_str().unwrap_or("").to_owned(), a["state"].as_str().unwrap_or("").to_owned())).collect()
    }
}

/// A master and its replica, each agent serving /metrics, scraped by a real Prometheus with the
/// shipped rules; returns once Prometheus has seen both and no alert fired on the healthy set.
async fn alerting_set() -> ([Guest; 2], (trove_guest::flows::Taskmanager, tempfile::TempDir), Prometheus) {
    prometheus_tool("prometheus");
    let c = client().await;
    let (m, mp) = guest_with_metrics(&c).await;
    let (r, rp) = guest_with_metrics(&c).await;
    for g in [&m, &r] {
        prepare(&c, g, None, None).await;
    }
    let guests = [m, r];
    let (mut tm, dir) = taskmanager(&guests).await;
    tm.create_replicas(create(&guests[0], &[&guests[1]])).await.unwrap();
    let prom = Prometheus::start(&[("trove-guestagent", &[mp, rp])]).await;
    eventually(20, "both agents scraped, the master and its linked replica seen", || async {
        query(&prom, "sum(up{job=\"trove-guestagent\"})").await.as_deref() == Some("2")
            && query(&prom, "sum(redis_master_link_up) + sum(redis_instance_info{role=\"master\"})").await.as_deref() == Some("2")
    })
    .await;
    // Healthy for a few evaluations: none of the replication alerts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let quiet = prom.alerts().await;
    assert!(quiet.is_empty(), "alerts on a healthy set: {quiet:?}");
    (guests, (tm, dir), prom)
}

async fn wait_firing(prom: &Prometheus, want: &[&str], since: Instant, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let alerts = prom.alerts().await;
        if want.iter().all(|w| alerts.iter().any(|(n, s)| n == w && s == "firing")) {
            eprintln!("firing {:.1} s after {what}: {alerts:?}", since.elapsed().as_secs_f64());
            return;
        }
        assert!(Instant::now() < deadline, "{want:?} not firing 40 s after {what}: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A real Prometheus scrapes a master's and a replica's agents with the shipped rules: quiet while
/// the set is healthy; the master's redis-server killed, "missing master" and "link down" fire.
#[tokio::test]
async fn prometheus_fires_the_alerts_when_the_master_dies() {
    let (guests, (tm, _dir), prom) = alerting_set().await;
    kill_redis(&guests[0]);
    wait_firing(&prom, &["RedisMissingMaster", "RedisReplicaLinkDown"], Instant::now(), "the kill").await;
    tm.close().await;
}

/// A DROP rule in iptables for the test's lifetime (removed on drop, even when the test fails).
struct Cut(Vec<String>);

impl Cut {
    fn new(rule: &[&str]) -> Cut {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let ok = Command::new("iptables").arg("-I").args(&rule).status().expect("iptables (the link-cut test needs it, as root)");
        assert!(ok.success(), "iptables -I {rule:?} failed");
        Cut(rule)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.0).status();
    }
}

/// The replication link cut in both directions (iptables on loopback; the replica's Redis
/// connects from 127.0.0.2 with `bind-source-addr`, so only the link is cut, not the agents'
/// own connections): with `repl-timeout 3` on both servers, the replica's link goes down and the
/// master drops the replica, so Prometheus fires RedisReplicaLinkDown and RedisReplicationBroken,
/// and never RedisMissingMaster; once the cut is lifted the link comes back.
#[tokio::test]
async fn prometheus_fires_link_down_when_the_replication_link_is_cut() {
    let ([m, r], (tm, _dir), prom) = alerting_set().await;
    let (mut mc, mut rc) = (m.redis(None).await, r.redis(None).await);
    for conn in [&mut mc, &mut rc] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg("repl-timeout").arg("3").query_async(conn).await.unwrap();
    }
    // Protected mode (no password here) takes only 127.0.0.1 and ::1 as loopback.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("protected-mode").arg("no").query_async(&mut mc).await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("bind-source-addr").arg("127.0.0.2").query_async(&mut rc).await.expect("bind-source-addr (Redis 7.0+)");
    eventually(20, "the replica links again, from 127.0.0.2", || async {
        let (mut mc, mut rc) = (m.redis(None).await, r.redis(None).await);
        let _: Result<i64, _> = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("master").query_async(&mut rc).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let replicas: String = redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("replica").query_async(&mut mc).await.unwrap_or_default();
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut mc).await.unwrap_or_default();
        replicas.contains("addr=127.0.0.2:") && info.contains("state=online")
    })
    .await;
    eventually(20, "Prometheus sees the link up again", || async { query(&prom, "sum(redis_master_link_up)").await.as_deref() == Some("1") }).await;

    let port = m.port.to_string();
    let cut = [
        Cut::new(&["INPUT", "-p", "tcp", "-s", "127.0.0.2", "-d", "127.0.0.1", "--dport", &port, "-j", "DROP"]),
        Cut::new(&["INPUT", "-p", "tcp", "-s", "127.0.0.1", "--sport", &port, "-d", "127.0.0.2", "-j", "DROP"]),
    ];
    wait_firing(&prom, &["RedisReplicaLinkDown", "RedisReplicationBroken"], Instant::now(), "the cut").await;
    let alerts = prom.alerts().await;
    assert!(!alerts.iter().any(|(n, _)| n == "RedisMissingMaster" || n == "RedisDown"), "the master still serves: {alerts:?}");
    assert_eq!(query(&prom, "sum(redis_instance_info{role=\"master\"})").await.as_deref(), Some("1"));

    drop(cut);
    eventually(30, "the link is up again once the cut is lifted", || async {
        query(&prom, "sum(redis_master_link_up)").await.as_deref() == Some("1")
    })
    .await;
    tm.close().await;
}

async fn query(prom: &Prometheus, q: &str) -> Option<String> {
    let data = prom.api(&format!("query?query={}", q.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>())).await;
    data["result"][0]["value"][1].as_str().map(str::to_owned)
}

/// A watcher serving metrics beside two agents, all scraped by a real Prometheus: the set under
/// Sentinel's names while healthy; after kill -9 of the master's Redis the watcher ejects it, and
/// its failover counter, detection time and the new master's address follow.
#[tokio::test]
async fn watcher_exports_sentinel_metrics_and_counts_a_failover() {
    let c = client().await;
    let (m, mp) = guest_with_metrics(&c).await;
    let (r, rp) = guest_with_metrics(&c).await;
    for g in [&m, &r] {
        prepare(&c, g, None, None).await;
    }
    let name = unique("metricset");
    // A second watcher is listed but never started: a peer that does not answer.
    let (listen, wp, absent) = (free_port(), free_port(), free_port());
    let guests = [m, r];
    let watchers = format!("watchers = [\"127.0.0.1:{listen}\", \"127.0.0.1:{absent}\"]");
    let (mut tm, dir) = taskmanager_with(&guests, &format!("name = \"{name}\"\n{watchers}\n")).await;
    tm.create_replicas(create(&guests[0], &[&guests[1]])).await.unwrap();
    tm.close().await;
    drop(tm);
    let metrics_at = format!("127.0.0.1:{wp}");
    let _watcher = Watcher::start(&dir.path().join("inventory.toml"), listen, dir.path().join("watch.log"), 1000, &["--metrics-listen", &metrics_at]);
    let (m, r) = (&guests[0], &guests[1]);
    let master_at = format!("master_address=\"127.0.0.1:{}\"", m.port);
    let set = format!("master_name=\"{name}\"");
    eventually(20, "the watcher holds the lease and sees the set", || async {
        let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{wp}/metrics")).await else { return false };
        let b = resp.text().await.unwrap_or_default();
        sample(&b, "trove_guestctl_watch_lease_holder", &[&set]) == Some(1.0) && sample(&b, "redis_sentinel_master_ok_slaves", &[&set, &master_at]) == Some(1.0)
    })
    .await;
    let body = scrape(wp).await;
    assert_eq!(sample(&body, "redis_sentinel_masters", &[]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_sentinel_master_status", &[&set, &master_at, "master_status=\"ok\""]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_sentinel_master_slaves", &[&set, &master_at]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "redis_sentinel_master_sentinels", &[&set, &master_at]), Some(2.0), "{body}");
    assert_eq!(sample(&body, "redis_sentinel_master_ok_sentinels", &[&set, &master_at]), Some(1.0), "{body}");
    assert!(sample(&body, "trove_guestctl_watch_config_epoch", &[&set]).unwrap() >= 1.0, "{body}");
    assert_eq!(sample(&body, "trove_guestctl_watch_failovers_total", &[&set, "kind=\"eject\"", "result=\"ok\""]), Some(0.0), "{body}");

    // Prometheus scrapes both binaries.
    let prom = Prometheus::start(&[("trove-guestagent", &[mp, rp]), ("trove-guestctl-watch", &[wp])]).await;
    eventually(20, "Prometheus has the agents' and the watcher's metrics", || async {
        query(&prom, "sum(up)").await.as_deref() == Some("3") && query(&prom, "sum(redis_sentinel_master_ok_slaves)").await.as_deref() == Some("1")
    })
    .await;

    kill_redis(m);
    let new_at = format!("master_address=\"127.0.0.1:{}\"", r.port);
    eventually(30, "the watcher counts the eject and names the new master", || async {
        let b = scrape(wp).await;
        sample(&b, "trove_guestctl_watch_failovers_total", &[&set, "kind=\"eject\"", "result=\"ok\""]) == Some(1.0)
            && sample(&b, "redis_sentinel_master_status", &[&set, &new_at]).is_some()
    })
    .await;
    let body = scrape(wp).await;
    let detection = sample(&body, "trove_guestctl_watch_last_detection_seconds", &[&set]).unwrap();
    eprintln!("detection {detection} s");
    assert!(detection > 0.0 && detection < 10.0, "{body}");
    // The dead master's agent answered its probes with RestartHeldBack: no status.
    assert!(sample(&body, "trove_guestctl_watch_probe_errors_total", &[&set]).unwrap() >= 1.0, "{body}");
    eventually(20, "Prometheus sees the failover", || async {
        query(&prom, "sum(trove_guestctl_watch_failovers_total{kind=\"eject\",result=\"ok\"})").await.as_deref() == Some("1")
    })
    .await;
}
