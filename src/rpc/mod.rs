//! The only module that knows AMQP: oslo.messaging's wire format over RabbitMQ, both sides.

pub mod backoff;
pub mod client;
pub mod conductor;
pub mod connection;
pub mod crypto;
pub mod dispatch;
pub mod envelope;
pub mod hint;
pub mod lease;
pub mod failure;
pub mod publisher;
pub mod secure;
pub mod server;
pub mod transport;

pub use connection::AmqpOptions;
pub use dispatch::{CallContext, Endpoint};
pub use failure::RemoteFailure;

/// Errors of the RPC layer. Messages never carry passwords or keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rpc configuration: {0}")]
    Config(String),
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(String),
    #[error("cannot declare {name}: {reason}")]
    Declare { name: String, reason: String },
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("call {method} timed out after {timeout:?}")]
    Timeout { method: String, timeout: std::time::Duration },
    #[error("remote failure from {method}: {failure}")]
    Remote { method: String, failure: RemoteFailure },
    #[error("bad reply: {0}")]
    BadReply(String),
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("the connection to RabbitMQ was lost while {method} waited for its reply (it may or may not have been applied)")]
    ReplyLost { method: String },
}

impl Error {
    fn declare(name: &str, e: lapin::Error) -> Self {
        Error::Declare { name: name.to_owned(), reason: e.to_string() }
    }
}
