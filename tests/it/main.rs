//! Integration tests: real RabbitMQ, real redis-server processes, agents as separate processes.

mod flows;
mod harness;
mod hostile;
mod redis_sync;
mod redis_tls;
mod rpc_roundtrip;
mod secrets;
mod tls;
mod trove_boot;
