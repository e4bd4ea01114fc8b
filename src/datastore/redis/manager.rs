//! The Redis datastore manager: lifecycle, configuration layers, status probe, filesystem stats.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::admin::{Admin, Target, TlsClient};
use super::runtime;
use super::service::{self, Service};
use super::state::{self, MasterSettings, ReplicaOf, State, System};
use crate::config::{RedisSettings, ServiceKind, TlsFiles, VolumeSettings};
use crate::datastore::volume::{self, VolumeRecord, Volumes};
use crate::datastore::{Error, Result, ServiceStatus};

/// The user Redis runs as under systemd (Debian's unit); the volume and new directories are its.
pub const REDIS_USER: &str = "redis";

/// Owns the local Redis: its process, its redis.conf and the admin connection.
pub struct RedisManager {
    pub settings: RedisSettings,
    service: Service,
    state: Mutex<State>,
    state_path: PathBuf,
    major: AtomicU32,
    /// `[replication] dual_channel_replication`: rendered and set on this node (Valkey 8.0+).
    dual_channel: AtomicBool,
    /// The admin connection, reused while the password and CONFIG name stay the same.
    admin_cache: Mutex<Option<(String, Admin)>>,
    /// Set while a redis-server from another configuration holds our port (supervised mode).
    foreign: std::sync::Mutex<Option<String>>,
    volumes: Volumes,
    /// Redis's data directory: `redis.data_dir`, or the volume's mount point (see `data_dir_of`).
    data_dir: std::sync::RwLock<PathBuf>,
    /// During a restore's first start: AOF rendered off (`System::aof_off`).
    aof_off: AtomicBool,
    /// The server binary: `redis.binary`, or the one an upgrade or rebuild chose (state `server`).
    binary: std::sync::RwLock<String>,
    /// The port the server listens on in the clear, 0 when client TLS is enforced (`ssl`).
    plain_port: AtomicU16,
    /// The certificate files of client TLS (`ssl_action`), when on.
    ssl_files: std::sync::RwLock<Option<TlsFiles>>,
}

impl RedisManager {
    /// Loads the state; a config file left by an earlier life is adopted as the base.
    pub fn new(settings: RedisSettings, volume: VolumeSettings) -> Result<RedisManager> {
        let state_path = settings.state_path();
        let state = match State::load(&state_path)? {
            Some(s) => s,
            None => match std::fs::read_to_string(&settings.config_file) {
                Ok(text) => adopt(&text)?,
                Err(_) => State::default(),
            },
        };
        let binary = state.server.as_ref().map(|c| c.binary.clone()).unwrap_or_else(|| settings.binary.clone());
        let major = redis_major(&binary).unwrap_or(7);
        let service = Service::new(&settings);
        service.set_binary(&binary);
        service.set_source(state.is_source());
        let data_dir = std::sync::RwLock::new(data_dir_of(&settings.data_dir, &state));
        let (plain_port, ssl_files) = listeners(&settings, &state);
        service.set_port(if plain_port == 0 { settings.tls_port } else { plain_port });
        Ok(RedisManager {
            plain_port: AtomicU16::new(plain_port),
            ssl_files: std::sync::RwLock::new(ssl_files),
            volumes: Volumes::new(volume, REDIS_USER),
            data_dir,
            service,
            settings,
            state: Mutex::new(state),
            state_path,
            major: AtomicU32::new(major),
            dual_channel: AtomicBool::new(false),
            admin_cache: Mutex::new(None),
            foreign: std::sync::Mutex::new(None),
            aof_off: AtomicBool::new(false),
            binary: std::sync::RwLock::new(binary),
        })
    }

