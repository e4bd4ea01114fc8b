//! The datastore boundary: what the guest manages locally. Knows nothing about AMQP or envelopes.

pub mod archive;
pub mod modules;
pub mod redis;
pub mod volume;
pub mod swift;

/// The status the guest reports to the conductor (Trove's service_status descriptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceStatus {
    Building,
    Healthy,
    Shutdown,
    Blocked,
    Crashed,
    Failed,
    /// Between `pre_upgrade` and the end of `upgrade` (Trove's "upgrading").
    Upgrading,
    /// Nothing prepared yet: Redis has no configuration (Trove's "build pending" / new instance).
    New,
}

impl ServiceStatus {
    /// The description Trove's conductor understands.
    pub fn description(self) -> &'static str {
        match self {
            ServiceStatus::Building => "building",
            ServiceStatus::Healthy => "healthy",
            ServiceStatus::Shutdown => "shutdown",
            ServiceStatus::Blocked => "blocked",
            ServiceStatus::Crashed => "crashed",
            ServiceStatus::Failed => "failed to spawn",
            ServiceStatus::New => "new",
            ServiceStatus::Upgrading => "upgrading",
        }
    }
}

/// Datastore errors. Messages name what failed and never carry passwords.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis is not running")]
    NotRunning,
    #[error("redis is loading its dataset")]
    Loading,
    #[error("redis command {command} failed: {reason}")]
    Command { command: String, reason: String },
    #[error("cannot reach {what}: {reason}")]
    Unreachable { what: String, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("operation {0} is not supported with this service mode")]
    NotSupported(String),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("service control failed: {0}")]
    Service(String),
    /// redis-server refused the configuration the change would write; nothing was changed.
    #[error("redis-server rejects the configuration{}: {reason}; nothing was changed", .key.as_ref().map(|k| format!(" at '{k}'")).unwrap_or_default())]
    InvalidConfig { key: Option<String>, reason: String },
    /// The configuration could not be checked by redis-server; nothing was changed.
    #[error("the configuration could not be checked by redis-server ({0}); nothing was changed")]
    Unchecked(String),
    /// Backup storage (Swift) or a backup's contents.
    #[error("{0}")]
    Storage(String),
    /// Trove's `NotFound`: a named thing (a guest log) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Trove's `BadRequest`: the request contradicts itself or the thing it names.
    #[error("{0}")]
    BadRequest(String),
    /// Trove's `LogAccessForbidden`: the log is not exposed to users who are not admins.
    #[error("User does not have admin privileges to '{action}' the '{log}' log.")]
    LogAccessForbidden { action: String, log: String },
    /// Another Trove exception, by class name (`ModuleTypeNotFound`, `ModuleInvalid`).
    #[error("{message}")]
    Trove { class: &'static str, message: String },
}

impl Error {
    pub fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Error::Io { path: path.display().to_string(), reason: e.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
