//! `trove-guestctl watch`: detects a dead master through its agents and replicas, ejects it under
//! a RabbitMQ lease, re-attaches it when it returns, and feeds the Sentinel-protocol discovery.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::epoch::topology_of;
use super::trove_api::TroveApi;
use super::trove_sync::{Adopt, TroveSync};
use super::{Error, Inventory, Live, Taskmanager};
use crate::discovery::{Node, Shared, View};
use crate::rpc::hint::Hints;
use crate::rpc::lease::Lease;
use crate::rpc::AmqpOptions;

/// How the watcher judges and acts.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long the master must look dead, with a majority of its replicas agreeing.
    pub down_after: Duration,
}

impl WatchOptions {
    /// Time between probe rounds.
    fn period(&self) -> Duration {
        (self.down_after / 20).clamp(Duration::from_millis(20), Duration::from_millis(250))
    }

    /// How long one status probe may take before it counts as no answer.
    fn probe_timeout(&self) -> Duration {
        (self.down_after / 8).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// A replica's link to its master counts as down once the master has been silent this long,
/// even while Redis still calls the link up (a cut network is noticed only at `repl-timeout`).
/// The replica's agent PINGs its master every 100 ms and reports `master_heard_ms_ago`: silent
/// for 400 ms is three PINGs unanswered.
const SILENT_LINK_MS: u64 = 400;
/// The same from Redis's own `master_last_io_seconds_ago`, for an agent that does not report
/// `master_heard_ms_ago`: a replica source pings its replicas every second
/// (`SOURCE_PING_PERIOD_S`), and the figure is whole seconds, so 3 leaves room for a late ping.
const SILENT_LINK_SECS: i64 = 3;

/// How long after its replicas last heard it a cut-off master with a write fence may still
/// acknowledge writes, beyond its `min-replicas-max-lag`: Redis counts a replica's lag in whole
/// seconds from its last once-a-second ACK and recounts good replicas once a second.
const FENCE_MARGIN: Duration = Duration::from_millis(2500);

/// The least time between two rounds when hints (`rpc::hint`) wake the watcher.
const HINT_SPACING: Duration = Duration::from_millis(5);

/// The next hint, or never when there is no hint queue.
async fn next_hint(hints: Option<&mut Hints>) -> Option<crate::rpc::hint::Hint> {
    match hints {
        Some(h) => h.next().await,
        None => std::future::pending().await,
    }
}

/// How long opening an AMQP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the watcher remembers between rounds.
struct Memory {
    /// When watching began: the baseline before a guest has answered once.
    started: Instant,
    /// Last time each guest answered with a healthy status.
    last_good: HashMap<String, Instant>,
    /// Last time each replica reported its link to the master up.
    last_linked: HashMap<String, Instant>,
    /// Last address, run id and offset each guest reported.
    nodes: HashMap<String, Node>,
    sdown: bool,
    odown: bool,
    /// The accepted epoch of the topology last seen (Sentinel's `config-epoch`) and its master.
    epoch: u64,
    master: Option<String>,
    /// Since when the guests have not matched the accepted topology (a re-attach or a failover
    /// to complete); acted on after `down_after`, so a command in flight can finish first.
    mismatch_since: Option<Instant>,
    /// The master's write fence as it last reported it (`min-replicas-max-lag`), if any.
    fence_lag: Option<Duration>,
    fence_wait_logged: bool,
    /// Trove's records, kept in line by the lease holder (the inventory's `[trove]`).
    trove: Option<TroveSync>,
}

impl Memory {
    /// `host port` of a guest as last reported, for Sentinel event payloads.
    fn addr(&self, id: &str) -> String {
        self.nodes.get(id).map(|n| format!("{} {}", n.host, n.port)).unwrap_or_else(|| "? 0".into())
    }
}

/// The master as the inventory names it: the guest others replicate from.
pub fn current_master(inv: &Inventory) -> Option<String> {
    inv.guests.iter().find(|g| g.replica_of.is_none() && !inv.replicas_of(&g.id).is_empty()).map(|g| g.id.clone())
}

/// Milliseconds since a replica whose Redis still calls its link up last heard its master, when
/// that is long enough to count the link as cut: by its agent's own probe when it reports one,
/// else by Redis's whole seconds.
fn silent_ms(l: &Live) -> Option<u64> {
    let s = l.status.as_ref()?;
    if s.get("link_up") != Some(&json!(true)) {
        return None;
    }
    if let Some(ms) = s.get("master_heard_ms_ago").and_then(Value::as_u64) {
        return (ms >= SILENT_LINK_MS).then_some(ms);
    }
    let quiet = s.get("master_last_io_seconds_ago").and_then(Value::as_i64)?;
    (quiet >= SILENT_LINK_SECS).then_some(quiet as u64 * 1000)
}

fn link_up(l: &Live) -> bool {
    let Some(s) = &l.status else { return false };
    s.get("role").and_then(Value::as_str) == Some("replica") && s.get("link_up") == Some(&json!(true)) && silent_ms(l).is_none()
}

fn node_of(l: &Live) -> Option<Node> {
    let s = l.status.as_ref()?;
    let (host, port) = l.addr()?;
    Some(Node {
        id: l.id.clone(),
        host,
        port: u16::try_from(port).ok()?,
        run_id: s.get("run_id").and_then(Value::as_str).unwrap_or_default().to_owned(),
        down: false,
        link_up: link_up(l),
        offset: l.offset(),
    })
}

/// Whether a replica of the accepted topology does not follow its master: it answers as a
/// master (an old master back), is held back after a crash, or follows another address.
fn strays(l: &Live, master: Option<&Live>) -> bool {
    if l.held || l.role() == Some("master") {
        return true;
    }
    let want = master.and_then(Live::addr);
    l.role() == Some("replica") && want.is_some() && l.master_addr() != want
}

fn guarded(l: &Live) -> bool {
    l.status.as_ref().and_then(|s| s.get("guarded")) == Some(&json!(true))
}

fn fenced(l: &Live) -> bool {
    l.status.as_ref().and_then(|s| s.get("fenced")) == Some(&json!(true))
}

/// The lease still held, asked within `timeout` (a hung broker counts as lost).
async fn lease_holds(lease: &Lease, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, lease.check()).await.unwrap_or(false)
}

impl Taskmanager {
    /// Runs until `cancel`: one probe round every period, acting only while holding the lease.
    pub async fn watch(&mut self, opts: WatchOptions, shared: Arc<Shared>, cancel: CancellationToken) -> Result<(), Error> {
        self.epoch_timeout = super::epoch::EPOCH_TIMEOUT;
        let mut amqp = AmqpOptions::new(&self.inventory.transport_url, &self.inventory.control_exchange, "trove-guestctl-watch");
        // The broker drops a hung or cut-off holder after two missed heartbeats: about down_after.
        amqp.heartbeat = u16::try_from(opts.down_after.as_secs().clamp(1, 60)).unwrap_or(1);
        let lease_name = format!("trove-guestctl.watch.{}", self.inventory.name);
        let path: PathBuf = self.inventory.path.clone();
        let mut lease: Option<Lease> = None;
        let mut last_try: Option<Instant> = None;
        let mut was_held = false;
        let mut last_connect: Option<Instant> = None;
        let mut mem = Memory {
            started: Instant::now(),
            last_good: HashMap::new(),
            last_linked: HashMap::new(),
            nodes: HashMap::new(),
            sdown: false,
            odown: false,
            epoch: 0,
            master: None,
            mismatch_since: None,
            fence_lag: None,
            fence_wait_logged: false,
            trove: match self.inventory.trove.clone() {
                Some(conf) => Some(TroveSync::new(TroveApi::new(conf)?)),
                None => None,
            },
        };
        let mut requests = shared.failover_requests.lock().await.take();
        let mut hints: Option<Hints> = None;
        let mut last_round = Instant::now();
        tracing::info!(name = %self.inventory.name, down_after_ms = opts.down_after.as_millis() as u64, "watching");
        loop {
            if hints.is_none() && self.client.connected() {
                match self.client.hints(&self.inventory.name).await {
                    Ok(h) => hints = h,
                    Err(error) => tracing::debug!(%error, "no topology hints on this connection; polling only"),
                }
            }
            let asked = async {
                match requests.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            let hinted = next_hint(hints.as_mut());
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(opts.period()) => {}
                Some(done) = asked => {
                    let outcome = self.switch_over(&shared, &mut mem, lease.as_ref().filter(|l| l.held())).await;
                    let _ = done.send(outcome);
                    continue;
                }
                hint = hinted => match hint {
                    // A coordinator changed the topology: look now (a flood still waits HINT_SPACING),
                    // first at the guest it names as the new master.
                    Some(hint) => {
                        tracing::info!(master = ?hint.master, "topology hint: probing now");
                        if let Some(new) = hint.master {
                            self.quick_look(&opts, &shared, &mut mem, &new).await;
                        }
                        tokio::time::sleep_until(last_round + HINT_SPACING).await;
                    }
                    None => hints = None,
                },
            }
            last_round = Instant::now();
            // The inventory may change under us (a promote by hand): read it every round.
            match Inventory::load(&path) {
                Ok(inv) => self.inventory = inv,
                Err(error) => tracing::warn!(%error, "cannot re-read the inventory; using the last one"),
            }
            // A watcher that cannot reach the guests must not hold the lease: its RPC connection is
            // opened again after a broker restart, and the lease given up while it is down.
            if !self.client.connected() && last_connect.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
                last_connect = Some(Instant::now());
                was_held = false;
                if let Some(l) = lease.take() {
                    tracing::warn!("the RPC connection is down: giving up the lease while blind");
                    l.release().await;
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, self.reconnect()).await {
                    Ok(Ok(())) => tracing::info!("RPC connection re-opened"),
                    Ok(Err(error)) => tracing::warn!(%error, "cannot re-open the RPC connection"),
                    Err(_) => tracing::warn!("the broker did not accept the RPC connection in time"),
                }
            }
            let sighted = self.client.connected();
            if lease.as_ref().is_some_and(|l| !l.connected()) {
                if was_held {
                    tracing::warn!("lost the lease (the broker closed its connection): this watcher no longer acts");
                }
                was_held = false;
                lease = None;
            }
            if sighted && lease.is_none() && last_try.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
                last_try = Some(Instant::now());
                match tokio::time::timeout(CONNECT_TIMEOUT, Lease::seat(&amqp, &lease_name)).await {
                    Ok(Ok(l)) => lease = Some(l),
                    Ok(Err(error)) => tracing::debug!(%error, "no seat at the broker for the lease"),
                    Err(_) => tracing::debug!("the broker did not accept the lease connection in time"),
                }
            }
            // Standbys wait on the broker: it hands the lease's token to this seat when the holder goes.
            let held = lease.as_ref().is_some_and(Lease::held);
            if held && !was_held {
                tracing::info!(lease = %lease_name, "this watcher holds the lease: it acts");
            }
            was_held = held;
            if lease.as_ref().is_some_and(Lease::held) {
                let holds = match lease.as_ref() {
                    // A broker slow to answer (a loaded host) has not dropped the lease: only one
                    // silent for down_after has (the broker itself drops a hung holder).
                    Some(l) => lease_holds(l, opts.down_after).await,
                    None => false,
                };
                if !holds || !sighted {
                    tracing::warn!("lost the lease: this watcher no longer acts");
                    was_held = false;
                    if let Some(l) = lease.take() {
                        l.release().await;
                    }
                }
            }
            let acting = lease.as_ref().filter(|l| l.held());
            shared.acting.store(acting.is_some(), std::sync::atomic::Ordering::SeqCst);
            self.round(&opts, &shared, &mut mem, acting, &mut hints).await;
        }
        shared.acting.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(l) = lease {
            l.release().await;
        }
        tracing::info!("watch stopped");
        Ok(())
    }

    async fn round(&mut self, opts: &WatchOptions, shared: &Shared, mem: &mut Memory, lease: Option<&Lease>, hints: &mut Option<Hints>) {
        let ids: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
        let timeout = opts.probe_timeout();
        let known = (mem.epoch, mem.master.clone());
        let lives = self.probe_all(&ids, timeout, opts, shared, mem, hints).await;
        if (mem.epoch, mem.master.clone()) != known {
            // A hint announced a newer master while these probes ran: they predate it, and the
            // next round decides on fresh ones.
            return;
        }
        let no_status = lives.iter().filter(|l| l.status.is_none()).count() as u64;
        shared.stats.probe_errors.fetch_add(no_status, std::sync::atomic::Ordering::Relaxed);
        // The topology is what the guests accepted (the highest epoch), not what a file says; the
        // inventory only names a set that has no epoch yet.
        let (epoch, topology) = match topology_of(&lives) {
            Some(t) => t,
            None => match self.inventory_topology().filter(|t| !t.replicas.is_empty()) {
                Some(t) => (0, t),
                None => {
                    *shared.view.write().await = View { epoch: mem.epoch, ..Default::default() };
                    return;
                }
            },
        };
        let master = topology.master.clone();
        let replicas = topology.replicas.clone();
        let now = Instant::now();
        let started = mem.started;
        for l in &lives {
            if let Some(n) = node_of(l) {
                if !guarded(l) {
                    mem.last_good.insert(l.id.clone(), now);
                }
                mem.nodes.insert(l.id.clone(), n);
            } else if let Some(n) = mem.nodes.get_mut(&l.id) {
                n.down = true;
                n.link_up = false;
            }
            if link_up(l) {
                mem.last_linked.insert(l.id.clone(), now);
            } else if let Some(quiet) = silent_ms(l) {
                // A silent link went quiet when the master was last heard, not when we noticed.
                let heard = now.checked_sub(Duration::from_millis(quiet)).unwrap_or(started);
                mem.last_linked.entry(l.id.clone()).and_modify(|t| *t = (*t).min(heard));
            }
        }
        if mem.master.as_deref() != Some(master.as_str()) {
            if let Some(old) = mem.master.clone() {
                // Every watcher announces what the guests accepted, whoever acted.
                self.announce_switch(shared, mem, &old, &master, epoch).await;
            }
            mem.master = Some(master.clone());
        }
        mem.epoch = epoch;
        let live_of = |id: &str| lives.iter().find(|l| l.id == id);
        let master_live = live_of(&master);
        // A master restarted guarded (a replica of nobody, see `service::GUARD_MASTER`) serves no
        // writes until a coordinator compares it with its replicas: it counts as down.
        let master_guarded = master_live.is_some_and(guarded);
        let master_ok = master_live.is_some_and(|l| l.status.is_some()) && !master_guarded;
        if let Some(s) = master_live.and_then(|l| l.status.as_ref()).filter(|_| master_ok) {
            mem.fence_lag = s.get("write_fence").and_then(|f| f.get("max_lag_s")).and_then(Value::as_u64).map(Duration::from_secs);
        }
        let silent_for = now - mem.last_good.get(&master).copied().unwrap_or(started);
        // Strong evidence halves the wait: the master's agent is gone (no answer at all), or says
        // its Redis crashed and is held back, and a majority of replicas saw their link reset
        // (not merely silent). A plain "Redis is down" from the agent is not strong evidence.
        let agent_gone = master_live.is_some_and(|l| l.silent || l.held || guarded(l));
        let reset = |r: &String| live_of(r).and_then(|l| l.status.as_ref()).is_some_and(|s| s.get("link_up") == Some(&json!(false)));
        let majority = replicas.len() / 2 + 1;
        let strong = agent_gone && replicas.iter().filter(|r| reset(r)).count() >= majority;
        let wait = if strong { opts.down_after / 2 } else { opts.down_after };
        let sdown = !master_ok && silent_for >= wait;
        let unlinked: Vec<&String> = replicas
            .iter()
            .filter(|r| live_of(r).is_some_and(|l| l.status.is_some() && !link_up(l)))
            .filter(|r| now - mem.last_linked.get(*r).copied().unwrap_or(started) >= wait)
            .collect();
        let odown = sdown && unlinked.len() >= majority;
        // Links that are only silent (Redis has not seen them reset) may be a partition: a cut-off
        // master with a write fence still acknowledges writes until its replicas' lag passes its
        // `min-replicas-max-lag`. Fail over only once that fence must be up, so that no write is
        // acknowledged on both sides. A reset link (the master's process is gone) needs no wait.
        let silent_only = replicas.iter().filter(|r| reset(r)).count() < majority;
        let heard = unlinked.iter().filter_map(|r| mem.last_linked.get(*r)).max().copied().unwrap_or(started);
        let fence_wait = mem.fence_lag.filter(|_| silent_only).map(|lag| lag + FENCE_MARGIN);
        let fenced_by_now = fence_wait.is_none_or(|w| now - heard >= w);

        let addr = mem.addr(&master);
        if sdown != mem.sdown {
            shared.publish(if sdown { "+sdown" } else { "-sdown" }, format!("master {} {addr}", shared.name));
            mem.sdown = sdown;
        }
        if odown && !mem.odown {
            shared.publish("+odown", format!("master {} {addr} #quorum {}/{}", shared.name, unlinked.len(), majority));
        }
        mem.odown = odown;
        let followers: Vec<String> = topology.followers().cloned().collect();
        publish_view(shared, mem, &master, &followers).await;

        let Some(lease) = lease else { return };
        if odown && !fenced_by_now {
            if !mem.fence_wait_logged {
                tracing::warn!(%master, wait_ms = fence_wait.unwrap_or_default().as_millis() as u64, "master is down by silent links only (a partition?): waiting until its write fence must have stopped its writes");
                mem.fence_wait_logged = true;
            }
            return;
        }
        mem.fence_wait_logged = false;
        if odown {
            let evidence: Vec<String> = replicas
                .iter()
                .map(|r| match live_of(r) {
                    Some(l) if l.status.is_some() => format!("{r}: link {} (last up {:?} ago)", if link_up(l) { "up" } else { "down" }, mem.last_linked.get(r).map(|t| now - *t)),
                    Some(l) => format!("{r}: no status ({})", l.error.clone().unwrap_or_default()),
                    None => format!("{r}: not probed"),
                })
                .collect();
            let why = master_live.and_then(|l| l.error.clone()).unwrap_or_default();
            tracing::warn!(%master, epoch, silent_ms = silent_for.as_millis() as u64, strong, master_error = %why, ?evidence, "decision: master is down (its agent and a majority of its replicas agree); ejecting");
            shared.stats.last_detection_ms.store(silent_for.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
            self.fail_over(&master, lives.clone(), shared, mem, lease, opts).await;
            return;
        }
        // The guests differ from the accepted topology: an old master back (writable, or crashed
        // and held back), a replica following someone else, a failover left half done, or a set
        // with no epoch yet. After down_after (a command in flight finishes first), act on it.
        let master_is_master = master_live.and_then(Live::role) == Some("master") && master_live.is_some_and(|l| !fenced(l));
        let stray: Vec<String> = topology.followers().filter(|r| live_of(r).is_some_and(|l| strays(l, master_live))).cloned().collect();
        let mismatch = master_ok && (epoch == 0 || !master_is_master || !stray.is_empty());
        if !mismatch {
            mem.mismatch_since = None;
            // The guests match the accepted topology: Trove's records follow it.
            if master_ok && !mem.sdown {
                if let Some(trove) = mem.trove.as_mut() {
                    let members: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
                    trove.look(&topology, &members, &lives, &shared.stats).await;
                }
            }
            return;
        }
        let since = *mem.mismatch_since.get_or_insert(now);
        if now - since < opts.down_after || !lease_holds(lease, opts.probe_timeout()).await {
            return;
        }
        // In a set Trove keeps, the difference may be Trove's own promote, eject or detach.
        if let Some(trove) = mem.trove.as_mut() {
            let members: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
            match trove.adopt(&topology, &members, &lives).await {
                Adopt::Wait(_) => return,
                Adopt::No => {}
                Adopt::Take(troves) => {
                    tracing::warn!(%master, new_master = %troves.master, replicas = ?troves.replicas, "decision: the guests are as Trove's own promote, eject or detach left them; accepting that topology");
                    let result = async {
                        let claim = self.claim().await?;
                        self.commit(&claim, &troves).await
                    }
                    .await;
                    self.epoch = None;
                    mem.mismatch_since = None;
                    if let Err(error) = result {
                        tracing::warn!(%error, "could not accept Trove's topology; retrying");
                    }
                    return;
                }
            }
        }
        tracing::warn!(%master, epoch, ?stray, master_is_master, "decision: the guests differ from the accepted topology; making them match it");
        let result = async {
            let claim = self.claim().await?;
            self.commit(&claim, &claim.topology).await?;
            let fresh = self.live_all_within(opts.probe_timeout()).await;
            self.install(&claim, &claim.topology, &fresh, None).await
        }
        .await;
        self.epoch = None;
        mem.mismatch_since = None;
        match result {
            Ok(()) => tracing::info!(%master, "the guests match the accepted topology"),
            Err(error) => tracing::warn!(%master, %error, "could not make the guests match the topology; retrying"),
        }
    }

    /// Probes every guest; a hint that comes while the round waits for its slowest guest is read
    /// at once (`quick_look`), not after the round.
    async fn probe_all(&self, ids: &[String], timeout: Duration, opts: &WatchOptions, shared: &Shared, mem: &mut Memory, hints: &mut Option<Hints>) -> Vec<Live> {
        let probes = futures_util::future::join_all(ids.iter().map(|g| self.live_within(g, timeout)));
        tokio::pin!(probes);
        loop {
            let hinted = next_hint(hints.as_mut());
            tokio::select! {
                lives = &mut probes => return lives,
                hint = hinted => match hint {
                    Some(hint) => {
                        if let Some(new) = hint.master {
                            tracing::info!(master = %new, "topology hint during a round: probing the named guest");
                            self.quick_look(opts, shared, mem, &new).await;
                        }
                    }
                    None => *hints = None,
                },
            }
        }
    }

    /// Announces `new` at once, without a round, when it reports an accepted topology that names
    /// it master, in an epoch no older than the one known: the evidence a round announces on, from
    /// the one guest a hint names (the others may still be re-pointing, and a round waits for the
    /// slowest). A coordinator hints as it asks that guest to take writes; a client that reaches
    /// it a moment early meets READONLY and asks again.
    async fn quick_look(&self, opts: &WatchOptions, shared: &Shared, mem: &mut Memory, new: &str) {
        let Some(old) = mem.master.clone().filter(|m| m != new) else { return };
        if !self.inventory.guests.iter().any(|g| g.id == new) {
            return;
        }
        let live = self.live_within(new, opts.probe_timeout()).await;
        let Some((epoch, topology)) = topology_of(std::slice::from_ref(&live)) else { return };
        if topology.master != new || epoch < mem.epoch {
            tracing::debug!(%new, epoch, "the hinted guest's accepted topology names another master; the rounds decide");
            return;
        }
        let Some(node) = node_of(&live) else { return };
        mem.nodes.insert(new.to_owned(), node);
        mem.last_good.insert(new.to_owned(), Instant::now());
        tracing::info!(%old, %new, epoch, "the hinted guest is the accepted master: announcing it");
        self.announce_switch(shared, mem, &old, new, epoch).await;
        mem.master = Some(new.to_owned());
    }

    async fn fail_over(&mut self, master: &str, lives: Vec<Live>, shared: &Shared, mem: &mut Memory, lease: &Lease, opts: &WatchOptions) {
        if !lease_holds(lease, opts.probe_timeout()).await {
            tracing::warn!("lost the lease before the eject; not acting");
            return;
        }
        self.recent = lives;
        let result = self.announcing(shared, mem, master, |tm| Box::pin(tm.eject(master, false))).await;
        self.on_writable = None;
        self.recent.clear();
        let epoch = self.epoch.take().unwrap_or(mem.epoch);
        let counter = if result.is_ok() { &shared.stats.ejects_ok } else { &shared.stats.ejects_failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(report) => {
                tracing::info!(old = %master, new = %report.new_master, epoch, total_ms = report.total_ms, ?report.evidence, "eject done");
                self.announce_once(shared, mem, master, &report.new_master, epoch).await;
            }
            Err(error) => tracing::warn!(old = %master, %error, "eject did not complete (the next coordinator completes what was accepted)"),
        }
    }

    /// Runs `op` (a command that may change the master), announcing the new master to clients the
    /// moment it takes writes (`Taskmanager::on_writable`; the caller clears it), before the others
    /// are re-pointed.
    async fn announcing<'a, T>(
        &'a mut self,
        shared: &Shared,
        mem: &mut Memory,
        old: &str,
        op: impl FnOnce(&'a mut Taskmanager) -> futures_util::future::BoxFuture<'a, Result<T, Error>>,
    ) -> Result<T, Error> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.on_writable = Some(tx);
        let members: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
        let mut op = op(self);
        let result = loop {
            tokio::select! {
                r = &mut op => break r,
                Some((new, epoch)) = rx.recv() => {
                    if new != old && mem.master.as_deref() != Some(new.as_str()) {
                        tracing::info!(%old, %new, "the new master takes writes: announcing it before the others are re-pointed");
                        announce(shared, mem, &members, old, &new, epoch).await;
                        mem.master = Some(new);
                    }
                }
            }
        };
        drop(op);
        result
    }

    /// Announces `new` unless it was announced already (as soon as it took writes).
    async fn announce_once(&self, shared: &Shared, mem: &mut Memory, old: &str, new: &str, epoch: u64) {
        if mem.master.as_deref() == Some(new) {
            mem.epoch = epoch;
            return;
        }
        self.announce_switch(shared, mem, old, new, epoch).await;
        mem.master = Some(new.to_owned());
    }

    /// A new master: its epoch, the view, and `+switch-master` for subscribers.
    async fn announce_switch(&self, shared: &Shared, mem: &mut Memory, old: &str, new: &str, epoch: u64) {
        let members: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).collect();
        announce(shared, mem, &members, old, new, epoch).await;
    }

    /// `SENTINEL FAILOVER`: a planned switchover to the most current linked replica, through the
    /// promote (the old master is fenced and the candidate catches up first: nothing is lost).
    /// The error text is the reply clients get.
    async fn switch_over(&mut self, shared: &Shared, mem: &mut Memory, lease: Option<&Lease>) -> Result<(), String> {
        let Some(lease) = lease else { return Err("ERR this watcher does not hold the lease".into()) };
        let Some(master) = mem.master.clone() else { return Err("ERR No such master with that name".into()) };
        let replicas: Vec<String> = self.inventory.guests.iter().map(|g| g.id.clone()).filter(|g| *g != master).collect();
        let lives: Vec<Live> = futures_util::future::join_all(replicas.iter().map(|r| self.live(r))).await;
        let best = lives
            .iter()
            .filter(|l| link_up(l))
            .max_by(|a, b| a.offset().cmp(&b.offset()).then(b.id.cmp(&a.id)))
            .map(|l| l.id.clone())
            .ok_or("NOGOODSLAVE No suitable replica to promote")?;
        if !lease_holds(lease, Duration::from_secs(1)).await {
            return Err("ERR this watcher lost the lease".into());
        }
        tracing::warn!(%master, candidate = %best, "decision: SENTINEL FAILOVER asked for a planned switchover; promoting the most current linked replica");
        let result = self.announcing(shared, mem, &master, |tm| Box::pin(tm.promote(&best))).await;
        self.on_writable = None;
        let epoch = self.epoch.take().unwrap_or(mem.epoch);
        let counter = if result.is_ok() { &shared.stats.switchovers_ok } else { &shared.stats.switchovers_failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(report) => tracing::info!(old = %master, new = %best, epoch, total_ms = report.total_ms, "promote done"),
            Err(error) => {
                tracing::warn!(old = %master, %error, "promote did not complete");
                return Err(format!("ERR the promote failed: {error}"));
            }
        }
        self.announce_once(shared, mem, &master, &best, epoch).await;
        Ok(())
    }

}

