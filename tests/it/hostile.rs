//! Hostile-input catalogue: every case goes over RabbitMQ to a running agent that is a replica of
//! a prepared master, and must leave both nodes exactly as they were.
//!
//! For every case: the reply is a clear oslo failure naming the argument (or, without a usable
//! reply address, no reply at all), both agents still answer `rpc_ping`, both `redis.conf` files
//! and agent state files are byte-identical, and Redis's run id, role, master and the
//! replication-related `CONFIG GET` values are unchanged.
//!
//! Messages are built and published raw (lapin, exchange `trove`, routing key `guestagent.<id>`)
//! with replies collected on a `reply_<hex>` queue of our own, so bodies can be anything at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Map, Value};
use trove_guest::datastore::redis::conf;
use trove_guest::rpc::crypto::Cipher;
use trove_guest::rpc::envelope;
use trove_guest::rpc::failure::RemoteFailure;
use trove_guest::rpc::AmqpOptions;

use crate::harness::*;

/// The master's password: spaces, quotes and non-ASCII, so it exercises quoting everywhere.
const MASTER_PW: &str = "m pw \"q\" 'é' #x";
const REPLICA_KEY: &str = "hostileKey0123456789abcdefghijklm";

/// Replies by `_msg_id`.
type Replies = Arc<Mutex<HashMap<String, Vec<Map<String, Value>>>>>;

// ---------------------------------------------------------------------------------------------
// Raw AMQP: publish anything, collect replies by _msg_id
// ---------------------------------------------------------------------------------------------

struct Wire {
    _conn: Connection,
    channel: Channel,
    reply_q: String,
    replies: Replies,
    /// Replies we could not correlate (no `_msg_id`, or not decodable).
    strays: Arc<Mutex<Vec<String>>>,
}

impl Wire {
    async fn connect() -> Wire {
        let opts = AmqpOptions::new(&amqp_url(), EXCHANGE, "it-hostile");
        let conn = match trove_guest::rpc::connection::connect(&opts).await {
            Ok(c) => c,
            Err(e) => panic!("RabbitMQ is not reachable at {} ({e}); start it with scripts/services.sh", amqp_url()),
        };
        let channel = conn.create_channel().await.unwrap();
        let reply_q = format!("reply_{}", envelope::new_id());
        trove_guest::rpc::connection::declare_reply_queue(&channel, &reply_q, 600_000).await.unwrap();
        let mut consumer = channel
            .basic_consume(&reply_q, "", BasicConsumeOptions { no_ack: true, ..Default::default() }, FieldTable::default())
            .await
            .unwrap();
        let replies: Replies = Arc::default();
        let strays: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, s) = (replies.clone(), strays.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                match envelope::decode_reply(&d.data) {
                    Ok(m) => match m.get("_msg_id").and_then(Value::as_str).map(str::to_owned) {
                        Some(id) => r.lock().unwrap().entry(id).or_default().push(m),
                        None => s.lock().unwrap().push(format!("{m:?}")),
                    },
                    Err(e) => s.lock().unwrap().push(format!("undecodable reply ({e}): {}", String::from_utf8_lossy(&d.data))),
                }
            }
        });
        Wire { _conn: conn, channel, reply_q, replies, strays }
    }

    async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.channel
            .basic_publish(EXCHANGE, routing_key, BasicPublishOptions::default(), body, BasicProperties::default().with_content_type("application/json".into()))
            .await
            .unwrap()
            .await
            .unwrap();
    }

    fn count(&self, msg_id: &str) -> usize {
        self.replies.lock().unwrap().get(msg_id).map_or(0, Vec::len)
    }

    async fn wait_reply(&self, msg_id: &str, timeout: Duration) -> Option<Map<String, Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.replies.lock().unwrap().get(msg_id).and_then(|v| v.first().cloned()) {
                return Some(r);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Counts the messages in `queue` and those containing `needle`, leaving them all there.
    async fn peek(&self, queue: &str, needle: &str) -> (usize, usize) {
        let (mut total, mut hits, mut last_tag) = (0, 0, None);
        while let Some(m) = self.channel.basic_get(queue, BasicGetOptions { no_ack: false }).await.unwrap() {
            total += 1;
            if String::from_utf8_lossy(&m.delivery.data).contains(needle) {
                hits += 1;
            }
            last_tag = Some(m.delivery.delivery_tag);
        }
        if let Some(tag) = last_tag {
            self.channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await.unwrap();
        }
        (total, hits)
    }
}

// ---------------------------------------------------------------------------------------------
// Message building
// ---------------------------------------------------------------------------------------------

fn cipher(key: &str) -> Cipher {
    Cipher::new(&secrecy::SecretString::from(key.to_owned()))
}

fn context() -> Map<String, Value> {
    args(json!({"user": "hostile", "is_admin": true, "request_id": format!("req-{}", envelope::new_id())}))
}

/// A message dict as oslo sends it; `seal` encrypts arguments and context as Trove's SecureSerializer.
fn message(method: &str, a: Value, version: &str, reply: Option<(&str, &str)>, seal: Option<&Cipher>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("method".into(), json!(method));
    let a = args(a);
    let (a, ctx) = match seal {
        None => (a, context()),
        Some(c) => (
            a.into_iter().map(|(k, v)| (k, json!(c.encrypt_value(&v)))).collect(),
            args(json!({"context": c.encrypt_value(&Value::Object(context()))})),
        ),
    };
    m.insert("args".into(), Value::Object(a));
    m.insert("version".into(), json!(version));
    if let Some((msg_id, reply_q)) = reply {
        m.insert("_msg_id".into(), json!(msg_id));
        m.insert("_reply_q".into(), json!(reply_q));
        m.insert("_timeout".into(), Value::Null);
    }
    m.insert("_unique_id".into(), json!(envelope::new_id()));
    for (k, v) in ctx {
        m.insert(format!("_context_{k}"), v);
    }
    m
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Node {
    Master,
    Replica,
}

enum Expect {
    /// A failure reply of this class whose message contains every string.
    Fails(&'static str, Vec<String>),
    /// No reply at all (no usable reply address); a cast that must have no effect.
    Silent,
}

struct Case {
    name: String,
    node: Node,
    body: Vec<u8>,
    msg_id: Option<String>,
    expect: Expect,
    /// Extra settle time before the state check (casts that, if accepted, would act later).
    settle: Duration,
}

/// Builds the catalogue for one pair of nodes.
struct Catalogue<'a> {
    cases: Vec<Case>,
    reply_q: String,
    replica_cipher: Cipher,
    master: &'a Guest,
    replica: &'a Guest,
}

impl Catalogue<'_> {
    fn seal(&self, node: Node) -> Option<&Cipher> {
        (node == Node::Replica).then_some(&self.replica_cipher)
    }

    /// A call (reply expected) with ordinary framing: the arguments are the hostile part.
    fn call(&mut self, name: impl Into<String>, node: Node, method: &str, a: Value, expect: Expect) {
        let msg_id = envelope::new_id();
        let m = message(method, a, "1.0", Some((&msg_id, &self.reply_q)), self.seal(node));
        self.raw(name, node, envelope::wrap(&Value::Object(m)), Some(msg_id), expect);
    }

    /// A cast (no reply); `settle` lets a wrongly accepted cast act before the state check.
    fn cast(&mut self, name: impl Into<String>, node: Node, method: &str, a: Value) {
        let m = message(method, a, "1.0", None, self.seal(node));
        self.cases.push(Case { name: name.into(), node, body: envelope::wrap(&Value::Object(m)), msg_id: None, expect: Expect::Silent, settle: Duration::from_millis(400) });
    }

    fn raw(&mut self, name: impl Into<String>, node: Node, body: Vec<u8>, msg_id: Option<String>, expect: Expect) {
        self.cases.push(Case { name: name.into(), node, body, msg_id, expect, settle: Duration::ZERO });
    }

    /// Wrong types for one argument: each must fail as a TypeError naming `named`.
    fn wrong_types(&mut self, node: Node, method: &str, base: Value, path: &[&str], named: &str, bad: Vec<Value>) {
        for v in bad {
            let mut a = base.clone();
            set_path(&mut a, path, v.clone());
            self.call(format!("{method}: {} = {v}", path.join(".")), node, method, a, type_error(named));
        }
    }
}

