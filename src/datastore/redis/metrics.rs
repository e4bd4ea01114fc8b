//! The local Redis's replication state as Prometheus metrics, under redis_exporter's names and labels, from one INFO.

use super::info::{Info, Role};
use crate::metrics::{Kind, Text};

/// Writes `redis_up` and, when `info` is there, the instance and replication families. Only
/// INFO's server and replication fields are read: no configuration value, nothing secret.
pub fn encode(out: &mut Text, info: Option<&Info>) {
    out.single("redis_up", Kind::Gauge, "Information about the Redis instance", if info.is_some() { 1.0 } else { 0.0 });
    let Some(info) = info else { return };
    let get = |k: &str| info.get(k).unwrap_or("").trim().to_owned();
    let role = get("role");
    let labels = [
        ("role", role.clone()),
        ("redis_version", get("redis_version")),
        ("redis_build_id", get("redis_build_id")),
        ("redis_mode", info.mode().unwrap_or("").to_owned()),
        ("os", get("os")),
        ("maxmemory_policy", get("maxmemory_policy")),
        ("tcp_port", get("tcp_port")),
        ("run_id", get("run_id")),
        ("process_id", get("process_id")),
        ("master_replid", get("master_replid")),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    out.family("redis_instance_info", Kind::Gauge, "Information about the Redis instance");
    out.sample("redis_instance_info", &labels, 1.0);
    if let Some(uptime) = info.stat("uptime_in_seconds") {
        out.single("redis_uptime_in_seconds", Kind::Gauge, "uptime_in_seconds metric", uptime as f64);
    }
    let Some(repl) = info.replication() else { return };
    out.single("redis_connected_slaves", Kind::Gauge, "connected_slaves metric", repl.connected_slaves as f64);
    out.single("redis_master_repl_offset", Kind::Gauge, "master_repl_offset metric", repl.master_repl_offset as f64);
    for (field, name) in [("sync_full", "redis_replica_resyncs_full"), ("sync_partial_ok", "redis_replica_partial_resync_accepted"), ("sync_partial_err", "redis_replica_partial_resync_denied")] {
        if let Some(v) = info.stat(field) {
            out.single(name, Kind::Gauge, &format!("{field} metric"), v as f64);
        }
    }
    if repl.role == Role::Replica {
        let host = repl.master_host.clone().unwrap_or_default();
        let port = repl.master_port.map(|p| p.to_string()).unwrap_or_default();
        let at = [("master_host", host.as_str()), ("master_port", port.as_str())];
        let read_only = if repl.slave_read_only.unwrap_or(false) { "1" } else { "0" };
        out.family("redis_slave_info", Kind::Gauge, "Information about the Redis slave");
        out.sample("redis_slave_info", &[at[0], at[1], ("read_only", read_only)], 1.0);
        out.family("redis_master_link_up", Kind::Gauge, "Master link status on Redis slave");
        out.sample("redis_master_link_up", &at, if repl.master_link_up == Some(true) { 1.0 } else { 0.0 });
        if let Some(io) = repl.master_last_io_seconds_ago {
            out.family("redis_master_last_io_seconds_ago", Kind::Gauge, "Master last io seconds ago");
            out.sample("redis_master_last_io_seconds_ago", &at, io as f64);
        }
        out.family("redis_master_sync_in_progress", Kind::Gauge, "Master sync in progress");
        out.sample("redis_master_sync_in_progress", &at, if repl.master_sync_in_progress { 1.0 } else { 0.0 });
        if let Some(offset) = repl.slave_repl_offset {
            out.family("redis_slave_repl_offset", Kind::Gauge, "Slave replication offset");
            out.sample("redis_slave_repl_offset", &at, offset as f64);
        }
    }
    let replica_labels = |r: &super::info::ConnectedReplica| [("slave_ip", r.ip.clone()), ("slave_port", r.port.to_string()), ("slave_state", r.state.clone())];
    if !repl.replicas.is_empty() {
        out.family("redis_connected_slave_offset_bytes", Kind::Gauge, "Offset of connected slave");
        for r in &repl.replicas {
            let l = replica_labels(r);
            out.sample("redis_connected_slave_offset_bytes", &l.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(), r.offset as f64);
        }
    }
    if repl.replicas.iter().any(|r| r.lag.is_some()) {
        out.family("redis_connected_slave_lag_seconds", Kind::Gauge, "Lag of connected slave");
        for r in &repl.replicas {
            if let Some(lag) = r.lag {
                let l = replica_labels(r);
                out.sample("redis_connected_slave_lag_seconds", &l.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(), lag as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_and_replica() {
        let master = Info::parse("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\ntcp_port:6379\r\nrun_id:abc\r\n# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=10.0.0.2,port=6380,state=online,offset=42,lag=1\r\nmaster_replid:r1\r\nmaster_repl_offset:42\r\n# Stats\r\nsync_full:1\r\n");
        let mut t = Text::new();
        encode(&mut t, Some(&master));
        let body = t.finish();
        assert!(body.contains("redis_up 1\n"), "{body}");
        assert!(body.contains("redis_instance_info{role=\"master\",redis_version=\"7.0.15\",redis_build_id=\"\",redis_mode=\"standalone\",os=\"\",maxmemory_policy=\"\",tcp_port=\"6379\",run_id=\"abc\",process_id=\"\",master_replid=\"r1\"} 1\n"), "{body}");
        assert!(body.contains("redis_connected_slaves 1\n"));
        assert!(body.contains("redis_replica_resyncs_full 1\n"));
        assert!(body.contains("redis_connected_slave_offset_bytes{slave_ip=\"10.0.0.2\",slave_port=\"6380\",slave_state=\"online\"} 42\n"), "{body}");
        assert!(body.contains("redis_connected_slave_lag_seconds{slave_ip=\"10.0.0.2\",slave_port=\"6380\",slave_state=\"online\"} 1\n"));
        assert!(!body.contains("redis_master_link_up"));

        let replica = Info::parse("role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:40\r\nslave_read_only:1\r\nconnected_slaves:0\r\nmaster_repl_offset:40\r\n");
        let mut t = Text::new();
        encode(&mut t, Some(&replica));
        let body = t.finish();
        let at = "{master_host=\"10.0.0.1\",master_port=\"6379\"}";
        assert!(body.contains(&format!("redis_master_link_up{at} 0\n")), "{body}");
        assert!(body.contains(&format!("redis_master_last_io_seconds_ago{at} -1\n")));
        assert!(body.contains(&format!("redis_slave_repl_offset{at} 40\n")));
        assert!(body.contains("redis_slave_info{master_host=\"10.0.0.1\",master_port=\"6379\",read_only=\"1\"} 1\n"));
        assert!(!body.contains("redis_connected_slave_lag_seconds"));

        let mut t = Text::new();
        encode(&mut t, None);
        assert_eq!(t.finish().lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(), ["redis_up 0"]);
    }
}
