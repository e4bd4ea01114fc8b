//! The guest's RPC methods: argument checking, the call into datastore or strategy, the return value.
//! Every method returns a value; the RPC dispatcher turns errors into oslo failures.

pub mod args;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Mutex};

use crate::config::BackupSettings;
use crate::datastore::redis::{backup, diagnostics, root, ssl, RedisManager};
use crate::datastore::{self, ServiceStatus};
use crate::replication::epoch::{Epochs, Topology};
use crate::replication::{self, ReplicationStrategy, SnapshotRequest};
use crate::rpc::{CallContext, Endpoint, RemoteFailure};
use args::Args;

/// Trove guest API methods that a Redis guest does not serve.
const NOT_SUPPORTED: &[&str] = &[
    "create_database", "list_databases", "delete_database", "create_user", "list_users", "delete_user",
    "get_user", "update_attributes", "grant_access", "revoke_access", "list_access", "change_passwords",
    "upgrade", "pre_upgrade", "post_upgrade",
    "guest_log_list", "guest_log_action", "module_list", "module_apply", "module_remove", "rebuild",
    "pre_create_backup", "post_create_backup", "attach_replication_slave",
];

/// Casts to Trove's conductor other than heartbeats (the agent sends them through `rpc::conductor`).
#[async_trait]
pub trait Conductor: Send + Sync {
    /// `update_backup(instance_id, backup_id, sent, **fields)`; a failure to send is logged.
    async fn update_backup(&self, backup_id: &str, fields: Map<String, Value>);
}

/// Backups: the agent's settings and where their progress is reported.
pub struct Backups {
    pub settings: BackupSettings,
    pub conductor: Arc<dyn Conductor>,
}

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
}

impl Guest {
    pub fn new(
        manager: Arc<RedisManager>,
        strategy: Arc<dyn ReplicationStrategy>,
        epochs: Arc<Epochs>,
        status: watch::Sender<ServiceStatus>,
        backups: Backups,
    ) -> Self {
        Guest { manager, strategy, epochs, status, lifecycle: Mutex::new(()), backups, backup_running: Mutex::new(()) }
    }

    /// `create_backup(backup_info)`: Trove's cast. Reports BUILDING, then COMPLETED (checksum,
    /// location, size in GB) or FAILED to the conductor, as Trove's own guests do.
    async fn create_backup(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let info = a.req_object("backup_info")?;
        let id = info.get("id").and_then(Value::as_str).filter(|id| backup::valid_id(id));
        let id = id.ok_or_else(|| a.wrong("backup_info.id", "a backup id (letters, digits, '-' and '_')"))?.to_owned();
        let conductor = self.backups.conductor.clone();
        let fail = |why: String| {
            let conductor = conductor.clone();
            let id = id.clone();
            async move {
                tracing::error!(backup = %id, error = %why, "backup failed");
                conductor.update_backup(&id, fields(&[("state", json!("FAILED")), ("success", json!(false)), ("backup_type", json!("full"))])).await;
                RemoteFailure::guest_error(&format!("Failed to create backup {id}, error: {why}"))
            }
        };
        let _running = match self.backup_running.try_lock() {
            Ok(guard) => guard,
            Err(_) => return Err(fail("another backup is running on this instance".into()).await),
        };
        let spec = match self.backup_spec(&id, &info, ctx) {
            Ok(spec) => spec,
            Err(why) => return Err(fail(why).await),
        };
        let used = self.manager.filesystem_stats(None).ok().and_then(|s| s["used"].as_f64()).unwrap_or(0.0);
        conductor.update_backup(&id, fields(&[("size", json!(used)), ("state", json!("BUILDING")), ("backup_type", json!("full"))])).await;
        tracing::info!(backup = %id, container = %spec.container, "backup started");
        match backup::create(&self.manager, &spec).await {
            Ok(done) => {
                tracing::info!(backup = %id, location = %done.location, checksum = %done.checksum, bytes = done.size, segments = done.segments, "backup completed");
                let gb = done.size as f64 / 1024f64.powi(3);
                conductor
                    .update_backup(
                        &id,
                        fields(&[
                            ("size", json!(gb)),
                            ("state", json!("COMPLETED")),
                            ("backup_type", json!("full")),
                            ("checksum", json!(done.checksum)),
                            ("location", json!(done.location)),
                            ("success", json!(true)),
                        ]),
                    )
                    .await;
                Ok(Value::Null)
            }
            Err(e) => Err(fail(e.to_string()).await),
        }
    }

