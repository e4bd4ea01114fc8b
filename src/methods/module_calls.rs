//! `module_list`, `module_apply` and `module_remove`: Trove's guest modules, thin over `datastore::modules`.

use serde_json::{json, Value};

use super::args::Args;
use super::{to_failure, Guest};
use crate::rpc::{CallContext, RemoteFailure};

impl Guest {
    pub(super) async fn module_call(&self, a: &Args<'_>, ctx: &CallContext) -> Result<Value, RemoteFailure> {
        let fail = |e: crate::datastore::Error| to_failure(a, e.into());
        match a.method {
            "module_list" => {
                let include_contents = a.opt_bool("include_contents", false)?;
                self.modules.list(ctx.is_admin, include_contents).map(|r| json!(r)).map_err(fail)
            }
            "module_apply" => {
                let modules = match a.required("modules")? {
                    Value::Array(m) => m.clone(),
                    _ => return Err(a.wrong("modules", "a list of {\"module\": {...}}")),
                };
                self.modules.apply(&modules).map(|r| json!(r)).map_err(fail)
            }
            _ => {
                let module = a.required("module")?.clone();
                self.modules.remove(&module).map(|_| Value::Null).map_err(fail)
            }
        }
    }

    /// `prepare(modules=[...])`: applied after a successful prepare; as in Trove's guest, a
    /// failure is logged and does not fail the prepare.
    pub(super) fn prepare_modules(&self, modules: &[Value]) {
        if modules.is_empty() {
            return;
        }
        match self.modules.apply(modules) {
            Ok(results) => tracing::info!(modules = results.len(), "modules applied (called from prepare)"),
            Err(error) => tracing::warn!(%error, "an error occurred applying modules during prepare"),
        }
    }
}
