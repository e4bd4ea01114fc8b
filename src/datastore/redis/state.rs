//! The agent's layered view of redis.conf, persisted atomically with mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::conf::{self, Override};
use crate::datastore::{Error, Result};

/// Where this node replicates from; survives restarts through redis.conf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaOf {
    pub host: String,
    pub port: u16,
    pub masterauth: Option<String>,
    #[serde(default)]
    pub masteruser: Option<String>,
    /// Replicate over TLS (`tls-replication yes`) to the master's tls-port.
    #[serde(default)]
    pub tls: bool,
    /// The master's plain and TLS ports, when it advertised both (`ssl_action` moves the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_ports: Option<super::ssl::MasterPorts>,
}

/// Settings a replica source carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterSettings {
    pub diskless_sync: bool,
    pub diskless_sync_delay: u32,
    pub diskless_sync_max_replicas: Option<u32>,
    /// `min-replicas-to-write` / `min-replicas-max-lag` (0: not set by the agent).
    #[serde(default)]
    pub min_replicas_to_write: u32,
    #[serde(default)]
    pub min_replicas_max_lag: u32,
}

/// Everything that makes up redis.conf, by layer: base < user < system < persistence < master < replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The configuration Trove rendered (prepare, reset, resize). None: not prepared.
    pub base: Option<String>,
    /// Configuration-group overrides.
    pub user: BTreeMap<String, Value>,
    /// Save points the agent turned on because the master had no persistence.
    pub persistence: Option<String>,
    pub master: Option<MasterSettings>,
    pub replica: Option<ReplicaOf>,
    /// `stop_db(do_not_start_on_reboot=True)`: Redis stays down at boot until a start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_start_on_boot: bool,
    /// The data volume `prepare` mounted; Redis's data directory is on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<crate::datastore::volume::VolumeRecord>,
    /// Root enabled (`enable_root`): its password is `requirepass`, above the user's overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<super::root::Root>,
    /// TLS for clients (`ssl_action`): the mode and its certificate files' generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<super::ssl::Ssl>,
    /// The setting before the last `ssl_action`, for `ssl_rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_saved: Option<super::ssl::Saved>,
    /// The Redis log enabled as a guest log (`guest_log_action`): `logfile`, above the user's overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<super::logs::RedisLog>,
    /// The server an upgrade or rebuild chose (`[redis.servers]`); None: `redis.binary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerChoice>,
}

/// A datastore version and the server binary that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerChoice {
    pub version: String,
    pub binary: String,
}

/// `repl-ping-replica-period` on a replica source: replicas then hear from a live master at least
/// every second, so a silent link means a cut one within seconds (Redis's default is 10 s).
pub const SOURCE_PING_PERIOD_S: u32 = 1;

/// Keys only the agent may set: user overrides of these are ignored.
pub const PROTECTED: &[&str] = &[
    "replicaof",
    "masterauth",
    "masteruser",
    "replica-read-only",
    "port",
    "dir",
    "daemonize",
    "tls-replication",
    "tls-port",
    "tls-cert-file",
    "tls-key-file",
    "tls-ca-cert-file",
    "tls-auth-clients",
];

/// Settings the agent forces whatever the base says.
pub struct System<'a> {
    pub port: u16,
    pub dir: &'a Path,
    pub daemonize: bool,
    /// TLS settings, when the agent is configured with certificates.
    pub tls: Option<TlsListener<'a>>,
    /// Valkey's dual-channel replication (`[replication] dual_channel_replication`), on every node.
    pub dual_channel: bool,
    /// A restore's first start: `appendonly no`, so that Redis loads the restored RDB.
    pub aof_off: bool,
}

/// The certificate settings the agent forces, and `tls-port` (0: no TLS listener, the
/// certificates serve only as a replica's client certificate).
pub struct TlsListener<'a> {
    pub port: u16,
    pub files: crate::config::TlsFiles,
    pub auth_clients: &'a str,
}

impl State {
    /// A replica source: it holds master settings (its replicas' snapshot was taken) and follows no one.
    pub fn is_source(&self) -> bool {
        self.master.is_some() && self.replica.is_none()
    }

