//! trove-guestctl: the taskmanager's side of Trove's guest RPC, running the replication flows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use trove_guest::flows::{self, create::CreateOptions, prepare::PrepareOptions, show, Inventory, Taskmanager};

/// Run Trove's Redis replication flows against trove-guestagent instances over RabbitMQ.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Inventory file (TOML): transport_url, control_exchange and one [[guest]] per guest.
    #[arg(long, global = true, env = "TROVE_GUESTCTL_INVENTORY", value_name = "PATH")]
    inventory: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare new GUESTs as Trove's taskmanager does (its prepare payload), and wait until Redis serves.
    Prepare {
        /// redis.conf contents, like Trove's rendered config.template (default: the agent's own).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The flavor's RAM, as Trove sends it.
        #[arg(long, default_value_t = 512)]
        memory_mb: u64,
        /// Configuration-group overrides as a JSON object, e.g. '{"maxmemory-policy": "allkeys-lru"}'.
        #[arg(long, value_name = "JSON")]
        overrides: Option<String>,
        /// Datastore version name (Trove's ds_version).
        #[arg(long, default_value = "7.0")]
        ds_version: String,
        /// Prepare a guest whose Redis already serves (drops its replication settings).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for each guest's agent, then for its Redis.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[arg(required = true)]
        guests: Vec<String>,
    },
    /// Create replicas of MASTER: N spare guests, or the named ones.
    CreateReplicas {
        #[arg(long, value_name = "MASTER")]
        replica_of: String,
        #[arg(long, conflicts_with = "guests")]
        replica_count: Option<usize>,
        /// Let a master without persistence turn RDB save points on (otherwise it is refused).
        #[arg(long)]
        enable_persistence: bool,
        /// redis.conf contents for guests that were never prepared (default: the agent's own).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        guests: Vec<String>,
    },
    /// Detach GUEST from its master: it becomes a writable standalone master with its data.
    DetachReplica { guest: String },
    /// Promote GUEST (a replica) to replica source, with no acknowledged-write loss.
    PromoteToReplicaSource { guest: String },
    /// Replace the dead MASTER with its most current replica.
    EjectReplicaSource {
        master: String,
        /// Eject even though the master still answers.
        #[arg(long)]
        force: bool,
    },
    /// Show every guest's role, master, link, offset, lag, read-only and health.
    Show,
    /// Hand the set back to Trove's own taskmanager: a new epoch with no topology, after which the
    /// agents serve epoch-less calls again (stop the watchers first; any later command manages it again).
    Release,
    /// Watch the replica set: eject a dead master without a human, and serve Sentinel-protocol
    /// discovery (SENTINEL get-master-addr-by-name ...) on --listen. Runs until SIGTERM.
    Watch {
        /// Discovery address (Sentinel protocol, RESP2).
        #[arg(long, value_name = "HOST:PORT")]
        listen: std::net::SocketAddr,
        /// How long the master must look down, with a majority of its replicas agreeing.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
        down_after_ms: u64,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (docs/metrics.md). Off when not given.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Watch every replica set whose inventory (`*.toml`) is in DIR, in this one process, instead
        /// of the one --inventory names. DIR is read again every 5 s: sets come and go with their files.
        #[arg(long, value_name = "DIR")]
        sets: Option<PathBuf>,
        /// With --sets: membership from Trove. Every 5 s the watcher reads Trove's instances (the
        /// template's `[trove]`) and keeps one inventory per Redis replica set in DIR, made from
        /// this template (transport, watchers, password), each named by its first master's id.
        #[arg(long, value_name = "FILE", requires = "sets")]
        trove_template: Option<PathBuf>,
    },
    /// One raw guest call; prints the JSON result.
    Call {
        guest: String,
        method: String,
        /// Keyword arguments as a JSON object; `-` reads them from stdin (keeps secrets out of argv).
        args: Option<String>,
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TROVE_GUESTCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("trove_guest=info,warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).without_time().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Watch { listen, down_after_ms, metrics_listen, sets: Some(dir), trove_template } = &cli.command {
        if cli.inventory.is_some() {
            bail!("watch --sets DIR replaces --inventory: give one or the other");
        }
        let from_trove = match trove_template {
            Some(path) => Some(trove_membership(path, dir)?),
            None => None,
        };
        return watch_sets(dir, *listen, *down_after_ms, *metrics_listen, from_trove).await;
    }
    let Some(path) = cli.inventory.clone() else {
        bail!("no inventory: pass --inventory PATH or set TROVE_GUESTCTL_INVENTORY (see etc/inventory.example.toml)");
    };
    let inventory = Inventory::load(&path)?;
    let mut tm = Taskmanager::connect(inventory).await.context("cannot reach RabbitMQ")?;
    let outcome = command(cli, &mut tm).await;
    // Close the AMQP connection while the runtime still runs lapin's I/O.
    tm.close().await;
    outcome
}

