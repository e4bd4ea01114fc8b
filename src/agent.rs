//! The agent: wires config, datastore, strategy, RPC server and heartbeats, and shuts down gracefully.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::datastore::redis::RedisManager;
use crate::datastore::volume::{BootMount, Volumes};
use crate::datastore::ServiceStatus;
use crate::methods::Guest;
use crate::metrics::{self, AgentCounters};
use crate::replication;
use crate::rpc::{self, crypto::Cipher, publisher::Publisher, server::RpcServer, AmqpOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("datastore: {0}")]
    Datastore(#[from] crate::datastore::Error),
    #[error("replication.strategy: {0}")]
    Strategy(String),
    #[error("redis.binary: {0}")]
    UnsupportedServer(String),
    #[error("metrics.listen: {0}")]
    Metrics(String),
}

/// Options a caller may add (tests use `on_consuming` to know when the agent is ready).
#[derive(Default)]
pub struct Hooks {
    pub on_consuming: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

/// Logs the server the agent drives, and refuses one it does not support, or one without
/// dual-channel replication when that is configured.
fn check_server(binary: &str, dual_channel: bool) -> Result<(), Error> {
    match crate::datastore::redis::server::Server::of_binary(binary) {
        Some(server) => match server.unsupported().or_else(|| server.lacks_dual_channel().filter(|_| dual_channel)) {
            Some(why) => Err(Error::UnsupportedServer(format!("{why} ({binary})"))),
            None => {
                tracing::info!(%server, binary, "server detected");
                Ok(())
            }
        },
        None => {
            tracing::warn!(binary, "cannot run the server binary's --version: server not identified");
            Ok(())
        }
    }
}

/// `trove-guestagent --guard-redis-start` (systemd's `ExecStartPre` for Redis): see
/// `RedisManager::guard_systemd_start`.
pub fn guard_redis_start(settings: &Settings) -> Result<bool, Error> {
    let epochs = replication::epoch::Epochs::load(settings.redis.epoch_path(), &settings.guest.id).map_err(|e| Error::Strategy(e.to_string()))?;
    Ok(RedisManager::guard_systemd_start(&settings.redis, epochs.guards_start())?)
}

/// Mounts the data volume before the state file, which lives on it, is read (`Volumes::mount_at_boot`).
/// Never stops the start; Redis still never starts on the directory beneath (`check_volume`, `rebuild`).
async fn mount_data_volume(settings: &Settings) {
    let volumes = Volumes::new(settings.volume.clone(), crate::datastore::redis::manager::REDIS_USER);
    let (device, mount_point) = (settings.volume.device_path.as_str(), settings.volume.mount_point.as_str());
    match volumes.mount_at_boot().await {
        Ok(BootMount::Off) => tracing::debug!("no [volume] device_path: no data volume to mount at start-up"),
        Ok(BootMount::NoDevice) => tracing::info!(device, "no data volume attached (the device does not exist): nothing to mount at start-up"),
        Ok(BootMount::Blank) => tracing::info!(device, "the data volume holds no file system yet: prepare formats and mounts it"),
        Ok(BootMount::AlreadyMounted) => tracing::info!(device, mount_point, "the data volume is mounted already"),
        Ok(BootMount::Mounted { fstype }) => tracing::info!(device, mount_point, %fstype, "mounted the data volume at start-up"),
        Err(error) => tracing::error!(%error, device, mount_point, "the data volume was not mounted at start-up; the agent starts without it"),
    }
}

/// Runs the agent until `cancel` fires.
pub async fn run(settings: Settings, cancel: CancellationToken, hooks: Hooks) -> Result<(), Error> {
    mount_data_volume(&settings).await;
    let manager = Arc::new(RedisManager::new(settings.redis.clone(), settings.volume.clone())?);
    check_server(&manager.binary(), settings.replication.dual_channel_replication)?;
    let epochs = Arc::new(
        replication::epoch::Epochs::load(settings.redis.epoch_path(), &settings.guest.id).map_err(|e| Error::Strategy(e.to_string()))?,
    );
    let strategy = replication::strategy_for(&settings.replication.strategy, manager.clone(), settings.replication.clone(), epochs.clone())
        .map_err(Error::Strategy)?;
    let background = cancel.child_token();
    manager.guard_source_starts(epochs.guards_start());
    manager.boot(background.clone()).await?;
    strategy.start(background.clone());
    let (status_tx, status_rx) = watch::channel(ServiceStatus::New);
    let cipher = settings.guest.instance_rpc_encr_key.as_ref().map(Cipher::new);
    let (handle, publisher) = rpc::publisher::publisher();
    let conductor = Arc::new(ConductorCasts {
        publisher: publisher.clone(),
        exchange: settings.rpc.control_exchange.clone(),
        topic: settings.conductor.topic.clone(),
        instance_id: settings.guest.id.clone(),
        cipher: cipher.clone(),
    });
    // Read before any call is served: every backup named here was started by an agent that died.
    let marker = Arc::new(crate::datastore::redis::backup_marker::BackupMarker::new(settings.redis.backup_marker_path()));
    let interrupted = crate::methods::interrupted_backups(&marker);
    if !interrupted.is_empty() {
        tokio::spawn(crate::methods::report_interrupted(interrupted, conductor.clone(), marker.clone(), background.clone()));
    }
    let backups = crate::methods::Backups { settings: settings.backup.clone(), conductor, marker };
    let logs = crate::datastore::redis::logs::GuestLogs::new(
        settings.guest_logs.clone(),
        settings.guest.id.clone(),
        settings.log.file.clone(),
        settings.backup.swift_api_insecure,
    );
    let guest = Arc::new(Guest::new(manager.clone(), strategy.clone(), epochs, status_tx.clone(), backups, logs));
    let counters = Arc::new(AgentCounters::default());
    let endpoint = Arc::new(Counted { inner: guest, counters: counters.clone() });
    if let Some(addr) = metrics::parse_listen(&settings.metrics.listen).map_err(Error::Metrics)? {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Metrics(format!("cannot listen on {addr}: {e}")))?;
        tracing::info!(%addr, "metrics served at /metrics");
        let render = agent_metrics(manager.clone(), strategy.clone(), counters.clone(), status_rx.clone(), settings.guest.id.clone());
        tokio::spawn(metrics::serve(listener, render, background.clone()));
    }
    let opts = AmqpOptions {
        transport_url: secrecy::SecretString::from(settings.rpc.transport_url.expose_secret().to_owned()),
        control_exchange: settings.rpc.control_exchange.clone(),
        durable: settings.rpc.durable_queues,
        quorum: settings.rpc.quorum_queues,
        ha: settings.rpc.ha_queues,
        transient_ttl_ms: settings.rpc.transient_queues_ttl.saturating_mul(1000),
        heartbeat: settings.rpc.heartbeat,
        ssl: settings.rpc.ssl,
        ssl_ca_file: settings.rpc.ssl_ca_file.clone(),
        ssl_client_pkcs12: settings.rpc.ssl_client_pkcs12.clone(),
        ssl_client_pkcs12_password: settings.rpc.ssl_client_pkcs12_password.clone(),
        connection_name: format!("trove-guestagent:{}", settings.guest.id),
    };
    let heartbeat = Heartbeat {
        publisher: publisher.clone(),
        exchange: settings.rpc.control_exchange.clone(),
        topic: settings.conductor.topic.clone(),
        instance_id: settings.guest.id.clone(),
        cipher: cipher.clone(),
        interval: Duration::from_secs(settings.conductor.report_interval),
        pacer: Pacer::new(Duration::from_millis(settings.conductor.heartbeat_spacing_ms)),
        counters,
    };
    let heartbeat_task = tokio::spawn(heartbeat.clone().run(manager.clone(), strategy, status_tx, status_rx, background.clone()));
    let server = RpcServer {
        opts,
        topic: format!("guestagent.{}", settings.guest.id),
        server: settings.guest.id.clone(),
        endpoint,
        cipher,
        max_body: settings.rpc.max_message_bytes,
        reconnect_max_backoff: Duration::from_secs(settings.rpc.reconnect_max_backoff.max(1)),
        publisher,
        publisher_handle: handle,
        on_consuming: hooks.on_consuming,
    };
    let tracker = TaskTracker::new();
    server.run(cancel.clone(), tracker.clone()).await;
    tracker.close();
    let grace = Duration::from_secs(settings.guest.shutdown_grace);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace_s = grace.as_secs(), "in-flight calls did not finish within the grace period");
    }
    background.cancel();
    let _ = heartbeat_task.await;
    let last = manager.status().await;
    heartbeat.pacer.wait().await;
    if let Err(error) = heartbeat.send(last).await {
        tracing::warn!(%error, "last heartbeat not sent");
    }
    heartbeat.publisher.close().await;
    tracing::info!(status = last.description(), "agent stopped");
    Ok(())
}

