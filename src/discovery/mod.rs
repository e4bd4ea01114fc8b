//! Discovery that Sentinel clients already speak: a subset of the Sentinel protocol (RESP2/RESP3) served
//! from the watcher's live view of every replica set it watches (`Sets`, by name).

pub mod metrics;
pub mod resp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Mutex, RwLock};

use resp::{read_command, ReadError, Reply};

/// One Redis node as clients reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub run_id: String,
    /// The watcher's view: no answer, or Redis down, for now.
    pub down: bool,
    pub link_up: bool,
    pub offset: i64,
}

/// The replica set as the watcher sees it.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub master: Option<Node>,
    pub replicas: Vec<Node>,
    pub sdown: bool,
    pub odown: bool,
    /// Bumped at every failover (Sentinel's config epoch).
    pub epoch: u64,
}

/// A `SENTINEL FAILOVER` for the watcher: it answers with an error reply's text, or Ok once done.
pub type FailoverRequest = oneshot::Sender<Result<(), String>>;

/// What the endpoint serves, shared with the watcher.
pub struct Shared {
    pub name: String,
    pub view: RwLock<View>,
    /// Sentinel events: (channel, payload).
    pub events: broadcast::Sender<(String, String)>,
    /// The other watchers' `host:port`.
    pub peers: Vec<String>,
    pub password: Option<SecretString>,
    pub down_after_ms: u64,
    /// This watcher's 40-hex id.
    pub my_id: String,
    /// Whether this watcher holds the lease (only the acting one takes `SENTINEL FAILOVER`).
    pub acting: AtomicBool,
    failovers: mpsc::Sender<FailoverRequest>,
    /// The watcher's end of `failovers`, taken once by the watch loop.
    pub failover_requests: Mutex<Option<mpsc::Receiver<FailoverRequest>>>,
    /// The watch loop's counters, for `/metrics` (`metrics.rs`).
    pub stats: metrics::WatchStats,
}

/// A 40-hex Sentinel id.
fn new_id() -> String {
    (0..40).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect()
}

impl Shared {
    pub fn new(name: &str, peers: Vec<String>, password: Option<SecretString>, down_after_ms: u64) -> Arc<Shared> {
        Shared::in_process(name, peers, password, down_after_ms, broadcast::channel(256).0, new_id())
    }

    /// One of several sets a process watches: its events go on the process's one channel.
    fn in_process(name: &str, peers: Vec<String>, password: Option<SecretString>, down_after_ms: u64, events: broadcast::Sender<(String, String)>, my_id: String) -> Arc<Shared> {
        let (failovers, requests) = mpsc::channel(1);
        Arc::new(Shared {
            name: name.into(),
            view: RwLock::new(View::default()),
            events,
            peers,
            password,
            down_after_ms,
            my_id,
            acting: AtomicBool::new(false),
            failovers,
            failover_requests: Mutex::new(Some(requests)),
            stats: metrics::WatchStats::default(),
        })
    }

    /// Publishes one Sentinel event to subscribers.
    pub fn publish(&self, channel: &str, payload: String) {
        tracing::info!(event = channel, %payload, "sentinel event");
        let _ = self.events.send((channel.into(), payload));
    }
}

/// Every replica set a watcher process serves, by name, with the process's one Sentinel id, event
/// channel and discovery password.
pub struct Sets {
    sets: std::sync::RwLock<std::collections::BTreeMap<String, Arc<Shared>>>,
    events: broadcast::Sender<(String, String)>,
    password: Option<SecretString>,
    my_id: String,
}

impl Sets {
    pub fn new(password: Option<SecretString>) -> Arc<Sets> {
        Arc::new(Sets { sets: Default::default(), events: broadcast::channel(1024).0, password, my_id: new_id() })
    }

