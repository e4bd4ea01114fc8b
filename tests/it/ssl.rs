//! Trove's client TLS (`ssl_show`, `ssl_action`, `ssl_rollback`) on a master and its replica:
//! basic, enforced, mtls and a rollback, with real TLS clients, the plaintext port refused when
//! enforced, and the replication link carrying writes across every step. Refusals change nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::flows::create;
use crate::harness::*;
use crate::tls::openssl;

const PW: &str = "ssl pa'ss";

/// A CA and one node certificate (SAN 127.0.0.1), as Trove's container: PEM texts.
struct Pki {
    _dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
    /// A client certificate signed by the CA: (certificate, key) PEM.
    client: (String, String),
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=trove-ssl-test-ca",
        ],
    );
    let eku = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n";
    std::fs::write(
        d.join("node.ext"),
        format!("subjectAltName=DNS:db.example.net,IP:127.0.0.1\n{eku}"),
    )
    .unwrap();
    std::fs::write(d.join("client.ext"), eku).unwrap();
    for (name, cn) in [("node", "db.example.net"), ("client", "app")] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    let r = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
    Pki {
        ca: r("ca.pem"),
        cert: r("node.pem"),
        key: r("node.key"),
        client: (r("client.pem"), r("client.key")),
        _dir: dir,
    }
}

impl Pki {
    fn container(&self) -> Value {
        json!({"private_key": self.key, "certificate": self.cert, "ca": self.ca})
    }
}

/// A TLS connection to `port`; `client_cert`: present the client certificate.
async fn tls_con(
    port: u16,
    pki: &Pki,
    client_cert: bool,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let certs = redis::TlsCertificates {
        client_tls: client_cert.then(|| redis::ClientTlsConfig {
            client_cert: pki.client.0.clone().into_bytes(),
            client_key: pki.client.1.clone().into_bytes(),
        }),
        root_cert: Some(pki.ca.clone().into_bytes()),
    };
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::TcpTls {
            host: "127.0.0.1".into(),
            port,
            insecure: false,
            tls_params: None,
        },
        redis: redis::RedisConnectionInfo {
            password: Some(PW.into()),
            ..Default::default()
        },
    };
    let client = redis::Client::build_with_tls(info, certs).map_err(|e| e.to_string())?;
    let attempt = async {
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        Ok(con)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// How many of `n` plaintext connections to `port` were refused at connect.
async fn plain_refusals(port: u16, n: usize) -> usize {
    let mut refused = 0;
    for _ in 0..n {
        if let Err(e) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            refused += 1;
        }
    }
    refused
}

/// A plaintext PING works.
async fn plain_ok(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://:{}@127.0.0.1:{port}/", urlencode(PW)))
    else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut con) => redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Writes `key` on the master and waits for the replica to hold it (both over TLS with the client certificate).
async fn replicates(m_tls: u16, r_tls: u16, pki: &Pki, key: &str) {
    let mut mc = tls_con(m_tls, pki, true).await.unwrap();
    let _: () = mc.set(key, "v").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut rc = tls_con(r_tls, pki, true).await.unwrap();
        let got: Option<String> = rc.get(key).await.unwrap();
        if got.as_deref() == Some("v") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} did not reach the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ssl_dir(g: &Guest) -> PathBuf {
    let dir = g.config_file().parent().unwrap().to_path_buf();
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".ssl"))
        .unwrap_or_else(|| dir.join("none.ssl"))
}

fn modes_0600(dir: &Path) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        assert_eq!(
            e.metadata().unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            e.path().display()
        );
        n += 1;
    }
    n
}

async fn action(c: &trove_guest::rpc::client::RpcClient, g: &Guest, mode: &str, pki: &Pki) {
    let out = call(
        c,
        g,
        "ssl_action",
        json!({"mode": mode, "container": pki.container(), "enable": true, "disable": null}),
    )
    .await;
    assert_eq!(out, json!({"restart_required": false}));
}

