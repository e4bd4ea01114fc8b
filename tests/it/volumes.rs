//! Data volumes on real loop devices through a real agent: prepare formats and mounts, data survives, resize_fs grows, mount/unmount, hostile input.

use std::path::{Path, PathBuf};
use std::process::Command;

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::harness::*;

/// A loop device over a sparse file; on drop, whatever is mounted from it is unmounted and it is detached.
struct Loop {
    dev: String,
    file: PathBuf,
}

impl Loop {
    fn new(file: PathBuf, mb: u64) -> Loop {
        std::fs::File::create(&file).unwrap().set_len(mb << 20).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&file).output();
        match out {
            Ok(o) if o.status.success() => Loop { dev: String::from_utf8_lossy(&o.stdout).trim().to_owned(), file },
            // Not a skip: this test needs root and loop devices.
            Ok(o) => panic!("loop devices are unavailable on this host (losetup -f --show: {}); the volume tests need root and /dev/loop*", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => panic!("loop devices are unavailable on this host (cannot run losetup: {e}); the volume tests need root and /dev/loop*"),
        }
    }

    fn grow(&self, mb: u64) {
        std::fs::OpenOptions::new().write(true).open(&self.file).unwrap().set_len(mb << 20).unwrap();
        sh("losetup", &["-c", &self.dev]);
    }

