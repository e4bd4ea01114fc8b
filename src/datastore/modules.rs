//! Trove's guest modules (`module_apply`, `module_list`, `module_remove`): each module's contents and result kept 0600 under the agent's state directory, run by a module-type driver (`ping`).
//!
//! Trove's guest (`trove/guestagent/module/module_manager.py`) keeps `<type>/<id>/contents.dat`
//! (the base64 `contents` decoded) and `<type>/<id>/result.json` (the result it returns) under
//! `~/modules`; we keep the same layout under `<state file>.modules/`, directories 0700 and files
//! 0600 (a module may carry a licence key). A removed module keeps its result (with `removed`
//! set, hidden from `module_list`) and loses its contents. Unlike Trove's guest, every module of
//! a `module_apply` is checked (name, contents, id, a driver for its type, the datastore) before
//! the first is applied, so a refused call changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::datastore::{Error, Result};

/// Trove's wildcard for tenant, datastore and version (`ModuleManager.MODULE_APPLY_TO_ALL`).
pub const APPLY_TO_ALL: &str = "all";
/// The datastore manager modules must name (or `all`).
pub const DATASTORE: &str = "redis";
/// The module types this guest has a driver for (Trove's default `module_types` minus
/// `new_relic_license`, which installs an agent Redis guests do not have).
pub const DRIVERS: &[&str] = &["ping"];

const CONTENTS: &str = "contents.dat";
const RESULT: &str = "result.json";

/// The modules directory: beside the state file.
pub fn dir_of(settings: &crate::config::RedisSettings) -> PathBuf {
    let mut p = settings.state_path().into_os_string();
    p.push(".modules");
    PathBuf::from(p)
}

/// The module store; calls run one at a time.
pub struct Modules {
    root: PathBuf,
    lock: Mutex<()>,
}

/// One module of a request, checked.
struct Spec {
    id: String,
    kind: String,
    name: String,
    contents: Option<Vec<u8>>,
    md5: Value,
    tenant: String,
    datastore: String,
    datastore_version: String,
    auto_apply: Value,
    visible: Value,
    is_admin: Value,
}

