//! Trove's root calls for Redis: `requirepass` (the ACL default user's password), persisted, with a replica's `masterauth` following its master.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::admin::{Admin, Target, TlsClient};
use super::manager::RedisManager;
use super::state::{ReplicaOf, State};
use crate::datastore::{Error, Result};

/// The longest root password accepted, in bytes.
pub const MAX_LEN: usize = 256;
/// The length of a generated password (Trove's `[redis] default_password_length`).
pub const GENERATED_LEN: usize = 36;

/// Root as the state file keeps it: the password the root layer renders as `requirepass`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub password: String,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Root { password: <redacted> }")
    }
}

/// Why `password` cannot be a root password (the reason never repeats it), or None.
pub fn check_password(password: &str) -> Option<String> {
    if password.is_empty() {
        return Some("a non-empty string (null generates one)".into());
    }
    if password.len() > MAX_LEN {
        return Some(format!("at most {MAX_LEN} bytes long"));
    }
    if password.chars().any(char::is_control) {
        return Some("free of control characters (newlines, tabs, NUL, ...)".into());
    }
    None
}

/// A random password of `GENERATED_LEN` letters and digits from the OS's generator.
pub fn generate() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::rngs::OsRng.sample_iter(&Alphanumeric).take(GENERATED_LEN).map(char::from).collect()
}

/// Trove's serialized Redis root user (`trove.common.db.redis.models.RedisRootUser`): Redis has
/// one password and no user name, which Trove shows as `-`.
pub fn root_user(password: &str) -> Value {
    json!({"_name": "-", "_password": password})
}

/// Whether root was enabled (and not disabled since).
pub async fn is_enabled(manager: &RedisManager) -> bool {
    manager.snapshot_state().await.root.is_some()
}

/// The password clients give now: root's, else the configuration's; None without one.
pub async fn password(manager: &RedisManager) -> Option<String> {
    manager.snapshot_state().await.requirepass()
}

/// `enable_root[_with_password]`: sets `requirepass` at runtime, then persists it (redis.conf and
/// the state file); the agent's own connections follow. On a replica, `masterauth` becomes the
/// same password when its master accepts it (Trove enables root on the master first), so the
/// link keeps authenticating. Returns the password. On failure nothing is changed.
pub async fn enable(manager: &RedisManager, password: Option<String>) -> Result<String> {
    let password = password.unwrap_or_else(generate);
    if let Some(why) = check_password(&password) {
        return Err(Error::Refused(format!("the root password must be {why}")));
    }
    let state = ready(manager).await?;
    apply(manager, &state, Some(password.clone())).await?;
    tracing::info!("root enabled: requirepass set and persisted");
    Ok(password)
}

/// `disable_root`: back to the password the configuration names without root (normally none).
/// On a replica, `masterauth` follows when its master accepts that. Idempotent.
pub async fn disable(manager: &RedisManager) -> Result<()> {
    let state = ready(manager).await?;
    apply(manager, &state, None).await?;
    tracing::info!("root disabled");
    Ok(())
}

/// On a replica attached to a master with root: takes the master's root password as its own
/// (`requirepass`, persisted as the root layer), unless it has it already. Nothing is logged but
/// the fact.
pub async fn follow_master(manager: &RedisManager, password: &str) -> Result<()> {
    if let Some(why) = check_password(password) {
        return Err(Error::Refused(format!("the master's root password must be {why}")));
    }
    let state = ready(manager).await?;
    if state.root.as_ref().is_some_and(|r| r.password == password) {
        return Ok(());
    }
    apply(manager, &state, Some(password.to_owned())).await?;
    tracing::info!("root follows the master: requirepass set and persisted");
    Ok(())
}

/// The current state, refusing an unprepared guest or a server whose ACL file owns the default user.
async fn ready(manager: &RedisManager) -> Result<State> {
    let state = manager.snapshot_state().await;
    if state.base.is_none() {
        return Err(Error::Refused("redis has no configuration yet: the instance must be prepared first".into()));
    }
    if manager.major() >= 6 {
        let aclfile = manager.admin().await?.config_get("aclfile").await?.unwrap_or_default();
        if !aclfile.is_empty() {
            return Err(Error::Refused(
                "root is not supported with an aclfile: the ACL file defines the default user's passwords; nothing was changed".into(),
            ));
        }
    }
    Ok(state)
}

