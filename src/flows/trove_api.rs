//! A small client of Trove's own API for the watcher: the instances as Trove records them, and its eject and promote actions.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::inventory::TroveApiConf;
use super::Error;

/// How long one request to Trove's API may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One instance as Trove records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub status: String,
    /// Trove's `replica_of` (its `slave_of_id`).
    pub replica_of: Option<String>,
    /// The datastore's type (`redis`), when Trove shows it.
    pub datastore: Option<String>,
}

impl Record {
    /// Trove runs a task on the instance that may change the set (its status names the task, as
    /// Trove's `Instance.status` does; a dead guest shows SHUTDOWN or UNKNOWN, which are not tasks).
    pub fn busy(&self) -> bool {
        matches!(self.status.as_str(), "BUILD" | "REBOOT" | "RESIZE" | "UPGRADE" | "PROMOTE" | "EJECT" | "DETACH")
    }
}

/// What Trove answered an action.
#[derive(Debug)]
pub enum Answer {
    Accepted,
    /// Refused (HTTP 4xx) with Trove's message, e.g. the old master's heartbeat is still current.
    Refused(String),
}

pub struct TroveApi {
    http: reqwest::Client,
    conf: TroveApiConf,
}

impl TroveApi {
    pub fn new(conf: TroveApiConf) -> Result<TroveApi, Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| Error::Refused(format!("Trove API client: {e}")))?;
        Ok(TroveApi { http, conf })
    }

    fn token(&self) -> Result<String, Error> {
        let path = &self.conf.token_file;
        let text = std::fs::read_to_string(path).map_err(|e| Error::Refused(format!("Trove API token file {}: {e}", path.display())))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(Error::Refused(format!("Trove API token file {} is empty", path.display())));
        }
        Ok(token)
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/{tail}", self.conf.url.trim_end_matches('/'))
    }

    /// `GET /instances`: every instance of the project, by id (it does not call the guests).
    pub async fn instances(&self) -> Result<HashMap<String, Record>, Error> {
        let response = self
            .http
            .get(self.url("instances"))
            .header("X-Auth-Token", self.token()?)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| Error::Refused(format!("Trove API: GET instances: {}", without_url(&e))))?;
        let status = response.status();
        let body = body_of(response).await;
        if !status.is_success() {
            return Err(Error::Refused(format!("Trove API: GET instances: HTTP {status}: {}", message(&body))));
        }
        parse_instances(&body).ok_or_else(|| Error::Refused("Trove API: GET instances: not an instance list".into()))
    }

    /// `POST /instances/{id}/action` with `{"eject_replica_source": {}}` or `{"promote_to_replica_source": {}}`.
    pub async fn action(&self, id: &str, action: &str) -> Result<Answer, Error> {
        let response = self
            .http
            .post(self.url(&format!("instances/{id}/action")))
            .header("X-Auth-Token", self.token()?)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(json!({ action: {} }).to_string())
            .send()
            .await
            .map_err(|e| Error::Refused(format!("Trove API: {action} {id}: {}", without_url(&e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answer::Accepted);
        }
        let body = body_of(response).await;
        if status.is_client_error() {
            return Ok(Answer::Refused(message(&body)));
        }
        Err(Error::Refused(format!("Trove API: {action} {id}: HTTP {status}: {}", message(&body))))
    }
}

/// A response's JSON body (null when it is none).
async fn body_of(response: reqwest::Response) -> Value {
    response.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
}

/// A transport error's text without its URL (which holds only the endpoint, but stays out of logs
/// with the rest of the request).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "<trove api>");
    }
    text
}

/// Trove's error body: `{"badRequest": {"message": "...", "code": 400}}` and the like.
fn message(body: &Value) -> String {
    body.as_object()
        .and_then(|o| o.values().find_map(|v| v.get("message").and_then(Value::as_str)))
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string().chars().take(300).collect())
}

fn parse_instances(body: &Value) -> Option<HashMap<String, Record>> {
    let list = body.get("instances")?.as_array()?;
    let mut out = HashMap::new();
    for i in list {
        let id = i.get("id")?.as_str()?.to_owned();
        let status = i.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
        let replica_of = i.get("replica_of").and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned);
        let datastore = i.get("datastore").and_then(|d| d.get("type")).and_then(Value::as_str).map(str::to_owned);
        out.insert(id, Record { status, replica_of, datastore });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trove_instance_lists_and_errors_are_read() {
        let body = json!({"instances": [
            {"id": "a", "status": "HEALTHY", "replicas": [{"id": "b"}]},
            {"id": "b", "status": "EJECT", "replica_of": {"id": "a", "links": []}},
        ]});
        let got = parse_instances(&body).unwrap();
        assert_eq!(got["a"], Record { status: "HEALTHY".into(), replica_of: None, datastore: None });
        assert_eq!(got["b"].replica_of.as_deref(), Some("a"));
        assert!(got["b"].busy() && !got["a"].busy());
        for idle in ["UNKNOWN", "SHUTDOWN", "BACKUP", "ERROR", "ACTIVE"] {
            assert!(!Record { status: idle.into(), replica_of: None, datastore: None }.busy(), "{idle}");
        }
        assert!(parse_instances(&json!({"x": 1})).is_none());
        let refused = json!({"badRequest": {"message": "Replica Source a cannot be ejected as it has a current heartbeat", "code": 400}});
        assert!(message(&refused).contains("current heartbeat"));
    }
}