impl Modules {
    pub fn new(root: PathBuf) -> Self {
        Modules { root, lock: Mutex::new(()) }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `module_apply(modules=[{"module": {...}}, ...])`: applies in Trove's order (`apply_order`,
    /// then `priority_apply` first) and returns one result per module; a driver's failure is
    /// that module's `status: ERROR` with its message. Refuses the whole call (nothing applied)
    /// when a module lacks a name or contents, has no driver, or names another datastore.
    pub fn apply(&self, modules: &[Value]) -> Result<Vec<Value>> {
        let mut items = Vec::with_capacity(modules.len());
        for (i, m) in modules.iter().enumerate() {
            let inner = m.get("module").and_then(Value::as_object).ok_or_else(|| bad(format!("modules[{i}] must be {{\"module\": {{...}}}}")))?;
            items.push(inner);
        }
        if items.iter().all(|m| m.contains_key("apply_order") && m.contains_key("priority_apply")) {
            // Python's two stable sorts: apply_order ascending, then priority_apply first.
            items.sort_by_key(|m| m.get("apply_order").and_then(Value::as_i64).unwrap_or(0));
            items.sort_by_key(|m| std::cmp::Reverse(truthy(m.get("priority_apply"))));
        }
        let specs = items.into_iter().map(|m| spec(m, true)).collect::<Result<Vec<_>>>()?;
        let _g = self.guard();
        specs.iter().map(|s| self.apply_one(s)).collect()
    }

    fn apply_one(&self, s: &Spec) -> Result<Value> {
        let dir = self.module_dir(s)?;
        let contents = s.contents.as_deref().unwrap_or_default();
        crate::datastore::redis::state::write_private(&dir.join(CONTENTS), contents)?;
        let now = now();
        let mut result = read_result(&dir.join(RESULT)).unwrap_or_else(|| {
            json!({
                "type": s.kind, "name": s.name, "datastore": s.datastore, "datastore_version": s.datastore_version,
                "tenant": s.tenant, "id": s.id, "md5": s.md5, "status": null, "message": null, "created": now,
                "updated": now, "removed": null, "auto_apply": s.auto_apply, "visible": s.visible,
                "is_admin": s.is_admin, "contents": null,
            })
        });
        let (applied, message) = run_driver(&s.kind, contents);
        let r = result.as_object_mut().ok_or_else(|| Error::io(&dir.join(RESULT), "not a JSON object"))?;
        for (k, v) in [
            ("removed", Value::Null),
            ("status", json!(if applied { "OK" } else { "ERROR" })),
            ("message", message),
            ("updated", json!(now)),
            ("id", json!(s.id)),
            ("md5", s.md5.clone()),
            ("type", json!(s.kind)),
            ("name", json!(s.name)),
            ("datastore", json!(s.datastore)),
            ("datastore_version", json!(s.datastore_version)),
            ("tenant", json!(s.tenant)),
            ("auto_apply", s.auto_apply.clone()),
            ("visible", s.visible.clone()),
            ("is_admin", s.is_admin.clone()),
        ] {
            r.insert(k.into(), v);
        }
        write_result(&dir.join(RESULT), &result)?;
        tracing::info!(module = %s.name, kind = %s.kind, applied, "module applied");
        Ok(result)
    }

    /// `module_list(include_contents)`: the results of the modules applied and not removed, the
    /// invisible ones only for admins, newest `updated` first; `contents` (base64) when asked,
    /// replaced by Trove's notice for an admin module when the caller is not an admin.
    pub fn list(&self, is_admin: bool, include_contents: bool) -> Result<Vec<Value>> {
        let _g = self.guard();
        let mut results = Vec::new();
        for dir in self.module_dirs()? {
            let Some(mut r) = read_result(&dir.join(RESULT)) else { continue };
            if truthy(r.get("removed")) || !(is_admin || truthy(r.get("visible"))) {
                continue;
            }
            if include_contents {
                let b64 = base64::engine::general_purpose::STANDARD;
                r["contents"] = if !is_admin && (truthy(r.get("is_admin")) || truthy(r.get("admin_only"))) {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("Unknown");
                    json!(b64.encode(format!("Must be admin to retrieve contents for module {name}")))
                } else {
                    let p = dir.join(CONTENTS);
                    json!(b64.encode(std::fs::read(&p).map_err(|e| Error::io(&p, e))?))
                };
            }
            results.push(r);
        }
        results.sort_by(|a, b| b.get("updated").and_then(Value::as_str).cmp(&a.get("updated").and_then(Value::as_str)));
        Ok(results)
    }

    /// `module_remove(module={"module": {...}})`: Trove's `NotFound` when it was never applied;
    /// else the driver's remove, the contents deleted, the result marked `removed` (again, for a
    /// module removed before: Trove's guest does the same).
    pub fn remove(&self, module: &Value) -> Result<()> {
        let inner = module.get("module").and_then(Value::as_object).ok_or_else(|| bad("module must be {\"module\": {...}}".into()))?;
        let s = spec(inner, false)?;
        let _g = self.guard();
        let dir = self.root.join(&s.kind).join(&s.id);
        let Some(mut result) = read_result(&dir.join(RESULT)) else {
            return Err(Error::NotFound(format!("Module '{}' has not been applied", s.name)));
        };
        // The ping driver's remove always succeeds (Trove's `(True, "")`).
        match std::fs::remove_file(dir.join(CONTENTS)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir.join(CONTENTS), e)),
        }
        result["removed"] = json!(now());
        write_result(&dir.join(RESULT), &result)?;
        tracing::info!(module = %s.name, "module removed");
        Ok(())
    }

    fn module_dir(&self, s: &Spec) -> Result<PathBuf> {
        let dir = self.root.join(&s.kind).join(&s.id);
        for d in [self.root.clone(), self.root.join(&s.kind), dir.clone()] {
            private_dir(&d)?;
        }
        Ok(dir)
    }

    fn module_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let kinds = match std::fs::read_dir(&self.root) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        for kind in kinds.flatten().filter(|e| e.path().is_dir()) {
            let ids = std::fs::read_dir(kind.path()).map_err(|e| Error::io(&kind.path(), e))?;
            out.extend(ids.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        Ok(out)
    }
}

fn bad(reason: String) -> Error {
    Error::BadRequest(reason)
}

