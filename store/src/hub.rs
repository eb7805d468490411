//! Hub tables and records.

use crate::{SeqTable, StrTable};
use serde::{Deserialize, Serialize};
use tether_protocol::work::WorkDocument;
use tether_protocol::{Condition, Facts, HeldWork, Labels, WorkStatus};

/// Registered clusters by name.
pub const CLUSTERS: StrTable<ClusterRecord> = StrTable::new("clusters");
/// Join requests by cluster name.
pub const JOIN_REQUESTS: StrTable<JoinRequestRecord> = StrTable::new("join_requests");
/// Bootstrap tokens by SHA-256 (hex) of the token: the plaintext is never stored.
pub const TOKENS: StrTable<TokenRecord> = StrTable::new("bootstrap_tokens");
/// Revoked certificate serials (hex).
pub const REVOKED: StrTable<RevokedRecord> = StrTable::new("revoked_serials");
/// Append-only security audit log.
pub const AUDIT: SeqTable<AuditEvent> = SeqTable::new("audit_events");
/// Works by name. Deleted works stay as tombstones so generations never go backwards and
/// clusters that were offline during the delete still get the removal.
pub const WORKS: StrTable<WorkRecord> = StrTable::new("works");
/// Every generation's document (`work/<generation, 20 digits>`), for `rollout undo`.
pub const WORK_HISTORY: StrTable<WorkDocument> = StrTable::new("work_history");
/// Progressive rollout state per work.
pub const ROLLOUTS: StrTable<RolloutRecord> = StrTable::new("rollouts");
/// Per cluster and work (`cluster/work`): what was delivered (acknowledged) and the last status.
pub const CLUSTER_WORKS: StrTable<ClusterWorkRecord> = StrTable::new("cluster_works");
/// Per cluster: the highest status sequence number durably stored.
pub const STATUS_CURSORS: StrTable<u64> = StrTable::new("status_cursors");
/// The newest status entries accepted from each cluster (`cluster/<agent seq, 20 digits>`), at
/// most `STATUS_HISTORY_PER_CLUSTER` each: keyed by cluster, so one cluster's history is read
/// and pruned without touching another's, and detach removes it.
pub const STATUS_HISTORY: StrTable<StatusLogEntry> = StrTable::new("status_history");
/// Status entries accepted but not yet filed into `STATUS_HISTORY`, in commit order. Ingest
/// appends here because a hub-wide append dirties about one page per twenty-odd entries, where
/// keyed `cluster/<seq>` rows dirty a page per cluster per commit; the hub's filer moves them in
/// large batches (hub `ingest/history.rs`), so each cluster's page is written once for many
/// entries. Readers of a cluster's history read both tables.
pub const STATUS_UNFILED: SeqTable<StatusLogEntry> = SeqTable::new("status_unfiled");
/// Status entries kept per cluster in `STATUS_HISTORY`.
pub const STATUS_HISTORY_PER_CLUSTER: usize = 1000;
/// The former global status log (every entry of every cluster, unbounded). Moved into
/// `STATUS_HISTORY` and dropped when a hub opens a store that has it.
pub const LEGACY_STATUS_LOG: SeqTable<StatusLogEntry> = SeqTable::new("status_log");
/// SHA-256 fingerprints (hex) of admin client certificates allowed on the admin API.
pub const ADMINS: StrTable<AdminRecord> = StrTable::new("admins");
/// Only in a backup: `taken_at_ms`, when it was taken. The hub that starts on it learns it was
/// restored (and removes the row).
pub const BACKUP_META: StrTable<u64> = StrTable::new("backup_meta");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ClusterState {
    /// Session up and heartbeats arriving.
    Ready,
    /// Heartbeats stopped (or the hub has not heard since it started); not yet Offline.
    Unknown,
    /// No session for longer than the offline grace period.
    Offline,
    /// An administrator denied the cluster; its certificates are revoked.
    Denied,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Ready => "Ready",
            ClusterState::Unknown => "Unknown",
            ClusterState::Offline => "Offline",
            ClusterState::Denied => "Denied",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    pub labels: Labels,
    /// What the agent last reported, clamped to sane ranges. Self-reported: placement reads
    /// it only through `pins`.
    pub facts: Facts,
    /// Facts the hub trusts over the agent's word (set at approval and by an admin).
    #[serde(default)]
    pub pins: FactPins,
    pub conditions: Vec<Condition>,
    pub state: ClusterState,
    pub state_since_ms: u64,
    pub joined_at_ms: u64,
    pub last_seen_ms: Option<u64>,
    /// Serial (hex) of the newest certificate issued to this cluster.
    pub cert_serial: String,
    pub cert_not_after_ms: u64,
    /// The live serials: a session must present one. Every other serial ever issued to the
    /// cluster is in `REVOKED` (revoked when it left this list).
    pub serials: Vec<String>,
    /// When the recent renewals were issued (the last 24 hours), for the renewal rate limit.
    #[serde(default)]
    pub renewals_ms: Vec<u64>,
}

