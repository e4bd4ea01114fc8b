//! Which server the agent drives (Redis or Valkey, and its version) and what that version can do.

use serde::Serialize;

use super::info::Info;

/// Redis or Valkey at a version. Valkey reports `redis_version:7.2.4` for compatibility; its own
/// version is in `valkey_version`, and it has every replication feature of Redis 7.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Server {
    pub valkey: bool,
    pub version: (u32, u32, u32),
}

/// The oldest servers the agent supports: Redis 6.0 and Valkey 7.2.
pub const OLDEST_REDIS: (u32, u32, u32) = (6, 0, 0);
pub const OLDEST_VALKEY: (u32, u32, u32) = (7, 2, 0);

impl Server {
    /// From `INFO server`: `server_name:valkey` with `valkey_version`, else `redis_version`.
    pub fn from_info(info: &Info) -> Option<Server> {
        let valkey = info.get("server_name") == Some("valkey") || info.get("valkey_version").is_some();
        let version = if valkey { info.get("valkey_version").or_else(|| info.get("redis_version")) } else { info.get("redis_version") };
        Some(Server { valkey, version: parse_version(version?)? })
    }

    /// From `redis-server --version` (`Redis server v=7.0.15 sha=…`) or `valkey-server --version`
    /// (`Valkey server v=8.1.8 sha=…`).
    pub fn from_version_output(text: &str) -> Option<Server> {
        let valkey = text.trim_start().to_ascii_lowercase().starts_with("valkey");
        let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
        Some(Server { valkey, version: parse_version(v)? })
    }

    /// Runs `<binary> --version` (without the agent's environment); `None` when it cannot run.
    pub fn of_binary(binary: &str) -> Option<Server> {
        let mut cmd = std::process::Command::new(binary);
        for key in crate::config::agent_env_keys() {
            cmd.env_remove(key);
        }
        let out = cmd.arg("--version").stdin(std::process::Stdio::null()).output().ok()?;
        Server::from_version_output(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn name(&self) -> &'static str {
        if self.valkey {
            "valkey"
        } else {
            "redis"
        }
    }

    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }

    /// The Redis release whose replication features this server has (Valkey: at least 7.2).
    pub fn redis_equivalent(&self) -> (u32, u32, u32) {
        if self.valkey {
            self.version.max((7, 2, 0))
        } else {
            self.version
        }
    }

    /// `CLIENT PAUSE <ms> WRITE` (Redis 6.2+); older servers are fenced with min-replicas-to-write.
    pub fn has_pause_write(&self) -> bool {
        self.redis_equivalent() >= (6, 2, 0)
    }

    /// `repl-diskless-sync-max-replicas` (Redis 7.0+).
    pub fn has_diskless_sync_max_replicas(&self) -> bool {
        self.redis_equivalent() >= (7, 0, 0)
    }

    /// `repl-diskless-load flush-before-load` (Valkey only).
    pub fn has_flush_before_load(&self) -> bool {
        self.valkey
    }

    /// `dual-channel-replication-enabled` (Valkey 8.0+).
    pub fn has_dual_channel(&self) -> bool {
        self.valkey && self.version >= (8, 0, 0)
    }

    /// Why this server cannot run with `[replication] dual_channel_replication`, if it cannot.
    pub fn lacks_dual_channel(&self) -> Option<String> {
        (!self.has_dual_channel()).then(|| {
            format!("replication.dual_channel_replication is on, and {self} has no dual-channel replication (Valkey 8.0 or newer has it); turn the setting off or run Valkey 8.0+")
        })
    }