/// Sets root to `root` (None: off) at runtime and in the files, rolling the runtime back when
/// persisting fails.
async fn apply(manager: &RedisManager, state: &State, root: Option<String>) -> Result<()> {
    let mut next = state.clone();
    next.root = root.map(|password| Root { password });
    let new_pass = next.requirepass();
    let old_pass = state.requirepass();
    let follow = masterauth_to_follow(manager, state.replica.as_ref(), new_pass.as_deref()).await;
    let mut admin = manager.admin().await?;
    admin.config_set("requirepass", new_pass.as_deref().unwrap_or("")).await?;
    let persisted = async {
        if let Some((replica, auth)) = &follow {
            admin.config_set("masterauth", auth.as_deref().unwrap_or("")).await?;
            tracing::info!(master = %format!("{}:{}", replica.host, replica.port), "masterauth follows the master's password");
        }
        let root = next.root.clone();
        let follow = follow.clone();
        manager
            .update(move |s| {
                s.root = root;
                if let (Some((followed, auth)), Some(r)) = (follow, s.replica.as_mut()) {
                    // Only if the replica still follows the master that was asked.
                    if r.host == followed.host && r.port == followed.port {
                        r.masterauth = auth;
                    }
                }
            })
            .await
    }
    .await;
    if let Err(error) = persisted {
        let rollback = async {
            admin.config_set("requirepass", old_pass.as_deref().unwrap_or("")).await?;
            if let Some((replica, _)) = &follow {
                admin.config_set("masterauth", replica.masterauth.as_deref().unwrap_or("")).await?;
            }
            Ok::<_, Error>(())
        };
        if let Err(e) = rollback.await {
            tracing::error!(error = %e, "could not restore the previous password at runtime");
        }
        return Err(error);
    }
    Ok(())
}

/// On a replica authenticating with the default user: the master this replica follows, and the
/// `masterauth` to use, when the master accepts `password` and it differs from the current one.
async fn masterauth_to_follow(manager: &RedisManager, replica: Option<&ReplicaOf>, password: Option<&str>) -> Option<(ReplicaOf, Option<String>)> {
    let r = replica?;
    if r.masteruser.is_some() || r.masterauth.as_deref() == password {
        return None;
    }
    let tls = if r.tls {
        Some(TlsClient { files: manager.settings.tls_files()?, verify_hostname: manager.settings.tls_verify_hostname })
    } else {
        None
    };
    let target = Target {
        host: r.host.clone(),
        port: r.port,
        password: password.map(|p| secrecy::SecretString::from(p.to_owned())),
        username: None,
        config_command: "CONFIG".into(),
        timeout: Duration::from_secs(3),
        tls,
    };
    let accepted = async { Admin::connect(&target).await?.ping().await };
    match tokio::time::timeout(Duration::from_secs(5), accepted).await {
        Ok(Ok(())) => Some((r.clone(), password.map(str::to_owned))),
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5s".into(),
            };
            tracing::info!(master = %format!("{}:{}", r.host, r.port), %reason, "the master does not take this password (yet); masterauth unchanged");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_checked_without_being_repeated() {
        for ok in ["a", "with space", "quo\"te 'x' #h \\", "ünïcödé 密码", &"x".repeat(MAX_LEN)] {
            assert_eq!(check_password(ok), None, "{ok:?}");
        }
        for (bad, words) in [("", "non-empty"), ("new\nline", "control"), ("nul\0", "control"), ("tab\t", "control"), ("del\u{7f}", "control")] {
            let why = check_password(bad).unwrap();
            assert!(why.contains(words), "{bad:?}: {why}");
        }
        let long = "s3cr3t".repeat(MAX_LEN);
        let why = check_password(&long).unwrap();
        assert!(why.contains("256") && !why.contains("s3cr3t"), "{why}");
    }

    #[test]
    fn generated_passwords_are_long_random_and_valid() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), GENERATED_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_eq!(check_password(&a), None);
    }

    #[test]
    fn trove_reads_the_root_user_it_expects() {
        // Trove's RedisRootCreatedView reads `name` and `password` from the deserialized dict.
        assert_eq!(root_user("pw"), json!({"_name": "-", "_password": "pw"}));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let r = Root { password: "hunter2".into() };
        assert!(!format!("{r:?}").contains("hunter2"));
        let s = State { root: Some(r), ..Default::default() };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