    fn backup_spec(&self, id: &str, info: &Map<String, Value>, ctx: &CallContext) -> Result<backup::BackupSpec, String> {
        let s = &self.backups.settings;
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned).filter(|v| !v.is_empty());
        if info.get("parent").is_some_and(|p| !p.is_null()) {
            return Err("incremental backups are not supported for Redis (an RDB is always whole)".into());
        }
        if let Some(driver) = text("storage_driver").filter(|d| d != "swift") {
            return Err(format!("storage driver '{driver}' is not supported (only swift)"));
        }
        let swift_url = text("swift_url").ok_or("Missing swift_url in backup metadata.")?;
        let token = ctx.auth_token.as_ref().ok_or("the request carries no auth_token for Swift")?;
        let container = text("swift_container").unwrap_or_else(|| s.swift_container.clone());
        if container.contains('/') {
            return Err(format!("swift_container '{container}' is not a container name"));
        }
        let metadata = ["datastore", "datastore_version"].iter().filter_map(|k| Some((k.to_string(), text(k)?))).collect();
        Ok(backup::BackupSpec {
            id: id.to_owned(),
            container,
            swift_url,
            token: secrecy::SecretString::from(secrecy::ExposeSecret::expose_secret(token).to_owned()),
            metadata,
            key: s.aes_cbc_key.clone(),
            segment_max_size: s.segment_max_size,
            insecure: s.swift_api_insecure,
            snapshot_timeout: std::time::Duration::from_secs(s.snapshot_timeout),
        })
    }

    /// `prepare`'s `backup_info` (Trove: id, location, checksum, storage_driver, swift_url).
    fn restore_spec(&self, a: &Args<'_>, info: &Map<String, Value>, ctx: &CallContext) -> Result<backup::RestoreSpec, RemoteFailure> {
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned).filter(|v| !v.is_empty());
        let id = text("id").filter(|id| backup::valid_id(id)).ok_or_else(|| a.wrong("backup_info.id", "a backup id (letters, digits, '-' and '_')"))?;
        if let Some(driver) = text("storage_driver").filter(|d| d != "swift") {
            return Err(not_supported(&format!("restore from storage driver '{driver}'")));
        }
        let location = text("location").ok_or_else(|| a.wrong("backup_info.location", "the backup's Swift location"))?;
        let swift_url = text("swift_url").ok_or_else(|| a.wrong("backup_info.swift_url", "the Swift storage URL"))?;
        let checksum = text("checksum");
        if checksum.as_ref().is_some_and(|c| c.len() != 32 || !c.chars().all(|ch| ch.is_ascii_hexdigit())) {
            return Err(a.wrong("backup_info.checksum", "an MD5 in hex"));
        }
        let token = ctx.auth_token.as_ref().ok_or_else(|| RemoteFailure::guest_error("prepare from a backup: the request carries no auth_token for Swift"))?;
        let s = &self.backups.settings;
        Ok(backup::RestoreSpec {
            id,
            location,
            checksum,
            swift_url,
            token: secrecy::SecretString::from(secrecy::ExposeSecret::expose_secret(token).to_owned()),
            key: s.aes_cbc_key.clone(),
            insecure: s.swift_api_insecure,
        })
    }

    /// Admits a state-changing replication call: its `epoch` (if any) is not stale, and a deposed
    /// guest (the accepted topology names another master) never becomes or unfences a master.
    fn admit(&self, a: &Args<'_>, epochless_ok: bool) -> Result<(), RemoteFailure> {
        let epoch = a.opt_u64("epoch")?;
        self.epochs.admit(epoch, a.method, epochless_ok).map_err(|e| to_failure(a, e))?;
        let unfences = a.method == "enable_as_master" || (a.method == "make_read_only" && a.opt_bool("read_only", true)? == false);
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
                Some(spec) => {
                    let id = spec.id.clone();
                    self.manager
                        .prepare_restored(config_contents, overrides, volume, |rdb| async move {
                            let bytes = backup::restore(&spec, rdb).await?;
                            tracing::info!(backup = %spec.id, bytes, "backup restored");
                            Ok(())
                        })
                        .await
                        .map_err(|e| replication::Error::Refused(format!("restore from backup {id}: {e}")))?;
                }
                None => self.manager.prepare(config_contents, overrides, volume).await.map_err(replication::Error::from)?,
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
                Ok(Value::Null)
            }
            Err(error) => {
                self.set_status(ServiceStatus::Failed);
                Err(to_failure(a, error))
            }
        }
    }

    /// `mount_point`: given, or the data volume's, or `redis.data_dir` (Trove's `[redis] mount_point`).
    fn mount_point_arg(&self, a: &Args<'_>) -> Result<String, RemoteFailure> {
        Ok(a.opt_str("mount_point")?.unwrap_or_else(|| self.manager.settings.data_dir.display().to_string()))
    }

    /// `device_path`: given, or the data volume's.
    async fn device_arg(&self, a: &Args<'_>) -> Result<String, RemoteFailure> {
        match a.opt_str("device_path")? {
            Some(d) => Ok(d),
            None => self.manager.volume().await.map(|v| v.device).ok_or_else(|| a.wrong("device_path", "a device path (this guest has no data volume)")),
        }
    }

    /// The volume calls: one at a time with the lifecycle calls; they never start or stop Redis.
    async fn volume_call(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        let recorded = self.manager.volume().await;
        let mount_point = match a.opt_str("mount_point")? {
            Some(m) => m,
            None => recorded.map(|v| v.mount_point.display().to_string()).unwrap_or(self.mount_point_arg(a)?),
        };
        let _guard = self.lifecycle.lock().await;
        let volumes = self.manager.volumes();
        let result = match a.method {
            "mount_volume" => {
                let device = self.device_arg(a).await?;
                volumes.mount(&device, &mount_point, a.opt_bool("write_to_fstab", false)?).await
            }
            "unmount_volume" => volumes.unmount(a.opt_str("device_path")?.as_deref(), &mount_point).await,
            _ => {
                // `online` (API 1.1): a mounted file system grows online either way.
                a.opt_bool("online", false)?;
                let device = self.device_arg(a).await?;
                volumes.resize(&device, &mount_point).await
            }
        };
        result.map(|_| Value::Null).map_err(|e| to_failure(a, e.into()))
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
            "enable_root" | "enable_root_with_password" => {
                let password = match a.method {
                    "enable_root" => None,
                    _ => a.opt_str("root_password")?,
                };
                if let Some(why) = password.as_deref().and_then(root::check_password) {
                    return Err(a.wrong("root_password", &why));
                }
                let _guard = self.lifecycle.lock().await;
                let password = root::enable(&self.manager, password).await.map_err(|e| to_failure(a, e.into()))?;
                Ok(root::root_user(&password))
            }
            "disable_root" => {
                let _guard = self.lifecycle.lock().await;
                root::disable(&self.manager).await.map(|_| Value::Null).map_err(|e| to_failure(a, e.into()))
            }
            "is_root_enabled" => Ok(json!(root::is_enabled(&self.manager).await)),
            "get_root_password" => Ok(json!(root::password(&self.manager).await)),
            "ssl_show" => ssl::show(&self.manager).await.map_err(|e| to_failure(a, e.into())),
            "ssl_action" => {
                let (enable, disable) = (a.opt_bool("enable", false)?, a.opt_bool("disable", false)?);
                if enable && disable {
                    return Err(RemoteFailure::trove("BadRequest", "Cannot enable and disable ssl".into(), Map::new()));
                }
                let request = if enable {
                    let mode = a.opt_str("mode")?.unwrap_or_else(|| "basic".into());
                    let mode = ssl::Mode::parse(&mode).ok_or_else(|| a.wrong("mode", "one of basic, enforced, mtls"))?;
                    let container = a.opt_object("container")?.ok_or_else(|| a.wrong("container", "the certificate container (private_key, certificate, ca) to enable ssl"))?;
                    let material = ssl::material(&container).map_err(|why| a.wrong("container", &format!("complete certificate material: it {why}")))?;
                    Some((mode, material))
                } else if disable {
                    None
                } else {
                    return Ok(json!({}));
                };
                let _guard = self.lifecycle.lock().await;
                ssl::action(&self.manager, request).await.map_err(|e| to_failure(a, e.into()))
            }
            "ssl_rollback" => {
                let _guard = self.lifecycle.lock().await;
                ssl::rollback(&self.manager).await.map_err(|e| to_failure(a, e.into()))
            }
            "get_diagnostics" => diagnostics::diagnostics().map_err(|e| to_failure(a, e.into())),
            "get_hwinfo" => diagnostics::hwinfo().map_err(|e| to_failure(a, e.into())),
            "backup_required_for_replication" => Ok(json!(strategy.backup_required())),
            "epoch_promise" | "epoch_accept" => self.epoch_call(a).await,
            "get_replication_snapshot" => {
                self.admit(a, true)?;
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
                Ok(serde_json::to_value(snapshot).unwrap_or(Value::Null))
            }
            "get_replica_context" => {
                let master = strategy.replica_context().await.map_err(|e| to_failure(a, e))?;
                Ok(json!({"master": master}))
            }
            "attach_replica" => {
                self.admit(a, false)?;
                let info = a.req_object("replica_info")?;
                let master = a.master_ref("replica_info", &info)?;
                let config = a.opt_str("slave_config")?;
                a.opt_bool("restart", false)?;
                let r = strategy.attach(&master, config.as_deref()).await;
                self.refresh_status().await;
                ok(r)
            }
            "detach_replica" => {
                self.admit(a, false)?;
                ok(strategy.detach(a.opt_bool("for_failover", false)?).await)
            }
            "make_read_only" => {
                let read_only = a.req_bool("read_only")?;
                let report_offset = a.opt_bool("report_offset", false)?;
                self.admit(a, read_only)?;
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
                self.admit(a, false)?;
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
                self.admit(a, false)?;
                ok(strategy.demote().await)
            }
            "get_latest_txn_id" => strategy.latest_txn_id().await.map(|t| json!(t)).map_err(|e| to_failure(a, e)),
            "get_last_txn" => strategy.last_txn().await.map(|(h, t)| json!([h, t])).map_err(|e| to_failure(a, e)),
            "wait_for_txn" => ok(strategy.wait_for_txn(a.req_int("txn")?).await),
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

fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
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
        other => RemoteFailure::guest_error(&other.to_string()),
    }
}
