//! Backup and restore through a real OpenStack Swift (scripts/swift.sh): create_backup as Trove
//! casts it, the objects and the conductor's update_backup reports, prepare from the backup.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

use super::harness::*;

/// The conductor casts captured: (method, args).
type Casts = Arc<Mutex<Vec<(String, Map<String, Value>)>>>;

/// The conductor casts (method, args) sent to `topic`.
async fn capture_conductor(topic: &str) -> (lapin::Connection, Casts) {
    capture_casts(topic, |req| (req.method, req.args)).await
}

fn backup_reports(seen: &Casts, id: &str) -> Vec<Map<String, Value>> {
    seen.lock().unwrap().iter().filter(|(m, a)| m == "update_backup" && a["backup_id"] == id).map(|(_, a)| a.clone()).collect()
}

async fn cast(client: &trove_guest::rpc::client::RpcClient, g: &Guest, method: &str, a: Value, token: &str) {
    client.cast_with_context(&g.topic(), method, args(a), "1.0", g.cipher().as_ref(), token_context(token)).await.unwrap();
}

fn new_id() -> String {
    let h = trove_guest::rpc::envelope::new_id();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Trove's taskmanager's `backup_info` for `create_backup`.
fn backup_info(id: &str, container: &str, swift_url: &str) -> Value {
    json!({
        "id": id, "name": "b", "description": null, "instance_id": "i", "backup_type": "RedisBackup",
        "checksum": null, "parent": null, "datastore": "redis", "datastore_version": "7.0",
        "storage_driver": "swift", "swift_container": container, "swift_url": swift_url,
    })
}

/// Waits for the COMPLETED or FAILED report of backup `id`.
async fn final_report(seen: &Casts, id: &str, g: &Guest) -> Map<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = backup_reports(seen, id).into_iter().find(|r| r["state"] == "COMPLETED" || r["state"] == "FAILED") {
            return r;
        }
        assert!(Instant::now() < deadline, "no final update_backup for {id}\n{}", g.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `prepare` from a backup, as the taskmanager sends it for an instance created from a backup.
async fn prepare_from(client: &trove_guest::rpc::client::RpcClient, g: &Guest, token: &str, info: Value) {
    let a = json!({
        "packages": null, "databases": [], "memory_mb": 512, "users": [], "device_path": null,
        "mount_point": "/var/lib/redis", "backup_info": info, "config_contents": g.config_contents(None),
        "root_password": null, "overrides": {}, "cluster_config": null, "snapshot": null,
    });
    cast(client, g, "prepare", a, token).await;
}

async fn wait_master(client: &trove_guest::rpc::client::RpcClient, g: &Guest) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = try_call(client, g, "get_replication_status", json!({})).await {
            if s["role"] == "master" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "prepare of {} did not finish\n{}", g.id, g.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn swift_get(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).header("X-Auth-Token", token).send().await.unwrap()
}

/// Runs openssl (Trove's decrypt command) and gunzip on `data`; the key goes through a file.
fn trove_unpack(data: &[u8], key: Option<&str>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, data).unwrap();
    let script = match key {
        Some(k) => {
            std::fs::write(dir.path().join("pw"), k).unwrap();
            format!("openssl enc -d -aes-256-cbc -md sha512 -pbkdf2 -iter 10000 -salt -pass file:{0}/pw < {0}/in | gzip -d -c", dir.path().display())
        }
        None => format!("gzip -d -c < {}/in", dir.path().display()),
    };
    let out = Command::new("bash").arg("-c").arg(format!("set -o pipefail; {script}")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

async fn write_keys(g: &Guest, n: usize) -> Vec<(String, Vec<u8>)> {
    use rand::RngCore;
    let mut con = g.redis(None).await;
    let mut rng = rand::thread_rng();
    let mut keys = Vec::new();
    for i in 0..n {
        let mut v = vec![0u8; 1024];
        rng.fill_bytes(&mut v);
        let k = format!("key:{i}");
        let _: () = redis::cmd("SET").arg(&k).arg(&v).query_async(&mut con).await.unwrap();
        keys.push((k, v));
    }
    keys
}

async fn check_keys(g: &Guest, keys: &[(String, Vec<u8>)]) {
    let mut con = g.redis(None).await;
    let n: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(n, keys.len(), "restored key count");
    for (k, v) in keys.iter().step_by(37) {
        let got: Vec<u8> = redis::cmd("GET").arg(k).query_async(&mut con).await.unwrap();
        assert_eq!(&got, v, "{k}");
    }
}

/// What every backup test starts from: a Swift login, an RPC client, a captured conductor topic
/// and a container of its own.
struct Stage {
    swift_url: String,
    token: String,
    c: trove_guest::rpc::client::RpcClient,
    topic: String,
    _conn: lapin::Connection,
    seen: Casts,
    container: String,
}

impl Stage {
    async fn new() -> Stage {
        let (swift_url, token) = swift_login().await;
        let c = client().await;
        let topic = unique("conductor");
        let (_conn, seen) = capture_conductor(&topic).await;
        Stage { swift_url, token, c, topic, _conn, seen, container: unique("backups") }
    }
}

#[tokio::test]
async fn encrypted_segmented_backup_restores_and_a_wrong_key_is_refused() {
    let Stage { swift_url, token, c, topic, _conn, seen, container } = Stage::new().await;
    let key = "trove-backup-key";
    // Small segments: the ~2 MB of random values become several segments and a manifest.
    let a = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic), ("TROVE_GUESTAGENT__BACKUP__AES_CBC_KEY", key), ("TROVE_GUESTAGENT__BACKUP__SEGMENT_MAX_SIZE", "600000")]).await;
    prepare(&c, &a, None, None).await;
    let keys = write_keys(&a, 2000).await;

    let id = new_id();
    cast(&c, &a, "create_backup", json!({"backup_info": backup_info(&id, &container, &swift_url)}), &token).await;
    let done = final_report(&seen, &id, &a).await;
    assert_eq!(done["state"], "COMPLETED", "{done:?}\n{}", a.log());
    let reports = backup_reports(&seen, &id);
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[0]["state"], "BUILDING");
    assert_eq!(reports[0]["instance_id"], json!(a.id));
    assert!(reports[0]["sent"].as_f64().unwrap() < done["sent"].as_f64().unwrap());
    assert_eq!(done["success"], true);
    assert_eq!(done["backup_type"], "full");
    let object = format!("{id}.gz.enc");
    let location = format!("{swift_url}/{container}/{object}");
    assert_eq!(done["location"], json!(location));
    let checksum = done["checksum"].as_str().unwrap().to_owned();

    // Swift holds the segments, and the manifest under the name Trove restores.
    let listing = swift_get(&format!("{swift_url}/{container}"), &token).await.text().await.unwrap();
    let names: Vec<&str> = listing.lines().collect();
    assert!(names.len() >= 4, "expected several segments: {names:?}");
    assert!(names.contains(&object.as_str()));
    for (n, name) in names.iter().filter(|n| **n != object).enumerate() {
        assert_eq!(*name, format!("{id}_{n:08}"));
    }
    let manifest: Value = swift_get(&format!("{location}?multipart-manifest=get"), &token).await.text().await.map(|t| serde_json::from_str(&t).unwrap()).unwrap();
    let md5s: Vec<String> = manifest.as_array().unwrap().iter().map(|s| s["hash"].as_str().unwrap().to_owned()).collect();
    assert_eq!(md5s.len(), names.len() - 1);
    assert_eq!(trove_guest::datastore::archive::backup_checksum(&md5s), checksum);
    let resp = swift_get(&location, &token).await;
    assert_eq!(resp.headers()["etag"].to_str().unwrap().trim_matches('"'), checksum);
    assert_eq!(resp.headers()["x-object-meta-datastore"], "redis");
    assert_eq!(resp.headers()["x-object-meta-datastore-version"], "7.0");
    let stored = resp.bytes().await.unwrap();
    let size_gb = done["size"].as_f64().unwrap();
    assert!((size_gb * 1024f64.powi(3) - stored.len() as f64).abs() < 1.0, "size {size_gb} GB for {} bytes", stored.len());
    // Trove's own restore command (openssl enc -d ... | gzip -d) reads it back into an RDB.
    let rdb = trove_unpack(&stored, Some(key));
    assert_eq!(&rdb[..5], b"REDIS");

    // A new instance from the backup, as the taskmanager prepares it.
    let restore_info = json!({"id": id, "instance_id": a.id, "location": location, "type": "RedisBackup", "checksum": checksum, "storage_driver": "swift", "swift_url": swift_url});
    let b = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic), ("TROVE_GUESTAGENT__BACKUP__AES_CBC_KEY", key)]).await;
    prepare_from(&c, &b, &token, restore_info.clone()).await;
    wait_master(&c, &b).await;
    check_keys(&b, &keys).await;

    // The restored instance's own backup: one segment, copied to its name (no manifest).
    let id2 = new_id();
    cast(&c, &b, "create_backup", json!({"backup_info": backup_info(&id2, &container, &swift_url)}), &token).await;
    let done2 = final_report(&seen, &id2, &b).await;
    assert_eq!(done2["state"], "COMPLETED", "{done2:?}\n{}", b.log());
    let resp = swift_get(done2["location"].as_str().unwrap(), &token).await;
    assert!(resp.headers().get("x-static-large-object").is_none());
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body = resp.bytes().await.unwrap();
    assert_eq!(etag, format!("{:x}", Md5::digest(&body)));
    assert_eq!(done2["checksum"], json!(etag));
    let listing = swift_get(&format!("{swift_url}/{container}"), &token).await.text().await.unwrap();
    assert!(!listing.contains(&format!("{id2}_")), "the segment of a one-segment backup is removed: {listing}");

    // A wrong key: prepare fails with a clear error and installs nothing.
    let w = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic), ("TROVE_GUESTAGENT__BACKUP__AES_CBC_KEY", "not-the-key")]).await;
    prepare_from(&c, &w, &token, restore_info.clone()).await;
    eventually(60, "the wrong key's failure in the log", || async { w.log().contains("aes_cbc_key") }).await;
    assert!(!w.log().contains("not-the-key") && !w.log().contains(key) && !w.log().contains(&token), "a secret in the log");
    let data = std::fs::read_dir(w.dir.path().join("data")).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()).unwrap_or_default();
    assert!(data.iter().all(|f| !f.ends_with(".rdb") && !f.ends_with(".tmp")), "{data:?}");
    assert!(try_call(&c, &w, "get_replication_status", json!({})).await.is_err(), "redis must not serve after a failed restore");

    // A checksum Trove did not record: refused before anything is installed.
    let bad = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic), ("TROVE_GUESTAGENT__BACKUP__AES_CBC_KEY", key)]).await;
    let mut info = restore_info.clone();
    info["checksum"] = json!("0123456789abcdef0123456789abcdef");
    prepare_from(&c, &bad, &token, info).await;
    eventually(60, "the checksum failure in the log", || async { bad.log().contains("fails its checksum") }).await;
    assert!(try_call(&c, &bad, "get_replication_status", json!({})).await.is_err());
}

