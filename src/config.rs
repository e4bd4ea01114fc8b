//! Agent settings: one typed tree, loaded once from defaults, TOML, Trove's oslo INI files and environment.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::oslo_ini;

/// The documented defaults, built into the binary.
pub const DEFAULTS: &str = include_str!("../etc/trove-guestagent.toml");
/// Environment variable prefix; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "TROVE_GUESTAGENT";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub rpc: RpcSettings,
    pub guest: GuestSettings,
    pub conductor: ConductorSettings,
    pub redis: RedisSettings,
    pub replication: ReplicationSettings,
    pub volume: VolumeSettings,
    pub backup: BackupSettings,
    pub guest_logs: GuestLogSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    /// Options found in Trove's INI files that this agent does not use (`[section] key`), for one debug line.
    #[serde(skip)]
    pub ignored_trove_options: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcSettings {
    pub transport_url: SecretString,
    pub control_exchange: String,
    pub durable_queues: bool,
    pub quorum_queues: bool,
    pub ha_queues: bool,
    pub transient_queues_ttl: u32,
    pub max_message_bytes: usize,
    pub heartbeat: u16,
    pub reconnect_max_backoff: u64,
    /// TLS to every broker host, whatever the URL says (oslo's `[oslo_messaging_rabbit] ssl`).
    pub ssl: bool,
    #[serde(deserialize_with = "opt_path")]
    pub ssl_ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "opt_path")]
    pub ssl_client_pkcs12: Option<PathBuf>,
    #[serde(deserialize_with = "opt_secret")]
    pub ssl_client_pkcs12_password: Option<SecretString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSettings {
    pub id: String,
    #[serde(deserialize_with = "opt_secret")]
    pub instance_rpc_encr_key: Option<SecretString>,
    #[serde(deserialize_with = "opt_path")]
    pub guest_info_file: Option<PathBuf>,
    pub datastore_manager: String,
    pub shutdown_grace: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConductorSettings {
    pub topic: String,
    pub report_interval: u64,
    /// Least time between two heartbeats, milliseconds.
    pub heartbeat_spacing_ms: u64,
}

/// How the agent controls the Redis process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Systemd,
    Supervised,
    External,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub service: ServiceKind,
    pub unit: String,
    pub binary: String,
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
    #[serde(deserialize_with = "opt_path")]
    pub state_file: Option<PathBuf>,
    pub port: u16,
    #[serde(deserialize_with = "opt_string")]
    pub advertise_host: Option<String>,
    #[serde(deserialize_with = "opt_string")]
    pub config_command: Option<String>,
    pub start_timeout: u64,
    pub stop_timeout: u64,
    /// Supervised mode: seconds a crashed replica source waits for a failover before its restart.
    pub hold_source_restart_s: u64,
    /// Redis `tls-port`; 0: no TLS listener.
    pub tls_port: u16,
    #[serde(deserialize_with = "opt_path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "opt_path")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "opt_path")]
    pub tls_ca_cert_file: Option<PathBuf>,
    pub tls_auth_clients: TlsAuthClients,
    /// Whether the agent's TLS client checks that a master's certificate names its address.
    pub tls_verify_hostname: bool,
    /// `[redis.servers]`: Trove datastore version name -> server binary (upgrade, rebuild).
    #[serde(default, deserialize_with = "string_map")]
    pub servers: std::collections::BTreeMap<String, String>,
}

/// Redis `tls-auth-clients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsAuthClients {
    Yes,
    Optional,
    No,
}

impl TlsAuthClients {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsAuthClients::Yes => "yes",
            TlsAuthClients::Optional => "optional",
            TlsAuthClients::No => "no",
        }
    }
}

/// The certificate files of a node with TLS on: its own certificate and key (also its client
/// certificate towards a master) and the CA that signs every node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_cert_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSettings {
    pub strategy: String,
    pub diskless_sync: bool,
    pub diskless_sync_delay: u32,
    pub diskless_sync_max_replicas: u32,
    pub enable_persistence: bool,
    pub default_save: String,
    pub disk_headroom: f64,
    pub sync_timeout: u64,
    pub wait_for_txn_timeout: u64,
    pub failover_detach_grace: u64,
    pub fence_timeout: u64,
    pub master_probe_timeout: u64,
    pub min_replicas_to_write: u32,
    /// With two or more replicas in the accepted topology, a master needs a majority of them.
    pub fence_majority: bool,
    pub min_replicas_max_lag: u32,
    #[serde(deserialize_with = "opt_string")]
    pub replication_user: Option<String>,
    #[serde(deserialize_with = "opt_secret")]
    pub replication_password: Option<SecretString>,
    /// Replicate over TLS: advertise `redis.tls_port`, and replicas use `tls-replication yes`.
    pub tls_replication: bool,
    /// Valkey 8.0+ dual-channel replication (`dual-channel-replication-enabled yes`) on every node.
    pub dual_channel_replication: bool,
}

