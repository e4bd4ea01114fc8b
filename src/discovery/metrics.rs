//! The watcher's Prometheus metrics: its set under redis_exporter's Sentinel names, plus failovers, detection time, lease and probe errors.

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use super::{Node, Sets, Shared, View};
use crate::metrics::{Kind, Text};

/// What the watch loop counts.
#[derive(Default)]
pub struct WatchStats {
    pub ejects_ok: AtomicU64,
    pub ejects_failed: AtomicU64,
    pub switchovers_ok: AtomicU64,
    pub switchovers_failed: AtomicU64,
    /// Probes of a guest that brought no status (no answer, or an error).
    pub probe_errors: AtomicU64,
    /// Milliseconds from the master's last good answer to the last eject decision (0: none yet).
    pub last_detection_ms: AtomicU64,
    /// Trove's own eject or promote, accepted at the watcher's request (`flows::trove_sync`).
    pub trove_actions: AtomicU64,
    /// Trove's records as last read: 0 not read (no `[trove]` in the inventory), 1 they differ
    /// from the accepted topology, 2 they match it.
    pub trove_in_line: AtomicU64,
}

/// One set's figures for a scrape.
struct Row {
    set: Arc<Shared>,
    view: View,
    /// Peer watchers answering, when the set has a master.
    ok_peers: usize,
}

