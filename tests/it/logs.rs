//! Guest logs through a real agent, Redis and OpenStack Swift (scripts/swift.sh): list, enable, publish, discard, disable, and refused requests that change nothing.

use serde_json::{json, Map, Value};

use super::harness::*;

/// Trove's API context: the user's token, project and service catalog (v2, as keystonemiddleware gives it).
fn context(token: &str, swift_url: &str, admin: bool) -> Map<String, Value> {
    let mut m = token_context(token);
    m.insert("is_admin".into(), json!(admin));
    m.insert("project_id".into(), json!("test"));
    m.insert("service_catalog".into(), json!([{"type": "object-store", "name": "swift", "endpoints": [{"region": "RegionOne", "publicURL": swift_url}]}]));
    m
}

async fn swift_get(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).header("X-Auth-Token", token).send().await.unwrap()
}

/// The object names under `prefix` in the logs container.
async fn listing(swift_url: &str, token: &str, prefix: &str) -> Vec<String> {
    let resp = swift_get(&format!("{swift_url}/database_logs?prefix={prefix}"), token).await;
    if resp.status() == 404 {
        return vec![];
    }
    resp.text().await.unwrap().lines().map(str::to_owned).collect()
}

/// The published objects of a log, concatenated in name order (as `openstack database log save` reads them).
async fn published_text(swift_url: &str, token: &str, prefix: &str) -> String {
    let mut out = String::new();
    for name in listing(swift_url, token, prefix).await.into_iter().filter(|n| !n.ends_with("_metafile")) {
        let resp = swift_get(&format!("{swift_url}/database_logs/{name}"), token).await;
        assert!(resp.status().is_success(), "GET {name}: {}", resp.status());
        let lines: usize = resp.headers()["x-object-meta-lines"].to_str().unwrap().parse().unwrap();
        let text = resp.text().await.unwrap();
        assert_eq!(text.lines().count(), lines, "x-object-meta-lines of {name}");
        out.push_str(&text);
    }
    out
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no log {name} in {list}"))
}

