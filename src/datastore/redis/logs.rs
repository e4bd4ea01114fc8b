//! Guest logs as Trove shows them (`guest_log_list`, `guest_log_action`): the Redis server's log (USER `general`) and the agent's (SYS `guest`), published to the caller's Swift.
//!
//! Trove's layout (`trove/guestagent/guest_log.py`): objects `<guest id>/redis-<log>/log-<UTC
//! time>` of whole lines, at most `chunk_size` bytes each, with `X-Object-Meta-Lines`, and a
//! metafile `<guest id>/redis-<log>_metafile` (JSON: name, type, file, published size, MD5 of the
//! first line) that says how much is published; a smaller file or another first line means the
//! log was rotated, and the next publish starts over.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::manager::RedisManager;
use crate::config::GuestLogSettings;
use crate::datastore::swift::Swift;
use crate::datastore::{Error, Result};

/// The Redis server's log: a USER log, off until enabled.
pub const REDIS_LOG: &str = "general";
/// The agent's own log: a SYS log, listed when the agent writes to a file.
pub const AGENT_LOG: &str = "guest";
/// Trove's datastore manager name in object names.
const DATASTORE: &str = "redis";

/// The Redis log as the state file keeps it: the `logfile` the `log` layer renders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisLog {
    pub file: PathBuf,
}

/// Who asks (from the request context): the token and where Swift is; admins see every log.
pub struct Caller {
    pub token: Option<SecretString>,
    pub is_admin: bool,
    pub project_id: Option<String>,
    pub service_catalog: Option<Value>,
}

/// `guest_log_action`'s flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Action {
    pub enable: bool,
    pub disable: bool,
    pub publish: bool,
    pub discard: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sys,
    User,
}

struct Def {
    name: &'static str,
    kind: Kind,
    file: PathBuf,
}

/// What the metafile and the file say.
#[derive(Debug, Default)]
struct Details {
    size: u64,
    digest: String,
    published: u64,
    published_digest: Option<String>,
}

impl Details {
    fn rotated(&self) -> bool {
        self.published > 0 && (self.size < self.published || self.published_digest.as_deref() != Some(&self.digest))
    }
}

/// The guest logs of this agent.
pub struct GuestLogs {
    settings: GuestLogSettings,
    guest_id: String,
    agent_log: Option<PathBuf>,
    insecure: bool,
    /// One action at a time (publishes append to the same objects).
    busy: tokio::sync::Mutex<()>,
}

impl GuestLogs {
    pub fn new(settings: GuestLogSettings, guest_id: String, agent_log: Option<PathBuf>, insecure: bool) -> GuestLogs {
        GuestLogs { settings, guest_id, agent_log, insecure, busy: tokio::sync::Mutex::new(()) }
    }

    /// Where the Redis log goes when enabled (Trove's `<dir>/<manager>-<log>.log`).
    pub fn redis_log_file(&self) -> PathBuf {
        self.settings.dir.join(format!("{DATASTORE}-{REDIS_LOG}.log"))
    }

    fn defs(&self) -> Vec<Def> {
        let mut defs = vec![Def { name: REDIS_LOG, kind: Kind::User, file: self.redis_log_file() }];
        if let Some(file) = &self.agent_log {
            defs.push(Def { name: AGENT_LOG, kind: Kind::Sys, file: file.clone() });
        }
        defs
    }

    fn exposed(&self, name: &str, caller: &Caller) -> bool {
        caller.is_admin || self.settings.exposed.split(',').map(str::trim).any(|e| e.eq_ignore_ascii_case("all") || e.eq_ignore_ascii_case(name))
    }

    /// `guest_log_list`: every log this caller may see, as Trove shows one.
    pub async fn list(&self, manager: &RedisManager, caller: &Caller) -> Result<Vec<Value>> {
        let _busy = self.busy.lock().await;
        let swift = self.swift(caller)?;
        let mut out = Vec::new();
        for def in self.defs().iter().filter(|d| self.exposed(d.name, caller)) {
            let d = self.details(&swift, def).await?;
            let (enabled, restart) = self.enabled(manager, def).await;
            out.push(self.show(def, &d, enabled, restart));
        }
        Ok(out)
    }

