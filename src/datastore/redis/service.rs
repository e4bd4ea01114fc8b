//! Starting and stopping redis-server: systemd units, a supervised child process, or nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::config::{RedisSettings, ServiceKind};
use crate::datastore::{Error, Result};

/// Process control for the local Redis.
pub enum Service {
    Systemd { unit: String },
    Supervised(Arc<Supervisor>),
    External,
}

/// Runs `redis-server <config>` as a child and restarts it after a crash.
pub struct Supervisor {
    binary: String,
    config_file: PathBuf,
    log_file: PathBuf,
    port: u16,
    wanted: AtomicBool,
    child: Mutex<Option<Child>>,
}

impl Service {
    pub fn new(settings: &RedisSettings) -> Service {
        match settings.service {
            ServiceKind::Systemd => Service::Systemd { unit: settings.unit.clone() },
            ServiceKind::External => Service::External,
            ServiceKind::Supervised => Service::Supervised(Arc::new(Supervisor {
                binary: settings.binary.clone(),
                config_file: settings.config_file.clone(),
                log_file: settings.data_dir.join("redis-server.log"),
                port: settings.port,
                wanted: AtomicBool::new(false),
                child: Mutex::new(None),
            })),
        }
    }

    pub fn can_control(&self) -> bool {
        !matches!(self, Service::External)
    }

    pub async fn start(&self) -> Result<()> {
        match self {
            Service::Systemd { unit } => systemctl("start", unit).await,
            Service::Supervised(s) => s.start().await,
            Service::External => Err(Error::NotSupported("start (redis.service = external)".into())),
        }
    }

    /// Stops Redis; `pid` is the server's process id when known (an adopted server has no child).
    pub async fn stop(&self, pid: Option<i32>, timeout: Duration) -> Result<()> {
        match self {
            Service::Systemd { unit } => systemctl("stop", unit).await,
            Service::Supervised(s) => s.stop(pid, timeout).await,
            Service::External => Err(Error::NotSupported("stop (redis.service = external)".into())),
        }
    }
}

async fn systemctl(verb: &str, unit: &str) -> Result<()> {
    let out = Command::new("systemctl")
        .arg(verb)
        .arg(unit)
        .output()
        .await
        .map_err(|e| Error::Service(format!("systemctl {verb} {unit}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Service(format!("systemctl {verb} {unit}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// True when something accepts connections on the Redis port.
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(("127.0.0.1", port))).await,
        Ok(Ok(_))
    )
}

impl Supervisor {
    /// Starts the watch loop that restarts Redis after a crash while it is wanted.
    pub fn spawn_watch(self: &Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            let mut started_at = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if !this.wanted.load(Ordering::SeqCst) {
                    continue;
                }
                let exited = {
                    let mut child = this.child.lock().await;
                    match child.as_mut().map(|c| c.try_wait()) {
                        Some(Ok(Some(status))) => {
                            *child = None;
                            Some(status.to_string())
                        }
                        _ => None,
                    }
                };
                let running = this.child.lock().await.is_some() || port_open(this.port).await;
                if let Some(status) = &exited {
                    // A server that dies right after starting will die again: back off, up to 30 s.
                    if started_at.elapsed() < Duration::from_secs(10) {
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    } else {
                        backoff = Duration::from_millis(500);
                    }
                    tracing::warn!(%status, retry_in = ?backoff, log = %this.log_file.display(), "redis-server exited; restarting");
                }
                if !running && this.wanted.load(Ordering::SeqCst) {
                    tokio::time::sleep(backoff).await;
                    started_at = tokio::time::Instant::now();
                    match this.spawn_child().await {
                        Ok(()) => {}
                        Err(error) => {
                            tracing::error!(%error, "cannot restart redis-server");
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        });
    }

    async fn spawn_child(&self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| Error::io(&self.log_file, e))?;
        let err = log.try_clone().map_err(|e| Error::io(&self.log_file, e))?;
        let mut cmd = Command::new(&self.binary);
        // Redis does not need the agent's configuration (instance key, transport URL with its password).
        for key in crate::config::agent_env_keys() {
            cmd.env_remove(key);
        }
        let child = cmd
            .arg(&self.config_file)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| Error::Service(format!("cannot run {}: {e}", self.binary)))?;
        tracing::info!(pid = child.id(), "started redis-server");
        *self.child.lock().await = Some(child);
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        self.wanted.store(true, Ordering::SeqCst);
        let has_child = self.child.lock().await.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if has_child || port_open(self.port).await {
            return Ok(());
        }
        self.spawn_child().await
    }

    async fn stop(&self, pid: Option<i32>, timeout: Duration) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        self.wanted.store(false, Ordering::SeqCst);
        let mut child = self.child.lock().await.take();
        let target = child.as_ref().and_then(|c| c.id()).map(|p| p as i32).or(pid);
        if let Some(p) = target {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child_gone = match child.as_mut() {
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                None => true,
            };
            if child_gone && !port_open(self.port).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                if let Some(p) = target {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                return Err(Error::Timeout(format!("redis-server did not stop within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
