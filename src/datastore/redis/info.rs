//! Typed `INFO` parsing: every replication field across Redis 2.8–7.x and Valkey spellings; unknown fields ignored.

use std::collections::HashMap;

use serde::Serialize;

/// All `key:value` fields of an INFO reply, plus the parsed `slaveN` lines.
#[derive(Debug, Clone, Default)]
pub struct Info {
    fields: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

/// One connected replica as the master lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectedReplica {
    pub ip: String,
    pub port: u16,
    pub state: String,
    pub offset: i64,
    pub lag: Option<i64>,
}

/// The replication section, typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replication {
    pub role: Role,
    pub replid: Option<String>,
    pub replid2: Option<String>,
    pub master_repl_offset: i64,
    pub second_repl_offset: Option<i64>,
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    /// `up` or `down`; present on replicas only.
    pub master_link_up: Option<bool>,
    /// -1 when the link is down (whole seconds otherwise).
    pub master_last_io_seconds_ago: Option<i64>,
    pub master_sync_in_progress: bool,
    pub slave_repl_offset: Option<i64>,
    pub slave_read_repl_offset: Option<i64>,
    pub slave_priority: Option<i64>,
    pub slave_read_only: Option<bool>,
    /// Replicas connected, one per replica (Valkey's dual-channel sync lists one replica twice
    /// and counts it twice in `connected_slaves`).
    pub connected_slaves: u32,
    /// One entry per replica (for a dual-channel sync, its main channel).
    pub replicas: Vec<ConnectedReplica>,
    pub min_slaves_good_slaves: Option<u32>,
    pub repl_backlog_size: Option<i64>,
    /// Bytes of the initial sync received and expected, when the size is known: a diskless or
    /// dual-channel sync reports a total of 0 or -1 and a negative remainder.
    pub sync_progress: Option<(i64, i64)>,
}

