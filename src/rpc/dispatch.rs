//! One dispatcher: version and access checks, secure RPC, the endpoint call, and the reply body.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::crypto::Cipher;
use super::envelope::{self, Request};
use super::failure::RemoteFailure;
use super::secure;

/// The highest API version this guest implements (Trove's API_LATEST_VERSION).
pub const API_VERSION: (u32, u32) = (1, 3);

/// The guest's RPC endpoint: a method name and keyword arguments in, a JSON value out.
#[async_trait]
pub trait Endpoint: Send + Sync {
    /// Runs `method`. Unknown methods answer `RemoteFailure::no_such_method`.
    async fn call(&self, method: &str, args: Map<String, Value>, context: CallContext) -> Result<Value, RemoteFailure>;
}

/// What a handler may use of the request context: the caller's Keystone token (Trove's guests
/// reach Swift with it; a secret, never logged), whether the caller is an admin, its project and
/// its service catalog (where Swift is, for guest logs).
#[derive(Default)]
pub struct CallContext {
    pub auth_token: Option<secrecy::SecretString>,
    pub is_admin: bool,
    pub project_id: Option<String>,
    pub service_catalog: Option<Value>,
}

impl CallContext {
    fn of(context: &Map<String, Value>) -> CallContext {
        let text = |k: &str| context.get(k).and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
        CallContext {
            auth_token: text("auth_token").map(secrecy::SecretString::from),
            is_admin: context.get("is_admin").and_then(Value::as_bool).unwrap_or(false),
            // oslo.context: `project_id`; older serializations: `tenant`.
            project_id: text("project_id").or_else(|| text("tenant")),
            service_catalog: context.get("service_catalog").filter(|c| !c.is_null()).cloned(),
        }
    }
}

/// What the server should do with a decoded request.
pub struct Outcome {
    /// `(reply_q, body)` for calls; casts get none.
    pub reply: Option<(String, Vec<u8>)>,
    pub failure: Option<RemoteFailure>,
}

/// Remembers recent `_unique_id`s to drop redelivered duplicates.
pub struct Deduplicator {
    seen: Mutex<(VecDeque<String>, HashSet<String>)>,
    capacity: usize,
}

impl Deduplicator {
    pub fn new(capacity: usize) -> Self {
        Deduplicator { seen: Mutex::new((VecDeque::new(), HashSet::new())), capacity }
    }

    /// True the first time an id is seen.
    pub fn first_time(&self, id: &str) -> bool {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (order, set) = &mut *guard;
        if !set.insert(id.to_owned()) {
            return false;
        }
        order.push_back(id.to_owned());
        if order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// Reply queue names must look like oslo's (`reply_<hex>`), so a message cannot make us
/// publish into another service's queue.
pub fn valid_reply_queue(name: &str) -> bool {
    name.strip_prefix("reply_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Checks "1.x" against the implemented version, as oslo's `version_is_compatible` does.
pub fn version_supported(requested: Option<&str>) -> bool {
    let requested = requested.unwrap_or("1.0");
    let mut parts = requested.split('.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().map(|p| p.parse::<u32>().ok()).unwrap_or(Some(0));
    let rest_ok = parts.all(|p| p.parse::<u32>().is_ok());
    matches!((major, minor), (Some(ma), Some(mi)) if ma == API_VERSION.0 && mi <= API_VERSION.1) && rest_ok
}

/// Runs one request through checks, decryption and the endpoint, and builds the reply.
pub async fn dispatch(endpoint: &dyn Endpoint, cipher: Option<&Cipher>, mut req: Request) -> Outcome {
    let result = run(endpoint, cipher, &mut req).await;
    let failure = result.as_ref().err().cloned();
    let reply = match (&req.msg_id, &req.reply_q) {
        (Some(msg_id), Some(reply_q)) if valid_reply_queue(reply_q) => {
            let body = match result {
                Ok(value) => {
                    let value = match cipher {
                        Some(c) => secure::seal_result(c, &value),
                        None => value,
                    };
                    envelope::reply(msg_id, value, None)
                }
                Err(failure) => envelope::reply(msg_id, Value::Null, Some(failure.to_wire())),
            };
            Some((reply_q.clone(), body))
        }
        _ => None,
    };
    Outcome { reply, failure }
}

async fn run(endpoint: &dyn Endpoint, cipher: Option<&Cipher>, req: &mut Request) -> Result<Value, RemoteFailure> {
    if req.namespace.is_some() || !version_supported(req.version.as_deref()) {
        let version = req.version.clone().unwrap_or_else(|| "1.0".into());
        return Err(RemoteFailure::unsupported_version(&version, &req.method));
    }
    if req.method.starts_with('_') {
        return Err(RemoteFailure::no_such_method(&req.method));
    }
    if let Some(cipher) = cipher {
        secure::open_request(cipher, req)?;
        if let Some(id) = req.context.get("request_id").and_then(|v| v.as_str()) {
            tracing::Span::current().record("request_id", id);
        }
    }
    let args = std::mem::take(&mut req.args);
    endpoint.call(&req.method, args, CallContext::of(&req.context)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let cases = [
            (None, true),
            (Some("1.0"), true),
            (Some("1.3"), true),
            (Some("1.1.0"), true),
            (Some("1.4"), false),
            (Some("2.0"), false),
            (Some("0.9"), false),
            (Some("x"), false),
            (Some(""), false),
        ];
        for (v, want) in cases {
            assert_eq!(version_supported(v), want, "{v:?}");
        }
    }

    #[test]
    fn reply_queue_names() {
        for (name, want) in [
            ("reply_e7241665a5b6427ea7efeda7be885936", true),
            ("reply_", false),
            ("guestagent.other", false),
            ("trove-conductor", false),
            ("reply_../x", false),
            ("reply_a b", false),
        ] {
            assert_eq!(valid_reply_queue(name), want, "{name}");
        }
    }

    #[test]
    fn dedup_forgets_old_ids() {
        let d = Deduplicator::new(2);
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
        assert!(d.first_time("c"));
        assert!(d.first_time("a"));
    }
}
