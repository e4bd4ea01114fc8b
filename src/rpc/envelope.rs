//! oslo.messaging message envelope: decoding requests, encoding replies and outgoing messages.

use serde_json::{json, Map, Value};

/// A request as the dispatcher sees it, with the wire keys split out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub method: String,
    pub args: Map<String, Value>,
    /// Requested API version; a missing one means "1.0".
    pub version: Option<String>,
    pub namespace: Option<String>,
    pub msg_id: Option<String>,
    pub reply_q: Option<String>,
    pub unique_id: Option<String>,
    pub timeout: Option<f64>,
    /// The `_context_*` keys with the prefix removed, kept opaque.
    pub context: Map<String, Value>,
}

impl Request {
    /// A call expects a reply; a cast does not.
    pub fn is_call(&self) -> bool {
        self.msg_id.is_some()
    }
}

/// Why a body could not be decoded, plus where to send the failure if that is known.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub reason: String,
    pub msg_id: Option<String>,
    pub reply_q: Option<String>,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The largest body we decode; larger ones are refused before parsing.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// Decodes an AMQP body: the 2.0 envelope, or a bare pre-envelope message.
pub fn decode(body: &[u8], max_body: usize) -> Result<Request, DecodeError> {
    let fail = |reason: String| DecodeError { reason, msg_id: None, reply_q: None };
    if body.len() > max_body {
        return Err(fail(format!("message body of {} bytes exceeds the limit of {max_body}", body.len())));
    }
    let outer: Value =
        serde_json::from_slice(body).map_err(|e| fail(format!("message body is not valid JSON: {e}")))?;
    let Value::Object(outer) = outer else {
        return Err(fail("message body is not a JSON object".into()));
    };
    let mut message = if let Some(version) = outer.get("oslo.version") {
        // Errors about the envelope itself still carry the reply address when the inner dict has one.
        let routed = |reason: String| {
            let inner = match outer.get("oslo.message") {
                Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
                Some(v @ Value::Object(_)) => Some(v.clone()),
                _ => None,
            };
            let field = |k: &str| inner.as_ref().and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_owned);
            DecodeError { reason, msg_id: field("_msg_id"), reply_q: field("_reply_q") }
        };
        let version = version.as_str().unwrap_or_default();
        if version.split('.').next() != Some("2") {
            return Err(routed(format!("unsupported envelope version {:?}", outer["oslo.version"])));
        }
        let inner = outer
            .get("oslo.message")
            .and_then(Value::as_str)
            .ok_or_else(|| routed("oslo.message is missing or not a string".into()))?;
        match serde_json::from_str(inner) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(fail("oslo.message is not a JSON object".into())),
            Err(e) => return Err(fail(format!("oslo.message is not valid JSON: {e}"))),
        }
    } else {
        outer
    };

    // Reply routing first, so later errors can still be answered.
    let msg_id = take_string(&mut message, "_msg_id");
    let reply_q = take_string(&mut message, "_reply_q");
    let fail = |reason: String| DecodeError { reason, msg_id: msg_id.clone(), reply_q: reply_q.clone() };

    let method = match message.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => return Err(fail("field 'method' is not a non-empty string".into())),
        None => return Err(fail("field 'method' is missing".into())),
    };
    let args = match message.remove("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => return Err(fail("field 'args' is not an object of keyword arguments".into())),
    };
    let version = match message.remove("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v),
        Some(_) => return Err(fail("field 'version' is not a string".into())),
    };
    let namespace = take_string(&mut message, "namespace");
    let unique_id = take_string(&mut message, "_unique_id");
    let timeout = message.remove("_timeout").and_then(|t| t.as_f64());
    let context = message
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("_context_").map(|k| (k.to_owned(), v)))
        .collect();
    Ok(Request { method, args, version, namespace, msg_id, reply_q, unique_id, timeout, context })
}