impl Info {
    pub fn parse(text: &str) -> Info {
        let fields = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Info { fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn int(&self, key: &str) -> Option<i64> {
        self.get(key)?.trim().parse().ok()
    }

    pub fn used_memory(&self) -> Option<u64> {
        self.int("used_memory").and_then(|v| u64::try_from(v).ok())
    }

    pub fn run_id(&self) -> Option<&str> {
        self.get("run_id")
    }

    /// The server's own version: Valkey's `valkey_version` (its `redis_version` is a fixed 7.2.4).
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        self.server().map(|s| s.version)
    }

    /// Redis or Valkey, and its version.
    pub fn server(&self) -> Option<super::server::Server> {
        super::server::Server::from_info(self)
    }

    /// `standalone`, `cluster` or `sentinel`: `redis_mode` on Redis, `server_mode` on Valkey.
    pub fn mode(&self) -> Option<&str> {
        self.get("redis_mode").or_else(|| self.get("server_mode"))
    }

    pub fn loading(&self) -> bool {
        self.get("loading") == Some("1")
    }

    pub fn stat(&self, key: &str) -> Option<i64> {
        self.int(key)
    }

    pub fn replication(&self) -> Option<Replication> {
        let role = match self.get("role")? {
            "master" => Role::Master,
            "slave" | "replica" => Role::Replica,
            _ => return None,
        };
        let mut lines: Vec<(u32, ConnectedReplica, bool)> = self
            .fields
            .iter()
            .filter_map(|(k, v)| {
                let n: u32 = k.strip_prefix("slave")?.parse().ok()?;
                Some((n, parse_replica_line(v)?, v.contains("type=rdb-channel")))
            })
            // Port 0: no listening port, so not a replica anyone reaches (the agent's own pseudo-replica, `gather`).
            .filter(|(_, r, _)| r.port != 0)
            .collect();
        lines.sort_by_key(|(n, _, _)| *n);
        // Valkey's dual-channel sync lists a replica twice: keep its main channel.
        let mut replicas: Vec<(ConnectedReplica, bool)> = Vec::new();
        for (_, r, rdb_channel) in lines {
            match replicas.iter_mut().find(|(seen, _)| seen.ip == r.ip && seen.port == r.port) {
                Some(seen) if seen.1 && !rdb_channel => *seen = (r, false),
                Some(_) => {}
                None => replicas.push((r, rdb_channel)),
            }
        }
        let listed = replicas.len() as u32;
        let counted = self.int("connected_slaves").and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        let total = self.int("master_sync_total_bytes").filter(|t| *t > 0);
        let read = self.int("master_sync_read_bytes").filter(|r| *r >= 0);
        let replid = self.get("master_replid").or_else(|| self.get("master_run_id")).map(str::to_owned);
        let replid2 = self.get("master_replid2").filter(|r| r.chars().any(|c| c != '0')).map(str::to_owned);
        Some(Replication {
            role,
            replid,
            replid2,
            master_repl_offset: self.int("master_repl_offset").unwrap_or(0),
            second_repl_offset: self.int("second_repl_offset"),
            master_host: self.get("master_host").map(str::to_owned),
            master_port: self.int("master_port").and_then(|p| u16::try_from(p).ok()),
            master_link_up: self.get("master_link_status").map(|s| s == "up"),
            master_last_io_seconds_ago: self.int("master_last_io_seconds_ago"),
            master_sync_in_progress: self.get("master_sync_in_progress") == Some("1"),
            slave_repl_offset: self.int("slave_repl_offset"),
            slave_read_repl_offset: self.int("slave_read_repl_offset"),
            slave_priority: self.int("slave_priority").or_else(|| self.int("replica_priority")),
            slave_read_only: self.get("slave_read_only").or_else(|| self.get("replica_read_only")).map(|v| v == "1"),
            connected_slaves: if listed > 0 { listed } else { counted },
            replicas: replicas.into_iter().map(|(r, _)| r).collect(),
            min_slaves_good_slaves: self.int("min_slaves_good_slaves").and_then(|v| u32::try_from(v).ok()),
            repl_backlog_size: self.int("repl_backlog_size"),
            sync_progress: total.zip(read).map(|(t, r)| (r.min(t), t)),
        })
    }
}

impl Replication {
    /// The offset this node has applied: `slave_repl_offset` on a replica, else `master_repl_offset`.
    pub fn applied_offset(&self) -> i64 {
        match self.role {
            Role::Replica => self.slave_repl_offset.unwrap_or(self.master_repl_offset),
            Role::Master => self.master_repl_offset,
        }
    }