#[tokio::test]
async fn plain_backup_without_a_key_and_bad_requests() {
    let Stage { swift_url, token, c, topic, _conn, seen, container } = Stage::new().await;
    let a = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic)]).await;
    prepare(&c, &a, None, None).await;
    let keys = write_keys(&a, 300).await;
    let id = new_id();
    cast(&c, &a, "create_backup", json!({"backup_info": backup_info(&id, &container, &swift_url)}), &token).await;
    let done = final_report(&seen, &id, &a).await;
    assert_eq!(done["state"], "COMPLETED", "{}", a.log());
    let location = format!("{swift_url}/{container}/{id}.gz");
    assert_eq!(done["location"], json!(location));
    let body = swift_get(&location, &token).await.bytes().await.unwrap();
    assert_eq!(&trove_unpack(&body, None)[..5], b"REDIS");

    let b = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic)]).await;
    let info = json!({"id": id, "instance_id": a.id, "location": location, "type": "RedisBackup", "checksum": done["checksum"], "storage_driver": "swift", "swift_url": swift_url});
    prepare_from(&c, &b, &token, info).await;
    wait_master(&c, &b).await;
    check_keys(&b, &keys).await;

    // No token in the request: FAILED, with the reason, and nothing written.
    let id3 = new_id();
    c.cast(&a.topic(), "create_backup", args(json!({"backup_info": backup_info(&id3, &container, &swift_url)})), "1.0", None).await.unwrap();
    let failed = final_report(&seen, &id3, &a).await;
    assert_eq!(failed["state"], "FAILED");
    assert_eq!(failed["success"], false);
    // A bad id is refused before anything is reported.
    let e = call_err(&c, &a, "create_backup", json!({"backup_info": backup_info("../x", &container, &swift_url)})).await;
    assert!(e.message.contains("backup_info.id"), "{}", e.message);
    let listing = swift_get(&format!("{swift_url}/{container}"), &token).await.text().await.unwrap();
    assert_eq!(listing.lines().collect::<Vec<_>>(), vec![format!("{id}.gz")]);
    let _ = std::io::stdout().flush();
}