/// One scrape of the watcher: every set it watches, each family's samples together. No secret:
/// the discovery password and RPC keys are not read.
pub async fn encode(sets: &Sets) -> String {
    let mut rows = Vec::new();
    for set in sets.all() {
        let view = set.view.read().await.clone();
        let ok_peers = match view.master {
            Some(_) => futures_util::future::join_all(set.peers.iter().map(|p| answers(p))).await.iter().filter(|ok| **ok).count(),
            None => 0,
        };
        rows.push(Row { set, view, ok_peers });
    }
    let mut out = Text::new();
    let masters = rows.iter().filter(|r| r.view.master.is_some()).count();
    out.single("redis_sentinel_masters", Kind::Gauge, "The number of masters this sentinel is watching", masters as f64);
    let with_master: Vec<(&Row, &Node, String)> = rows.iter().filter_map(|r| r.view.master.as_ref().map(|m| (r, m, format!("{}:{}", m.host, m.port)))).collect();
    let per_master = |out: &mut Text, name: &str, help: &str, value: &dyn Fn(&Row) -> f64| {
        if with_master.is_empty() {
            return;
        }
        out.family(name, Kind::Gauge, help);
        for (r, _, address) in &with_master {
            out.sample(name, &[("master_name", r.set.name.as_str()), ("master_address", address.as_str())], value(r));
        }
    };
    if !with_master.is_empty() {
        out.family("redis_sentinel_master_status", Kind::Gauge, "Master status on Sentinel");
        for (r, _, address) in &with_master {
            let status = if r.view.odown { "odown" } else if r.view.sdown { "sdown" } else { "ok" };
            let labels = [("master_name", r.set.name.as_str()), ("master_address", address.as_str()), ("master_status", status)];
            out.sample("redis_sentinel_master_status", &labels, if status == "ok" { 1.0 } else { 0.0 });
        }
    }
    per_master(&mut out, "redis_sentinel_master_slaves", "The number of slaves of the master", &|r| r.view.replicas.len() as f64);
    per_master(&mut out, "redis_sentinel_master_ok_slaves", "The number of okay slaves of the master", &|r| {
        r.view.replicas.iter().filter(|n| !n.down && n.link_up).count() as f64
    });
    per_master(&mut out, "redis_sentinel_master_sentinels", "The number of sentinels monitoring this master", &|r| (r.set.peers.len() + 1) as f64);
    per_master(&mut out, "redis_sentinel_master_ok_sentinels", "The number of okay sentinels monitoring this master", &|r| (1 + r.ok_peers) as f64);
    per_master(&mut out, "redis_sentinel_master_setting_down_after_milliseconds", "Show the current down-after-milliseconds config for each master", &|r| {
        r.set.down_after_ms as f64
    });
    let per_set = |out: &mut Text, name: &str, kind: Kind, help: &str, value: &dyn Fn(&Row) -> f64| {
        if rows.is_empty() {
            return;
        }
        out.family(name, kind, help);
        for r in &rows {
            out.sample(name, &[("master_name", r.set.name.as_str())], value(r));
        }
    };
    per_set(&mut out, "trove_guestctl_watch_config_epoch", Kind::Gauge, "The accepted epoch of the set's topology (Sentinel's config-epoch)", &|r| r.view.epoch as f64);
    per_set(&mut out, "trove_guestctl_watch_lease_holder", Kind::Gauge, "1 while this watcher holds the set's lease (it alone acts)", &|r| {
        if r.set.acting.load(Ordering::SeqCst) { 1.0 } else { 0.0 }
    });
    if !rows.is_empty() {
        let name = "trove_guestctl_watch_failovers_total";
        out.family(name, Kind::Counter, "Failovers run by this watcher: kind eject (automatic) or switchover (SENTINEL FAILOVER), result ok or failed");
        for r in &rows {
            let stats = &r.set.stats;
            for (kind, result, n) in [
                ("eject", "ok", &stats.ejects_ok),
                ("eject", "failed", &stats.ejects_failed),
                ("switchover", "ok", &stats.switchovers_ok),
                ("switchover", "failed", &stats.switchovers_failed),
            ] {
                out.sample(name, &[("master_name", r.set.name.as_str()), ("kind", kind), ("result", result)], n.load(Ordering::Relaxed) as f64);
            }
        }
    }
    per_set(&mut out, "trove_guestctl_watch_last_detection_seconds", Kind::Gauge, "From the master's last good answer to this watcher's last eject decision (0: none yet)", &|r| {
        r.set.stats.last_detection_ms.load(Ordering::Relaxed) as f64 / 1000.0
    });
    per_set(&mut out, "trove_guestctl_watch_probe_errors_total", Kind::Counter, "Probes of a guest's agent that brought no status (no answer or an error)", &|r| {
        r.set.stats.probe_errors.load(Ordering::Relaxed) as f64
    });
    let kept: Vec<&Row> = rows.iter().filter(|r| r.set.stats.trove_in_line.load(Ordering::Relaxed) > 0).collect();
    if !kept.is_empty() {
        let name = "trove_guestctl_watch_trove_actions_total";
        out.family(name, Kind::Counter, "Trove's own eject or promote that Trove accepted at this watcher's request, to bring its records in line");
        for r in &kept {
            out.sample(name, &[("master_name", r.set.name.as_str())], r.set.stats.trove_actions.load(Ordering::Relaxed) as f64);
        }
        let name = "trove_guestctl_watch_trove_records_in_line";
        out.family(name, Kind::Gauge, "1 when Trove's records last matched the accepted topology (read by the lease holder)");
        for r in &kept {
            let in_line = r.set.stats.trove_in_line.load(Ordering::Relaxed) == 2;
            out.sample(name, &[("master_name", r.set.name.as_str())], if in_line { 1.0 } else { 0.0 });
        }
    }
    out.finish()
}

