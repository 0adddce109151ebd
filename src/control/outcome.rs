//! What a change to the running proxy answers: what a reload did, or why
//! starting, a change or a reload changed nothing.

use std::net::SocketAddr;

use crate::config;
use crate::model::Refusal;

/// Why firedrill could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Tls {
        what: String,
        source: crate::tls::TlsError,
    },
}

/// Why changes were refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}; nothing changed")]
    Bind(#[source] StartError),
    #[error("{0}; nothing changed")]
    Conflict(String),
    #[error("firedrill is shutting down")]
    ShuttingDown,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this firedrill was started without a plan file, so there is nothing to re-read")]
    NoSource,
    #[error("the plan is invalid; nothing changed:\n{0}")]
    Plan(#[source] config::Error),
    #[error("{0}; nothing changed")]
    Bind(#[source] StartError),
    #[error("{0}; nothing changed")]
    Conflict(String),
    #[error("[admin] listen changed from {from} to {to}, which only a restart can apply; nothing changed")]
    AdminListen { from: SocketAddr, to: SocketAddr },
    #[error("firedrill is shutting down")]
    ShuttingDown,
}

impl From<ApplyError> for ReloadError {
    fn from(error: ApplyError) -> ReloadError {
        match error {
            ApplyError::Bind(e) => ReloadError::Bind(e),
            ApplyError::Conflict(why) => ReloadError::Conflict(why),
            ApplyError::ShuttingDown => ReloadError::ShuttingDown,
        }
    }
}

impl From<Refusal<StartError>> for ReloadError {
    fn from(refusal: Refusal<StartError>) -> ReloadError {
        match refusal {
            Refusal::Conflict(why) => ReloadError::Conflict(why),
            Refusal::AdminListen { from, to } => ReloadError::AdminListen { from, to },
            Refusal::Bind(e) => ReloadError::Bind(e),
        }
    }
}

/// What a reload did, service by service; also the answer to
/// `POST /reload`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reloaded {
    /// Services that stayed as they were; their connections stayed open.
    pub kept: Vec<String>,
    /// Services whose listener now leads somewhere else; their open
    /// connections were closed.
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Active scenarios the new plan no longer has.
    pub lifted: Vec<String>,
    /// The new plan's own warnings, located as `file:line:column: ...`,
    /// and settings that only apply on restart.
    pub warnings: Vec<String>,
}
