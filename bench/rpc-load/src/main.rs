//! `trovebench-rpc-load`: drives a guest's RPC server with the agent library's RpcClient.
//!
//!   load    --url U --id ID [--method M] [--args JSON] [--callers N] [--duration S] [--warmup S]
//!           one JSON line: every call's latency (ms) inside the measured window, and errors.
//!   startup --url U --id ID
//!           prints "ready" once connected, waits for a line on stdin (the server is being
//!           started), then calls rpc_ping every 2 ms (each with a 2 s timeout) and prints the
//!           CLOCK_MONOTONIC time (seconds) of the first answer as JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use trove_guest::rpc::{client::RpcClient, AmqpOptions};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

fn monotonic_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let url = arg(&args, "--url", "rabbit://guest:guest@127.0.0.1:5672/");
    let id = arg(&args, "--id", "");
    let topic = format!("guestagent.{id}");
    let opts = AmqpOptions::new(&url, "trove", "trovebench-rpc-load");
    let client = Arc::new(RpcClient::connect(&opts).await.expect("cannot connect to RabbitMQ"));
    match mode.as_str() {
        "load" => {
            let method = arg(&args, "--method", "rpc_ping");
            let call_args: Map<String, Value> = serde_json::from_str(&arg(&args, "--args", "{}")).expect("--args JSON");
            let callers: usize = arg(&args, "--callers", "1").parse().unwrap();
            let duration = Duration::from_secs_f64(arg(&args, "--duration", "5").parse().unwrap());
            let warmup = Duration::from_secs_f64(arg(&args, "--warmup", "1").parse().unwrap());
            let start = Instant::now() + warmup;
            let end = start + duration;
            let mut tasks = Vec::new();
            for _ in 0..callers {
                let client = client.clone();
                let (topic, method, call_args) = (topic.clone(), method.clone(), call_args.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = Vec::new();
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        let r = client.call(&topic, &method, call_args.clone(), "1.0", Duration::from_secs(10), None).await;
                        let t2 = Instant::now();
                        match r {
                            Ok(_) if t >= start && t2 <= end => lat.push((t2 - t).as_secs_f64() * 1000.0),
                            Ok(_) => {}
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    (lat, errors)
                }));
            }
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            for t in tasks {
                let (l, e) = t.await.unwrap();
                lat.extend(l);
                errors.extend(e);
            }
            let n_errors = errors.len();
            errors.truncate(20);
            println!("{}", json!({"lat_ms": lat, "errors": errors, "n_errors": n_errors, "window_s": duration.as_secs_f64()}));
        }
        "startup" => {
            // Open the reply queue before the clock starts.
            let _ = client.call("guestagent.trovebench-warmup", "rpc_ping", Map::new(), "1.0", Duration::from_millis(100), None).await;
            println!("ready");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let first = loop {
                tokio::select! {
                    Some(t) = rx.recv() => break Some(t),
                    _ = tick.tick() => {
                        if Instant::now() > deadline { break None; }
                        let (client, topic, tx) = (client.clone(), topic.clone(), tx.clone());
                        tokio::spawn(async move {
                            if let Ok(Value::Bool(true)) = client.call(&topic, "rpc_ping", Map::new(), "1.0", Duration::from_secs(2), None).await {
                                let _ = tx.send(monotonic_s());
                            }
                        });
                    }
                }
            };
            println!("{}", json!({"first_answer": first}));
        }
        other => {
            eprintln!("unknown mode {other:?}: load | startup");
            std::process::exit(2);
        }
    }
}
