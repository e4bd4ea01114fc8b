//! Integration tests: real RabbitMQ, real redis-server processes, agents as separate processes.

mod flows;
mod harness;
mod redis_sync;
mod rpc_roundtrip;
