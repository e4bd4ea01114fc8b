//! Guest → conductor casts: `heartbeat` and `update_backup`, plain or under the conductor's serializer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::crypto::Cipher;
use super::envelope;
use super::publisher::Publisher;

/// Sends one `heartbeat(instance_id, payload={"service_status": status}, sent)` cast.
pub async fn send_heartbeat(
    publisher: &Publisher,
    exchange: &str,
    topic: &str,
    instance_id: &str,
    status: &str,
    cipher: Option<&Cipher>,
) -> Result<(), super::Error> {
    let sent = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    let mut args = Map::new();
    args.insert("instance_id".into(), json!(instance_id));
    args.insert("payload".into(), json!({"service_status": status}));
    args.insert("sent".into(), json!(sent));
    let body = heartbeat_body(args, instance_id, cipher);
    publisher.publish(exchange, topic, &body, Duration::from_secs(5)).await
}

/// Sends one `update_backup(instance_id, backup_id, sent, **fields)` cast (`fields`: size,
/// state, checksum, location, success, backup_type), as Trove's guests report a backup.
pub async fn send_update_backup(
    publisher: &Publisher,
    exchange: &str,
    topic: &str,
    instance_id: &str,
    backup_id: &str,
    fields: Map<String, Value>,
    cipher: Option<&Cipher>,
) -> Result<(), super::Error> {
    let sent = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    let mut args = Map::new();
    args.insert("instance_id".into(), json!(instance_id));
    args.insert("backup_id".into(), json!(backup_id));
    args.insert("sent".into(), json!(sent));
    args.extend(fields);
    let body = cast_body("update_backup", args, instance_id, cipher);
    publisher.publish(exchange, topic, &body, Duration::from_secs(5)).await
}

/// Builds the heartbeat cast body.
pub fn heartbeat_body(args: Map<String, Value>, instance_id: &str, cipher: Option<&Cipher>) -> Vec<u8> {
    cast_body("heartbeat", args, instance_id, cipher)
}

/// Builds a conductor cast. Only context keys a Liberty conductor's `TroveContext.from_dict` accepts.
fn cast_body(method: &str, args: Map<String, Value>, instance_id: &str, cipher: Option<&Cipher>) -> Vec<u8> {
    let mut context = Map::new();
    for key in ["user", "tenant", "auth_token", "resource_uuid"] {
        context.insert(key.into(), Value::Null);
    }
    context.insert("is_admin".into(), json!(true));
    context.insert("read_only".into(), json!(false));
    context.insert("show_deleted".into(), json!(false));
    context.insert("request_id".into(), json!(format!("req-{}", envelope::new_id())));
    let (args, context) = match cipher {
        None => (args, context),
        Some(cipher) => {
            // ConductorGuestSerializer: each argument becomes a JSON *string* naming the instance.
            let sealed = args
                .into_iter()
                .map(|(k, v)| {
                    let entity = json!({"entity": cipher.encrypt_value(&v), "csz-instance-id": instance_id});
                    (k, Value::String(entity.to_string()))
                })
                .collect();
            let mut ctx = Map::new();
            ctx.insert("context".into(), json!(cipher.encrypt_value(&Value::Object(context))));
            ctx.insert("csz-instance-id".into(), json!(instance_id));
            (sealed, ctx)
        }
    };
    envelope::request(method, args, "1.0", &context, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn encrypted_heartbeat_opens_like_the_conductor_does() {
        let cipher = Cipher::new(&SecretString::from("k".to_owned()));
        let mut args = Map::new();
        args.insert("payload".into(), json!({"service_status": "healthy"}));
        let body = heartbeat_body(args, "inst-1", Some(&cipher));
        let req = envelope::decode(&body, envelope::DEFAULT_MAX_BODY).unwrap();
        assert_eq!(req.method, "heartbeat");
        assert_eq!(req.context["csz-instance-id"], "inst-1");
        let wrapped: Value = serde_json::from_str(req.args["payload"].as_str().unwrap()).unwrap();
        assert_eq!(wrapped["csz-instance-id"], "inst-1");
        assert_eq!(cipher.decrypt_value(&wrapped["entity"]).unwrap(), json!({"service_status": "healthy"}));
        let ctx = cipher.decrypt_value(&req.context["context"]).unwrap();
        let allowed = ["user", "tenant", "auth_token", "resource_uuid", "is_admin", "read_only", "show_deleted", "request_id"];
        assert!(ctx.as_object().unwrap().keys().all(|k| allowed.contains(&k.as_str())));
    }
}