    /// One set only (`watch --inventory`).
    pub fn one(shared: Arc<Shared>) -> Arc<Sets> {
        let sets = Sets { sets: Default::default(), events: shared.events.clone(), password: shared.password.clone(), my_id: shared.my_id.clone() };
        sets.sets.write().unwrap_or_else(|p| p.into_inner()).insert(shared.name.clone(), shared);
        Arc::new(sets)
    }

    /// Adds a set; a name already served is refused.
    pub fn add(&self, name: &str, peers: Vec<String>, down_after_ms: u64) -> Result<Arc<Shared>, String> {
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        if sets.contains_key(name) {
            return Err(format!("a set named {name:?} is already watched"));
        }
        let shared = Shared::in_process(name, peers, self.password.clone(), down_after_ms, self.events.clone(), self.my_id.clone());
        sets.insert(name.to_owned(), shared.clone());
        Ok(shared)
    }

    pub fn remove(&self, name: &str) {
        self.sets.write().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    pub fn get(&self, name: &str) -> Option<Arc<Shared>> {
        self.sets.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Every set, by name.
    pub fn all(&self) -> Vec<Arc<Shared>> {
        self.sets.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// Accepts clients until the listener fails.
pub async fn serve(listener: TcpListener, sets: Arc<Sets>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let sets = sets.clone();
                tokio::spawn(async move { Session::new(sets).run(stream).await });
            }
            Err(error) => {
                tracing::warn!(%error, "discovery: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client connection.
struct Session {
    sets: Arc<Sets>,
    authed: bool,
    name: Option<String>,
    channels: Vec<String>,
    patterns: Vec<String>,
    /// The client asked for RESP3 (`HELLO 3`).
    resp3: bool,
}

enum Next {
    Reply(Reply),
    Replies(Vec<Reply>),
    Close(Reply),
}

impl Session {
    fn new(sets: Arc<Sets>) -> Session {
        let authed = sets.password.is_none();
        Session { sets, authed, name: None, channels: Vec::new(), patterns: Vec::new(), resp3: false }
    }

    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut events = self.sets.events.subscribe();
        loop {
            let subscribed = !self.channels.is_empty() || !self.patterns.is_empty();
            let next = tokio::select! {
                cmd = read_command(&mut rd) => match cmd {
                    Ok(args) => self.handle(args).await,
                    Err(ReadError::Closed) => return,
                    Err(ReadError::Protocol(e)) => Next::Close(Reply::err(format!("ERR {e}"))),
                },
                ev = events.recv(), if subscribed => match ev {
                    Ok((channel, payload)) => Next::Replies(self.deliver(&channel, &payload)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let mut out = Vec::new();
            let close = match next {
                Next::Reply(r) => {
                    r.encode(&mut out, self.resp3);
                    false
                }
                Next::Replies(rs) => {
                    rs.iter().for_each(|r| r.encode(&mut out, self.resp3));
                    false
                }
                Next::Close(r) => {
                    r.encode(&mut out, self.resp3);
                    true
                }
            };
            if wr.write_all(&out).await.is_err() || close {
                return;
            }
        }
    }

    fn deliver(&self, channel: &str, payload: &str) -> Vec<Reply> {
        let mut out = Vec::new();
        if self.channels.iter().any(|c| c == channel) {
            out.push(Reply::Push(vec![Reply::Bulk("message".into()), Reply::Bulk(channel.into()), Reply::Bulk(payload.into())]));
        }
        for p in self.patterns.iter().filter(|p| resp::glob_match(p, channel)) {
            out.push(Reply::Push(vec![Reply::Bulk("pmessage".into()), Reply::Bulk(p.clone()), Reply::Bulk(channel.into()), Reply::Bulk(payload.into())]));
        }
        out
    }

    fn check_password(&self, given: &str) -> bool {
        self.sets.password.as_ref().map_or(true, |p| p.expose_secret() == given)
    }

    async fn handle(&mut self, args: Vec<String>) -> Next {
        let cmd = args[0].to_ascii_uppercase();
        let sub = args.get(1).map(|s| s.to_ascii_uppercase()).unwrap_or_default();
        if !self.authed && !matches!(cmd.as_str(), "AUTH" | "HELLO" | "QUIT") {
            return Next::Reply(Reply::err("NOAUTH Authentication required."));
        }
        let subscribed = !self.channels.is_empty() || !self.patterns.is_empty();
        if subscribed && !matches!(cmd.as_str(), "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET") {
            return Next::Reply(Reply::err(format!("ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", args[0].to_lowercase())));
        }
        let reply = match cmd.as_str() {
            "PING" if subscribed => Reply::Array(vec![Reply::Bulk("pong".into()), Reply::Bulk(args.get(1).cloned().unwrap_or_default())]),
            "PING" => args.get(1).map(|m| Reply::Bulk(m.clone())).unwrap_or(Reply::Simple("PONG".into())),
            "ECHO" if args.len() == 2 => Reply::Bulk(args[1].clone()),
            "QUIT" => return Next::Close(Reply::ok()),
            "RESET" => {
                self.channels.clear();
                self.patterns.clear();
                self.authed = self.sets.password.is_none();
                Reply::Simple("RESET".into())
            }
            "AUTH" => match args.len() {
                2 | 3 if self.check_password(args.last().unwrap()) => {
                    self.authed = true;
                    Reply::ok()
                }
                2 | 3 => Reply::err("WRONGPASS invalid username-password pair or user is disabled."),
                _ => Reply::err("ERR wrong number of arguments for 'auth' command"),
            },
            "HELLO" => return Next::Reply(self.hello(&args)),
            "ROLE" => Reply::Array(vec![Reply::Bulk("sentinel".into()), Reply::Array(self.sets.all().iter().map(|s| Reply::Bulk(s.name.clone())).collect())]),
            "INFO" => Reply::Bulk(self.info().await),
            "CLIENT" => match sub.as_str() {
                "SETNAME" if args.len() == 3 => {
                    self.name = Some(args[2].clone());
                    Reply::ok()
                }
                "GETNAME" => self.name.clone().map(Reply::Bulk).unwrap_or(Reply::Nil),
                "ID" => Reply::Int(1),
                "SETINFO" | "KILL" | "REPLY" | "NO-EVICT" | "NO-TOUCH" => Reply::ok(),
                _ => Reply::err(format!("ERR unknown subcommand '{}'", args.get(1).cloned().unwrap_or_default())),
            },
            "COMMAND" => Reply::Array(vec![]),
            "SUBSCRIBE" | "PSUBSCRIBE" if args.len() >= 2 => {
                let kind = if cmd == "SUBSCRIBE" { "subscribe" } else { "psubscribe" };
                let mut out = Vec::new();
                for a in &args[1..] {
                    let list = if cmd == "SUBSCRIBE" { &mut self.channels } else { &mut self.patterns };
                    if !list.contains(a) {
                        list.push(a.clone());
                    }
                    out.push(Reply::Push(vec![Reply::Bulk(kind.into()), Reply::Bulk(a.clone()), Reply::Int((self.channels.len() + self.patterns.len()) as i64)]));
                }
                return Next::Replies(out);
            }
            "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
                let kind = if cmd == "UNSUBSCRIBE" { "unsubscribe" } else { "punsubscribe" };
                let list = if cmd == "UNSUBSCRIBE" { &mut self.channels } else { &mut self.patterns };
                let names: Vec<String> = if args.len() > 1 { args[1..].to_vec() } else { list.clone() };
                list.retain(|c| !names.contains(c));
                let total = (self.channels.len() + self.patterns.len()) as i64;
                if names.is_empty() {
                    return Next::Reply(Reply::Push(vec![Reply::Bulk(kind.into()), Reply::Nil, Reply::Int(total)]));
                }
                return Next::Replies(names.into_iter().map(|n| Reply::Push(vec![Reply::Bulk(kind.into()), Reply::Bulk(n), Reply::Int(total)])).collect());
            }
            "SENTINEL" => self.sentinel(&sub, &args).await,
            _ => Reply::err(format!("ERR unknown command '{}'", args[0])),
        };
        Next::Reply(reply)
    }

    fn hello(&mut self, args: &[String]) -> Reply {
        let mut i = 1;
        let mut resp3 = self.resp3;
        if let Some(v) = args.get(1) {
            match v.as_str() {
                "2" => resp3 = false,
                "3" => resp3 = true,
                _ => return Reply::err("NOPROTO unsupported protocol version"),
            }
            i = 2;
        }
        while i < args.len() {
            match args[i].to_ascii_uppercase().as_str() {
                "AUTH" if i + 2 < args.len() => {
                    if !self.check_password(&args[i + 2]) {
                        return Reply::err("WRONGPASS invalid username-password pair or user is disabled.");
                    }
                    self.authed = true;
                    i += 3;
                }
                "SETNAME" if i + 1 < args.len() => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => return Reply::err("ERR Syntax error in HELLO option"),
            }
        }
        if !self.authed {
            return Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        self.resp3 = resp3;
        let text = |v: &str| Reply::Bulk(v.into());
        Reply::Map(vec![
            ("server".into(), text("redis")),
            ("version".into(), text("7.0.0")),
            ("proto".into(), Reply::Int(if resp3 { 3 } else { 2 })),
            ("id".into(), Reply::Int(1)),
            ("mode".into(), text("sentinel")),
            ("role".into(), text("sentinel")),
            ("modules".into(), Reply::Array(vec![])),
        ])
    }

    async fn info(&self) -> String {
        let sets = self.sets.all();
        let mut masters = String::new();
        for (n, set) in sets.iter().enumerate() {
            let v = set.view.read().await;
            let status = if v.odown { "odown" } else if v.sdown { "sdown" } else { "ok" };
            let address = v.master.as_ref().map(|m| format!("{}:{}", m.host, m.port)).unwrap_or_default();
            masters += &format!("master{n}:name={},status={status},address={address},slaves={},sentinels={}\r\n", set.name, v.replicas.len(), set.peers.len() + 1);
        }
        format!(
            "# Server\r\nredis_version:7.0.0\r\nredis_mode:sentinel\r\nrun_id:{}\r\nexecutable:trove-guestctl\r\n\r\n# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\nsentinel_scripts_queue_length:0\r\n{masters}",
            self.sets.my_id,
            sets.len(),
        )
    }

    async fn sentinel(&self, sub: &str, args: &[String]) -> Reply {
        let no_master = || Reply::err("ERR No such master with that name");
        if sub == "MASTERS" {
            let mut out = Vec::new();
            for set in self.sets.all() {
                let v = set.view.read().await.clone();
                if let Some(m) = &v.master {
                    out.push(master_state(&set, m, &v));
                }
            }
            return Reply::Array(out);
        }
        if sub == "MYID" {
            return Reply::Bulk(self.sets.my_id.clone());
        }
        let set = args.get(2).and_then(|n| self.sets.get(n));
        let known = matches!(sub, "GET-MASTER-ADDR-BY-NAME" | "MASTER" | "REPLICAS" | "SLAVES" | "SENTINELS" | "FAILOVER" | "CKQUORUM");
        let Some(set) = set else {
            return match sub {
                "GET-MASTER-ADDR-BY-NAME" => Reply::Nil,
                _ if known => no_master(),
                _ => Reply::err(format!("ERR Unknown sentinel subcommand '{}'", args.get(1).cloned().unwrap_or_default())),
            };
        };
        let v = set.view.read().await.clone();
        match sub {
            "GET-MASTER-ADDR-BY-NAME" => match &v.master {
                Some(m) => Reply::Array(vec![Reply::Bulk(m.host.clone()), Reply::Bulk(m.port.to_string())]),
                None => Reply::Nil,
            },
            "MASTER" => v.master.as_ref().map(|m| master_state(&set, m, &v)).unwrap_or_else(no_master),
            "REPLICAS" | "SLAVES" => {
                let Some(m) = &v.master else { return no_master() };
                Reply::Array(v.replicas.iter().map(|r| replica_state(r, m)).collect())
            }
            "SENTINELS" => Reply::Array(set.peers.iter().map(|p| peer_state(p)).collect()),
            // A planned switchover through the promote (no acknowledged write lost); answered once
            // it is done, where Sentinel answers at once.
            "FAILOVER" => {
                if !set.acting.load(Ordering::SeqCst) {
                    return Reply::err("ERR this watcher does not hold the lease: send SENTINEL FAILOVER to the acting watcher");
                }
                let (done, outcome) = oneshot::channel();
                if set.failovers.try_send(done).is_err() {
                    return Reply::err("INPROG Failover already in progress");
                }
                match outcome.await {
                    Ok(Ok(())) => Reply::ok(),
                    Ok(Err(e)) => Reply::err(e),
                    Err(_) => Reply::err("ERR the watcher stopped before the failover"),
                }
            }
            "CKQUORUM" => Reply::Simple(format!("OK {} usable Sentinels. Quorum and failover authorization can be reached", set.peers.len() + 1)),
            _ => Reply::err(format!("ERR Unknown sentinel subcommand '{}'", args.get(1).cloned().unwrap_or_default())),
        }
    }
}

fn master_state(set: &Shared, m: &Node, v: &View) -> Reply {
    // The watcher's sdown is about the agent, not Redis: a master whose agent is silent may
    // serve well. Clients are steered away only once it is objectively down.
    let mut flags = vec!["master"];
    if v.odown {
        flags.extend(["s_down", "o_down"]);
    }
    state(set.name.clone(), &m.host, m.port, &m.run_id, &flags, &[
        ("down-after-milliseconds", set.down_after_ms.to_string()),
        ("info-refresh", "0".into()),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        ("config-epoch", v.epoch.to_string()),
        ("num-slaves", v.replicas.len().to_string()),
        ("num-other-sentinels", set.peers.len().to_string()),
        ("quorum", (set.peers.len() / 2 + 1).to_string()),
        ("failover-timeout", "180000".into()),
        ("parallel-syncs", v.replicas.len().max(1).to_string()),
    ])
}

fn replica_state(r: &Node, m: &Node) -> Reply {
    let mut flags = vec!["slave"];
    if r.down {
        flags.push("s_down");
        flags.push("disconnected");
    }
    state(format!("{}:{}", r.host, r.port), &r.host, r.port, &r.run_id, &flags, &[
        ("info-refresh", "0".into()),
        ("role-reported", "slave".into()),
        ("role-reported-time", "0".into()),
        ("master-link-down-time", "0".into()),
        ("master-link-status", if r.link_up { "ok" } else { "err" }.into()),
        ("master-host", m.host.clone()),
        ("master-port", m.port.to_string()),
        ("slave-priority", "100".into()),
        ("slave-repl-offset", r.offset.max(0).to_string()),
    ])
}

fn peer_state(addr: &str) -> Reply {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "26379"));
    state(addr.into(), host, port.parse().unwrap_or(26379), "", &["sentinel"], &[
        ("down-after-milliseconds", "0".into()),
        ("last-hello-message", "0".into()),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

/// One Sentinel state record: identity, flags and link fields, then `rest`.
fn state(name: String, host: &str, port: u16, run_id: &str, flags: &[&str], rest: &[(&str, String)]) -> Reply {
    let mut kv: Vec<(&str, String)> = vec![
        ("name", name),
        ("ip", host.to_owned()),
        ("port", port.to_string()),
        ("runid", run_id.to_owned()),
        ("flags", flags.join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
    ];
    kv.extend(rest.iter().cloned());
    Reply::pairs(&kv)
}