/// The view clients discover through: `master` and its `replicas` as last reported.
async fn publish_view(shared: &Shared, mem: &Memory, master: &str, replicas: &[String]) {
    let mut m = mem.nodes.get(master).cloned();
    if let Some(m) = m.as_mut() {
        m.down = mem.sdown;
    }
    let replicas = replicas.iter().filter_map(|r| mem.nodes.get(r).cloned()).collect();
    *shared.view.write().await = View { master: m, replicas, sdown: mem.sdown, odown: mem.odown, epoch: mem.epoch };
}

/// A new master of `members`: its epoch, the view, and `+switch-master` for subscribers.
async fn announce(shared: &Shared, mem: &mut Memory, members: &[String], old: &str, new: &str, epoch: u64) {
    mem.epoch = epoch;
    let old_addr = mem.addr(old);
    let new_addr = mem.addr(new);
    mem.sdown = false;
    mem.odown = false;
    let replicas: Vec<String> = members.iter().filter(|g| *g != new && mem.nodes.contains_key(*g)).cloned().collect();
    publish_view(shared, mem, new, &replicas).await;
    shared.publish("+switch-master", format!("{} {old_addr} {new_addr}", shared.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(link_up: bool, last_io: i64) -> Live {
        let status = json!({"role": "replica", "link_up": link_up, "master_last_io_seconds_ago": last_io});
        Live { id: "r".into(), status: Some(status), error: None, unprepared: false, silent: false, held: false }
    }

    #[test]
    fn a_link_redis_calls_up_counts_as_cut_once_the_master_is_silent_for_three_seconds() {
        assert!(link_up(&replica(true, 0)));
        assert!(link_up(&replica(true, 2)), "one late ping is not a cut");
        assert!(!link_up(&replica(true, 3)));
        assert_eq!(silent_ms(&replica(true, 7)), Some(7000));
        assert!(!link_up(&replica(false, 0)));
        assert_eq!(silent_ms(&replica(false, 7)), None, "a link Redis calls down is down anyway");
    }

    #[test]
    fn the_agents_own_probe_counts_a_link_as_cut_after_400_ms() {
        let heard = |last_io: i64, ms: u64| {
            let mut l = replica(true, last_io);
            l.status.as_mut().unwrap()["master_heard_ms_ago"] = json!(ms);
            l
        };
        assert!(link_up(&heard(0, 150)));
        assert!(!link_up(&heard(0, 400)), "the probe sees silence before Redis's whole seconds do");
        assert_eq!(silent_ms(&heard(0, 650)), Some(650));
        assert!(link_up(&heard(3, 50)), "a master that answers the probe is heard");
    }
}
