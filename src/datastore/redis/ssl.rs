//! Trove's client TLS calls (`ssl_show`, `ssl_action`, `ssl_rollback`): modes basic, enforced and mtls on Redis's tls-port.
//!
//! The certificate material comes in `container` (Trove's API reads it from a Barbican PKCS#12
//! bundle: `private_key`, `certificate`, `ca`, PEM). Each change writes a new generation of the
//! three files (0600) beside the state file, sets Redis's TLS settings at runtime in one atomic
//! `CONFIG SET` (Redis loads and checks the files; on refusal nothing changes), then persists the
//! mode (redis.conf and the state file). `enforced` and `mtls` close the plaintext port
//! (`port 0`): established connections, replication links among them, stay up; other plaintext
//! clients are disconnected. Trove changes the master first, then each replica: a replica moves
//! its own link to its master's tls-port (`tls-replication yes`) when it becomes enforced.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::admin::Admin;
use super::manager::RedisManager;
use super::state::ReplicaOf;
use crate::config::TlsFiles;
use crate::datastore::{Error, Result};

/// Trove's modes (`trove.common.ssl`): basic offers TLS beside plaintext, enforced is TLS only,
/// mtls is TLS only with client certificates required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Basic,
    Enforced,
    Mtls,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "basic" => Some(Mode::Basic),
            "enforced" => Some(Mode::Enforced),
            "mtls" => Some(Mode::Mtls),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Basic => "basic",
            Mode::Enforced => "enforced",
            Mode::Mtls => "mtls",
        }
    }

    /// Redis's `tls-auth-clients` for the mode.
    pub fn auth_clients(self) -> &'static str {
        if self == Mode::Mtls {
            "yes"
        } else {
            "no"
        }
    }

    /// Whether the plaintext port is closed.
    pub fn tls_only(self) -> bool {
        self != Mode::Basic
    }
}

/// TLS for clients as the state file keeps it: the mode and the generation of the files in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssl {
    pub mode: Mode,
    pub generation: u64,
}

/// What `ssl_rollback` returns to: the setting before the last `ssl_action` (None: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub previous: Option<Ssl>,
}

/// The master's two ports, recorded on a replica at attach, so that its link can move to the
/// TLS port when this guest becomes enforced (and back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterPorts {
    pub plain: u16,
    pub tls: u16,
}

/// The three PEM texts of a certificate container.
pub struct Material {
    pub private_key: String,
    pub certificate: String,
    pub ca: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material { private_key: <redacted>, .. }")
    }
}

/// Reads and checks Trove's container (`{"private_key", "certificate", "ca"}`). The reason never
/// quotes the key.
pub fn material(container: &Map<String, Value>) -> std::result::Result<Material, String> {
    let get = |key: &str| match container.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(format!("has no '{key}' (PEM text)")),
        Some(_) => Err(format!("'{key}' must be PEM text")),
    };
    let m = Material { private_key: get("private_key")?, certificate: get("certificate")?, ca: get("ca")? };
    if !m.private_key.contains("-----BEGIN") || !m.private_key.contains("PRIVATE KEY-----") {
        return Err("'private_key' is not a PEM private key".into());
    }
    details(&m.certificate).map_err(|e| format!("'certificate': {e}"))?;
    details(&m.ca).map_err(|e| format!("'ca': {e}"))?;
    Ok(m)
}

/// Trove's certificate details (`TroveSSL.certificate_details`): `cn`, `expire_at` (as oslo
/// serializes a datetime), `san` (OpenSSL's spelling, e.g. `DNS:a`, `IP Address:10.0.0.1`; null
/// without one).
pub fn details(pem: &str) -> std::result::Result<Value, String> {
    use x509_parser::prelude::*;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not a PEM certificate ({e})"))?;
    let cert = pem.parse_x509().map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_owned);
    let not_after = cert.validity().not_after.to_datetime();
    let expire_at = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000000",
        not_after.year(),
        u8::from(not_after.month()),
        not_after.day(),
        not_after.hour(),
        not_after.minute(),
        not_after.second()
    );
    let mut san = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => san.push(format!("DNS:{d}")),
                GeneralName::IPAddress(b) if b.len() == 4 => san.push(format!("IP Address:{}", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    let a: [u8; 16] = (*b).try_into().unwrap_or([0; 16]);
                    san.push(format!("IP Address:{}", std::net::Ipv6Addr::from(a)));
                }
                GeneralName::RFC822Name(m) => san.push(format!("email:{m}")),
                GeneralName::URI(u) => san.push(format!("URI:{u}")),
                _ => {}
            }
        }
    }
    Ok(json!({"cn": cn, "expire_at": expire_at, "san": if san.is_empty() { Value::Null } else { json!(san) }}))
}

