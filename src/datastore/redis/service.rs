//! Starting and stopping redis-server: systemd units, a supervised child process, or nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::config::{RedisSettings, ServiceKind};
use crate::datastore::{Error, Result};

/// Process control for the local Redis.
pub enum Service {
    /// `planned`: the marker the agent leaves before it starts the unit, so that the unit's
    /// `ExecStartPre` guard (`trove-guestagent --guard-redis-start`) knows a start it asked for
    /// from a restart by systemd or at boot.
    Systemd { unit: String, planned: PathBuf },
    Supervised(Arc<Supervisor>),
    External,
}

/// Runs `redis-server <config>` as a child and restarts it after a crash.
pub struct Supervisor {
    /// Switched by an upgrade (`Service::set_binary`).
    binary: std::sync::RwLock<String>,
    config_file: PathBuf,
    log_file: PathBuf,
    /// The port that shows the server runs (the TLS port while the plain one is closed).
    port: std::sync::atomic::AtomicU16,
    wanted: AtomicBool,
    child: Mutex<Option<Child>>,
    /// Whether the current child has been seen serving, and where its output starts in the log.
    served: AtomicBool,
    log_start: std::sync::atomic::AtomicU64,
    /// Children spawned so far; the current child is number `spawns`.
    spawns: AtomicU64,
    /// The last child seen to exit: its number and exit status.
    last_exit: std::sync::Mutex<Option<(u64, String)>>,
    /// A start is being waited for: the watch loop reaps but does not restart (the waiter decides).
    starting: AtomicBool,
    /// The server is a replica source (a master with replicas), as the agent's state says.
    source: AtomicBool,
    /// The supervisor's own starts of a replica source are guarded (`Service::set_guarded`).
    guarded: AtomicBool,
    /// How long a crashed replica source waits for a failover before it is restarted.
    hold: Duration,
    /// Until when the restart of a crashed replica source is held back.
    held_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Seen serving, and not found down since (what a hold needs).
    up: AtomicBool,
}

/// Why redis-server refused a configuration: the directive (never its value) and Redis's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: Option<String>,
    pub reason: String,
}

/// Has `binary` parse `text` as its configuration, read from stdin, with no listener and nothing
/// loaded: Redis applies every one of its own rules and exits. Fails closed: a binary that cannot
/// run here refuses the change (`Error::Unchecked`), it never lets it through unchecked.
/// The master a guarded start replicates from: nothing listens there, so the server stays a
/// replica with its link down, refusing writes and refusing to feed replicas (`NOMASTERLINK`).
pub const GUARD_MASTER: (&str, &str) = ("127.0.0.1", "1");

