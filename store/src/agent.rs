//! Agent tables and records.

use crate::StrTable;
use serde::{Deserialize, Serialize};
use tether_protocol::Labels;

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
