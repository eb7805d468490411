//! Every message exchanged between hub and agent. Each QUIC stream carries one request frame
//! and one response frame; the first stream of a connection carries `Hello`/`HelloAck`.

use crate::work::ObjectRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels attached to a cluster (`region=eu-west`, ...). Sorted for stable encoding.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body")]
pub enum Message {
    Hello(Hello),
    HelloAck(HelloAck),
    JoinRequest(JoinRequest),
    JoinPoll(JoinPoll),
    JoinStatus(JoinStatus),
    Heartbeat(Heartbeat),
    HeartbeatAck(HeartbeatAck),
    RenewRequest(RenewRequest),
    RenewResponse(RenewResponse),
    Inventory(Inventory),
    InventoryAck(InventoryAck),
    WorkUpdate(WorkUpdate),
    WorkRemove(WorkRemove),
    WorkAck(WorkAck),
    StatusBatch(StatusBatch),
    StatusAck(StatusAck),
    Error(ErrorMsg),
    ConfirmRemoval(ConfirmRemoval),
    RemovalConfirmed(RemovalConfirmed),
}

/// Names of every message kind this build understands (the serde tags above).
pub const MESSAGE_KINDS: &[&str] = &[
    "Hello",
    "HelloAck",
    "JoinRequest",
    "JoinPoll",
    "JoinStatus",
    "Heartbeat",
    "HeartbeatAck",
    "RenewRequest",
    "RenewResponse",
    "Inventory",
    "InventoryAck",
    "WorkUpdate",
    "WorkRemove",
    "WorkAck",
    "StatusBatch",
    "StatusAck",
    "Error",
    "ConfirmRemoval",
    "RemovalConfirmed",
];

impl Message {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::HelloAck(_) => "HelloAck",
            Message::JoinRequest(_) => "JoinRequest",
            Message::JoinPoll(_) => "JoinPoll",
            Message::JoinStatus(_) => "JoinStatus",
            Message::Heartbeat(_) => "Heartbeat",
            Message::HeartbeatAck(_) => "HeartbeatAck",
            Message::RenewRequest(_) => "RenewRequest",
            Message::RenewResponse(_) => "RenewResponse",
            Message::Inventory(_) => "Inventory",
            Message::InventoryAck(_) => "InventoryAck",
            Message::WorkUpdate(_) => "WorkUpdate",
            Message::WorkRemove(_) => "WorkRemove",
            Message::WorkAck(_) => "WorkAck",
            Message::StatusBatch(_) => "StatusBatch",
            Message::StatusAck(_) => "StatusAck",
            Message::Error(_) => "Error",
            Message::ConfirmRemoval(_) => "ConfirmRemoval",
            Message::RemovalConfirmed(_) => "RemovalConfirmed",
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error(ErrorMsg {
            code,
            message: message.into(),
            content_missing: false,
        })
    }
}

/// First message on every connection, from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: String,
    /// The agent takes a changed work as a patch against the content it holds
    /// (`WorkUpdate.base`). Absent from older agents, which get whole bundles only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patches: bool,
    /// The agent takes `ConfirmRemoval` (an older one could not decode it and would drop the
    /// session, so the hub sends it only to agents that say so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirmations: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub protocol_version: u16,
    pub hub_version: String,
    /// Heartbeat period the hub expects, so health thresholds agree on both sides.
    pub heartbeat_interval_ms: u64,
    /// The hub takes heartbeats as datagrams (`tether_transport::beat`). Absent from older
    /// hubs, which get stream heartbeats only; older agents ignore it and keep sending those.
    #[serde(default)]
    pub datagram_heartbeats: bool,
    /// Hub wall clock, Unix ms, when it answered: the agent compares it with its own clock to
    /// report skew before certificates start failing. 0 from older hubs.
    #[serde(default)]
    pub hub_time_ms: u64,
}

