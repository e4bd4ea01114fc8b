//! Redis TLS replication (`tls-replication`) through the agent: replicas link to the master's
//! tls-port with their own client certificate (the master requires one), a promote re-points
//! everyone over TLS, and a guest refuses a master it cannot or must not reach as offered.
//! Certificates are made here with the openssl CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use crate::flows::create;
use crate::harness::*;
use crate::tls::openssl;

const PW: &str = "tls repl pa'ss";

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    /// (certificate, key) naming 127.0.0.1 in a SAN.
    san: (PathBuf, PathBuf),
    /// (certificate, key) with only a CN, as one certificate shared by every node.
    shared: (PathBuf, PathBuf),
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=trove-redis-test-ca"]);
    let eku = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n";
    std::fs::write(d.join("san.ext"), format!("subjectAltName=IP:127.0.0.1\n{eku}")).unwrap();
    std::fs::write(d.join("shared.ext"), eku).unwrap();
    for name in ["san", "shared"] {
        openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", "/CN=trove-redis-node"]);
        openssl(d, &[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &format!("{name}.pem"), "-days", "2",
            "-extfile", &format!("{name}.ext"),
        ]);
    }
    Pki {
        ca: d.join("ca.pem"),
        san: (d.join("san.pem"), d.join("san.key")),
        shared: (d.join("shared.pem"), d.join("shared.key")),
        _dir: dir,
    }
}

/// Agent settings for a TLS node: its own tls-port, certificates, and TLS replication.
fn tls_env(pki: &Pki, cert: &(PathBuf, PathBuf), verify_hostname: bool) -> (u16, Vec<(String, String)>) {
    let port = free_port();
    let p = |p: &Path| p.display().to_string();
    let env = vec![
        ("TROVE_GUESTAGENT__REDIS__TLS_PORT".into(), port.to_string()),
        ("TROVE_GUESTAGENT__REDIS__TLS_CERT_FILE".into(), p(&cert.0)),
        ("TROVE_GUESTAGENT__REDIS__TLS_KEY_FILE".into(), p(&cert.1)),
        ("TROVE_GUESTAGENT__REDIS__TLS_CA_CERT_FILE".into(), p(&pki.ca)),
        ("TROVE_GUESTAGENT__REDIS__TLS_VERIFY_HOSTNAME".into(), verify_hostname.to_string()),
        ("TROVE_GUESTAGENT__REPLICATION__TLS_REPLICATION".into(), "true".into()),
    ];
    (port, env)
}

async fn spawn_with(c: &trove_guest::rpc::client::RpcClient, env: &[(String, String)]) -> Guest {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_guest(c, None, &env).await
}

