//! Integration tests: real RabbitMQ, real redis-server processes, agents as separate processes.

mod backup;
mod config_check;
mod epochs;
mod flows;
mod guest_api;
mod harness;
mod hostile;
mod logs;
mod matrix;
mod metrics;
mod redis_sync;
mod redis_tls;
mod restart;
mod root;
mod rpc_roundtrip;
mod secrets;
mod ssl;
mod sentinel_client;
mod tls;
mod trove_boot;
mod upgrade;
mod volumes;
