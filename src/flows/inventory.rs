//! The inventory: which guests exist, their keys, and who replicates from whom (Trove's `slave_of_id`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read inventory {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("inventory {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write inventory {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestEntry {
    pub id: String,
    /// The instance RPC key (secure RPC); absent for plaintext guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The id of the guest this one replicates from; maintained by trove-guestctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,
}

impl std::fmt::Debug for GuestEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestEntry")
            .field("id", &self.id)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("replica_of", &self.replica_of)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub transport_url: String,
    #[serde(default = "default_exchange")]
    pub control_exchange: String,
    /// The deployment's oslo `amqp_durable_queues` and `rabbit_quorum_queue`, as the agents'
    /// `[rpc] durable_queues` / `quorum_queues`: either makes the control exchange durable, and
    /// the caller must declare it the same way as the agents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub durable_queues: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quorum_queues: bool,
    /// What a new replica source is given (Trove's rendered replica-source template): the
    /// diskless-sync settings. Empty: each agent's own `[replication] diskless_sync` applies.
    #[serde(default = "default_source_config", skip_serializing_if = "is_default_source_config")]
    pub replica_source_config: String,
    /// The replica set's name: what Sentinel clients ask `trove-guestctl watch` for.
    #[serde(default = "default_name")]
    pub name: String,
    /// Every watcher's discovery address (`host:port`), for `SENTINEL sentinels`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watchers: Vec<String>,
    /// The password clients give the discovery endpoint (its `requirepass`); none: no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_password: Option<Redacted>,
    /// Trove's API, for `trove-guestctl watch` to bring Trove's records in line after a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trove: Option<TroveApiConf>,
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestEntry>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Where Trove's API is and how the watcher authenticates: the project's endpoint
/// (`https://trove.example:8779/v1.0/<project id>`) and a file holding a token (mode 0600,
/// read again on every request, so it can be rotated in place).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TroveApiConf {
    pub url: String,
    pub token_file: PathBuf,
}

/// A secret string: serialized as itself, never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_name() -> String {
    "trove".into()
}

fn default_exchange() -> String {
    "trove".into()
}

fn default_source_config() -> String {
    super::REPLICA_SOURCE_CONFIG.into()
}