#[tokio::test]
async fn logs_enable_publish_discard_through_swift() {
    let (swift_url, token) = swift_login().await;
    let c = client().await;
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("datastore");
    let agent_log = tmp.path().join("agent-own.log");
    let env = [
        ("TROVE_GUESTAGENT__GUEST_LOGS__DIR", log_dir.to_str().unwrap()),
        ("TROVE_GUESTAGENT__GUEST_LOGS__CHUNK_SIZE", "2048"),
        ("TROVE_GUESTAGENT__LOG__FILE", agent_log.to_str().unwrap()),
    ];
    let g = spawn_guest(&c, None, &env).await;
    prepare(&c, &g, None, None).await;
    let user = context(&token, &swift_url, false);
    let admin = context(&token, &swift_url, true);
    let list = |ctx: &Map<String, Value>| {
        let ctx = ctx.clone();
        let (c, g) = (&c, &g);
        async move { try_call_ctx(c, g, "guest_log_list", json!({}), ctx).await.unwrap() }
    };
    let act = |name: &str, flags: Value, ctx: &Map<String, Value>| {
        let mut a = json!({"log_name": name, "enable": null, "disable": null, "publish": null, "discard": null});
        for (k, v) in flags.as_object().unwrap() {
            a[k] = v.clone();
        }
        let ctx = ctx.clone();
        let (c, g) = (&c, &g);
        async move { try_call_ctx(c, g, "guest_log_action", a, ctx).await }
    };
    let prefix = format!("{}/redis-general/", g.id);

    // A user sees the Redis log only; an admin sees the agent's too. Nothing is published yet.
    let l = list(&user).await;
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    let general = by_name(&l, "general");
    assert_eq!(general["type"], "USER");
    assert_eq!(general["status"], "Disabled");
    assert_eq!((general["published"].as_u64(), general["container"].as_str(), general["prefix"].as_str()), (Some(0), Some("None"), Some("None")));
    assert_eq!(general["metafile"], format!("{}/redis-general_metafile", g.id));
    let l = list(&admin).await;
    assert_eq!(by_name(&l, "guest")["type"], "SYS");

    // Refused requests: clear errors, nothing changed.
    let conf_before = std::fs::read_to_string(g.config_file()).unwrap();
    let refused = |r: Result<Value, trove_guest::rpc::Error>, class: &str, words: &str| {
        let f = match r {
            Err(trove_guest::rpc::Error::Remote { failure, .. }) => failure,
            other => panic!("expected {class}, got {other:?}"),
        };
        assert_eq!(f.class, class, "{}", f.message);
        assert!(f.message.contains(words), "{class}: {}", f.message);
    };
    refused(act("nope", json!({"publish": 1}), &user).await, "NotFound", "Log 'nope' is not defined.");
    refused(act("general", json!({"enable": 1, "disable": 1}), &user).await, "BadRequest", "Cannot enable and disable log 'general'");
    refused(act("general", json!({"enable": "yes"}), &user).await, "TypeError", "'enable' must be a boolean, 0 or 1");
    refused(act("general", json!({"publish": 2}), &user).await, "TypeError", "'publish'");
    refused(act("guest", json!({"enable": true}), &admin).await, "BadRequest", "Cannot enable a SYSTEM log ('guest')");
    refused(act("guest", json!({"publish": true}), &user).await, "LogAccessForbidden", "to 'publish' the 'guest' log");
    refused(try_call_ctx(&c, &g, "guest_log_action", json!({"log_name": "general", "enable": true}), user.clone()).await, "TypeError", "missing 1 required positional argument: 'disable'");
    let e = act("general", json!({"enable": true}), &Map::new()).await;
    assert!(format!("{e:?}").contains("no auth_token"), "{e:?}");
    assert_eq!(std::fs::read_to_string(g.config_file()).unwrap(), conf_before, "a refused action changed redis.conf");
    assert_eq!(by_name(&list(&user).await, "general")["status"], "Disabled");
    assert!(listing(&swift_url, &token, &prefix).await.is_empty());

    // Enable: persisted as redis.conf's logfile; Redis reads it at its next start.
    let shown = act("general", json!({"enable": 1}), &user).await.unwrap();
    assert_eq!(shown["status"], "Restart Required", "{shown}");
    let log_file = log_dir.join("redis-general.log");
    assert!(std::fs::read_to_string(g.config_file()).unwrap().contains(&format!("logfile {}", log_file.display())));
    call(&c, &g, "restart", json!({})).await;
    let _: () = redis::cmd("SAVE").query_async(&mut g.redis(None).await).await.unwrap();
    eventually(10, "redis writes its log file", || async { std::fs::read_to_string(&log_file).is_ok_and(|t| t.contains("DB saved on disk")) }).await;
    let general = by_name(&list(&user).await, "general").clone();
    assert_eq!(general["status"], "Ready", "{general}");
    assert!(general["pending"].as_u64().unwrap() > 0);

    // Publish: whole lines in objects of at most 2 KiB under the log's prefix, and the metafile.
    let shown = act("general", json!({"publish": 1}), &user).await.unwrap();
    assert_eq!(shown["status"], "Published", "{shown}");
    let published = shown["published"].as_u64().unwrap();
    let text = std::fs::read_to_string(&log_file).unwrap();
    assert!(published > 0 && published <= text.len() as u64);
    assert_eq!((shown["container"].as_str(), shown["prefix"].as_str()), (Some("database_logs"), Some(prefix.as_str())));
    let in_swift = published_text(&swift_url, &token, &prefix).await;
    assert_eq!(in_swift, text[..published as usize], "the published objects are not the log");
    assert!(in_swift.contains("DB saved on disk"));
    let meta: Value = serde_json::from_str(&swift_get(&format!("{swift_url}/database_logs/{}", shown["metafile"].as_str().unwrap()), &token).await.text().await.unwrap()).unwrap();
    assert_eq!((meta["log_name"].as_str(), meta["log_size"].as_u64()), (Some("general"), Some(published)));

    // More log: Partial, then a second publish appends only the new part.
    for _ in 0..120 {
        let _: () = redis::cmd("SAVE").query_async(&mut g.redis(None).await).await.unwrap();
    }
    eventually(10, "new log lines", || async { std::fs::metadata(&log_file).unwrap().len() > published + 2048 }).await;
    let general = by_name(&list(&user).await, "general").clone();
    assert_eq!((general["status"].as_str(), general["published"].as_u64()), (Some("Partial"), Some(published)), "{general}");
    let before = listing(&swift_url, &token, &prefix).await.len();
    let shown = act("general", json!({"publish": true}), &user).await.unwrap();
    let text = std::fs::read_to_string(&log_file).unwrap();
    let published = shown["published"].as_u64().unwrap() as usize;
    assert_eq!(published_text(&swift_url, &token, &prefix).await, text[..published]);
    assert!(listing(&swift_url, &token, &prefix).await.len() >= before + 2, "more than 2 KiB was not split into chunks");

    // Discard: the objects and the metafile go; the file stays, all of it pending again.
    let shown = act("general", json!({"discard": 1}), &user).await.unwrap();
    assert_eq!((shown["status"].as_str(), shown["published"].as_u64()), (Some("Ready"), Some(0)), "{shown}");
    assert!(listing(&swift_url, &token, &prefix).await.is_empty(), "discard left objects");
    assert_eq!(swift_get(&format!("{swift_url}/database_logs/{}/redis-general_metafile", g.id), &token).await.status(), 404);

    // Disable: back to the base's logfile at the next start.
    let shown = act("general", json!({"disable": 1}), &user).await.unwrap();
    assert_eq!(shown["status"], "Restart Required");
    call(&c, &g, "restart", json!({})).await;
    assert_eq!(by_name(&list(&user).await, "general")["status"], "Disabled");

    // The agent's own log (SYS, admins here): publish needs no enable.
    let shown = act("guest", json!({"publish": 1}), &admin).await.unwrap();
    assert_eq!(shown["type"], "SYS");
    let text = published_text(&swift_url, &token, &format!("{}/redis-guest/", g.id)).await;
    assert!(text.contains("prepare finished"), "the agent's log was not published: {text:.300}");
    act("guest", json!({"discard": 1}), &admin).await.unwrap();
    assert!(listing(&swift_url, &token, &format!("{}/redis-guest/", g.id)).await.is_empty());
}