/// Python truthiness of a JSON value (missing and null are false).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// A path component we may create: Trove's ids are UUIDs and its types lower-case words.
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Reads and checks one module; `apply` also needs its contents and the datastore check.
fn spec(m: &Map<String, Value>, apply: bool) -> Result<Spec> {
    let text = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let name = text("name").ok_or_else(|| bad("Module name not specified".into()))?;
    let kind = text("type").unwrap_or_default();
    if !DRIVERS.contains(&kind.as_str()) {
        return Err(Error::Trove { class: "ModuleTypeNotFound", message: format!("No driver implemented for module type '{kind}'") });
    }
    let id = text("id").ok_or_else(|| bad(format!("module '{name}' has no id")))?;
    if !safe_component(&id) {
        return Err(bad(format!("module '{name}': id must be letters, digits, '-', '_' or '.' (a UUID)")));
    }
    let tenant = text("tenant").unwrap_or_else(|| APPLY_TO_ALL.into());
    let datastore = text("datastore").unwrap_or_else(|| APPLY_TO_ALL.into());
    let datastore_version = text("datastore_version").unwrap_or_else(|| APPLY_TO_ALL.into());
    let auto_apply = m.get("auto_apply").cloned().unwrap_or(json!(true));
    let visible = m.get("visible").cloned().unwrap_or(json!(true));
    let is_admin = match m.get("is_admin") {
        None | Some(Value::Null) => json!(tenant == APPLY_TO_ALL || !truthy(Some(&visible)) || truthy(Some(&auto_apply))),
        Some(v) => v.clone(),
    };
    let mut contents = None;
    if apply {
        let text = text("contents").ok_or_else(|| bad("Module contents not specified".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| bad(format!("module '{name}': contents must be base64 (as Trove sends them)")))?;
        contents = Some(decoded);
        if datastore != APPLY_TO_ALL && datastore != DATASTORE {
            return Err(Error::Trove { class: "ModuleInvalid", message: format!("The module is invalid: Module not valid for datastore {DATASTORE}") });
        }
    }
    let md5 = m.get("md5").cloned().unwrap_or(Value::Null);
    Ok(Spec { id, kind, name, contents, md5, tenant, datastore, datastore_version, auto_apply, visible, is_admin })
}

/// Runs module type `kind`'s apply on the contents: `(applied, message)`.
fn run_driver(kind: &str, contents: &[u8]) -> (bool, Value) {
    match kind {
        "ping" => ping(contents).unwrap_or_else(|why| (false, json!(format!("Could not extract ping message: {why}")))),
        other => (false, json!(format!("No driver implemented for module type '{other}'"))),
    }
}

/// Trove's PingDriver: the value of the `message` key of the contents read by Trove's
/// `KeyValueCodec` (`key=value` lines, `#` comments, `true`/`false` as booleans); a line that
/// is not `key=value` fails the read, as it does in Python.
fn ping(contents: &[u8]) -> std::result::Result<(bool, Value), String> {
    let text = std::str::from_utf8(contents).map_err(|_| "the contents are not UTF-8 text".to_owned())?;
    let mut message = None;
    for line in text.split('\n') {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| "not enough values to unpack (expected 2, got 1)".to_owned())?;
        let v = if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
            json!(v.eq_ignore_ascii_case("true"))
        } else {
            json!(v.split('#').next().unwrap_or_default())
        };
        // A later line with the same key replaces the value (a dict); `message` in any case.
        if k.to_lowercase() == "message" {
            message = Some(v);
        }
    }
    Ok(match message {
        Some(m) => (true, m),
        None => (false, json!("Message not found in contents file")),
    })
}

fn read_result(path: &Path) -> Option<Value> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice::<Value>(&text).ok().filter(Value::is_object)
}

fn write_result(path: &Path, result: &Value) -> Result<()> {
    let bytes = serde_json::to_vec(result).map_err(|e| Error::io(path, e))?;
    crate::datastore::redis::state::write_private(path, &bytes)
}

fn private_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(d, e))
        }
        Err(e) => Err(Error::io(d, e)),
    }
}

