//! JSON shapes of the admin API, shared by the server and `tetherctl`.

use serde::{Deserialize, Serialize};
pub use tether_protocol::WorkPhase;
use tether_protocol::{Condition, Facts, Labels};
pub use tether_store::hub::{ClusterState, FactPins};

/// Where a join request stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub enum JoinState {
    Pending,
    Approved,
    Denied,
}

/// What `PUT /v1/works` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ApplyOutcome {
    Created,
    Updated,
    Unchanged,
}

/// Where a work's rollout stands; `RolloutView::reason` says why when it is not obvious.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RolloutPhase {
    /// No progressive rollout: every selected cluster at once.
    #[default]
    All,
    Progressing,
    Complete,
    /// Paused by an operator or by the rollout's own rules (failure budget, deadline).
    Paused,
    /// An undo or auto-rollback restoring an earlier generation everywhere at once.
    RolledBack,
    /// Applied, and not decided yet (the decision loop runs within a moment of an apply; on
    /// a hub replica that does not hold the lease, once the decision reaches it).
    Pending,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ClusterView {
    pub name: String,
    pub state: ClusterState,
    pub connected: bool,
    #[schema(inline)]
    pub labels: Labels,
    /// As the agent last reported them (clamped).
    pub facts: Facts,
    /// Facts the hub holds over the agent's reports for placement.
    #[serde(default)]
    pub pins: FactPins,
    pub conditions: Vec<Condition>,
    pub last_seen_ms: Option<u64>,
    /// When the hub last stored a change of this cluster's state (absent from older hubs).
    #[serde(default)]
    pub state_since_ms: u64,
    /// The newest sessions with the hub process that answered, oldest first.
    #[serde(default)]
    pub recent_sessions: Vec<SessionSpan>,
    pub joined_at_ms: u64,
    pub cert_serial: String,
    pub cert_not_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct JoinRequestView {
    pub name: String,
    pub state: JoinState,
    pub reason: Option<String>,
    pub token_id: String,
    #[schema(inline)]
    pub labels: Labels,
    pub facts: Facts,
    pub peer_addr: String,
    pub created_at_ms: u64,
}

/// Largest request body of `PUT /v1/works`. A work's bundle is limited to the frame size
/// (4 MiB by default) after CBOR and zstd; manifests compress several times, so the JSON of a
/// work that fits a frame can be well over 4 MiB.
pub const MAX_WORK_BODY: usize = 32 * 1024 * 1024;
/// Largest request body of every other admin request (tokens, deny reasons): they are small.
pub const MAX_CONTROL_BODY: usize = 64 * 1024;

/// `64 KiB`, `32 MiB`: how limits are named in errors and docs.
pub fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub expires_at_ms: u64,
    pub max_uses: u32,
    pub used: u32,
    pub auto_approve: bool,
    #[schema(inline)]
    pub labels: Labels,
    /// Label keys agents may request with the token; empty: any unreserved key.
    #[serde(default)]
    pub allowed_labels: Vec<String>,
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateTokenRequest {
    /// Lifetime, at most 30 days (`identity::registry::MAX_TOKEN_TTL`).
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_secs: u64,
    /// Joins it admits (`identity::registry::MAX_TOKEN_USES`).
    #[schema(minimum = 1, maximum = 100_000)]
    pub uses: u32,
    pub auto_approve: bool,
    #[schema(inline)]
    #[serde(default)]
    pub labels: Labels,
    /// When set, agents joining with the token may request only these label keys.
    #[serde(default)]
    pub allowed_labels: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DenyRequest {
    #[serde(default)]
    pub reason: String,
}

/// `POST /v1/clusters/{name}/facts`: pin facts so placement trusts these over the agent's
/// reports. Fields left out keep their pin; `unpin` names facts to follow the reports again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinFactsRequest {
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub kubernetes_version: Option<String>,
    /// Pin every fact to what the agent reports now (after the explicit values above).
    #[serde(default)]
    pub reported: bool,
    /// Any of `arch`, `os`, `cpus`, `kubernetes_version`.
    #[serde(default)]
    pub unpin: Vec<String>,
}

/// `POST /v1/clusters/{name}/labels`: change a cluster's labels after its join. `set` adds or
/// replaces, `remove` drops keys (absent keys are not an error, as with `kubectl label k-`).
/// The same key in both is refused as ambiguous.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsRequest {
    #[serde(default)]
    #[schema(inline)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VersionView {
    /// The hub binary's version.
    pub version: String,
    /// The agent protocol version it speaks (`tether_protocol::PROTOCOL_VERSION`).
    pub protocol_version: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionResult {
    pub cluster: String,
    pub action: String,
    /// Whether a live session was closed by this action.
    pub session_closed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditView {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub cluster: Option<String>,
    pub actor: String,
    pub detail: String,
}

/// Filters of an audit query; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub cluster: Option<String>,
    pub actor: Option<String>,
    /// Only events at or after this hub time (Unix ms).
    pub since_ms: Option<u64>,
    /// Only events at or before this hub time (Unix ms).
    pub until_ms: Option<u64>,
}

/// One page of `GET /v1/audit/page`: the newest matching events below the cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Oldest first.
    pub events: Vec<AuditView>,
    /// Pass as `before` to continue with older events; `None` once the start of the log (or
    /// of `since`) was reached. A page can hold fewer events than asked for and still have a
    /// cursor: each request scans a bounded number of rows.
    pub next_before: Option<u64>,
    /// Rows read for this page.
    pub scanned: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
}

