//! `guest_log_list` and `guest_log_action`: Trove's guest logs, published to Swift with the caller's token.

use serde_json::Value;

use super::args::Args;
use super::{to_failure, Guest};
use crate::datastore::redis::logs;
use crate::rpc::{CallContext, RemoteFailure};

impl Guest {
    pub(super) async fn guest_log_list(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let list = self.logs.list(&self.manager, &caller(ctx)).await.map_err(|e| to_failure(a, e.into()))?;
        Ok(Value::Array(list))
    }

    /// `guest_log_action(log_name, enable, disable, publish, discard)`: Trove passes all five.
    pub(super) async fn guest_log_action(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let name = a.required("log_name")?.as_str().filter(|n| !n.is_empty()).ok_or_else(|| a.wrong("log_name", "a log name"))?.to_owned();
        let action = logs::Action { enable: a.req_flag("enable")?, disable: a.req_flag("disable")?, publish: a.req_flag("publish")?, discard: a.req_flag("discard")? };
        self.logs.action(&self.manager, &caller(ctx), &name, action).await.map_err(|e| to_failure(a, e.into()))
    }

}

/// The request context as the guest logs use it.
fn caller(ctx: &CallContext) -> logs::Caller {
    logs::Caller {
        token: ctx.auth_token.as_ref().map(|t| secrecy::SecretString::from(secrecy::ExposeSecret::expose_secret(t).to_owned())),
        is_admin: ctx.is_admin,
        project_id: ctx.project_id.clone(),
        service_catalog: ctx.service_catalog.clone(),
    }
}