pub async fn check_config(binary: &str, text: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    // Redis 6 reads one `save` pair per line and silently ignores a line with more.
    let one_pair_per_line = super::server::Server::of_binary(binary).is_some_and(|s| !s.valkey && s.version < (7, 0, 0));
    check_save(text, one_pair_per_line)?;
    let mut cmd = Command::new(binary);
    cmd.arg("-").args(["--port", "0"]);
    // Builds without TLS (e.g. many Redis 6 builds) refuse the `tls-port` directive itself; a
    // configuration that names neither TLS nor an include cannot open a TLS listener.
    let lower = text.to_ascii_lowercase();
    if lower.contains("tls") || lower.contains("include") {
        cmd.args(["--tls-port", "0"]);
    }
    cmd.args(["--unixsocket", "", "--daemonize", "no", "--supervised", "no"])
        .args(["--pidfile", "", "--logfile", "", "--syslog-enabled", "no"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for key in crate::config::agent_env_keys() {
        cmd.env_remove(key);
    }
    let mut child = cmd.spawn().map_err(|e| Error::Unchecked(format!("cannot run {binary}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes()).await;
    }
    let out = match tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(Error::Unchecked(format!("{binary}: {e}"))),
        Err(_) => return Err(Error::Unchecked(format!("{binary} did not finish checking the configuration within 10s"))),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    parse_check_output(&text).map_err(|r| Error::InvalidConfig { key: r.key, reason: r.reason })
}

/// `save` takes `""` or pairs of `<seconds> <changes>` (on Redis 6 one pair per line). Redis 7
/// refuses anything else; Redis 6 accepts `save 900` or `save 900 1 300 10` and silently ignores
/// the line, so the agent refuses those itself.
fn check_save(text: &str, one_pair_per_line: bool) -> Result<()> {
    let directives = super::conf::parse(text).unwrap_or_default();
    for d in directives.iter().filter(|d| d.key == "save") {
        let empty = d.args.len() == 1 && d.args[0].is_empty();
        let pairs = !d.args.is_empty() && d.args.len() % 2 == 0 && d.args.iter().all(|a| a.parse::<u64>().is_ok());
        if !empty && !pairs {
            return Err(Error::InvalidConfig { key: Some("save".into()), reason: "save takes \"\" or pairs of <seconds> <changes>".into() });
        }
        if pairs && one_pair_per_line && d.args.len() > 2 {
            return Err(Error::InvalidConfig { key: Some("save".into()), reason: "this server takes one <seconds> <changes> pair per save line (it ignores a line with more)".into() });
        }
    }
    Ok(())
}

/// Reads redis-server's verdict. The offending line is never returned: it may hold a password.
fn parse_check_output(text: &str) -> std::result::Result<(), Rejected> {
    if text.contains("Configured to not listen anywhere") {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with(">>> '")) {
        let key = lines[i][5..].split_whitespace().next().map(|k| k.trim_end_matches('\'').to_owned());
        let reason = lines.get(i + 1).map(|r| r.to_string()).unwrap_or_else(|| "rejected".into());
        return Err(Rejected { key, reason });
    }
    // Other fatal start-up errors are log lines ("pid:X date # message"): keep the messages.
    let reasons: Vec<&str> = lines.iter().filter_map(|l| l.split_once(" # ").map(|(_, m)| m)).filter(|m| !m.starts_with("oO0OoO0OoO0Oo") && !m.starts_with("Redis version") && !m.starts_with("Reading config") && !m.starts_with("Configuration loaded") && !m.starts_with("WARNING")).collect();
    Err(Rejected { key: None, reason: if reasons.is_empty() { "redis-server refused the configuration".into() } else { reasons.join("; ") } })
}

impl Service {
    /// The port whose listener shows the server runs (supervised mode).
    pub fn set_port(&self, port: u16) {
        if let Service::Supervised(s) = self {
            s.port.store(port, Ordering::Relaxed);
        }
    }

    pub fn new(settings: &RedisSettings) -> Service {
        match settings.service {
            ServiceKind::Systemd => Service::Systemd { unit: settings.unit.clone(), planned: settings.planned_start_path() },
            ServiceKind::External => Service::External,
            ServiceKind::Supervised => Service::Supervised(Arc::new(Supervisor {
                binary: std::sync::RwLock::new(settings.binary.clone()),
                config_file: settings.config_file.clone(),
                log_file: settings.data_dir.join("redis-server.log"),
                port: std::sync::atomic::AtomicU16::new(settings.port),
                wanted: AtomicBool::new(false),
                child: Mutex::new(None),
                served: AtomicBool::new(false),
                log_start: std::sync::atomic::AtomicU64::new(0),
                spawns: AtomicU64::new(0),
                last_exit: std::sync::Mutex::new(None),
                starting: AtomicBool::new(false),
                source: AtomicBool::new(false),
                guarded: AtomicBool::new(false),
                hold: Duration::from_secs(settings.hold_source_restart_s),
                held_until: std::sync::Mutex::new(None),
                up: AtomicBool::new(false),
            })),
        }
    }

    /// The binary the supervisor starts from now on (an upgrade's switch); other modes: nothing.
    pub fn set_binary(&self, binary: &str) {
        if let Service::Supervised(s) = self {
            *s.binary.write().unwrap_or_else(|p| p.into_inner()) = binary.to_owned();
        }
    }

    pub fn can_control(&self) -> bool {
        !matches!(self, Service::External)
    }

    /// Whether the supervisor's own starts of a replica source (at boot, after a held-back crash)
    /// are guarded: Redis starts as a replica of `GUARD_MASTER`, a master that never answers, so
    /// it loads its snapshot and serves reads but takes no write and feeds no replica, until a
    /// coordinator decides (see `replication::epoch::Epochs::guards_start`).
    pub fn set_guarded(&self, guarded: bool) {
        if let Service::Supervised(s) = self {
            s.guarded.store(guarded, Ordering::SeqCst);
        }
    }

    /// Starts the server at the agent's boot (guarded, as `set_guarded` says).
    pub async fn start_at_boot(&self) -> Result<()> {
        match self {
            Service::Supervised(s) => s.start_with(s.guarded.load(Ordering::SeqCst)).await,
            other => other.start().await,
        }
    }

    /// Tells the supervisor whether the server is a replica source (see `Supervisor::hold`).
    pub fn set_source(&self, source: bool) {
        if let Service::Supervised(s) = self {
            s.source.store(source, Ordering::SeqCst);
        }
    }

    /// Whether a crashed replica source's restart is being held back now. Looks at once rather
    /// than waiting for the supervisor's next round, so a call right after the crash sees it.
    pub async fn held(&self) -> bool {
        match self {
            Service::Supervised(s) => {
                if s.up.load(Ordering::SeqCst) && !s.has_child().await && !port_open(s.port.load(Ordering::Relaxed)).await {
                    s.reap().await;
                    s.hold_if_source("found down");
                }
                s.held_until().is_some()
            }
            _ => false,
        }
    }

    /// Where a supervised redis-server's stdout and stderr go.
    pub fn capture_log(&self) -> Option<PathBuf> {
        match self {
            Service::Supervised(s) => Some(s.log_file.clone()),
            _ => None,
        }
    }

    /// Begins a start that the caller waits for: returns a mark to pass to `exited_since`, and
    /// until `start_waited` a supervised server that exits is not restarted behind the caller.
    pub fn start_mark(&self) -> u64 {
        match self {
            Service::Supervised(s) => {
                s.starting.store(true, Ordering::SeqCst);
                s.spawns.load(Ordering::SeqCst)
            }
            _ => 0,
        }
    }

    /// Ends the wait begun by `start_mark`; `served` says the server answered.
    pub fn start_waited(&self, served: bool) {
        if let Service::Supervised(s) = self {
            if served {
                s.served.store(true, Ordering::SeqCst);
                s.up.store(true, Ordering::SeqCst);
            }
            s.starting.store(false, Ordering::SeqCst);
        }
    }

    /// The exit status of a supervised redis-server started after `mark`, if one has exited.
    pub async fn exited_since(&self, mark: u64) -> Option<String> {
        match self {
            Service::Supervised(s) => s.exited_since(mark).await,
            _ => None,
        }
    }

    pub async fn start(&self) -> Result<()> {
        match self {
            Service::Systemd { unit, planned } => {
                if let Err(error) = std::fs::write(planned, b"") {
                    tracing::warn!(path = %planned.display(), %error, "cannot mark the start as planned; a replica source starts guarded");
                }
                systemctl("start", unit).await
            }
            Service::Supervised(s) => s.start().await,
            Service::External => Err(Error::NotSupported("start (redis.service = external)".into())),
        }
    }

    /// Whether the system starts Redis at boot: `systemctl enable|disable` of the unit. A
    /// supervised server is started at boot by the agent, which keeps that choice in its state.
    pub async fn start_on_boot(&self, on: bool) -> Result<()> {
        match self {
            Service::Systemd { unit, .. } => systemctl(if on { "enable" } else { "disable" }, unit).await,
            _ => Ok(()),
        }
    }

    /// Stops Redis; `pid` is the server's process id when known (an adopted server has no child).
    pub async fn stop(&self, pid: Option<i32>, timeout: Duration) -> Result<()> {
        match self {
            Service::Systemd { unit, .. } => systemctl("stop", unit).await,
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
                let exited = this.reap().await;
                let running = this.child.lock().await.is_some() || port_open(this.port.load(Ordering::Relaxed)).await;
                if running && exited.is_none() && !this.served.load(Ordering::SeqCst) && port_open(this.port.load(Ordering::Relaxed)).await {
                    this.served.store(true, Ordering::SeqCst);
                    this.up.store(true, Ordering::SeqCst);
                }
                if !running {
                    // Unless it was a replica source: its replicas hold writes its last snapshot lacks.
                    this.hold_if_source(exited.as_deref().unwrap_or("it stopped answering"));
                }
                if let Some(status) = &exited {
                    // A server that dies before it ever served will die again: back off, up to 30 s.
                    // One that was serving (killed, OOM) is restarted at once.
                    if started_at.elapsed() < Duration::from_secs(10) && !this.has_served() {
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    } else {
                        backoff = Duration::from_millis(500);
                    }
                    if this.held_until().is_none() {
                        tracing::warn!(%status, retry_in = ?backoff, log = %this.log_file.display(), "redis-server exited; restarting");
                    }
                }
                if !running && this.held_until().is_some() {
                    continue;
                }
                if !running && this.wanted.load(Ordering::SeqCst) && !this.starting.load(Ordering::SeqCst) {
                    tokio::time::sleep(backoff).await;
                    // A failed start may have given the server up meanwhile.
                    if !this.wanted.load(Ordering::SeqCst) || this.starting.load(Ordering::SeqCst) {
                        continue;
                    }
                    started_at = tokio::time::Instant::now();
                    match this.spawn_child(this.guarded.load(Ordering::SeqCst)).await {
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

    /// Found down: a replica source that was serving is not restarted for `hold` (once per fall).
    fn hold_if_source(&self, why: &str) {
        if !self.wanted.load(Ordering::SeqCst) || self.hold.is_zero() || !self.source.load(Ordering::SeqCst) || !self.up.swap(false, Ordering::SeqCst) {
            return;
        }
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now() + self.hold);
        tracing::warn!(why, hold = ?self.hold, log = %self.log_file.display(),
            "redis-server went down while it was a replica source; its restart is held back so that a replica can be promoted \
             (restarted now, it would load its last snapshot and its replicas would drop every write since)");
    }

    /// Until when a crashed replica source's restart is held back; None once the hold is over
    /// (the first call after it has expired says so in the log).
    fn held_until(&self) -> Option<tokio::time::Instant> {
        let mut held = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        match *held {
            Some(until) if tokio::time::Instant::now() >= until => {
                *held = None;
                tracing::warn!(hold = ?self.hold, "no failover within the hold: restarting the replica source from its last snapshot");
                None
            }
            other => other,
        }
    }

    /// Ends a hold: an explicit start or stop decides what happens to the server.
    fn end_hold(&self, why: &str) {
        if self.held_until.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            tracing::info!(why, "the held-back restart of the replica source ends");
        }
    }

    /// Whether this agent started the server that runs now (else one on the port is adopted).
    pub async fn has_child(&self) -> bool {
        self.child.lock().await.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether the last child accepted connections: seen by the watch loop, or said in its log.
    fn has_served(&self) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        if self.served.load(Ordering::SeqCst) {
            return true;
        }
        let Ok(mut f) = std::fs::File::open(&self.log_file) else { return false };
        let mut text = Vec::new();
        if f.seek(SeekFrom::Start(self.log_start.load(Ordering::SeqCst))).is_err() || f.take(1 << 20).read_to_end(&mut text).is_err() {
            return false;
        }
        String::from_utf8_lossy(&text).contains("Ready to accept connections")
    }

    /// Collects the child if it has exited, recording its status.
    async fn reap(&self) -> Option<String> {
        let mut child = self.child.lock().await;
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                *child = None;
                let status = status.to_string();
                *self.last_exit.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.spawns.load(Ordering::SeqCst), status.clone()));
                Some(status)
            }
            _ => None,
        }
    }

    async fn exited_since(&self, mark: u64) -> Option<String> {
        self.reap().await;
        let last = self.last_exit.lock().unwrap_or_else(|e| e.into_inner()).clone();
        last.filter(|(n, _)| *n > mark).map(|(_, status)| status)
    }

    async fn spawn_child(&self, guarded: bool) -> Result<()> {
        self.served.store(false, Ordering::SeqCst);
        self.log_start.store(std::fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0), Ordering::SeqCst);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| Error::io(&self.log_file, e))?;
        let err = log.try_clone().map_err(|e| Error::io(&self.log_file, e))?;
        let binary = self.binary.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut cmd = Command::new(&binary);
        // Redis does not need the agent's configuration (instance key, transport URL with its password).
        for key in crate::config::agent_env_keys() {
            cmd.env_remove(key);
        }
        cmd.arg(&self.config_file);
        if guarded && self.source.load(Ordering::SeqCst) {
            tracing::warn!("starting the replica source guarded: a replica of nobody, until a coordinator decides whether its snapshot is the most current");
            cmd.args(["--replicaof", GUARD_MASTER.0, GUARD_MASTER.1]);
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| Error::Service(format!("cannot run {binary}: {e}")))?;
        tracing::info!(pid = child.id(), "started redis-server");
        let mut slot = self.child.lock().await;
        self.spawns.fetch_add(1, Ordering::SeqCst);
        *slot = Some(child);
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        self.start_with(false).await
    }

    async fn start_with(&self, guarded: bool) -> Result<()> {
        self.end_hold("an explicit start");
        self.wanted.store(true, Ordering::SeqCst);
        let has_child = self.child.lock().await.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if port_open(self.port.load(Ordering::Relaxed)).await {
            // Already serving (or adopted after an agent restart): a crash from now on may be held.
            self.served.store(true, Ordering::SeqCst);
            self.up.store(true, Ordering::SeqCst);
            return Ok(());
        }
        if has_child {
            return Ok(());
        }
        self.spawn_child(guarded).await
    }

    async fn stop(&self, pid: Option<i32>, timeout: Duration) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        self.wanted.store(false, Ordering::SeqCst);
        self.up.store(false, Ordering::SeqCst);
        self.end_hold("an explicit stop");
        let mut child = self.child.lock().await.take();
        let target = child.as_ref().and_then(|c| c.id()).map(|p| p as i32).or(pid);
        if let Some(p) = target {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut resend = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let child_gone = match child.as_mut() {
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                None => true,
            };
            if child_gone && !port_open(self.port.load(Ordering::Relaxed)).await {
                return Ok(());
            }
            // Redis refuses a SIGTERM while it writes its first AOF ("Writing initial AOF, can't
            // exit") or cannot save, and then runs on: ask again each second until the deadline.
            let alive = match (&child, target) {
                (Some(_), _) => !child_gone,
                (None, Some(p)) => kill(Pid::from_raw(p), None).is_ok(),
                (None, None) => false,
            };
            if alive && tokio::time::Instant::now() > resend {
                if let Some(p) = target {
                    let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
                }
                resend = tokio::time::Instant::now() + Duration::from_secs(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_needs_pairs_of_integers_on_every_server() {
        for ok in ["save 900 1\n", "save \"\"\n", "save 3600 1 300 100\n", "port 1\n"] {
            assert!(check_save(ok, false).is_ok(), "{ok}");
        }
        for ok in ["save 900 1\nsave 300 10\n", "save \"\"\n"] {
            assert!(check_save(ok, true).is_ok(), "{ok}");
        }
        for (bad, redis6) in [("save 900\n", false), ("save 900 1 60\n", false), ("save x y\n", false), ("save 900 -1\n", false), ("save 3600 1 300 100\n", true)] {
            let e = check_save(bad, redis6).unwrap_err().to_string();
            assert!(e.contains("at 'save'") && e.contains("nothing was changed"), "{bad}: {e}");
        }
    }

    #[test]
    fn check_output_verdicts() {
        let ok = "1:C 26 Nov # Reading config from stdin\n1:M 26 Nov # Configured to not listen anywhere, exiting.\n";
        assert_eq!(parse_check_output(ok), Ok(()));
        let bad = "\n*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***\nReading the configuration file, at line 2\n>>> 'requirepass \"s3cret\" \"x\"'\nwrong number of arguments\n";
        let r = parse_check_output(bad).unwrap_err();
        assert_eq!(r, Rejected { key: Some("requirepass".into()), reason: "wrong number of arguments".into() });
        let tls = "1:C 26 Nov # Reading config from stdin\n1:M 26 Nov # No tls-key-file configured!\n1:M 26 Nov # Failed to configure TLS. Check logs for more info.\n";
        let r = parse_check_output(tls).unwrap_err();
        assert_eq!(r.key, None);
        assert!(r.reason.contains("No tls-key-file") && r.reason.contains("Failed to configure TLS"), "{}", r.reason);
        assert!(parse_check_output("").is_err());
    }
}
