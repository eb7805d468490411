use std::path::PathBuf;
use tether_protocol::{ErrorCode, ErrorMsg};
use tether_store::StoreError;

/// Exit code of an agent whose database cannot be used (damaged beyond redb's repair): a
/// restart cannot fix it, only the recovery in the message can.
pub const EXIT_STORE_DAMAGED: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this cluster was denied by the hub administrator ({0}). The agent will not reconnect; run `tether-agent leave` and join again with a new token if this was a mistake")]
    Denied(String),
    #[error("this cluster was detached from the hub ({0}). The agent will not reconnect; run `tether-agent leave` and join again to re-register")]
    Detached(String),
    #[error("the hub refused this agent's certificate because it has been revoked. The agent will not reconnect; run `tether-agent leave` and join again")]
    Revoked,
    #[error("the hub does not accept this agent's certificate: {0}. Run `tether-agent leave` and join again")]
    Unauthorized(String),
    #[error("this agent's certificate expired at {0}, while the agent could not reach the hub. Run `tether-agent leave` and join again")]
    CertificateExpired(String),
    /// This host's clock is off the hub's by more than `clock::MAX_CLOCK_SKEW`. Retried (NTP
    /// may set the clock any moment), with backoff.
    #[error("{0}")]
    ClockSkew(String),
    #[error("incompatible hub: {0}")]
    VersionMismatch(String),
    #[error("the hub refused the join request: {0}")]
    JoinRefused(ErrorMsg),
    #[error("the hub administrator denied the join request: {0}")]
    JoinDenied(String),
    #[error("refusing to trust the hub: {0}. Check --ca-sha256 against the fingerprint printed by `tether-hub init`")]
    CaPinMismatch(String),
    #[error("this agent has not joined a hub yet: run `tether-agent join` (or pass --hub, --token, --ca-sha256 and --name to `run`)")]
    NotJoined,
    #[error("this data directory already holds the identity of cluster {0:?}; use another --data-dir or run `tether-agent leave` first")]
    AlreadyJoined(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the hub answered something unexpected: {0}")]
    Protocol(String),
    #[error("the agent database {path} is damaged and cannot be repaired ({detail}). The agent will not start on it. To recover: stop the agent; move {path} away (or delete it); ask a hub administrator to run `tetherctl clusters detach NAME` for this cluster; then join again with a new token (`tether-agent join` or `run` with join flags)")]
    StoreDamaged { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] tether_transport::tls::TlsError),
    #[error("{0}")]
    Io(String),
    #[error("interrupted")]
    Interrupted,
}

impl AgentError {
    /// Errors after which retrying cannot help: the process should exit and say why.
    pub fn is_fatal(&self) -> bool {
        match self {
            AgentError::Protocol(_) | AgentError::Io(_) | AgentError::ClockSkew(_) => false,
            // A failing disk is the session's to wait out, not a reason to exit: the store
            // reopens itself, and an exit would only make the supervisor restart into the same
            // full disk. Damage found at run time also closes and reopens the handle (with the
            // integrity check), so it is retried too; damage found at start is `StoreDamaged`.
            AgentError::Store(e) => {
                !(store_retryable(e) || matches!(e, StoreError::Damaged { .. }))
            }
            _ => true,
        }
    }

    /// Distinct exit codes let supervisors (systemd `RestartPreventExitStatus=3`) stop
    /// restarting an agent that was cut off on purpose.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Denied(_)
            | AgentError::Detached(_)
            | AgentError::Revoked
            | AgentError::Unauthorized(_)
            | AgentError::CertificateExpired(_)
            | AgentError::JoinDenied(_) => 3,
            // A bad token (unknown, used up, expired, revoked) or a denial: only a new token
            // or an administrator can help, so a supervisor must not retry it in a loop.
            AgentError::JoinRefused(m)
                if matches!(
                    m.code,
                    ErrorCode::TokenInvalid
                        | ErrorCode::TokenExpired
                        | ErrorCode::TokenExhausted
                        | ErrorCode::Denied
                ) =>
            {
                3
            }
            // The agent's own flags (its name, its labels, its CSR) must change first.
            AgentError::JoinRefused(m)
                if matches!(
                    m.code,
                    ErrorCode::NameTaken | ErrorCode::NameInvalid | ErrorCode::CsrInvalid
                ) =>
            {
                2
            }
            AgentError::Config(_)
            | AgentError::NotJoined
            | AgentError::AlreadyJoined(_)
            | AgentError::CaPinMismatch(_) => 2,
            AgentError::StoreDamaged { .. } => EXIT_STORE_DAMAGED,
            AgentError::Interrupted => 130,
            _ => 1,
        }
    }
}

/// Whether the same store operation may succeed later. Adds to [`StoreError::is_retryable`]
/// the open that failed on I/O (a create or repair on a full disk), which the store reports as
/// a plain `Open` error.
pub fn store_retryable(e: &StoreError) -> bool {
    e.is_retryable()
        || matches!(
            e,
            StoreError::Open {
                source: redb::DatabaseError::Storage(redb::StorageError::Io(_)),
                ..
            }
        )
}
