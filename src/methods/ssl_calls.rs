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
}