/// A client of a TLS port; `cert`: present this client certificate.
async fn tls_ping(port: u16, pki: &Pki, cert: Option<&(PathBuf, PathBuf)>) -> Result<String, String> {
    let certs = redis::TlsCertificates {
        client_tls: cert.map(|(c, k)| redis::ClientTlsConfig { client_cert: std::fs::read(c).unwrap(), client_key: std::fs::read(k).unwrap() }),
        root_cert: Some(std::fs::read(&pki.ca).unwrap()),
    };
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::TcpTls { host: "127.0.0.1".into(), port, insecure: false, tls_params: None },
        redis: redis::RedisConnectionInfo { password: Some(PW.into()), ..Default::default() },
    };
    let client = redis::Client::build_with_tls(info, certs).map_err(|e| e.to_string())?;
    let attempt = async {
        let mut con = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        redis::cmd("PING").query_async::<String>(&mut con).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

async fn replication_of(g: &Guest) -> trove_guest::datastore::redis::info::Replication {
    info(&mut g.redis(Some(PW)).await, "replication").await.replication().unwrap()
}

async fn linked_to(g: &Guest, master_tls_port: u16) -> bool {
    let r = replication_of(g).await;
    r.master_port == Some(master_tls_port) && r.linked()
}

#[tokio::test]
async fn tls_replication_create_promote_and_refusals() {
    let pki = make_pki();
    let c = client().await;
    let mut guests = Vec::new();
    let mut tls_ports = Vec::new();
    for _ in 0..3 {
        let (port, env) = tls_env(&pki, &pki.san, false);
        guests.push(spawn_with(&c, &env).await);
        tls_ports.push(port);
    }
    for g in &guests {
        prepare(&c, g, Some(PW), None).await;
    }
    let (mut tm, _inv) = taskmanager(&guests).await;
    let (m, r1, r2) = (&guests[0], &guests[1], &guests[2]);
    let mut mc = m.redis(Some(PW)).await;
    for n in 0..500 {
        let _: () = mc.set(format!("k{n}"), n).await.unwrap();
    }

    // The master advertises its TLS port; it refuses TLS clients without a certificate.
    let context = call(&c, m, "get_replica_context", json!({})).await;
    assert_eq!(context["master"]["port"], json!(tls_ports[0]), "{context}");
    assert_eq!(context["master"]["tls"], json!(true), "{context}");
    assert!(tls_ping(tls_ports[0], &pki, None).await.is_err(), "the master's tls-port accepted a client without a certificate");
    assert_eq!(tls_ping(tls_ports[0], &pki, Some(&pki.san)).await.as_deref(), Ok("PONG"));

    // Create: both replicas link to the TLS port with tls-replication on, persisted.
    tm.create_replicas(create(m, &[r1, r2])).await.unwrap();
    for r in [r1, r2] {
        assert!(linked_to(r, tls_ports[0]).await, "{} is not linked to the master's TLS port: {:?}", r.id, replication_of(r).await);
        let conf = std::fs::read_to_string(r.config_file()).unwrap();
        assert!(conf.contains("\ntls-replication yes\n"), "{conf}");
        assert!(conf.contains(&format!("\nreplicaof 127.0.0.1 {}\n", tls_ports[0])), "{conf}");
        let tls_repl: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("tls-replication").query_async(&mut r.redis(Some(PW)).await).await.unwrap();
        assert_eq!(tls_repl[1], "yes");
    }
    let _: () = mc.set("after-create", "1").await.unwrap();
    for r in [r1, r2] {
        eventually(10, "data over TLS on every replica", || async {
            let mut con = r.redis(Some(PW)).await;
            con.get::<_, Option<String>>("after-create").await.unwrap().is_some() && con.get::<_, Option<i64>>("k499").await.unwrap() == Some(499)
        })
        .await;
    }
    assert!(!m.log().contains(PW) && !r1.log().contains(PW), "the password reached a log");

    // Promote: the old master and the other replica follow the new master's TLS port, partially.
    let full_before = info(&mut r1.redis(Some(PW)).await, "stats").await.stat("sync_full").unwrap_or(0);
    tm.promote(&r1.id).await.unwrap();
    for g in [m, r2] {
        eventually(20, "linked to the new master over TLS", || linked_to(g, tls_ports[1])).await;
        assert!(std::fs::read_to_string(g.config_file()).unwrap().contains("\ntls-replication yes\n"));
    }
    let r1conf = std::fs::read_to_string(r1.config_file()).unwrap();
    assert!(!r1conf.contains("tls-replication") && !r1conf.contains("\nreplicaof"), "the new master kept replica settings:\n{r1conf}");
    let full_after = info(&mut r1.redis(Some(PW)).await, "stats").await.stat("sync_full").unwrap_or(0);
    assert_eq!(full_before, full_after, "the promote caused a full resync");
    let _: () = r1.redis(Some(PW)).await.set("after-promote", "1").await.unwrap();
    eventually(10, "writes on the new master reach the old one", || async {
        m.redis(Some(PW)).await.get::<_, Option<String>>("after-promote").await.unwrap().is_some()
    })
    .await;

    // Refusals. p: a plain guest; n: a TLS master with a certificate without SAN (shared style);
    // v: a TLS guest that checks host names.
    let p = spawn_guest(&c, None, &[]).await;
    let (_, n_env) = tls_env(&pki, &pki.shared, false);
    let n = spawn_with(&c, &n_env).await;
    let (_, v_env) = tls_env(&pki, &pki.san, true);
    let v = spawn_with(&c, &v_env).await;
    for g in [&p, &n, &v] {
        prepare(&c, g, Some(PW), None).await;
    }
    let n_ctx = call(&c, &n, "get_replica_context", json!({})).await;
    let p_ctx = call(&c, &p, "get_replica_context", json!({})).await;
    assert!(p_ctx["master"].get("tls").is_none(), "a plain master must not advertise TLS: {p_ctx}");
    let cases: [(&Guest, &serde_json::Value, &str); 3] = [
        (&p, &n_ctx, "no TLS certificates"),
        (&v, &p_ctx, "offers plain replication"),
        (&v, &n_ctx, "certificate"),
    ];
    for (g, context, want) in cases {
        let before = std::fs::read(g.config_file()).unwrap();
        let failure = call_err(&c, g, "attach_replica", json!({"replica_info": context, "slave_config": null})).await;
        assert!(failure.message.contains(want), "{} attaching to {}: {}", g.id, context["master"]["port"], failure.message);
        assert_eq!(std::fs::read(g.config_file()).unwrap(), before, "redis.conf of {} changed on a refused attach", g.id);
        assert_eq!(call(&c, g, "get_replication_status", json!({})).await["role"], "master");
        println!("redis_tls: refused as expected: {}", failure.message);
    }
    // v checks host names and accepts a master whose certificate names 127.0.0.1.
    let r1_ctx = call(&c, r1, "get_replica_context", json!({})).await;
    call(&c, &v, "attach_replica", json!({"replica_info": r1_ctx, "slave_config": null})).await;
    assert!(linked_to(&v, tls_ports[1]).await);
    println!("redis_tls: create, promote and host-name-checked attach over TLS; 3 refusals");
}
