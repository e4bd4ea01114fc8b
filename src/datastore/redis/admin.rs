//! The admin connection to a Redis server: typed commands, renamed CONFIG, errors without secrets.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use tokio::sync::Mutex;

use super::info::{Info, Replication};
use crate::datastore::{Error, Result};

/// A connection to one Redis server, shared by its clones. A dead connection (the server
/// restarted, or dropped it) is replaced on the next command, and a command that is safe to send
/// twice is retried once on the new connection.
#[derive(Clone)]
pub struct Admin {
    link: Arc<Link>,
    config_command: String,
    what: String,
}

/// The current connection and how to make a new one.
struct Link {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    /// The live connection and its generation; None after it died.
    current: Mutex<(u64, Option<MultiplexedConnection>)>,
}

/// Whether a command may be sent again after its connection died mid-command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Retry {
    /// Reads and idempotent settings: sending it twice has the effect of sending it once.
    Safe,
    /// Sent at most once.
    Never,
}

/// True when the connection is dead and must be replaced (not a timeout: a slow server is not a dead one).
fn is_dead(e: &redis::RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error())
}

impl Link {
    /// The live connection, connecting when there is none.
    async fn get(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut cur = self.current.lock().await;
        if let Some(con) = &cur.1 {
            return Ok((cur.0, con.clone()));
        }
        let con = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
        cur.0 += 1;
        cur.1 = Some(con.clone());
        Ok((cur.0, con))
    }

    /// Drops connection `generation` if it is still the current one.
    async fn discard(&self, generation: u64) {
        let mut cur = self.current.lock().await;
        if cur.0 == generation {
            cur.1 = None;
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd, retry: Retry) -> redis::RedisResult<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (generation, mut con) = self.get().await?;
            match con.req_packed_command(cmd).await {
                Ok(v) => return redis::from_owned_redis_value(v),
                Err(e) if is_dead(&e) => {
                    self.discard(generation).await;
                    if retry == Retry::Never || attempt > 1 {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "redis connection lost; reconnecting and retrying once");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub password: Option<secrecy::SecretString>,
    /// ACL user; None: the default user.
    pub username: Option<String>,
    pub config_command: String,
    pub timeout: Duration,
    /// Connect with TLS (a master's tls-port); None: plain TCP.
    pub tls: Option<TlsClient>,
}

/// How the agent's TLS client authenticates itself and checks the server.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub files: crate::config::TlsFiles,
    /// Check that the certificate names the host; false checks only the chain, as Redis does.
    pub verify_hostname: bool,
}

impl TlsClient {
    /// The client for `addr`, with the certificate files read now (so rotated files are picked up).
    fn client(&self, host: &str, port: u16, redis: redis::RedisConnectionInfo) -> Result<redis::Client> {
        let addr = format!("redis at {host}:{port}");
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::Unreachable { what: addr.clone(), reason: format!("cannot read {}: {e}", p.display()) })
        };
        let certs = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig { client_cert: read(&self.files.cert_file)?, client_key: read(&self.files.key_file)? }),
            root_cert: Some(read(&self.files.ca_cert_file)?),
        };
        let info = redis::ConnectionInfo { addr: redis::ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None }, redis };
        let bad = |e: redis::RedisError| Error::Unreachable { what: addr.clone(), reason: format!("TLS settings: {e}") };
        // build_with_tls resets the host-name flag, so it is set on the built client's address.
        let client = redis::Client::build_with_tls(info, certs).map_err(bad)?;
        let mut info = client.get_connection_info().clone();
        info.addr.set_danger_accept_invalid_hostnames(!self.verify_hostname);
        redis::Client::open(info).map_err(bad)
    }
}

