//! Typed access to an RPC's keyword arguments, with Python-style TypeErrors that name the argument.

use serde_json::{Map, Value};

use crate::replication::MasterRef;
use crate::rpc::RemoteFailure;

pub struct Args<'a> {
    pub method: &'a str,
    map: Map<String, Value>,
}

impl<'a> Args<'a> {
    pub fn new(method: &'a str, map: Map<String, Value>) -> Self {
        Args { method, map }
    }

    fn missing(&self, name: &str) -> RemoteFailure {
        RemoteFailure::type_error(format!("Manager.{}() missing 1 required positional argument: '{name}'", self.method))
    }

    pub fn wrong(&self, name: &str, expected: &str) -> RemoteFailure {
        RemoteFailure::type_error(format!("Manager.{}() argument '{name}' must be {expected}", self.method))
    }

    /// A required argument that may be null.
    pub fn required(&self, name: &str) -> Result<&Value, RemoteFailure> {
        self.map.get(name).ok_or_else(|| self.missing(name))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<String>, RemoteFailure> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(name, "a string or null")),
        }
    }

    pub fn req_opt_str(&self, name: &str) -> Result<Option<String>, RemoteFailure> {
        self.required(name)?;
        self.opt_str(name)
    }

    pub fn opt_bool(&self, name: &str, default: bool) -> Result<bool, RemoteFailure> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.wrong(name, "a boolean")),
        }
    }

    /// A required flag as Trove's API passes one on: a boolean, 0 or 1 (troveclient sends
    /// `int(True)`), or null (not asked).
    pub fn req_flag(&self, name: &str) -> Result<bool, RemoteFailure> {
        match self.required(name)? {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
            _ => Err(self.wrong(name, "a boolean, 0 or 1, or null")),
        }
    }

    pub fn req_bool(&self, name: &str) -> Result<bool, RemoteFailure> {
        match self.required(name)? {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.wrong(name, "a boolean")),
        }
    }

    /// An optional non-negative integer (null: absent).
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, RemoteFailure> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong(name, "a non-negative integer")),
        }
    }

    pub fn req_int(&self, name: &str) -> Result<i64, RemoteFailure> {
        match self.required(name)? {
            Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
            Value::Number(n) if n.is_u64() => Err(self.wrong(name, "an integer in range")),
            _ => Err(self.wrong(name, "an integer")),
        }
    }

    pub fn opt_object(&self, name: &str) -> Result<Option<Map<String, Value>>, RemoteFailure> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(_) => Err(self.wrong(name, "an object or null")),
        }
    }

    /// Configuration overrides: an object whose keys are directive names (they are written into redis.conf).
    pub fn overrides(&self, name: &str, required: bool) -> Result<Map<String, Value>, RemoteFailure> {
        let map = if required { self.req_object(name)? } else { self.opt_object(name)?.unwrap_or_default() };
        if map.keys().any(|k| !crate::datastore::redis::conf::is_valid_key(k)) {
            return Err(self.wrong(name, "an object whose keys are configuration names (letters, digits, '-', '_', '.')"));
        }
        let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null);
        for (key, value) in &map {
            let ok = match value {
                Value::Array(items) => items.iter().all(scalar),
                other => scalar(other),
            };
            if !ok {
                return Err(self.wrong(&format!("{name}.{key}"), "a string, number, boolean, null or a list of those"));
            }
        }
        Ok(map)
    }

    pub fn req_object(&self, name: &str) -> Result<Map<String, Value>, RemoteFailure> {
        match self.required(name)? {
            Value::Object(m) => Ok(m.clone()),
            _ => Err(self.wrong(name, "an object")),
        }
    }

    /// `{"master": {"host", "port", "requirepass"}}` inside argument `name`.
    pub fn master_ref(&self, name: &str, container: &Map<String, Value>) -> Result<MasterRef, RemoteFailure> {
        let master = match container.get("master") {
            Some(Value::Object(m)) => m,
            Some(_) => return Err(self.wrong(&format!("{name}.master"), "an object")),
            None => return Err(self.wrong(name, "an object with a 'master' key")),
        };
        let host = match master.get("host") {
            Some(Value::String(h)) if crate::datastore::redis::conf::is_valid_host(h) => h.clone(),
            Some(Value::String(_)) => {
                return Err(self.wrong(&format!("{name}.master.host"), "a host name or IP address (letters, digits, '.', '-', ':')"))
            }
            _ => return Err(self.wrong(&format!("{name}.master.host"), "a string")),
        };
        let port = match master.get("port") {
            None | Some(Value::Null) => Some(6379),
            Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u16>().ok().filter(|p| *p != 0)
            }
            Some(_) => None,
        }
        .ok_or_else(|| self.wrong(&format!("{name}.master.port"), "an integer port 1..65535"))?;
        let requirepass = match master.get("requirepass") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(self.wrong(&format!("{name}.master.requirepass"), "a string or null")),
        };
        let masteruser = match master.get("masteruser") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\'') => Some(s.clone()),
            Some(_) => return Err(self.wrong(&format!("{name}.master.masteruser"), "an ACL user name (printable, no quotes) or null")),
        };
        let tls = match master.get("tls") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(self.wrong(&format!("{name}.master.tls"), "true, false or null")),
        };
        let ssl_ports = match master.get("ssl_ports") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => match (port_of_in(p, "plain"), port_of_in(p, "tls")) {
                (Some(plain), Some(tls)) => Some(crate::datastore::redis::ssl::MasterPorts { plain, tls }),
                _ => return Err(self.wrong(&format!("{name}.master.ssl_ports"), "an object {'plain': port, 'tls': port} or null")),
            },
            Some(_) => return Err(self.wrong(&format!("{name}.master.ssl_ports"), "an object {'plain': port, 'tls': port} or null")),
        };
        let root_password = match master.get("root_password") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match crate::datastore::redis::root::check_password(s) {
                None => Some(s.clone()),
                Some(why) => return Err(self.wrong(&format!("{name}.master.root_password"), &why)),
            },
            Some(_) => return Err(self.wrong(&format!("{name}.master.root_password"), "a string or null")),
        };
        Ok(MasterRef { host, port, requirepass, masteruser, tls, ssl_ports, root_password })
    }
}