/// A backup asked while Redis already saves (a save point fired) waits for that save and takes
/// its own: Redis refuses `BGSAVE` during an RDB save, which must not fail the backup.
#[tokio::test]
async fn a_backup_during_a_running_save_waits_and_completes() {
    let Stage { swift_url, token, c, topic, _conn, seen, container } = Stage::new().await;
    let a = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic)]).await;
    prepare(&c, &a, None, None).await;
    let keys = write_keys(&a, 2000).await;
    let mut con = a.redis(None).await;
    // Each key costs the save 2 ms: the save runs about 4 s, well past the backup's request.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("rdb-key-save-delay").arg("2000").query_async(&mut con).await.unwrap();
    let _: String = redis::cmd("BGSAVE").query_async(&mut con).await.unwrap();
    let p: String = redis::cmd("INFO").arg("persistence").query_async(&mut con).await.unwrap();
    assert!(p.contains("rdb_bgsave_in_progress:1"), "the save is not running:\n{p}");
    let id = new_id();
    cast(&c, &a, "create_backup", json!({"backup_info": backup_info(&id, &container, &swift_url)}), &token).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("rdb-key-save-delay").arg("0").query_async(&mut con).await.unwrap();
    let done = final_report(&seen, &id, &a).await;
    assert_eq!(done["state"], "COMPLETED", "{done:?}\n{}", a.log());
    let object = swift_get(&format!("{swift_url}/{container}/{id}.gz"), &token).await;
    assert!(object.status().is_success(), "{}", object.status());
    let rdb = trove_unpack(&object.bytes().await.unwrap(), None);
    assert!(rdb.starts_with(b"REDIS"), "not an RDB");
    assert!(rdb.len() > keys.len() * 1024, "the RDB holds {} bytes for {} keys of 1 KiB", rdb.len(), keys.len());
}

