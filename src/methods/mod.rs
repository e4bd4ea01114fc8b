//! The guest's RPC methods: argument checking, the call into datastore or strategy, the return value.
//! Every method returns a value; the RPC dispatcher turns errors into oslo failures.

pub mod args;
mod backup_calls;
mod log_calls;
mod module_calls;
mod root_calls;
mod ssl_calls;
mod trove_calls;
mod upgrade_calls;
mod volume_calls;

pub use backup_calls::{interrupted_backups, report_interrupted, Backups, Conductor};

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Mutex};

use crate::datastore::redis::freeze::Freezer;
use crate::datastore::redis::logs::GuestLogs;
use crate::datastore::redis::{backup, diagnostics, root, ssl, RedisManager};
use crate::datastore::{self, ServiceStatus};
use crate::replication::epoch::{Epochs, Topology};
use trove_calls::Asks;
use crate::replication::{self, ReplicationStrategy, SnapshotRequest};
use crate::rpc::{CallContext, Endpoint, RemoteFailure};
use args::Args;

/// Trove guest API methods that a Redis guest does not serve.
const NOT_SUPPORTED: &[&str] = &[
    "create_database", "list_databases", "delete_database", "create_user", "list_users", "delete_user",
    "get_user", "update_attributes", "grant_access", "revoke_access", "list_access", "change_passwords",
];

/// The endpoint behind topic `guestagent.<id>`.
pub struct Guest {
    manager: Arc<RedisManager>,
    strategy: Arc<dyn ReplicationStrategy>,
    epochs: Arc<Epochs>,
    status: watch::Sender<ServiceStatus>,
    /// Lifecycle calls that change Redis run one at a time (replication calls serialize in the strategy).
    lifecycle: Mutex<()>,
    backups: Backups,
    /// One backup at a time.
    backup_running: Mutex<()>,
    logs: GuestLogs,
    /// The snapshot backups' freeze of the data volume.
    freezer: Freezer,
    modules: datastore::modules::Modules,
    /// The offset an epoch-less `wait_for_txn` (Trove's promote, after fencing its old master)
    /// last reached, and when: the evidence `trove_calls` asks before Trove makes a guest that the
    /// accepted topology deposes a master.
    trove_caught_up: std::sync::Mutex<Option<(i64, std::time::Instant)>>,
}

impl Guest {
    pub fn new(
        manager: Arc<RedisManager>,
        strategy: Arc<dyn ReplicationStrategy>,
        epochs: Arc<Epochs>,
        status: watch::Sender<ServiceStatus>,
        backups: Backups,
        logs: GuestLogs,
    ) -> Self {
        let s = &backups.settings;
        let freezer = Freezer::new(std::time::Duration::from_secs(s.freeze_timeout), std::time::Duration::from_secs(s.snapshot_timeout));
        let modules = datastore::modules::Modules::new(datastore::modules::dir_of(&manager.settings));
        Guest {
            manager,
            strategy,
            epochs,
            status,
            lifecycle: Mutex::new(()),
            backups,
            backup_running: Mutex::new(()),
            logs,
            freezer,
            modules,
            trove_caught_up: std::sync::Mutex::new(None),
        }
    }

    /// Admits a state-changing replication call: its `epoch` (if any) is not stale, and a deposed
    /// guest (the accepted topology names another master) never becomes or unfences a master.
    async fn admit(&self, a: &Args<'_>, epochless_ok: bool) -> Result<(), RemoteFailure> {
        let epoch = a.opt_u64("epoch")?;
        let unfences = a.method == "enable_as_master" || (a.method == "make_read_only" && a.opt_bool("read_only", true)? == false);
        if epoch.is_none() && unfences {
            self.trove_may_unfence(a).await?;
        }
        self.epochs.admit(epoch, a.method, epochless_ok).map_err(|e| to_failure(a, e))?;
        if unfences && self.epochs.deposed() {
            let r = self.epochs.record();
            let master = r.topology.map(|t| t.master).unwrap_or_default();
            return Err(to_failure(
                a,
                replication::Error::Refused(format!("{} refused: epoch {} names {master} the master of this set, not this guest", a.method, r.accepted)),
            ));
        }
        Ok(())
    }