/// Trove's module timestamp: `%Y-%m-%d %H:%M:%S.%f` cut to 22 characters.
fn now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut s = crate::datastore::redis::logs::format_utc(d.as_secs(), d.subsec_micros()).replacen('T', " ", 1);
    s.truncate(22);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn module(id: &str, kind: &str, contents: &str) -> Value {
        let b64 = base64::engine::general_purpose::STANDARD.encode(contents);
        json!({"module": {"id": id, "name": format!("mod-{id}"), "type": kind, "contents": b64, "md5": "x",
            "datastore": "redis", "datastore_version": "all", "tenant": "all", "visible": true, "auto_apply": false,
            "is_admin": false, "apply_order": 5, "priority_apply": false}})
    }

    #[test]
    fn ping_applies_lists_and_removes() {
        let d = tempfile::tempdir().unwrap();
        let m = Modules::new(d.path().join("mods"));
        let r = m.apply(&[module("a1", "ping", "# c\nmessage=Hello there\n"), module("b2", "ping", "nothing=here\n")]).unwrap();
        assert_eq!((r[0]["status"].as_str(), r[0]["message"].as_str()), (Some("OK"), Some("Hello there")));
        assert_eq!((r[1]["status"].as_str(), r[1]["message"].as_str()), (Some("ERROR"), Some("Message not found in contents file")));
        let f = d.path().join("mods/ping/a1/contents.dat");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "# c\nmessage=Hello there\n");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(d.path().join("mods/ping")).unwrap().permissions().mode() & 0o777, 0o700);
        let listed = m.list(false, true).unwrap();
        assert_eq!(listed.len(), 2);
        let a = listed.iter().find(|r| r["id"] == "a1").unwrap();
        assert_eq!(a["contents"], json!(base64::engine::general_purpose::STANDARD.encode("# c\nmessage=Hello there\n")));
        m.remove(&module("a1", "ping", "")).unwrap();
        assert!(!f.exists());
        assert_eq!(m.list(true, false).unwrap().len(), 1);
        m.remove(&module("a1", "ping", "")).unwrap();
        assert_eq!(m.list(true, false).unwrap().len(), 1);
        assert!(matches!(m.remove(&module("never", "ping", "")), Err(Error::NotFound(_))));
    }

    #[test]
    fn refusals_apply_nothing() {
        let d = tempfile::tempdir().unwrap();
        let m = Modules::new(d.path().join("mods"));
        let e = m.apply(&[module("a1", "ping", "message=x"), module("b2", "new_relic_license", "k=v")]).unwrap_err();
        assert!(matches!(&e, Error::Trove { class: "ModuleTypeNotFound", .. }), "{e:?}");
        let mut other = module("c3", "ping", "message=x");
        other["module"]["datastore"] = json!("mysql");
        assert!(matches!(m.apply(&[other]).unwrap_err(), Error::Trove { class: "ModuleInvalid", .. }));
        for (k, v) in [("id", json!("../x")), ("contents", json!("%%%")), ("name", json!("")), ("contents", Value::Null)] {
            let mut bad = module("d4", "ping", "message=x");
            bad["module"][k] = v;
            assert!(matches!(m.apply(&[bad]).unwrap_err(), Error::BadRequest(_)), "{k}");
        }
        assert!(!d.path().join("mods").exists());
    }

    #[test]
    fn admin_modules_hide_contents_from_users() {
        let d = tempfile::tempdir().unwrap();
        let m = Modules::new(d.path().join("mods"));
        let mut a = module("a1", "ping", "message=secret licence");
        a["module"]["is_admin"] = json!(true);
        let mut hidden = module("h1", "ping", "message=x");
        hidden["module"]["visible"] = json!(false);
        m.apply(&[a, hidden]).unwrap();
        let user = m.list(false, true).unwrap();
        assert_eq!(user.len(), 1);
        let notice = base64::engine::general_purpose::STANDARD.decode(user[0]["contents"].as_str().unwrap()).unwrap();
        assert_eq!(String::from_utf8(notice).unwrap(), "Must be admin to retrieve contents for module mod-a1");
        assert_eq!(m.list(true, false).unwrap().len(), 2);
    }

    #[test]
    fn ping_reads_contents_as_troves_key_value_codec() {
        assert_eq!(ping(b"a=1\n  Message=hi # note\n").unwrap(), (true, json!("hi ")));
        assert_eq!(ping(b"message=TRUE").unwrap(), (true, json!(true)));
        assert_eq!(ping(b"message=a\nmessage=b=c").unwrap(), (true, json!("b=c")));
        assert_eq!(ping(b"x=1\n#message=no").unwrap(), (false, json!("Message not found in contents file")));
        assert_eq!(run_driver("ping", b"no message\n").1, json!("Could not extract ping message: not enough values to unpack (expected 2, got 1)"));
        assert!(ping(b"message=\xff").is_err());
    }

    #[test]
    fn order_is_troves() {
        let d = tempfile::tempdir().unwrap();
        let m = Modules::new(d.path().join("mods"));
        let mut first = module("z9", "ping", "message=1");
        first["module"]["priority_apply"] = json!(true);
        first["module"]["apply_order"] = json!(9);
        let r = m.apply(&[module("b", "ping", "message=2"), first]).unwrap();
        assert_eq!(r[0]["id"], "z9");
    }
}