    pub fn load(path: &Path) -> Result<Option<State>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::io(path, format!("corrupt state file: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::io(path, e))?;
        write_private(path, text.as_bytes())
    }

    /// The overrides, in order, that turn `base` into the running configuration.
    pub fn overrides(&self, system: &System<'_>) -> Vec<Override> {
        let mut out = Vec::new();
        for (key, value) in &self.user {
            if PROTECTED.contains(&conf::canonical(key).as_str()) {
                continue;
            }
            out.push(Override { key: key.clone(), lines: value_lines(key, value) });
        }
        if let Some(root) = &self.root {
            out.push(Override { key: "requirepass".into(), lines: vec![vec![root.password.clone()]] });
        }
        if let Some(log) = &self.log {
            out.push(Override::set("logfile", &[&log.file.display().to_string()]));
        }
        out.push(Override::set("port", &[&system.port.to_string()]));
        out.push(Override::set("dir", &[&system.dir.display().to_string()]));
        out.push(Override::set("daemonize", &[if system.daemonize { "yes" } else { "no" }]));
        if let Some(tls) = &system.tls {
            if tls.port != 0 {
                out.push(Override::set("tls-port", &[&tls.port.to_string()]));
            }
            let f = &tls.files;
            out.push(Override::set("tls-cert-file", &[&f.cert_file.display().to_string()]));
            out.push(Override::set("tls-key-file", &[&f.key_file.display().to_string()]));
            out.push(Override::set("tls-ca-cert-file", &[&f.ca_cert_file.display().to_string()]));
            out.push(Override::set("tls-auth-clients", &[tls.auth_clients]));
        }
        if system.dual_channel {
            out.push(Override::set("dual-channel-replication-enabled", &["yes"]));
        }
        if let Some(save) = &self.persistence {
            out.push(Override { key: "save".into(), lines: save_lines(save) });
        }
        if system.aof_off {
            out.push(Override::set("appendonly", &["no"]));
        }
        if let Some(m) = &self.master {
            out.push(Override::set("repl-diskless-sync", &[yes_no(m.diskless_sync)]));
            out.push(Override::set("repl-diskless-sync-delay", &[&m.diskless_sync_delay.to_string()]));
            out.push(Override::set("repl-ping-replica-period", &[&SOURCE_PING_PERIOD_S.to_string()]));
            if m.min_replicas_to_write > 0 {
                out.push(Override::set("min-replicas-to-write", &[&m.min_replicas_to_write.to_string()]));
                out.push(Override::set("min-replicas-max-lag", &[&m.min_replicas_max_lag.to_string()]));
            }
        }
        match &self.replica {
            Some(r) => {
                out.push(Override::set("replicaof", &[&r.host, &r.port.to_string()]));
                out.push(Override::set("replica-read-only", &["yes"]));
                match &r.masterauth {
                    Some(pw) => out.push(Override::set("masterauth", &[pw])),
                    None => out.push(Override::remove("masterauth")),
                }
                match &r.masteruser {
                    Some(user) => out.push(Override::set("masteruser", &[user])),
                    None => out.push(Override::remove("masteruser")),
                }
                match r.tls {
                    true => out.push(Override::set("tls-replication", &["yes"])),
                    false => out.push(Override::remove("tls-replication")),
                }
            }
            None => {
                out.push(Override::remove("replicaof"));
                out.push(Override::remove("masterauth"));
                out.push(Override::remove("masteruser"));
                out.push(Override::remove("tls-replication"));
            }
        }
        out
    }

    /// The full redis.conf text.
    pub fn render(&self, system: &System<'_>, major: u32) -> String {
        conf::render(self.base.as_deref().unwrap_or(""), &self.overrides(system), major)
    }

    /// `requirepass` as configured (root beats user overrides, which beat the base).
    pub fn requirepass(&self) -> Option<String> {
        if let Some(root) = &self.root {
            return Some(root.password.clone());
        }
        if let Some(v) = self.user.get("requirepass") {
            return Some(value_string(v)).filter(|s| !s.is_empty());
        }
        let directives = conf::parse(self.base.as_deref().unwrap_or("")).ok()?;
        conf::lookup(&directives, "requirepass").filter(|s| !s.is_empty())
    }

    /// The name of the CONFIG command, if the base renames it.
    pub fn config_command(&self) -> Option<String> {
        let directives = conf::parse(self.base.as_deref().unwrap_or("")).ok()?;
        directives
            .iter()
            .rev()
            .find(|d| d.key == "rename-command" && d.args.first().is_some_and(|a| a.eq_ignore_ascii_case("config")))
            .and_then(|d| d.args.get(1).cloned())
            .filter(|n| !n.is_empty())
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A typed override value as Redis expects it: booleans as yes/no, lists joined by spaces.
pub fn value_string(v: &Value) -> String {
    match v {
        Value::Bool(b) => yes_no(*b).to_owned(),
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(value_string).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// Directive lines for one override: `save` becomes one line per pair; secrets stay one argument.
fn value_lines(key: &str, v: &Value) -> Vec<Vec<String>> {
    let text = value_string(v);
    match conf::canonical(key).as_str() {
        "save" => save_lines(&text),
        "requirepass" | "masterauth" | "masteruser" | "dbfilename" | "appendfilename" => vec![vec![text]],
        _ if text.is_empty() => vec![vec![String::new()]],
        _ => vec![text.split_whitespace().map(str::to_owned).collect()],
    }
}

fn save_lines(save: &str) -> Vec<Vec<String>> {
    let words: Vec<&str> = save.split_whitespace().collect();
    if words.is_empty() {
        return vec![vec![String::new()]];
    }
    words.chunks(2).map(|pair| pair.iter().map(|w| w.to_string()).collect()).collect()
}

/// Makes a rename or removal durable: fsync of the directory that holds `path` (best effort).
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Writes a file atomically (temporary file, fsync, rename) with mode 0600. A file that exists
/// keeps its owner: under systemd the agent (root) rewrites Debian's redis:redis redis.conf,
/// which redis-server, running as redis, must still be able to read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(&tmp, e))?;
    if let Ok(old) = std::fs::metadata(path) {
        let new = f.metadata().map_err(|e| Error::io(&tmp, e))?;
        if (old.uid(), old.gid()) != (new.uid(), new.gid()) {
            if let Err(error) = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid())) {
                tracing::warn!(path = %path.display(), %error, "cannot keep the owner of the file being replaced");
            }
        }
    }
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn system(dir: &Path) -> System<'_> {
        System { port: 7000, dir, daemonize: false, tls: None, dual_channel: false, aof_off: false }
    }

    #[test]
    fn a_replica_source_pings_its_replicas_every_second_whatever_the_user_says() {
        let dir = Path::new("/data");
        let mut s = State { base: Some("port 6379\nrepl-ping-replica-period 10\n".into()), ..Default::default() };
        s.user.insert("repl-ping-replica-period".into(), json!(30));
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(conf::lookup(&d, "repl-ping-replica-period").as_deref(), Some("30"));
        let settings = MasterSettings { diskless_sync: true, diskless_sync_delay: 0, diskless_sync_max_replicas: None, min_replicas_to_write: 0, min_replicas_max_lag: 0 };
        s.master = Some(settings);
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(conf::lookup(&d, "repl-ping-replica-period").as_deref(), Some("1"));
    }

    #[test]
    fn replication_settings_beat_user_overrides_and_survive_base_changes() {
        let dir = Path::new("/data");
        let mut s = State { base: Some("port 6379\nsave 900 1\nslave-read-only no\n".into()), ..Default::default() };
        s.user.insert("slaveof".into(), json!("6.6.6.6 1"));
        s.user.insert("save".into(), json!("60 1 30 2"));
        s.user.insert("appendonly".into(), json!(true));
        s.replica = Some(ReplicaOf { host: "10.0.0.1".into(), port: 6379, masterauth: Some("p \"w".into()), masteruser: None, tls: false, master_ports: None });
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(conf::lookup(&d, "replicaof").as_deref(), Some("10.0.0.1 6379"));
        assert_eq!(conf::lookup(&d, "masterauth").as_deref(), Some("p \"w"));
        assert_eq!(conf::lookup(&d, "replica-read-only").as_deref(), Some("yes"));
        assert_eq!(conf::lookup(&d, "port").as_deref(), Some("7000"));
        assert_eq!(conf::lookup(&d, "appendonly").as_deref(), Some("yes"));
        assert_eq!(d.iter().filter(|d| d.key == "save").count(), 2);
        // A reset replaces the base; the replication settings stay.
        s.base = Some("port 6379\n".into());
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(conf::lookup(&d, "replicaof").as_deref(), Some("10.0.0.1 6379"));
        s.replica = None;
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(conf::lookup(&d, "replicaof"), None);
        assert_eq!(conf::lookup(&d, "masterauth"), None);
    }

    #[test]
    fn dual_channel_is_rendered_only_when_on_and_beats_a_user_override() {
        let dir = Path::new("/data");
        let mut s = State { base: Some("port 6379\n".into()), ..Default::default() };
        assert_eq!(conf::lookup(&conf::parse(&s.render(&system(dir), 9)).unwrap(), "dual-channel-replication-enabled"), None);
        s.user.insert("dual-channel-replication-enabled".into(), json!("no"));
        let on = System { dual_channel: true, ..system(dir) };
        let d = conf::parse(&s.render(&on, 9)).unwrap();
        assert_eq!(conf::lookup(&d, "dual-channel-replication-enabled").as_deref(), Some("yes"));
    }

    #[test]
    fn tls_listener_and_tls_replication() {
        let dir = Path::new("/data");
        let files = crate::config::TlsFiles { cert_file: "/etc/redis/n.crt".into(), key_file: "/etc/redis/n.key".into(), ca_cert_file: "/etc/redis/ca.crt".into() };
        let sys = System { port: 7000, dir, daemonize: false, tls: Some(TlsListener { port: 7443, files, auth_clients: "yes" }), dual_channel: false, aof_off: false };
        let mut s = State { base: Some("port 6379\ntls-replication yes\n".into()), ..Default::default() };
        s.user.insert("tls-port".into(), json!(1));
        s.user.insert("tls-replication".into(), json!("yes"));
        let d = conf::parse(&s.render(&sys, 7)).unwrap();
        assert_eq!(conf::lookup(&d, "tls-port").as_deref(), Some("7443"));
        assert_eq!(conf::lookup(&d, "tls-cert-file").as_deref(), Some("/etc/redis/n.crt"));
        assert_eq!(conf::lookup(&d, "tls-ca-cert-file").as_deref(), Some("/etc/redis/ca.crt"));
        assert_eq!(conf::lookup(&d, "tls-auth-clients").as_deref(), Some("yes"));
        assert_eq!(conf::lookup(&d, "tls-replication"), None, "only the replica layer sets tls-replication");
        s.replica = Some(ReplicaOf { host: "10.0.0.1".into(), port: 7443, masterauth: None, masteruser: None, tls: true, master_ports: None });
        let d = conf::parse(&s.render(&sys, 7)).unwrap();
        assert_eq!(conf::lookup(&d, "tls-replication").as_deref(), Some("yes"));
        assert_eq!(conf::lookup(&d, "replicaof").as_deref(), Some("10.0.0.1 7443"));
        s.replica = None;
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(conf::lookup(&d, "tls-replication"), None);
        assert_eq!(conf::lookup(&d, "tls-port"), None);
    }

    #[test]
    fn root_beats_the_user_and_base_password_and_goes_with_it() {
        let dir = Path::new("/data");
        let mut s = State { base: Some("requirepass base\n".into()), ..Default::default() };
        s.user.insert("requirepass".into(), json!("user"));
        let pw = "r \"q\" é #x";
        s.root = Some(super::super::root::Root { password: pw.into() });
        let d = conf::parse(&s.render(&system(dir), 7)).unwrap();
        assert_eq!(d.iter().filter(|d| d.key == "requirepass").map(|d| d.args.clone()).collect::<Vec<_>>(), vec![vec![pw.to_string()]]);
        assert_eq!(s.requirepass().as_deref(), Some(pw));
        // The state file round-trips it; without root, the user's password is back.
        let back: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.requirepass().as_deref(), Some(pw));
        s.root = None;
        assert_eq!(conf::lookup(&conf::parse(&s.render(&system(dir), 7)).unwrap(), "requirepass").as_deref(), Some("user"));
        assert!(!serde_json::to_string(&s).unwrap().contains("root"));
    }

    #[test]
    fn reads_password_and_renamed_config() {
        let s = State { base: Some("requirepass \"s3 cret\"\nrename-command CONFIG abc123\n".into()), ..Default::default() };
        assert_eq!(s.requirepass().as_deref(), Some("s3 cret"));
        assert_eq!(s.config_command().as_deref(), Some("abc123"));
    }

    #[test]
    fn private_files_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.conf");
        write_private(&p, b"a").unwrap();
        write_private(&p, b"b").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
    }

    #[test]
    fn a_rewritten_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("redis.conf");
        write_private(&p, b"a").unwrap();
        // As root (the agent under systemd), hand the file to another user first, as Debian's
        // redis:redis redis.conf is; otherwise the owner is ours and must stay ours.
        let me = std::fs::metadata(&p).unwrap().uid();
        let owner = if me == 0 { 1 } else { me };
        std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
        write_private(&p, b"b").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (owner, owner));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
    }
}