    /// `epoch_promise` and `epoch_accept`: the two phases of a topology change (see `replication::epoch`).
    async fn epoch_call(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        let epoch = a.opt_u64("epoch")?.ok_or_else(|| a.wrong("epoch", "a positive integer"))?;
        if a.method == "epoch_promise" {
            let (promised, record) = self.epochs.promise(epoch).map_err(|e| to_failure(a, e))?;
            return Ok(json!({"promised": promised, "record": record}));
        }
        let topology: Option<Topology> = serde_json::from_value(a.required("topology")?.clone())
            .map_err(|e| a.wrong("topology", &format!("{{\"master\": id, \"replicas\": [id, ...]}} or null ({e})")))?;
        let invalid = |t: &Topology| {
            let ids: Vec<&String> = t.followers().collect();
            t.master.is_empty() || ids.iter().enumerate().any(|(i, r)| r.is_empty() || **r == t.master || ids[..i].contains(r))
        };
        if topology.as_ref().is_some_and(invalid) {
            return Err(a.wrong("topology", "a master id and distinct replica ids"));
        }
        let record = self.epochs.accept(epoch, topology).map_err(|e| to_failure(a, e))?;
        self.manager.guard_source_starts(self.epochs.guards_start());
        // A master this deposes stops taking writes now (and at every upkeep round after).
        let strategy = self.strategy.clone();
        tokio::spawn(async move {
            if let Err(error) = strategy.maintain().await {
                tracing::warn!(%error, "upkeep after an accepted epoch failed");
            }
        });
        Ok(json!({"record": record}))
    }

    fn set_status(&self, s: ServiceStatus) {
        self.status.send_replace(s);
    }

    async fn refresh_status(&self) {
        self.set_status(self.manager.status().await);
    }