/// What an agent knows about itself and its cluster. Reported at join and in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Facts {
    pub arch: String,
    pub os: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub hostname: String,
    /// Present when the agent can reach a Kubernetes API server.
    pub kubernetes_version: Option<String>,
    pub node_count: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Bootstrap token, as printed by `tetherctl token create`.
    pub token: String,
    pub name: String,
    pub labels: Labels,
    pub facts: Facts,
    /// PKCS#10 request, PEM. The hub keeps only the public key; every other field is overwritten.
    pub csr_pem: String,
    /// Random secret chosen by the agent; polling must present it again, so nobody else can
    /// read the decision for this name.
    pub request_secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPoll {
    pub name: String,
    pub request_secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinStatus {
    /// Waiting for an administrator.
    Pending,
    Approved {
        cert_pem: String,
        ca_pem: String,
    },
    Denied {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// "True", "False" or "Unknown", as in Kubernetes.
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// Condition type an agent reports while its own store fails (disk full, damaged file): it
/// cannot take deliveries durably until it recovers.
pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub facts: Facts,
    pub conditions: Vec<Condition>,
    /// Agent wall clock, milliseconds since the Unix epoch (for skew reporting only).
    pub sent_at_ms: u64,
    /// Informational only. The hub identifies the sender by its certificate and ignores this.
    pub cluster: Option<String>,
    /// Status entries waiting in the agent's outbox (not yet acknowledged by the hub).
    #[serde(default)]
    pub outbox_depth: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub hub_time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A CSR for a fresh key pair made by the agent.
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    pub cert_pem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    VersionMismatch,
    BadRequest,
    UnexpectedMessage,
    TokenInvalid,
    TokenExpired,
    TokenExhausted,
    NameTaken,
    NameInvalid,
    CsrInvalid,
    Denied,
    Unauthorized,
    TooLarge,
    Busy,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
    /// The refusal of a `WorkUpdate` that named content by hash only: the agent does not hold
    /// that content and takes the same update with the bundle. A field rather than an
    /// `ErrorCode` variant, which older peers could not decode (wire-format.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub content_missing: bool,
}

impl std::fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

// ---------------------------------------------------------------- works and status

/// What the agent holds (committed desired state), sent right after `Hello` on every session,
/// so the hub sends only the difference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub works: BTreeMap<String, HeldWork>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldWork {
    pub generation: u64,
    /// Content hash of the bundle as this cluster received it (`bundle::content_hash`).
    pub hash: String,
    /// The agent fenced this singleton (removed its copy after losing the hub) and will not
    /// bring it back until the hub sends it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryAck {
    /// How many works the hub is about to send or remove.
    pub pending_changes: u32,
}

/// Hub -> agent: the desired state of one work on this cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUpdate {
    pub name: String,
    pub generation: u64,
    pub hash: String,
    pub force_conflicts: bool,
    /// zstd-compressed CBOR list of manifests. `None` when the agent already holds content with
    /// this hash and only the generation moves (nothing re-sent over a metered link).
    #[serde(with = "serde_bytes", default)]
    pub bundle: Option<Vec<u8>>,
    /// Set when `bundle` is a patch (`bundle::patch`) against the content with this hash, which
    /// the agent holds for this work; only to agents that said `Hello.patches`. An agent that
    /// no longer holds that content answers `content_missing`, and the hub sends it whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Singleton works: remove the copy after this long without hub contact.
    #[serde(default)]
    pub fence_after_ms: Option<u64>,
}

/// Hub -> agent: stop managing a work. `orphan` leaves its objects in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkRemove {
    pub name: String,
    pub orphan: bool,
}

/// Hub -> agent: an operator confirmed the removal or prune of `work` that the agent's deletion
/// circuit breaker holds. The agent lets one through, as with `tether-agent confirm-removal`,
/// unless its owner allows confirmations on the cluster only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmRemoval {
    pub work: String,
    /// Who confirmed (`admin:NAME`), for the agent's log.
    pub actor: String,
}

/// Agent -> hub: the confirmation is recorded; the next reconcile pass lets the deletion
/// through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalConfirmed {
    pub work: String,
    /// Whether the breaker held a deletion of the work when the confirmation arrived.
    pub was_held: bool,
}

/// Agent -> hub reply, sent only after the agent committed the change to its store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkAck {
    pub name: String,
    /// What the agent now holds; `None` after a removal.
    pub held: Option<HeldWork>,
}

/// Entries one `StatusBatch` may hold; a hub refuses larger batches (`ErrorCode::TooLarge`).
pub const MAX_STATUS_ENTRIES: usize = 256;
/// Works one `Inventory` may name; a hub refuses larger inventories (`ErrorCode::TooLarge`).
pub const MAX_INVENTORY_WORKS: usize = 10_000;

/// Agent -> hub: outbox entries `from_seq..=to_seq`. Sequence numbers in the range that are not
/// in `entries` were superseded by a newer status of the same work before being sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBatch {
    pub from_seq: u64,
    pub to_seq: u64,
    pub entries: Vec<StatusEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub seq: u64,
    pub status: WorkStatus,
}

/// Hub -> agent: everything through `through_seq` is durably stored; the agent may forget it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAck {
    pub through_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WorkPhase {
    /// Applied and every tracked workload is ready.
    Available,
    /// Applied; some workload is not ready yet (or readiness is unknown).
    Applied,
    /// The last apply failed; see `message` and conditions.
    Failed,
    /// Removed from the cluster after the hub withdrew it.
    Removed,
    /// Withdrawn with `--orphan`: the objects were left in place.
    Orphaned,
    /// A singleton whose agent lost the hub for longer than `fenceAfter`: its copy was removed.
    Fenced,
}

impl WorkPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkPhase::Available => "Available",
            WorkPhase::Applied => "Applied",
            WorkPhase::Failed => "Failed",
            WorkPhase::Removed => "Removed",
            WorkPhase::Orphaned => "Orphaned",
            WorkPhase::Fenced => "Fenced",
        }
    }
}

/// One work's state on one cluster, as the agent observed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkStatus {
    pub work: String,
    pub generation: u64,
    pub hash: String,
    pub phase: WorkPhase,
    pub conditions: Vec<Condition>,
    pub resources: Vec<ResourceStatus>,
    /// Last error, empty when healthy.
    pub message: String,
    pub observed_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceStatus {
    pub object: ObjectRef,
    /// `None` for kinds without a readiness notion (ConfigMap, Service, ...).
    pub ready: Option<bool>,
    /// e.g. `replicas=3 ready=2 updated=3`.
    pub detail: String,
}