/// Sets (or, for `Value::Null` marked as missing, removes) a nested key.
fn set_path(v: &mut Value, path: &[&str], new: Value) {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = v;
    for p in parents {
        cur = cur.as_object_mut().unwrap().entry(p.to_string()).or_insert(json!({}));
    }
    let obj = cur.as_object_mut().unwrap();
    if new == json!({"__missing__": true}) {
        obj.remove(*last);
    } else {
        obj.insert(last.to_string(), new);
    }
}

fn missing() -> Value {
    json!({"__missing__": true})
}

fn type_error(named: &str) -> Expect {
    Expect::Fails("TypeError", vec![format!("'{named}")])
}

fn fails(class: &'static str, words: &[&str]) -> Expect {
    Expect::Fails(class, words.iter().map(|s| s.to_string()).collect())
}

fn nested(depth: usize) -> Value {
    let mut v = json!("bottom");
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// State that must not change
// ---------------------------------------------------------------------------------------------

const WATCHED_CONFIG: &[&str] = &[
    "replicaof", "masterauth", "masteruser", "replica-read-only", "repl-diskless-sync", "repl-diskless-sync-delay",
    "repl-diskless-sync-max-replicas", "repl-ping-replica-period", "min-replicas-to-write", "min-replicas-max-lag",
    "requirepass", "save", "appendonly", "port", "dir", "tls-replication", "tls-port", "maxmemory", "maxmemory-policy", "hz",
];

#[derive(Debug, PartialEq)]
struct NodeState {
    conf: String,
    agent_state: String,
    run_id: String,
    role: String,
    master: Option<(String, u16)>,
    config: BTreeMap<String, String>,
    fenced: Value,
    pending_detach: Value,
    /// The epoch record (promise, accepted topology): a refused call must not move it.
    epoch: Value,
}

async fn node_state(c: &trove_guest::rpc::client::RpcClient, g: &Guest, pw: Option<&str>) -> NodeState {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // Redis's view and the agent's status, read at the same time.
    let (redis_view, status) = tokio::join!(
        async {
            let mut con = g.redis(pw).await;
            // One pipeline: both INFO sections, then one CONFIG GET per watched setting (several
            // names in one CONFIG GET need Redis 7).
            let mut pipe = redis::pipe();
            pipe.cmd("INFO").arg("server").cmd("INFO").arg("replication");
            for name in WATCHED_CONFIG {
                pipe.cmd("CONFIG").arg("GET").arg(name);
            }
            let (server, repl, pairs): (String, String, Vec<Vec<String>>) = {
                let mut all: Vec<redis::Value> = pipe.query_async(&mut con).await.unwrap();
                let pairs = all.split_off(2).into_iter().map(|v| redis::from_redis_value(&v).unwrap()).collect();
                (redis::from_redis_value(&all[0]).unwrap(), redis::from_redis_value(&all[1]).unwrap(), pairs)
            };
            (server, repl, pairs)
        },
        try_call_within(c, g, "get_replication_status", Duration::from_secs(10)),
    );
    let (server, repl, pairs) = redis_view;
    let server = trove_guest::datastore::redis::info::Info::parse(&server);
    let repl = trove_guest::datastore::redis::info::Info::parse(&repl).replication().expect("INFO replication");
    let mut config = BTreeMap::new();
    for (pair, name) in pairs.iter().zip(WATCHED_CONFIG) {
        config.insert(pair.first().cloned().unwrap_or_else(|| name.to_string()), pair.get(1).cloned().unwrap_or_default());
    }
    assert_eq!(config.len(), WATCHED_CONFIG.len(), "CONFIG GET returned {config:?}");
    let status = match status {
        Ok(s) => s,
        Err(e) => panic!("agent {} stopped serving: {e}\n{}", g.id, g.log()),
    };
    NodeState {
        conf: read(g.config_file()),
        agent_state: read(g.dir.path().join("redis.conf.agent.json")),
        run_id: server.run_id().unwrap_or_default().to_owned(),
        role: format!("{:?}", repl.role),
        master: repl.master_host.clone().zip(repl.master_port),
        config,
        fenced: status["fenced"].clone(),
        pending_detach: status["pending_failover_detach"].clone(),
        epoch: status["epoch"].clone(),
    }
}

async fn try_call_within(c: &trove_guest::rpc::client::RpcClient, g: &Guest, method: &str, t: Duration) -> Result<Value, trove_guest::rpc::Error> {
    c.call(&g.topic(), method, Map::new(), "1.0", t, g.cipher().as_ref()).await
}

fn diff(a: &NodeState, b: &NodeState) -> String {
    let mut out = String::new();
    if a.conf != b.conf {
        out.push_str(&format!("redis.conf changed:\n--- before\n{}\n--- after\n{}\n", a.conf, b.conf));
    }
    if a.agent_state != b.agent_state {
        out.push_str(&format!("agent state changed:\n{}\n->\n{}\n", a.agent_state, b.agent_state));
    }
    for (k, v) in &a.config {
        if b.config.get(k) != Some(v) {
            out.push_str(&format!("CONFIG {k}: {v:?} -> {:?}\n", b.config.get(k)));
        }
    }
    for (what, x, y) in [
        ("run_id", a.run_id.clone(), b.run_id.clone()),
        ("role", a.role.clone(), b.role.clone()),
        ("master", format!("{:?}", a.master), format!("{:?}", b.master)),
        ("fenced", a.fenced.to_string(), b.fenced.to_string()),
        ("pending_failover_detach", a.pending_detach.to_string(), b.pending_detach.to_string()),
    ] {
        if x != y {
            out.push_str(&format!("{what}: {x} -> {y}\n"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The catalogue
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_input_catalogue() {
    let started = Instant::now();
    let c = client().await;
    let wire = Wire::connect().await;
    let master = spawn_guest(&c, None, &[]).await;
    let replica = spawn_guest(&c, Some(REPLICA_KEY), &[]).await;
    prepare(&c, &master, Some(MASTER_PW), None).await;
    let mut snapshot = call(&c, &master, "get_replication_snapshot", json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null})).await;
    snapshot["config"] = json!("slave-read-only yes\n");
    prepare(&c, &replica, None, Some(snapshot.clone())).await;
    let good_master = snapshot["master"].clone();
    assert_eq!(good_master["requirepass"], MASTER_PW);

    let base_m = node_state(&c, &master, Some(MASTER_PW)).await;
    let base_r = node_state(&c, &replica, None).await;
    assert_eq!(base_r.role, "Replica");
    assert_eq!(base_r.master, Some(("127.0.0.1".to_string(), master.port)));
    assert_eq!(base_r.config["masterauth"], MASTER_PW);
    let setup_s = started.elapsed().as_secs_f64();

    // Queues of other services that a hostile `_reply_q` may name: we own them for the test.
    let other_guest_q = format!("guestagent.{}", unique("other"));
    // A conductor-like queue of this run's own (a shared `trove-conductor` would race with other
    // runs of this test on the same broker, as the server matrix runs them).
    let conductor_q = unique("trove-conductor");
    let created_conductor = declare_watch_queue(&wire, &conductor_q).await;
    declare_watch_queue(&wire, &other_guest_q).await;

    let mut cat = Catalogue { cases: Vec::new(), reply_q: wire.reply_q.clone(), replica_cipher: replica.cipher().unwrap(), master: &master, replica: &replica };
    build_cases(&mut cat, &good_master, &other_guest_q, &conductor_q);
    let cases = std::mem::take(&mut cat.cases);
    let (m_topic, r_topic) = (master.topic(), replica.topic());

    let mut hijack_ids = Vec::new();
    let mut silent_ids = Vec::new();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let topic = if case.node == Node::Master { &m_topic } else { &r_topic };
        wire.publish(topic, &case.body).await;
        match &case.expect {
            Expect::Fails(class, words) => {
                let id = case.msg_id.as_deref().expect("a failing case needs a msg id");
                let Some(reply) = wire.wait_reply(id, Duration::from_secs(20)).await else {
                    failures.push(format!("#{i} {}: no reply", case.name));
                    continue;
                };
                let failure = reply.get("failure").and_then(Value::as_str).and_then(RemoteFailure::from_wire);
                match failure {
                    None => failures.push(format!("#{i} {}: expected {class}, got a success reply {reply:?}", case.name)),
                    Some(f) => {
                        if f.class != *class || !words.iter().all(|w| f.message.contains(w.as_str())) {
                            failures.push(format!("#{i} {}: expected {class} mentioning {words:?}, got {}: {}", case.name, f.class, f.message));
                        }
                        if !reply.get("result").is_some_and(Value::is_null) {
                            failures.push(format!("#{i} {}: a failure carried a result: {reply:?}", case.name));
                        }
                    }
                }
            }
            Expect::Silent => {
                // Anything the agent would have sent for this case is sent before it answers this ping.
                let ping_id = envelope::new_id();
                let seal = (case.node == Node::Replica).then(|| replica.cipher().unwrap());
                let ping = message("rpc_ping", json!({}), "1.0", Some((&ping_id, &wire.reply_q)), seal.as_ref());
                wire.publish(topic, &envelope::wrap(&Value::Object(ping))).await;
                if wire.wait_reply(&ping_id, Duration::from_secs(20)).await.is_none() {
                    failures.push(format!("#{i} {}: agent stopped answering rpc_ping", case.name));
                }
                tokio::time::sleep(Duration::from_millis(100) + case.settle).await;
                if let Some(id) = &case.msg_id {
                    if wire.count(id) != 0 {
                        failures.push(format!("#{i} {}: expected no reply, got {:?}", case.name, wire.replies.lock().unwrap().get(id)));
                    }
                    silent_ids.push(id.clone());
                    if case.name.starts_with("reply_q") {
                        hijack_ids.push(id.clone());
                    }
                }
            }
        }
        let pings = tokio::join!(
            try_call_within(&c, &master, "rpc_ping", Duration::from_secs(10)),
            try_call_within(&c, &replica, "rpc_ping", Duration::from_secs(10)),
        );
        for (g, ping) in [(&master, pings.0), (&replica, pings.1)] {
            if let Err(e) = ping {
                panic!("#{i} {}: agent {} no longer answers rpc_ping: {e}\n{}", case.name, g.id, g.log());
            }
        }
        let (now_m, now_r) = tokio::join!(node_state(&c, &master, Some(MASTER_PW)), node_state(&c, &replica, None));
        for (who, base, now) in [("master", &base_m, &now_m), ("replica", &base_r, &now_r)] {
            if base != now {
                panic!("#{i} {} changed the {who}:\n{}", case.name, diff(base, now));
            }
        }
    }

    // Replayed `_unique_id`: the second delivery is dropped — no second reply, no second effect.
    let replay_cases = replayed_unique_id(&c, &wire, &master, &base_m).await;

    // Hijacked reply queues: nothing reached the other services' queues.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for q in [&other_guest_q, &conductor_q] {
        for id in &hijack_ids {
            let (_, hits) = wire.peek(q, id).await;
            assert_eq!(hits, 0, "a reply was published into {q}");
        }
    }
    let (total, _) = wire.peek(&other_guest_q, "").await;
    assert_eq!(total, 0, "{other_guest_q} received {total} messages");
    if created_conductor {
        let (total, _) = wire.peek(&conductor_q, "").await;
        assert_eq!(total, 0, "{conductor_q} (our own queue, bound to nothing) received {total} messages");
        let _ = wire.channel.queue_delete(&conductor_q, QueueDeleteOptions::default()).await;
    }
    let _ = wire.channel.queue_delete(&other_guest_q, QueueDeleteOptions::default()).await;
    for id in &silent_ids {
        assert_eq!(wire.count(id), 0, "a late reply arrived for a case that must stay silent");
    }
    let strays = wire.strays.lock().unwrap().clone();
    assert!(strays.is_empty(), "uncorrelated replies: {strays:?}");
    for g in [&master, &replica] {
        let log = g.log();
        assert!(!log.contains("panicked"), "agent {} panicked:\n{log}", g.id);
        assert!(!log.contains(REPLICA_KEY), "the instance key is in the log of {}", g.id);
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let total = cases.len() + replay_cases;
    println!("hostile catalogue: {total} cases passed ({} table cases + {replay_cases} replay checks) in {:.1}s (setup {setup_s:.1}s)", cases.len(), started.elapsed().as_secs_f64());
    eprintln!("hostile catalogue: {total} cases passed in {:.1}s", started.elapsed().as_secs_f64());
}

/// Declares `name` if it does not exist (returns true then); an existing queue is only watched.
async fn declare_watch_queue(wire: &Wire, name: &str) -> bool {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let probe = wire._conn.create_channel().await.unwrap();
    if probe.queue_declare(name, passive, FieldTable::default()).await.is_ok() {
        let _ = probe.close(200, "ok").await;
        return false;
    }
    let mut a = FieldTable::default();
    a.insert("x-expires".into(), AMQPValue::LongInt(300_000));
    wire.channel.queue_declare(name, QueueDeclareOptions::default(), a).await.unwrap();
    true
}

/// The same message (same `_unique_id`) delivered twice, also with a new `_msg_id`.
async fn replayed_unique_id(c: &trove_guest::rpc::client::RpcClient, wire: &Wire, master: &Guest, base: &NodeState) -> usize {
    let (first, second) = (envelope::new_id(), envelope::new_id());
    let mut m = message("make_read_only", json!({"read_only": true}), "1.0", Some((&first, &wire.reply_q)), None);
    let body = envelope::wrap(&Value::Object(m.clone()));
    wire.publish(&master.topic(), &body).await;
    let reply = wire.wait_reply(&first, Duration::from_secs(20)).await.expect("no reply to the first delivery");
    assert!(reply["failure"].is_null(), "{reply:?}");
    assert_eq!(call(c, master, "get_replication_status", json!({})).await["fenced"], true, "the first delivery did not fence");
    call(c, master, "make_read_only", json!({"read_only": false})).await;
    // Redelivered verbatim, then with another _msg_id but the same _unique_id.
    wire.publish(&master.topic(), &body).await;
    m.insert("_msg_id".into(), json!(second));
    wire.publish(&master.topic(), &envelope::wrap(&Value::Object(m))).await;
    call(c, master, "rpc_ping", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wire.count(&first), 1, "the replayed message got a second reply");
    assert_eq!(wire.count(&second), 0, "a message with a seen _unique_id was answered");
    let now = node_state(c, master, Some(MASTER_PW)).await;
    assert!(now == *base, "the replayed message had an effect:\n{}", diff(base, &now));
    assert!(master.log().contains("duplicate message dropped"), "no duplicate was logged");
    2
}

fn build_cases(cat: &mut Catalogue<'_>, good_master: &Value, other_guest_q: &str, conductor_q: &str) {
    use Node::{Master as M, Replica as R};
    let good_info = json!({"replica_info": {"master": good_master}, "slave_config": "slave-read-only yes", "restart": false});
    let not_object: Vec<Value> = vec![json!("str"), json!(5), json!([1]), json!(true), Value::Null];
    let not_string: Vec<Value> = vec![json!(5), json!([]), json!({}), json!(true), json!(1.5)];
    let not_bool: Vec<Value> = vec![json!("true"), json!(1), json!(0), json!([]), json!({}), json!("false")];

    // --- get_replication_snapshot (on the master: a valid one would reconfigure it) ---
    let snap = json!({"snapshot_info": {"replica_count": 1}, "replica_source_config": null});
    cat.wrong_types(M, "get_replication_snapshot", snap.clone(), &["snapshot_info"], "snapshot_info", vec![json!("str"), json!(5), json!([]), json!(true), missing()]);
    cat.wrong_types(M, "get_replication_snapshot", snap.clone(), &["snapshot_info", "replica_count"], "snapshot_info.replica_count", vec![json!("2"), json!(-1), json!(0), json!(1.5), json!(true), json!(1u64 << 40), json!([1])]);
    cat.wrong_types(M, "get_replication_snapshot", snap.clone(), &["snapshot_info", "enable_persistence"], "snapshot_info.enable_persistence", vec![json!("yes"), json!(1), json!([])]);
    cat.wrong_types(M, "get_replication_snapshot", snap.clone(), &["replica_source_config"], "replica_source_config", not_string.clone());
    cat.call("get_replication_snapshot on a replica", R, "get_replication_snapshot", snap.clone(), fails("GuestError", &["replica of a replica"]));

    // --- epochs: the promise, the accepted topology, and the epoch a state-changing call carries ---
    let bad_epochs = vec![json!("5"), json!(-1), json!(1.5), json!(true), json!([]), json!({}), json!("99999999999999999999999")];
    cat.wrong_types(M, "epoch_promise", json!({"epoch": 1}), &["epoch"], "epoch", [bad_epochs.clone(), vec![missing()]].concat());
    let accept = json!({"epoch": 1, "topology": {"master": "a", "replicas": ["b"]}});
    cat.wrong_types(M, "epoch_accept", accept.clone(), &["epoch"], "epoch", [bad_epochs.clone(), vec![json!(0)]].concat());
    cat.wrong_types(M, "epoch_accept", accept.clone(), &["topology"], "topology", vec![
        json!("a"), json!(5), json!([]), json!({}), json!({"master": ""}), json!({"master": "a", "replicas": ["a"]}),
        json!({"master": "a", "replicas": ["b", "b"]}), json!({"master": "a", "replicas": [""]}), json!({"master": "a", "replicas": "b"}),
        json!({"master": "a", "replicas": ["b"], "returning": ["b"]}), json!({"master": 5}), missing(),
    ]);
    cat.wrong_types(M, "make_read_only", json!({"read_only": false}), &["epoch"], "epoch", bad_epochs.clone());
    cat.wrong_types(R, "attach_replica", json!({"replica_info": {"master": good_master}, "slave_config": "slave-read-only yes", "restart": false, "epoch": 1}), &["epoch"], "epoch", bad_epochs);

    // --- attach_replica (on the replica) ---
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info"], "replica_info", [not_object.clone(), vec![missing()]].concat());
    cat.call("attach_replica: replica_info without master", R, "attach_replica", json!({"replica_info": {"no_master": good_master}}), type_error("replica_info"));
    cat.call("attach_replica: replica_info empty", R, "attach_replica", json!({"replica_info": {}}), type_error("replica_info"));
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info", "master"], "replica_info.master", not_object.clone());
    let hosts = [
        json!(""), json!(" "), json!("a b"), json!("10.0.0.1\nslaveof 6.6.6.6 1"), json!("h\r\nx"), json!("#x"), json!("\"q\""),
        json!("'q'"), json!("-x"), json!(".x"), json!("h\u{0}"), json!("hôst"), json!("a;b"), json!("a/b"), json!("x".repeat(300)),
        json!(5), json!(null), json!([]), json!({}), missing(),
    ];
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info", "master", "host"], "replica_info.master.host", hosts.to_vec());
    let ports = [
        json!(0), json!(65536), json!(-1), json!("6379x"), json!(""), json!("-1"), json!(" 6379"), json!("+6379"), json!("0"),
        json!(1.5), json!(1e10), json!(true), json!([]), json!({}), json!("99999999999999999999"),
    ];
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info", "master", "port"], "replica_info.master.port", ports.to_vec());
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info", "master", "requirepass"], "replica_info.master.requirepass", vec![json!(1234), json!(0), json!(12.5), json!(true), json!([]), json!({})]);
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info", "master", "masteruser"], "replica_info.master.masteruser", vec![json!(""), json!("a b"), json!("q\""), json!("n\nl"), json!(7), json!([])]);
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["replica_info", "master", "tls"], "replica_info.master.tls", vec![json!("yes"), json!(1), json!([]), json!({})]);
    let mut a = good_info.clone();
    a["replica_info"]["master"]["tls"] = json!(true);
    cat.call("attach_replica: TLS master, no TLS certificates here", R, "attach_replica", a, fails("GuestError", &["no TLS certificates"]));
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["slave_config"], "slave_config", not_string.clone());
    cat.wrong_types(R, "attach_replica", good_info.clone(), &["restart"], "restart", not_bool.clone());
    // Well-typed but wrong passwords for the real master: refused there, nothing changes here.
    for pw in ["with space", "quo\"te'", "new\nline", "ünïcödé", "#hash", "tab\tcr\r", "\u{0}nul", "m pw \"q\" 'é' #X"] {
        let mut a = good_info.clone();
        a["replica_info"]["master"]["requirepass"] = json!(pw);
        cat.call(format!("attach_replica: wrong password {pw:?}"), R, "attach_replica", a, fails("GuestError", &["refused the replication password"]));
    }
    for pw in [json!(""), Value::Null] {
        let mut a = good_info.clone();
        a["replica_info"]["master"]["requirepass"] = pw.clone();
        cat.call(format!("attach_replica: no password ({pw}) for a master that needs one"), R, "attach_replica", a, fails("GuestError", &["NOAUTH"]));
    }
    let mut a = good_info.clone();
    a["replica_info"]["master"]["port"] = json!(cat.replica.port);
    a["replica_info"]["master"]["requirepass"] = Value::Null;
    cat.call("attach_replica: to itself", R, "attach_replica", a, fails("GuestError", &["itself a replica"]));
    let mut a = good_info.clone();
    a["replica_info"]["master"]["port"] = json!(free_port());
    cat.call("attach_replica: master port closed", R, "attach_replica", a, fails("GuestError", &["cannot reach master"]));
    let mut a = good_info.clone();
    a["replica_info"] = json!({"master": nested(100)});
    cat.call("attach_replica: 100-deep nesting", R, "attach_replica", a, type_error("replica_info.master"));

    // --- detach_replica, make_read_only, enable_as_master, wait_for_txn ---
    cat.wrong_types(R, "detach_replica", json!({"for_failover": true}), &["for_failover"], "for_failover", not_bool.clone());
    cat.wrong_types(M, "make_read_only", json!({"read_only": true}), &["read_only"], "read_only", [not_bool.clone(), vec![Value::Null, missing()]].concat());
    cat.wrong_types(R, "enable_as_master", json!({"replica_source_config": null}), &["replica_source_config"], "replica_source_config", not_string.clone());
    cat.wrong_types(R, "wait_for_txn", json!({"txn": 1}), &["txn"], "txn", vec![json!("12"), json!(1.5), json!(true), json!([]), json!({}), Value::Null, json!(u64::MAX), json!(1e300), missing()]);

    // --- prepare (a cast; sent as a call to see the reply, then as a real cast) ---
    let prep = json!({
        "packages": null, "databases": [], "memory_mb": 512, "users": [], "device_path": null, "mount_point": "/var/lib/redis",
        "backup_info": null, "config_contents": "port 6379\n", "root_password": null, "overrides": {}, "cluster_config": null,
        "snapshot": {"replication_strategy": "RedisSyncReplication", "master": good_master, "config": "slave-read-only yes\n"},
    });
    cat.wrong_types(R, "prepare", prep.clone(), &["config_contents"], "config_contents", not_string.clone());
    cat.wrong_types(R, "prepare", prep.clone(), &["overrides"], "overrides", vec![
        json!("x"), json!([]), json!(5), json!({"x\nreplicaof 6.6.6.6 1\n#": "y"}), json!({"": 1}), json!({"save 1 1": "2"}), json!({"\"port\"": 1}), json!({"#a": 1}),
    ]);
    cat.wrong_types(R, "prepare", prep.clone(), &["snapshot"], "snapshot", vec![json!("x"), json!(5), json!([]), json!(true)]);
    cat.wrong_types(R, "prepare", prep.clone(), &["snapshot", "master"], "snapshot", vec![missing()]);
    cat.wrong_types(R, "prepare", prep.clone(), &["snapshot", "master", "host"], "snapshot.master.host", vec![json!("10.0.0.1\nslaveof 6.6.6.6 1"), json!(""), json!("a b"), json!(5)]);
    cat.wrong_types(R, "prepare", prep.clone(), &["snapshot", "master", "port"], "snapshot.master.port", vec![json!(0), json!(65536), json!(-1), json!("6379x")]);
    cat.wrong_types(R, "prepare", prep.clone(), &["snapshot", "master", "requirepass"], "snapshot.master.requirepass", vec![json!(1234), json!([])]);
    cat.wrong_types(R, "prepare", prep.clone(), &["backup_info"], "backup_info", vec![json!("x"), json!(5)]);
    let incompatible = "Instance with replication strategy RedisSyncReplication cannot replicate from instance with replication strategy MysqlGTIDReplication.";
    {
        let mut a = prep.clone();
        a["snapshot"]["replication_strategy"] = json!("MysqlGTIDReplication");
        cat.call("prepare: snapshot from another strategy", R, "prepare", a.clone(), fails("IncompatibleReplicationStrategy", &[incompatible]));
        cat.cast("prepare cast: snapshot from another strategy", R, "prepare", a);
    }
    let mut a = prep.clone();
    a["snapshot"].as_object_mut().unwrap().remove("replication_strategy");
    cat.call("prepare: snapshot without a strategy", R, "prepare", a, fails("IncompatibleReplicationStrategy", &["replication strategy RedisSyncReplication cannot replicate"]));
    let mut a = prep.clone();
    a["snapshot"] = Value::Null;
    a["backup_info"] = json!({"id": "b1", "location": "swift://x", "type": "RedisBackup", "checksum": null});
    cat.call("prepare: from a backup without Swift's URL", R, "prepare", a, fails("TypeError", &["backup_info.swift_url", "Swift storage URL"]));
    for (name, path, v) in [
        ("bad host", &["snapshot", "master", "host"][..], json!("10.0.0.1\nslaveof 6.6.6.6 1")),
        ("bad port", &["snapshot", "master", "port"][..], json!(0)),
        ("numeric password", &["snapshot", "master", "requirepass"][..], json!(1234)),
        ("injected override", &["overrides"][..], json!({"x\nreplicaof 6.6.6.6 1\n#": "y"})),
        ("config_contents not a string", &["config_contents"][..], json!(5)),
    ] {
        let mut a = prep.clone();
        set_path(&mut a, path, v);
        cat.cast(format!("prepare cast: {name}"), R, "prepare", a);
    }

    // --- configuration overrides: names are written into redis.conf ---
    for bad in [json!({"x\nreplicaof 6.6.6.6 1\n#": "y"}), json!({"": "1"}), json!({"port 1": 2}), json!({"a\"b": 1}), json!("str")] {
        cat.call(format!("update_overrides: overrides = {bad}"), R, "update_overrides", json!({"overrides": bad, "remove": false}), type_error("overrides"));
        cat.call(format!("apply_overrides: overrides = {bad}"), R, "apply_overrides", json!({"overrides": bad}), type_error("overrides"));
    }
    cat.call("update_overrides: remove = \"yes\"", R, "update_overrides", json!({"overrides": {}, "remove": "yes"}), type_error("remove"));
    // Values: redis-server itself checks the configuration they would make; all or nothing.
    for (name, overrides, key) in [
        ("maxmemory not a size", json!({"maxmemory": "lots"}), "maxmemory"),
        ("unknown policy", json!({"maxmemory-policy": "sometimes"}), "maxmemory-policy"),
        ("unknown directive", json!({"no-such-directive": "1"}), "no-such-directive"),
        ("odd save", json!({"save": "900"}), "save"),
        ("appendonly maybe", json!({"appendonly": "maybe"}), "appendonly"),
        ("one good, one bad", json!({"maxmemory-policy": "allkeys-lru", "hz": "-5"}), "hz"),
    ] {
        let want = format!("at '{key}'");
        cat.call(format!("update_overrides: {name}"), R, "update_overrides", json!({"overrides": overrides, "remove": false}), fails("GuestError", &["rejects the configuration", &want]));
        cat.call(format!("apply_overrides: {name}"), R, "apply_overrides", json!({"overrides": overrides}), fails("GuestError", &["rejects the configuration", &want]));
    }
    for bad in [json!({"a": 1}), json!([[1]]), json!([{}])] {
        cat.call(format!("update_overrides: maxmemory = {bad}"), R, "update_overrides", json!({"overrides": {"maxmemory": bad}, "remove": false}), type_error("overrides.maxmemory"));
    }
    let mut a = prep.clone();
    a["config_contents"] = json!("port 6379\nmaxmemory lots\n");
    cat.cast("prepare cast: config_contents redis-server rejects", R, "prepare", a);
    for key in ["replicaof", "slaveof", "SLAVEOF", "masterauth", "replica-read-only", "port", "dir"] {
        cat.call(format!("apply_overrides: protected {key}"), R, "apply_overrides", json!({"overrides": {key: "6.6.6.6 1"}}), fails("GuestError", &["managed by the replication strategy"]));
        cat.call(format!("update_overrides: protected {key}"), R, "update_overrides", json!({"overrides": {key: "6.6.6.6 1"}, "remove": false}), fails("GuestError", &["managed by the replication strategy"]));
    }

    // --- secure RPC (the replica has an instance key) ---
    let right = cat.replica_cipher.clone();
    let wrong = cipher("not-the-instance-key-0123456789ab");
    let secure = |cat: &mut Catalogue<'_>, name: &str, method: &str, a: Value, ctx: Option<Value>, expect: Expect| {
        let msg_id = envelope::new_id();
        let mut m = message(method, json!({}), "1.0", Some((&msg_id, &cat.reply_q)), None);
        m.retain(|k, _| !k.starts_with("_context_"));
        m.insert("args".into(), a);
        if let Some(ctx) = ctx {
            m.insert("_context_context".into(), ctx);
        }
        cat.raw(format!("secure: {name}"), R, envelope::wrap(&Value::Object(m)), Some(msg_id), expect);
    };
    let ctx_ok = json!(right.encrypt_value(&Value::Object(context())));
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let junk: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    secure(cat, "context under a wrong key", "rpc_ping", json!({}), Some(json!(wrong.encrypt_value(&Value::Object(context())))), fails("GuestError", &["different instance key"]));
    secure(cat, "context is not base64", "rpc_ping", json!({}), Some(json!("%%%not base64%%%")), fails("GuestError", &["different instance key"]));
    secure(cat, "context padding does not check", "rpc_ping", json!({}), Some(json!(b64(&junk))), fails("GuestError", &["different instance key"]));
    secure(cat, "context of a bad length", "rpc_ping", json!({}), Some(json!(b64(&junk[..20]))), fails("GuestError", &["different instance key"]));
    secure(cat, "context is a number", "rpc_ping", json!({}), Some(json!(5)), fails("GuestError", &["different instance key"]));
    secure(cat, "context decrypts to a non-object", "rpc_ping", json!({}), Some(json!(right.encrypt_value(&json!([1])))), fails("GuestError", &["different instance key"]));
    secure(cat, "no context (plaintext message)", "rpc_ping", json!({}), None, fails("GuestError", &["not encrypted"]));
    secure(cat, "argument padding does not check", "make_read_only", json!({"read_only": b64(&junk)}), Some(ctx_ok.clone()), fails("GuestError", &["'read_only' could not be decrypted", "padding"]));
    secure(cat, "argument decrypts to non-JSON", "make_read_only", json!({"read_only": right.encrypt_bytes(b"not json {")}), Some(ctx_ok.clone()), fails("GuestError", &["'read_only' could not be decrypted", "JSON"]));
    secure(cat, "argument under a wrong key", "detach_replica", json!({"for_failover": wrong.encrypt_value(&json!(true))}), Some(ctx_ok.clone()), fails("GuestError", &["'for_failover' could not be decrypted"]));
    secure(cat, "argument base64 that does not decode", "make_read_only", json!({"read_only": "!!!not*base64!!!"}), Some(ctx_ok.clone()), type_error("read_only"));
    secure(cat, "argument sealed, wrong type inside", "attach_replica", json!({"replica_info": right.encrypt_value(&json!("x"))}), Some(ctx_ok.clone()), type_error("replica_info"));
    secure(cat, "valid context, bad host inside a sealed argument", "attach_replica", json!({"replica_info": right.encrypt_value(&json!({"master": {"host": "a\nb", "port": 1}}))}), Some(ctx_ok), type_error("replica_info.master.host"));

    // --- versions, names ---
    for (name, version) in [("2.0", "2.0"), ("1.4", "1.4"), ("1.x", "1.x"), ("empty", "")] {
        let msg_id = envelope::new_id();
        let m = message("rpc_ping", json!({}), version, Some((&msg_id, &cat.reply_q)), cat.seal(R));
        cat.raw(format!("version {name}"), R, envelope::wrap(&Value::Object(m)), Some(msg_id), fails("UnsupportedVersion", &["does not support RPC version"]));
    }
    let msg_id = envelope::new_id();
    let mut m = message("rpc_ping", json!({}), "1.0", Some((&msg_id, &cat.reply_q)), cat.seal(R));
    m.insert("namespace".into(), json!("baremetal"));
    cat.raw("namespace set", R, envelope::wrap(&Value::Object(m)), Some(msg_id), fails("UnsupportedVersion", &["rpc_ping"]));
    for method in ["_private", "__init__", "no_such_method", "get_txn_count"] {
        cat.call(format!("method {method}"), R, method, json!({}), fails("NoSuchMethod", &[method]));
    }
    cat.call("method create_user", R, "create_user", json!({"users": []}), fails("DatastoreOperationNotSupported", &["create_user"]));

    // --- raw bodies ---
    let reply_q = cat.reply_q.clone();
    let routed = |method: &str| {
        let id = envelope::new_id();
        (id.clone(), json!({"method": method, "args": {}, "version": "1.0", "_msg_id": id, "_reply_q": reply_q, "_unique_id": envelope::new_id()}))
    };
    cat.raw("body: not JSON", R, b"hello, agent".to_vec(), None, Expect::Silent);
    cat.raw("body: empty", R, Vec::new(), None, Expect::Silent);
    cat.raw("body: not UTF-8", R, b"\xff\xfe\x00\x01{\"method\":\"rpc_ping\"}".to_vec(), None, Expect::Silent);
    let (id, _) = routed("rpc_ping");
    let mut bytes = format!("{{\"method\":\"rpc_ping\",\"args\":{{}},\"_msg_id\":\"{id}\",\"_reply_q\":\"{reply_q}\",\"x\":\"").into_bytes();
    bytes.extend_from_slice(b"\xc3\x28\"}");
    cat.raw("body: invalid UTF-8 inside a string", R, bytes, Some(id), Expect::Silent);
    cat.raw("body: JSON array", R, b"[1,2,3]".to_vec(), None, Expect::Silent);
    cat.raw("body: JSON string", R, b"\"rpc_ping\"".to_vec(), None, Expect::Silent);
    cat.raw("body: JSON number", R, b"42".to_vec(), None, Expect::Silent);
    for (name, version) in [("\"3.0\"", json!("3.0")), ("2 (number)", json!(2)), ("null", Value::Null), ("\"\"", json!(""))] {
        let (id, inner) = routed("rpc_ping");
        let body = json!({"oslo.version": version, "oslo.message": inner.to_string()}).to_string().into_bytes();
        cat.raw(format!("envelope: oslo.version {name}"), R, body, Some(id), fails("GuestError", &["malformed message", "unsupported envelope version"]));
    }
    let (id, inner) = routed("rpc_ping");
    cat.raw("envelope: oslo.message is an object", R, json!({"oslo.version": "2.0", "oslo.message": inner}).to_string().into_bytes(), Some(id), fails("GuestError", &["oslo.message is missing or not a string"]));
    let (id, inner) = routed("rpc_ping");
    let text = inner.to_string();
    cat.raw("envelope: oslo.message truncated", R, json!({"oslo.version": "2.0", "oslo.message": &text[..text.len() - 7]}).to_string().into_bytes(), Some(id), Expect::Silent);
    cat.raw("envelope: oslo.message missing", R, br#"{"oslo.version":"2.0"}"#.to_vec(), None, Expect::Silent);
    cat.raw("envelope: oslo.message is a JSON array", R, json!({"oslo.version": "2.0", "oslo.message": "[1,2]"}).to_string().into_bytes(), None, Expect::Silent);
    let (id, mut inner) = routed("attach_replica");
    inner["args"] = json!({"replica_info": good_master});
    inner["padding"] = json!("x".repeat(10 * 1024 * 1024));
    cat.raw("body: 10 MB", R, envelope::wrap(&inner), Some(id), Expect::Silent);
    for (name, depth) in [("array", 100_000usize), ("object", 20_000)] {
        let (id, _) = routed("rpc_ping");
        let (open, close) = if name == "array" { ("[", "]") } else { ("{\"a\":", "}") };
        let deep = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let bare = format!("{{\"method\":\"rpc_ping\",\"_msg_id\":\"{id}\",\"_reply_q\":\"{reply_q}\",\"args\":{{\"x\":{deep}}}}}");
        cat.raw(format!("body: {depth}-deep {name} (bare)"), R, bare.clone().into_bytes(), Some(id.clone()), Expect::Silent);
        let (id2, _) = routed("rpc_ping");
        let env = json!({"oslo.version": "2.0", "oslo.message": bare.replace(&id, &id2)}).to_string().into_bytes();
        cat.raw(format!("body: {depth}-deep {name} (inside oslo.message)"), R, env, Some(id2), Expect::Silent);
    }
    let (id, mut m) = routed("x");
    m.as_object_mut().unwrap().remove("method");
    cat.raw("message: method missing", R, envelope::wrap(&m), Some(id), fails("GuestError", &["field 'method' is missing"]));
    for (name, v) in [("a number", json!(7)), ("empty", json!("")), ("null", Value::Null)] {
        let (id, mut m) = routed("x");
        m["method"] = v;
        cat.raw(format!("message: method {name}"), R, envelope::wrap(&m), Some(id), fails("GuestError", &["'method'"]));
    }
    let (id, mut m) = routed("rpc_ping");
    m["args"] = json!([1, 2]);
    cat.raw("message: args is a list", R, envelope::wrap(&m), Some(id), fails("GuestError", &["keyword arguments"]));
    let (id, mut m) = routed("rpc_ping");
    m["version"] = json!(1.0);
    cat.raw("message: version is a number", R, envelope::wrap(&m), Some(id), fails("GuestError", &["'version'"]));
    let (id, mut m) = routed("rpc_ping");
    m["_msg_id"] = json!(12345);
    cat.raw("message: _msg_id is a number", R, envelope::wrap(&m), Some(id), Expect::Silent);
    let (id, mut m) = routed("rpc_ping");
    m["_reply_q"] = json!(["reply_x"]);
    cat.raw("message: _reply_q is a list", R, envelope::wrap(&m), Some(id), Expect::Silent);

    // --- reply queues of other services: the reply (here: the master's password!) must go nowhere ---
    for q in [other_guest_q.to_string(), conductor_q.to_string(), format!("guestagent.{}", cat.master.id), "reply_".into(), "reply_a b".into(), "reply_../x".into(), String::new(), format!("reply_{}", "a".repeat(65)), "amq.rabbitmq.trace".into()] {
        let msg_id = envelope::new_id();
        let m = message("get_replica_context", json!({}), "1.0", Some((&msg_id, &q)), None);
        cat.raw(format!("reply_q {q:?}"), M, envelope::wrap(&Value::Object(m)), Some(msg_id), Expect::Silent);
    }
}