    fn uuid(&self) -> String {
        blkid(&self.dev, "UUID").expect("a file system UUID")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for target in mounted_targets(&self.dev).into_iter().rev() {
            let _ = Command::new("umount").arg(&target).status();
            if mounted_targets(&self.dev).contains(&target) {
                let _ = Command::new("umount").arg("-l").arg(&target).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blkid(dev: &str, key: &str) -> Option<String> {
    let out = Command::new("blkid").args(["-p", "-o", "value", "-s", key, dev]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

fn mounted_targets(dev: &str) -> Vec<String> {
    let out = Command::new("findmnt").args(["-rn", "-o", "TARGET", "--source", dev]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// The source mounted at `target`, if any.
fn source_at(target: &Path) -> Option<String> {
    let out = Command::new("findmnt").args(["-rn", "-o", "SOURCE", "--mountpoint"]).arg(target).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().last().map(str::to_owned)
}

/// Whether this process may grow a mounted ext file system (bit 24 of the effective capabilities).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

fn prepare_args(g: &Guest, device: &str, mount_point: &Path, snapshot: Option<Value>) -> Value {
    json!({
        "packages": null, "databases": [], "memory_mb": 512, "users": [], "device_path": device,
        "mount_point": mount_point, "backup_info": null, "config_contents": g.config_contents(None),
        "root_password": null, "overrides": {}, "cluster_config": null, "snapshot": snapshot,
    })
}

fn volume_env(root: &Path) -> Vec<(String, String)> {
    vec![
        ("TROVE_GUESTAGENT__VOLUME__ALLOWED_MOUNT_ROOTS".into(), root.display().to_string()),
        ("TROVE_GUESTAGENT__VOLUME__FSTAB".into(), root.join("fstab").display().to_string()),
    ]
}

async fn refused(c: &trove_guest::rpc::client::RpcClient, g: &Guest, method: &str, a: Value, expect: &str) {
    let f = call_err(c, g, method, a.clone()).await;
    assert!(f.message.contains(expect), "{method} {a}: expected '{expect}', got {}", f.message);
}

async fn total_gb(c: &trove_guest::rpc::client::RpcClient, g: &Guest) -> f64 {
    let s = call(c, g, "get_filesystem_stats", json!({"fs_path": null})).await;
    s["total"].as_f64().unwrap()
}

#[tokio::test]
async fn prepare_formats_mounts_and_keeps_redis_data_on_the_volume() {
    // Declared first, dropped last: the guests stop before their volumes are unmounted.
    let root = tempfile::tempdir().unwrap();
    let vol = Loop::new(root.path().join("vol.img"), 64);
    let busy = Loop::new(root.path().join("busy.img"), 32);
    let rvol = Loop::new(root.path().join("replica.img"), 64);
    let mp = root.path().join("redis");
    let fstab = root.path().join("fstab");
    std::fs::write(&fstab, "# test fstab\n").unwrap();
    let c = client().await;
    let env = volume_env(root.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut g = spawn_guest(&c, None, &env).await;

    // Hostile input: clear errors, nothing formatted, mounted or written.
    sh("mkfs", &["-t", "ext4", "-q", &busy.dev]);
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    sh("mount", &[&busy.dev, elsewhere.to_str().unwrap()]);
    let a = |d: &str, m: &Path| prepare_args(&g, d, m, None);
    refused(&c, &g, "prepare", a("/nonexistent/vdz", &mp), "does not exist").await;
    refused(&c, &g, "prepare", a("/dev/null", &mp), "is not a block device").await;
    refused(&c, &g, "prepare", a(&busy.dev, &mp), "is in use: mounted at").await;
    refused(&c, &g, "prepare", a(&vol.dev, Path::new("/etc/redis-vol")), "outside the allowed mount roots").await;
    refused(&c, &g, "prepare", a(&vol.dev, Path::new("relative/dir")), "not an absolute path").await;
    refused(&c, &g, "prepare", a(&vol.dev, &root.path().join("redis/../../x")), "'..'").await;
    refused(&c, &g, "prepare", a(&vol.dev, &elsewhere), "already has").await;
    refused(&c, &g, "mount_volume", json!({"device_path": vol.dev, "mount_point": mp}), "holds no file system").await;
    refused(&c, &g, "resize_fs", json!({"device_path": vol.dev, "mount_point": mp}), "holds no file system").await;
    assert_eq!(blkid(&vol.dev, "TYPE"), None, "a refused call formatted the device");
    assert!(mounted_targets(&vol.dev).is_empty());
    assert_eq!(mounted_targets(&busy.dev), vec![elsewhere.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&fstab).unwrap(), "# test fstab\n");
    assert!(g.redis_pid().is_none(), "a refused prepare started redis");

    // prepare: formatted with Trove's default (ext4), mounted, recorded, Redis's data there.
    call(&c, &g, "prepare", a(&vol.dev, &mp)).await;
    assert_eq!(blkid(&vol.dev, "TYPE").as_deref(), Some("ext4"));
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()));
    let uuid = vol.uuid();
    let line = format!("UUID={uuid}\t{}\text4\tdefaults,noatime\t0\t0", mp.display());
    assert_eq!(std::fs::read_to_string(&fstab).unwrap(), format!("# test fstab\n{line}\n"));
    let mut r = g.redis(None).await;
    let dir: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("dir").query_async(&mut r).await.unwrap();
    assert_eq!(dir[1], mp.display().to_string());
    let _: () = r.set("k", "on the volume").await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("appendonly").arg("yes").query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut r).await.unwrap();
    assert!(mp.join("dump.rdb").is_file(), "no RDB on the volume");
    eventually(10, "the AOF on the volume", || async { mp.join("appendonlydir").is_dir() || mp.join("appendonly.aof").is_file() }).await;
    let small = total_gb(&c, &g).await;
    assert!(small > 0.0 && small < 0.07, "stats do not report the 64 MB volume: {small}");

    // A retried prepare and an agent restart: no new file system, the data survives.
    call(&c, &g, "prepare", a(&vol.dev, &mp)).await;
    assert_eq!(vol.uuid(), uuid, "the second prepare reformatted the volume");
    assert_eq!(std::fs::read_to_string(&fstab).unwrap().matches(&*mp.display().to_string()).count(), 1);
    let v: Option<String> = g.redis(None).await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("on the volume"));
    g.stop_agent();
    g.start_agent();
    wait_ping(&c, &g).await;
    eventually(30, "redis back after the agent restart", || async { g.redis_pid().is_some() }).await;

    // unmount refused while Redis runs from it, and for another device; changes nothing.
    refused(&c, &g, "unmount_volume", json!({"device_path": vol.dev, "mount_point": mp}), "busy").await;
    refused(&c, &g, "unmount_volume", json!({"device_path": busy.dev, "mount_point": mp}), &format!("not {}", busy.dev)).await;
    refused(&c, &g, "mount_volume", json!({"device_path": busy.dev, "mount_point": mp}), "in use").await;
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()));

    // resize_fs online: the device grows, then the mounted file system with it. The kernel's
    // online grow needs CAP_SYS_RESOURCE; without it the agent must say so and change nothing.
    vol.grow(128);
    let online = try_call(&c, &g, "resize_fs", json!({"device_path": vol.dev, "mount_point": mp, "online": true})).await;
    if has_cap_sys_resource() {
        online.expect("online resize_fs");
        assert!(total_gb(&c, &g).await > 0.1, "online resize_fs did not grow the file system");
    } else {
        let e = format!("{:?}", online.expect_err("online resize without CAP_SYS_RESOURCE"));
        assert!(e.contains("CAP_SYS_RESOURCE") && e.contains("unmount_volume"), "{e}");
        assert_eq!(total_gb(&c, &g).await, small);
    }
    let v: Option<String> = g.redis(None).await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("on the volume"));

    // Trove's offline resize: stop, unmount, resize_fs, mount, restart. Redis never starts on the bare directory.
    vol.grow(160);
    call(&c, &g, "stop_db", json!({"do_not_start_on_reboot": false})).await;
    call(&c, &g, "unmount_volume", json!({"device_path": vol.dev, "mount_point": mp})).await;
    assert!(mounted_targets(&vol.dev).is_empty());
    refused(&c, &g, "restart", json!({}), "is not mounted").await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", g.port)).is_err(), "redis started on the bare mount point");
    call(&c, &g, "resize_fs", json!({"device_path": vol.dev, "mount_point": mp})).await;
    assert_eq!(vol.uuid(), uuid);
    call(&c, &g, "mount_volume", json!({"device_path": vol.dev, "mount_point": mp, "write_to_fstab": true})).await;
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()));
    let grown = total_gb(&c, &g).await;
    assert!(grown > 0.12, "resize_fs did not grow the file system: {small} -> {grown}");
    call(&c, &g, "restart", json!({})).await;
    let v: Option<String> = g.redis(None).await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("on the volume"));
    assert_eq!(std::fs::read_to_string(&fstab).unwrap().matches(&*mp.display().to_string()).count(), 1);

    // A replica gets its own volume: prepare with its device and the master's snapshot.
    let rmp = root.path().join("replica");
    let rg = spawn_guest(&c, None, &env).await;
    let snapshot = call(&c, &g, "get_replication_snapshot", json!({"snapshot_info": {"id": null, "replica_count": 1}, "replica_source_config": null})).await;
    let mut snap = snapshot.clone();
    snap["config"] = json!("slave-read-only yes\n");
    call(&c, &rg, "prepare", prepare_args(&rg, &rvol.dev, &rmp, Some(snap))).await;
    assert_eq!(source_at(&rmp).as_deref(), Some(rvol.dev.as_str()));
    assert_ne!(rvol.uuid(), uuid);
    eventually(30, "the replica has the master's data", || async {
        let v: Option<String> = rg.redis(None).await.get("k").await.unwrap_or(None);
        v.as_deref() == Some("on the volume")
    })
    .await;
    let _: () = redis::cmd("SAVE").query_async(&mut rg.redis(None).await).await.unwrap();
    assert!(rmp.join("dump.rdb").is_file(), "the replica's RDB is not on its own volume");
    drop(rg);
    drop(g);
}