// ---------------------------------------------------------------- works

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ApplyResult {
    pub name: String,
    pub generation: u64,
    pub outcome: ApplyOutcome,
    /// Things the operator probably did not mean, e.g. a cluster named in the targets that is
    /// not registered (the work waits for it). The apply itself succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a work with a git source: the commit its manifests were read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// The hub's last look at a git-sourced work's repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SourceCheck {
    pub checked_at_ms: u64,
    /// The commit the revision named at that look (absent when the look failed).
    pub commit: Option<String>,
    /// Why the look failed; the work keeps its last good generation meanwhile.
    pub error: Option<String>,
}

/// One generation of a work, as kept for `undo` (`GET /v1/works/{name}/history`, oldest first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RevisionView {
    pub generation: u64,
    pub manifests: usize,
    /// Where its manifests came from, as `tetherctl apply` recorded it.
    pub source: Option<String>,
    /// The generation it restores, when an undo made it.
    pub restores: Option<u64>,
    /// It is the work's current generation.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeleteResult {
    pub name: String,
    pub orphan: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WorkSummary {
    pub name: String,
    pub generation: u64,
    /// Set once deleted; clusters are still being cleaned up while they hold it.
    pub deleted: bool,
    pub targeted: usize,
    /// Clusters that acknowledged the current generation.
    pub delivered: usize,
    /// Clusters reporting the current generation Applied or Available.
    pub applied: usize,
    pub available: usize,
    pub failed: usize,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ClusterWorkView {
    pub cluster: String,
    /// The work currently targets this cluster (false while a removal is pending).
    pub targeted: bool,
    pub delivered_generation: Option<u64>,
    pub applied_generation: Option<u64>,
    pub phase: Option<WorkPhase>,
    pub conditions: Vec<tether_protocol::Condition>,
    pub resources: Vec<tether_protocol::ResourceStatus>,
    pub message: String,
    pub observed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WorkDetail {
    pub summary: WorkSummary,
    /// The Work document as applied (docs/user-guide-placement-rollout.md); validated by the
    /// hub, so described here as a free-form object.
    #[schema(value_type = Object)]
    pub document: tether_protocol::work::WorkDocument,
    /// For a work with a git source: the hub's last look at the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<SourceCheck>,
    pub clusters: Vec<ClusterWorkView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StatusLogView {
    /// Position in the hub's log.
    pub log_seq: u64,
    pub cluster: String,
    /// The agent's outbox sequence number.
    pub seq: u64,
    pub work: String,
    pub generation: u64,
    pub phase: WorkPhase,
    pub received_at_ms: u64,
}

/// `POST /v1/backup`: write a consistent snapshot of the hub database to `to`, a path on the
/// hub's machine that must not exist yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    pub to: String,
}

/// Why one cluster was or was not chosen for a work (`GET /v1/works/{name}/placement`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Choice {
    pub cluster: String,
    pub selected: bool,
    pub reason: String,
}

/// A work's rollout (`GET /v1/works/{name}/rollout`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct RolloutView {
    pub generation: u64,
    pub phase: RolloutPhase,
    /// Why it is paused, or what it restores; empty otherwise.
    #[serde(default)]
    pub reason: String,
    pub paused: bool,
    pub total: usize,
    pub admitted: usize,
    pub done: usize,
    pub in_flight: usize,
    pub failed: usize,
    pub pending_offline: usize,
    pub rollback_of: Option<u64>,
    /// Highest (slots in use + newly admitted) at any admission for this generation since the
    /// hub started: the quantity `maxConcurrency` bounds. Simulations check it.
    #[serde(default)]
    pub admission_peak: usize,
}