    /// `guest_log_action`: enable or disable (USER logs), then discard, then publish, as Trove's
    /// manager orders them; returns the log as Trove shows it. Checks come first: a refused
    /// action changes nothing.
    pub async fn action(&self, manager: &RedisManager, caller: &Caller, name: &str, a: Action) -> Result<Value> {
        if a.enable && a.disable {
            return Err(Error::BadRequest(format!("Cannot enable and disable log '{name}'.")));
        }
        let defs = self.defs();
        let def = defs.iter().find(|d| d.name == name).ok_or_else(|| Error::NotFound(format!("Log '{name}' is not defined.")))?;
        if !self.exposed(name, caller) {
            let action = if a.publish { "publish" } else if a.discard { "discard" } else { "show" };
            return Err(Error::LogAccessForbidden { action: action.into(), log: name.into() });
        }
        // Publishing enables, unless told to disable (Trove).
        let enable = a.enable || (a.publish && !a.disable);
        if def.kind == Kind::Sys && !a.publish && (a.enable || a.disable) {
            let verb = if a.enable { "enable" } else { "disable" };
            return Err(Error::BadRequest(format!("Cannot {verb} a SYSTEM log ('{name}').")));
        }
        let _busy = self.busy.lock().await;
        let swift = self.swift(caller)?;
        if def.kind == Kind::User {
            let on = manager.snapshot_state().await.log.is_some();
            if (enable && !on) || (a.disable && on) {
                let log = (!a.disable).then(|| RedisLog { file: def.file.clone() });
                manager.update_checked(move |s| s.log = log).await?;
                tracing::info!(log = name, enabled = !a.disable, file = %def.file.display(), "redis log setting persisted; it takes effect when redis restarts");
            }
        }
        let mut d = self.details(&swift, def).await?;
        if a.discard {
            self.discard(&swift, def).await?;
            d.published = 0;
            d.published_digest = None;
            tracing::info!(log = name, "published log discarded");
        }
        if a.publish {
            self.publish(&swift, def, &mut d).await?;
        }
        let (enabled, restart) = self.enabled(manager, def).await;
        Ok(self.show(def, &d, enabled, restart))
    }

    /// Whether `def` is enabled, and whether that waits for a Redis restart (`logfile` cannot be
    /// changed at runtime): the running server's `logfile` is not what the configuration says.
    async fn enabled(&self, manager: &RedisManager, def: &Def) -> (bool, bool) {
        if def.kind == Kind::Sys {
            return (true, false);
        }
        let want = manager.snapshot_state().await.log.map(|l| l.file);
        let running = match manager.admin().await {
            Ok(mut admin) => admin.config_get("logfile").await.ok().flatten(),
            Err(_) => None,
        };
        let ours = def.file.display().to_string();
        let restart = match (&want, running) {
            (_, None) => false,
            (Some(w), Some(r)) => w.display().to_string() != r,
            (None, Some(r)) => r == ours,
        };
        (want.is_some(), restart)
    }

    /// Trove's `GuestLog.show()` dict.
    fn show(&self, def: &Def, d: &Details, enabled: bool, restart: bool) -> Value {
        let status = if restart {
            "Restart Required"
        } else if !enabled {
            "Disabled"
        } else if d.rotated() {
            "Rotated"
        } else if d.size > d.published {
            if d.published > 0 {
                "Partial"
            } else {
                "Ready"
            }
        } else if d.published > 0 {
            "Published"
        } else {
            "Enabled"
        };
        let pending = if d.rotated() { d.size } else { d.size.saturating_sub(d.published) };
        let (container, prefix) = match d.published {
            0 => ("None".to_owned(), "None".to_owned()),
            _ => (self.settings.container.clone(), self.prefix(def)),
        };
        json!({
            "name": def.name,
            "type": match def.kind { Kind::Sys => "SYS", Kind::User => "USER" },
            "status": status,
            "published": d.published,
            "pending": pending,
            "container": container,
            "prefix": prefix,
            "metafile": self.metafile(def),
        })
    }

    fn prefix(&self, def: &Def) -> String {
        format!("{}/{DATASTORE}-{}/", self.guest_id, def.name)
    }

    fn metafile(&self, def: &Def) -> String {
        format!("{}_metafile", self.prefix(def).trim_end_matches('/'))
    }

    /// The caller's Swift: `<swift_url><project>` when configured, else the catalog's endpoint.
    fn swift(&self, caller: &Caller) -> Result<Swift> {
        let token = caller.token.as_ref().ok_or_else(|| Error::Refused("the request carries no auth_token for Swift: guest logs are published to the caller's Swift".into()))?;
        let s = &self.settings;
        let url = if !s.swift_url.is_empty() {
            let project = caller.project_id.as_deref().ok_or_else(|| Error::Refused("the request carries no project_id for the configured swift_url".into()))?;
            format!("{}{project}", s.swift_url)
        } else {
            let catalog = caller.service_catalog.as_ref().ok_or_else(|| Error::Refused("the request carries no service catalog and no swift_url is configured: Swift cannot be found".into()))?;
            catalog_endpoint(catalog, &s.swift_service_type, &s.region_name, &s.swift_endpoint_type).ok_or_else(|| {
                Error::Refused(format!(
                    "the request's service catalog has no '{}' endpoint ({}, region {})",
                    s.swift_service_type, s.swift_endpoint_type, s.region_name
                ))
            })?
        };
        Swift::new(&url, SecretString::from(token.expose_secret().to_owned()), self.insecure)
    }