/// Thaws `mount_point` when dropped (a failed test must not leave a frozen file system behind).
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).output();
    }
}

/// Writes a file on `dir` in a thread; the receiver hears when the write and its fsync returned.
fn writer(dir: &Path, name: &str) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.join(name);
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut f, b"during the snapshot").unwrap();
        f.sync_all().unwrap();
        let _ = tx.send(());
    });
    rx
}

#[tokio::test]
async fn snapshot_backup_freezes_and_thaws_the_volume() {
    let root = tempfile::tempdir().unwrap();
    let vol = Loop::new(root.path().join("vol.img"), 64);
    let mp = root.path().join("redis");
    let _thaw = Thaw(mp.clone());
    let c = client().await;
    let mut env = volume_env(root.path());
    env.push(("TROVE_GUESTAGENT__BACKUP__FREEZE_TIMEOUT".into(), "4".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Without a volume there is nothing to freeze: said plainly.
    let bare = spawn_guest(&c, None, &env).await;
    prepare(&c, &bare, None, None).await;
    refused(&c, &bare, "pre_create_backup", json!({}), "no data volume").await;
    drop(bare);

    let g = spawn_guest(&c, None, &env).await;
    call(&c, &g, "prepare", prepare_args(&g, &vol.dev, &mp, None)).await;
    let _: () = g.redis(None).await.set("k", "in the snapshot").await.unwrap();

    // pre_create_backup: a fresh RDB with the data, then writes to the volume block.
    assert_eq!(call(&c, &g, "pre_create_backup", json!({})).await, json!({}));
    let rdb = std::fs::read(mp.join("dump.rdb")).expect("an RDB on the volume");
    assert!(rdb.windows(15).any(|w| w == b"in the snapshot"), "the RDB lacks the last write");
    let done = writer(&mp, "blocked");
    assert!(done.recv_timeout(std::time::Duration::from_millis(800)).is_err(), "a write went through a frozen file system");
    // Redis answers reads while frozen.
    let v: Option<String> = g.redis(None).await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("in the snapshot"));

    // post_create_backup: thawed, the blocked write finishes; a second post is harmless.
    assert_eq!(call(&c, &g, "post_create_backup", json!({})).await, json!({}));
    done.recv_timeout(std::time::Duration::from_secs(5)).expect("the write did not finish after the thaw");
    assert_eq!(call(&c, &g, "post_create_backup", json!({})).await, json!({}));
    let out = Command::new("fsfreeze").arg("-u").arg(&mp).output().unwrap();
    assert!(!out.status.success(), "the file system was still frozen after post_create_backup");

    // No post_create_backup: the safety timer thaws after freeze_timeout (4 s), and says so.
    call(&c, &g, "pre_create_backup", json!({})).await;
    let started = std::time::Instant::now();
    let done = writer(&mp, "timer");
    assert!(done.recv_timeout(std::time::Duration::from_secs(2)).is_err(), "not frozen by the second pre_create_backup");
    done.recv_timeout(std::time::Duration::from_secs(10)).expect("the safety timer did not thaw the volume");
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "thawed before the timeout");
    eventually(5, "the thaw is logged", || async { g.log().contains("the data volume was thawed") }).await;
    drop(g);
}

