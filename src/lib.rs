//! trove_guest: a Trove guest agent for Redis replication, wire-compatible with OpenStack Trove.
//!
//! # Layout
//! - `rpc`: the only module that knows AMQP: oslo.messaging envelopes, secure RPC, server, client.
//! - `methods`: the guest API methods: argument checks and return values.
//! - `datastore`: the local Redis: process control, redis.conf layers, INFO, status.
//! - `replication`: the `ReplicationStrategy` trait and `RedisSync`.
//! - `flows`: the taskmanager side: create, detach, promote and eject over RPC.
//! - `config`: settings, loaded once; `oslo_ini`: Trove's INI option files.
//! - `agent`: wiring and graceful shutdown.
//! - `metrics`: the Prometheus text encoder and the `/metrics` server of both binaries.

// `RemoteFailure` (oslo's serialized exception, with its args and kwargs maps) is the error of
// argument checks and dispatch. It is built once per failed call, never on a hot path, so
// boxing it everywhere would buy nothing.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod config;
pub mod datastore;
pub mod discovery;
pub mod flows;
pub mod methods;
pub mod metrics;
pub mod oslo_ini;
pub mod replication;
pub mod rpc;
pub mod signal;