/// The data volume (`prepare`'s `device_path`, `mount_volume`, `resize_fs`): Trove's
/// `volume_fstype`, `format_options`, `mount_options`, `volume_format_timeout`, and where it may go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    pub fstype: String,
    pub format_options: String,
    pub mount_options: String,
    pub format_timeout: u64,
    /// Mount points must be one of these directories or below one.
    #[serde(deserialize_with = "string_list")]
    pub allowed_mount_roots: Vec<PathBuf>,
    /// The file that records mounts for reboots.
    pub fstab: PathBuf,
    /// The data volume mounted at start-up when it holds a file system and is mounted nowhere
    /// (a rebuilt server's): Trove's `[redis] device_path`. Empty: none.
    pub device_path: String,
    /// Where that mount goes: Trove's `[redis] mount_point`.
    pub mount_point: String,
}

/// File systems the agent formats and grows.
pub const VOLUME_FSTYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs"];

/// Backups to Swift (Trove's `[DEFAULT] backup_*` and `swift_api_insecure` options).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// The container when the request names none (Trove: `backup_swift_container`).
    pub swift_container: String,
    /// Largest segment, bytes (Trove: `backup_segment_max_size`).
    pub segment_max_size: u64,
    /// Encrypts new backups and decrypts `.enc` ones (Trove: `backup_aes_cbc_key`). Empty: plain.
    #[serde(deserialize_with = "opt_secret")]
    pub aes_cbc_key: Option<SecretString>,
    /// Skip TLS verification towards Swift (Trove: `swift_api_insecure`).
    pub swift_api_insecure: bool,
    /// Seconds a backup waits for Redis's background save.
    pub snapshot_timeout: u64,
    /// Seconds `pre_create_backup`'s file-system freeze may last before the agent thaws it.
    pub freeze_timeout: u64,
}

/// Guest logs (`guest_log_list`, `guest_log_action`): where they go in Swift, and which users see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestLogSettings {
    /// Trove: `guest_log_container_name`.
    pub container: String,
    /// Largest published object, bytes (Trove: `guest_log_limit`).
    pub chunk_size: u64,
    /// Seconds Swift keeps a published object (Trove: `guest_log_expiry`).
    pub expiry: u64,
    /// Logs users who are not admins see, comma-separated; `all` (Trove: `[redis] guest_log_exposed_logs`).
    pub exposed: String,
    /// Directory of the Redis server's log when enabled (`<dir>/redis-general.log`).
    pub dir: PathBuf,
    /// Swift's URL up to `AUTH_` (the project id follows); empty: from the request's service
    /// catalog (Trove: `swift_url`, `swift_service_type`, `swift_endpoint_type`,
    /// `[service_credentials] region_name`).
    pub swift_url: String,
    pub swift_service_type: String,
    pub swift_endpoint_type: String,
    pub region_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    /// Append the log to this file instead of stderr.
    #[serde(deserialize_with = "opt_path")]
    pub file: Option<PathBuf>,
}

/// The Prometheus endpoint (`docs/metrics.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `address:port` served at `/metrics`; empty is off.
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl RedisSettings {
    /// The TLS certificate files, when all three are configured.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert_file: self.tls_cert_file.clone()?,
            key_file: self.tls_key_file.clone()?,
            ca_cert_file: self.tls_ca_cert_file.clone()?,
        })
    }

    /// The marker of a start the agent asked for (systemd mode), beside the state file.
    pub fn planned_start_path(&self) -> PathBuf {
        let mut p = self.state_path().into_os_string();
        p.push(".planned-start");
        PathBuf::from(p)
    }

    /// The epoch record (`replication::epoch`), beside the state file.
    pub fn epoch_path(&self) -> PathBuf {
        let mut p = self.state_path().into_os_string();
        p.push(".epoch");
        PathBuf::from(p)
    }

    /// The marker of backups started and not yet reported finished (`datastore::redis::backup_marker`), beside the state file.
    pub fn backup_marker_path(&self) -> PathBuf {
        let mut p = self.state_path().into_os_string();
        p.push(".backup");
        PathBuf::from(p)
    }

    /// The agent's own state file: configured, or beside the Redis config.
    pub fn state_path(&self) -> PathBuf {
        self.state_file.clone().unwrap_or_else(|| {
            let mut p = self.config_file.clone().into_os_string();
            p.push(".agent.json");
            PathBuf::from(p)
        })
    }
}

/// The agent's own environment variables, which child processes must not inherit (they may hold secrets).
pub fn agent_env_keys() -> Vec<std::ffi::OsString> {
    std::env::vars_os().map(|(k, _)| k).filter(|k| k.to_string_lossy().starts_with(ENV_PREFIX)).collect()
}

/// Loads the settings: defaults, then `file`, then guest_info.conf, then the environment.
pub fn load(file: Option<&Path>) -> Result<Settings, Error> {
    load_from(file, std::env::vars())
}