/// `fstype = "xfs"`: prepare formats xfs (without the ext-only `-m 5`), Redis's data lives there,
/// and resize_fs grows it online and offline (xfs grows only while mounted, so offline the agent
/// mounts it aside); the file system is never recreated.
#[tokio::test]
async fn xfs_volume_formats_and_grows_online_and_offline() {
    let root = tempfile::tempdir().unwrap();
    // mkfs.xfs refuses file systems under 300 MB.
    let vol = Loop::new(root.path().join("xfs.img"), 320);
    let mp = root.path().join("redis");
    let c = client().await;
    let mut env = volume_env(root.path());
    env.push(("TROVE_GUESTAGENT__VOLUME__FSTYPE".into(), "xfs".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let g = spawn_guest(&c, None, &env).await;
    assert!(Command::new("mkfs.xfs").arg("-V").output().is_ok_and(|o| o.status.success()), "mkfs.xfs is missing: install xfsprogs (scripts/services.sh does)");

    call(&c, &g, "prepare", prepare_args(&g, &vol.dev, &mp, None)).await;
    assert_eq!(blkid(&vol.dev, "TYPE").as_deref(), Some("xfs"));
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()));
    let uuid = vol.uuid();
    let _: () = g.redis(None).await.set("k", "on xfs").await.unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut g.redis(None).await).await.unwrap();
    assert!(mp.join("dump.rdb").is_file(), "no RDB on the xfs volume");
    let small = total_gb(&c, &g).await;

    vol.grow(480);
    call(&c, &g, "resize_fs", json!({"device_path": vol.dev, "mount_point": mp, "online": true})).await;
    let online = total_gb(&c, &g).await;
    assert!(online > small + 0.1, "online xfs_growfs did not grow: {small} -> {online}");

    vol.grow(640);
    call(&c, &g, "stop_db", json!({"do_not_start_on_reboot": false})).await;
    call(&c, &g, "unmount_volume", json!({"device_path": vol.dev, "mount_point": mp})).await;
    assert!(mounted_targets(&vol.dev).is_empty());
    call(&c, &g, "resize_fs", json!({"device_path": vol.dev, "mount_point": mp})).await;
    assert!(mounted_targets(&vol.dev).is_empty(), "the offline resize left the volume mounted");
    call(&c, &g, "mount_volume", json!({"device_path": vol.dev, "mount_point": mp, "write_to_fstab": true})).await;
    call(&c, &g, "restart", json!({})).await;
    let offline = total_gb(&c, &g).await;
    assert!(offline > online + 0.1, "offline xfs resize did not grow: {online} -> {offline}");
    assert_eq!(vol.uuid(), uuid, "the file system was recreated");
    let v: Option<String> = g.redis(None).await.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("on xfs"));
    drop(g);
}

