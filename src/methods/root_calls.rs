//! `enable_root`, `enable_root_with_password` and `disable_root`: Trove's root calls for Redis.

use serde_json::Value;

use super::args::Args;
use super::{to_failure, Guest};
use crate::datastore::redis::root;
use crate::rpc::RemoteFailure;

impl Guest {
    /// Root on or off; one at a time with the lifecycle calls.
    pub(super) async fn root_call(&self, a: &Args<'_>) -> Result<Value, RemoteFailure> {
        if a.method == "disable_root" {
            let _guard = self.lifecycle.lock().await;
            return root::disable(&self.manager).await.map(|_| Value::Null).map_err(|e| to_failure(a, e.into()));
        }
        let password = match a.method {
            "enable_root" => None,
            _ => a.opt_str("root_password")?,
        };
        if let Some(why) = password.as_deref().and_then(root::check_password) {
            return Err(a.wrong("root_password", &why));
        }
        let _guard = self.lifecycle.lock().await;
        let password = root::enable(&self.manager, password).await.map_err(|e| to_failure(a, e.into()))?;
        Ok(root::root_user(&password))
    }
}