/// As `load`, with the environment given explicitly (for tests).
pub fn load_from(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, Error> {
    load_all(file, &[], env)
}

/// Loads the settings from every layer, later wins: the built-in defaults, the TOML `file`
/// (`--config`), the guest_info.conf that `[guest] guest_info_file` names, Trove's oslo INI
/// `trove_files` (`--config-file`/`--config-dir`, in command-line order), then the environment.
pub fn load_all(
    file: Option<&Path>,
    trove_files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, Error> {
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let file_text = match file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?),
        None => None,
    };
    let mut trove = oslo_ini::OsloConf::default();
    for path in trove_files {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.clone(), source })?;
        trove.add(&text, path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    // First pass: find guest_info_file and the datastore manager (which names Trove's datastore
    // section); either can come from any layer.
    let first = build(&[file_text.as_deref()], &env)?;
    let manager = trove.get("DEFAULT", "datastore_manager").map(|v| v.value.clone()).unwrap_or(first.guest.datastore_manager.clone());
    let guest_info = match &first.guest.guest_info_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
            let mut conf = oslo_ini::OsloConf::default();
            conf.add(&text, path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            Some(trove_layer(&conf, &manager)?.0)
        }
        None => None,
    };
    let (trove_text, ignored) = if trove_files.is_empty() { (None, Vec::new()) } else { let (t, i) = trove_layer(&trove, &manager)?; (Some(t), i) };
    let mut settings = build(&[file_text.as_deref(), guest_info.as_deref(), trove_text.as_deref()], &env)?;
    settings.ignored_trove_options = ignored;
    validate(&settings)?;
    Ok(settings)
}

fn build(layers: &[Option<&str>], env: &[(String, String)]) -> Result<Settings, Error> {
    use config::{File, FileFormat};
    let mut builder = config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    for text in layers.iter().flatten() {
        builder = builder.add_source(File::from_str(text, FileFormat::Toml));
    }
    for (key, value) in env {
        let path = key[ENV_PREFIX.len() + 2..].to_ascii_lowercase().replace("__", ".");
        if path.split('.').count() != 2 {
            return Err(Error::Invalid(format!("environment variable {key} must be {ENV_PREFIX}__<SECTION>__<KEY>")));
        }
        builder = builder
            .set_override(path.clone(), env_value(value))
            .map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
    }
    let config = builder.build().map_err(|e| Error::Invalid(e.to_string()))?;
    config.try_deserialize().map_err(|e| Error::Invalid(e.to_string()))
}

/// Environment values are strings; booleans and numbers are recognised like the TOML file's.
fn env_value(value: &str) -> config::Value {
    if let Ok(b) = value.parse::<bool>() {
        return b.into();
    }
    if let Ok(i) = value.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = value.parse::<f64>() {
        if value.contains('.') {
            return f.into();
        }
    }
    value.to_owned().into()
}

/// How a Trove option's value is read.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    /// An integer in `min..=max`.
    Int(i64, i64),
}

/// Trove's option → our key, for options that map one to one. `{ds}` is the datastore section.
const TROVE_OPTIONS: &[(&str, &str, &str, Kind)] = &[
    ("DEFAULT", "transport_url", "rpc.transport_url", Kind::Str),
    ("DEFAULT", "control_exchange", "rpc.control_exchange", Kind::Str),
    ("DEFAULT", "report_interval", "conductor.report_interval", Kind::Int(1, 86_400)),
    ("DEFAULT", "conductor_queue", "conductor.topic", Kind::Str),
    ("DEFAULT", "guest_id", "guest.id", Kind::Str),
    ("DEFAULT", "instance_rpc_encr_key", "guest.instance_rpc_encr_key", Kind::Str),
    ("DEFAULT", "datastore_manager", "guest.datastore_manager", Kind::Str),
    ("DEFAULT", "backup_swift_container", "backup.swift_container", Kind::Str),
    ("DEFAULT", "backup_segment_max_size", "backup.segment_max_size", Kind::Int(1, i64::MAX)),
    ("DEFAULT", "backup_aes_cbc_key", "backup.aes_cbc_key", Kind::Str),
    ("DEFAULT", "swift_api_insecure", "backup.swift_api_insecure", Kind::Bool),
    ("DEFAULT", "guest_log_container_name", "guest_logs.container", Kind::Str),
    ("DEFAULT", "guest_log_limit", "guest_logs.chunk_size", Kind::Int(1024, i64::MAX)),
    ("DEFAULT", "guest_log_expiry", "guest_logs.expiry", Kind::Int(1, i64::MAX)),
    ("redis", "guest_log_exposed_logs", "guest_logs.exposed", Kind::Str),
    ("DEFAULT", "swift_url", "guest_logs.swift_url", Kind::Str),
    ("DEFAULT", "swift_service_type", "guest_logs.swift_service_type", Kind::Str),
    ("DEFAULT", "swift_endpoint_type", "guest_logs.swift_endpoint_type", Kind::Str),
    ("service_credentials", "region_name", "guest_logs.region_name", Kind::Str),
    ("oslo_messaging_rabbit", "ssl", "rpc.ssl", Kind::Bool),
    ("oslo_messaging_rabbit", "ssl_ca_file", "rpc.ssl_ca_file", Kind::Str),
    ("oslo_messaging_rabbit", "rabbit_quorum_queue", "rpc.quorum_queues", Kind::Bool),
    ("oslo_messaging_rabbit", "rabbit_ha_queues", "rpc.ha_queues", Kind::Bool),
    ("oslo_messaging_rabbit", "amqp_durable_queues", "rpc.durable_queues", Kind::Bool),
    ("oslo_messaging_rabbit", "rabbit_transient_queues_ttl", "rpc.transient_queues_ttl", Kind::Int(1, 4_294_967)),
    ("oslo_messaging_rabbit", "heartbeat_timeout_threshold", "rpc.heartbeat", Kind::Int(0, 65_535)),
    ("oslo_messaging_rabbit", "rabbit_interval_max", "rpc.reconnect_max_backoff", Kind::Int(1, 3_600)),
    ("DEFAULT", "volume_fstype", "volume.fstype", Kind::Str),
    ("DEFAULT", "format_options", "volume.format_options", Kind::Str),
    ("DEFAULT", "mount_options", "volume.mount_options", Kind::Str),
    ("DEFAULT", "volume_format_timeout", "volume.format_timeout", Kind::Int(1, 86_400)),
    ("redis", "device_path", "volume.device_path", Kind::Str),
    ("redis", "mount_point", "volume.mount_point", Kind::Str),
];

