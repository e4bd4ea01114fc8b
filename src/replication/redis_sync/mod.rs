//! `RedisSync`: Trove's RedisSyncReplication without restarts, with held-back failover detach and a real write fence.
//!
//! One file per concern: `source` (the replica source), `gather` (one diskless transfer for a
//! create's replicas), `attach`, `detach`, `fence`, `status` and `liveness` (a replica's own probe
//! of its master);
//! this file holds the strategy's state and maps `ReplicationStrategy` onto them.

mod attach;
mod detach;
mod fence;
mod gather;
mod liveness;
mod source;
mod status;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::epoch::Epochs;
use super::{MasterRef, ReplicationStrategy, Result, Snapshot, SnapshotRequest};
use crate::config::ReplicationSettings;
use crate::datastore::redis::admin::{Admin, TlsClient};
use crate::datastore::redis::RedisManager;
pub use attach::validate_master;
use fence::Fence;
pub use source::parse_source_config;

pub const NAME: &str = "RedisSyncReplication";

pub struct RedisSync {
    manager: Arc<RedisManager>,
    settings: ReplicationSettings,
    /// Serializes every call that changes replication state, timers included.
    op: Arc<Mutex<()>>,
    fence: Arc<Mutex<Option<Fence>>>,
    pending_detach: std::sync::Mutex<Option<CancellationToken>>,
    /// The epoch record: a master it deposes keeps its write fence (`fence::hold_if_deposed`).
    epochs: Arc<Epochs>,
    /// When the master this node follows last answered its agent's PING.
    heard: Arc<liveness::Heard>,
}

impl RedisSync {
    pub fn new(manager: Arc<RedisManager>, settings: ReplicationSettings, epochs: Arc<Epochs>) -> Self {
        manager.set_dual_channel(settings.dual_channel_replication);
        RedisSync {
            manager,
            settings,
            op: Arc::default(),
            fence: Arc::default(),
            pending_detach: std::sync::Mutex::new(None),
            epochs,
            heard: Arc::default(),
        }
    }

    fn cancel_pending_detach(&self) -> bool {
        match self.pending_detach.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    async fn admin(&self) -> Result<Admin> {
        Ok(self.manager.admin().await?)
    }

    fn advertise_host(&self) -> String {
        self.manager.settings.advertise_host.clone().unwrap_or_else(default_route_ipv4)
    }

    /// The port replicas reach: the TLS port with TLS replication, else the plain one.
    fn replication_port(&self) -> u16 {
        if self.settings.tls_replication {
            self.manager.settings.tls_port
        } else {
            self.manager.settings.port
        }
    }

    async fn master_ref(&self) -> MasterRef {
        use secrecy::ExposeSecret;
        let state = self.manager.snapshot_state().await;
        let root_password = state.root.as_ref().map(|r| r.password.clone());
        let (requirepass, masteruser) = match &self.settings.replication_user {
            Some(user) => (self.settings.replication_password.as_ref().map(|p| p.expose_secret().to_owned()), Some(user.clone())),
            None => (state.requirepass(), None),
        };
        // Client TLS enforced (`ssl_action`): the plain port is closed, replicas use the TLS one.
        let tls_only = state.ssl.is_some_and(|s| s.mode.tls_only());
        let tls_port = self.manager.settings.tls_port;
        MasterRef {
            host: self.advertise_host(),
            port: if tls_only { tls_port } else { self.replication_port() },
            requirepass,
            masteruser,
            tls: self.settings.tls_replication || tls_only,
            ssl_ports: (!self.settings.tls_replication && tls_port != 0)
                .then_some(crate::datastore::redis::ssl::MasterPorts { plain: self.manager.settings.port, tls: tls_port }),
            root_password,
        }
    }

    /// The TLS client for reaching a master's tls-port, from this node's certificate settings.
    fn tls_client(&self) -> Option<TlsClient> {
        Some(TlsClient { files: self.manager.tls_files()?, verify_hostname: self.manager.settings.tls_verify_hostname })
    }
}

/// The IPv4 address of the default-route interface (Trove's `get_my_ipv4`), else loopback.
pub fn default_route_ipv4() -> String {
    let iface = std::fs::read_to_string("/proc/net/route").ok().and_then(|t| {
        t.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(1) == Some(&"00000000")).then(|| cols[0].to_owned())
        })
    });
    if let (Some(iface), Ok(addrs)) = (iface, nix::ifaddrs::getifaddrs()) {
        for a in addrs {
            if a.interface_name == iface {
                if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                    return sin.ip().to_string();
                }
            }
        }
    }
    "127.0.0.1".into()
}

#[async_trait]
impl ReplicationStrategy for RedisSync {
    fn name(&self) -> &'static str {
        NAME
    }

    fn backup_required(&self) -> bool {
        false
    }

    async fn snapshot(&self, request: SnapshotRequest) -> Result<Snapshot> {
        self.source_snapshot(request).await
    }

    async fn attach(&self, master: &MasterRef, replica_config: Option<&str>) -> Result<()> {
        self.attach_to(master, replica_config).await
    }

    async fn detach(&self, for_failover: bool) -> Result<()> {
        self.detach_from_master(for_failover).await
    }

    async fn enable_as_master(&self, replica_source_config: Option<&str>) -> Result<()> {
        self.enable_master(replica_source_config).await
    }

    async fn demote(&self) -> Result<()> {
        self.demote_master().await
    }

    async fn replica_context(&self) -> Result<MasterRef> {
        Ok(self.master_ref().await)
    }

    async fn latest_txn_id(&self) -> Result<i64> {
        self.latest_offset().await
    }

    async fn last_txn(&self) -> Result<(Option<String>, i64)> {
        self.last_offset().await
    }

    async fn wait_for_txn(&self, txn: i64) -> Result<()> {
        self.wait_offset(txn).await
    }

    async fn make_read_only(&self, read_only: bool) -> Result<()> {
        self.set_read_only(read_only).await
    }

    async fn maintain(&self) -> Result<()> {
        self.maintain_fence().await
    }

    fn start(&self, cancel: CancellationToken) {
        let probe = liveness::probe_master(self.manager.clone(), self.settings.clone(), self.tls_client(), self.heard.clone(), cancel);
        tokio::spawn(probe);
    }

    async fn status(&self) -> Result<Value> {
        self.replication_status().await
    }

    async fn write_fenced(&self) -> bool {
        self.fence.lock().await.is_some()
    }
}