/// A join token, as created (`POST /v1/tokens`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The secret. Shown once; the hub keeps only its hash.
    pub token: String,
    pub id: String,
    pub expires_at_ms: u64,
}

/// A backup taken while the hub serves (`POST /v1/backup`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BackupInfo {
    pub path: String,
    pub taken_at_ms: u64,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

pub use tether_store::hub::{AdminRole, AdminScope};

/// `POST /v1/admins`: a new admin credential for a key made on the admin's machine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddAdminRequest {
    pub name: String,
    pub role: AdminRole,
    #[serde(default)]
    pub scope: AdminScope,
    /// PEM certificate signing request (`tetherctl admins request`).
    pub csr_pem: String,
    /// Days the certificate is valid (default 90, at most 397).
    #[serde(default)]
    pub valid_days: Option<u64>,
}

/// `POST /v1/admins/{name}/renew`: a new certificate, same role and scope.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenewAdminRequest {
    pub csr_pem: String,
    #[serde(default)]
    pub valid_days: Option<u64>,
}

/// A signed admin certificate, with the CA to put next to it in a tetherctl config.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminIssued {
    pub name: String,
    pub role: AdminRole,
    pub scope: AdminScope,
    pub fingerprint: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub not_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminView {
    pub name: String,
    pub role: AdminRole,
    pub scope: AdminScope,
    pub fingerprint: String,
    pub created_at_ms: u64,
    /// `None` for the credential `init` made (its file is checked at start).
    pub not_after_ms: Option<u64>,
}

/// `GET /v1/whoami`: the credential the hub sees on this connection.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub role: AdminRole,
    pub scope: AdminScope,
}

/// `POST /v1/works/{name}/confirm-removal`: let one held deletion of the work through the
/// deletion circuit breaker of `cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfirmRemovalRequest {
    pub cluster: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfirmRemovalResult {
    pub work: String,
    pub cluster: String,
    /// Whether the agent's breaker was holding a deletion of the work when it arrived (if not,
    /// the confirmation waits for the next one).
    pub was_held: bool,
}

/// `POST /v1/works/{name}/pause` and `/resume`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PauseResult {
    pub work: String,
    pub paused: bool,
}

/// `POST /v1/works/{name}/undo`: the new generation that restores the older one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UndoResult {
    pub work: String,
    pub generation: u64,
}

/// `POST /v1/admins/{name}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RevokedAdmin {
    pub name: String,
    pub revoked_certificates: usize,
}

/// One session of a cluster with a hub process (`ClusterView.recent_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionSpan {
    pub opened_ms: u64,
    /// `None` while it is open.
    pub closed_ms: Option<u64>,
}