fn is_default_source_config(s: &str) -> bool {
    s == super::REPLICA_SOURCE_CONFIG
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Inventory, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Read { path: path.into(), reason: e.to_string() })?;
        let mut inv: Inventory = toml::from_str(&text).map_err(|e| Error::Invalid { path: path.into(), reason: e.to_string() })?;
        inv.path = path.into();
        inv.validate().map_err(|reason| Error::Invalid { path: path.into(), reason })?;
        Ok(inv)
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for g in &self.guests {
            if g.id.is_empty() || !g.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!("guest id {:?} may contain only letters, digits, '-', '_' and '.'", g.id));
            }
            if !seen.insert(g.id.as_str()) {
                return Err(format!("guest {} is listed twice", g.id));
            }
        }
        for g in &self.guests {
            if let Some(m) = &g.replica_of {
                if !seen.contains(m.as_str()) {
                    return Err(format!("guest {} is a replica of unknown guest {m}", g.id));
                }
            }
        }
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("name {:?} may contain only letters, digits, '-', '_' and '.'", self.name));
        }
        for w in &self.watchers {
            if w.rsplit_once(':').and_then(|(h, p)| p.parse::<u16>().ok().filter(|_| !h.is_empty())).is_none() {
                return Err(format!("watchers: {w:?} is not host:port"));
            }
        }
        crate::rpc::transport::parse_transport_url(&self.transport_url).map_err(|e| e.to_string())?;
        if let Some(t) = &self.trove {
            let url = url::Url::parse(&t.url).map_err(|e| format!("trove.url {:?}: {e}", t.url))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!("trove.url {:?} is not an http(s) URL of Trove's API", t.url));
            }
            if t.token_file.as_os_str().is_empty() {
                return Err("trove.token_file is empty".into());
            }
        }
        let directives = crate::datastore::redis::conf::parse(&self.replica_source_config)
            .map_err(|e| format!("replica_source_config: {e}"))?;
        for d in directives {
            let known = matches!(d.key.as_str(), "repl-diskless-sync" | "repl-diskless-sync-delay");
            let value = d.args.first().map(String::as_str).unwrap_or("");
            let valid = match d.key.as_str() {
                "repl-diskless-sync" => d.args.len() == 1 && matches!(value, "yes" | "no"),
                _ => d.args.len() == 1 && value.parse::<u32>().is_ok(),
            };
            if !known || !valid {
                return Err(format!(
                    "replica_source_config: '{}' is not 'repl-diskless-sync yes|no' or 'repl-diskless-sync-delay <seconds>'",
                    d.key
                ));
            }
        }
        Ok(())
    }

    /// Writes atomically (temp file + rename), mode 0600 (it may hold keys).
    pub fn save(&self) -> Result<(), Error> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Write { path: self.path.clone(), reason: e.to_string() })?;
        let header = "# trove-guestctl inventory: replica_of is maintained by trove-guestctl.\n";
        crate::datastore::redis::state::write_private(&self.path, format!("{header}{text}").as_bytes())
            .map_err(|e| Error::Write { path: self.path.clone(), reason: e.to_string() })
    }

    pub fn guest(&self, id: &str) -> Option<&GuestEntry> {
        self.guests.iter().find(|g| g.id == id)
    }

    pub fn replicas_of(&self, id: &str) -> Vec<String> {
        self.guests.iter().filter(|g| g.replica_of.as_deref() == Some(id)).map(|g| g.id.clone()).collect()
    }

    /// Records a topology change and saves at once, so an interrupted command leaves the file true.
    pub fn set_replica_of(&mut self, id: &str, master: Option<&str>) -> Result<(), Error> {
        if let Some(g) = self.guests.iter_mut().find(|g| g.id == id) {
            g.replica_of = master.map(str::to_owned);
        }
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.toml");
        std::fs::write(&p, "transport_url = \"rabbit://guest:guest@127.0.0.1:5672/\"\n[[guest]]\nid = \"a\"\n[[guest]]\nid = \"b\"\nkey = \"k\"\nreplica_of = \"a\"\n").unwrap();
        let mut inv = Inventory::load(&p).unwrap();
        assert_eq!(inv.control_exchange, "trove");
        assert_eq!(inv.replicas_of("a"), vec!["b".to_string()]);
        inv.set_replica_of("b", None).unwrap();
        let again = Inventory::load(&p).unwrap();
        assert!(again.replicas_of("a").is_empty());
        assert_eq!(again.guest("b").unwrap().key.as_deref(), Some("k"));
        assert_eq!(again.replica_source_config, crate::flows::REPLICA_SOURCE_CONFIG);
        assert!(!std::fs::read_to_string(&p).unwrap().contains("replica_source_config"), "the default is not written out");
        assert!(!again.quorum_queues && !again.durable_queues);
        std::fs::write(&p, "transport_url = \"rabbit://a:1,b:2/\"\nquorum_queues = true\n[[guest]]\nid = \"a\"\n").unwrap();
        let mut inv = Inventory::load(&p).unwrap();
        inv.set_replica_of("a", None).unwrap();
        assert!(Inventory::load(&p).unwrap().quorum_queues, "quorum_queues survives a rewrite");
        std::fs::write(&p, "transport_url = \"rabbit://h/\"\nreplica_source_config = \"repl-diskless-sync no\\n\"\n[[guest]]\nid = \"a\"\n").unwrap();
        let mut inv = Inventory::load(&p).unwrap();
        inv.set_replica_of("a", None).unwrap();
        assert_eq!(Inventory::load(&p).unwrap().replica_source_config, "repl-diskless-sync no\n");
        for bad in [
            "transport_url = \"rabbit://h/\"\n[[guest]]\nid = \"a\"\n[[guest]]\nid = \"a\"\n",
            "transport_url = \"rabbit://h/\"\n[[guest]]\nid = \"a\"\nreplica_of = \"zz\"\n",
            "transport_url = \"rabbit://h/\"\n[[guest]]\nid = \"a b\"\n",
            "transport_url = \"rabbit://h/\"\nbogus = 1\n",
            "transport_url = \"ftp://h/\"\n",
            "transport_url = \"rabbit://h/\"\nreplica_source_config = \"maxmemory 1\"\n",
            "transport_url = \"rabbit://h/\"\nreplica_source_config = \"repl-diskless-sync maybe\"\n",
            "transport_url = \"rabbit://h/\"\nreplica_source_config = \"repl-diskless-sync-delay -1\"\n",
            "transport_url = \"rabbit://h/\"\n[trove]\nurl = \"ftp://t/v1.0/p\"\ntoken_file = \"/t\"\n",
            "transport_url = \"rabbit://h/\"\n[trove]\nurl = \"http://t/v1.0/p\"\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(Inventory::load(&p).is_err(), "{bad}");
        }
    }
}
