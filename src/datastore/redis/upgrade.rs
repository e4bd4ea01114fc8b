//! Datastore-version upgrade and rebuild: another server binary on the same data and configuration.
//!
//! The image carries the servers (`[redis.servers]`: Trove datastore version -> binary). An
//! upgrade checks the target first (known version, the binary runs, a supported server, no
//! downgrade, the configuration accepted by the new binary), then pauses writes, saves the RDB,
//! stops Redis, switches the binary (kept in the state file) and starts it; a failed start rolls
//! back to the old binary, which serves again. A rebuild starts the chosen server on the data
//! already on disk with the configuration Trove sends.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::manager::RedisManager;
use super::server::Server;
use super::state::ServerChoice;
use crate::datastore::{Error, Result};

/// The RDB format a server writes; a server reads its own and older formats (Valkey 9 also
/// reads the Redis formats up to 11, the last before the two diverged).
pub fn rdb_version(s: &Server) -> u32 {
    match (s.valkey, s.version) {
        (false, v) if v >= (7, 4, 0) => 12,
        (false, v) if v >= (7, 2, 0) => 11,
        (false, v) if v >= (7, 0, 0) => 10,
        (false, _) => 9,
        (true, v) if v >= (9, 0, 0) => 80,
        (true, _) => 11,
    }
}

/// Why `to` may not replace `from` on the same data, if it may not: a downgrade within Redis or
/// within Valkey, or a server that cannot read the RDB format `from` writes.
pub fn refuse_switch(from: &Server, to: &Server) -> Option<String> {
    if from.valkey == to.valkey && to.version < from.version {
        return Some(format!("{from} -> {to} is a downgrade, which is refused"));
    }
    let (written, read) = (rdb_version(from), rdb_version(to));
    // Redis 7.4's format 12 and Valkey 9's 80 are each unknown to the other family.
    let foreign = (written == 80 && !to.valkey) || (written == 12 && to.valkey);
    let readable = written <= read && !foreign;
    (!readable).then(|| format!("{to} cannot read the RDB format {written} that {from} writes"))
}