impl Admin {
    pub async fn connect(target: &Target) -> Result<Admin> {
        use secrecy::ExposeSecret;
        let what = format!("redis at {}:{}", target.host, target.port);
        let redis = redis::RedisConnectionInfo {
            password: target.password.as_ref().map(|p| p.expose_secret().to_owned()).filter(|p| !p.is_empty()),
            username: target.username.clone(),
            ..Default::default()
        };
        let client = match &target.tls {
            Some(tls) => tls.client(&target.host, target.port, redis)?,
            None => redis::Client::open(redis::ConnectionInfo { addr: redis::ConnectionAddr::Tcp(target.host.clone(), target.port), redis })
                .map_err(|e| Error::Unreachable { what: what.clone(), reason: e.to_string() })?,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(target.timeout)
            .set_response_timeout(target.timeout.max(Duration::from_secs(10)));
        let link = Arc::new(Link { client, config, current: Mutex::new((0, None)) });
        link.get().await.map_err(|e| classify("connect", &what, e))?;
        Ok(Admin { link, config_command: target.config_command.clone(), what })
    }

    /// Every command of this type is a read or an idempotent setting, so it is retried once
    /// after a dead connection; only `shutdown` is not.
    async fn run<T: redis::FromRedisValue>(&mut self, name: &str, cmd: &redis::Cmd) -> Result<T> {
        self.link.query(cmd, Retry::Safe).await.map_err(|e| classify(name, &self.what, e))
    }

    pub async fn ping(&mut self) -> Result<()> {
        self.run::<String>("PING", &redis::cmd("PING")).await.map(|_| ())
    }

    /// `PUBLISH channel ""`: moves a master's replication offset (Redis propagates PUBLISH to its
    /// replicas) without touching the keyspace.
    pub async fn publish_marker(&mut self, channel: &str) -> Result<()> {
        self.run::<i64>("PUBLISH", redis::cmd("PUBLISH").arg(channel).arg("")).await.map(|_| ())
    }

    /// `REPLCONF GETACK *` on a replica: it sends its master a `REPLCONF ACK` now, not at its next
    /// once-a-second one. Redis answers nothing to it, so it goes packed ahead of a PING and one
    /// reply is read; give it a connection of its own (a refusal would leave the PONG unread).
    pub async fn request_ack(&mut self) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("REPLCONF").arg("GETACK").arg("*").cmd("PING");
        let (_, mut con) = self.link.get().await.map_err(|e| classify("REPLCONF GETACK", &self.what, e))?;
        con.req_packed_commands(&pipe, 0, 1).await.map(|_| ()).map_err(|e| classify("REPLCONF GETACK", &self.what, e))
    }

    pub async fn info(&mut self, section: &str) -> Result<Info> {
        let text: String = self.run("INFO", redis::cmd("INFO").arg(section)).await?;
        Ok(Info::parse(&text))
    }

    pub async fn replication(&mut self) -> Result<Replication> {
        self.info("replication")
            .await?
            .replication()
            .ok_or_else(|| Error::Command { command: "INFO replication".into(), reason: "no role in reply".into() })
    }

    pub async fn config_get(&mut self, key: &str) -> Result<Option<String>> {
        let cmd = self.config_command.clone();
        let pairs: Vec<String> = self.run("CONFIG GET", redis::cmd(&cmd).arg("GET").arg(key)).await?;
        Ok(pairs.get(1).cloned())
    }

    /// `CONFIG SET key value`. The value is never put in the error (it may be a password).
    pub async fn config_set(&mut self, key: &str, value: &str) -> Result<()> {
        let cmd = self.config_command.clone();
        self.run::<()>(&format!("CONFIG SET {key}"), redis::cmd(&cmd).arg("SET").arg(key).arg(value)).await
    }

    /// `CONFIG SET k1 v1 k2 v2 ...`: all or none (Redis 7). Errors name the keys, never the values.
    pub async fn config_set_many(&mut self, pairs: &[(&str, &str)]) -> Result<()> {
        let mut cmd = redis::cmd(&self.config_command);
        cmd.arg("SET");
        for (k, v) in pairs {
            cmd.arg(*k).arg(*v);
        }
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        self.run::<()>(&format!("CONFIG SET {}", keys.join(" ")), &cmd).await
    }

    /// `CLIENT LIST TYPE normal`, as Redis prints it.
    pub async fn client_list_normal(&mut self) -> Result<String> {
        self.run("CLIENT LIST", redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal")).await
    }

    /// `CLIENT KILL ID id SKIPME yes`: whether a client was closed.
    pub async fn client_kill_id(&mut self, id: &str) -> Result<bool> {
        let n: u64 = self.run("CLIENT KILL", redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).arg("SKIPME").arg("yes")).await?;
        Ok(n > 0)
    }

    pub async fn replicaof(&mut self, host: &str, port: u16) -> Result<()> {
        self.run::<String>("SLAVEOF", redis::cmd("SLAVEOF").arg(host).arg(port)).await.map(|_| ())
    }