    async fn prepare(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let config_contents = a.opt_str("config_contents")?;
        let overrides = a.overrides("overrides", false)?;
        let snapshot = a.opt_object("snapshot")?;
        let modules = match a.required("modules").unwrap_or(&Value::Null) {
            Value::Null => vec![],
            Value::Array(m) => m.clone(),
            _ => return Err(a.wrong("modules", "a list of {\"module\": {...}} or null")),
        };
        let replica_tls = match &snapshot {
            Some(s) => self.replica_tls(a, "snapshot", s)?,
            None => None,
        };
        let master = match &snapshot {
            Some(s) => {
                let theirs = s.get("replication_strategy").and_then(Value::as_str).unwrap_or_default();
                // Trove may spell the strategy short or dotted with its namespace.
                if replication::resolve_strategy(theirs).ok() != Some(self.strategy.name()) {
                    return Err(to_failure(a, replication::Error::Incompatible {
                        guest: self.strategy.name().into(),
                        theirs: theirs.into(),
                    }));
                }
                Some(a.master_ref("snapshot", s)?)
            }
            None => None,
        };
        let restore = match a.opt_object("backup_info")? {
            Some(_) if master.is_some() => return Err(a.wrong("backup_info", "null for a replica (it syncs from its master)")),
            Some(info) => Some(self.restore_spec(a, &info, ctx)?),
            None => None,
        };
        // Trove sends device_path null when the datastore has no volume (volume_support = False).
        let volume = match a.opt_str("device_path")?.filter(|d| !d.is_empty()) {
            Some(device) => Some((device, self.mount_point_arg(a)?)),
            None => None,
        };
        let _guard = self.lifecycle.lock().await;
        self.set_status(ServiceStatus::Building);
        let result = async {
            match restore {
                Some(restore) => {
                    let id = restore.id().to_owned();
                    self.manager
                        .prepare_restored(config_contents, overrides, volume, |rdb| async move {
                            match restore {
                                backup::Restore::Swift(spec) => {
                                    let bytes = backup::restore(&spec, rdb).await?;
                                    tracing::info!(backup = %spec.id, bytes, "backup restored");
                                }
                                backup::Restore::Snapshot { id } => {
                                    let bytes = backup::check_snapshot_rdb(&rdb).await?;
                                    tracing::info!(backup = %id, bytes, "snapshot backup: the volume made from it holds the dataset");
                                }
                            }
                            Ok(())
                        })
                        .await
                        .map_err(|e| replication::Error::Refused(format!("restore from backup {id}: {e}")))?;
                }
                None => self.manager.prepare(config_contents, overrides, volume).await.map_err(replication::Error::from)?,
            }
            if let Some((mode, material)) = replica_tls {
                ssl::follow_master(&self.manager, mode, material).await?;
            }
            if let Some(master) = &master {
                let config = snapshot.as_ref().and_then(|s| s.get("config")).and_then(Value::as_str);
                self.strategy.attach(master, config).await?;
            }
            Ok::<_, replication::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                self.set_status(ServiceStatus::Healthy);
                tracing::info!(replica = master.is_some(), "prepare finished");
                self.prepare_modules(&modules);
                Ok(Value::Null)
            }
            Err(error) => {
                self.set_status(ServiceStatus::Failed);
                Err(to_failure(a, error))
            }
        }
    }

    async fn lifecycle<F, Fut>(&self, a: &Args<'_>, f: F) -> Result<Value, RemoteFailure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = datastore::Result<()>>,
    {
        let _guard = self.lifecycle.lock().await;
        let result = f().await;
        self.refresh_status().await;
        result.map(|_| Value::Null).map_err(|e| to_failure(a, e.into()))
    }

    async fn run(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let strategy = &self.strategy;
        let ok = |r: replication::Result<()>| r.map(|_| Value::Null).map_err(|e| to_failure(a, e));
        match a.method {
            "rpc_ping" => Ok(json!(true)),
            "prepare" => self.prepare(a, ctx).await,
            "create_backup" => self.create_backup(a, ctx).await,
            "get_filesystem_stats" => {
                let path = a.opt_str("fs_path")?;
                let mut stats = self.manager.filesystem_stats(path.as_deref()).map_err(|e| to_failure(a, e.into()))?;
                stats["mgr_extra_info"] = json!({});
                Ok(stats)
            }
            "mount_volume" | "unmount_volume" | "resize_fs" => self.volume_call(a).await,
            "restart" => self.lifecycle(a, || self.manager.restart()).await,
            "pre_upgrade" => self.pre_upgrade().await,
            "upgrade" => self.upgrade(a).await,
            "post_upgrade" => {
                a.req_object("upgrade_info")?;
                self.lifecycle(a, || async { Ok(()) }).await
            }
            "rebuild" => self.rebuild(a).await,
            "stop_db" => {
                let no_start = a.opt_bool("do_not_start_on_reboot", false)?;
                self.lifecycle(a, || self.manager.stop_db(no_start)).await
            }
            "start_db_with_conf_changes" => {
                let contents = a.required("config_contents")?.as_str().map(str::to_owned);
                let contents = contents.ok_or_else(|| a.wrong("config_contents", "a string"))?;
                self.lifecycle(a, || async {
                    self.manager.replace_base(contents).await?;
                    self.manager.restart().await
                })
                .await
            }
            "reset_configuration" => {
                let conf = a.req_object("configuration")?;
                let contents = conf
                    .get("config_contents")
                    .and_then(Value::as_str)
                    .ok_or_else(|| a.wrong("configuration.config_contents", "a string"))?
                    .to_owned();
                self.lifecycle(a, || self.manager.replace_base(contents)).await
            }
            "update_overrides" => {
                let overrides = a.overrides("overrides", false)?;
                let remove = a.opt_bool("remove", false)?;
                self.lifecycle(a, || self.manager.update_overrides(overrides, remove)).await
            }
            "apply_overrides" => {
                let overrides = a.overrides("overrides", true)?;
                self.lifecycle(a, || async { self.manager.apply_overrides(&overrides).await }).await
            }
            "enable_root" | "enable_root_with_password" | "disable_root" => self.root_call(a).await,
            "is_root_enabled" => Ok(json!(root::is_enabled(&self.manager).await)),
            "get_root_password" => Ok(json!(root::password(&self.manager).await)),
            "guest_log_list" => self.guest_log_list(a, ctx).await,
            "guest_log_action" => self.guest_log_action(a, ctx).await,
            "module_list" | "module_apply" | "module_remove" => self.module_call(a, ctx).await,
            // Trove 23+ snapshot backups (**kwargs: nothing is read); Trove expects {}.
            "pre_create_backup" => self.freezer.freeze(&self.manager).await.map(|_| json!({})).map_err(|e| to_failure(a, e.into())),
            "post_create_backup" => self.freezer.thaw(&self.manager).await.map(|_| json!({})).map_err(|e| to_failure(a, e.into())),
            "ssl_show" | "ssl_action" | "ssl_rollback" => self.ssl_call(a).await,
            "get_diagnostics" => diagnostics::diagnostics().map_err(|e| to_failure(a, e.into())),
            "get_hwinfo" => diagnostics::hwinfo().map_err(|e| to_failure(a, e.into())),
            "backup_required_for_replication" => Ok(json!(strategy.backup_required())),
            "epoch_promise" | "epoch_accept" => self.epoch_call(a).await,
            "get_replication_snapshot" => {
                self.admit(a, true).await?;
                let info = a.opt_object("snapshot_info")?.unwrap_or_default();
                a.required("snapshot_info")?;
                let replica_count = match info.get("replica_count") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|n| *n > 0)
                            .ok_or_else(|| a.wrong("snapshot_info.replica_count", "a positive integer"))?,
                    ),
                };
                let enable_persistence = match info.get("enable_persistence") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => return Err(a.wrong("snapshot_info.enable_persistence", "a boolean")),
                };
                let request = SnapshotRequest { replica_source_config: a.opt_str("replica_source_config")?, replica_count, enable_persistence };
                let snapshot = strategy.snapshot(request).await.map_err(|e| to_failure(a, e))?;
                self.with_replica_tls(a, serde_json::to_value(snapshot).unwrap_or(Value::Null)).await
            }
            "get_replica_context" => {
                let master = strategy.replica_context().await.map_err(|e| to_failure(a, e))?;
                self.with_replica_tls(a, json!({"master": master})).await
            }
            // `attach_replication_slave(snapshot, slave_config)`: Trove's older name, still in its guest API.
            "attach_replica" | "attach_replication_slave" => {
                let name = if a.method == "attach_replica" { "replica_info" } else { "snapshot" };
                let info = a.req_object(name)?;
                let master = a.master_ref(name, &info)?;
                if self.agrees(a, Asks::Follows(&master)).await? {
                    return Ok(Value::Null);
                }
                self.admit(a, false).await?;
                let tls = self.replica_tls(a, name, &info)?;
                let config = a.opt_str("slave_config")?;
                a.opt_bool("restart", false)?;
                if let Some((mode, material)) = tls {
                    let _guard = self.lifecycle.lock().await;
                    ssl::follow_master(&self.manager, mode, material).await.map_err(|e| to_failure(a, e.into()))?;
                }
                let r = strategy.attach(&master, config.as_deref()).await;
                self.refresh_status().await;
                ok(r)
            }
            "detach_replica" => {
                let for_failover = a.opt_bool("for_failover", false)?;
                // Trove's eject or promote: the new master, and each replica before its attach.
                if for_failover && (self.agrees(a, Asks::Master).await? || self.agrees(a, Asks::Replica).await?) {
                    return Ok(Value::Null);
                }
                self.admit(a, false).await?;
                ok(strategy.detach(for_failover).await)
            }
            "make_read_only" => {
                let read_only = a.req_bool("read_only")?;
                let report_offset = a.opt_bool("report_offset", false)?;
                let agrees = !read_only && self.agrees(a, Asks::Master).await?;
                self.admit(a, read_only || agrees).await?;
                strategy.make_read_only(read_only).await.map_err(|e| to_failure(a, e))?;
                // Our extension: the fenced master's final offset in the same round trip.
                if report_offset {
                    return strategy.latest_txn_id().await.map(|t| json!({"offset": t})).map_err(|e| to_failure(a, e));
                }
                Ok(Value::Null)
            }
            "enable_as_master" => {
                let catch_up_to = a.opt_u64("catch_up_to")?;
                let detach = a.opt_bool("detach", false)?;
                let config = a.opt_str("replica_source_config")?;
                if self.agrees(a, Asks::Master).await? {
                    return Ok(Value::Null);
                }
                self.admit(a, false).await?;
                // Our extension: catch up to the fenced master's offset and detach first, in this
                // one call (a promote's write pause is its round trips).
                if let Some(txn) = catch_up_to.filter(|t| *t > 0) {
                    strategy.wait_for_txn(i64::try_from(txn).unwrap_or(i64::MAX)).await.map_err(|e| to_failure(a, e))?;
                }
                if detach {
                    strategy.detach(true).await.map_err(|e| to_failure(a, e))?;
                }
                ok(strategy.enable_as_master(config.as_deref()).await)
            }
            "demote_replication_master" => {
                if self.agrees(a, Asks::Replica).await? {
                    return Ok(Value::Null);
                }
                self.admit(a, false).await?;
                ok(strategy.demote().await)
            }
            "get_latest_txn_id" => strategy.latest_txn_id().await.map(|t| json!(t)).map_err(|e| to_failure(a, e)),
            "get_last_txn" => strategy.last_txn().await.map(|(h, t)| json!([h, self.rank_offset(h.as_ref(), t)])).map_err(|e| to_failure(a, e)),
            "wait_for_txn" => {
                let txn = a.req_int("txn")?;
                strategy.wait_for_txn(txn).await.map_err(|e| to_failure(a, e))?;
                if a.opt_u64("epoch")?.is_none() {
                    *self.trove_caught_up.lock().unwrap_or_else(|p| p.into_inner()) = Some((txn, std::time::Instant::now()));
                }
                Ok(Value::Null)
            }
            "cleanup_source_on_replica_detach" => {
                a.required("replica_info")?;
                Ok(Value::Null)
            }
            "get_replication_status" => {
                if !self.manager.prepared().await {
                    return Err(RemoteFailure::not_prepared());
                }
                if let Some(why) = self.manager.foreign() {
                    return Err(RemoteFailure::guest_error(&why));
                }
                if self.manager.held().await {
                    return Err(RemoteFailure::held_back());
                }
                match strategy.status().await {
                    Ok(mut status) => {
                        status["epoch"] = serde_json::to_value(self.epochs.record()).unwrap_or(Value::Null);
                        status["guest"] = json!(self.epochs.me());
                        Ok(status)
                    }
                    Err(_) if self.manager.held_after_failure().await => Err(RemoteFailure::held_back()),
                    Err(e) => Err(to_failure(a, e)),
                }
            }
            m if NOT_SUPPORTED.contains(&m) => Err(not_supported(m)),
            m => Err(RemoteFailure::no_such_method(m)),
        }
    }
}