/// The server a version name maps to, checked: known, runs, supported.
fn resolve(manager: &RedisManager, version: &str) -> Result<(String, Server)> {
    let servers = &manager.settings.servers;
    let binary = servers.get(version).ok_or_else(|| {
        let known = if servers.is_empty() { "none ([redis.servers] is empty)".to_owned() } else { servers.keys().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ") };
        Error::Refused(format!("unknown datastore version '{version}': this image serves {known}"))
    })?;
    let server = Server::of_binary(binary).ok_or_else(|| Error::Refused(format!("the server of datastore version '{version}' ({binary}) does not run (--version)")))?;
    if let Some(why) = server.unsupported() {
        return Err(Error::Refused(format!("datastore version '{version}': {why}")));
    }
    Ok((binary.clone(), server))
}

/// The server running now (INFO), else the one the current binary says it is.
async fn current_server(manager: &RedisManager) -> Option<Server> {
    let running = async { manager.admin().await?.info("server").await }.await.ok().and_then(|i| i.server());
    running.or_else(|| Server::of_binary(&manager.binary()))
}

/// `pre_upgrade`'s answer (Trove hands it back inside `upgrade_info`): what serves now.
pub async fn pre_upgrade(manager: &RedisManager) -> Value {
    let state = manager.snapshot_state().await;
    json!({
        "from_version": state.server.map(|c| c.version),
        "from_server": current_server(manager).await.map(|s| s.to_string()),
    })
}

/// What a checked upgrade will do.
struct Plan {
    choice: ServerChoice,
    from: Server,
    to: Server,
}

/// Every check of an upgrade to `version`; changes nothing.
async fn plan(manager: &RedisManager, version: &str) -> Result<Plan> {
    if !manager.supervised() {
        return Err(Error::NotSupported("upgrade (it switches the server binary of a redis.service = supervised guest)".into()));
    }
    if !manager.prepared().await {
        return Err(Error::Refused("redis has no configuration yet: the instance must be prepared first".into()));
    }
    let (binary, to) = resolve(manager, version)?;
    let from = current_server(manager).await.ok_or_else(|| Error::Refused(format!("the current server ({}) cannot be identified", manager.binary())))?;
    if let Some(why) = refuse_switch(&from, &to) {
        return Err(Error::Refused(format!("upgrade to datastore version '{version}' refused: {why}; nothing was changed")));
    }
    let state = manager.snapshot_state().await;
    manager.check_with(&state, &binary).await.map_err(|e| match e {
        Error::InvalidConfig { key, reason } => Error::InvalidConfig { key, reason: format!("{to} ({reason})") },
        other => other,
    })?;
    Ok(Plan { choice: ServerChoice { version: version.to_owned(), binary }, from, to })
}

/// Writes are paused and everything is saved to the RDB, so that the stop loses nothing.
async fn pause_and_save(manager: &RedisManager, from: &Server) -> Result<()> {
    let mut admin = manager.admin().await?;
    let hold_ms = (manager.settings.stop_timeout + manager.settings.start_timeout + 60) * 1000;
    admin.pause_writes(hold_ms, from.has_pause_write()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(manager.settings.stop_timeout.max(10));
    loop {
        // SAVE waits for a background save (a replica's sync) to finish first.
        match admin.save().await {
            Ok(()) => return Ok(()),
            Err(Error::Command { reason, .. }) if reason.contains("in progress") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                if from.has_pause_write() {
                    let _ = admin.unpause().await;
                }
                return Err(e);
            }
        }
    }
}

/// `upgrade`: switches to the server of `version` on the same data; returns what it did.
pub async fn upgrade(manager: &RedisManager, version: &str) -> Result<String> {
    let plan = plan(manager, version).await?;
    let previous = manager.snapshot_state().await.server;
    let old_binary = manager.binary();
    if plan.choice.binary == old_binary {
        manager.update(|s| s.server = Some(plan.choice.clone())).await?;
        return Ok(format!("datastore version '{version}' is already served by {}", plan.to));
    }
    tracing::info!(from = %plan.from, to = %plan.to, version, "upgrading: pausing writes, saving, restarting on the new server");
    pause_and_save(manager, &plan.from).await?;
    manager.stop().await?;
    manager.switch_binary(&plan.choice.binary);
    let switched = async {
        manager.update(|s| s.server = Some(plan.choice.clone())).await?;
        manager.start().await
    }
    .await;
    let Err(error) = switched else {
        tracing::info!(server = %plan.to, version, "upgrade finished");
        return Ok(format!("{} -> {}", plan.from, plan.to));
    };
    tracing::error!(%error, "the new server did not start; rolling back");
    manager.switch_binary(&old_binary);
    let back = async {
        manager.update(|s| s.server = previous).await?;
        manager.start().await
    }
    .await;
    Err(Error::Service(match back {
        Ok(()) => format!("upgrade to datastore version '{version}' ({}) failed: {error}; rolled back to {}, which serves again", plan.to, plan.from),
        Err(e) => format!("upgrade to datastore version '{version}' ({}) failed: {error}; the rollback to {} failed too: {e}", plan.to, plan.from),
    }))
}

/// `rebuild`: the new image's agent starts Redis on the data already on disk, with Trove's
/// configuration, on the server of `ds_version` (`[redis.servers]`; `redis.binary` when the
/// table is empty). The data is never touched; replication is re-established by Trove after.
/// Refused while the data volume is not mounted (the agent mounts it at start-up).
pub async fn rebuild(manager: &RedisManager, ds_version: &str, config_contents: Option<String>, overrides: Map<String, Value>) -> Result<()> {
    if let Some(why) = manager.volumes().boot_volume_missing().await? {
        return Err(Error::Refused(why));
    }
    let choice = if manager.settings.servers.is_empty() {
        None
    } else {
        let (binary, _) = resolve(manager, ds_version)?;
        if binary != manager.binary() && !manager.supervised() {
            return Err(Error::NotSupported(format!("rebuild on another server binary ({binary}) (redis.service = supervised only)")));
        }
        Some(ServerChoice { version: ds_version.to_owned(), binary })
    };
    let (previous, old_binary) = (manager.snapshot_state().await.server, manager.binary());
    if let Some(c) = &choice {
        manager.switch_binary(&c.binary);
    }
    let result = manager.prepare(config_contents, overrides, None).await;
    match (&result, choice) {
        (Ok(()), Some(c)) => manager.update(|s| s.server = Some(c)).await,
        (Err(_), Some(_)) => {
            manager.switch_binary(&old_binary);
            manager.update(|s| s.server = previous).await?;
            result
        }
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(v: (u32, u32, u32)) -> Server {
        Server { valkey: false, version: v }
    }

    fn valkey(v: (u32, u32, u32)) -> Server {
        Server { valkey: true, version: v }
    }

    #[test]
    fn upgrades_pass_and_downgrades_are_refused() {
        for (from, to) in [
            (redis((6, 2, 14)), redis((7, 4, 1))),
            (redis((7, 0, 15)), valkey((9, 1, 2))),
            (redis((7, 2, 4)), valkey((8, 1, 8))),
            (valkey((8, 1, 8)), valkey((9, 1, 2))),
            (redis((6, 2, 14)), redis((6, 2, 14))),
        ] {
            assert_eq!(refuse_switch(&from, &to), None, "{from} -> {to}");
        }
        for (from, to, why) in [
            (redis((7, 4, 1)), redis((6, 2, 14)), "downgrade"),
            (valkey((9, 1, 2)), valkey((8, 1, 8)), "downgrade"),
            (valkey((9, 1, 2)), redis((7, 4, 1)), "cannot read the RDB format 80"),
            (redis((7, 4, 1)), valkey((9, 1, 2)), "cannot read the RDB format 12"),
            (redis((7, 0, 15)), redis((6, 2, 5)), "downgrade"),
        ] {
            let refused = refuse_switch(&from, &to).unwrap_or_default();
            assert!(refused.contains(why), "{from} -> {to}: {refused:?}");
        }
    }
}