/// Runs one command against the connected taskmanager.
async fn command(cli: Cli, tm: &mut Taskmanager) -> anyhow::Result<ExitCode> {
    if let Command::Watch { listen, down_after_ms, metrics_listen, .. } = cli.command {
        return watch(tm, listen, down_after_ms, metrics_listen).await;
    }
    if !matches!(cli.command, Command::Call { .. } | Command::Prepare { .. }) {
        // One quick probe of every guest, reused by the flow (a dead guest costs DEAD_MASTER_TIMEOUT once).
        let live = tm.live_all_within(flows::DEAD_MASTER_TIMEOUT).await;
        for d in tm.disagreements(&live) {
            eprintln!("warning: inventory and live state disagree: {d}");
        }
        tm.recent = live;
    }
    let json_out = cli.json;
    let result: Result<Value, flows::Error> = match cli.command {
        Command::Prepare { config, memory_mb, overrides, ds_version, force, timeout, guests } => {
            let config_contents = match config {
                Some(p) => Some(std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?),
                None => None,
            };
            let overrides = match overrides.as_deref() {
                Some(text) => match serde_json::from_str::<Value>(text).context("--overrides must be a JSON object")? {
                    Value::Object(m) => m,
                    _ => bail!("--overrides must be a JSON object"),
                },
                None => Default::default(),
            };
            let opts = PrepareOptions { config_contents, memory_mb, overrides, ds_version, force, timeout: std::time::Duration::from_secs(timeout) };
            // One after another, as each is its own instance; every failure is reported.
            let mut done = Vec::new();
            let mut failed = Vec::new();
            for guest in &guests {
                match tm.prepare(guest, &opts).await {
                    Ok(p) => {
                        eprintln!("{}: prepared, Redis serves as {} ({} s)", p.guest, p.role, p.seconds);
                        done.push(p);
                    }
                    Err(e) => failed.push(e),
                }
            }
            match failed.len() {
                0 if !json_out => return Ok(ExitCode::SUCCESS),
                0 => Ok(json!(done)),
                1 if guests.len() == 1 => Err(failed.remove(0)),
                _ if failed.iter().all(|e| matches!(e, flows::Error::Refused(_))) && done.is_empty() => {
                    Err(flows::Error::Refused(failed.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))
                }
                _ => Err(flows::Error::Partial(failed)),
            }
        }
        Command::CreateReplicas { replica_of, replica_count, enable_persistence, config, guests } => {
            if guests.is_empty() && replica_count.is_none() {
                bail!("name the replicas, or give --replica-count N");
            }
            let config_contents = match config {
                Some(p) => Some(std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?),
                None => None,
            };
            let opts = CreateOptions { master: replica_of, replicas: guests, count: replica_count, enable_persistence, config_contents };
            tm.create_replicas(opts).await.map(|r| json!(r))
        }
        Command::DetachReplica { guest } => tm.detach(&guest).await.map(|()| json!({"detached": guest})),
        Command::Release => tm.release().await.map(|epoch| json!({"released_in_epoch": epoch})),
        Command::PromoteToReplicaSource { guest } => tm.promote(&guest).await.map(|r| json!(r)),
        Command::EjectReplicaSource { master, force } => tm.eject(&master, force).await.map(|r| {
            for c in &r.evidence {
                eprintln!(
                    "  candidate {:<12} history {} offset {} last_io {}{}",
                    c.id,
                    c.replid.as_deref().unwrap_or("-"),
                    c.offset,
                    c.last_io_seconds.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    if c.id == r.new_master { "  <- chosen" } else { "" }
                );
            }
            json!(r)
        }),
        Command::Show => {
            let (rows, _) = tm.show().await;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", show::table(&rows));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Watch { .. } => unreachable!("handled above"),
        Command::Call { guest, method, args, timeout } => {
            let args: Value = match args.as_deref() {
                Some("-") => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("cannot read ARGS from stdin")?;
                    serde_json::from_str(&text).context("ARGS must be a JSON object")?
                }
                Some(text) => serde_json::from_str(text).context("ARGS must be a JSON object")?,
                None => json!({}),
            };
            if !args.is_object() {
                bail!("ARGS must be a JSON object");
            }
            tm.call(&guest, &method, args, std::time::Duration::from_secs(timeout)).await
        }
    };
    match result {
        Ok(v) => {
            if cli.json || v.is_object() || v.is_array() {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(flows::Error::Refused(msg)) => {
            eprintln!("refused: {msg}");
            Ok(ExitCode::from(3))
        }
        Err(e) => {
            eprintln!("failed: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Whether the inventory's watcher address `w` is this watcher: its listen address, or its port on
/// one of this host's addresses (a watcher listening on 0.0.0.0 never lists itself as a peer).
fn is_me(w: &str, listen: std::net::SocketAddr) -> bool {
    let Ok(addr) = w.parse::<std::net::SocketAddr>() else { return w == listen.to_string() };
    if addr == listen {
        return true;
    }
    if addr.port() != listen.port() || !listen.ip().is_unspecified() {
        return false;
    }
    addr.ip().is_loopback()
        || nix::ifaddrs::getifaddrs().is_ok_and(|mut all| {
            all.any(|a| a.address.as_ref().and_then(|s| s.as_sockaddr_in()).is_some_and(|sin| std::net::IpAddr::V4(sin.ip()) == addr.ip()))
        })
}

/// `watch`: discovery on `listen`, the watcher loop until SIGTERM/SIGINT.
async fn watch(tm: &mut Taskmanager, listen: std::net::SocketAddr, down_after_ms: u64, metrics_listen: Option<std::net::SocketAddr>) -> anyhow::Result<ExitCode> {
    use secrecy::SecretString;
    let inv = &tm.inventory;
    let peers: Vec<String> = inv.watchers.iter().filter(|w| !is_me(w, listen)).cloned().collect();
    let password = inv.discovery_password.as_ref().map(|p| SecretString::from(p.0.clone()));
    let shared = trove_guest::discovery::Shared::new(&inv.name, peers, password, down_after_ms);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, name = %inv.name, "discovery listening");
    let sets = trove_guest::discovery::Sets::one(shared.clone());
    let server = tokio::spawn(trove_guest::discovery::serve(listener, sets.clone()));
    let cancel = serve_metrics_and_signals(metrics_listen, &sets).await?;
    let opts = flows::watch::WatchOptions { down_after: std::time::Duration::from_millis(down_after_ms) };
    let result = tm.watch(opts, shared, cancel).await;
    server.abort();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `/metrics` on `metrics_listen` when given, and a token cancelled at SIGTERM/SIGINT.
async fn serve_metrics_and_signals(
    metrics_listen: Option<std::net::SocketAddr>,
    sets: &std::sync::Arc<trove_guest::discovery::Sets>,
) -> anyhow::Result<tokio_util::sync::CancellationToken> {
    let cancel = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(%addr, "metrics served at /metrics");
        let sets = sets.clone();
        let render: trove_guest::metrics::Render = std::sync::Arc::new(move || {
            let sets = sets.clone();
            Box::pin(async move { trove_guest::discovery::metrics::encode(&sets).await })
        });
        tokio::spawn(trove_guest::metrics::serve(listener, render, cancel.clone()));
    }
    let stop = cancel.clone();
    tokio::spawn(async move {
        trove_guest::signal::shutdown().await;
        stop.cancel();
    });
    Ok(cancel)
}

/// How often `watch --sets` reads its directory again.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

/// `--trove-template`: the template inventory and a client of the Trove API it names.
fn trove_membership(path: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<(Inventory, flows::trove_api::TroveApi)> {
    let template = Inventory::load(path)?;
    let Some(conf) = template.trove.clone() else { bail!("{}: a --trove-template needs a [trove] table (url, token_file)", path.display()) };
    let inside = path.parent().zip(std::fs::canonicalize(dir).ok()).is_some_and(|(p, d)| std::fs::canonicalize(p).ok() == Some(d));
    if inside && path.extension().is_some_and(|x| x == "toml") {
        bail!("{}: keep the template outside {} (every *.toml there is a set)", path.display(), dir.display());
    }
    if !template.guests.is_empty() {
        bail!("{}: a template lists no [[guest]]: the sets come from Trove", path.display());
    }
    Ok((template, flows::trove_api::TroveApi::new(conf)?))
}

/// One set `watch --sets` runs: its inventory's name, and its watch loop.
struct Running {
    name: String,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// `watch --sets DIR`: one watch loop per inventory in DIR, one discovery endpoint (each set under
/// its inventory's `name`) and one `/metrics` for all. Every inventory must give the same
/// `discovery_password` (or none): the endpoint has one.
async fn watch_sets(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    down_after_ms: u64,
    metrics_listen: Option<std::net::SocketAddr>,
    from_trove: Option<(Inventory, flows::trove_api::TroveApi)>,
) -> anyhow::Result<ExitCode> {
    use secrecy::{ExposeSecret, SecretString};
    let mut trove_said = String::new();
    let sync = async |trove_said: &mut String| {
        let Some((template, api)) = &from_trove else { return };
        let said = match flows::region::sync_from_trove(api, template, dir).await {
            Ok((written, removed)) => {
                for p in &written {
                    tracing::info!(path = %p.display(), "membership from Trove: inventory written");
                }
                for p in &removed {
                    tracing::info!(path = %p.display(), "membership from Trove: the set is gone, inventory removed");
                }
                String::new()
            }
            Err(error) => error.to_string(),
        };
        if !said.is_empty() && said != *trove_said {
            tracing::warn!(error = %said, "membership from Trove: cannot read or write; the sets keep running");
        }
        *trove_said = said;
    };
    sync(&mut trove_said).await;
    let first = inventories(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let passwords: std::collections::BTreeSet<Option<String>> =
        first.iter().filter_map(|(_, inv)| inv.as_ref().ok()).map(|inv| inv.discovery_password.as_ref().map(|p| p.0.clone())).collect();
    if passwords.len() > 1 {
        bail!("the inventories in {} give different discovery_password values; one endpoint has one password", dir.display());
    }
    let password = passwords.into_iter().next().flatten().map(SecretString::from);
    let sets = trove_guest::discovery::Sets::new(password.clone());
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, dir = %dir.display(), "discovery listening for every set in the directory");
    let server = tokio::spawn(trove_guest::discovery::serve(listener, sets.clone()));
    let cancel = serve_metrics_and_signals(metrics_listen, &sets).await?;
    let opts = flows::watch::WatchOptions { down_after: std::time::Duration::from_millis(down_after_ms) };
    let mut running: std::collections::BTreeMap<PathBuf, Running> = Default::default();
    let mut said: std::collections::BTreeMap<PathBuf, String> = Default::default();
    loop {
        sync(&mut trove_said).await;
        let found = match inventories(dir) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot read the inventory directory; the sets keep running");
                Vec::new()
            }
        };
        let scanned = !found.is_empty() || dir.is_dir();
        let mut seen = std::collections::BTreeSet::new();
        for (path, inv) in found {
            seen.insert(path.clone());
            let inv = match inv {
                Ok(inv) => inv,
                Err(error) => {
                    let text = error.to_string();
                    if said.get(&path) != Some(&text) {
                        tracing::error!(path = %path.display(), %error, "inventory skipped");
                        said.insert(path.clone(), text);
                    }
                    continue;
                }
            };
            said.remove(&path);
            if running.get(&path).is_some_and(|r| r.name == inv.name && !r.task.is_finished()) {
                continue;
            }
            if let Some(old) = running.remove(&path) {
                stop_set(&sets, old).await;
            }
            if inv.discovery_password.as_ref().map(|p| p.0.as_str()) != password.as_ref().map(|p| p.expose_secret()) {
                tracing::error!(path = %path.display(), "inventory skipped: its discovery_password differs from the endpoint's");
                continue;
            }
            let peers: Vec<String> = inv.watchers.iter().filter(|w| !is_me(w, listen)).cloned().collect();
            let name = inv.name.clone();
            let shared = match sets.add(&name, peers, down_after_ms) {
                Ok(shared) => shared,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "inventory skipped");
                    continue;
                }
            };
            let mut tm = match tokio::time::timeout(std::time::Duration::from_secs(10), Taskmanager::connect(inv)).await {
                Ok(Ok(tm)) => tm,
                Ok(Err(error)) => {
                    tracing::warn!(set = %name, %error, "cannot reach RabbitMQ for this set; trying again");
                    sets.remove(&name);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(set = %name, "RabbitMQ did not answer in time for this set; trying again");
                    sets.remove(&name);
                    continue;
                }
            };
            let stop = cancel.child_token();
            let (opts, token) = (opts.clone(), stop.clone());
            let set_name = name.clone();
            let task = tokio::spawn(async move {
                if let Err(error) = tm.watch(opts, shared, token).await {
                    tracing::error!(set = %set_name, %error, "watch loop ended");
                }
                tm.close().await;
            });
            tracing::info!(set = %name, path = %path.display(), "watching the set");
            running.insert(path, Running { name, stop, task });
        }
        if scanned {
            let gone: Vec<PathBuf> = running.keys().filter(|p| !seen.contains(*p)).cloned().collect();
            for path in gone {
                if let Some(old) = running.remove(&path) {
                    tracing::info!(set = %old.name, path = %path.display(), "inventory removed: no longer watching the set");
                    stop_set(&sets, old).await;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
    for (_, r) in std::mem::take(&mut running) {
        stop_set(&sets, r).await;
    }
    server.abort();
    Ok(ExitCode::SUCCESS)
}

async fn stop_set(sets: &trove_guest::discovery::Sets, r: Running) {
    r.stop.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(10), r.task).await.is_err() {
        tracing::warn!(set = %r.name, "the set's watch loop did not stop within 10 s");
    }
    sets.remove(&r.name);
}

/// Every `*.toml` in `dir` (sorted), loaded.
fn inventories(dir: &std::path::Path) -> std::io::Result<Vec<(PathBuf, Result<Inventory, flows::inventory::Error>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths.into_iter().map(|p| {
        let inv = Inventory::load(&p);
        (p, inv)
    }).collect())
}