/// The directory of the certificate files: beside the state file.
pub fn dir(manager: &RedisManager) -> PathBuf {
    dir_of(&manager.settings)
}

pub fn dir_of(settings: &crate::config::RedisSettings) -> PathBuf {
    let mut p = settings.state_path().into_os_string();
    p.push(".ssl");
    PathBuf::from(p)
}

/// The files of generation `generation`.
pub fn files(dir: &Path, generation: u64) -> TlsFiles {
    TlsFiles {
        cert_file: dir.join(format!("{generation}.crt")),
        key_file: dir.join(format!("{generation}.key")),
        ca_cert_file: dir.join(format!("{generation}.ca.crt")),
    }
}

/// `ssl_show`: `{"status": "off"}`, or `{"status": "on", "mode", "certificate": {cn, expire_at, san, payload}}`.
pub async fn show(manager: &RedisManager) -> Result<Value> {
    let Some(ssl) = manager.snapshot_state().await.ssl else { return Ok(json!({"status": "off"})) };
    let f = files(&dir(manager), ssl.generation);
    let pem = std::fs::read_to_string(&f.cert_file).map_err(|e| Error::io(&f.cert_file, e))?;
    let mut cert = details(&pem).map_err(|e| Error::io(&f.cert_file, e))?;
    cert["payload"] = json!(pem);
    Ok(json!({"status": "on", "mode": ssl.mode.as_str(), "certificate": cert}))
}

/// `ssl_action`: enable (`mode` with the container's material) or disable. Returns Trove's
/// `{"restart_required": false}`. On refusal nothing is changed.
pub async fn action(manager: &RedisManager, enable: Option<(Mode, Material)>) -> Result<Value> {
    let state = manager.snapshot_state().await;
    if state.base.is_none() {
        return Err(Error::Refused("redis has no configuration yet: the instance must be prepared first".into()));
    }
    if manager.settings.tls_port == 0 {
        return Err(Error::Refused("TLS for clients needs a TLS port: set [redis] tls_port; nothing was changed".into()));
    }
    let current = state.ssl;
    let next = match enable {
        Some((mode, m)) => {
            let generation = current.map_or(1, |s| s.generation + 1).max(state.ssl_saved.and_then(|s| s.previous).map_or(0, |p| p.generation + 1));
            write_files(&dir(manager), generation, &m)?;
            Some(Ssl { mode, generation })
        }
        None => None,
    };
    if let Err(e) = apply(manager, current, next).await {
        if let Some(n) = next {
            remove_generation(&dir(manager), n.generation);
        }
        return Err(e);
    }
    manager.update(|s| s.ssl_saved = Some(Saved { previous: current })).await?;
    prune(manager).await;
    tracing::info!(mode = next.map_or("off", |s| s.mode.as_str()), "client TLS changed");
    Ok(json!({"restart_required": false}))
}

/// What a master with client TLS hands its replicas, as Trove's guest does in the replication
/// snapshot: `(ssl_mode, cert_container)` with the three PEM texts in use (the key among them:
/// the reply is the taskmanager's, sealed when secure RPC is on, and never logged). None: TLS off.
pub async fn replica_container(manager: &RedisManager) -> Result<Option<(Mode, Map<String, Value>)>> {
    let Some(ssl) = manager.snapshot_state().await.ssl else { return Ok(None) };
    let f = files(&dir(manager), ssl.generation);
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
    let mut c = Map::new();
    c.insert("private_key".into(), json!(read(&f.key_file)?));
    c.insert("certificate".into(), json!(read(&f.cert_file)?));
    c.insert("ca".into(), json!(read(&f.ca_cert_file)?));
    Ok(Some((ssl.mode, c)))
}

/// On a replica given its master's `ssl_mode` and `cert_container` (prepare's snapshot,
/// `attach_replica`'s replica_info): client TLS in that mode with that material, as Trove's
/// guest enables it on a replica, so the replica can reach a TLS-only master. Nothing changes
/// when it has them already. Returns whether it changed.
pub async fn follow_master(manager: &RedisManager, mode: Mode, m: Material) -> Result<bool> {
    if let Some(cur) = manager.snapshot_state().await.ssl {
        let f = files(&dir(manager), cur.generation);
        let same = |p: &Path, want: &str| std::fs::read_to_string(p).is_ok_and(|have| have == want);
        if cur.mode == mode && same(&f.key_file, &m.private_key) && same(&f.cert_file, &m.certificate) && same(&f.ca_cert_file, &m.ca) {
            return Ok(false);
        }
    }
    action(manager, Some((mode, m))).await.map_err(|e| match e {
        Error::Refused(why) => Error::Refused(format!("the master serves clients over TLS ({}), and this replica cannot follow: {why}", mode.as_str())),
        other => other,
    })?;
    Ok(true)
}