    /// Linked means the link is up and no sync is running.
    pub fn linked(&self) -> bool {
        self.role == Role::Replica && self.master_link_up == Some(true) && !self.master_sync_in_progress
    }
}

/// `ip=..,port=..,state=..,offset=..,lag=..` (2.8+) or `ip,port,state` (2.6).
fn parse_replica_line(v: &str) -> Option<ConnectedReplica> {
    if v.contains('=') {
        let kv: HashMap<&str, &str> = v.split(',').filter_map(|p| p.split_once('=')).collect();
        Some(ConnectedReplica {
            ip: kv.get("ip")?.to_string(),
            port: kv.get("port")?.parse().ok()?,
            state: kv.get("state").unwrap_or(&"unknown").to_string(),
            offset: kv.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
            lag: kv.get("lag").and_then(|o| o.parse().ok()),
        })
    } else {
        let mut parts = v.split(',');
        Some(ConnectedReplica {
            ip: parts.next()?.to_owned(),
            port: parts.next()?.parse().ok()?,
            state: parts.next().unwrap_or("unknown").to_owned(),
            offset: 0,
            lag: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA_7: &str = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.5\r\nmaster_port:6379\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\nmaster_sync_in_progress:0\r\nslave_read_repl_offset:8503\r\nslave_repl_offset:8503\r\nslave_priority:100\r\nslave_read_only:1\r\nreplica_announced:1\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_replid:8b2fd4ac0e7e2e4c2d3b4a5f6e7d8c9b0a1b2c3d\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:8503\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:1\r\nrepl_backlog_size:1048576\r\nsome_future_field:xyz\r\n";
    const MASTER_7: &str = "role:master\nconnected_slaves:2\nslave0:ip=127.0.0.1,port=7001,state=online,offset=1478,lag=0\nslave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=1\nmaster_replid:aaaa\nmaster_replid2:bbbb\nmaster_repl_offset:1478\nsecond_repl_offset:1000\nmin_slaves_good_slaves:2\n";
    const MASTER_26: &str = "role:master\nconnected_slaves:1\nslave0:127.0.0.1,7001,online\n";
    const REPLICA_28: &str = "role:slave\nmaster_host:h\nmaster_port:1\nmaster_link_status:up\nmaster_last_io_seconds_ago:3\nmaster_sync_in_progress:1\nslave_repl_offset:0\nslave_priority:100\nslave_read_only:1\nconnected_slaves:0\nmaster_repl_offset:0\n";

    #[test]
    fn table() {
        struct Case {
            text: &'static str,
            role: Role,
            offset: i64,
            replicas: usize,
            linked: bool,
        }
        let cases = [
            Case { text: REPLICA_7, role: Role::Replica, offset: 8503, replicas: 0, linked: false },
            Case { text: MASTER_7, role: Role::Master, offset: 1478, replicas: 2, linked: false },
            Case { text: MASTER_26, role: Role::Master, offset: 0, replicas: 1, linked: false },
            Case { text: REPLICA_28, role: Role::Replica, offset: 0, replicas: 0, linked: false },
        ];
        for (i, c) in cases.iter().enumerate() {
            let r = Info::parse(c.text).replication().unwrap();
            assert_eq!(r.role, c.role, "case {i}");
            assert_eq!(r.applied_offset(), c.offset, "case {i}");
            assert_eq!(r.replicas.len(), c.replicas, "case {i}");
            assert_eq!(r.linked(), c.linked, "case {i}");
        }
    }

    #[test]
    fn replica_fields() {
        let r = Info::parse(REPLICA_7).replication().unwrap();
        assert_eq!(r.master_host.as_deref(), Some("10.0.0.5"));
        assert_eq!(r.master_port, Some(6379));
        assert_eq!(r.master_link_up, Some(false));
        assert_eq!(r.master_last_io_seconds_ago, Some(-1));
        assert_eq!(r.replid2, None, "all-zero replid2 means none");
        assert_eq!(r.slave_read_only, Some(true));
        let m = Info::parse(MASTER_7).replication().unwrap();
        assert_eq!(m.replicas[1], ConnectedReplica { ip: "127.0.0.1".into(), port: 7002, state: "wait_bgsave".into(), offset: 0, lag: Some(1) });
        assert_eq!(m.replid2.as_deref(), Some("bbbb"));
        assert_eq!(m.min_slaves_good_slaves, Some(2));
    }

    #[test]
    fn garbage_is_not_fatal() {
        assert!(Info::parse("").replication().is_none());
        assert!(Info::parse("role:sentinel").replication().is_none());
        let r = Info::parse("role:master\nmaster_repl_offset:notanumber\nslave0:junk\n").replication().unwrap();
        assert_eq!(r.master_repl_offset, 0);
        assert!(r.replicas.is_empty());
        assert_eq!(Info::parse("redis_version:7.0.15\n").version(), Some((7, 0, 15)));
    }

    macro_rules! captured {
        ($($name:literal),*) => { [$(($name, include_str!(concat!("../../../tests/fuzz-corpus/info/", $name, ".txt")))),*] };
    }

    /// INFO really sent by each server of the matrix, a master with one online replica and that replica.
    #[test]
    fn captured_info_from_every_server() {
        let masters = captured!("redis-6.0.9-master", "redis-6.2.5-master", "redis-6.2.14-master", "redis-7.0.15-master", "redis-7.2.4-master", "redis-7.4.1-master", "valkey-8.1.8-master", "valkey-9.0.0-master", "valkey-9.1.2-master");
        let replicas = captured!("redis-6.0.9-replica", "redis-6.2.5-replica", "redis-6.2.14-replica", "redis-7.0.15-replica", "redis-7.2.4-replica", "redis-7.4.1-replica", "valkey-8.1.8-replica", "valkey-9.0.0-replica", "valkey-9.1.2-replica");
        for (name, text) in masters {
            let info = Info::parse(text);
            let r = info.replication().unwrap();
            assert_eq!((r.role, r.connected_slaves, r.replicas.len()), (Role::Master, 1, 1), "{name}");
            assert_eq!(r.replicas[0].state, "online", "{name}");
            assert!(r.replicas[0].offset <= r.master_repl_offset && r.master_repl_offset > 0, "{name}");
            assert_eq!(info.mode(), Some("standalone"), "{name}");
            let want = name.trim_end_matches("-master").split_once('-').unwrap();
            let server = info.server().unwrap();
            assert_eq!((server.name(), server.version_string().as_str()), want, "{name}");
        }
        for (name, text) in replicas {
            let r = Info::parse(text).replication().unwrap();
            assert_eq!(r.role, Role::Replica, "{name}");
            assert!(r.linked(), "{name}");
            assert!(r.applied_offset() > 0 && r.master_port.is_some(), "{name}");
            assert_eq!(r.sync_progress, None, "{name}");
            // slave_read_repl_offset arrived in Redis 6.2.14 / 7.0 (not in 6.0.9 or 6.2.5).
            let old = name.starts_with("redis-6.0.") || name.starts_with("redis-6.2.5");
            assert_eq!(r.slave_read_repl_offset.is_none(), old, "{name}");
        }
    }

    /// Valkey 9.1 with dual-channel replication, during and after the initial sync.
    #[test]
    fn valkey_dual_channel_counts_one_replica_and_is_not_caught_up_early() {
        let [(_, master_syncing), (_, master_done), (_, syncing), (_, syncing2), (_, done)] = captured!(
            "valkey-9.1.2-dual-master-syncing", "valkey-9.1.2-dual-master-done",
            "valkey-9.1.2-dual-replica-syncing", "valkey-9.1.2-dual-replica-syncing2", "valkey-9.1.2-dual-replica-done"
        );
        assert_eq!(Info::parse(master_syncing).get("connected_slaves"), Some("2"), "the server counts the two channels");
        let m = Info::parse(master_syncing).replication().unwrap();
        assert_eq!((m.connected_slaves, m.replicas.len()), (1, 1));
        assert_eq!(m.replicas[0].state, "bg_transfer", "the main channel's entry is kept");
        assert!(!m.replicas.iter().any(|r| r.state == "online"));
        let m = Info::parse(master_done).replication().unwrap();
        assert_eq!((m.connected_slaves, m.replicas.len(), m.replicas[0].state.as_str()), (1, 1, "online"));
        for text in [syncing, syncing2] {
            let r = Info::parse(text).replication().unwrap();
            assert!(Info::parse(text).get("master_sync_left_bytes").unwrap().starts_with('-'));
            assert!(!r.linked() && r.master_sync_in_progress);
            assert_eq!(r.sync_progress, None, "total 0 and a negative remainder are no progress figure");
        }
        let r = Info::parse(done).replication().unwrap();
        assert!(r.linked());
        assert_eq!(r.applied_offset(), m.master_repl_offset);
    }

    #[test]
    fn sync_progress_when_the_size_is_known() {
        let r = Info::parse("role:slave\nmaster_sync_in_progress:1\nmaster_sync_total_bytes:1000\nmaster_sync_read_bytes:250\nmaster_sync_left_bytes:750\n").replication().unwrap();
        assert_eq!(r.sync_progress, Some((250, 1000)));
        let r = Info::parse("role:slave\nmaster_sync_total_bytes:-1\nmaster_sync_read_bytes:250\n").replication().unwrap();
        assert_eq!(r.sync_progress, None);
    }

    #[test]
    fn a_replica_without_a_listening_port_is_not_listed() {
        let m = Info::parse("role:master\nconnected_slaves:3\nslave0:ip=127.0.0.1,port=7001,state=wait_bgsave,offset=0,lag=0\nslave1:ip=127.0.0.1,port=0,state=wait_bgsave,offset=0,lag=0\nslave2:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\n").replication().unwrap();
        assert_eq!(m.replicas.iter().map(|r| r.port).collect::<Vec<_>>(), vec![7001, 7002]);
    }
}