/// A restore into a configuration with `appendonly yes`: Redis serves the backup's keys, AOF is
/// on, and a restart (which loads the AOF, not the RDB) still has every key, so the AOF was
/// written from the restored data rather than started empty.
#[tokio::test]
async fn restore_with_aof_on_keeps_the_data_across_a_restart() {
    let Stage { swift_url, token, c, topic, _conn, seen, container } = Stage::new().await;
    let a = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic)]).await;
    prepare(&c, &a, None, None).await;
    let keys = write_keys(&a, 500).await;
    let id = new_id();
    cast(&c, &a, "create_backup", json!({"backup_info": backup_info(&id, &container, &swift_url)}), &token).await;
    let done = final_report(&seen, &id, &a).await;
    assert_eq!(done["state"], "COMPLETED", "{}", a.log());

    let b = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic)]).await;
    let location = format!("{swift_url}/{container}/{id}.gz");
    let info = json!({"id": id, "instance_id": a.id, "location": location, "type": "RedisBackup", "checksum": done["checksum"], "storage_driver": "swift", "swift_url": swift_url});
    let args = json!({
        "packages": null, "databases": [], "memory_mb": 512, "users": [], "device_path": null,
        "mount_point": "/var/lib/redis", "backup_info": info, "config_contents": format!("{}appendonly yes\n", b.config_contents(None)),
        "root_password": null, "overrides": {}, "cluster_config": null, "snapshot": null,
    });
    cast(&c, &b, "prepare", args, &token).await;
    // Redis serves before prepare ends (AOF is turned on after the first start): wait for the end.
    eventually(60, "prepare finished", || async { b.log().contains("prepare finished") }).await;
    check_keys(&b, &keys).await;
    let mut con = b.redis(None).await;
    let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut con).await.unwrap();
    assert_eq!(aof[1], "yes", "AOF is off after the restore");
    let p: String = redis::cmd("INFO").arg("persistence").query_async(&mut con).await.unwrap();
    assert!(p.contains("aof_enabled:1") && p.contains("aof_rewrite_in_progress:0"), "{p}");
    // The RDB goes: a restart can only find the keys in the AOF.
    let dir: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("dir").query_async(&mut con).await.unwrap();
    call(&c, &b, "stop_db", json!({"do_not_start_on_reboot": false})).await;
    std::fs::remove_file(Path::new(&dir[1]).join("dump.rdb")).expect("the restored RDB");
    call(&c, &b, "restart", json!({})).await;
    check_keys(&b, &keys).await;
}