    async fn details(&self, swift: &Swift, def: &Def) -> Result<Details> {
        let mut d = Details::default();
        if let Some(text) = swift.get_text(&self.settings.container, &self.metafile(def)).await? {
            let meta: Value = serde_json::from_str(&text).map_err(|e| Error::Storage(format!("the metafile of log '{}' is not JSON: {e}", def.name)))?;
            d.published = meta.get("log_size").and_then(Value::as_u64).unwrap_or(0);
            d.published_digest = meta.get("log_header_digest").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some((size, digest)) = file_facts(&def.file).await? {
            d.size = size;
            d.digest = digest;
        } else {
            // Trove: a missing file has nothing published or pending.
            d.published = 0;
        }
        Ok(d)
    }

    fn headers(&self, lines: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-delete-after", HeaderValue::from(self.settings.expiry));
        if let Some(n) = lines {
            h.insert("x-object-meta-lines", HeaderValue::from(n));
        }
        h
    }

    async fn put_meta(&self, swift: &Swift, def: &Def, d: &Details) -> Result<()> {
        let meta = json!({
            "log_name": def.name,
            "log_type": match def.kind { Kind::Sys => "SYS", Kind::User => "USER" },
            "log_file": def.file.display().to_string(),
            "log_size": d.published,
            "log_header_digest": d.digest,
        });
        swift.put_object(&self.settings.container, &self.metafile(def), meta.to_string().into(), self.headers(None)).await.map(drop)
    }

    /// Uploads what the file holds beyond the published size, in whole lines.
    async fn publish(&self, swift: &Swift, def: &Def, d: &mut Details) -> Result<()> {
        let Some((size, digest)) = file_facts(&def.file).await? else {
            return Err(Error::Refused(format!("Cannot publish log file '{}' as it does not exist.", def.file.display())));
        };
        d.size = size;
        d.digest = digest;
        if d.rotated() {
            tracing::info!(log = def.name, "log file rotation detected: discarding the old published log");
            self.discard(swift, def).await?;
            d.published = 0;
        }
        swift.put_container(&self.settings.container).await?;
        self.put_meta(swift, def, d).await?;
        let chunk = usize::try_from(self.settings.chunk_size).unwrap_or(usize::MAX).max(1);
        let mut last_name = String::new();
        let mut objects = 0;
        while d.published < size {
            let window = usize::try_from(size - d.published).unwrap_or(usize::MAX).min(chunk);
            let part = read_lines(&def.file, d.published, window, window == chunk).await?;
            if part.is_empty() {
                break;
            }
            let mut name = format!("{}log-{}", self.prefix(def), utc_now());
            while name <= last_name {
                tokio::time::sleep(Duration::from_micros(10)).await;
                name = format!("{}log-{}", self.prefix(def), utc_now());
            }
            let lines = part.iter().filter(|b| **b == b'\n').count();
            let len = part.len() as u64;
            swift.put_object(&self.settings.container, &name, part.into(), self.headers(Some(lines))).await?;
            d.published += len;
            objects += 1;
            last_name = name;
        }
        d.published_digest = Some(d.digest.clone());
        self.put_meta(swift, def, d).await?;
        tracing::info!(log = def.name, objects, published = d.published, "log published");
        Ok(())
    }

    /// Deletes the published objects and the metafile.
    async fn discard(&self, swift: &Swift, def: &Def) -> Result<()> {
        let c = &self.settings.container;
        for name in swift.list_objects(c, &self.prefix(def)).await? {
            swift.delete_object(c, &name, false).await?;
        }
        swift.delete_object(c, &self.metafile(def), false).await
    }
}

/// A file's size and the MD5 (hex) of its first line; None when it does not exist.
async fn file_facts(path: &Path) -> Result<Option<(u64, String)>> {
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let size = f.metadata().await.map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
            head.extend_from_slice(&buf[..=i]);
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 1 << 20 {
            break;
        }
    }
    Ok(Some((size, hex(&Md5::digest(&head)))))
}

