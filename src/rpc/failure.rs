//! Remote failures shaped as oslo.messaging serializes exceptions (`serialize_remote_exception`).

use serde_json::{json, Map, Value};

/// One failure as the caller re-hydrates it: an exception class in a module, with its args.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFailure {
    pub class: String,
    pub module: String,
    pub message: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
}

const DISPATCHER: &str = "oslo_messaging.rpc.dispatcher";
const TROVE: &str = "trove.common.exception";
const GUEST: &str = "trove_guest";
const NOT_PREPARED: &str = "InstanceNotPrepared";
const HELD_BACK: &str = "RestartHeldBack";

impl RemoteFailure {
    fn plain(module: &str, class: &str, message: String) -> Self {
        RemoteFailure {
            class: class.into(),
            module: module.into(),
            args: vec![Value::String(message.clone())],
            message,
            kwargs: Map::new(),
        }
    }

    /// oslo's `NoSuchMethod`, also used for private (`_`) names.
    pub fn no_such_method(method: &str) -> Self {
        Self::plain(DISPATCHER, "NoSuchMethod", format!("Endpoint does not support RPC method {method}"))
    }

    /// oslo's `UnsupportedVersion`.
    pub fn unsupported_version(version: &str, method: &str) -> Self {
        Self::plain(
            DISPATCHER,
            "UnsupportedVersion",
            format!("Endpoint does not support RPC version {version}. Attempted method: {method}"),
        )
    }

    /// A Python `TypeError` from the `builtins` module, as a bad call signature raises.
    pub fn type_error(message: String) -> Self {
        Self::plain("builtins", "TypeError", message)
    }

    /// A Trove exception: the caller rebuilds it from `kwargs`, so the message shows up readable.
    pub fn trove(class: &str, message: String, kwargs: Map<String, Value>) -> Self {
        RemoteFailure { class: class.into(), module: TROVE.into(), message, args: vec![], kwargs }
    }

    /// The instance has never been prepared: `get_replication_status` says so distinctly, so that
    /// a taskmanager prepares only a guest that is known to be new (`is_not_prepared`).
    pub fn not_prepared() -> Self {
        Self::plain(GUEST, NOT_PREPARED, "the instance has not been prepared yet".into())
    }

    pub fn is_not_prepared(&self) -> bool {
        self.module == GUEST && self.class == NOT_PREPARED
    }

    /// Redis crashed while it was a replica source, and its restart is held back until a replica
    /// is promoted (then `attach_replica` brings it back as a replica) or someone starts it.
    pub fn held_back() -> Self {
        Self::plain(
            GUEST,
            HELD_BACK,
            "redis-server crashed while it was a replica source; its restart is held back so that a replica can be promoted without losing writes".into(),
        )
    }

    pub fn is_held_back(&self) -> bool {
        self.module == GUEST && self.class == HELD_BACK
    }

    /// `GuestError(original_message=...)`: Trove's generic guest failure.
    pub fn guest_error(original_message: &str) -> Self {
        let mut kwargs = Map::new();
        kwargs.insert("original_message".into(), json!(original_message));
        Self::trove(
            "GuestError",
            format!("An error occurred communicating with the guest: {original_message}."),
            kwargs,
        )
    }

    /// The JSON *string* that goes into the reply's `failure` field.
    pub fn to_wire(&self) -> String {
        json!({
            "class": self.class,
            "module": self.module,
            "message": self.message,
            "tb": [format!("{}.{}: {}\n", self.module, self.class, self.message)],
            "args": self.args,
            "kwargs": self.kwargs,
        })
        .to_string()
    }

    /// Parses a `failure` string back (used by our own client).
    pub fn from_wire(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        Some(RemoteFailure {
            class: v.get("class")?.as_str()?.to_owned(),
            module: v.get("module").and_then(Value::as_str).unwrap_or_default().to_owned(),
            message: v.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
            args: v.get("args").and_then(Value::as_array).cloned().unwrap_or_default(),
            kwargs: v.get("kwargs").and_then(Value::as_object).cloned().unwrap_or_default(),
        })
    }
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our failures carry the same fields, classes, modules, messages and args as the captures.
    #[test]
    fn matches_captured_failures() {
        let cases = [
            ("plain-13-no_such_method-call-failure.json", RemoteFailure::no_such_method("no_such_method")),
            ("plain-14-rpc_ping-call-failure.json", RemoteFailure::unsupported_version("1.4", "rpc_ping")),
            ("plain-15-rpc_ping-call-failure.json", RemoteFailure::unsupported_version("2.0", "rpc_ping")),
            ("plain-16-_private_method-call-failure.json", RemoteFailure::no_such_method("_private_method")),
        ];
        for (file, ours) in cases {
            let captured = crate::rpc::envelope::tests::wire_message(file);
            let failure = captured["failure"].as_str().unwrap();
            let theirs: Value = serde_json::from_str(failure).unwrap();
            let mine: Value = serde_json::from_str(&ours.to_wire()).unwrap();
            let keys: std::collections::BTreeSet<_> = theirs.as_object().unwrap().keys().collect();
            assert_eq!(keys, mine.as_object().unwrap().keys().collect(), "{file}");
            for k in ["class", "module", "message", "args", "kwargs"] {
                assert_eq!(theirs[k], mine[k], "{file}: {k}");
            }
        }
    }
}
