//! Agent tables and records.

use crate::{SeqTable, StrTable};
use serde::{Deserialize, Serialize};
use tether_protocol::work::ObjectRef;
use tether_protocol::{Labels, WorkStatus};

/// Single-row tables use this key.
pub const CURRENT: &str = "current";

/// The agent's identity once joined: its private key never leaves this file.
pub const IDENTITY: StrTable<Identity> = StrTable::new("identity");
/// A join in progress: key, CSR and request secret survive a restart while waiting for approval.
pub const PENDING_JOIN: StrTable<PendingJoin> = StrTable::new("pending_join");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub key_pem: String,
    pub cert_pem: String,
    /// The hub CA, pinned at join time.
    pub ca_pem: String,
    pub hubs: Vec<String>,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    pub name: String,
    pub key_pem: String,
    pub csr_pem: String,
    pub request_secret: String,
    pub ca_sha256: String,
    pub hubs: Vec<String>,
    pub labels: Labels,
}

/// Desired state per work, committed before the hub is told it arrived.
pub const DESIRED: StrTable<DesiredWork> = StrTable::new("desired_works");
/// What the agent last did per work: the objects it manages (for pruning) and the last status.
pub const APPLIED: StrTable<AppliedWork> = StrTable::new("applied_works");
/// Status changes waiting for the hub's acknowledgement, by sequence number.
pub const OUTBOX: SeqTable<WorkStatus> = SeqTable::new("status_outbox");
/// Per work: the outbox sequence number of its unacknowledged status (for coalescing).
pub const OUTBOX_BY_WORK: StrTable<u64> = StrTable::new("status_outbox_by_work");
/// Outbox counters (key `CURRENT`).
pub const OUTBOX_META: StrTable<OutboxMeta> = StrTable::new("status_outbox_meta");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredWork {
    pub name: String,
    pub generation: u64,
    pub hash: String,
    pub force_conflicts: bool,
    pub manifests: Vec<serde_json::Value>,
    /// Set when the hub withdrew the work and the removal has not been carried out yet.
    pub removal: Option<Removal>,
    /// Singleton: remove the copy after this long without hub contact.
    #[serde(default)]
    pub fence_after_ms: Option<u64>,
    /// The copy was removed by fencing; only a fresh delivery brings it back.
    #[serde(default)]
    pub fenced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub orphan: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedWork {
    pub generation: u64,
    pub hash: String,
    /// Objects this agent created for the work: what pruning and removal act on.
    pub inventory: Vec<ObjectRef>,
    pub last_status: WorkStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMeta {
    /// Next sequence number to assign; never reused, even after the outbox drains.
    pub next_seq: u64,
    /// Highest sequence number the hub acknowledged.
    pub acked_through: u64,
}