/// `ssl_rollback`: back to the setting before the last `ssl_action`. Returns Trove's
/// `{"status", "mode", "restart_required"}`.
pub async fn rollback(manager: &RedisManager) -> Result<Value> {
    let state = manager.snapshot_state().await;
    let Some(saved) = state.ssl_saved else {
        return Err(Error::Refused("no ssl_action to roll back; nothing was changed".into()));
    };
    apply(manager, state.ssl, saved.previous).await?;
    manager.update(|s| s.ssl_saved = None).await?;
    prune(manager).await;
    tracing::info!(mode = saved.previous.map_or("off", |s| s.mode.as_str()), "client TLS rolled back");
    Ok(json!({
        "status": if saved.previous.is_some() { "on" } else { "off" },
        "mode": saved.previous.map(|s| s.mode.as_str()),
        "restart_required": false,
    }))
}

/// Writes generation `generation`'s three files, each 0600.
fn write_files(dir: &Path, generation: u64, m: &Material) -> Result<()> {
    super::runtime::ensure_dirs(&[dir.to_path_buf()], super::manager::REDIS_USER).map_err(|e| Error::io(dir, e))?;
    let f = files(dir, generation);
    let written = super::state::write_private(&f.key_file, m.private_key.as_bytes())
        .and_then(|_| super::state::write_private(&f.cert_file, m.certificate.as_bytes()))
        .and_then(|_| super::state::write_private(&f.ca_cert_file, m.ca.as_bytes()));
    if written.is_err() {
        remove_generation(dir, generation);
    }
    // Redis runs as its own user under systemd: it must read the files.
    for p in [&f.key_file, &f.cert_file, &f.ca_cert_file] {
        let _ = super::runtime::give_to(p, super::manager::REDIS_USER);
    }
    written
}

fn remove_generation(dir: &Path, generation: u64) {
    let f = files(dir, generation);
    for p in [f.key_file, f.cert_file, f.ca_cert_file] {
        let _ = std::fs::remove_file(p);
    }
}

