//! RPC round trips through a real agent: ping, failures, versions, secure RPC, shutdown.

use serde_json::{json, Map};
use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn ping_and_failures() {
    let c = client().await;
    let g = spawn_guest(&c, None, &[]).await;
    assert_eq!(call(&c, &g, "rpc_ping", json!({"unknown_extra": 1})).await, json!(true));
    let f = call_err(&c, &g, "no_such_method", json!({})).await;
    assert_eq!((f.class.as_str(), f.module.as_str()), ("NoSuchMethod", "oslo_messaging.rpc.dispatcher"));
    let f = call_err(&c, &g, "_private", json!({})).await;
    assert_eq!(f.class, "NoSuchMethod");
    for v in ["1.4", "2.0"] {
        let r = c.call(&g.topic(), "rpc_ping", Map::new(), v, Duration::from_secs(10), None).await;
        match r {
            Err(trove_guest::rpc::Error::Remote { failure, .. }) => {
                assert_eq!(failure.class, "UnsupportedVersion");
                assert!(failure.message.contains(v));
            }
            other => panic!("{v}: {other:?}"),
        }
    }
    let f = call_err(&c, &g, "wait_for_txn", json!({})).await;
    assert_eq!(f.class, "TypeError");
    assert!(f.message.contains("'txn'"), "{}", f.message);
    let f = call_err(&c, &g, "create_user", json!({"users": []})).await;
    assert_eq!((f.class.as_str(), f.module.as_str()), ("DatastoreOperationNotSupported", "trove.common.exception"));
    // Not prepared: a datastore error surfaces as a readable GuestError.
    let f = call_err(&c, &g, "get_latest_txn_id", json!({})).await;
    assert_eq!(f.class, "GuestError");
    assert!(f.message.contains("redis"), "{}", f.message);
    assert_eq!(call(&c, &g, "backup_required_for_replication", json!({})).await, json!(false));
    let started = std::time::Instant::now();
    let f = call_err(&c, &g, "restart", json!({})).await;
    assert!(f.message.contains("prepared first"), "{}", f.message);
    assert!(started.elapsed() < Duration::from_secs(5), "restart of an unprepared guest took {:?}", started.elapsed());
}

#[tokio::test]
async fn secure_rpc_right_and_wrong_key() {
    let c = client().await;
    let g = spawn_guest(&c, Some("abcdefghijklmnopqrstuvwxyz012345"), &[]).await;
    assert_eq!(call(&c, &g, "rpc_ping", json!({})).await, json!(true));
    let wrong = trove_guest::rpc::crypto::Cipher::new(&secrecy::SecretString::from("wrong-key".to_owned()));
    let r = c.call(&g.topic(), "rpc_ping", Map::new(), "1.0", Duration::from_secs(10), Some(&wrong)).await;
    match r {
        Err(trove_guest::rpc::Error::Remote { failure, .. }) => assert!(failure.message.contains("different instance key"), "{}", failure.message),
        other => panic!("{other:?}"),
    }
    let r = c.call(&g.topic(), "rpc_ping", Map::new(), "1.0", Duration::from_secs(10), None).await;
    assert!(matches!(r, Err(trove_guest::rpc::Error::Remote { .. })), "{r:?}");
    let log = g.log();
    assert!(!log.contains("abcdefghijklmnopqrstuvwxyz012345"), "key leaked into the log");
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let c = client().await;
    let mut g = spawn_guest(&c, None, &[]).await;
    assert_eq!(g.stop_agent(), Some(0), "{}", g.log());
    assert!(g.log().contains("agent stopped"));
}

/// The broker's consumer count on a guest's queue: 1 while its agent runs, 0 once the agent is
/// killed (an eject stops waiting for a dead master's agent on it), None for no such queue.
#[tokio::test]
async fn a_guest_queue_counts_its_agent() {
    let c = client().await;
    let mut g = spawn_guest(&c, None, &[]).await;
    assert_eq!(c.consumers(&g.topic()).await, Some(1));
    g.kill_agent();
    eventually(10, "the broker drops the killed agent's consumer", || async { c.consumers(&g.topic()).await == Some(0) }).await;
    assert_eq!(c.consumers("guestagent.no-such-guest").await, None);
    // The client's own channel is untouched by the refused passive declare.
    let g2 = spawn_guest(&c, None, &[]).await;
    assert_eq!(call(&c, &g2, "rpc_ping", json!({})).await, json!(true));
}