/// An agent killed (SIGKILL) while its backup is BUILDING: the next agent on the same config
/// reports the backup FAILED to the conductor and removes its marker, and Swift holds nothing
/// Trove would restore for it.
#[tokio::test]
async fn a_backup_interrupted_by_an_agent_kill_is_reported_failed_at_the_next_boot() {
    let Stage { swift_url, token, c, topic, _conn, seen, container } = Stage::new().await;
    let mut a = spawn_guest(&c, None, &[("TROVE_GUESTAGENT__CONDUCTOR__TOPIC", &topic)]).await;
    prepare(&c, &a, None, None).await;
    write_keys(&a, 2000).await;
    let mut con = a.redis(None).await;
    // Each key costs the save 2 ms: the backup's snapshot runs about 4 s, BUILDING all along.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("rdb-key-save-delay").arg("2000").query_async(&mut con).await.unwrap();
    let id = new_id();
    cast(&c, &a, "create_backup", json!({"backup_info": backup_info(&id, &container, &swift_url)}), &token).await;
    eventually(30, "the BUILDING report", || async { backup_reports(&seen, &id).iter().any(|r| r["state"] == "BUILDING") }).await;
    let marker = a.dir.path().join("redis.conf.agent.json.backup");
    let text = std::fs::read_to_string(&marker).expect("the backup marker while BUILDING");
    assert!(text.starts_with(&format!("{id} ")) && text.lines().count() == 1, "{text}");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&marker).unwrap().permissions().mode() & 0o777, 0o600);
    }
    a.kill_agent();
    assert_eq!(backup_reports(&seen, &id).len(), 1, "the backup ended before the kill\n{}", a.log());
    let _: () = redis::cmd("CONFIG").arg("SET").arg("rdb-key-save-delay").arg("0").query_async(&mut con).await.unwrap();

    a.start_agent();
    wait_ping(&c, &a).await;
    let failed = final_report(&seen, &id, &a).await;
    assert_eq!(failed["state"], "FAILED", "{failed:?}");
    assert_eq!(failed["success"], false);
    assert_eq!(failed["backup_type"], "full");
    assert_eq!(failed["instance_id"], json!(a.id));
    let reports = backup_reports(&seen, &id);
    assert_eq!(reports.iter().map(|r| r["state"].as_str().unwrap()).collect::<Vec<_>>(), ["BUILDING", "FAILED"], "{reports:?}");
    assert!(reports[0]["sent"].as_f64().unwrap() < failed["sent"].as_f64().unwrap());
    eventually(10, "the marker removed", || async { !marker.exists() }).await;
    assert!(a.log().lines().any(|l| l.contains(&id) && l.contains("interrupted by an agent restart")), "{}", a.log());

    // Nothing Trove would restore: no object under the backup's name, no segment of it either.
    let object = swift_get(&format!("{swift_url}/{container}/{id}.gz"), &token).await;
    assert_eq!(object.status(), reqwest::StatusCode::NOT_FOUND);
    let listing = swift_get(&format!("{swift_url}/{container}"), &token).await.text().await.unwrap();
    assert!(!listing.contains(&id), "{listing}");
}
