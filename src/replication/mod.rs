//! The guest-side replication contract (`ReplicationStrategy`) and the factory keyed by Trove's names.
//! Nothing here knows about AMQP or envelopes; implementations ask the datastore manager to persist.

pub mod epoch;
pub mod redis_sync;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ReplicationSettings;
use crate::datastore::redis::RedisManager;

/// How a replica reaches its master (`snapshot.master`, `replica_info.master`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRef {
    pub host: String,
    pub port: u16,
    pub requirepass: Option<String>,
    /// The ACL user replicas authenticate as (our extension; absent: the default user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masteruser: Option<String>,
    /// The port is a TLS port: replicate with `tls-replication yes` (our extension; absent: plain).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// The master's plain and TLS ports when client TLS (`ssl_action`) may move the link (our extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_ports: Option<crate::datastore::redis::ssl::MasterPorts>,
    /// The master's root password (our extension): a replica takes it as its own `requirepass`,
    /// so root holds on every member, as Trove's root calls leave a set whose replicas existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password: Option<String>,
}

impl std::fmt::Debug for MasterRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterRef")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("masteruser", &self.masteruser)
            .field("tls", &self.tls)
            .field("ssl_ports", &self.ssl_ports)
            .field("requirepass", &self.requirepass.as_ref().map(|_| "<redacted>"))
            .field("root_password", &self.root_password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the master hands to new replicas; for Redis, just its address and password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub dataset: Dataset,
    pub replication_strategy: String,
    pub master: MasterRef,
    pub log_position: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub datastore_manager: String,
    pub dataset_size: f64,
    pub volume_size: f64,
    pub snapshot_id: Option<String>,
}

/// Options for taking a snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest {
    /// The taskmanager's rendered replica-source template.
    pub replica_source_config: Option<String>,
    /// How many replicas will attach (our extension of `snapshot_info`), to size diskless sync.
    pub replica_count: Option<u32>,
    /// Whether a master without persistence may turn it on (our extension); None: the operator's setting.
    pub enable_persistence: Option<bool>,
}

/// Errors the strategy reports; the RPC layer turns them into Trove exceptions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {name}: {reason}")]
    InvalidArgument { name: String, reason: String },
    #[error("Instance with replication strategy {guest} cannot replicate from instance with replication strategy {theirs}.")]
    Incompatible { guest: String, theirs: String },
    #[error("{0}")]
    Refused(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("stale epoch {got}: this guest has promised epoch {promised}")]
    StaleEpoch { got: u64, promised: u64 },
    #[error(transparent)]
    Datastore(#[from] crate::datastore::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The guest side of Trove's replication: one implementation per datastore strategy.
#[async_trait]
pub trait ReplicationStrategy: Send + Sync {
    /// Trove's config name (`replication_strategy`).
    fn name(&self) -> &'static str;
    /// Whether the taskmanager must take a backup before creating replicas.
    fn backup_required(&self) -> bool;
    /// Prepares this node as a replica source and describes how to reach it.
    async fn snapshot(&self, request: SnapshotRequest) -> Result<Snapshot>;
    /// Makes this node a read-only replica of `master`, persisted, and waits for the initial sync.
    async fn attach(&self, master: &MasterRef, replica_config: Option<&str>) -> Result<()>;
    /// Stops replicating; `for_failover` holds the detach back for a direct retarget.
    async fn detach(&self, for_failover: bool) -> Result<()>;
    /// Makes this node a writable master with the replica-source settings.
    async fn enable_as_master(&self, replica_source_config: Option<&str>) -> Result<()>;
    /// Removes the replica-source settings.
    async fn demote(&self) -> Result<()>;
    /// How replicas reach this node.
    async fn replica_context(&self) -> Result<MasterRef>;
    /// The offset this node has written (master) or applied (replica).
    async fn latest_txn_id(&self) -> Result<i64>;
    /// `(master host, applied offset)` of a replica.
    async fn last_txn(&self) -> Result<(Option<String>, i64)>;
    /// Waits until this replica has applied `txn`.
    async fn wait_for_txn(&self, txn: i64) -> Result<()>;
    /// Fences (true) or unfences (false) client writes.
    async fn make_read_only(&self, read_only: bool) -> Result<()>;
    /// Role, history id, offsets, link and fence state, for callers that compare nodes.
    async fn status(&self) -> Result<Value>;
    /// Periodic upkeep, called with the status probe (e.g. arming a split-brain fence).
    async fn maintain(&self) -> Result<()> {
        Ok(())
    }
    /// Whether the promote's write fence holds client writes back now (for metrics).
    async fn write_fenced(&self) -> bool {
        false
    }
    /// Starts the strategy's background tasks (e.g. a replica's probe of its master), until `cancel`.
    fn start(&self, _cancel: tokio_util::sync::CancellationToken) {}
}

/// Trove's namespaces for the Redis replication strategy (Trove's `[redis] replication_namespace`).
pub const REDIS_SYNC_NAMESPACES: &[&str] =
    &["trove.guestagent.strategies.replication.experimental.redis_sync", "trove.guestagent.strategies.replication.redis_sync"];

/// Resolves a strategy name as Trove spells it — short (`RedisSyncReplication`) or dotted with its
/// namespace (`trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication`,
/// as `guest_info.conf` carries it) — to the short name of a strategy this agent implements.
pub fn resolve_strategy(name: &str) -> std::result::Result<&'static str, String> {
    let name = name.trim();
    let (namespace, class) = match name.rsplit_once('.') {
        Some((ns, class)) => (Some(ns), class),
        None => (None, name),
    };
    if !matches!(class, "RedisSyncReplication" | "RedisSync") {
        return Err(format!("unknown replication strategy '{name}' (known: RedisSyncReplication, in {})", REDIS_SYNC_NAMESPACES[0]));
    }
    if let Some(ns) = namespace {
        if !REDIS_SYNC_NAMESPACES.contains(&ns) {
            return Err(format!("unknown replication namespace '{ns}' (known: {})", REDIS_SYNC_NAMESPACES.join(", ")));
        }
    }
    Ok("RedisSyncReplication")
}

/// The strategies this agent implements, by Trove's config name (short or dotted).
pub fn strategy_for(
    name: &str,
    manager: Arc<RedisManager>,
    settings: ReplicationSettings,
    epochs: Arc<epoch::Epochs>,
) -> std::result::Result<Arc<dyn ReplicationStrategy>, String> {
    match resolve_strategy(name)? {
        "RedisSyncReplication" => Ok(Arc::new(redis_sync::RedisSync::new(manager, settings, epochs))),
        other => Err(format!("replication strategy '{other}' has no implementation")),
    }
}

#[cfg(test)]
mod strategy_name_tests {
    use super::resolve_strategy;

    #[test]
    fn trove_spellings_resolve() {
        for name in [
            "RedisSyncReplication",
            "RedisSync",
            "trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication",
            " trove.guestagent.strategies.replication.redis_sync.RedisSyncReplication ",
        ] {
            assert_eq!(resolve_strategy(name), Ok("RedisSyncReplication"), "{name}");
        }
        for (name, want) in [
            ("trove.guestagent.strategies.replication.mysql_gtid.MysqlGTIDReplication", "MysqlGTIDReplication"),
            ("elsewhere.redis_sync.RedisSyncReplication", "namespace 'elsewhere.redis_sync'"),
            ("", "unknown replication strategy"),
            ("trove.guestagent.strategies.replication.experimental.redis_sync.", "unknown replication strategy"),
        ] {
            let err = resolve_strategy(name).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }
}
