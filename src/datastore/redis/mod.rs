//! The Redis datastore: INFO parsing, redis.conf layering, the admin connection, process control.

pub mod admin;
pub mod conf;
pub mod info;
pub mod manager;
pub mod runtime;
pub mod server;
pub mod service;
pub mod state;
pub mod upgrade;

pub use admin::Admin;
pub use manager::RedisManager;