/// Options handled below rather than in `TROVE_OPTIONS`.
const TROVE_SPECIAL: &[(&str, &str)] = &[
    ("DEFAULT", "debug"),
    ("DEFAULT", "log_dir"),
    ("DEFAULT", "log_file"),
    ("DEFAULT", "replication_strategy"),
    ("redis", "volume_support"),
    ("oslo_messaging_rabbit", "ssl_cert_file"),
    ("oslo_messaging_rabbit", "ssl_key_file"),
];

/// Renders Trove's oslo INI options as a TOML layer of our settings, and lists the options not
/// used. A value we cannot honour is refused, naming the option and its file (never the value).
fn trove_layer(conf: &oslo_ini::OsloConf, datastore: &str) -> Result<(String, Vec<String>), Error> {
    let refuse = |section: &str, key: &str, why: &str| {
        let file = conf.get(section, key).map(|v| v.file.display().to_string()).unwrap_or_default();
        Error::Invalid(format!("[{section}] {key} in {file}: {why}"))
    };
    let mut root = toml::Table::new();
    let mut set = |path: &str, value: toml::Value| {
        let (section, key) = path.split_once('.').expect("section.key");
        root.entry(section).or_insert_with(|| toml::Table::new().into()).as_table_mut().expect("table").insert(key.into(), value);
    };
    for &(section, key, ours, kind) in TROVE_OPTIONS {
        let Some(v) = conf.get(section, key) else { continue };
        let value = match kind {
            Kind::Str => toml::Value::String(v.value.clone()),
            Kind::Bool => toml::Value::Boolean(oslo_ini::parse_bool(&v.value).ok_or_else(|| refuse(section, key, "must be true or false"))?),
            Kind::Int(min, max) => match v.value.trim().parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => toml::Value::Integer(n),
                _ => return Err(refuse(section, key, &format!("must be an integer in {min}..{max}"))),
            },
        };
        set(ours, value);
    }
    if let Some(v) = conf.get("DEFAULT", "debug") {
        if oslo_ini::parse_bool(&v.value).ok_or_else(|| refuse("DEFAULT", "debug", "must be true or false"))? {
            set("log.level", "debug".into());
        }
    }
    // oslo.log: log_file inside log_dir; log_dir alone: <log_dir>/trove-guestagent.log.
    let nonempty = |key: &str| conf.get("DEFAULT", key).map(|v| v.value.trim().to_owned()).filter(|v| !v.is_empty());
    let log_file = match (nonempty("log_dir"), nonempty("log_file")) {
        (Some(dir), Some(file)) => Some(Path::new(&dir).join(file)),
        (None, Some(file)) => Some(PathBuf::from(file)),
        (Some(dir), None) => Some(Path::new(&dir).join("trove-guestagent.log")),
        (None, None) => None,
    };
    if let Some(path) = log_file {
        set("log.file", path.display().to_string().into());
    }
    // No Cinder volume: nothing to mount at start-up, whatever the device path says.
    if let Some(v) = conf.get("redis", "volume_support") {
        if !oslo_ini::parse_bool(&v.value).ok_or_else(|| refuse("redis", "volume_support", "must be true or false"))? {
            set("volume.device_path", "".into());
        }
    }
    for key in ["ssl_cert_file", "ssl_key_file"] {
        if conf.get("oslo_messaging_rabbit", key).is_some_and(|v| !v.value.trim().is_empty()) {
            return Err(refuse("oslo_messaging_rabbit", key, "PEM client certificates are not supported; give the agent a PKCS#12 file in [rpc] ssl_client_pkcs12 of its TOML config instead"));
        }
    }
    // Trove's own rule: [DEFAULT] replication_strategy (guest_info.conf, dotted) wins; else the
    // datastore section's replication_namespace + replication_strategy.
    let ds = oslo_ini::normalize_section(datastore);
    let strategy = match (nonempty("replication_strategy"), conf.get(&ds, "replication_strategy"), conf.get(&ds, "replication_namespace")) {
        (Some(dotted), _, _) => Some(("DEFAULT".to_owned(), "replication_strategy", dotted)),
        (None, name, Some(ns)) if !name.is_some_and(|n| n.value.contains('.')) => {
            let class = name.map(|n| n.value.trim().to_owned()).unwrap_or_else(|| "RedisSyncReplication".into());
            Some((ds.clone(), "replication_namespace", format!("{}.{class}", ns.value.trim())))
        }
        (None, Some(name), _) => Some((ds.clone(), "replication_strategy", name.value.clone())),
        (None, None, _) => None,
    };
    if let Some((section, key, name)) = strategy {
        crate::replication::resolve_strategy(&name).map_err(|why| refuse(&section, key, &why))?;
        set("replication.strategy", name.into());
    }
    let used = |s: &str, k: &str| {
        TROVE_OPTIONS.iter().any(|&(ts, tk, _, _)| ts == s && tk == k)
            || TROVE_SPECIAL.iter().any(|&(ts, tk)| ts == s && tk == k)
            || (s == ds && (k == "replication_strategy" || k == "replication_namespace"))
    };
    let ignored = conf.keys().filter(|(s, k)| !used(s, k)).map(|(s, k)| format!("[{s}] {k}")).collect();
    Ok((root.to_string(), ignored))
}

