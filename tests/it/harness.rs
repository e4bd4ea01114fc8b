//! Test harness: agents as child processes on free ports in temp dirs, an RPC client, cleanup on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use trove_guest::rpc::{client::RpcClient, crypto::Cipher, AmqpOptions};

pub const EXCHANGE: &str = "trove";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "rabbit://guest:guest@127.0.0.1:5672/".into())
}

/// A client on the shared broker; fails loudly when RabbitMQ is not there.
pub async fn client() -> RpcClient {
    let opts = AmqpOptions::new(&amqp_url(), EXCHANGE, "it-client");
    match RpcClient::connect(&opts).await {
        Ok(c) => c,
        Err(e) => panic!("RabbitMQ is not reachable at {} ({e}); start it with scripts/services.sh", amqp_url()),
    }
}

/// The server binary under test: `TROVE_TEST_REDIS_SERVER` (the matrix stage sets it), else
/// `redis-server` on PATH. Every agent the harness starts supervises this binary.
pub fn server_binary() -> String {
    std::env::var("TROVE_TEST_REDIS_SERVER").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "redis-server".into())
}

/// ("redis" or "valkey", (major, minor, patch))
pub type ServerVersion = (&'static str, (u32, u32, u32));

/// The server under test as its `--version` names it. Fails loudly when the binary cannot run.
pub fn server_version() -> ServerVersion {
    version_of(&server_binary())
}

/// As `server_version`, for any server binary (cached).
pub fn version_of(bin: &str) -> ServerVersion {
    static VERSIONS: std::sync::Mutex<Vec<(String, ServerVersion)>> = std::sync::Mutex::new(Vec::new());
    let mut known = VERSIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, v)) = known.iter().find(|(b, _)| b == bin) {
        return *v;
    }
    let out = Command::new(bin).arg("--version").output().unwrap_or_else(|e| panic!("cannot run the server under test {bin}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let server = trove_guest::datastore::redis::server::Server::from_version_output(&text).unwrap_or_else(|| panic!("{bin} --version said {text:?}"));
    let v = (if server.valkey { "valkey" } else { "redis" }, server.version);
    known.push((bin.to_owned(), v));
    v
}

/// A free port never handed out before in this process: tests run in parallel, and a port one
/// test was given but has not bound yet can come back from the kernel for another.
/// A port for a test's server, free now and claimed across test processes: the matrix runs
/// several `cargo test` processes at once, and a port the kernel hands out for bind(0) may be
/// handed to another process before our server binds it. Ports come from below the ephemeral
/// range (so no outgoing connection takes them), each claimed by a lock on a file that is held
/// until this process ends (the kernel drops the lock of a process that is gone).
pub fn free_port() -> u16 {
    static CLAIMS: std::sync::Mutex<Vec<(u16, std::fs::File)>> = std::sync::Mutex::new(Vec::new());
    let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join("trove-guest-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    loop {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        if claims.iter().any(|(p, _)| *p == port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(port.to_string())).unwrap();
        if file.try_lock().is_ok() {
            claims.push((port, file));
            return port;
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &trove_guest::rpc::envelope::new_id()[..10])
}

/// One guest: a trove-guestagent process supervising its own redis-server.
pub struct Guest {
    pub id: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub key: Option<String>,
    pub env: Vec<(String, String)>,
    /// Boot from Trove's option files in this directory (`--config-dir`) instead of the environment.
    pub conf_dir: Option<PathBuf>,
    /// Extra agent arguments (e.g. `--config <toml>`).
    pub args: Vec<String>,
    agent: Option<Child>,
}

impl Guest {
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    /// The agent's log: its own file when the test names one, else its captured output.
    pub fn log_file(&self) -> PathBuf {
        match self.env.iter().find(|(k, _)| k == "TROVE_GUESTAGENT__LOG__FILE") {
            Some((_, file)) => PathBuf::from(file),
            None => self.output_file(),
        }
    }

    /// Where the agent's standard output and error go.
    pub fn output_file(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn topic(&self) -> String {
        format!("guestagent.{}", self.id)
    }

    pub fn cipher(&self) -> Option<Cipher> {
        self.key.as_ref().map(|k| Cipher::new(&secrecy::SecretString::from(k.clone())))
    }

    /// Starts the agent process (again, after a kill).
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.output_file()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trove-guestagent"));
        if let Some(dir) = &self.conf_dir {
            // As the guest image boots under Trove: Trove's files say everything but where Redis
            // lives, which the image's environment says.
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("TROVE_GUESTAGENT__REDIS__SERVICE", "supervised")
                .env("TROVE_GUESTAGENT__REDIS__CONFIG_FILE", self.config_file())
                .env("TROVE_GUESTAGENT__REDIS__DATA_DIR", self.dir.path().join("data"))
                .env("TROVE_GUESTAGENT__REDIS__PORT", self.port.to_string())
                .env("TROVE_GUESTAGENT__REDIS__ADVERTISE_HOST", "127.0.0.1")
                .env("TROVE_GUESTAGENT__VOLUME__DEVICE_PATH", "")
                .arg(format!("--config-dir={}", dir.display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            self.agent = Some(cmd.spawn().expect("cannot start trove-guestagent"));
            return;
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TROVE_GUESTAGENT__RPC__TRANSPORT_URL", amqp_url())
            .env("TROVE_GUESTAGENT__GUEST__ID", &self.id)
            .env("TROVE_GUESTAGENT__GUEST__SHUTDOWN_GRACE", "5")
            .env("TROVE_GUESTAGENT__CONDUCTOR__REPORT_INTERVAL", "2")
            .env("TROVE_GUESTAGENT__REDIS__SERVICE", "supervised")
            .env("TROVE_GUESTAGENT__REDIS__BINARY", server_binary())
            .env("TROVE_GUESTAGENT__REDIS__CONFIG_FILE", self.config_file())
            .env("TROVE_GUESTAGENT__REDIS__DATA_DIR", self.dir.path().join("data"))
            .env("TROVE_GUESTAGENT__REDIS__PORT", self.port.to_string())
            .env("TROVE_GUESTAGENT__REDIS__ADVERTISE_HOST", "127.0.0.1")
            .env("TROVE_GUESTAGENT__REPLICATION__SYNC_TIMEOUT", "60")
            .env("TROVE_GUESTAGENT__LOG__LEVEL", "debug,lapin=info,redis=info")
            // The host's /dev/vdb is never the test's: no start-up mount unless a test names a device.
            .env("TROVE_GUESTAGENT__VOLUME__DEVICE_PATH", "")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(k) = &self.key {
            cmd.env("TROVE_GUESTAGENT__GUEST__INSTANCE_RPC_ENCR_KEY", k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(&self.args);
        self.agent = Some(cmd.spawn().expect("cannot start trove-guestagent"));
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub fn stop_agent(&mut self) -> Option<i32> {
        let mut c = self.agent.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The Redis server's pid: its pidfile (the harness's, or Trove's moved under the temp dir),
    /// else the process whose title names this port (`redis-server 127.0.0.1:<port>`, Valkey likewise).
    pub fn redis_pid(&self) -> Option<i32> {
        if let Some(pid) = ["redis.pid", "run/redis/redis-server.pid"].iter().find_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok()?.trim().parse().ok()) {
            return Some(pid);
        }
        let suffix = format!(":{}", self.port);
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).ok()?;
            let title = cmd.trim_end_matches('\0').trim();
            ((title.contains("redis-server") || title.contains("valkey-server")) && title.ends_with(&suffix)).then_some(pid)
        })
    }

    /// The redis.conf the prepare call will send.
    pub fn config_contents(&self, password: Option<&str>) -> String {
        let mut c = format!(
            "bind 127.0.0.1\nport 6379\nsave 3600 1\nappendonly no\npidfile {}\nlogfile \"\"\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 5\n",
            self.dir.path().join("redis.pid").display()
        );
        let binary = self.env.iter().find(|(k, _)| k == "TROVE_GUESTAGENT__REDIS__BINARY").map(|(_, v)| v.clone()).unwrap_or_else(server_binary);
        if version_of(&binary).1 >= (7, 0, 0) {
            c.push_str("enable-debug-command local\n");
        }
        if let Some(pw) = password {
            c.push_str(&format!("requirepass {}\n", trove_guest::datastore::redis::conf::quote(pw)));
        }
        c
    }

    /// A direct Redis connection for checks.
    pub async fn redis(&self, password: Option<&str>) -> redis::aio::MultiplexedConnection {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp("127.0.0.1".into(), self.port),
            redis: redis::RedisConnectionInfo { password: password.map(str::to_owned), ..Default::default() },
        };
        redis::Client::open(info).unwrap().get_multiplexed_async_connection().await.expect("redis connection")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill_agent();
        if let Some(pid) = self.redis_pid() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- agent {} log (last lines) ----", self.id);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Starts an agent and waits until it answers `rpc_ping`.
pub async fn spawn_guest(client: &RpcClient, key: Option<&str>, env: &[(&str, &str)]) -> Guest {
    let mut g = Guest {
        id: unique("g"),
        port: free_port(),
        dir: tempfile::tempdir().unwrap(),
        key: key.map(str::to_owned),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        conf_dir: None,
        args: Vec::new(),
        agent: None,
    };
    g.start_agent();
    wait_ping(client, &g).await;
    g
}

/// As `spawn_guest`, in `dir`, with extra agent arguments.
pub async fn spawn_guest_with_args(client: &RpcClient, dir: tempfile::TempDir, env: &[(&str, &str)], args: Vec<String>) -> Guest {
    let mut g = Guest {
        id: unique("g"),
        port: free_port(),
        dir,
        key: None,
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        conf_dir: None,
        args,
        agent: None,
    };
    g.start_agent();
    wait_ping(client, &g).await;
    g
}

/// Starts an agent configured only by Trove's option files in `conf_dir` (plus where Redis
/// lives), with instance `id` and secure-RPC `key` as those files give them.
pub async fn spawn_guest_from_conf_dir(client: &RpcClient, id: &str, key: &str, dir: tempfile::TempDir, conf_dir: PathBuf) -> Guest {
    let mut g = Guest {
        id: id.to_owned(),
        port: free_port(),
        dir,
        key: Some(key.to_owned()),
        env: Vec::new(),
        conf_dir: Some(conf_dir),
        args: Vec::new(),
        agent: None,
    };
    g.start_agent();
    wait_ping(client, &g).await;
    g
}

pub async fn wait_ping(client: &RpcClient, g: &Guest) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.call(&g.topic(), "rpc_ping", Map::new(), "1.0", Duration::from_millis(500), g.cipher().as_ref()).await;
        if matches!(r, Ok(Value::Bool(true))) {
            return;
        }
        if Instant::now() > deadline {
            panic!("agent {} never answered rpc_ping: {r:?}\n{}", g.id, g.log());
        }
    }
}

pub fn args(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Calls a guest method; panics with the agent log on failure.
pub async fn call(client: &RpcClient, g: &Guest, method: &str, a: Value) -> Value {
    match try_call(client, g, method, a).await {
        Ok(v) => v,
        Err(e) => panic!("{method} on {} failed: {e}", g.id),
    }
}

pub async fn try_call(client: &RpcClient, g: &Guest, method: &str, a: Value) -> Result<Value, trove_guest::rpc::Error> {
    client.call(&g.topic(), method, args(a), "1.0", Duration::from_secs(120), g.cipher().as_ref()).await
}

/// The remote failure of a call that must fail.
pub async fn call_err(client: &RpcClient, g: &Guest, method: &str, a: Value) -> trove_guest::rpc::RemoteFailure {
    match try_call(client, g, method, a).await {
        Err(trove_guest::rpc::Error::Remote { failure, .. }) => failure,
        other => panic!("{method} should have failed remotely, got {other:?}"),
    }
}

/// `prepare` (a cast) and wait until Redis answers as a master or synced replica.
pub async fn prepare(client: &RpcClient, g: &Guest, password: Option<&str>, snapshot: Option<Value>) {
    let mut a = json!({
        "packages": null, "databases": [], "memory_mb": 512, "users": [], "device_path": null,
        "mount_point": "/var/lib/redis", "backup_info": null, "config_contents": g.config_contents(password),
        "root_password": null, "overrides": {}, "cluster_config": null, "snapshot": snapshot,
    });
    if a["snapshot"].is_null() {
        a.as_object_mut().unwrap().remove("snapshot");
        a["snapshot"] = Value::Null;
    }
    // Done as Trove sees it: the agent reports healthy (and logs "prepare finished") only once a
    // replica's attach has answered, which is after its link came up.
    let finished = |g: &Guest| g.log().matches("prepare finished").count();
    let before = finished(g);
    client.cast(&g.topic(), "prepare", args(a), "1.0", g.cipher().as_ref()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(status) = try_call(client, g, "get_replication_status", json!({})).await {
            let synced = status["role"] == "master" || (status["link_up"] == true && status["sync_in_progress"] == false);
            if synced && (snapshot.is_none() || status["role"] == "replica") && finished(g) > before {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!("prepare of {} did not finish\n{}", g.id, g.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn info(con: &mut redis::aio::MultiplexedConnection, section: &str) -> trove_guest::datastore::redis::info::Info {
    let text: String = redis::cmd("INFO").arg(section).query_async(con).await.unwrap();
    trove_guest::datastore::redis::info::Info::parse(&text)
}

/// Polls `check` until it is true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when the Redis on `port` answers and is a linked replica of the Redis on `master_port`.
pub async fn linked_replica_of(port: u16, master_port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else { return false };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else { return false };
    let Ok(text) = redis::cmd("INFO").arg("replication").query_async::<String>(&mut con).await else { return false };
    let Some(r) = trove_guest::datastore::redis::info::Info::parse(&text).replication() else { return false };
    r.master_port == Some(master_port) && r.linked()
}

/// A taskmanager whose inventory names `guests` (unencrypted), kept in the returned temp dir.
pub async fn taskmanager(guests: &[Guest]) -> (trove_guest::flows::Taskmanager, tempfile::TempDir) {
    taskmanager_with(guests, "").await
}

/// As `taskmanager`, with `settings` (top-level inventory keys, TOML) added.
pub async fn taskmanager_with(guests: &[Guest], settings: &str) -> (trove_guest::flows::Taskmanager, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.toml");
    let mut text = format!("transport_url = \"{}\"\ncontrol_exchange = \"{EXCHANGE}\"\n{settings}", amqp_url());
    for g in guests {
        text.push_str(&format!("\n[[guest]]\nid = \"{}\"\n", g.id));
    }
    std::fs::write(&path, text).unwrap();
    let inventory = trove_guest::flows::Inventory::load(&path).unwrap();
    (trove_guest::flows::Taskmanager::connect(inventory).await.unwrap(), dir)
}

/// A tempauth login on the test Swift: (storage URL, token). Starts Swift (idempotent).
pub async fn swift_login() -> (String, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash").arg(format!("{root}/scripts/swift.sh")).arg("start").stderr(Stdio::inherit()).output();
    let auth = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().lines().last().unwrap_or_default().to_owned(),
        other => panic!("Swift is not reachable and scripts/swift.sh start failed ({other:?}); the backup tests need a real Swift"),
    };
    let resp = reqwest::Client::new()
        .get(&auth)
        .header("X-Storage-User", "test:tester")
        .header("X-Storage-Pass", "testing")
        .send()
        .await
        .unwrap_or_else(|e| panic!("Swift at {auth} is not reachable: {e}"));
    assert!(resp.status().is_success(), "tempauth login at {auth}: {}", resp.status());
    let h = |k: &str| resp.headers().get(k).unwrap().to_str().unwrap().to_owned();
    (h("x-storage-url"), h("x-auth-token"))
}

/// A request context carrying the user's token, as Trove's API passes it on.
pub fn token_context(token: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("auth_token".into(), json!(token));
    m
}

/// Calls a guest method with more request-context keys (token, catalog, is_admin).
pub async fn try_call_ctx(client: &RpcClient, g: &Guest, method: &str, a: Value, ctx: Map<String, Value>) -> Result<Value, trove_guest::rpc::Error> {
    client.call_with_context(&g.topic(), method, args(a), "1.0", Duration::from_secs(120), g.cipher().as_ref(), ctx).await
}

/// Casts sent to `topic` on the control exchange, each kept as `keep` maps it, in arrival order.
pub async fn capture_casts<T, F>(topic: &str, keep: F) -> (lapin::Connection, std::sync::Arc<std::sync::Mutex<Vec<T>>>)
where
    T: Send + 'static,
    F: Fn(trove_guest::rpc::envelope::Request) -> T + Send + 'static,
{
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let opts = trove_guest::rpc::AmqpOptions::new(&amqp_url(), EXCHANGE, "it-casts");
    let conn = trove_guest::rpc::connection::connect(&opts).await.expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    trove_guest::rpc::connection::declare_control_exchange(&ch, &opts).await.unwrap();
    let q = ch.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default()).await.unwrap();
    ch.queue_bind(q.name().as_str(), EXCHANGE, topic, QueueBindOptions::default(), FieldTable::default()).await.unwrap();
    let mut consumer = ch.basic_consume(q.name().as_str(), "", BasicConsumeOptions { no_ack: true, ..Default::default() }, FieldTable::default()).await.unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<T>>> = Default::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let req = trove_guest::rpc::envelope::decode(&d.data, trove_guest::rpc::envelope::DEFAULT_MAX_BODY).unwrap();
            sink.lock().unwrap().push(keep(req));
        }
    });
    (conn, seen)
}

/// One `trove-guestctl watch` process; killed on drop, its log printed if the test failed.
pub struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Watcher {
    /// Starts a watcher of `inventory`'s set, discovery on `port`, with `extra` arguments to `watch`.
    pub fn start(inventory: &Path, port: u16, log: PathBuf, down_after_ms: u64, extra: &[&str]) -> Watcher {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_trove-guestctl"))
            .arg("--inventory")
            .arg(inventory)
            .args(["watch", "--listen", &format!("127.0.0.1:{port}"), "--down-after-ms", &down_after_ms.to_string()])
            .args(extra)
            .env("TROVE_GUESTCTL_LOG", "trove_guest=info,warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start trove-guestctl watch");
        Watcher { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- watcher log {} (last lines) ----", self.log.display());
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