/// Trove's `rebuild`: a new root disk (no redis.conf, no agent state, a fresh fstab) and the volume
/// back unmounted. The agent, given the volume as Trove's `[redis] device_path`, mounts it at
/// start-up before it reads its state, which lives on it (as in the guest image): Redis serves the
/// data again, and the `rebuild` cast finds it. A blank device is left to prepare; a device
/// mounted elsewhere is left alone, the agent still starts, and `rebuild` is refused.
#[tokio::test]
async fn the_agent_mounts_its_volume_at_start_up_after_a_rebuild() {
    let root = tempfile::tempdir().unwrap();
    let vol = Loop::new(root.path().join("vol.img"), 64);
    let mp = root.path().join("redis");
    let fstab = root.path().join("fstab");
    let new_fstab = || std::fs::write(&fstab, "# a new image's fstab\n").unwrap();
    new_fstab();
    let c = client().await;
    let mut env = volume_env(root.path());
    env.extend([
        ("TROVE_GUESTAGENT__REDIS__CONFIG_FILE".to_owned(), mp.join("redis.conf").display().to_string()),
        ("TROVE_GUESTAGENT__REDIS__DATA_DIR".to_owned(), mp.display().to_string()),
        ("TROVE_GUESTAGENT__VOLUME__DEVICE_PATH".to_owned(), vol.dev.clone()),
        ("TROVE_GUESTAGENT__VOLUME__MOUNT_POINT".to_owned(), mp.display().to_string()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // First boot: the volume is blank, so the start-up mount leaves it to prepare.
    let mut g = spawn_guest(&c, None, &env).await;
    assert_eq!(blkid(&vol.dev, "TYPE"), None, "formatted at start-up");
    assert!(mounted_targets(&vol.dev).is_empty());
    assert!(g.log().contains("prepare formats and mounts it"), "{}", g.log());
    call(&c, &g, "prepare", prepare_args(&g, &vol.dev, &mp, None)).await;
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()));
    assert!(mp.join("redis.conf.agent.json").is_file(), "the agent's state is not on the volume");
    let mut r = g.redis(None).await;
    for i in 0..100 {
        let _: () = r.set(format!("k{i}"), i).await.unwrap();
    }
    let uuid = vol.uuid();

    // The rebuild: Redis and the agent stop, the volume is unmounted, the root disk is new.
    call(&c, &g, "stop_db", json!({"do_not_start_on_reboot": false})).await;
    g.stop_agent();
    sh("umount", &[mp.to_str().unwrap()]);
    new_fstab();
    assert!(!mp.join("redis.conf.agent.json").exists());

    // The new image's agent: the volume mounted before the state is read, Redis back on its data.
    let before = g.log().len();
    g.start_agent();
    wait_ping(&c, &g).await;
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()), "the volume was not mounted at start-up");
    assert!(g.log()[before..].contains("mounted the data volume at start-up"), "{}", &g.log()[before..]);
    let line = format!("UUID={uuid}\t{}\text4\tdefaults,noatime\t0\t0", mp.display());
    assert_eq!(std::fs::read_to_string(&fstab).unwrap(), format!("# a new image's fstab\n{line}\n"));
    assert_eq!(vol.uuid(), uuid, "the volume was reformatted");
    eventually(30, "redis serves the volume's data after start-up", || async {
        let Ok(mut r) = tokio::time::timeout(std::time::Duration::from_secs(2), g.redis(None)).await else { return false };
        let n: usize = redis::cmd("DBSIZE").query_async(&mut r).await.unwrap_or(0);
        n == 100
    })
    .await;
    // Trove's rebuild cast on the new guest: Redis with Trove's configuration, on the same data.
    let a = json!({"ds_version": "7.0", "config_contents": g.config_contents(None), "config_overrides": {}});
    c.cast(&g.topic(), "rebuild", args(a), "1.0", None).await.unwrap();
    let rebuilt = |l: &str| l.contains("method=rebuild") && l.contains("request done");
    eventually(60, "the rebuild cast is done", || async { g.log()[before..].lines().any(rebuilt) }).await;
    assert_eq!(call(&c, &g, "get_replication_status", json!({})).await["role"], "master");
    let v: Option<String> = g.redis(None).await.get("k42").await.unwrap();
    assert_eq!(v.as_deref(), Some("42"));
    assert_eq!(source_at(&mp).as_deref(), Some(vol.dev.as_str()));

    // A device mounted elsewhere is left alone at start-up; the agent starts, Redis does not.
    call(&c, &g, "stop_db", json!({"do_not_start_on_reboot": false})).await;
    g.stop_agent();
    sh("umount", &[mp.to_str().unwrap()]);
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    sh("mount", &[&vol.dev, elsewhere.to_str().unwrap()]);
    let before = g.log().len();
    g.start_agent();
    wait_ping(&c, &g).await;
    assert_eq!(mounted_targets(&vol.dev), vec![elsewhere.display().to_string()]);
    let log = g.log()[before..].to_owned();
    assert!(log.contains("the data volume was not mounted at start-up") && log.contains("is in use: mounted at"), "{log}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", g.port)).is_err(), "redis started without its volume");
    // Nor does Trove's rebuild start Redis on the directory beneath the mount point.
    let a = json!({"ds_version": "7.0", "config_contents": g.config_contents(None), "config_overrides": {}});
    refused(&c, &g, "rebuild", a, &format!("the data volume {} holds a file system but is not mounted at", vol.dev)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", g.port)).is_err(), "rebuild started redis without its volume");
    assert!(!mp.join("redis.conf").exists(), "a refused rebuild wrote redis.conf");
    drop(g);
}
