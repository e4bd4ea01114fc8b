//! A replica's own probe of its master: a PING every 100 ms, so silence is measured in tenths of a second.
//!
//! Redis reports `master_last_io_seconds_ago` in whole seconds and hears a live master only at its
//! `repl-ping-replica-period` (1 s at least), so a cut link shows only after ~3 s. The agent of a
//! replica PINGs the master it follows, over its own connection, and reports how long ago the
//! master last answered (`master_heard_ms_ago` in the status); the watcher counts a link as cut
//! from that moment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attach::connect_master;
use crate::config::ReplicationSettings;
use crate::datastore::redis::admin::{Admin, TlsClient};
use crate::datastore::redis::RedisManager;
use crate::replication::MasterRef;

/// Time between PINGs.
pub const PROBE_PERIOD: Duration = Duration::from_millis(100);
/// How long a PING (or the connection before it) may take before the master counts as unheard.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// When the master this node follows last answered.
#[derive(Default)]
pub struct Heard {
    inner: Mutex<Option<Record>>,
}

struct Record {
    host: String,
    port: u16,
    /// The last PONG, else when probing this master began.
    at: Instant,
}

impl Heard {
    /// Milliseconds since `host:port` last answered, when it is the master being probed.
    pub fn ms_ago(&self, host: &str, port: u16) -> Option<u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|r| r.host == host && r.port == port).map(|r| r.at.elapsed().as_millis() as u64)
    }

    fn target(&self, host: &str, port: u16) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_some_and(|r| r.host == host && r.port == port) {
            return false;
        }
        *g = Some(Record { host: host.into(), port, at: Instant::now() });
        true
    }

    fn answered(&self) {
        if let Some(r) = self.inner.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r.at = Instant::now();
        }
    }

    fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// PINGs the master this node's state says it follows, every `PROBE_PERIOD`, until `cancel`.
pub async fn probe_master(manager: Arc<RedisManager>, settings: ReplicationSettings, tls: Option<TlsClient>, heard: Arc<Heard>, cancel: CancellationToken) {
    let mut link: Option<Admin> = None;
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(of) = manager.snapshot_state().await.replica else {
            heard.clear();
            link = None;
            continue;
        };
        if heard.target(&of.host, of.port) {
            link = None;
        }
        if link.is_none() {
            let master = MasterRef { host: of.host.clone(), port: of.port, requirepass: of.masterauth.clone(), masteruser: of.masteruser.clone(), tls: of.tls, ssl_ports: None, root_password: None };
            // Client TLS (`ssl_action`) may have brought certificates since the agent started.
            let tls = if of.tls { tls.clone().or_else(|| manager.tls_files().map(|files| TlsClient { files, verify_hostname: manager.settings.tls_verify_hostname })) } else { None };
            link = match tokio::time::timeout(PROBE_TIMEOUT, connect_master(&master, &settings, tls)).await {
                Ok(Ok(admin)) => Some(admin),
                _ => continue,
            };
        }
        let Some(admin) = link.as_mut() else { continue };
        match tokio::time::timeout(PROBE_TIMEOUT, admin.ping()).await {
            Ok(Ok(())) => heard.answered(),
            // A LOADING or busy master still answered: it is alive.
            Ok(Err(e)) if e.to_string().contains("LOADING") || e.to_string().contains("BUSY") => heard.answered(),
            _ => link = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heard_counts_from_the_last_answer_of_the_current_master_only() {
        let h = Heard::default();
        assert_eq!(h.ms_ago("a", 1), None);
        assert!(h.target("a", 1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(h.ms_ago("a", 1).is_some_and(|ms| ms >= 60));
        h.answered();
        assert!(h.ms_ago("a", 1).is_some_and(|ms| ms < 60));
        assert_eq!(h.ms_ago("b", 1), None, "another master is not the one probed");
        assert!(!h.target("a", 1), "the same master keeps its record");
        assert!(h.target("b", 2));
        assert!(h.ms_ago("b", 2).is_some_and(|ms| ms < 60), "a new master counts from when probing it began");
        h.clear();
        assert_eq!(h.ms_ago("b", 2), None);
    }
}