/// `methods::Conductor` over the publisher.
struct ConductorCasts {
    publisher: Publisher,
    exchange: String,
    topic: String,
    instance_id: String,
    cipher: Option<Cipher>,
}

#[async_trait::async_trait]
impl crate::methods::Conductor for ConductorCasts {
    async fn update_backup(&self, backup_id: &str, fields: serde_json::Map<String, serde_json::Value>) -> Result<(), rpc::Error> {
        let state = fields.get("state").and_then(|s| s.as_str()).unwrap_or_default().to_owned();
        let sent = rpc::conductor::send_update_backup(&self.publisher, &self.exchange, &self.topic, &self.instance_id, backup_id, fields, self.cipher.as_ref()).await;
        match &sent {
            Ok(()) => tracing::debug!(backup = backup_id, state, "update_backup sent"),
            Err(error) => tracing::warn!(%error, backup = backup_id, state, "update_backup not sent"),
        }
        sent
    }
}

/// The guest endpoint, counting calls by method and outcome.
struct Counted {
    inner: Arc<Guest>,
    counters: Arc<AgentCounters>,
}

#[async_trait::async_trait]
impl rpc::dispatch::Endpoint for Counted {
    async fn call(&self, method: &str, args: serde_json::Map<String, serde_json::Value>, context: rpc::dispatch::CallContext) -> Result<serde_json::Value, rpc::failure::RemoteFailure> {
        let result = self.inner.call(method, args, context).await;
        self.counters.rpc_call(method, result.as_ref().map(|_| "ok").unwrap_or_else(|f| f.class.as_str()));
        result
    }
}