/// Removes the files of every generation neither in use nor kept for a rollback.
async fn prune(manager: &RedisManager) {
    let state = manager.snapshot_state().await;
    let keep: Vec<u64> = [state.ssl, state.ssl_saved.and_then(|s| s.previous)].into_iter().flatten().map(|s| s.generation).collect();
    let d = dir(manager);
    let Ok(entries) = std::fs::read_dir(&d) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let generation = name.split('.').next().and_then(|g| g.parse::<u64>().ok());
        if generation.is_some_and(|g| !keep.contains(&g)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Moves Redis from `from` to `to` at runtime, then persists `to`. The TLS listener is set up
/// before the plaintext port closes, and the plaintext port opens before the TLS listener goes.
async fn apply(manager: &RedisManager, from: Option<Ssl>, to: Option<Ssl>) -> Result<()> {
    let mut admin = manager.admin().await?;
    let s = &manager.settings;
    let d = dir(manager);
    let plain = s.port.to_string();
    match to {
        Some(ssl) => {
            let f = files(&d, ssl.generation);
            let auth = ssl.mode.auth_clients();
            let (cert, key, ca) = (f.cert_file.display().to_string(), f.key_file.display().to_string(), f.ca_cert_file.display().to_string());
            let tls_port = s.tls_port.to_string();
            let mut pairs = vec![("tls-cert-file", cert.as_str()), ("tls-key-file", key.as_str()), ("tls-ca-cert-file", ca.as_str()), ("tls-auth-clients", auth), ("tls-port", tls_port.as_str())];
            if !ssl.mode.tls_only() {
                pairs.push(("port", plain.as_str()));
            }
            admin.config_set_many(&pairs).await?;
        }
        None => admin.config_set("port", &plain).await?,
    }
    // The replica's link follows: to the master's TLS port when this guest is TLS only, back to
    // its plain port otherwise (unless TLS replication is configured anyway).
    let replica = manager.snapshot_state().await.replica;
    let moved = match replica.as_ref() {
        Some(r) => relink(&mut admin, r, to.is_some_and(|t| t.mode.tls_only())).await?,
        None => None,
    };
    let persisted = manager
        .update(|st| {
            st.ssl = to;
            if let Some(r) = moved.clone() {
                st.replica = Some(r);
            }
        })
        .await;
    if let Err(e) = persisted {
        // Put the runtime back the way the files still describe it.
        let _ = restore_runtime(manager, &mut admin, from).await;
        return Err(e);
    }
    if to.is_some_and(|t| t.mode.tls_only()) {
        admin.config_set("port", "0").await?;
        let killed = kill_plain_clients(&mut admin, s.port).await?;
        tracing::info!(killed, "plaintext port closed");
    } else if to.is_none() {
        match s.tls_files() {
            // The configured listener (replication over TLS) stays.
            Some(f) => {
                let (cert, key, ca) = (f.cert_file.display().to_string(), f.key_file.display().to_string(), f.ca_cert_file.display().to_string());
                admin
                    .config_set_many(&[("tls-cert-file", &cert), ("tls-key-file", &key), ("tls-ca-cert-file", &ca), ("tls-auth-clients", s.tls_auth_clients.as_str())])
                    .await?
            }
            None => admin.config_set("tls-port", "0").await?,
        }
    }
    Ok(())
}

/// Best effort: the runtime settings of `from`, after a failed persist.
async fn restore_runtime(manager: &RedisManager, admin: &mut Admin, from: Option<Ssl>) -> Result<()> {
    let s = &manager.settings;
    match from {
        Some(ssl) => {
            let f = files(&dir(manager), ssl.generation);
            let (cert, key, ca) = (f.cert_file.display().to_string(), f.key_file.display().to_string(), f.ca_cert_file.display().to_string());
            let auth = ssl.mode.auth_clients();
            admin.config_set_many(&[("tls-cert-file", &cert), ("tls-key-file", &key), ("tls-ca-cert-file", &ca), ("tls-auth-clients", auth)]).await
        }
        None if s.tls_files().is_none() => admin.config_set("tls-port", "0").await,
        None => Ok(()),
    }
}

/// On a replica: the link moved to the master's TLS port (`tls`) or its plain one. Returns the
/// new replica setting, None when the link stays as it is.
async fn relink(admin: &mut Admin, r: &ReplicaOf, tls: bool) -> Result<Option<ReplicaOf>> {
    let Some(ports) = r.master_ports else {
        if tls && !r.tls {
            return Err(Error::Refused(format!(
                "this replica does not know its master's TLS port (attached before it was recorded): re-attach it, then retry; nothing was changed at {}:{}",
                r.host, r.port
            )));
        }
        return Ok(None);
    };
    let port = if tls { ports.tls } else { ports.plain };
    if r.tls == tls && r.port == port {
        return Ok(None);
    }
    admin.config_set("tls-replication", if tls { "yes" } else { "no" }).await?;
    admin.replicaof(&r.host, port).await?;
    Ok(Some(ReplicaOf { port, tls, ..r.clone() }))
}

/// Closes the plaintext port's remaining normal clients (replication links are not normal clients). Returns how many.
async fn kill_plain_clients(admin: &mut Admin, port: u16) -> Result<u64> {
    let list = admin.client_list_normal().await?;
    let suffix = format!(":{port}");
    let mut killed = 0;
    for line in list.lines() {
        let field = |k: &str| line.split(' ').find_map(|f| f.strip_prefix(k).map(str::to_owned));
        let (Some(id), Some(laddr)) = (field("id="), field("laddr=")) else { continue };
        if laddr.ends_with(&suffix) && admin.client_kill_id(&id).await.unwrap_or(false) {
            killed += 1;
        }
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_trove_names() {
        for m in ["basic", "enforced", "mtls"] {
            assert_eq!(Mode::parse(m).unwrap().as_str(), m);
        }
        assert!(Mode::parse("mutual").is_none() && Mode::parse("Basic").is_none());
        assert!(!Mode::Basic.tls_only() && Mode::Enforced.tls_only() && Mode::Mtls.tls_only());
    }

    #[test]
    fn material_needs_all_three_and_never_quotes_the_key() {
        let c = |k: &str, v: Value| {
            let mut m = Map::new();
            m.insert("private_key".into(), json!("-----BEGIN PRIVATE KEY-----\nsecretkeybytes\n-----END PRIVATE KEY-----\n"));
            m.insert("certificate".into(), json!("x"));
            m.insert("ca".into(), json!("y"));
            m.insert(k.into(), v);
            m
        };
        let e = material(&c("ca", Value::Null)).unwrap_err();
        assert!(e.contains("no 'ca'") && !e.contains("secretkeybytes"), "{e}");
        let mut m = c("x", json!(1));
        m.remove("certificate");
        assert!(material(&m).unwrap_err().contains("no 'certificate'"));
        assert!(material(&c("private_key", json!("plain secretkeybytes"))).unwrap_err().contains("not a PEM private key"));
        assert!(!material(&c("private_key", json!("plain secretkeybytes"))).unwrap_err().contains("secretkeybytes"));
        assert!(material(&c("ca", json!(5))).is_err());
    }

    #[test]
    fn details_refuse_garbage() {
        assert!(details("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(details("hello").is_err());
    }

    #[test]
    fn files_are_per_generation() {
        let f = files(Path::new("/s.ssl"), 3);
        assert_eq!(f.key_file, Path::new("/s.ssl/3.key"));
        assert_eq!(f.cert_file, Path::new("/s.ssl/3.crt"));
        assert_eq!(f.ca_cert_file, Path::new("/s.ssl/3.ca.crt"));
    }
}