/// Facts a human vouched for: the approver saw them in the join request, or an admin set them.
/// A pinned fact wins over whatever the agent reports later, so a compromised agent cannot
/// steer works meant for other clusters to itself by claiming another arch or a huge capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FactPins {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinDecision {
    Pending,
    Approved { cert_pem: String },
    Denied { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequestRecord {
    pub name: String,
    /// SHA-256 (hex) of the agent's request secret.
    pub secret_sha256: String,
    /// Display id of the token used.
    pub token_id: String,
    pub labels: Labels,
    pub facts: Facts,
    pub csr_pem: String,
    pub peer_addr: String,
    pub decision: JoinDecision,
    pub created_at_ms: u64,
    pub decided_at_ms: Option<u64>,
    pub decided_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id (first characters of the hash), safe to log and display.
    pub id: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub max_uses: u32,
    pub used: u32,
    pub auto_approve: bool,
    /// Labels every cluster joining with this token receives (they override agent labels).
    pub labels: Labels,
    /// Label keys an agent joining with this token may request; empty: any key outside the
    /// reserved `tether.dev/` prefix. Absent in stores written before it existed.
    #[serde(default)]
    pub allowed_labels: Vec<String>,
    /// Set when an administrator revoked the token; a revoked token admits no more joins.
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
    #[serde(default)]
    pub revoked_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    pub serial: String,
    pub cluster: String,
    pub at_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at_ms: u64,
    /// e.g. `join_requested`, `join_approved`, `cert_issued`, `handshake_rejected`.
    pub kind: String,
    pub cluster: Option<String>,
    /// `admin`, `agent:<name>`, `token:<id>`, `hub`.
    pub actor: String,
    pub detail: String,
}

/// An admin credential (keyed by its certificate's SHA-256 fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub name: String,
    pub created_at_ms: u64,
    /// Credentials made before roles existed (only `init`'s) are full admins.
    #[serde(default = "AdminRole::full")]
    pub role: AdminRole,
    #[serde(default)]
    pub scope: AdminScope,
    /// When the certificate expires; `None` for `init`'s, whose file the hub checks at start.
    #[serde(default)]
    pub not_after_ms: Option<u64>,
}

/// What an admin credential may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Read everything the admin API shows; change nothing.
    Viewer,
    /// Works and rollouts, cluster labels, join approvals: within the credential's scope.
    Operator,
    /// Everything, including admin credentials, bootstrap tokens, detach and backups.
    Admin,
}

impl AdminRole {
    pub fn full() -> Self {
        AdminRole::Admin
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Operator => "operator",
            AdminRole::Admin => "admin",
        }
    }
}