/// A port number 1..65535 at `key` of `map`.
fn port_of_in(map: &Map<String, Value>, key: &str) -> Option<u16> {
    match map.get(key) {
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn master_ref_table() {
        let cases = [
            (json!({"master": {"host": "10.0.0.1", "port": 6379, "requirepass": "pw"}}), Ok((6379, Some("pw")))),
            (json!({"master": {"host": "h", "port": "6380", "requirepass": null}}), Ok((6380, None))),
            (json!({"master": {"host": "h", "requirepass": ""}}), Ok((6379, None))),
            (json!({"master": {"host": "h", "port": 0}}), Err("port")),
            (json!({"master": {"host": "h", "port": 65536}}), Err("port")),
            (json!({"master": {"host": "h", "port": -1}}), Err("port")),
            (json!({"master": {"host": "h", "port": "6379x"}}), Err("port")),
            (json!({"master": {"host": "h", "requirepass": 1234}}), Err("requirepass")),
            (json!({"master": {"host": 5}}), Err("host")),
            (json!({"master": {"host": "10.0.0.1\nslaveof 6.6.6.6 1"}}), Err("master.host")),
            (json!({"master": {"host": ""}}), Err("master.host")),
            (json!({"master": "x"}), Err("master")),
            (json!({"nomaster": 1}), Err("'master'")),
            (json!({"master": {"host": "h", "tls": "yes"}}), Err("master.tls")),
            (json!({"master": {"host": "h", "port": 6380, "tls": true}}), Ok((6380, None))),
            (json!({"master": {"host": "h", "root_password": "a\nb"}}), Err("root_password")),
            (json!({"master": {"host": "h", "root_password": 7}}), Err("root_password")),
            (json!({"master": {"host": "h", "root_password": "ok pw"}}), Ok((6379, None))),
        ];
        for (input, want) in cases {
            let args = Args::new("attach_replica", Map::new());
            let got = args.master_ref("replica_info", input.as_object().unwrap());
            match (got, want) {
                (Ok(m), Ok((port, pw))) => {
                    assert_eq!(m.port, port);
                    assert_eq!(m.requirepass.as_deref(), pw);
                }
                (Err(e), Err(word)) => {
                    assert_eq!(e.class, "TypeError");
                    assert!(e.message.contains(word), "{input}: {}", e.message);
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn missing_argument_names_it() {
        let args = Args::new("wait_for_txn", Map::new());
        let e = args.req_int("txn").unwrap_err();
        assert_eq!(e.message, "Manager.wait_for_txn() missing 1 required positional argument: 'txn'");
    }
}