fn validate(s: &Settings) -> Result<(), Error> {
    let invalid = |key: &str, why: &str| Err(Error::Invalid(format!("{key}: {why}")));
    if s.guest.id.is_empty() {
        return invalid("guest.id", "must be set (or guest_id in guest_info.conf)");
    }
    if !s.guest.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return invalid("guest.id", "may contain only letters, digits, '-', '_' and '.'");
    }
    if s.redis.port == 0 {
        return invalid("redis.port", "must be 1..65535");
    }
    if s.redis.binary.trim().is_empty() || s.redis.binary.chars().any(char::is_control) {
        return invalid("redis.binary", "must name the server binary (e.g. redis-server or valkey-server)");
    }
    for (version, binary) in &s.redis.servers {
        let bad = |t: &str| t.trim().is_empty() || t.chars().any(char::is_control);
        if bad(version) || bad(binary) {
            return invalid("redis.servers", "maps datastore version names to server binaries; neither may be empty");
        }
    }
    if s.conductor.report_interval == 0 {
        return invalid("conductor.report_interval", "must be at least 1 second");
    }
    if s.conductor.heartbeat_spacing_ms > s.conductor.report_interval.saturating_mul(1000) {
        return invalid("conductor.heartbeat_spacing_ms", "must not exceed report_interval");
    }
    if s.guest.datastore_manager != "redis" {
        return invalid("guest.datastore_manager", "this agent serves only the redis datastore manager");
    }
    if let Err(e) = crate::replication::resolve_strategy(&s.replication.strategy) {
        return invalid("replication.strategy", &e);
    }
    if s.rpc.control_exchange.is_empty() {
        return invalid("rpc.control_exchange", "must not be empty");
    }
    if tracing_subscriber::EnvFilter::try_new(&s.log.level).is_err() {
        return invalid("log.level", "is not a level (trace, debug, info, warn, error) or a tracing filter directive");
    }
    if s.replication.disk_headroom < 0.0 || s.replication.disk_headroom.is_nan() {
        return invalid("replication.disk_headroom", "must be a non-negative number");
    }
    if let Err(e) = crate::rpc::transport::parse_transport_url(s.rpc.transport_url.expose_secret()) {
        return invalid("rpc.transport_url", &e.to_string());
    }
    if let Some(host) = &s.redis.advertise_host {
        if !crate::datastore::redis::conf::is_valid_host(host) {
            return invalid("redis.advertise_host", "is not a valid host name or address");
        }
    }
    if let Err(why) = crate::metrics::parse_listen(&s.metrics.listen) {
        return invalid("metrics.listen", &why);
    }
    validate_tls(s)?;
    validate_volume(&s.volume)?;
    if s.backup.swift_container.is_empty() || s.backup.swift_container.contains('/') {
        return invalid("backup.swift_container", "must be a container name (not empty, no '/')");
    }
    if s.backup.segment_max_size == 0 {
        return invalid("backup.segment_max_size", "must be at least 1 byte");
    }
    let nums: Vec<_> = s.replication.default_save.split_whitespace().collect();
    if nums.is_empty() || nums.len() % 2 != 0 || nums.iter().any(|n| n.parse::<u64>().is_err()) {
        return invalid("replication.default_save", "must be pairs of <seconds> <changes>");
    }
    Ok(())
}

fn validate_tls(s: &Settings) -> Result<(), Error> {
    let invalid = |key: &str, why: String| Err(Error::Invalid(format!("{key}: {why}")));
    let r = &s.redis;
    let files = [("redis.tls_cert_file", &r.tls_cert_file), ("redis.tls_key_file", &r.tls_key_file), ("redis.tls_ca_cert_file", &r.tls_ca_cert_file)];
    // A tls-port without files is offered only once `ssl_action` brings certificates.
    let wanted = s.replication.tls_replication;
    for (key, path) in files {
        match path {
            None if wanted => return invalid(key, "must be set when replication.tls_replication is on".into()),
            Some(p) => {
                if let Err(e) = std::fs::metadata(p) {
                    return invalid(key, format!("cannot read {}: {e}", p.display()));
                }
            }
            None => {}
        }
    }
    if r.tls_port != 0 && r.tls_port == r.port {
        return invalid("redis.tls_port", "must differ from redis.port".into());
    }
    if s.replication.tls_replication && r.tls_port == 0 {
        return invalid("replication.tls_replication", "needs redis.tls_port (the port replicas reach over TLS)".into());
    }
    Ok(())
}