#[tokio::test]
async fn ssl_modes_rollback_and_replication() {
    let pki = make_pki();
    let c = client().await;
    let (m_tls, r_tls) = (free_port(), free_port());
    let mut guests = Vec::new();
    for tls in [m_tls, r_tls] {
        let tls = tls.to_string();
        guests.push(spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REDIS__TLS_PORT", &tls)]).await);
    }
    for g in &guests {
        prepare(&c, g, Some(PW), None).await;
    }
    let (mut tm, _inv) = taskmanager(&guests).await;
    let (m, r) = (&guests[0], &guests[1]);
    tm.create_replicas(create(m, &[r])).await.unwrap();
    assert_eq!(
        call(&c, m, "ssl_show", json!({})).await,
        json!({"status": "off"})
    );

    // Refusals: nothing changes.
    let before = std::fs::read_to_string(m.config_file()).unwrap();
    let both = call_err(
        &c,
        m,
        "ssl_action",
        json!({"mode": "basic", "container": pki.container(), "enable": true, "disable": true}),
    )
    .await;
    assert_eq!(
        (both.class.as_str(), both.message.as_str()),
        ("BadRequest", "Cannot enable and disable ssl")
    );
    let mode = call_err(
        &c,
        m,
        "ssl_action",
        json!({"mode": "mutual", "container": pki.container(), "enable": true, "disable": false}),
    )
    .await;
    assert!(
        mode.message
            .contains("'mode' must be one of basic, enforced, mtls"),
        "{}",
        mode.message
    );
    let mut no_ca = pki.container();
    no_ca["ca"] = Value::Null;
    let missing = call_err(
        &c,
        m,
        "ssl_action",
        json!({"mode": "basic", "container": no_ca, "enable": true, "disable": false}),
    )
    .await;
    assert!(missing.message.contains("no 'ca'"), "{}", missing.message);
    let mut bad_cert = pki.container();
    bad_cert["certificate"] =
        json!("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    let garbage = call_err(
        &c,
        m,
        "ssl_action",
        json!({"mode": "basic", "container": bad_cert, "enable": true, "disable": false}),
    )
    .await;
    assert!(
        garbage.message.contains("'certificate'"),
        "{}",
        garbage.message
    );
    let none = call_err(
        &c,
        m,
        "ssl_action",
        json!({"mode": "basic", "container": null, "enable": true, "disable": false}),
    )
    .await;
    assert!(none.message.contains("'container'"), "{}", none.message);
    let nothing = call_err(&c, m, "ssl_rollback", json!({})).await;
    assert!(
        nothing.message.contains("no ssl_action to roll back"),
        "{}",
        nothing.message
    );
    for f in [&both, &mode, &missing, &garbage, &none, &nothing] {
        assert!(
            !f.message.contains("PRIVATE KEY")
                && !f.message.contains(pki.key.lines().nth(1).unwrap())
        );
    }
    assert_eq!(
        std::fs::read_to_string(m.config_file()).unwrap(),
        before,
        "a refused call changed redis.conf"
    );
    assert!(
        tls_con(m_tls, &pki, true).await.is_err(),
        "a refused call opened the TLS port"
    );
    println!("ssl: 6 refusals changed nothing");

    // basic, master then replica (Trove's order): TLS beside plaintext, no client certificate needed.
    action(&c, m, "basic", &pki).await;
    action(&c, r, "basic", &pki).await;
    let show = call(&c, m, "ssl_show", json!({})).await;
    assert_eq!(show["status"], "on");
    assert_eq!(show["mode"], "basic");
    assert_eq!(show["certificate"]["cn"], "db.example.net");
    assert_eq!(
        show["certificate"]["san"],
        json!(["DNS:db.example.net", "IP Address:127.0.0.1"])
    );
    assert!(
        show["certificate"]["expire_at"]
            .as_str()
            .unwrap()
            .ends_with(".000000"),
        "{show}"
    );
    assert_eq!(show["certificate"]["payload"], json!(pki.cert));
    assert!(plain_ok(m.port).await && plain_ok(r.port).await);
    tls_con(m_tls, &pki, false)
        .await
        .expect("basic: a TLS client without a certificate");
    replicates(m_tls, r_tls, &pki, "after-basic").await;
    assert_eq!(modes_0600(&ssl_dir(m)), 3, "one generation of three files");

    // enforced: the master first; its replica keeps replicating over the established link.
    let mut idle_plain = m.redis(Some(PW)).await;
    action(&c, m, "enforced", &pki).await;
    assert_eq!(
        plain_refusals(m.port, 5).await,
        5,
        "the master's plaintext port must refuse every connection"
    );
    assert!(
        redis::cmd("PING")
            .query_async::<String>(&mut idle_plain)
            .await
            .is_err(),
        "an established plaintext client survived enforced"
    );
    let mut mc = tls_con(m_tls, &pki, false).await.unwrap();
    let _: () = mc.set("between", "v").await.unwrap();
    let mut rc = r.redis(Some(PW)).await;
    eventually(
        20,
        "the replica still replicates between the two calls",
        || {
            let mut rc = rc.clone();
            async move {
                rc.get::<_, Option<String>>("between")
                    .await
                    .unwrap()
                    .is_some()
            }
        },
    )
    .await;
    let _ = &mut rc;
    action(&c, r, "enforced", &pki).await;
    assert_eq!(plain_refusals(r.port, 5).await, 5);
    let repl = info(
        &mut tls_con(r_tls, &pki, false).await.unwrap(),
        "replication",
    )
    .await
    .replication()
    .unwrap();
    assert_eq!(
        repl.master_port,
        Some(m_tls),
        "the replica's link moved to the master's TLS port"
    );
    replicates(m_tls, r_tls, &pki, "after-enforced").await;
    let conf = std::fs::read_to_string(r.config_file()).unwrap();
    assert!(
        conf.contains("\nport 0\n")
            && conf.contains("\ntls-replication yes\n")
            && conf.contains(&format!("\nreplicaof 127.0.0.1 {m_tls}\n")),
        "{conf}"
    );

    // mtls: client certificates required.
    action(&c, m, "mtls", &pki).await;
    action(&c, r, "mtls", &pki).await;
    assert!(
        tls_con(m_tls, &pki, false).await.is_err(),
        "mtls: a TLS client without a certificate was served"
    );
    assert!(tls_con(r_tls, &pki, false).await.is_err());
    replicates(m_tls, r_tls, &pki, "after-mtls").await;
    assert_eq!(call(&c, m, "ssl_show", json!({})).await["mode"], "mtls");
    assert_eq!(
        modes_0600(&ssl_dir(m)),
        6,
        "the current and the previous generation"
    );

    // Rollback, replicas first (Trove rolls back in reverse): enforced again.
    for g in [r, m] {
        let out = call(&c, g, "ssl_rollback", json!({})).await;
        assert_eq!(
            out,
            json!({"status": "on", "mode": "enforced", "restart_required": false})
        );
    }
    tls_con(m_tls, &pki, false)
        .await
        .expect("back to enforced: no client certificate needed");
    assert_eq!(plain_refusals(m.port, 3).await, 3);
    replicates(m_tls, r_tls, &pki, "after-rollback").await;
    assert_eq!(call(&c, r, "ssl_show", json!({})).await["mode"], "enforced");

    // Disable: plaintext again, the link back on the plain port.
    for g in [m, r] {
        assert_eq!(
            call(
                &c,
                g,
                "ssl_action",
                json!({"mode": null, "container": null, "enable": null, "disable": true})
            )
            .await,
            json!({"restart_required": false})
        );
    }
    assert!(plain_ok(m.port).await && plain_ok(r.port).await);
    assert!(
        tls_con(m_tls, &pki, true).await.is_err(),
        "the TLS port stayed open after disable"
    );
    eventually(20, "the replica relinked to the plain port", || async {
        let repl = info(&mut r.redis(Some(PW)).await, "replication")
            .await
            .replication()
            .unwrap();
        repl.master_port == Some(m.port) && repl.linked()
    })
    .await;
    let mut mc = m.redis(Some(PW)).await;
    let _: () = mc.set("after-disable", "v").await.unwrap();
    let mut rc = r.redis(Some(PW)).await;
    eventually(20, "replicated after disable", || {
        let mut rc = rc.clone();
        async move {
            rc.get::<_, Option<String>>("after-disable")
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let _ = &mut rc;
    assert_eq!(
        call(&c, m, "ssl_show", json!({})).await,
        json!({"status": "off"})
    );
    let secret_line = pki.key.lines().nth(1).unwrap();
    for g in [m, r] {
        assert!(
            !g.log().contains(secret_line),
            "the private key reached the agent's log"
        );
    }
    println!("ssl: basic, enforced, mtls, rollback and disable on a master and its replica; replication kept");
}

/// Replicas of a master that serves clients over TLS only (mtls: client certificates required)
/// get its certificate material from the snapshot / replica_info (`ssl_mode`, `cert_container`,
/// as Trove's guest sends them), take the same mode and replicate over TLS; one without a TLS
/// port is refused with the setting it lacks, and nothing changes on it. The private key is never
/// logged nor on a command line, and its files are 0600.
#[tokio::test]
async fn replicas_of_a_tls_only_master_get_its_certificates() {
    let pki = make_pki();
    let c = client().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut guests = Vec::new();
    for tls in ports {
        let tls = tls.to_string();
        guests.push(spawn_guest(&c, None, &[("TROVE_GUESTAGENT__REDIS__TLS_PORT", &tls)]).await);
    }
    let (m, r1, r2) = (&guests[0], &guests[1], &guests[2]);
    let r3 = spawn_guest(&c, None, &[]).await;
    for g in [m, r2, &r3] {
        prepare(&c, g, Some(PW), None).await;
    }
    action(&c, m, "mtls", &pki).await;
    assert_eq!(plain_refusals(m.port, 3).await, 3);

    let mut snapshot = call(&c, m, "get_replication_snapshot", json!({
        "snapshot_info": {"id": null, "instance_id": m.id, "replica_number": 1, "replica_count": 2},
        "replica_source_config": null,
    }))
    .await;
    assert_eq!(snapshot["ssl_mode"], "mtls");
    assert_eq!(snapshot["cert_container"], pki.container());
    assert_eq!((snapshot["master"]["port"].as_u64(), snapshot["master"]["tls"].as_bool()), (Some(u64::from(ports[0])), Some(true)));
    snapshot["config"] = json!("slave-read-only yes\n");

    // Refused: a replica without a TLS port; it stays as it was.
    let refused = call_err(&c, &r3, "attach_replica", json!({"replica_info": snapshot, "slave_config": null, "restart": false})).await;
    assert!(refused.message.contains("tls_port") && refused.message.contains("mtls"), "{}", refused.message);
    assert_eq!(call(&c, &r3, "ssl_show", json!({})).await, json!({"status": "off"}));
    assert_eq!(call(&c, &r3, "get_replication_status", json!({})).await["role"], "master");
    assert!(plain_ok(r3.port).await);

    // A new instance (prepare with the snapshot) and a running one (attach_replica with the context).
    prepare(&c, r1, Some(PW), Some(snapshot.clone())).await;
    let context = call(&c, m, "get_replica_context", json!({})).await;
    assert_eq!(context["cert_container"], pki.container());
    call(&c, r2, "attach_replica", json!({"replica_info": context, "slave_config": null, "restart": false})).await;
    for (r, port) in [(r1, ports[1]), (r2, ports[2])] {
        replicates(ports[0], port, &pki, &format!("via-{}", r.id)).await;
        assert_eq!(plain_refusals(r.port, 3).await, 3, "{} is TLS only, as its master", r.id);
        assert_eq!(call(&c, r, "ssl_show", json!({})).await["mode"], "mtls");
        assert!(modes_0600(&ssl_dir(r)) >= 3);
    }
    // Again with the same material: nothing to change, the link stays.
    call(&c, r2, "attach_replica", json!({"replica_info": context, "slave_config": null, "restart": false})).await;
    replicates(ports[0], ports[2], &pki, "again").await;

    let key_line = pki.key.lines().nth(1).unwrap().to_owned();
    for g in [m, r1, r2, &r3] {
        assert!(!g.log().contains(&key_line), "the private key is in {}'s log", g.id);
        if let Some(pid) = g.redis_pid() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&cmdline).contains("PRIVATE KEY"));
        }
    }
}
