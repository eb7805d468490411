use tether_protocol::ErrorMsg;

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
    #[error(transparent)]
    Store(#[from] tether_store::StoreError),
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
        !matches!(self, AgentError::Protocol(_) | AgentError::Io(_))
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
            AgentError::Config(_)
            | AgentError::NotJoined
            | AgentError::AlreadyJoined(_)
            | AgentError::CaPinMismatch(_) => 2,
            AgentError::Interrupted => 130,
            _ => 1,
        }
    }
}