fn validate_volume(v: &VolumeSettings) -> Result<(), Error> {
    let invalid = |key: &str, why: &str| Err(Error::Invalid(format!("volume.{key}: {why}")));
    if !VOLUME_FSTYPES.contains(&v.fstype.as_str()) {
        return invalid("fstype", &format!("must be one of {}", VOLUME_FSTYPES.join(", ")));
    }
    if v.format_options.chars().any(char::is_control) {
        return invalid("format_options", "must not contain control characters");
    }
    if v.mount_options.is_empty() || v.mount_options.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("mount_options", "must be a comma-separated option list without spaces (e.g. defaults,noatime)");
    }
    if v.format_timeout == 0 {
        return invalid("format_timeout", "must be at least 1 second");
    }
    if v.allowed_mount_roots.iter().any(|r| !r.is_absolute() || r == Path::new("/")) {
        return invalid("allowed_mount_roots", "must be absolute directories other than /");
    }
    if !v.fstab.is_absolute() {
        return invalid("fstab", "must be an absolute path");
    }
    let path_like = |p: &str| p.starts_with('/') && !p.chars().any(|c| c.is_whitespace() || c.is_control());
    if !v.device_path.is_empty() && !path_like(&v.device_path) {
        return invalid("device_path", "must be empty or an absolute device path such as /dev/vdb");
    }
    if !v.device_path.is_empty() && !path_like(&v.mount_point) {
        return invalid("mount_point", "must be an absolute path (the data volume's mount point)");
    }
    Ok(())
}

/// A list of paths: a TOML array, or one string of comma-separated paths (environment variables).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }
    let items = match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s.split(',').map(str::to_owned).collect(),
    };
    Ok(items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(PathBuf::from).collect())
}

/// A table of strings; numbers and booleans are refused (the config crate would turn them into strings).
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a string (a server binary)")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_owned()))
                }
            }
            d.deserialize_any(V)
        }
    }
    let map = std::collections::BTreeMap::<String, Text>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(if s.trim().is_empty() { None } else { Some(s) })
}

fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(opt_string(d)?.map(PathBuf::from))
}

fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(opt_string(d)?.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_plus_id_load() {
        let s = load_from(None, env(&[("TROVE_GUESTAGENT__GUEST__ID", "g1")])).unwrap();
        assert_eq!(s.guest.id, "g1");
        assert_eq!(s.rpc.control_exchange, "trove");
        assert_eq!(s.conductor.report_interval, 30);
        assert!(s.guest.instance_rpc_encr_key.is_none());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let info = dir.path().join("guest_info.conf");
        std::fs::write(&info, "[DEFAULT]\nguest_id=from-info\ninstance_rpc_encr_key=k123\n").unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, format!("[guest]\nid = \"from-file\"\nguest_info_file = \"{}\"\n[redis]\nport = 7000\n", info.display())).unwrap();
        let s = load_from(Some(&file), env(&[("TROVE_GUESTAGENT__REDIS__PORT", "7001")])).unwrap();
        assert_eq!(s.guest.id, "from-info");
        assert_eq!(s.guest.instance_rpc_encr_key.unwrap().expose_secret(), "k123");
        assert_eq!(s.redis.port, 7001);
    }

    /// Version names keep their dots and case (the config crate must not read them as paths).
    #[test]
    fn servers_table_keeps_version_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[redis.servers]\n\"7.0\" = \"/usr/bin/redis-server\"\n\"Valkey-9.1\" = \"/opt/valkey/bin/valkey-server\"\n").unwrap();
        let s = load_from(Some(&file), env(&[("TROVE_GUESTAGENT__GUEST__ID", "g1")])).unwrap();
        let servers: Vec<(&str, &str)> = s.redis.servers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(servers, [("7.0", "/usr/bin/redis-server"), ("Valkey-9.1", "/opt/valkey/bin/valkey-server")]);
        for bad in ["\"7.0\" = \"\"", "\"7.0\" = 1", "\"7.0\" = true", "\"7.0\" = [\"a\"]"] {
            std::fs::write(&file, format!("[redis.servers]\n{bad}\n")).unwrap();
            let e = load_from(Some(&file), env(&[("TROVE_GUESTAGENT__GUEST__ID", "g1")])).unwrap_err().to_string();
            assert!(e.contains("servers"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_input_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[rpc]\nbogus = 1\n", &[], "bogus"),
            ("[nosuch]\nx = 1\n", &[], "nosuch"),
            ("", &[("TROVE_GUESTAGENT__REDIS__PORT", "70000")], "port"),
            ("", &[("TROVE_GUESTAGENT__REDIS__SERVICE", "docker")], "docker"),
            ("[guest]\nid = \"a b\"\n", &[], "guest.id"),
            ("[guest]\nid = \"\"\n", &[], "guest.id"),
            ("[rpc]\ntransport_url = \"http://x\"\n", &[], "transport_url"),
            ("[replication]\ndefault_save = \"900\"\n", &[], "default_save"),
            ("[redis]\nbinary = \" \"\n", &[], "redis.binary"),
            ("[redis]\nadvertise_host = \"a\\nb\"\n", &[], "advertise_host"),
            ("[log]\nlevel = \"loud=[\"\n", &[], "log.level"),
            ("[replication]\ntls_replication = true\n", &[], "tls_cert_file"),
            ("[redis]\ntls_auth_clients = \"maybe\"\n", &[], "maybe"),
            ("[redis]\ntls_cert_file = \"/nonexistent/c.pem\"\n", &[], "tls_cert_file"),
            ("[metrics]\nlisten = \"localhost\"\n", &[], "metrics.listen"),
            ("", &[("TROVE_GUESTAGENT__METRICS__LISTEN", "1.2.3.4:99999")], "metrics.listen"),
        ];
        for (i, (text, extra, want)) in cases.iter().enumerate() {
            let file = dir.path().join(format!("c{i}.toml"));
            let text = if text.contains("[guest]") { text.to_string() } else { format!("[guest]\nid = \"g\"\n{text}") };
            std::fs::write(&file, text).unwrap();
            let err = load_from(Some(&file), env(extra)).unwrap_err().to_string();
            assert!(err.contains(want), "case {i}: {err}");
        }
    }

    /// guest_info.conf exactly as Trove 26's taskmanager writes it.
    const GUEST_INFO: &str = "[DEFAULT]\nguest_id=0c3f2a8e-1c1e-4b4e-9a43-3f5f0b7f0a11\ndatastore_manager=redis\ndatastore_version=7.0\ntenant_id=abc\ndatastore_registry_ext=redis:trove.guestagent.datastore.redis.manager.Manager\nreplication_strategy=trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication\nssl_mode=None\nnetwork_isolation=False\ninstance_rpc_encr_key=0123456789abcdef0123456789abcdef\n";

    /// An operator's trove-guestagent.conf, as Trove injects it next to guest_info.conf.
    const GUESTAGENT_CONF: &str = "[DEFAULT]\n# injected by the taskmanager\ntransport_url = rabbit://trove:s3cret@10.0.0.5:5672/\ncontrol_exchange = trove\nreport_interval = 10\ndebug = True\nlog_dir = /var/log/trove/\nlog_file = trove-guestagent.log\ncommand_process_timeout = 60\n\n[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\nheartbeat_timeout_threshold = 30\nheartbeat_rate = 2\nssl = false\n\n[service_credentials]\npassword = hidden\n";

    fn conf_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let files = oslo_ini::dir_files(dir.path()).unwrap();
        (dir, files)
    }

    #[test]
    fn trove_injected_files_configure_the_agent() {
        let (_dir, files) = conf_dir(&[("guest_info.conf", GUEST_INFO), ("trove-guestagent.conf", GUESTAGENT_CONF)]);
        let s = load_all(None, &files, env(&[])).unwrap();
        assert_eq!(s.guest.id, "0c3f2a8e-1c1e-4b4e-9a43-3f5f0b7f0a11");
        assert_eq!(s.guest.instance_rpc_encr_key.unwrap().expose_secret(), "0123456789abcdef0123456789abcdef");
        assert_eq!(s.rpc.transport_url.expose_secret(), "rabbit://trove:s3cret@10.0.0.5:5672/");
        assert_eq!(s.conductor.report_interval, 10);
        assert!(s.rpc.quorum_queues && !s.rpc.ssl);
        assert_eq!(s.rpc.heartbeat, 30);
        assert_eq!(s.log.level, "debug");
        assert_eq!(s.log.file.unwrap(), Path::new("/var/log/trove/trove-guestagent.log"));
        assert_eq!(s.replication.strategy, "trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication");
        let ignored = s.ignored_trove_options.join(", ");
        for key in ["[DEFAULT] datastore_version", "[DEFAULT] ssl_mode", "[DEFAULT] command_process_timeout", "[oslo_messaging_rabbit] heartbeat_rate", "[service_credentials] password"] {
            assert!(ignored.contains(key), "{ignored}");
        }
        assert!(!ignored.contains("guest_id") && !ignored.contains("transport_url"), "{ignored}");
    }

    #[test]
    fn precedence_defaults_toml_guest_info_trove_files_env() {
        let (dir, files) = conf_dir(&[("trove-guestagent.conf", "[DEFAULT]\ncontrol_exchange = from-ini\nreport_interval = 7\n[redis]\nreplication_namespace = trove.guestagent.strategies.replication.experimental.redis_sync\nreplication_strategy = RedisSyncReplication\n")]);
        let info = dir.path().join("info.ini");
        std::fs::write(&info, "[DEFAULT]\nguest_id=from-info\n").unwrap();
        let toml = dir.path().join("agent.toml");
        std::fs::write(&toml, format!("[guest]\nid = \"from-toml\"\nguest_info_file = \"{}\"\n[rpc]\ncontrol_exchange = \"from-toml\"\nheartbeat = 11\n[conductor]\nreport_interval = 5\n", info.display())).unwrap();
        let s = load_all(Some(&toml), &files, env(&[("TROVE_GUESTAGENT__CONDUCTOR__REPORT_INTERVAL", "9")])).unwrap();
        assert_eq!(s.guest.id, "from-info");
        assert_eq!(s.rpc.control_exchange, "from-ini");
        assert_eq!(s.rpc.heartbeat, 11);
        assert_eq!(s.conductor.report_interval, 9);
        assert_eq!(s.replication.strategy, "trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication");
        assert!(s.log.file.is_none());
    }

    #[test]
    fn strategy_namespace_given_separately_or_short() {
        for (ini, want) in [
            ("[redis]\nreplication_namespace = trove.guestagent.strategies.replication.experimental.redis_sync\n", "trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication"),
            ("[Redis]\nreplication_strategy = RedisSyncReplication\n", "RedisSyncReplication"),
            ("[DEFAULT]\nreplication_strategy = RedisSyncReplication\n[redis]\nreplication_strategy = Nonsense\n", "RedisSyncReplication"),
        ] {
            let (_dir, files) = conf_dir(&[("a.conf", &format!("[DEFAULT]\nguest_id = g\n{ini}"))]);
            assert_eq!(load_all(None, &files, env(&[])).unwrap().replication.strategy, want, "{ini}");
        }
    }

    #[test]
    fn trove_values_we_cannot_honour_are_refused_naming_the_key() {
        for (ini, want) in [
            ("[DEFAULT]\nreport_interval = soon\n", "[DEFAULT] report_interval in"),
            ("[DEFAULT]\nreport_interval = 0\n", "report_interval"),
            ("[DEFAULT]\ndebug = perhaps\n", "[DEFAULT] debug"),
            ("[DEFAULT]\ndatastore_manager = mysql\n", "datastore_manager"),
            ("[DEFAULT]\nreplication_strategy = trove.guestagent.strategies.replication.mysql_gtid.MysqlGTIDReplication\n", "[DEFAULT] replication_strategy"),
            ("[redis]\nreplication_namespace = elsewhere\n", "[redis] replication_namespace"),
            ("[oslo_messaging_rabbit]\nssl_cert_file = /etc/c.pem\n", "[oslo_messaging_rabbit] ssl_cert_file"),
            ("[oslo_messaging_rabbit]\nheartbeat_timeout_threshold = 70000\n", "heartbeat_timeout_threshold"),
            ("[oslo_messaging_rabbit]\nrabbit_quorum_queue = sometimes\n", "rabbit_quorum_queue"),
            ("[DEFAULT]\ntransport_url = kafka://h:9092/\n", "transport_url"),
            ("[DEFAULT]\nbroken line\n", "line 4"),
        ] {
            let (_dir, files) = conf_dir(&[("a.conf", &format!("[DEFAULT]\nguest_id = g\n{ini}"))]);
            let err = load_all(None, &files, env(&[])).unwrap_err().to_string();
            assert!(err.contains(want), "{ini}: {err}");
            assert!(!err.contains("soon") && !err.contains("perhaps"), "value leaked: {err}");
        }
    }

    /// The start-up mount's device: Trove's defaults, its `[redis]` options, none without volume support.
    #[test]
    fn trove_volume_options_name_the_boot_mount() {
        let s = load_from(None, env(&[("TROVE_GUESTAGENT__GUEST__ID", "g1")])).unwrap();
        assert_eq!((s.volume.device_path.as_str(), s.volume.mount_point.as_str()), ("/dev/vdb", "/var/lib/redis"));
        for (ini, device, mount_point) in [
            ("[redis]\ndevice_path = /dev/vdc\nmount_point = /mnt/redis\n", "/dev/vdc", "/mnt/redis"),
            ("[redis]\ndevice_path = /dev/vdc\nvolume_support = False\n", "", "/var/lib/redis"),
            ("[redis]\nvolume_support = True\n", "/dev/vdb", "/var/lib/redis"),
            ("[redis]\ndevice_path =\n", "", "/var/lib/redis"),
        ] {
            let (_dir, files) = conf_dir(&[("a.conf", &format!("[DEFAULT]\nguest_id = g\n{ini}"))]);
            let s = load_all(None, &files, env(&[])).unwrap();
            assert_eq!((s.volume.device_path.as_str(), s.volume.mount_point.as_str()), (device, mount_point), "{ini}");
            assert!(!s.ignored_trove_options.iter().any(|o| o.contains("volume_support") || o.contains("device_path")), "{ini}");
        }
        for (ini, want) in [
            ("[redis]\nvolume_support = maybe\n", "[redis] volume_support"),
            ("[redis]\ndevice_path = vdb\n", "volume.device_path"),
            ("[redis]\nmount_point = var/lib/redis\n", "volume.mount_point"),
        ] {
            let (_dir, files) = conf_dir(&[("a.conf", &format!("[DEFAULT]\nguest_id = g\n{ini}"))]);
            let err = load_all(None, &files, env(&[])).unwrap_err().to_string();
            assert!(err.contains(want), "{ini}: {err}");
        }
    }

    #[test]
    fn log_dir_alone_names_the_agent_log() {
        let (_dir, files) = conf_dir(&[("a.conf", "[DEFAULT]\nguest_id = g\nlog_dir = /var/log/trove\ndebug = false\n")]);
        let s = load_all(None, &files, env(&[])).unwrap();
        assert_eq!(s.log.file.unwrap(), Path::new("/var/log/trove/trove-guestagent.log"));
        assert_eq!(s.log.level, "info");
    }
}