    /// Starts the supervisor; in supervised mode an already prepared Redis is started, as after a reboot.
    /// systemd mode's `ExecStartPre` (`trove-guestagent --guard-redis-start`): unless the agent
    /// asked for this start (its marker, consumed here), a replica source that `guarded` says must
    /// not serve blindly gets one more line in redis.conf, `replicaof` `service::GUARD_MASTER`, as
    /// the supervisor's guarded start does. Returns whether it did. Never stops the start.
    pub fn guard_systemd_start(settings: &RedisSettings, guarded: bool) -> Result<bool> {
        // A marker is honoured once, and only when fresh (a start that failed before this ran
        // must not leave a later restart by systemd unguarded).
        let planned = settings.planned_start_path();
        let fresh = std::fs::metadata(&planned).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() < 120));
        let _ = std::fs::remove_file(&planned);
        if fresh || !guarded {
            return Ok(false);
        }
        if !State::load(&settings.state_path())?.is_some_and(|s| s.is_source()) {
            return Ok(false);
        }
        let path = &settings.config_file;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let line = format!("replicaof {} {}", service::GUARD_MASTER.0, service::GUARD_MASTER.1);
        if text.lines().any(|l| l.trim() == line) {
            return Ok(true);
        }
        let guarded_text = format!("{}
# trove-guestagent --guard-redis-start: a replica of nobody until a coordinator decides
{line}
", text.trim_end());
        super::state::write_private(path, guarded_text.as_bytes())?;
        Ok(true)
    }

    /// Guards the supervisor's own starts of a replica source (`Service::set_guarded`).
    pub fn guard_source_starts(&self, guarded: bool) {
        self.service.set_guarded(guarded);
    }

    pub async fn boot(&self, cancel: tokio_util::sync::CancellationToken) -> Result<()> {
        if let Service::Supervised(s) = &self.service {
            s.spawn_watch(cancel);
            if self.state.lock().await.no_start_on_boot {
                tracing::info!("redis was stopped with do_not_start_on_reboot; not starting it");
            } else if let Err(error) = self.check_volume().await {
                tracing::error!(%error, "not starting redis");
            } else if self.prepared().await {
                // Re-render so the file carries the agent's current layers.
                self.write_config().await?;
                self.ensure_runtime_dirs(&self.rendered().await)?;
                match self.check_adoption().await {
                    Ok(()) => self.service.start_at_boot().await?,
                    // Reported by the status probe; the agent keeps serving RPCs.
                    Err(error) => tracing::error!(%error, "not starting redis"),
                }
            }
        }
        Ok(())
    }

    /// In supervised mode, a server this agent did not start may answer on its port (the agent
    /// restarted): it is adopted only when it runs from our config file and data dir.
    async fn check_adoption(&self) -> Result<()> {
        let Service::Supervised(s) = &self.service else { return Ok(()) };
        if s.has_child().await || !service::port_open(self.probe_port()).await {
            self.set_foreign(None);
            return Ok(());
        }
        let probe = async {
            let mut admin = self.admin().await?;
            let config_file = admin.info("server").await?.get("config_file").unwrap_or_default().to_owned();
            Ok::<_, Error>((config_file, admin.config_get("dir").await?.unwrap_or_default()))
        };
        let (config_file, dir) = match probe.await {
            Ok(found) => found,
            Err(e) => (format!("unknown: {e}"), "unknown".into()),
        };
        let same = |a: &str, b: &std::path::Path| {
            let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            !a.is_empty() && canon(std::path::Path::new(a)) == canon(b)
        };
        let data_dir = self.data_dir();
        if same(&config_file, &self.settings.config_file) && same(&dir, &data_dir) {
            self.set_foreign(None);
            return Ok(());
        }
        let why = format!(
            "a redis-server this agent did not start answers on port {} with config file '{config_file}' and dir '{dir}' (expected '{}' and '{}'): stop it, then restart the agent",
            self.settings.port,
            self.settings.config_file.display(),
            data_dir.display()
        );
        self.set_foreign(Some(why.clone()));
        Err(Error::Refused(why))
    }

    fn set_foreign(&self, why: Option<String>) {
        *self.foreign.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the server on our port is not ours, while that is so.
    pub fn foreign(&self) -> Option<String> {
        self.foreign.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn prepared(&self) -> bool {
        self.state.lock().await.base.is_some()
    }

    pub fn major(&self) -> u32 {
        self.major.load(Ordering::Relaxed)
    }

    /// Turns Valkey's dual-channel replication on for this node's rendered configuration (the
    /// replication strategy calls it once, before the agent boots Redis).
    pub fn set_dual_channel(&self, on: bool) {
        self.dual_channel.store(on, Ordering::Relaxed);
    }

    /// With dual-channel replication configured: refuses a server without it (nothing changed),
    /// else sets it at runtime (idempotent). Without it: nothing.
    pub async fn apply_dual_channel(&self, admin: &mut Admin) -> Result<()> {
        if !self.dual_channel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let server = admin.info("server").await?.server();
        let server = server.ok_or_else(|| Error::Refused("replication.dual_channel_replication is on, and the server's INFO names no version".into()))?;
        if let Some(why) = server.lacks_dual_channel() {
            return Err(Error::Refused(why));
        }
        admin.config_set("dual-channel-replication-enabled", "yes").await
    }

    /// Redis's data directory now.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The volume operations (`mount_volume`, `unmount_volume`, `resize_fs`).
    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    /// The data volume `prepare` set up, if any.
    pub async fn volume(&self) -> Option<VolumeRecord> {
        self.state.lock().await.volume.clone()
    }

    /// With a data volume recorded, Redis starts only when that volume is mounted: never on the
    /// empty directory beneath its mount point.
    async fn check_volume(&self) -> Result<()> {
        let Some(v) = self.volume().await else { return Ok(()) };
        if self.volumes.is_mounted(&v).await? {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "the data volume {} is not mounted at {}: redis is not started on the directory beneath it (mount_volume first)",
            v.device,
            v.mount_point.display()
        )))
    }

    fn system<'a>(&'a self, dir: &'a Path, state: &State) -> System<'a> {
        let tls = match (state.ssl, listeners(&self.settings, state).1) {
            (Some(ssl), Some(files)) => Some(state::TlsListener { port: self.settings.tls_port, files, auth_clients: ssl.mode.auth_clients() }),
            _ => self.settings.tls_files().map(|files| state::TlsListener {
                port: self.settings.tls_port,
                files,
                auth_clients: self.settings.tls_auth_clients.as_str(),
            }),
        };
        System {
            dual_channel: self.dual_channel.load(Ordering::Relaxed),
            port: listeners(&self.settings, state).0,
            tls,
            dir,
            daemonize: self.settings.service != ServiceKind::Supervised,
            aof_off: self.aof_off.load(Ordering::Relaxed),
        }
    }

    /// Renders and writes redis.conf and the state file (both 0600, atomic), the two side by
    /// side so their fsyncs overlap (they sit on the promote's critical path).
    async fn write_locked(&self, state: &State) -> Result<()> {
        let dir = data_dir_of(&self.settings.data_dir, state);
        self.ensure_data_dir(&dir)?;
        let conf = state.render(&self.system(&dir, state), self.major());
        std::thread::scope(|scope| {
            let conf_write = scope.spawn(|| state::write_private(&self.settings.config_file, conf.as_bytes()));
            let saved = state.save(&self.state_path);
            let written = conf_write.join().unwrap_or_else(|_| Err(Error::io(&self.settings.config_file, "writer thread panicked")));
            written.and(saved)
        })
    }

    pub async fn write_config(&self) -> Result<()> {
        let state = self.state.lock().await;
        self.write_locked(&state).await
    }

    /// Applies `change` to the state and persists it.
    pub async fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> Result<T> {
        self.update_inner(change, false).await
    }

    /// As `update`, but first lets redis-server check the configuration the change would write
    /// (for changes carrying caller-supplied text: base configurations and overrides).
    pub async fn update_checked<T>(&self, change: impl FnOnce(&mut State) -> T) -> Result<T> {
        self.update_inner(change, true).await
    }

    async fn update_inner<T>(&self, change: impl FnOnce(&mut State) -> T, check: bool) -> Result<T> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let out = change(&mut next);
        if check {
            self.check(&next).await?;
        }
        self.write_locked(&next).await?;
        self.service.set_source(next.is_source());
        *self.data_dir.write().unwrap_or_else(|p| p.into_inner()) = data_dir_of(&self.settings.data_dir, &next);
        let (plain_port, ssl_files) = listeners(&self.settings, &next);
        self.plain_port.store(plain_port, Ordering::Relaxed);
        self.service.set_port(self.probe_port());
        *self.ssl_files.write().unwrap_or_else(|p| p.into_inner()) = ssl_files;
        *state = next;
        Ok(out)
    }

    /// Creates the data directory (given to the redis user when the agent runs as root).
    fn ensure_data_dir(&self, dir: &Path) -> Result<()> {
        runtime::ensure_dirs(&[dir.to_path_buf()], REDIS_USER).map(drop).map_err(|e| Error::io(dir, e))
    }

    /// Runs redis-server's own parser over the configuration `state` renders.
    async fn check(&self, state: &State) -> Result<()> {
        // The rendered `dir` must exist: Redis changes into it while it parses.
        let dir = data_dir_of(&self.settings.data_dir, state);
        self.ensure_data_dir(&dir)?;
        let text = state.render(&self.system(&dir, state), self.major());
        service::check_config(&self.binary(), &text).await
    }

    /// The server binary in use.
    pub fn binary(&self) -> String {
        self.binary.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Switches the server binary (and the major version rendering follows). Persisting the
    /// choice and restarting Redis are the caller's (`upgrade`).
    pub(super) fn switch_binary(&self, binary: &str) {
        *self.binary.write().unwrap_or_else(|p| p.into_inner()) = binary.to_owned();
        self.service.set_binary(binary);
        self.major.store(redis_major(binary).unwrap_or(7), Ordering::Relaxed);
    }

    /// Whether the agent starts and stops Redis as its child (the mode an upgrade needs).
    pub(super) fn supervised(&self) -> bool {
        matches!(self.service, Service::Supervised(_))
    }

    /// The configuration `state` renders for `binary`, checked by that binary (nothing written).
    pub(super) async fn check_with(&self, state: &State, binary: &str) -> Result<()> {
        let dir = data_dir_of(&self.settings.data_dir, state);
        self.ensure_data_dir(&dir)?;
        let major = redis_major(binary).unwrap_or(7);
        service::check_config(binary, &state.render(&self.system(&dir, state), major)).await
    }

    pub async fn snapshot_state(&self) -> State {
        self.state.lock().await.clone()
    }

    pub async fn set_replica(&self, replica: Option<ReplicaOf>) -> Result<()> {
        self.update(|s| s.replica = replica).await
    }

    pub async fn set_master(&self, master: Option<MasterSettings>) -> Result<()> {
        self.update(|s| s.master = master).await
    }

    /// Connection parameters for the local server.
    pub async fn target(&self) -> Target {
        let state = self.state.lock().await;
        // With the plaintext port closed (client TLS enforced), over TLS with this node's certificate.
        let tls_only = state.ssl.is_some_and(|s| s.mode.tls_only());
        let tls = if tls_only { self.tls_files().map(|files| TlsClient { files, verify_hostname: false }) } else { None };
        Target {
            host: "127.0.0.1".into(),
            port: if tls_only { self.settings.tls_port } else { self.settings.port },
            password: state.requirepass().map(secrecy::SecretString::from),
            username: None,
            config_command: self
                .settings
                .config_command
                .clone()
                .or_else(|| state.config_command())
                .unwrap_or_else(|| "CONFIG".into()),
            timeout: Duration::from_secs(5),
            tls,
        }
    }

    /// The port that tells whether Redis runs: the plain one, or the TLS one when that is closed.
    pub fn probe_port(&self) -> u16 {
        match self.plain_port.load(Ordering::Relaxed) {
            0 => self.settings.tls_port,
            p => p,
        }
    }

    /// This node's certificate files: client TLS's (`ssl_action`) when on, else the configured ones.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.ssl_files.read().unwrap_or_else(|p| p.into_inner()).clone().or_else(|| self.settings.tls_files())
    }

    pub async fn admin(&self) -> Result<Admin> {
        use secrecy::ExposeSecret;
        let target = self.target().await;
        let key = format!(
            "{}\n{}\n{}",
            target.port,
            target.config_command,
            target.password.as_ref().map(|p| p.expose_secret().to_owned()).unwrap_or_default()
        );
        let mut cache = self.admin_cache.lock().await;
        if let Some((k, admin)) = cache.as_ref() {
            if *k == key {
                return Ok(admin.clone());
            }
        }
        let mut admin = Admin::connect(&target).await?;
        if let Ok(info) = admin.info("server").await {
            if let Some((major, _, _)) = info.version() {
                self.major.store(major, Ordering::Relaxed);
            }
        }
        *cache = Some((key, admin.clone()));
        Ok(admin)
    }

    /// Whether the restart of this crashed replica source is held back (supervised mode), waiting
    /// for a replica to be promoted or for an explicit start.
    pub async fn held(&self) -> bool {
        self.service.held().await
    }

    /// After a failed call to Redis: whether it failed because this replica source just crashed
    /// (held back). A server being killed can still accept or reset a connection for a moment, so
    /// a replica source is given up to 300 ms to be seen gone.
    pub async fn held_after_failure(&self) -> bool {
        if !self.state.lock().await.is_source() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        loop {
            if self.held().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status probe: PING ok is healthy, refused is shutdown, loading is blocked; a crashed
    /// replica source whose restart is held back is crashed.
    pub async fn status(&self) -> ServiceStatus {
        if self.held().await {
            return ServiceStatus::Crashed;
        }
        if self.foreign().is_some() {
            if service::port_open(self.probe_port()).await {
                return ServiceStatus::Failed;
            }
            self.set_foreign(None);
        }
        if !self.prepared().await && !service::port_open(self.probe_port()).await {
            return ServiceStatus::New;
        }
        let probe = async {
            let mut admin = self.admin().await?;
            admin.ping().await
        };
        match probe.await {
            Ok(()) => ServiceStatus::Healthy,
            Err(Error::NotRunning) => ServiceStatus::Shutdown,
            Err(Error::Loading) => ServiceStatus::Blocked,
            Err(_) => ServiceStatus::Crashed,
        }
    }

    /// Waits until Redis answers PING (and has loaded its data).
    pub async fn wait_ready(&self) -> Result<()> {
        self.wait_ready_since(None).await
    }

    /// As `wait_ready`; with `mark`, a supervised redis-server started after it that exits fails
    /// the wait at once (and is no longer restarted).
    async fn wait_ready_since(&self, mark: Option<u64>) -> Result<()> {
        let timeout = Duration::from_secs(self.settings.start_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = match mark {
                Some(m) => self.service.exited_since(m).await,
                None => None,
            } {
                let _ = self.service.stop(None, Duration::from_secs(5)).await;
                return Err(Error::Service(format!("redis-server exited while starting ({status})")));
            }
            if !service::port_open(self.probe_port()).await {
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::Timeout(format!("redis did not start listening within {timeout:?}")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let probe = async {
                let mut a = self.admin().await?;
                a.ping().await
            };
            // While a start is watched, probe briefly so that an exit is seen at once.
            let probe = match mark {
                Some(_) => tokio::time::timeout(Duration::from_millis(500), probe).await.unwrap_or_else(|_| Err(Error::Timeout("PING took over 500ms".into()))),
                None => probe.await,
            };
            let last = match probe {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(format!("redis did not become ready within {timeout:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn server_pid(&self) -> Option<i32> {
        let mut admin = self.admin().await.ok()?;
        admin.info("server").await.ok()?.get("process_id")?.parse().ok()
    }

    pub async fn start(&self) -> Result<()> {
        if !self.prepared().await {
            return Err(Error::Refused("redis has no configuration yet: the instance must be prepared first".into()));
        }
        self.check_adoption().await?;
        self.check_volume().await?;
        if self.state.lock().await.no_start_on_boot {
            self.service.start_on_boot(true).await?;
            self.update(|s| s.no_start_on_boot = false).await?;
            tracing::info!("redis starts at boot again");
        }
        let rendered = self.rendered().await;
        self.ensure_runtime_dirs(&rendered)?;
        let log = runtime::StartLog::mark(self.service.capture_log().into_iter().chain(runtime::StartLog::logfile(&rendered)), &rendered);
        let mark = self.service.start_mark();
        let started = match self.service.start().await {
            Ok(()) => self.wait_ready_since(Some(mark)).await,
            Err(e) => Err(e),
        };
        self.service.start_waited(started.is_ok());
        // Say why, from this start's log lines (secrets redacted).
        started.map_err(|e| match (e, log.tail(8)) {
            (e, tail) if tail.is_empty() => e,
            (Error::Service(m), tail) => Error::Service(format!("{m}; redis-server log: {tail}")),
            (Error::Timeout(m), tail) => Error::Timeout(format!("{m}; redis-server log: {tail}")),
            (e, _) => e,
        })
    }

    /// The redis.conf text the current state renders.
    async fn rendered(&self) -> String {
        let state = self.state.lock().await;
        let dir = data_dir_of(&self.settings.data_dir, &state);
        state.render(&self.system(&dir, &state), self.major())
    }

    /// Creates the directories the configuration names for Redis's pidfile, socket and log
    /// (given to the redis user when the agent runs as root).
    fn ensure_runtime_dirs(&self, rendered: &str) -> Result<()> {
        let dirs = runtime::runtime_dirs(rendered);
        match runtime::ensure_dirs(&dirs, "redis") {
            Ok(created) => {
                if !created.is_empty() {
                    tracing::info!(dirs = ?created, "created redis runtime directories");
                }
                Ok(())
            }
            Err(e) => Err(Error::Service(format!("cannot create the runtime directories redis.conf names ({}): {e}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")))),
        }
    }

    pub async fn stop(&self) -> Result<()> {
        self.check_adoption().await?;
        let pid = self.server_pid().await;
        self.service.stop(pid, Duration::from_secs(self.settings.stop_timeout)).await
    }

    /// `stop_db`: stops Redis; with `no_start_on_boot` it also stays down at the next boot (the
    /// unit is disabled, or the agent does not start it) until something starts it.
    pub async fn stop_db(&self, no_start_on_boot: bool) -> Result<()> {
        self.stop().await?;
        if no_start_on_boot {
            self.service.start_on_boot(false).await?;
            self.update(|s| s.no_start_on_boot = true).await?;
            tracing::info!("redis will not start at boot until it is started again");
        }
        Ok(())
    }

    pub async fn restart(&self) -> Result<()> {
        if !self.service.can_control() {
            return Err(Error::NotSupported("restart (redis.service = external)".into()));
        }
        if !self.prepared().await {
            return Err(Error::Refused("redis has no configuration yet: the instance must be prepared first".into()));
        }
        self.stop().await?;
        self.start().await
    }

    /// `prepare`'s first half: the volume and the configuration are checked, then the volume is
    /// set up (Redis stopped first when it would run from the directory mounted over, or always
    /// with `stop`) and the configuration recorded. Redis is not started.
    async fn configure_prepared(&self, config_contents: Option<String>, overrides: Map<String, Value>, volume: Option<(String, String)>, stop: bool) -> Result<()> {
        self.check_adoption().await?;
        let base = config_contents.unwrap_or_else(default_base);
        let plan = match &volume {
            Some((device, mount_point)) => Some(self.volumes.plan(device, mount_point).await?),
            None => None,
        };
        let change = |s: &mut State| {
            s.base = Some(base.clone());
            s.user = overrides.clone().into_iter().collect();
            s.replica = None;
            s.master = None;
        };
        let mut next = self.snapshot_state().await;
        change(&mut next);
        self.check(&next).await?;
        let mounts = plan.as_ref().is_some_and(|p| p.mounts());
        if (stop || mounts) && self.service.can_control() && service::port_open(self.probe_port()).await {
            self.stop().await?;
        }
        let record = match plan {
            Some(plan) => Some(self.volumes.apply(plan).await?),
            None => None,
        };
        self.update_checked(|s| {
            change(s);
            if record.is_some() {
                s.volume = record;
            }
        })
        .await
    }

    /// `prepare`: set up the data volume (`device_path` at `mount_point`), write the rendered
    /// configuration and overrides, then (re)start Redis. The volume and the configuration are
    /// both checked before anything changes.
    pub async fn prepare(&self, config_contents: Option<String>, overrides: Map<String, Value>, volume: Option<(String, String)>) -> Result<()> {
        self.configure_prepared(config_contents, overrides, volume, false).await?;
        if service::port_open(self.probe_port()).await && self.service.can_control() {
            self.restart().await
        } else if self.service.can_control() {
            self.start().await
        } else {
            self.wait_ready().await
        }
    }

    /// `prepare` from a backup: the configuration is written as by `prepare`, Redis is stopped,
    /// `install` puts the restored RDB at the path it is given, and Redis first serves from it. A
    /// failed install leaves Redis down and its data as it was. With `appendonly yes` Redis
    /// would load the (empty) AOF instead: the first start runs with AOF off, then `CONFIG SET
    /// appendonly yes` writes the AOF from the loaded data before the call returns.
    pub async fn prepare_restored<F, Fut>(
        &self,
        config_contents: Option<String>,
        overrides: Map<String, Value>,
        volume: Option<(String, String)>,
        install: F,
    ) -> Result<()>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if !self.service.can_control() {
            return Err(Error::NotSupported("prepare from a backup (redis.service = external)".into()));
        }
        self.configure_prepared(config_contents, overrides, volume, true).await?;
        let rendered = super::conf::parse(&self.rendered().await).unwrap_or_default();
        let dbfilename = super::conf::lookup(&rendered, "dbfilename").filter(|f| !f.is_empty()).unwrap_or_else(|| "dump.rdb".into());
        let aof = super::conf::lookup(&rendered, "appendonly").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
        if dbfilename.contains('/') {
            return Err(Error::Refused(format!("dbfilename '{dbfilename}' names a path; a restore needs a file name")));
        }
        install(self.data_dir().join(&dbfilename)).await?;
        if aof {
            // The AOF of an earlier life must not be loaded over the restored data later on.
            let dirname = super::conf::lookup(&rendered, "appenddirname").unwrap_or_else(|| "appendonlydir".into());
            let filename = super::conf::lookup(&rendered, "appendfilename").unwrap_or_else(|| "appendonly.aof".into());
            for name in [dirname, filename].iter().filter(|n| !n.is_empty() && !n.contains('/')) {
                let path = self.data_dir().join(name);
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                if let Err(e) = removed.or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
                    return Err(Error::io(&path, e));
                }
            }
            self.aof_off.store(true, Ordering::Relaxed);
            self.write_config().await?;
        }
        let started = self.start().await;
        if aof {
            let rewritten = match started {
                Ok(()) => self.enable_aof().await,
                Err(e) => Err(e),
            };
            self.aof_off.store(false, Ordering::Relaxed);
            self.write_config().await?;
            return rewritten;
        }
        started
    }

    /// `CONFIG SET appendonly yes` and the wait for the AOF rewrite it starts.
    async fn enable_aof(&self) -> Result<()> {
        let mut admin = self.admin().await?;
        admin.config_set("appendonly", "yes").await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.settings.start_timeout.max(60));
        loop {
            let p = admin.info("persistence").await?;
            let flag = |k: &str| p.get(k).map(str::trim);
            if flag("aof_enabled") == Some("1") && flag("aof_rewrite_in_progress") == Some("0") && flag("aof_rewrite_scheduled") == Some("0") {
                return match flag("aof_last_bgrewrite_status") {
                    Some("ok") | None => Ok(()),
                    Some(other) => Err(Error::Refused(format!("the AOF rewrite after the restore failed ({other})"))),
                };
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout("the AOF rewrite after the restore did not finish".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// New base configuration (resize, reset): replication and user layers are kept.
    pub async fn replace_base(&self, contents: String) -> Result<()> {
        self.update_checked(|s| s.base = Some(contents)).await
    }

    /// Stores the user's overrides (rendered at the next restart); replication-controlled and
    /// listener keys are refused and nothing is stored.
    pub async fn update_overrides(&self, overrides: Map<String, Value>, remove: bool) -> Result<()> {
        if !remove {
            refuse_protected(&overrides)?;
            self.refuse_root_owned(&overrides).await?;
        }
        self.update_checked(|s| s.user = if remove { Default::default() } else { overrides.into_iter().collect() }).await
    }

    /// Runtime `CONFIG SET` of each override; replication-controlled keys are refused.
    pub async fn apply_overrides(&self, overrides: &Map<String, Value>) -> Result<()> {
        refuse_protected(overrides)?;
        self.refuse_root_owned(overrides).await?;
        // All or nothing: Redis checks the whole set first, then each is applied.
        let mut next = self.snapshot_state().await;
        next.user.extend(overrides.clone());
        self.check(&next).await?;
        let mut admin = self.admin().await?;
        for (key, value) in overrides {
            admin.config_set(key, &state::value_string(value)).await?;
        }
        Ok(())
    }

    /// While root is enabled its password is `requirepass`: a configuration group may not set it.
    async fn refuse_root_owned(&self, overrides: &Map<String, Value>) -> Result<()> {
        let Some(key) = overrides.keys().find(|k| super::conf::canonical(k) == "requirepass") else { return Ok(()) };
        if self.state.lock().await.root.is_none() {
            return Ok(());
        }
        Err(Error::Refused(format!("'{key}' is the root password while root is enabled: change it with root enable, or disable root first")))
    }

    /// Trove's `get_filesystem_stats` of `path`, by default of the data directory (the volume
    /// when there is one; its nearest existing parent before the first prepare).
    pub fn filesystem_stats(&self, path: Option<&str>) -> Result<Value> {
        match path {
            Some(p) => volume::fs_stats(Path::new(p)),
            None => {
                let dir = self.data_dir();
                let probe = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
                volume::fs_stats(probe)
            }
        }
    }

    /// Free bytes on the data directory's filesystem.
    pub fn free_disk(&self) -> Result<u64> {
        let dir = &self.data_dir();
        let st = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::io(dir, e))?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }
}

/// Redis's data directory for `state`: `redis.data_dir`, unless a data volume is mounted
/// elsewhere than it or a parent of it; then the volume's mount point.
fn data_dir_of(configured: &Path, state: &State) -> PathBuf {
    match &state.volume {
        Some(v) if !configured.starts_with(&v.mount_point) => v.mount_point.clone(),
        _ => configured.to_path_buf(),
    }
}

/// Takes over a redis.conf written before the agent managed it (the part above our marker).
fn adopt(text: &str) -> Result<State> {
    let base: String = text
        .lines()
        .take_while(|l| l.trim() != super::conf::MANAGED_MARKER)
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(State { base: Some(base), ..Default::default() })
}

/// The configuration used when `prepare` carries none.
fn default_base() -> String {
    "bind * -::*\nprotected-mode yes\nsave 3600 1 300 100 60 10000\nappendonly no\nreplica-read-only yes\n".into()
}

/// The major version of the installed server (`redis-server --version`, or Valkey's).
fn redis_major(binary: &str) -> Option<u32> {
    super::server::Server::of_binary(binary).map(|s| s.version.0)
}

/// Refuses overrides of keys the agent controls (replication, listeners), naming the first.
fn refuse_protected(overrides: &Map<String, Value>) -> Result<()> {
    match overrides.keys().find(|k| state::PROTECTED.contains(&super::conf::canonical(k).as_str())) {
        Some(key) => Err(Error::Refused(format!("'{key}' is managed by the replication strategy and cannot be overridden"))),
        None => Ok(()),
    }
}

/// The plaintext port `state` listens on (0: client TLS enforced) and client TLS's files, if on.
fn listeners(settings: &RedisSettings, state: &State) -> (u16, Option<TlsFiles>) {
    match state.ssl {
        Some(ssl) => {
            let files = super::ssl::files(&super::ssl::dir_of(settings), ssl.generation);
            (if ssl.mode.tls_only() { 0 } else { settings.port }, Some(files))
        }
        None => (settings.port, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn protected_overrides_are_refused_in_any_spelling() {
        for key in ["slaveof", "replicaof", "SLAVEOF", "masterauth", "slave-read-only", "port", "tls-port"] {
            let mut o = Map::new();
            o.insert(key.into(), json!("1.2.3.4 1"));
            let err = refuse_protected(&o).unwrap_err().to_string();
            assert!(err.contains(key) && !err.contains("1.2.3.4"), "{err}");
        }
        let mut o = Map::new();
        o.insert("maxmemory".into(), json!("10mb"));
        assert!(refuse_protected(&o).is_ok());
    }
}