/// One scrape: one INFO of the local Redis (2 s at most; `redis_up 0` without it), then the agent's own.
fn agent_metrics(
    manager: Arc<RedisManager>,
    strategy: Arc<dyn replication::ReplicationStrategy>,
    counters: Arc<AgentCounters>,
    status: watch::Receiver<ServiceStatus>,
    instance_id: String,
) -> metrics::Render {
    Arc::new(move || {
        let (manager, strategy, counters, status, instance_id) = (manager.clone(), strategy.clone(), counters.clone(), status.clone(), instance_id.clone());
        Box::pin(async move {
            use metrics::Kind::Gauge;
            let read = async {
                let mut admin = manager.admin().await.ok()?;
                admin.info("all").await.ok()
            };
            let info = tokio::time::timeout(Duration::from_secs(2), read).await.ok().flatten();
            let mut out = metrics::Text::new();
            crate::datastore::redis::metrics::encode(&mut out, info.as_ref());
            out.family("trove_guestagent_info", Gauge, "The agent: its Trove instance id");
            out.sample("trove_guestagent_info", &[("instance_id", &instance_id), ("version", env!("CARGO_PKG_VERSION"))], 1.0);
            let current = *status.borrow();
            out.family("trove_guestagent_status", Gauge, "The status the agent reports to Trove's conductor (1 for the current one)");
            out.sample("trove_guestagent_status", &[("status", current.description())], 1.0);
            counters.encode(&mut out);
            let held = manager.held().await;
            out.single("trove_guestagent_restart_held_back", Gauge, "1 while the restart of this crashed replica source is held back for a failover", f64::from(u8::from(held)));
            let fenced = strategy.write_fenced().await;
            out.single("trove_guestagent_write_fenced", Gauge, "1 while the promote's write fence holds client writes back", f64::from(u8::from(fenced)));
            let min_replicas = manager.snapshot_state().await.master.map(|m| m.min_replicas_to_write).unwrap_or(0);
            out.single("trove_guestagent_split_brain_fence_min_replicas", Gauge, "min-replicas-to-write the agent set on this master (0: none)", f64::from(min_replicas));
            out.finish()
        })
    })
}

#[derive(Clone)]
struct Heartbeat {
    publisher: Publisher,
    exchange: String,
    topic: String,
    instance_id: String,
    cipher: Option<Cipher>,
    interval: Duration,
    pacer: Pacer,
    counters: Arc<AgentCounters>,
}

