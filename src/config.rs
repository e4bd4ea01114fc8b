//! Agent settings: one typed tree, loaded once from defaults, file, guest_info.conf and environment.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

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
    pub log: LogSettings,
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
    pub min_replicas_max_lag: u32,
    #[serde(deserialize_with = "opt_string")]
    pub replication_user: Option<String>,
    #[serde(deserialize_with = "opt_secret")]
    pub replication_password: Option<SecretString>,
    /// Replicate over TLS: advertise `redis.tls_port`, and replicas use `tls-replication yes`.
    pub tls_replication: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
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
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let file_text = match file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?),
        None => None,
    };
    // First pass: find guest_info_file, which can itself come from the file or the environment.
    let first = build(file_text.as_deref(), None, &env)?;
    let guest_info = match &first.guest.guest_info_file {
        Some(path) => Some(guest_info_layer(path)?),
        None => None,
    };
    let settings = build(file_text.as_deref(), guest_info.as_deref(), &env)?;
    validate(&settings)?;
    Ok(settings)
}

fn build(file: Option<&str>, guest_info: Option<&str>, env: &[(String, String)]) -> Result<Settings, Error> {
    use config::{File, FileFormat};
    let mut builder = config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    if let Some(text) = file {
        builder = builder.add_source(File::from_str(text, FileFormat::Toml));
    }
    if let Some(text) = guest_info {
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

/// Reads Trove's guest_info.conf (INI) and renders its keys as a TOML layer.
fn guest_info_layer(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    let mut guest = toml::Table::new();
    let mut replication = toml::Table::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = toml::Value::String(value.trim().to_owned());
        match key.trim() {
            "guest_id" => guest.insert("id".into(), value),
            "instance_rpc_encr_key" => guest.insert("instance_rpc_encr_key".into(), value),
            "datastore_manager" => guest.insert("datastore_manager".into(), value),
            "replication_strategy" => replication.insert("strategy".into(), value),
            _ => None,
        };
    }
    let mut root = toml::Table::new();
    root.insert("guest".into(), guest.into());
    root.insert("replication".into(), replication.into());
    Ok(root.to_string())
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
    if s.conductor.report_interval == 0 {
        return invalid("conductor.report_interval", "must be at least 1 second");
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
    validate_tls(s)?;
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
    let wanted = r.tls_port != 0 || s.replication.tls_replication;
    for (key, path) in files {
        match path {
            None if wanted => return invalid(key, "must be set when redis.tls_port or replication.tls_replication is on".into()),
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
            ("[redis]\ntls_port = 6380\n", &[], "tls_cert_file"),
            ("[redis]\ntls_auth_clients = \"maybe\"\n", &[], "maybe"),
            ("[redis]\ntls_cert_file = \"/nonexistent/c.pem\"\n", &[], "tls_cert_file"),
        ];
        for (i, (text, extra, want)) in cases.iter().enumerate() {
            let file = dir.path().join(format!("c{i}.toml"));
            let text = if text.contains("[guest]") { text.to_string() } else { format!("[guest]\nid = \"g\"\n{text}") };
            std::fs::write(&file, text).unwrap();
            let err = load_from(Some(&file), env(extra)).unwrap_err().to_string();
            assert!(err.contains(want), "case {i}: {err}");
        }
    }
}