#[async_trait]
impl Endpoint for Guest {
    async fn call(&self, method: &str, args: Map<String, Value>, context: CallContext) -> Result<Value, RemoteFailure> {
        let a = Args::new(method, args);
        self.run(&a, &context).await
    }
}

fn not_supported(operation: &str) -> RemoteFailure {
    let mut kwargs = Map::new();
    kwargs.insert("operation".into(), json!(operation));
    kwargs.insert("datastore".into(), json!("redis"));
    RemoteFailure::trove(
        "DatastoreOperationNotSupported",
        format!("The '{operation}' operation is not supported for the 'redis' datastore."),
        kwargs,
    )
}

/// The one place replication and datastore errors become Trove exceptions.
fn to_failure(a: &Args<'_>, error: replication::Error) -> RemoteFailure {
    match error {
        replication::Error::InvalidArgument { name, reason } => {
            RemoteFailure::type_error(format!("Manager.{}() argument '{name}' {reason}", a.method))
        }
        replication::Error::Incompatible { guest, theirs } => {
            let mut kwargs = Map::new();
            kwargs.insert("guest_strategy".into(), json!(guest));
            kwargs.insert("replication_strategy".into(), json!(theirs));
            RemoteFailure::trove(
                "IncompatibleReplicationStrategy",
                format!("Instance with replication strategy {guest} cannot replicate from instance with replication strategy {theirs}."),
                kwargs,
            )
        }
        replication::Error::Datastore(datastore::Error::NotSupported(op)) => not_supported(&op),
        replication::Error::Datastore(e @ datastore::Error::NotFound(_)) => RemoteFailure::trove("NotFound", e.to_string(), Map::new()),
        replication::Error::Datastore(e @ datastore::Error::BadRequest(_)) => RemoteFailure::trove("BadRequest", e.to_string(), Map::new()),
        replication::Error::Datastore(datastore::Error::Trove { class, message }) => RemoteFailure::trove(class, message, Map::new()),
        replication::Error::Datastore(e @ datastore::Error::LogAccessForbidden { .. }) => {
            let datastore::Error::LogAccessForbidden { action, log } = &e else { unreachable!() };
            let mut kwargs = Map::new();
            kwargs.insert("action".into(), json!(action));
            kwargs.insert("log".into(), json!(log));
            RemoteFailure::trove("LogAccessForbidden", e.to_string(), kwargs)
        }
        other => RemoteFailure::guest_error(&other.to_string()),
    }
}