    pub async fn replicaof_no_one(&mut self) -> Result<()> {
        self.run::<String>("SLAVEOF NO ONE", redis::cmd("SLAVEOF").arg("NO").arg("ONE")).await.map(|_| ())
    }

    /// `CLIENT PAUSE ms WRITE` (6.2+); older servers pause all clients.
    pub async fn pause_writes(&mut self, ms: u64, write_only: bool) -> Result<()> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("PAUSE").arg(ms);
        if write_only {
            cmd.arg("WRITE");
        }
        self.run::<()>("CLIENT PAUSE", &cmd).await
    }

    /// `CLIENT KILL TYPE normal SKIPME yes`: closes every client connection but this one (as
    /// Sentinel does with its `SLAVEOF`), so the clients of a demoted master rediscover at once.
    pub async fn kill_clients(&mut self) -> Result<u64> {
        self.run("CLIENT KILL", redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes")).await
    }

    /// `SAVE`: the dataset to the RDB file, synchronously.
    pub async fn save(&mut self) -> Result<()> {
        self.run::<()>("SAVE", &redis::cmd("SAVE")).await
    }

    pub async fn unpause(&mut self) -> Result<()> {
        self.run::<()>("CLIENT UNPAUSE", redis::cmd("CLIENT").arg("UNPAUSE")).await
    }

    /// `BGSAVE SCHEDULE`: a background save now, or as soon as a running AOF rewrite ends.
    pub async fn bgsave_schedule(&mut self) -> Result<()> {
        self.run::<String>("BGSAVE", redis::cmd("BGSAVE").arg("SCHEDULE")).await.map(|_| ())
    }

    /// `LASTSAVE`: the Unix time of the last successful save.
    pub async fn lastsave(&mut self) -> Result<i64> {
        self.run("LASTSAVE", &redis::cmd("LASTSAVE")).await
    }

    /// The server's clock, whole seconds (`TIME`).
    pub async fn time(&mut self) -> Result<i64> {
        let (secs, _micros): (i64, i64) = self.run("TIME", &redis::cmd("TIME")).await?;
        Ok(secs)
    }

    /// Turns this connection into a replica asking for a full sync (`REPLCONF capa eof capa psync2`,
    /// Valkey's `REPLCONF version`, `PSYNC ? -1`) and returns the first answer (`+FULLRESYNC …`).
    /// The connection is useless afterwards: drop this `Admin`.
    pub async fn psync_full(&mut self, valkey_version: Option<&str>) -> Result<String> {
        self.link.query::<()>(redis::cmd("REPLCONF").arg("capa").arg("eof").arg("capa").arg("psync2"), Retry::Never).await.map_err(|e| classify("REPLCONF", &self.what, e))?;
        if let Some(v) = valkey_version {
            self.link.query::<()>(redis::cmd("REPLCONF").arg("version").arg(v), Retry::Never).await.map_err(|e| classify("REPLCONF", &self.what, e))?;
        }
        match self.link.query(redis::cmd("PSYNC").arg("?").arg("-1"), Retry::Never).await {
            // `+FULLRESYNC` and the stream's `$EOF:<mark>` read at once: the client's parser fails
            // on the mark before it hands out the first reply. Only a full sync sends that stream.
            Err(e) if e.kind() == redis::ErrorKind::ParseError => Ok("FULLRESYNC (read with the start of the stream)".into()),
            r => r.map_err(|e| classify("PSYNC", &self.what, e)),
        }
    }

    /// `SHUTDOWN` (saving if persistence is configured). The connection dropping is success.
    pub async fn shutdown(&mut self) -> Result<()> {
        match self.link.query::<()>(&redis::cmd("SHUTDOWN"), Retry::Never).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => Ok(()),
            Err(e) => Err(classify("SHUTDOWN", &self.what, e)),
        }
    }
}

fn classify(command: &str, what: &str, e: redis::RedisError) -> Error {
    let reason = e.to_string();
    if reason.contains("LOADING") {
        return Error::Loading;
    }
    if e.is_connection_refusal() {
        return Error::NotRunning;
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return Error::Unreachable { what: what.to_owned(), reason };
    }
    Error::Command { command: command.to_owned(), reason }
}
