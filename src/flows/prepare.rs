//! `prepare`: what Trove's taskmanager sends a new instance (its payload, API 1.1), then a wait until Redis serves.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::{Error, Taskmanager};

/// What goes into the prepare payload.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// redis.conf contents (Trove: its rendered `config.template`); None: the agent's own base.
    pub config_contents: Option<String>,
    /// The flavor's RAM (Trove's `memory_mb`).
    pub memory_mb: u64,
    /// Configuration-group overrides.
    pub overrides: serde_json::Map<String, Value>,
    /// The datastore version name (Trove's `ds_version`, API 1.1).
    pub ds_version: String,
    /// Prepare a guest whose Redis already serves (this drops its replication settings).
    pub force: bool,
    /// How long to wait for the guest to answer, and then for Redis to serve.
    pub timeout: Duration,
}

/// One prepared guest.
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    pub guest: String,
    pub role: String,
    pub seconds: f64,
}

/// Trove's prepare arguments (`trove.guestagent.api.API.prepare`, version 1.1), as its
/// taskmanager fills them for a Redis instance without a volume, backup or modules.
pub fn payload(opts: &PrepareOptions) -> Value {
    json!({
        "packages": null, "databases": [], "memory_mb": opts.memory_mb, "users": [],
        "device_path": null, "mount_point": "/var/lib/redis", "backup_info": null,
        "config_contents": opts.config_contents, "root_password": null, "overrides": opts.overrides,
        "cluster_config": null, "snapshot": null, "modules": null, "ds_version": opts.ds_version,
    })
}

impl Taskmanager {
    /// Prepares `guest`: waits until its agent answers, refuses one whose Redis already serves
    /// (unless forced), sends Trove's payload and waits until Redis serves. The payload goes as a
    /// call rather than Trove's cast, so that a failure is reported at once.
    pub async fn prepare(&self, guest: &str, opts: &PrepareOptions) -> Result<Prepared, Error> {
        self.inventory.guest(guest).ok_or_else(|| Error::Refused(format!("{guest} is not in the inventory")))?;
        let started = Instant::now();
        let deadline = started + opts.timeout;
        while !self.ping(guest, Duration::from_secs(2)).await {
            if Instant::now() > deadline {
                return Err(Error::Guest { guest: guest.into(), method: "rpc_ping".into(), reason: format!("no answer within {:?}", opts.timeout) });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(role) = self.live(guest).await.role().map(str::to_owned) {
            if !opts.force {
                return Err(Error::Refused(format!("{guest} is already prepared (its Redis serves as {role}); --force prepares it again and drops its replication settings")));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        self.call(guest, "prepare", payload(opts), left).await?;
        let live = self.live(guest).await;
        let role = live.role().map(str::to_owned).ok_or_else(|| Error::Guest {
            guest: guest.into(),
            method: "prepare".into(),
            reason: live.error.unwrap_or_else(|| "prepared, but its Redis does not serve".into()),
        })?;
        Ok(Prepared { guest: guest.into(), role, seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_troves_keys() {
        let opts = PrepareOptions {
            config_contents: Some("port 6379\n".into()),
            memory_mb: 1024,
            overrides: Default::default(),
            ds_version: "7.0".into(),
            force: false,
            timeout: Duration::from_secs(1),
        };
        let p = payload(&opts);
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        // trove/guestagent/api.py, API.prepare: prepare_args.
        let mut trove = ["packages", "databases", "memory_mb", "users", "device_path", "mount_point", "backup_info", "config_contents", "root_password", "overrides", "cluster_config", "snapshot", "modules", "ds_version"];
        trove.sort();
        assert_eq!(keys, trove);
        assert_eq!(p["memory_mb"], 1024);
        assert_eq!(p["config_contents"], "port 6379\n");
    }
}
