//! The Redis datastore: INFO parsing, redis.conf layering, the admin connection, process control.

pub mod admin;
pub mod backup;
pub mod backup_marker;
pub mod conf;
pub mod diagnostics;
pub mod freeze;
pub mod info;
pub mod logs;
pub mod manager;
pub mod metrics;
pub mod root;
pub mod runtime;
pub mod server;
pub mod service;
pub mod ssl;
pub mod state;
pub mod upgrade;

pub use admin::Admin;
pub use manager::RedisManager;
