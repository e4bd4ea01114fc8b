//! Trove guest calls beyond replication: modules (`module_apply`, `module_list`, `module_remove`)
//! with Trove's payloads, and `attach_replication_slave`, the older name of `attach_replica`.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use serde_json::{json, Value};

use crate::harness::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A module as Trove's API sends it (`DetailedModuleView(...).data(include_contents=True)`).
fn module(id: &str, name: &str, kind: &str, contents: &str, is_admin: bool) -> Value {
    json!({"module": {
        "id": id, "name": name, "type": kind, "description": "d", "tenant_id": null, "datastore_id": null,
        "datastore_version_id": null, "auto_apply": false, "priority_apply": false, "apply_order": 5,
        "is_admin": is_admin, "md5": "0123456789abcdef0123456789abcdef", "visible": true,
        "created": "2026-01-01T00:00:00", "updated": "2026-01-01T00:00:00", "tenant": "All",
        "datastore": "redis", "datastore_version": "all", "live_update": false, "contents": b64(contents),
    }})
}

fn user_context() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("is_admin".into(), json!(false));
    m
}

#[tokio::test]
async fn modules_apply_list_and_remove() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    prepare(&c, &g, None, None).await;
    let modules_dir = g.dir.path().join("redis.conf.agent.json.modules");
    assert_eq!(call(&c, &g, "module_list", json!({"include_contents": false})).await, json!([]));

    // Refused as Trove's guest refuses them; nothing is written.
    let unknown = call_err(&c, &g, "module_apply", json!({"modules": [module("m-1", "ok", "ping", "message=hi", false), module("m-2", "nr", "new_relic_license", "license_key=x", false)]})).await;
    assert_eq!(unknown.class, "ModuleTypeNotFound");
    assert!(unknown.message.contains("No driver implemented for module type 'new_relic_license'"), "{}", unknown.message);
    let mut mysql = module("m-3", "other", "ping", "message=hi", false);
    mysql["module"]["datastore"] = json!("mysql");
    let invalid = call_err(&c, &g, "module_apply", json!({"modules": [mysql]})).await;
    assert_eq!((invalid.class.as_str(), invalid.message.as_str()), ("ModuleInvalid", "The module is invalid: Module not valid for datastore redis"));
    let mut escape = module("../../x", "esc", "ping", "message=hi", false);
    escape["module"]["id"] = json!("../../x");
    assert_eq!(call_err(&c, &g, "module_apply", json!({"modules": [escape]})).await.class, "BadRequest");
    let mut empty = module("m-4", "empty", "ping", "", false);
    empty["module"]["contents"] = Value::Null;
    let e = call_err(&c, &g, "module_apply", json!({"modules": [empty]})).await;
    assert_eq!((e.class.as_str(), e.message.as_str()), ("BadRequest", "Module contents not specified"));
    assert!(!modules_dir.exists());
    assert_eq!(call(&c, &g, "module_list", json!({"include_contents": false})).await, json!([]));

    // Applied: the ping driver's message, or its failure as that module's result.
    let secret = "message=licence-s3cr3t-value";
    let results = call(&c, &g, "module_apply", json!({"modules": [
        module("a-1", "greeting", "ping", secret, true),
        module("b-2", "broken", "ping", "nothing=here", false),
    ]}))
    .await;
    let by_id = |rs: &Value, id: &str| rs.as_array().unwrap().iter().find(|r| r["id"] == id).cloned().unwrap();
    let a = by_id(&results, "a-1");
    assert_eq!((a["status"].as_str(), a["message"].as_str(), a["name"].as_str()), (Some("OK"), Some("licence-s3cr3t-value"), Some("greeting")));
    assert_eq!((a["type"].as_str(), a["datastore"].as_str(), a["removed"].clone()), (Some("ping"), Some("redis"), Value::Null));
    let b = by_id(&results, "b-2");
    assert_eq!((b["status"].as_str(), b["message"].as_str()), (Some("ERROR"), Some("Message not found in contents file")));
    for f in ["ping/a-1/contents.dat", "ping/a-1/result.json", "ping/b-2/contents.dat"] {
        assert_eq!(std::fs::metadata(modules_dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert_eq!(std::fs::read_to_string(modules_dir.join("ping/a-1/contents.dat")).unwrap(), secret);

    // Listed: contents for admins; Trove's notice instead of an admin module's contents for users.
    let listed = call(&c, &g, "module_list", json!({"include_contents": true})).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(by_id(&listed, "a-1")["contents"], json!(b64(secret)));
    let as_user = try_call_ctx(&c, &g, "module_list", json!({"include_contents": true}), user_context()).await.unwrap();
    assert_eq!(by_id(&as_user, "a-1")["contents"], json!(b64("Must be admin to retrieve contents for module greeting")));
    assert_eq!(by_id(&as_user, "b-2")["contents"], json!(b64("nothing=here")));

    // Removed: gone from the list, its contents deleted; a module never applied is Trove's NotFound.
    let removed = call(&c, &g, "module_remove", json!({"module": module("a-1", "greeting", "ping", "", true)})).await;
    assert_eq!(removed, Value::Null);
    let listed = call(&c, &g, "module_list", json!({"include_contents": false})).await;
    assert_eq!(listed.as_array().unwrap().iter().map(|r| r["id"].clone()).collect::<Vec<_>>(), vec![json!("b-2")]);
    assert!(!modules_dir.join("ping/a-1/contents.dat").exists());
    let never = call_err(&c, &g, "module_remove", json!({"module": module("c-3", "never", "ping", "", true)})).await;
    assert_eq!((never.class.as_str(), never.message.as_str()), ("NotFound", "Module 'never' has not been applied"));
    // Applied again after the remove: listed again.
    call(&c, &g, "module_apply", json!({"modules": [module("a-1", "greeting", "ping", secret, true)]})).await;
    assert_eq!(call(&c, &g, "module_list", json!({"include_contents": false})).await.as_array().unwrap().len(), 2);
    assert!(!g.log().contains("licence-s3cr3t"), "module contents in the agent's log");

    // Users and databases remain not supported.
    let ns = call_err(&c, &g, "list_users", json!({})).await;
    assert_eq!(ns.class, "DatastoreOperationNotSupported");
}

/// `attach_replication_slave(snapshot, slave_config)` (still in Trove 26's guest API, a cast)
/// attaches as `attach_replica` does.
#[tokio::test]
async fn attach_replication_slave_is_attach_replica() {
    let c = client().await;
    let (m, r) = (spawn_guest(&c, None, &[]).await, spawn_guest(&c, None, &[]).await);
    prepare(&c, &m, None, None).await;
    prepare(&c, &r, None, None).await;
    let snapshot = call(&c, &m, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "instance_id": m.id, "replica_number": 1}, "replica_source_config": null,
    }))
    .await;
    let bad = call_err(&c, &r, "attach_replication_slave", json!({"snapshot": {"nomaster": 1}, "slave_config": null})).await;
    assert_eq!(bad.class, "TypeError");
    c.cast(&r.topic(), "attach_replication_slave", args(json!({"snapshot": snapshot, "slave_config": "slave-read-only yes\n"})), "1.0", r.cipher().as_ref())
        .await
        .unwrap();
    eventually(30, "the replica linked through attach_replication_slave", || async { linked_replica_of(r.port, m.port).await }).await;
    assert_eq!(call(&c, &r, "get_replication_status", json!({})).await["role"], "replica");
}
