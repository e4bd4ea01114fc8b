//! Transport security: agents serve RPC over `amqps://` against a RabbitMQ node with TLS on
//! loopback, with a CA file only and with a client certificate (PKCS#12). Certificates are made
//! here with the openssl CLI. Wrong or missing trust, a certificate from another CA, and a wrong
//! PKCS#12 password fail to connect, with errors that do not carry the password.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use trove_guest::rpc::{client::RpcClient, AmqpOptions};

use crate::harness::*;
use crate::secrets::RabbitNode;

const P12_PASSWORD: &str = "p12-Pass-word-7d1c";
const CLIENT_CN: &str = "trove-guest-client";

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_p12: PathBuf,
    rogue_p12: PathBuf,
    rogue_ca: PathBuf,
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("cannot run the openssl CLI");
    assert!(out.status.success(), "openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1, a client certificate (PKCS#12), and a client
/// certificate from another CA.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let days = "2";
    for (ca, cn) in [("ca", "trove-test-ca"), ("rogue-ca", "rogue-ca")] {
        openssl(d, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.pem"), "-days", days, "-subj", &format!("/CN={cn}")]);
    }
    std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(d.join("client.ext"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn, ca, ext) in [("server", "localhost", "ca", "server.ext"), ("client", CLIENT_CN, "ca", "client.ext"), ("rogue", CLIENT_CN, "rogue-ca", "client.ext")] {
        openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={cn}")]);
        openssl(d, &[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key"), "-CAcreateserial",
            "-out", &format!("{name}.pem"), "-days", days, "-extfile", ext,
        ]);
    }
    for name in ["client", "rogue"] {
        openssl(d, &["pkcs12", "-export", "-in", &format!("{name}.pem"), "-inkey", &format!("{name}.key"), "-name", name, "-out", &format!("{name}.p12"), "-passout", &format!("pass:{P12_PASSWORD}")]);
    }
    Pki {
        ca: d.join("ca.pem"),
        server_cert: d.join("server.pem"),
        server_key: d.join("server.key"),
        client_p12: d.join("client.p12"),
        rogue_p12: d.join("rogue.p12"),
        rogue_ca: d.join("rogue-ca.pem"),
        _dir: dir,
    }
}

fn opts(url: &str, ca: Option<&Path>, p12: Option<(&Path, &str)>, name: &str) -> AmqpOptions {
    let mut o = AmqpOptions::new(url, EXCHANGE, name);
    o.ssl_ca_file = ca.map(Path::to_path_buf);
    if let Some((path, pw)) = p12 {
        o.ssl_client_pkcs12 = Some(path.to_path_buf());
        o.ssl_client_pkcs12_password = Some(secrecy::SecretString::from(pw.to_owned()));
    }
    o
}

/// A connection attempt that must fail; returns the error text.
async fn refused(o: &AmqpOptions, what: &str) -> String {
    match tokio::time::timeout(Duration::from_secs(30), trove_guest::rpc::connection::connect(o)).await {
        Ok(Ok(_)) => panic!("{what}: the connection was accepted"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("{what}: neither connected nor failed within 30s"),
    }
}

/// `rabbitmqctl list_connections` rows (tab-separated) that mention `needle`.
fn connection_rows(node: &RabbitNode, needle: &str) -> Vec<String> {
    node.ctl(&["list_connections", "ssl", "ssl_protocol", "peer_cert_subject", "client_properties"])
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn agents_serve_rpc_over_tls() {
    let pki = make_pki();
    let tls_port = free_port();
    let node = RabbitNode::start(
        "trove-tls",
        &[
            ("TROVE_RABBIT_TLS_PORT", tls_port.to_string()),
            ("TROVE_RABBIT_TLS_CA", pki.ca.display().to_string()),
            ("TROVE_RABBIT_TLS_CERT", pki.server_cert.display().to_string()),
            ("TROVE_RABBIT_TLS_KEY", pki.server_key.display().to_string()),
            ("TROVE_RABBIT_TLS_VERIFY", "verify_peer".into()),
        ],
    );
    let url = format!("amqps://guest:guest@127.0.0.1:{tls_port}/");
    let client = match RpcClient::connect(&opts(&url, Some(&pki.ca), None, "it-tls-client")).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect over TLS to 127.0.0.1:{tls_port} with the test CA: {e}\n{}", node.server_log()),
    };
    let ca = pki.ca.display().to_string();
    let p12 = pki.client_p12.display().to_string();

    // 1. Server authentication only: the agent trusts the test CA.
    let a = spawn_guest(&client, None, &[("TROVE_GUESTAGENT__RPC__TRANSPORT_URL", &url), ("TROVE_GUESTAGENT__RPC__SSL_CA_FILE", &ca)]).await;
    assert_eq!(call(&client, &a, "rpc_ping", json!({})).await, json!(true));
    assert_eq!(call(&client, &a, "backup_required_for_replication", json!({})).await, json!(false));
    // 2. Mutual TLS: the agent also presents a client certificate from a PKCS#12 file.
    let b = spawn_guest(
        &client,
        Some("tls-instance-key-0123456789abcdef"),
        &[
            ("TROVE_GUESTAGENT__RPC__TRANSPORT_URL", &url),
            ("TROVE_GUESTAGENT__RPC__SSL_CA_FILE", &ca),
            ("TROVE_GUESTAGENT__RPC__SSL_CLIENT_PKCS12", &p12),
            ("TROVE_GUESTAGENT__RPC__SSL_CLIENT_PKCS12_PASSWORD", P12_PASSWORD),
        ],
    )
    .await;
    assert_eq!(call(&client, &b, "rpc_ping", json!({})).await, json!(true));
    prepare(&client, &b, None, None).await;
    assert_eq!(call(&client, &b, "get_replication_status", json!({})).await["role"], "master");

    // The broker's view: both agents are on TLS; only b presented a certificate, ours.
    let rows_a = connection_rows(&node, &format!("trove-guestagent:{}", a.id));
    let rows_b = connection_rows(&node, &format!("trove-guestagent:{}", b.id));
    assert!(!rows_a.is_empty() && !rows_b.is_empty(), "agent connections not listed:\n{}", node.ctl(&["list_connections", "ssl", "client_properties"]));
    for row in rows_a.iter().chain(&rows_b) {
        assert!(row.starts_with("true\t"), "not a TLS connection: {row}");
        assert!(row.contains("tlsv1.3") || row.contains("tlsv1.2"), "{row}");
    }
    assert!(rows_b.iter().all(|r| r.contains(&format!("CN={CLIENT_CN}"))), "b's client certificate was not presented: {rows_b:?}");
    assert!(rows_a.iter().all(|r| !r.contains("CN=")), "a presented a certificate it does not have: {rows_a:?}");
    for g in [&a, &b] {
        assert!(!g.log().contains(P12_PASSWORD), "the PKCS#12 password is in the log of {}", g.id);
    }

    // Failures, client side (the agent connects through the same code).
    let cases = [
        ("no CA: the test CA is not a system root", opts(&url, None, None, "it-tls-noca")),
        ("another CA as trust anchor", opts(&url, Some(&pki.rogue_ca), None, "it-tls-rogueca")),
        ("client certificate from another CA", opts(&url, Some(&pki.ca), Some((&pki.rogue_p12, P12_PASSWORD)), "it-tls-rogue")),
        ("wrong PKCS#12 password", opts(&url, Some(&pki.ca), Some((&pki.client_p12, "wrong-p12-password")), "it-tls-badpw")),
        ("missing CA file", opts(&url, Some(Path::new("/nonexistent/ca.pem")), None, "it-tls-missing")),
        ("plain AMQP to the TLS port", opts(&format!("amqp://guest:guest@127.0.0.1:{tls_port}/"), None, None, "it-tls-plain")),
        ("TLS to the plain port", opts(&format!("amqps://guest:guest@127.0.0.1:{}/", node.port), Some(&pki.ca), None, "it-tls-wrongport")),
    ];
    for (what, o) in &cases {
        let err = refused(o, what).await;
        assert!(!err.contains(P12_PASSWORD) && !err.contains("wrong-p12-password"), "{what}: the error carries the password: {err}");
        eprintln!("tls: {what}: refused: {err}");
    }
    let err = refused(&cases[4].1, "missing CA file").await;
    assert!(err.contains("ssl_ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
    println!("tls: 2 agents served RPC over TLS (CA only; mutual TLS), {} refusals checked", cases.len());
}