fn take_string(message: &mut Map<String, Value>, key: &str) -> Option<String> {
    match message.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Wraps a message dict in the 2.0 envelope (`oslo.message` is a JSON string).
pub fn wrap(message: &Value) -> Vec<u8> {
    json!({"oslo.version": "2.0", "oslo.message": message.to_string()}).to_string().into_bytes()
}

/// The one reply a call gets: `{result, failure, ending: true, _msg_id, _unique_id}`.
pub fn reply(msg_id: &str, result: Value, failure: Option<String>) -> Vec<u8> {
    wrap(&json!({
        "result": result,
        "failure": failure,
        "ending": true,
        "_msg_id": msg_id,
        "_unique_id": new_id(),
    }))
}

/// An outgoing call or cast. `reply` carries `(msg_id, reply_q)` for calls.
pub fn request(
    method: &str,
    args: Map<String, Value>,
    version: &str,
    context: &Map<String, Value>,
    reply: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("method".into(), json!(method));
    m.insert("args".into(), Value::Object(args));
    m.insert("version".into(), json!(version));
    if let Some((msg_id, reply_q)) = reply {
        m.insert("_msg_id".into(), json!(msg_id));
        m.insert("_reply_q".into(), json!(reply_q));
        m.insert("_timeout".into(), Value::Null);
    }
    m.insert("_unique_id".into(), json!(new_id()));
    for (k, v) in context {
        m.insert(format!("_context_{k}"), v.clone());
    }
    wrap(&Value::Object(m))
}

/// A uuid4-style hex id, as oslo uses for `_unique_id` and `_msg_id`.
pub fn new_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a reply body (envelope or bare) into its message dict.
pub fn decode_reply(body: &[u8]) -> Result<Map<String, Value>, String> {
    let outer: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let inner = match outer.get("oslo.message").and_then(Value::as_str) {
        Some(s) => serde_json::from_str(s).map_err(|e| e.to_string())?,
        None => outer,
    };
    match inner {
        Value::Object(m) => Ok(m),
        _ => Err("reply is not an object".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn wire_file(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wire").join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    pub(crate) fn wire_message(name: &str) -> Value {
        wire_file(name)["oslo_message"].clone()
    }

    fn wire_names(suffix: &str) -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wire");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(suffix))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn decodes_every_captured_request() {
        let names = wire_names("-request.json");
        assert!(names.len() >= 25, "expected the captured requests, found {}", names.len());
        for name in names {
            let file = wire_file(&name);
            let body = file["body_text"].as_str().unwrap();
            let req = decode(body.as_bytes(), DEFAULT_MAX_BODY).unwrap_or_else(|e| panic!("{name}: {e}"));
            let msg = &file["oslo_message"];
            assert_eq!(req.method, msg["method"].as_str().unwrap(), "{name}");
            assert_eq!(Value::Object(req.args.clone()), msg["args"], "{name}");
            assert_eq!(req.version.as_deref(), msg["version"].as_str(), "{name}");
            assert_eq!(req.msg_id.as_deref(), msg.get("_msg_id").and_then(Value::as_str), "{name}");
            assert_eq!(req.is_call(), name.contains("-call-"), "{name}");
            let ctx_keys = msg.as_object().unwrap().keys().filter(|k| k.starts_with("_context_")).count();
            assert_eq!(req.context.len(), ctx_keys, "{name}");
        }
    }

    #[test]
    fn replies_have_the_captured_shape() {
        for name in wire_names("-reply.json").into_iter().chain(wire_names("-failure.json")) {
            let captured = wire_message(&name);
            let failure = captured["failure"].as_str().map(str::to_owned);
            let body = reply(captured["_msg_id"].as_str().unwrap(), captured["result"].clone(), failure);
            let outer: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(outer["oslo.version"], "2.0");
            let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>();
            assert_eq!(keys(&inner), keys(&captured), "{name}");
            for k in ["result", "failure", "ending", "_msg_id"] {
                assert_eq!(inner[k], captured[k], "{name}: {k}");
            }
        }
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"\xff\xfe", "not valid JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"oslo.version":"3.0","oslo.message":"{}"}"#, "unsupported envelope"),
            (br#"{"oslo.version":"2.0","oslo.message":{"method":"x"}}"#, "not a string"),
            (br#"{"oslo.version":"2.0","oslo.message":"{\"method\": \"rpc_"}"#, "not valid JSON"),
            (br#"{"oslo.version":"2.0","oslo.message":"{\"args\": {}}"}"#, "'method' is missing"),
            (br#"{"method":"x","args":[1]}"#, "keyword arguments"),
            (br#"{"method":7}"#, "'method'"),
        ];
        for (body, want) in cases {
            let err = decode(body, DEFAULT_MAX_BODY).unwrap_err();
            assert!(err.reason.contains(want), "{:?}: {}", String::from_utf8_lossy(body), err.reason);
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(deep.as_bytes(), DEFAULT_MAX_BODY).is_err());
        let big = vec![b' '; DEFAULT_MAX_BODY + 1];
        assert!(decode(&big, DEFAULT_MAX_BODY).unwrap_err().reason.contains("exceeds"));
    }

    #[test]
    fn keeps_reply_routing_when_the_rest_is_bad() {
        let body = br#"{"_msg_id":"m1","_reply_q":"reply_abc","args":{}}"#;
        let err = decode(body, DEFAULT_MAX_BODY).unwrap_err();
        assert_eq!(err.msg_id.as_deref(), Some("m1"));
        assert_eq!(err.reply_q.as_deref(), Some("reply_abc"));
        let inner = r#"{"method":"rpc_ping","_msg_id":"m2","_reply_q":"reply_def"}"#;
        for body in [
            json!({"oslo.version": "3.0", "oslo.message": inner}),
            json!({"oslo.version": 2, "oslo.message": inner}),
            json!({"oslo.version": "2.0", "oslo.message": serde_json::from_str::<Value>(inner).unwrap()}),
        ] {
            let err = decode(body.to_string().as_bytes(), DEFAULT_MAX_BODY).unwrap_err();
            assert_eq!((err.msg_id.as_deref(), err.reply_q.as_deref()), (Some("m2"), Some("reply_def")), "{body}");
        }
    }

    #[test]
    fn accepts_bare_liberty_messages() {
        let body = br#"{"method":"rpc_ping","args":{},"version":"1.0","_msg_id":"a","_reply_q":"reply_b","_unique_id":"c","_context_user":"u"}"#;
        let req = decode(body, DEFAULT_MAX_BODY).unwrap();
        assert_eq!(req.method, "rpc_ping");
        assert_eq!(req.timeout, None);
        assert_eq!(req.context["user"], "u");
    }
}
