//! The configuration check fails closed: when redis-server cannot be run, changes are refused.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn overrides_are_refused_when_redis_server_cannot_check_them() {
    let c = client().await;
    // The agent runs redis-server through a wrapper that the test can take away.
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("redis-server-wrapper");
    std::fs::write(&wrapper, "#!/bin/sh\nexec redis-server \"$@\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let g = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REDIS__BINARY", wrapper.to_str().unwrap())]).await;
    prepare(&c, &g, None, None).await;
    call(&c, &g, "apply_overrides", json!({"overrides": {"maxmemory-policy": "allkeys-lru"}})).await;

    std::fs::remove_file(&wrapper).unwrap();
    let conf_before = std::fs::read_to_string(g.config_file()).unwrap();
    for method in ["apply_overrides", "update_overrides"] {
        let f = call_err(&c, &g, method, json!({"overrides": {"maxmemory-policy": "noeviction"}, "remove": false})).await;
        assert!(f.message.contains("could not be checked by redis-server"), "{method}: {}", f.message);
    }
    let f = call_err(&c, &g, "reset_configuration", json!({"configuration": {"config_contents": g.config_contents(None)}})).await;
    assert!(f.message.contains("could not be checked"), "{}", f.message);
    assert_eq!(std::fs::read_to_string(g.config_file()).unwrap(), conf_before, "redis.conf changed");
    let mut con = g.redis(None).await;
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut con).await.unwrap();
    assert_eq!(v[1], "allkeys-lru", "an unchecked override was applied");
}