    /// Why the agent refuses this server, if it does.
    pub fn unsupported(&self) -> Option<String> {
        let oldest = if self.valkey { OLDEST_VALKEY } else { OLDEST_REDIS };
        (self.version < oldest).then(|| {
            format!("{} {} is not supported: the agent needs {} {}.{} or newer", self.name(), self.version_string(), self.name(), oldest.0, oldest.1)
        })
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name(), self.version_string())
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The INFO each server of the test matrix really sent (tests/fuzz-corpus/info/).
    /// (name-version, INFO text, Valkey, version)
    type Captured = (&'static str, &'static str, bool, (u32, u32, u32));
    const CAPTURED: &[Captured] = &[
        ("redis-6.0.9", include_str!("../../../tests/fuzz-corpus/info/redis-6.0.9-master.txt"), false, (6, 0, 9)),
        ("redis-6.2.5", include_str!("../../../tests/fuzz-corpus/info/redis-6.2.5-master.txt"), false, (6, 2, 5)),
        ("redis-6.2.14", include_str!("../../../tests/fuzz-corpus/info/redis-6.2.14-master.txt"), false, (6, 2, 14)),
        ("redis-7.0.15", include_str!("../../../tests/fuzz-corpus/info/redis-7.0.15-master.txt"), false, (7, 0, 15)),
        ("redis-7.2.4", include_str!("../../../tests/fuzz-corpus/info/redis-7.2.4-master.txt"), false, (7, 2, 4)),
        ("redis-7.4.1", include_str!("../../../tests/fuzz-corpus/info/redis-7.4.1-master.txt"), false, (7, 4, 1)),
        ("valkey-8.1.8", include_str!("../../../tests/fuzz-corpus/info/valkey-8.1.8-master.txt"), true, (8, 1, 8)),
        ("valkey-9.0.0", include_str!("../../../tests/fuzz-corpus/info/valkey-9.0.0-master.txt"), true, (9, 0, 0)),
        ("valkey-9.1.2", include_str!("../../../tests/fuzz-corpus/info/valkey-9.1.2-master.txt"), true, (9, 1, 2)),
    ];

    #[test]
    fn identity_from_captured_info() {
        for (name, text, valkey, version) in CAPTURED {
            let s = Server::from_info(&Info::parse(text)).unwrap_or_else(|| panic!("{name}"));
            assert_eq!((s.valkey, s.version), (*valkey, *version), "{name}");
            assert_eq!(s.to_string().replace(' ', "-"), *name);
            assert_eq!(s.unsupported(), None, "{name}");
        }
    }

    #[test]
    fn capabilities_by_version() {
        let redis = |v| Server { valkey: false, version: v };
        let valkey = |v| Server { valkey: true, version: v };
        // (server, CLIENT PAUSE WRITE, diskless-sync-max-replicas, flush-before-load)
        let cases = [
            (redis((6, 0, 9)), false, false, false),
            (redis((6, 2, 5)), true, false, false),
            (redis((6, 2, 14)), true, false, false),
            (redis((7, 0, 15)), true, true, false),
            (redis((7, 4, 1)), true, true, false),
            (valkey((8, 1, 8)), true, true, true),
            (valkey((9, 1, 2)), true, true, true),
        ];
        for (s, pause, max, flush) in cases {
            assert_eq!((s.has_pause_write(), s.has_diskless_sync_max_replicas(), s.has_flush_before_load()), (pause, max, flush), "{s}");
        }
        assert!(redis((5, 0, 14)).unsupported().unwrap().contains("redis 5.0.14 is not supported"));
        for (s, dual) in [(redis((7, 4, 1)), false), (redis((8, 0, 0)), false), (valkey((7, 2, 5)), false), (valkey((8, 0, 0)), true), (valkey((9, 1, 2)), true)] {
            assert_eq!(s.has_dual_channel(), dual, "{s}");
            assert_eq!(s.lacks_dual_channel().is_none(), dual, "{s}");
        }
        assert!(redis((7, 0, 15)).lacks_dual_channel().unwrap().contains("redis 7.0.15 has no dual-channel replication"));
        assert!(valkey((7, 0, 0)).unsupported().is_some());
    }

    #[test]
    fn identity_from_version_output() {
        let cases = [
            ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d7c971a948f0\n", false, (7, 0, 15)),
            ("Redis server v=6.0.9 sha=00000000:0 malloc=jemalloc-5.1.0 bits=64 build=1\n", false, (6, 0, 9)),
            ("Valkey server v=8.1.8 sha=00000000:1 malloc=libc bits=64 build=7eb4ebc9d7e91f4e\n", true, (8, 1, 8)),
        ];
        for (text, valkey, version) in cases {
            assert_eq!(Server::from_version_output(text), Some(Server { valkey, version }), "{text}");
        }
        assert_eq!(Server::from_version_output("garbage"), None);
        assert_eq!(Server::from_info(&Info::parse("role:master\n")), None);
    }
}