/// The part of the fleet an operator may act on. Empty fields do not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminScope {
    /// A cluster set, by label: an operator may act only on clusters with all these labels,
    /// and a work it applies is delivered only to such clusters (checked at every decision,
    /// so a label change that moves a cluster out of the set also moves the work off it).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(inline))]
    pub clusters: Labels,
    /// Kubernetes namespaces the operator's manifests may target. When set, cluster-scoped
    /// objects (other than these namespaces themselves) are refused.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

impl AdminScope {
    pub fn is_unrestricted(&self) -> bool {
        self.clusters.is_empty() && self.namespaces.is_empty()
    }

    /// Whether everything `inner` allows, `self` allows too.
    pub fn contains(&self, inner: &AdminScope) -> bool {
        self.clusters
            .iter()
            .all(|(k, v)| inner.clusters.get(k) == Some(v))
            && (self.namespaces.is_empty()
                || (!inner.namespaces.is_empty()
                    && inner.namespaces.iter().all(|n| self.namespaces.contains(n))))
    }

    /// Whether a cluster with these labels is in the cluster set.
    pub fn admits_cluster(&self, labels: &Labels) -> bool {
        self.clusters.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl std::fmt::Display for AdminScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_unrestricted() {
            return f.write_str("unrestricted");
        }
        let clusters: Vec<String> = self
            .clusters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let all = |v: &[String]| {
            if v.is_empty() {
                "any".to_string()
            } else {
                v.join(",")
            }
        };
        write!(
            f,
            "clusters {} namespaces {}",
            all(&clusters),
            all(&self.namespaces)
        )
    }
}

/// Key of a `CLUSTER_WORKS` row. Both names are DNS-1123 labels, so '/' cannot be ambiguous.
pub fn cluster_work_key(cluster: &str, work: &str) -> String {
    format!("{cluster}/{work}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkRecord {
    pub document: WorkDocument,
    /// Bumped on every change of the spec; never reused, even across delete and re-create.
    pub generation: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub deleted: Option<Deletion>,
    /// The scope of the operator who applied this generation: the work reaches only clusters
    /// in its cluster set, and only operators whose scope contains it may change it.
    #[serde(default)]
    pub scope: AdminScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub at_ms: u64,
    /// Leave the objects in the clusters; only stop managing them.
    pub orphan: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterWorkRecord {
    /// What the agent acknowledged holding (committed in its store).
    pub delivered: Option<HeldWork>,
    pub delivered_at_ms: Option<u64>,
    /// The newest status the agent reported.
    pub status: Option<WorkStatus>,
    pub status_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusLogEntry {
    pub cluster: String,
    /// The agent's outbox sequence number.
    pub seq: u64,
    pub received_at_ms: u64,
    pub status: WorkStatus,
}

pub fn status_history_key(cluster: &str, seq: u64) -> String {
    format!("{}{seq:020}", cluster_prefix(cluster))
}

/// Prefix of every per-cluster key (`CLUSTER_WORKS`, `STATUS_HISTORY`) of `cluster`. Cluster
/// names are DNS-1123 labels, so `a/` never matches the keys of `ab`.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{cluster}/")
}

pub fn work_history_key(work: &str, generation: u64) -> String {
    format!("{work}/{generation:020}")
}

/// The prefix of every [`work_history_key`] of `work` (names hold no `/`).
pub fn work_history_prefix(work: &str) -> String {
    format!("{work}/")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The generation being rolled out; state resets when it changes.
    pub generation: u64,
    /// Clusters allowed to receive it, with the hub time they were admitted.
    pub admitted: std::collections::BTreeMap<String, u64>,
    /// First hub time each cluster was seen healthy on this generation (soak clock, hub time).
    pub healthy_since: std::collections::BTreeMap<String, u64>,
    pub paused: bool,
    /// This generation restores an earlier one: it goes everywhere at once.
    pub rollback_of: Option<u64>,
    /// Set once an automatic rollback was started from this generation.
    pub rolled_back: bool,
    /// Last computed phase, for display.
    pub phase: String,
}
