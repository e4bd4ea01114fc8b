//! Prometheus metrics: a text-format encoder, the agent's own counters, and a minimal HTTP server for `/metrics`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The content type of Prometheus's text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// Builds one exposition body: `family` declares a metric family (HELP and TYPE, once per
/// name), `sample` adds a line. Samples of a family must follow its declaration.
#[derive(Default)]
pub struct Text {
    body: String,
    declared: HashSet<String>,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Declares a family; a second declaration of the same name writes nothing.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        if !self.declared.insert(name.to_owned()) {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.body.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    /// One sample; label values are escaped (`\\`, `\"`, `\n`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.body.push_str(name);
        if !labels.is_empty() {
            self.body.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.body.push(',');
                }
                self.body.push_str(k);
                self.body.push_str("=\"");
                self.body.push_str(&escape_label(v));
                self.body.push('"');
            }
            self.body.push('}');
        }
        self.body.push(' ');
        self.body.push_str(&format_value(value));
        self.body.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.body
    }
}

pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Distinct (method, outcome) pairs kept; a flood of odd names cannot grow the map past it.
const MAX_RPC_SERIES: usize = 512;

/// The agent's own counters, shared by the RPC endpoint wrapper and the heartbeat task.
#[derive(Default)]
pub struct AgentCounters {
    rpc: Mutex<BTreeMap<(String, String), u64>>,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_failed: AtomicU64,
}

impl AgentCounters {
    /// Counts one RPC call; `outcome` is `ok` or the failure's class. Methods the endpoint does
    /// not serve are counted under `method="unknown"` (their names come from the wire).
    pub fn rpc_call(&self, method: &str, outcome: &str) {
        let method = if outcome == "NoSuchMethod" || outcome == "UnsupportedVersion" || !is_plain_name(method) { "unknown" } else { method };
        let mut map = self.rpc.lock().unwrap_or_else(|e| e.into_inner());
        let key = (method.to_owned(), outcome.to_owned());
        if map.len() >= MAX_RPC_SERIES && !map.contains_key(&key) {
            return;
        }
        *map.entry(key).or_default() += 1;
    }

    pub fn encode(&self, out: &mut Text) {
        out.family("trove_guestagent_rpc_calls_total", Kind::Counter, "RPC calls served, by method and outcome (ok or the failure's class)");
        for ((method, outcome), n) in self.rpc.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.sample("trove_guestagent_rpc_calls_total", &[("method", method), ("outcome", outcome)], *n as f64);
        }
        out.single("trove_guestagent_heartbeats_sent_total", Kind::Counter, "Status heartbeats cast to the conductor", self.heartbeats_sent.load(Ordering::Relaxed) as f64);
        out.single("trove_guestagent_heartbeats_failed_total", Kind::Counter, "Status heartbeats that could not be sent", self.heartbeats_failed.load(Ordering::Relaxed) as f64);
    }
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Renders one scrape's body.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Parses a `listen` setting: empty is off.
pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse::<SocketAddr>().map(Some).map_err(|_| format!("'{value}' is not an address:port (e.g. 127.0.0.1:9121)"))
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head, and a scrape to be written.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 8192;

/// Serves `GET /metrics` on `listener` until `cancel`. Bad requests get an HTTP error and the
/// connection closed; nothing a client sends can end the server.
pub async fn serve(listener: TcpListener, render: Render, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let render = render.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = tokio::time::timeout(IO_TIMEOUT, handle(stream, render)) => {
                    if let Ok(Err(error)) = result {
                        tracing::debug!(%error, "metrics: connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"request head too large\n", false).await;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target, version) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", false).await;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET\n", head_only).await;
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let body = render().await;
            respond(&mut stream, "200 OK", CONTENT_TYPE, body.as_bytes(), head_only).await
        }
        "/" => respond(&mut stream, "200 OK", "text/plain", b"metrics at /metrics\n", head_only).await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", head_only).await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::new();
        t.family("x", Kind::Gauge, "help with \\ and\nnewline");
        t.sample("x", &[("a", "back\\slash \"quoted\"\nnext"), ("b", "plain")], 1.0);
        let body = t.finish();
        assert!(body.contains("# HELP x help with \\\\ and\\nnewline\n"), "{body}");
        assert!(body.contains("x{a=\"back\\\\slash \\\"quoted\\\"\\nnext\",b=\"plain\"} 1\n"), "{body}");
        assert_eq!(body.lines().count(), 3, "no raw newline escapes a label: {body}");
    }

    #[test]
    fn one_type_line_per_family() {
        let mut t = Text::new();
        t.family("a_total", Kind::Counter, "a");
        t.sample("a_total", &[("m", "x")], 1.0);
        t.family("a_total", Kind::Counter, "a");
        t.sample("a_total", &[("m", "y")], 2.0);
        t.single("b", Kind::Gauge, "b", 0.5);
        let body = t.finish();
        assert_eq!(body.matches("# TYPE a_total counter").count(), 1, "{body}");
        assert_eq!(body.matches("# TYPE b gauge").count(), 1, "{body}");
        assert!(body.contains("b 0.5\n"));
    }

    #[test]
    fn values() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(-1.0), "-1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }

    #[test]
    fn rpc_methods_from_the_wire_are_bounded() {
        let c = AgentCounters::default();
        c.rpc_call("get_replication_status", "ok");
        c.rpc_call("get_replication_status", "ok");
        c.rpc_call("no_such\"thing", "NoSuchMethod");
        c.rpc_call("weird name", "TypeError");
        for i in 0..2 * MAX_RPC_SERIES {
            c.rpc_call(&format!("m{i}"), "ok");
        }
        let mut t = Text::new();
        c.encode(&mut t);
        let body = t.finish();
        assert!(body.contains("trove_guestagent_rpc_calls_total{method=\"get_replication_status\",outcome=\"ok\"} 2\n"), "{body}");
        assert!(body.contains("{method=\"unknown\",outcome=\"NoSuchMethod\"} 1\n"));
        assert!(body.contains("{method=\"unknown\",outcome=\"TypeError\"} 1\n"));
        assert!(!body.contains("no_such"));
        assert_eq!(body.matches("trove_guestagent_rpc_calls_total{").count(), MAX_RPC_SERIES);
    }

    #[test]
    fn listen_setting() {
        assert_eq!(parse_listen("").unwrap(), None);
        assert_eq!(parse_listen("127.0.0.1:9121").unwrap(), Some("127.0.0.1:9121".parse().unwrap()));
        assert!(parse_listen("localhost").is_err());
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn server_answers_and_survives_bad_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let render: Render = Arc::new(|| Box::pin(async { "up 1\n".to_owned() }));
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, render, cancel.clone()));
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"));
        assert!(request(addr, b"garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        assert!(request(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        assert!(request(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(request(addr, &vec![b'a'; 3 * MAX_HEAD]).await.starts_with("HTTP/1.1 431"));
        // A client that connects and leaves, and one that sends half a head and leaves.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /met").await.unwrap();
        drop(half);
        assert!(request(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await.starts_with("HTTP/1.1 200 OK"));
        cancel.cancel();
        server.await.unwrap();
    }
}