/// Spaces heartbeats: at most one per `spacing`. Trove's conductor handles casts concurrently, so
/// two heartbeats close together can be written out of order (or collide on the heartbeat row);
/// a status change that comes sooner waits, and the status sent is the latest at sending time.
#[derive(Clone)]
struct Pacer {
    spacing: Duration,
    last: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Pacer {
    fn new(spacing: Duration) -> Pacer {
        Pacer { spacing, last: Arc::default() }
    }

    /// Waits until a heartbeat may go, and reserves that moment for it.
    async fn wait(&self) {
        let at = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let at = last.map(|l| (l + self.spacing).max(now)).unwrap_or(now);
            *last = Some(at);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

impl Heartbeat {
    async fn send(&self, status: ServiceStatus) -> Result<(), rpc::Error> {
        let sent = rpc::conductor::send_heartbeat(&self.publisher, &self.exchange, &self.topic, &self.instance_id, status.description(), self.cipher.as_ref())
            .await;
        let counter = if sent.is_ok() { &self.counters.heartbeats_sent } else { &self.counters.heartbeats_failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sent
    }

    /// Heartbeats on start, every interval, and on every status change: spaced by the pacer, and
    /// each carrying the status current when it goes (a burst of changes is coalesced).
    async fn run(
        self,
        manager: Arc<RedisManager>,
        strategy: Arc<dyn replication::ReplicationStrategy>,
        status_tx: watch::Sender<ServiceStatus>,
        mut status_rx: watch::Receiver<ServiceStatus>,
        cancel: CancellationToken,
    ) {
        status_tx.send_replace(manager.status().await);
        let probe_every = self.interval.min(Duration::from_secs(5));
        let mut last_sent = tokio::time::Instant::now() - self.interval;
        let mut probe = tokio::time::interval(probe_every);
        let mut changed = true;
        loop {
            if changed || last_sent.elapsed() >= self.interval {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.pacer.wait() => {}
                }
                let status = *status_rx.borrow_and_update();
                match self.send(status).await {
                    Ok(()) => tracing::debug!(status = status.description(), "heartbeat sent"),
                    Err(error) => tracing::warn!(%error, "heartbeat not sent"),
                }
                last_sent = tokio::time::Instant::now();
                changed = false;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                result = status_rx.changed() => {
                    if result.is_err() { return; }
                    changed = true;
                }
                // The periodic heartbeat is due: send it on time, not at the next probe tick.
                _ = tokio::time::sleep_until(last_sent + self.interval) => {}
                _ = probe.tick() => {
                    let current = *status_rx.borrow();
                    if !matches!(current, ServiceStatus::Building | ServiceStatus::Failed | ServiceStatus::Upgrading) {
                        let probed = manager.status().await;
                        if probed == ServiceStatus::Healthy {
                            if let Err(error) = strategy.maintain().await {
                                tracing::warn!(%error, "replication upkeep failed");
                            }
                        }
                        if probed != current {
                            tracing::info!(from = current.description(), to = probed.description(), "status changed");
                            status_tx.send_replace(probed);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pacer_spaces_a_burst() {
        let gap = Duration::from_millis(200);
        let pacer = Pacer::new(gap);
        let t0 = tokio::time::Instant::now();
        pacer.wait().await;
        assert!(t0.elapsed() < gap, "the first heartbeat goes at once");
        pacer.wait().await;
        assert!(t0.elapsed() >= gap);
        // Concurrent waiters (the loop and the last heartbeat at shutdown) get distinct slots.
        let (a, b) = (pacer.clone(), pacer.clone());
        let (ta, tb) = tokio::join!(async move { a.wait().await; t0.elapsed() }, async move { b.wait().await; t0.elapsed() });
        let (first, second) = (ta.min(tb), ta.max(tb));
        assert!(first >= 2 * gap && second >= 3 * gap, "{first:?} {second:?}");
        tokio::time::sleep(2 * gap).await;
        let slot = *pacer.last.lock().unwrap();
        let t1 = tokio::time::Instant::now();
        pacer.wait().await;
        assert!(slot.unwrap() + gap <= t1, "after a quiet spell the slot is now, not later");
    }
}