/// Whether the peer watcher at `addr` answers a `PING` on its discovery port within 300 ms.
/// Any reply counts (a peer with a password answers `-NOAUTH`): no credential is sent.
async fn answers(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ping = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"PING\r\n").await.ok()?;
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).await.ok()?;
        matches!(first[0], b'+' | b'-').then_some(())
    };
    matches!(tokio::time::timeout(std::time::Duration::from_millis(300), ping).await, Ok(Some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, port: u16, down: bool, link_up: bool) -> Node {
        Node { id: id.into(), host: "10.0.0.1".into(), port, run_id: "r".into(), down, link_up, offset: 0 }
    }

    #[tokio::test]
    async fn a_set_under_sentinel_names() {
        // Two peers on loopback: one answers as a watcher with a password does, one is gone.
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = up.accept().await {
                let mut buf = [0u8; 64];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"-NOAUTH Authentication required.\r\n").await;
            }
        });
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
        let shared = Shared::new("set\"1", vec![up_addr, gone], Some(secrecy::SecretString::from("discovery-pw")), 1000);
        let sets = Sets::one(shared.clone());
        let body = encode(&sets).await;
        assert!(body.contains("redis_sentinel_masters 0\n"), "{body}");
        assert!(!body.contains("redis_sentinel_master_status"));
        *shared.view.write().await = View { master: Some(node("m", 6379, false, false)), replicas: vec![node("a", 6380, false, true), node("b", 6381, true, false)], sdown: false, odown: false, epoch: 7 };
        shared.stats.ejects_ok.fetch_add(2, Ordering::Relaxed);
        shared.stats.last_detection_ms.store(1250, Ordering::Relaxed);
        let body = encode(&sets).await;
        let at = "{master_name=\"set\\\"1\",master_address=\"10.0.0.1:6379\"}";
        assert!(body.contains("redis_sentinel_masters 1\n"));
        assert!(body.contains("redis_sentinel_master_status{master_name=\"set\\\"1\",master_address=\"10.0.0.1:6379\",master_status=\"ok\"} 1\n"), "{body}");
        assert!(body.contains(&format!("redis_sentinel_master_slaves{at} 2\n")));
        assert!(body.contains(&format!("redis_sentinel_master_ok_slaves{at} 1\n")));
        assert!(body.contains(&format!("redis_sentinel_master_sentinels{at} 3\n")));
        assert!(body.contains(&format!("redis_sentinel_master_ok_sentinels{at} 2\n")), "the peer that is gone is not ok: {body}");
        assert!(body.contains("trove_guestctl_watch_config_epoch{master_name=\"set\\\"1\"} 7\n"));
        assert!(body.contains("trove_guestctl_watch_failovers_total{master_name=\"set\\\"1\",kind=\"eject\",result=\"ok\"} 2\n"));
        assert!(body.contains("trove_guestctl_watch_last_detection_seconds{master_name=\"set\\\"1\"} 1.25\n"));
        assert!(body.contains("trove_guestctl_watch_lease_holder{master_name=\"set\\\"1\"} 0\n"));
        assert!(!body.contains("discovery-pw"));
        shared.view.write().await.odown = true;
        assert!(encode(&sets).await.contains("master_status=\"odown\"} 0\n"));
    }

    #[tokio::test]
    async fn many_sets_keep_each_familys_samples_together() {
        let sets = Sets::new(None);
        for (name, port) in [("a", 6379), ("b", 6390)] {
            let shared = sets.add(name, vec![], 1000).unwrap();
            *shared.view.write().await = View { master: Some(node("m", port, false, true)), replicas: vec![node("r", port + 1, false, true)], sdown: false, odown: false, epoch: 1 };
        }
        assert!(sets.add("a", vec![], 1000).is_err(), "a name is served once");
        let body = encode(&sets).await;
        assert!(body.contains("redis_sentinel_masters 2\n"), "{body}");
        // Prometheus's text format: one HELP/TYPE per family, its samples right after it.
        let mut families: Vec<&str> = Vec::new();
        for line in body.lines() {
            let name = match line.strip_prefix("# TYPE ") {
                Some(rest) => rest.split(' ').next().unwrap(),
                None if line.starts_with('#') => continue,
                None => line.split(['{', ' ']).next().unwrap(),
            };
            if families.last() != Some(&name) {
                assert!(!families.contains(&name), "{name} is split: {body}");
                families.push(name);
            }
        }
        assert!(body.contains("redis_sentinel_master_slaves{master_name=\"a\",master_address=\"10.0.0.1:6379\"} 1\n"));
        assert!(body.contains("redis_sentinel_master_slaves{master_name=\"b\",master_address=\"10.0.0.1:6390\"} 1\n"));
        sets.remove("b");
        assert!(encode(&sets).await.contains("redis_sentinel_masters 1\n"));
    }
}