/// Valid but odd passwords are accepted, written quoted, read back exactly, and work against a real
/// master that has them; numeric passwords are refused.
#[tokio::test]
async fn odd_but_valid_passwords_are_accepted_and_quoted() {
    let c = client().await;
    let replica = spawn_guest(&c, None, &[]).await;
    prepare(&c, &replica, None, None).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // The server under test (an older replica cannot load a newer master's RDB).
    let mut master = std::process::Command::new(server_binary())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cannot run redis-server");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut master);
    let mut current: Option<String> = None;
    let connect_master = |pw: Option<String>| async move {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp("127.0.0.1".into(), port),
            redis: redis::RedisConnectionInfo { password: pw, ..Default::default() },
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis::Client::open(info.clone()).unwrap().get_multiplexed_async_connection().await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("plain redis-server on {port} unreachable: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    let mut con = connect_master(None).await;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await.unwrap();
    let passwords = [
        "with space", "quo\"te and 'single'", "new\nline", "ünïcödé ✓ 密码", "#hash first", "back\\slash\\", "tab\tand\rcr",
        "-dash", "12345", " leading and trailing ", "{\"json\": [1]}", "$(touch /tmp/pwned) `id`", "x".repeat(200).as_str(),
        "\\x41 not an escape", "ends with backslash\\",
    ]
    .map(str::to_owned);
    for pw in &passwords {
        let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(pw).query_async(&mut con).await.unwrap();
        con = connect_master(Some(pw.clone())).await;
        current = Some(pw.clone());
        let a = json!({"replica_info": {"master": {"host": "127.0.0.1", "port": port, "requirepass": pw}}, "slave_config": "slave-read-only yes", "restart": false});
        if let Err(e) = try_call(&c, &replica, "attach_replica", a).await {
            panic!("attach with password {pw:?} was refused: {e}\n{}", replica.log());
        }
        let text = std::fs::read_to_string(replica.config_file()).unwrap();
        let d = conf::parse(&text).unwrap_or_else(|e| panic!("{pw:?}: redis.conf does not parse: {e}\n{text}"));
        let auth: Vec<&conf::Directive> = d.iter().filter(|x| x.key == "masterauth").collect();
        assert_eq!(auth.len(), 1, "{pw:?}: {text}");
        assert_eq!(auth[0].args, vec![pw.clone()], "{pw:?}: masterauth does not round-trip:\n{text}");
        let mut r = replica.redis(None).await;
        let live: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("masterauth").query_async(&mut r).await.unwrap();
        assert_eq!(live[1], *pw);
        let state: Value = serde_json::from_str(&std::fs::read_to_string(replica.dir.path().join("redis.conf.agent.json")).unwrap()).unwrap();
        assert_eq!(state["replica"]["masterauth"], json!(pw));
        // Force a new replication connection, so the link really authenticates with this password.
        let _: () = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query_async(&mut con).await.unwrap();
        linked(&replica, port, pw).await;
        assert!(!replica.log().contains(pw.as_str()) || pw.len() < 6, "password {pw:?} in the agent log");
    }
    // Redis itself reads the quoted masterauth back from redis.conf after a crash.
    let pid = replica.redis_pid().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    eventually(20, "replica's Redis restarted", || async { replica.redis_pid().is_some_and(|p| p != pid) }).await;
    linked(&replica, port, current.as_deref().unwrap()).await;
    // Numeric passwords are a type error; empty and null mean "no password".
    let f = call_err(&c, &replica, "attach_replica", json!({"replica_info": {"master": {"host": "127.0.0.1", "port": port, "requirepass": 12345}}})).await;
    assert_eq!(f.class, "TypeError");
    assert!(f.message.contains("'replica_info.master.requirepass"), "{}", f.message);
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("").query_async(&mut con).await.unwrap();
    for none in [json!(""), Value::Null] {
        call(&c, &replica, "attach_replica", json!({"replica_info": {"master": {"host": "127.0.0.1", "port": port, "requirepass": none}}})).await;
        let d = conf::parse(&std::fs::read_to_string(replica.config_file()).unwrap()).unwrap();
        assert_eq!(conf::lookup(&d, "masterauth"), None);
        let live: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("masterauth").query_async(&mut replica.redis(None).await).await.unwrap();
        assert_eq!(live[1], "");
    }
    println!("odd passwords: {} accepted, quoted and linked; numeric refused; empty/null mean none", passwords.len());
}

async fn linked(g: &Guest, master_port: u16, pw: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", g.port)) {
            if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                if let Ok(text) = redis::cmd("INFO").arg("replication").query_async::<String>(&mut con).await {
                    let r = trove_guest::datastore::redis::info::Info::parse(&text).replication().unwrap();
                    if r.master_port == Some(master_port) && r.linked() {
                        return;
                    }
                }
            }
        }
        if Instant::now() > deadline {
            panic!("replica never linked with password {pw:?}\n{}", g.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
