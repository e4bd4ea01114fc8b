//! `ssl_show`, `ssl_action` and `ssl_rollback`: Trove's client TLS modes (API 1.3).

use serde_json::{json, Map, Value};

use super::args::Args;
use super::{to_failure, Guest};
use crate::datastore::redis::ssl;
use crate::rpc::RemoteFailure;

impl Guest {
    pub(super) async fn ssl_call(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        match a.method {
            "ssl_show" => ssl::show(&self.manager).await.map_err(|e| to_failure(a, e.into())),
            "ssl_action" => {
                let (enable, disable) = (a.opt_bool("enable", false)?, a.opt_bool("disable", false)?);
                if enable && disable {
                    return Err(RemoteFailure::trove("BadRequest", "Cannot enable and disable ssl".into(), Map::new()));
                }
                let request = if enable {
                    let mode = a.opt_str("mode")?.unwrap_or_else(|| "basic".into());
                    let mode = ssl::Mode::parse(&mode).ok_or_else(|| a.wrong("mode", "one of basic, enforced, mtls"))?;
                    let container = a.opt_object("container")?.ok_or_else(|| a.wrong("container", "the certificate container (private_key, certificate, ca) to enable ssl"))?;
                    let material = ssl::material(&container).map_err(|why| a.wrong("container", &format!("complete certificate material: it {why}")))?;
                    Some((mode, material))
                } else if disable {
                    None
                } else {
                    return Ok(json!({}));
                };
                let _guard = self.lifecycle.lock().await;
                ssl::action(&self.manager, request).await.map_err(|e| to_failure(a, e.into()))
            }
            _ => {
                let _guard = self.lifecycle.lock().await;
                ssl::rollback(&self.manager).await.map_err(|e| to_failure(a, e.into()))
            }
        }
    }

    /// The master's client TLS a replica is to follow: `ssl_mode` and `cert_container` of a
    /// snapshot or replica_info (Trove's keys), checked; None when it carries neither.
    pub(super) fn replica_tls(&self, a: &Args<'_>, name: &str, info: &Map<String, Value>) -> Result<Option<(ssl::Mode, ssl::Material)>, RemoteFailure> {
        let (mode, container) = match (info.get("ssl_mode"), info.get("cert_container")) {
            (None | Some(Value::Null), None | Some(Value::Null)) => return Ok(None),
            (Some(Value::String(m)), Some(Value::Object(c))) => (m, c),
            _ => return Err(a.wrong(&format!("{name}.ssl_mode/cert_container"), "both given (a mode and the master's certificate container) or both absent")),
        };
        let mode = ssl::Mode::parse(mode).ok_or_else(|| a.wrong(&format!("{name}.ssl_mode"), "one of basic, enforced, mtls"))?;
        let material = ssl::material(container).map_err(|why| a.wrong(&format!("{name}.cert_container"), &format!("complete certificate material: it {why}")))?;
        Ok(Some((mode, material)))
    }

    /// Adds the master's `ssl_mode` and `cert_container` to a snapshot or replica context when
    /// it serves clients over TLS (Trove's guest does the same for its replicas).
    pub(super) async fn with_replica_tls(&self, a: &Args<'_>, mut out: Value) -> Result<Value, RemoteFailure> {
        if let Some((mode, container)) = ssl::replica_container(&self.manager).await.map_err(|e| to_failure(a, e.into()))? {
            out["ssl_mode"] = json!(mode.as_str());
            out["cert_container"] = Value::Object(container);
        }
        Ok(out)
    }
}