/// Up to `max` bytes from `offset`, cut after the last newline; with `split_long`, a run of
/// `max` bytes without one is taken whole (a line longer than a chunk).
async fn read_lines(path: &Path, offset: u64, max: usize, split_long: bool) -> Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await.map_err(|e| Error::io(path, e))?;
    f.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::with_capacity(max.min(1 << 20));
    (&mut f).take(max as u64).read_to_end(&mut buf).await.map_err(|e| Error::io(path, e))?;
    match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => buf.truncate(i + 1),
        None if split_long && buf.len() == max => {}
        None => buf.clear(),
    }
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now as Python's `str(datetime.utcnow())` with `T`: `2024-05-06T07:08:09.123456`.
fn utc_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_secs(), d.subsec_micros())
}

pub(crate) fn format_utc(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The first `service_type` endpoint of `interface` (`publicURL`, `internalURL`, `adminURL`) in
/// `region` of a Keystone service catalog, v2 (`publicURL` keys) or v3 (`interface` + `url`).
pub fn catalog_endpoint(catalog: &Value, service_type: &str, region: &str, interface: &str) -> Option<String> {
    let short = interface.trim_end_matches("URL");
    let in_region = |e: &Value| {
        let r = e.get("region").or_else(|| e.get("region_id")).and_then(Value::as_str);
        region.is_empty() || r.map_or(true, |r| r == region)
    };
    catalog.as_array()?.iter().filter(|s| s.get("type").and_then(Value::as_str) == Some(service_type)).find_map(|s| {
        s.get("endpoints")?.as_array()?.iter().filter(|e| in_region(e)).find_map(|e| {
            let v2 = e.get(interface).and_then(Value::as_str);
            let v3 = (e.get("interface").and_then(Value::as_str) == Some(short)).then(|| e.get("url").and_then(Value::as_str)).flatten();
            v2.or(v3).map(str::to_owned)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_like_python_utcnow() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000");
        assert_eq!(format_utc(951_782_400 + 3661, 7), "2000-02-29T01:01:01.000007");
        assert_eq!(format_utc(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999");
    }

    #[test]
    fn catalog_endpoints_v2_and_v3() {
        let v2 = json!([
            {"type": "compute", "endpoints": [{"region": "RegionOne", "publicURL": "http://nova"}]},
            {"type": "object-store", "endpoints": [
                {"region": "Other", "publicURL": "http://other/v1/AUTH_p"},
                {"region": "RegionOne", "publicURL": "http://swift/v1/AUTH_p", "internalURL": "http://int/v1/AUTH_p"}
            ]}
        ]);
        assert_eq!(catalog_endpoint(&v2, "object-store", "RegionOne", "publicURL").as_deref(), Some("http://swift/v1/AUTH_p"));
        assert_eq!(catalog_endpoint(&v2, "object-store", "RegionOne", "internalURL").as_deref(), Some("http://int/v1/AUTH_p"));
        assert_eq!(catalog_endpoint(&v2, "object-store", "Nowhere", "publicURL"), None);
        let v3 = json!([{"type": "object-store", "endpoints": [
            {"interface": "internal", "region_id": "RegionOne", "url": "http://int"},
            {"interface": "public", "region_id": "RegionOne", "url": "http://pub"}
        ]}]);
        assert_eq!(catalog_endpoint(&v3, "object-store", "RegionOne", "publicURL").as_deref(), Some("http://pub"));
        assert_eq!(catalog_endpoint(&json!("junk"), "object-store", "RegionOne", "publicURL"), None);
    }

    #[test]
    fn rotation_is_a_smaller_file_or_another_first_line() {
        let d = |size, published, same| Details { size, digest: "a".into(), published, published_digest: Some(if same { "a" } else { "b" }.into()) };
        assert!(!d(10, 0, false).rotated());
        assert!(!d(10, 5, true).rotated());
        assert!(d(4, 5, true).rotated());
        assert!(d(10, 5, false).rotated());
    }

    #[tokio::test]
    async fn chunks_end_on_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.log");
        std::fs::write(&p, "one\ntwo\nthree-long-line\npartial").unwrap();
        assert_eq!(read_lines(&p, 0, 10, true).await.unwrap(), b"one\ntwo\n");
        assert_eq!(read_lines(&p, 8, 5, true).await.unwrap(), b"three", "a line longer than a chunk is split");
        assert_eq!(read_lines(&p, 8, 100, false).await.unwrap(), b"three-long-line\n", "the partial last line waits");
        assert_eq!(read_lines(&p, 24, 100, false).await.unwrap(), b"");
        let (size, digest) = file_facts(&p).await.unwrap().unwrap();
        assert_eq!(size, 31);
        assert_eq!(digest, hex(&Md5::digest(b"one\n")));
        assert!(file_facts(&dir.path().join("none")).await.unwrap().is_none());
    }
}
