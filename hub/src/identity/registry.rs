//! Registration and identity decisions over the hub store: bootstrap tokens, join requests,
//! approval, denial, detachment and certificate renewal.
//!
//! Every operation runs in one durable transaction and writes its audit event in that same
//! transaction, so the audit log never disagrees with the state it describes. The current time
//! is a parameter.

use crate::api::CreatedToken;
use crate::identity::pki::{CertificateAuthority, PkiError};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::names::{validate_cluster_name, validate_labels, NameError};
use tether_protocol::{ErrorCode, JoinPoll, JoinRequest, JoinStatus, Labels};
use tether_store::hub::{
    cluster_prefix, AuditEvent, ClusterRecord, ClusterState, JoinDecision, JoinRequestRecord,
    RevokedRecord, TokenRecord, AUDIT, CLUSTERS, CLUSTER_WORKS, JOIN_REQUESTS, REVOKED,
    STATUS_CURSORS, TOKENS, WORKS,
};
use tether_store::{Store, StoreError, WriteTx};
use tether_transport::tls::RevocationList;

/// A cluster keeps at most this many live serials (current + ones from renewals whose answer
/// may not have arrived). Older ones stop being accepted.
const MAX_LIVE_SERIALS: usize = 3;

/// Certificates one cluster may be issued by renewal in any 24 hours. An agent renews once per
/// certificate lifetime (at 70-90 % of 30 days), plus a retry when an answer is lost; a stolen
/// certificate renewed in a loop (30,018 times in 25 s, in the red-team run) gets this many.
pub const RENEWALS_PER_DAY: usize = 6;
const DAY_MS: u64 = 86_400_000;

/// Whether another renewal may be issued now, given the issue times of recent ones; `Err`
/// carries when the next one may be.
pub fn renewal_allowed(recent_ms: &[u64], now_ms: u64) -> Result<(), u64> {
    let in_window: Vec<u64> = recent_ms
        .iter()
        .copied()
        .filter(|&t| now_ms.saturating_sub(t) < DAY_MS && t <= now_ms)
        .collect();
    if in_window.len() < RENEWALS_PER_DAY {
        return Ok(());
    }
    let oldest = in_window.iter().copied().min().unwrap_or(now_ms);
    Err(oldest + DAY_MS)
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Deliberately one message for every reason: the joiner is anonymous, and telling it a
    /// token exists (expired, used up, revoked) or naming its id helps an attacker guessing or
    /// replaying tokens. The reason is in the hub log and the audit log.
    #[error("bootstrap token refused (unknown, expired, used up or revoked); ask an administrator for a new one")]
    TokenRefused(TokenRefusal),
    /// An agent asked for a label it may not set; the message names the key.
    #[error("{0}")]
    LabelRefused(String),
    #[error("{0}")]
    NameTaken(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Csr(#[from] PkiError),
    #[error("no join request for {0:?} matches this request secret")]
    UnknownRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cluster {0:?} has been denied")]
    Denied(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("cluster {cluster:?} was issued {RENEWALS_PER_DAY} certificates in the last 24 hours; the next renewal is allowed at {}", crate::util::rfc3339(*next_ms))]
    RenewalRateLimited { cluster: String, next_ms: u64 },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

impl RegistryError {
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            // TokenExpired and TokenExhausted stay in the protocol for older hubs; this hub
            // sends one code for every bad token.
            RegistryError::TokenRefused(_) => ErrorCode::TokenInvalid,
            // The code agents already get for invalid labels (`NameError` covers labels); a new
            // code would not decode in older agents.
            RegistryError::LabelRefused(_) => ErrorCode::NameInvalid,
            RegistryError::NameTaken(_) | RegistryError::Conflict(_) => ErrorCode::NameTaken,
            RegistryError::Name(_) => ErrorCode::NameInvalid,
            RegistryError::Csr(_) => ErrorCode::CsrInvalid,
            RegistryError::UnknownRequest(_) | RegistryError::NotFound(_) => {
                ErrorCode::Unauthorized
            }
            RegistryError::Denied(_) => ErrorCode::Denied,
            RegistryError::BadRequest(_) => ErrorCode::BadRequest,
            RegistryError::RenewalRateLimited { .. } => ErrorCode::Busy,
            RegistryError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// Why a join's token was refused. Only for the hub log and the audit log: the joiner gets
/// the same answer for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired { id: String },
    UsedUp { id: String },
    Revoked { id: String },
}

impl TokenRefusal {
    /// The token id, when the presented token exists.
    pub fn token_id(&self) -> Option<&str> {
        match self {
            TokenRefusal::Unknown => None,
            TokenRefusal::Expired { id }
            | TokenRefusal::UsedUp { id }
            | TokenRefusal::Revoked { id } => Some(id),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            TokenRefusal::Unknown => "unknown token",
            TokenRefusal::Expired { .. } => "token expired",
            TokenRefusal::UsedUp { .. } => "token used up",
            TokenRefusal::Revoked { .. } => "token revoked",
        }
    }
}

/// Longest lifetime of a bootstrap token. A token is a bearer secret that is typed into
/// installers and CI: past a month it is more likely leaked than still needed.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Most joins one token admits: a whole fleet (the hub is benchmarked at this size) can enroll
/// with one token, but a leaked one cannot register clusters without bound.
pub const MAX_TOKEN_USES: u32 = 100_000;
/// Agents may not request labels under this prefix: they carry hub semantics (facts, the
/// maintenance window). Token labels, set by an administrator, may.
pub const RESERVED_LABEL_PREFIX: &str = "tether.dev/";

/// Options for a new bootstrap token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub ttl: Duration,
    pub uses: u32,
    pub auto_approve: bool,
    pub labels: Labels,
    /// Label keys agents may request with this token; empty: any unreserved key.
    pub allowed_labels: Vec<String>,
}

/// What the caller must do after a deny/detach commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub cluster: String,
    pub serials: Vec<String>,
}

pub struct Registry {
    store: Arc<Store>,
    ca: CertificateAuthority,
    revoked: Arc<RevocationList>,
    cert_validity: Duration,
    /// Audit events from anonymous peers (bad-token joins, admin 401s), coalesced so a flood
    /// costs a few rows; the hub drains it into the bounded audit queue.
    pub coalesced: AuditCoalescer,
}

/// How many distinct (kind, actor) pairs are tracked per window; beyond that they are folded
/// into `(kind, "anonymous")`, so an attacker cycling through actors cannot grow the map.
const COALESCE_KEYS: usize = 64;
/// Peer addresses named in one aggregated event.
const COALESCE_SAMPLES: usize = 8;
/// Longest detail kept for an aggregated event (details can carry peer-chosen names).
const COALESCE_DETAIL: usize = 256;

/// Coalesces repeated audit events from unauthenticated sources: the first of each kind and
/// actor in a window is audited at once, later ones are counted and audited as one event when
/// the window closes. A flood of any size costs at most two rows per window per key, and
/// memory bounded by `COALESCE_KEYS`.
pub struct AuditCoalescer {
    window_ms: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), CoalescedWindow>>,
}

struct CoalescedWindow {
    opened_ms: u64,
    /// The first event of the window, not yet handed out.
    first: Option<AuditEvent>,
    /// Events after the first.
    more: u64,
    peers: std::collections::BTreeSet<String>,
    last_detail: String,
}

impl Default for AuditCoalescer {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl AuditCoalescer {
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: (window.as_millis() as u64).into(),
            open: Default::default(),
        }
    }

    /// Shorten or lengthen the window (tests use short ones).
    pub fn set_window(&self, window: Duration) {
        self.window_ms.store(
            window.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Returns whether this event opened a window (callers log the first at a louder level:
    /// the hub log must not grow with a flood either).
    pub fn record(
        &self,
        kind: &'static str,
        actor: &str,
        detail: String,
        peer: &str,
        now_ms: u64,
    ) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (kind, actor.to_string());
        if !open.contains_key(&key) && open.len() >= COALESCE_KEYS {
            key.1 = "anonymous".into();
        }
        // The address without the port: one peer reconnecting is one peer.
        let peer = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip).to_string();
        let mut detail = detail;
        if detail.len() > COALESCE_DETAIL {
            let mut cut = COALESCE_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        match open.get_mut(&key) {
            Some(w) => {
                w.more += 1;
                if w.peers.len() < COALESCE_SAMPLES {
                    w.peers.insert(peer);
                }
                w.last_detail = detail;
                false
            }
            None => {
                let first = AuditEvent {
                    at_ms: now_ms,
                    kind: kind.to_string(),
                    cluster: None,
                    actor: key.1.clone(),
                    detail: detail.clone(),
                };
                open.insert(
                    key,
                    CoalescedWindow {
                        opened_ms: now_ms,
                        first: Some(first),
                        more: 0,
                        peers: Default::default(),
                        last_detail: detail,
                    },
                );
                true
            }
        }
    }

    /// Events to write now: first events not yet handed out, and one aggregate per window that
    /// has closed.
    pub fn drain(&self, now_ms: u64) -> Vec<AuditEvent> {
        let window_ms = self.window_ms.load(std::sync::atomic::Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        open.retain(|(kind, actor), w| {
            out.extend(w.first.take());
            if now_ms.saturating_sub(w.opened_ms) < window_ms {
                return true;
            }
            if w.more > 0 {
                out.push(AuditEvent {
                    at_ms: now_ms,
                    kind: kind.to_string(),
                    cluster: None,
                    actor: actor.clone(),
                    detail: format!(
                        "{} more in the {}s after the first (coalesced; peers: {}{}); last: {}",
                        w.more,
                        now_ms.saturating_sub(w.opened_ms) / 1000,
                        w.peers.iter().cloned().collect::<Vec<_>>().join(", "),
                        if w.peers.len() >= COALESCE_SAMPLES {
                            ", ..."
                        } else {
                            ""
                        },
                        w.last_detail
                    ),
                });
            }
            false
        });
        out
    }
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn audit(
    tx: &WriteTx,
    at_ms: u64,
    kind: &str,
    cluster: Option<&str>,
    actor: &str,
    detail: impl Into<String>,
) -> Result<(), StoreError> {
    tx.append(
        &AUDIT,
        &AuditEvent {
            at_ms,
            kind: kind.to_string(),
            cluster: cluster.map(str::to_string),
            actor: actor.to_string(),
            detail: detail.into(),
        },
    )?;
    Ok(())
}

/// Constant-time comparison for secrets' hashes.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What a detached cluster leaves behind: its status history and cursor, and its per-work
/// rows, except those saying a singleton's copy may still run there (a singleton must not start elsewhere
/// because its holder was detached, see `singleton`). The kept rows restart their status
/// sequence, so an agent that re-joins under the name is heard from its first status.
fn forget_cluster_state(tx: &WriteTx, cluster: &str) -> Result<(), StoreError> {
    let prefix = cluster_prefix(cluster);
    crate::ingest::history::forget(tx, cluster)?;
    tx.remove(&STATUS_CURSORS, cluster)?;
    for (key, mut row) in tx.list_prefix(&CLUSTER_WORKS, &prefix)? {
        let work = &key[prefix.len()..];
        let singleton = tx.get(&WORKS, work)?.is_some_and(|w| {
            w.document
                .spec
                .failover
                .is_some_and(|f| f.mode == tether_protocol::work::FailoverMode::Singleton)
        });
        if singleton && crate::decide::singleton::copy_may_run(Some(&row)) {
            row.status_seq = 0;
            tx.put(&CLUSTER_WORKS, &key, &row)?;
        } else {
            tx.remove(&CLUSTER_WORKS, &key)?;
        }
    }
    Ok(())
}

impl Registry {
    /// The serials the TLS verifier refuses (another replica's revocations are added here).
    pub(crate) fn revocations(&self) -> &RevocationList {
        &self.revoked
    }

    pub fn new(
        store: Arc<Store>,
        ca: CertificateAuthority,
        revoked: Arc<RevocationList>,
        cert_validity: Duration,
    ) -> Self {
        Self {
            store,
            ca,
            revoked,
            cert_validity,
            coalesced: AuditCoalescer::default(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.ca_pem
    }

    pub fn create_token(
        &self,
        spec: &TokenSpec,
        actor: &str,
        now_ms: u64,
    ) -> Result<CreatedToken, RegistryError> {
        if spec.uses == 0 {
            return Err(RegistryError::BadRequest(
                "a token needs at least one use".into(),
            ));
        }
        if spec.uses > MAX_TOKEN_USES {
            return Err(RegistryError::BadRequest(format!(
                "a token admits at most {MAX_TOKEN_USES} joins, {} requested; create several tokens",
                spec.uses
            )));
        }
        if spec.ttl.is_zero() {
            return Err(RegistryError::BadRequest(
                "token ttl must be positive".into(),
            ));
        }
        if spec.ttl > MAX_TOKEN_TTL {
            return Err(RegistryError::BadRequest(format!(
                "token ttl {}s exceeds the maximum of 30d ({}s)",
                spec.ttl.as_secs(),
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        validate_labels(&spec.labels)?;
        let allowed: Labels = spec
            .allowed_labels
            .iter()
            .map(|k| (k.clone(), String::new()))
            .collect();
        validate_labels(&allowed)?;
        if let Some(k) = spec
            .allowed_labels
            .iter()
            .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
        {
            return Err(RegistryError::BadRequest(format!(
                "label {k:?} is reserved ({RESERVED_LABEL_PREFIX}*): agents may never request it; set it as a token label instead"
            )));
        }
        let secret: [u8; 32] = rand::random();
        let token = format!("tether1.{}", hex::encode(secret));
        let hash = sha256_hex(&token);
        let id = hash[..12].to_string();
        let expires_at_ms = now_ms.saturating_add(spec.ttl.as_millis() as u64);
        let record = TokenRecord {
            id: id.clone(),
            created_at_ms: now_ms,
            expires_at_ms,
            max_uses: spec.uses,
            used: 0,
            auto_approve: spec.auto_approve,
            labels: spec.labels.clone(),
            allowed_labels: spec.allowed_labels.clone(),
            revoked_at_ms: None,
            revoked_by: None,
        };
        self.store.write(|tx| {
            tx.put(&TOKENS, &hash, &record)?;
            audit(
                tx,
                now_ms,
                "token_created",
                None,
                actor,
                format!(
                    "token {id}: uses={} auto_approve={} expires={}{}",
                    spec.uses,
                    spec.auto_approve,
                    crate::util::rfc3339(expires_at_ms),
                    if spec.allowed_labels.is_empty() {
                        String::new()
                    } else {
                        format!(" allowed_labels={}", spec.allowed_labels.join(","))
                    }
                ),
            )?;
            Ok::<_, RegistryError>(())
        })?;
        Ok(CreatedToken {
            token,
            id,
            expires_at_ms,
        })
    }

    /// Revoke a token by its public id: it admits no further joins. Join requests already
    /// made with it are left for an administrator to decide.
    pub fn revoke_token(
        &self,
        id: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<TokenRecord, RegistryError> {
        // The id is the first 12 hex digits of the key (the token's SHA-256), so a prefix scan
        // finds it; anything else could match several tokens.
        if id.len() != 12
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(RegistryError::BadRequest(format!(
                "{id:?} is not a token id (12 lowercase hex digits, as `tetherctl token list` shows)"
            )));
        }
        self.store.write(|tx| {
            let mut rows = tx.list_prefix(&TOKENS, id)?;
            let (hash, mut token) = match rows.len() {
                1 => rows.remove(0),
                0 => return Err(RegistryError::NotFound(format!("token {id}"))),
                _ => {
                    return Err(RegistryError::Conflict(format!(
                        "token id {id} is ambiguous"
                    )))
                }
            };
            if token.revoked_at_ms.is_some() {
                return Err(RegistryError::Conflict(format!(
                    "token {id} is already revoked"
                )));
            }
            token.revoked_at_ms = Some(now_ms);
            token.revoked_by = Some(actor.to_string());
            tx.put(&TOKENS, &hash, &token)?;
            audit(
                tx,
                now_ms,
                "token_revoked",
                None,
                actor,
                format!(
                    "token {id}: {} of {} uses spent",
                    token.used, token.max_uses
                ),
            )?;
            Ok(token)
        })
    }

    /// Handle a join request from the (unauthenticated) join channel.
    pub fn submit_join(
        &self,
        req: &JoinRequest,
        peer_addr: &str,
        now_ms: u64,
    ) -> Result<JoinStatus, RegistryError> {
        validate_cluster_name(&req.name)?;
        validate_labels(&req.labels)?;
        if req.request_secret.len() < 32 || req.request_secret.len() > 128 {
            return Err(RegistryError::BadRequest(
                "request secret must be 32-128 characters".into(),
            ));
        }
        if let Some(k) = req
            .labels
            .keys()
            .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
        {
            return Err(RegistryError::LabelRefused(format!(
                "label {k:?} is reserved for the hub ({RESERVED_LABEL_PREFIX}*); an administrator can set it with a token label"
            )));
        }
        CertificateAuthority::check_csr(&req.csr_pem)?;
        let secret_hash = sha256_hex(&req.request_secret);
        let token_hash = sha256_hex(&req.token);
        let r = self.store.write(|tx| {
            if let Some(existing) = tx.get(&JOIN_REQUESTS, &req.name)? {
                if same_secret(&existing.secret_sha256, &secret_hash) {
                    // A retry after a lost answer: report, do not spend the token again.
                    return Ok(self.status_of(&existing));
                }
            }
            let mut token = tx
                .get(&TOKENS, &token_hash)?
                .ok_or(RegistryError::TokenRefused(TokenRefusal::Unknown))?;
            let id = token.id.clone();
            if token.revoked_at_ms.is_some() {
                return Err(RegistryError::TokenRefused(TokenRefusal::Revoked { id }));
            }
            if now_ms >= token.expires_at_ms {
                return Err(RegistryError::TokenRefused(TokenRefusal::Expired { id }));
            }
            if token.used >= token.max_uses {
                return Err(RegistryError::TokenRefused(TokenRefusal::UsedUp { id }));
            }
            if !token.allowed_labels.is_empty() {
                if let Some(k) = req
                    .labels
                    .keys()
                    .find(|k| !token.allowed_labels.contains(k))
                {
                    return Err(RegistryError::LabelRefused(format!(
                        "label {k:?} is not allowed by this token (allowed: {})",
                        token.allowed_labels.join(", ")
                    )));
                }
            }
            if tx.get(&CLUSTERS, &req.name)?.is_some() {
                return Err(RegistryError::NameTaken(format!(
                    "a cluster named {:?} is already registered",
                    req.name
                )));
            }
            if let Some(existing) = tx.get(&JOIN_REQUESTS, &req.name)? {
                let why = match existing.decision {
                    JoinDecision::Pending => "is already pending",
                    JoinDecision::Denied { .. } => {
                        "was denied (an admin can clear it with `tetherctl clusters detach`)"
                    }
                    JoinDecision::Approved { .. } => "was already approved",
                };
                return Err(RegistryError::NameTaken(format!(
                    "a join request for {:?} {why}",
                    req.name
                )));
            }
            token.used += 1;
            tx.put(&TOKENS, &token_hash, &token)?;
            let mut labels = req.labels.clone();
            labels.extend(token.labels.clone());
            let mut record = JoinRequestRecord {
                name: req.name.clone(),
                secret_sha256: secret_hash.clone(),
                token_id: token.id.clone(),
                labels,
                facts: crate::fleet::facts::clamp(&req.facts),
                csr_pem: req.csr_pem.clone(),
                peer_addr: peer_addr.to_string(),
                decision: JoinDecision::Pending,
                created_at_ms: now_ms,
                decided_at_ms: None,
                decided_by: None,
            };
            audit(
                tx,
                now_ms,
                "join_requested",
                Some(&req.name),
                &format!("token:{}", token.id),
                format!(
                    "from {peer_addr}, arch={} agent={}",
                    record.facts.arch, record.facts.agent_version
                ),
            )?;
            if token.auto_approve {
                self.approve_in(tx, &mut record, &format!("token:{}", token.id), now_ms)?;
            }
            tx.put(&JOIN_REQUESTS, &req.name, &record)?;
            Ok(self.status_of(&record))
        });
        if let Err(RegistryError::TokenRefused(why)) = &r {
            // The joiner learns nothing; the operator learns everything, at a bounded cost.
            let actor = why
                .token_id()
                .map_or_else(|| "anonymous".to_string(), |id| format!("token:{id}"));
            let first = self.coalesced.record(
                "join_refused",
                &actor,
                format!(
                    "{} for cluster {:?} from {peer_addr}",
                    why.reason(),
                    req.name
                ),
                peer_addr,
                now_ms,
            );
            if first {
                tracing::warn!(cluster = %req.name, peer = peer_addr, token = why.token_id().unwrap_or("-"), reason = why.reason(), "join refused: bad bootstrap token (more like it this minute are only counted in the audit log)");
            } else {
                tracing::debug!(cluster = %req.name, peer = peer_addr, token = why.token_id().unwrap_or("-"), reason = why.reason(), "join refused: bad bootstrap token");
            }
        }
        r
    }

    pub fn poll_join(&self, poll: &JoinPoll) -> Result<JoinStatus, RegistryError> {
        let secret_hash = sha256_hex(&poll.request_secret);
        let record = self
            .store
            .read(|tx| tx.get(&JOIN_REQUESTS, &poll.name))?
            .filter(|r| same_secret(&r.secret_sha256, &secret_hash))
            .ok_or_else(|| RegistryError::UnknownRequest(poll.name.clone()))?;
        Ok(self.status_of(&record))
    }

    fn status_of(&self, r: &JoinRequestRecord) -> JoinStatus {
        match &r.decision {
            JoinDecision::Pending => JoinStatus::Pending,
            JoinDecision::Approved { cert_pem } => JoinStatus::Approved {
                cert_pem: cert_pem.clone(),
                ca_pem: self.ca.ca_pem.clone(),
            },
            JoinDecision::Denied { reason } => JoinStatus::Denied {
                reason: reason.clone(),
            },
        }
    }

    fn approve_in(
        &self,
        tx: &WriteTx,
        record: &mut JoinRequestRecord,
        actor: &str,
        now_ms: u64,
    ) -> Result<ClusterRecord, RegistryError> {
        let issued =
            self.ca
                .sign_cluster(&record.csr_pem, &record.name, self.cert_validity, now_ms)?;
        let cluster = ClusterRecord {
            name: record.name.clone(),
            labels: record.labels.clone(),
            facts: record.facts.clone(),
            pins: crate::fleet::facts::pins_at_approval(&record.facts),
            conditions: Vec::new(),
            state: ClusterState::Unknown,
            state_since_ms: now_ms,
            joined_at_ms: now_ms,
            last_seen_ms: None,
            cert_serial: issued.serial_hex.clone(),
            cert_not_after_ms: issued.not_after_ms,
            serials: vec![issued.serial_hex.clone()],
            renewals_ms: Vec::new(),
        };
        tx.put(&CLUSTERS, &record.name, &cluster)?;
        record.decision = JoinDecision::Approved {
            cert_pem: issued.cert_pem,
        };
        record.decided_at_ms = Some(now_ms);
        record.decided_by = Some(actor.to_string());
        audit(tx, now_ms, "join_approved", Some(&record.name), actor, "")?;
        audit(
            tx,
            now_ms,
            "cert_issued",
            Some(&record.name),
            actor,
            format!(
                "serial {} valid until {}",
                issued.serial_hex,
                crate::util::rfc3339(issued.not_after_ms)
            ),
        )?;
        Ok(cluster)
    }

    pub fn approve(
        &self,
        name: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<ClusterRecord, RegistryError> {
        self.store.write(|tx| {
            let mut record = tx
                .get(&JOIN_REQUESTS, name)?
                .ok_or_else(|| RegistryError::NotFound(format!("join request {name:?}")))?;
            if record.decision != JoinDecision::Pending {
                return Err(RegistryError::Conflict(format!(
                    "join request {name:?} is not pending"
                )));
            }
            let cluster = self.approve_in(tx, &mut record, actor, now_ms)?;
            tx.put(&JOIN_REQUESTS, name, &record)?;
            Ok(cluster)
        })
    }

    /// Deny a pending request, or deny (and cut off) a registered cluster. Returns the
    /// revocation to apply to live sessions, if the cluster was registered.
    pub fn deny(
        &self,
        name: &str,
        reason: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<Option<Revocation>, RegistryError> {
        let revocation = self.store.write(|tx| {
            let mut found = false;
            if let Some(mut req) = tx.get(&JOIN_REQUESTS, name)? {
                if req.decision == JoinDecision::Pending {
                    req.decision = JoinDecision::Denied {
                        reason: reason.to_string(),
                    };
                    req.decided_at_ms = Some(now_ms);
                    req.decided_by = Some(actor.to_string());
                    tx.put(&JOIN_REQUESTS, name, &req)?;
                    found = true;
                }
            }
            let mut revocation = None;
            if let Some(mut cluster) = tx.get(&CLUSTERS, name)? {
                found = true;
                revocation = Some(self.revoke_in(tx, &cluster, "denied", actor, now_ms)?);
                cluster.state = ClusterState::Denied;
                cluster.state_since_ms = now_ms;
                // The agent's self-report (AgentReady=True...) ended with its last session.
                cluster.conditions.clear();
                tx.put(&CLUSTERS, name, &cluster)?;
            }
            if !found {
                return Err(RegistryError::NotFound(format!(
                    "cluster or pending join request {name:?}"
                )));
            }
            audit(tx, now_ms, "join_denied", Some(name), actor, reason)?;
            Ok::<_, RegistryError>(revocation)
        })?;
        self.apply_revocation(revocation.as_ref());
        Ok(revocation)
    }

    /// Pin (or unpin) facts placement trusts over the agent's reports.
    pub fn pin_facts(
        &self,
        name: &str,
        req: &crate::api::PinFactsRequest,
        actor: &str,
        now_ms: u64,
    ) -> Result<ClusterRecord, RegistryError> {
        self.store.write(|tx| {
            let mut rec = tx
                .get(&CLUSTERS, name)?
                .ok_or_else(|| RegistryError::NotFound(format!("cluster {name:?}")))?;
            let pins = crate::fleet::facts::apply_pins(&rec.pins, &rec.facts, req)
                .map_err(RegistryError::BadRequest)?;
            let detail = format!(
                "pins {} -> {}",
                crate::fleet::facts::describe_pins(&rec.pins),
                crate::fleet::facts::describe_pins(&pins)
            );
            rec.pins = pins;
            tx.put(&CLUSTERS, name, &rec)?;
            audit(tx, now_ms, "facts_pinned", Some(name), actor, detail)?;
            Ok(rec)
        })
    }

    /// Change a registered cluster's labels (the admin's word; reserved `tether.dev/` keys
    /// included). The result must still be a valid label set.
    pub fn set_labels(
        &self,
        name: &str,
        req: &crate::api::LabelsRequest,
        actor: &str,
        now_ms: u64,
    ) -> Result<ClusterRecord, RegistryError> {
        if let Some(k) = req.remove.iter().find(|k| req.set.contains_key(*k)) {
            return Err(RegistryError::BadRequest(format!(
                "label {k:?} is both set and removed"
            )));
        }
        self.store.write(|tx| {
            let mut rec = tx
                .get(&CLUSTERS, name)?
                .ok_or_else(|| RegistryError::NotFound(format!("cluster {name:?}")))?;
            let mut labels = rec.labels.clone();
            let mut changes = Vec::new();
            for k in &req.remove {
                if let Some(old) = labels.remove(k) {
                    changes.push(format!("-{k} (was {old:?})"));
                }
            }
            for (k, v) in &req.set {
                match labels.insert(k.clone(), v.clone()) {
                    Some(old) if &old == v => {}
                    Some(old) => changes.push(format!("{k}={v} (was {old:?})")),
                    None => changes.push(format!("+{k}={v}")),
                }
            }
            tether_protocol::names::validate_labels(&labels)
                .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
            if changes.is_empty() {
                return Ok(rec);
            }
            rec.labels = labels;
            tx.put(&CLUSTERS, name, &rec)?;
            audit(
                tx,
                now_ms,
                "labels_changed",
                Some(name),
                actor,
                changes.join(", "),
            )?;
            Ok(rec)
        })
    }

    /// Remove a cluster (and any join request for its name), revoking its certificates. The
    /// name becomes free for a new join.
    pub fn detach(
        &self,
        name: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<Option<Revocation>, RegistryError> {
        let revocation = self.store.write(|tx| {
            let had_request = tx.remove(&JOIN_REQUESTS, name)?;
            let revocation = match tx.get(&CLUSTERS, name)? {
                Some(cluster) => {
                    let r = self.revoke_in(tx, &cluster, "detached", actor, now_ms)?;
                    tx.remove(&CLUSTERS, name)?;
                    forget_cluster_state(tx, name)?;
                    Some(r)
                }
                None => None,
            };
            if !had_request && revocation.is_none() {
                return Err(RegistryError::NotFound(format!("cluster {name:?}")));
            }
            audit(tx, now_ms, "cluster_detached", Some(name), actor, "")?;
            Ok::<_, RegistryError>(revocation)
        })?;
        self.apply_revocation(revocation.as_ref());
        Ok(revocation)
    }

    fn revoke_in(
        &self,
        tx: &WriteTx,
        cluster: &ClusterRecord,
        reason: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<Revocation, RegistryError> {
        for serial in &cluster.serials {
            tx.put(
                &REVOKED,
                serial,
                &RevokedRecord {
                    serial: serial.clone(),
                    cluster: cluster.name.clone(),
                    at_ms: now_ms,
                    reason: reason.to_string(),
                },
            )?;
            audit(
                tx,
                now_ms,
                "cert_revoked",
                Some(&cluster.name),
                actor,
                format!("serial {serial}: {reason}"),
            )?;
        }
        Ok(Revocation {
            cluster: cluster.name.clone(),
            serials: cluster.serials.clone(),
        })
    }

    /// Only after the commit, so the in-memory list never revokes what the store does not.
    fn apply_revocation(&self, r: Option<&Revocation>) {
        for serial in r.iter().flat_map(|r| r.serials.iter()) {
            self.revoked.revoke(serial);
        }
    }

    /// Issue a fresh certificate to an authenticated cluster. `cluster` comes from the
    /// verified certificate, never from the request.
    /// `presented_serial` is the certificate the renewing session authenticated with: it is
    /// never dropped from the live list, so renewal answers lost on a flaky link cannot lock the
    /// agent out of the certificate it still holds.
    pub fn renew(
        &self,
        cluster: &str,
        presented_serial: &str,
        csr_pem: &str,
        now_ms: u64,
    ) -> Result<String, RegistryError> {
        let (cert_pem, superseded) = self.store.write(|tx| {
            let mut record = tx
                .get(&CLUSTERS, cluster)?
                .ok_or_else(|| RegistryError::NotFound(format!("cluster {cluster:?}")))?;
            if record.state == ClusterState::Denied {
                return Err(RegistryError::Denied(cluster.to_string()));
            }
            if let Err(next_ms) = renewal_allowed(&record.renewals_ms, now_ms) {
                return Err(RegistryError::RenewalRateLimited {
                    cluster: cluster.to_string(),
                    next_ms,
                });
            }
            let issued = self
                .ca
                .sign_cluster(csr_pem, cluster, self.cert_validity, now_ms)?;
            record.cert_serial = issued.serial_hex.clone();
            record.cert_not_after_ms = issued.not_after_ms;
            record.serials.push(issued.serial_hex.clone());
            record
                .renewals_ms
                .retain(|&t| now_ms.saturating_sub(t) < DAY_MS && t <= now_ms);
            record.renewals_ms.push(now_ms);
            // A serial leaving the live set is revoked at once, so that the live set is every
            // serial of the cluster the TLS layer accepts, and deny or detach (which revoke
            // the live set) leave none behind.
            let mut superseded = Vec::new();
            while record.serials.len() > MAX_LIVE_SERIALS {
                match record.serials.iter().position(|s| s != presented_serial) {
                    Some(oldest_other) => superseded.push(record.serials.remove(oldest_other)),
                    None => break,
                };
            }
            for serial in &superseded {
                tx.put(
                    &REVOKED,
                    serial,
                    &RevokedRecord {
                        serial: serial.clone(),
                        cluster: cluster.to_string(),
                        at_ms: now_ms,
                        reason: "superseded".into(),
                    },
                )?;
            }
            tx.put(&CLUSTERS, cluster, &record)?;
            audit(
                tx,
                now_ms,
                "cert_renewed",
                Some(cluster),
                &format!("agent:{cluster}"),
                format!(
                    "serial {} valid until {}{}",
                    issued.serial_hex,
                    crate::util::rfc3339(issued.not_after_ms),
                    if superseded.is_empty() {
                        String::new()
                    } else {
                        format!("; superseded and revoked: {}", superseded.join(", "))
                    }
                ),
            )?;
            Ok((issued.cert_pem, superseded))
        })?;
        // Only after the commit, as for deny and detach.
        for serial in &superseded {
            self.revoked.revoke(serial);
        }
        Ok(cert_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::Facts;

    const NOW: u64 = 1_800_000_000_000;

    fn registry(dir: &std::path::Path) -> Registry {
        let m = crate::identity::pki::generate("hub", &[], NOW).unwrap();
        let store = Arc::new(Store::open(dir.join("hub.redb")).unwrap());
        let ca = CertificateAuthority::load(&m.ca_pem, &m.ca_key_pem).unwrap();
        Registry::new(
            store,
            ca,
            Arc::new(RevocationList::default()),
            Duration::from_secs(3600),
        )
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn join(token: &str, name: &str, secret: &str) -> JoinRequest {
        JoinRequest {
            token: token.into(),
            name: name.into(),
            labels: Labels::from([("region".to_string(), "eu".to_string())]),
            facts: Facts::default(),
            csr_pem: csr(),
            request_secret: secret.into(),
        }
    }

    fn spec(uses: u32, auto: bool) -> TokenSpec {
        TokenSpec {
            ttl: Duration::from_secs(60),
            uses,
            auto_approve: auto,
            labels: Labels::from([("region".to_string(), "forced".to_string())]),
            allowed_labels: vec![],
        }
    }

    #[test]
    fn token_rules() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(1, false), "admin", NOW).unwrap();
        let s1 = "a".repeat(32);
        // Unknown token.
        assert!(matches!(
            r.submit_join(&join("tether1.nope", "c1", &s1), "p", NOW),
            Err(RegistryError::TokenRefused(TokenRefusal::Unknown))
        ));
        // Expired.
        assert!(matches!(
            r.submit_join(&join(&t.token, "c1", &s1), "p", NOW + 60_000),
            Err(RegistryError::TokenRefused(TokenRefusal::Expired { .. }))
        ));
        assert_eq!(
            r.submit_join(&join(&t.token, "c1", &s1), "p", NOW).unwrap(),
            JoinStatus::Pending
        );
        // A retry with the same secret is idempotent even though the token is now spent.
        assert_eq!(
            r.submit_join(&join(&t.token, "c1", &s1), "p", NOW).unwrap(),
            JoinStatus::Pending
        );
        // Reused single-use token.
        assert!(matches!(
            r.submit_join(&join(&t.token, "c2", &"b".repeat(32)), "p", NOW),
            Err(RegistryError::TokenRefused(TokenRefusal::UsedUp { .. }))
        ));
        // The token's labels win over the agent's.
        let rec = r
            .store
            .read(|tx| tx.get(&JOIN_REQUESTS, "c1"))
            .unwrap()
            .unwrap();
        assert_eq!(rec.labels["region"], "forced");
        // Plaintext token is nowhere in the store.
        let bytes = std::fs::read(dir.path().join("hub.redb")).unwrap();
        let needle = t.token.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn duplicate_names_do_not_spend_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(2, true), "admin", NOW).unwrap();
        assert!(matches!(
            r.submit_join(&join(&t.token, "c1", &"a".repeat(32)), "p", NOW)
                .unwrap(),
            JoinStatus::Approved { .. }
        ));
        assert!(matches!(
            r.submit_join(&join(&t.token, "c1", &"b".repeat(32)), "p", NOW),
            Err(RegistryError::NameTaken(_))
        ));
        // Second use still available for another name.
        assert!(r
            .submit_join(&join(&t.token, "c2", &"c".repeat(32)), "p", NOW)
            .is_ok());
    }

    #[test]
    fn approve_deny_detach_and_polling() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(5, false), "admin", NOW).unwrap();
        let s = "s".repeat(40);
        r.submit_join(&join(&t.token, "c1", &s), "p", NOW).unwrap();
        // Polling with the wrong secret reveals nothing.
        assert!(matches!(
            r.poll_join(&JoinPoll {
                name: "c1".into(),
                request_secret: "x".repeat(40)
            }),
            Err(RegistryError::UnknownRequest(_))
        ));
        r.approve("c1", "admin", NOW).unwrap();
        assert!(matches!(
            r.approve("c1", "admin", NOW),
            Err(RegistryError::Conflict(_))
        ));
        let status = r
            .poll_join(&JoinPoll {
                name: "c1".into(),
                request_secret: s.clone(),
            })
            .unwrap();
        assert!(matches!(status, JoinStatus::Approved { .. }));
        let rev = r.deny("c1", "stolen", "admin", NOW).unwrap().unwrap();
        assert!(r.revoked.is_revoked(&rev.serials[0]));
        assert!(matches!(
            r.renew("c1", "00", &csr(), NOW),
            Err(RegistryError::Denied(_))
        ));
        r.detach("c1", "admin", NOW).unwrap();
        assert!(matches!(
            r.detach("c1", "admin", NOW),
            Err(RegistryError::NotFound(_))
        ));
        // The name is free again.
        assert!(r
            .submit_join(&join(&t.token, "c1", &"n".repeat(40)), "p", NOW)
            .is_ok());
        r.deny("c1", "no", "admin", NOW).unwrap();
        assert!(matches!(
            r.poll_join(&JoinPoll {
                name: "c1".into(),
                request_secret: "n".repeat(40)
            })
            .unwrap(),
            JoinStatus::Denied { .. }
        ));
        let audit = r.store.read(|tx| tx.tail(&AUDIT, 100)).unwrap();
        let kinds: Vec<_> = audit.iter().map(|(_, e)| e.kind.as_str()).collect();
        for k in [
            "token_created",
            "join_requested",
            "join_approved",
            "cert_issued",
            "cert_revoked",
            "join_denied",
            "cluster_detached",
        ] {
            assert!(kinds.contains(&k), "missing {k} in {kinds:?}");
        }
    }

    #[test]
    fn renewal_keeps_a_bounded_set_of_serials() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(1, true), "admin", NOW).unwrap();
        r.submit_join(&join(&t.token, "c1", &"a".repeat(32)), "p", NOW)
            .unwrap();
        let first = r
            .store
            .read(|tx| tx.get(&CLUSTERS, "c1"))
            .unwrap()
            .unwrap()
            .cert_serial;
        // Five renewals whose answers never reached the agent: it still holds `first`.
        for _ in 0..5 {
            r.renew("c1", &first, &csr(), NOW).unwrap();
        }
        let c = r.store.read(|tx| tx.get(&CLUSTERS, "c1")).unwrap().unwrap();
        assert_eq!(c.serials.len(), MAX_LIVE_SERIALS);
        assert_eq!(c.serials.last(), Some(&c.cert_serial));
        assert!(
            c.serials.contains(&first),
            "the presented certificate was dropped"
        );
    }

    #[test]
    fn renewals_are_rate_limited_and_every_serial_ever_issued_ends_up_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(1, true), "admin", NOW).unwrap();
        r.submit_join(&join(&t.token, "c1", &"a".repeat(32)), "p", NOW)
            .unwrap();
        let first = r
            .store
            .read(|tx| tx.get(&CLUSTERS, "c1"))
            .unwrap()
            .unwrap()
            .cert_serial;
        let mut issued = vec![first.clone()];
        for i in 0..RENEWALS_PER_DAY as u64 {
            r.renew("c1", &first, &csr(), NOW + i).unwrap();
            issued.push(
                r.store
                    .read(|tx| tx.get(&CLUSTERS, "c1"))
                    .unwrap()
                    .unwrap()
                    .cert_serial,
            );
        }
        assert!(matches!(
            r.renew("c1", &first, &csr(), NOW + 3_600_000),
            Err(RegistryError::RenewalRateLimited { ref next_ms, .. }) if *next_ms == NOW + DAY_MS
        ));
        // A day after the first of them, one more is allowed.
        r.renew("c1", &first, &csr(), NOW + DAY_MS).unwrap();
        let c = r.store.read(|tx| tx.get(&CLUSTERS, "c1")).unwrap().unwrap();
        issued.push(c.cert_serial.clone());
        // Serials that left the live set are revoked in the store and in memory.
        let revoked: Vec<String> = r
            .store
            .read(|tx| tx.list(&REVOKED))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for s in issued.iter().filter(|s| !c.serials.contains(s)) {
            assert!(revoked.contains(s), "{s} superseded but not revoked");
            assert!(r.revoked.is_revoked(s));
        }
        // Deny revokes the live set: then nothing ever issued to the cluster is accepted.
        r.deny("c1", "stolen", "admin", NOW + DAY_MS).unwrap();
        for s in &issued {
            assert!(r.revoked.is_revoked(s), "{s} still accepted after deny");
        }
    }

    #[test]
    fn renewal_window_is_a_sliding_day() {
        assert_eq!(renewal_allowed(&[], NOW), Ok(()));
        let five = [NOW; RENEWALS_PER_DAY - 1];
        assert_eq!(renewal_allowed(&five, NOW), Ok(()));
        let six = [NOW - 10, NOW - 5, NOW, NOW, NOW, NOW];
        assert_eq!(renewal_allowed(&six, NOW), Err(NOW - 10 + DAY_MS));
        assert_eq!(renewal_allowed(&six, NOW - 10 + DAY_MS), Ok(()));
        // Times from the future (a clock stepped back) do not count against the cluster.
        assert_eq!(renewal_allowed(&[NOW + 1; 6], NOW), Ok(()));
    }

    #[test]
    fn bad_input_is_refused_with_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(5, false), "admin", NOW).unwrap();
        let mut bad_csr = join(&t.token, "c1", &"a".repeat(32));
        bad_csr.csr_pem = "not a csr".into();
        assert!(matches!(
            r.submit_join(&bad_csr, "p", NOW),
            Err(RegistryError::Csr(_))
        ));
        assert!(matches!(
            r.submit_join(&join(&t.token, "Bad_Name", &"a".repeat(32)), "p", NOW),
            Err(RegistryError::Name(_))
        ));
        assert!(matches!(
            r.submit_join(&join(&t.token, "c1", "short"), "p", NOW),
            Err(RegistryError::BadRequest(_))
        ));
        assert!(r
            .create_token(
                &TokenSpec {
                    uses: 0,
                    ..spec(1, false)
                },
                "a",
                NOW
            )
            .is_err());
    }

    #[test]
    fn revoked_tokens_admit_no_joins_and_all_refusals_look_alike() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t = r.create_token(&spec(5, false), "admin", NOW).unwrap();
        assert!(r
            .submit_join(&join(&t.token, "c1", &"a".repeat(32)), "p", NOW)
            .is_ok());
        let revoked = r.revoke_token(&t.id, "admin", NOW).unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(NOW));
        assert!(matches!(
            r.revoke_token(&t.id, "admin", NOW),
            Err(RegistryError::Conflict(_))
        ));
        assert!(matches!(
            r.revoke_token("nothex", "admin", NOW),
            Err(RegistryError::BadRequest(_))
        ));
        assert!(matches!(
            r.revoke_token("0123456789ab", "admin", NOW),
            Err(RegistryError::NotFound(_))
        ));
        let e = r
            .submit_join(&join(&t.token, "c2", &"b".repeat(32)), "p", NOW)
            .unwrap_err();
        assert!(matches!(
            e,
            RegistryError::TokenRefused(TokenRefusal::Revoked { .. })
        ));
        // A retry of the join made before the revocation still reads its status.
        assert_eq!(
            r.submit_join(&join(&t.token, "c1", &"a".repeat(32)), "p", NOW)
                .unwrap(),
            JoinStatus::Pending
        );
        let unknown = r
            .submit_join(&join("tether1.x", "c3", &"c".repeat(32)), "p", NOW)
            .unwrap_err();
        assert_eq!(e.wire_code(), ErrorCode::TokenInvalid);
        assert_eq!(unknown.wire_code(), ErrorCode::TokenInvalid);
        assert_eq!(e.to_string(), unknown.to_string());
        assert!(!e.to_string().contains(&t.id));
        let kinds: Vec<_> = r
            .store
            .read(|tx| tx.tail(&AUDIT, 100))
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.kind)
            .collect();
        assert!(kinds.contains(&"token_revoked".to_string()), "{kinds:?}");
        // Both refusals are queued for the audit log: the first per actor at once.
        let queued = r.coalesced.drain(NOW);
        assert_eq!(queued.len(), 2, "{queued:?}");
        assert!(queued
            .iter()
            .any(|e| e.actor == format!("token:{}", t.id) && e.detail.contains("revoked")));
    }

    #[test]
    fn token_ttl_uses_and_label_allow_lists() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let too_long = TokenSpec {
            ttl: MAX_TOKEN_TTL + Duration::from_secs(1),
            ..spec(1, false)
        };
        assert!(matches!(
            r.create_token(&too_long, "a", NOW),
            Err(RegistryError::BadRequest(_))
        ));
        let too_many = TokenSpec {
            uses: MAX_TOKEN_USES + 1,
            ..spec(1, false)
        };
        assert!(matches!(
            r.create_token(&too_many, "a", NOW),
            Err(RegistryError::BadRequest(_))
        ));
        let reserved = TokenSpec {
            allowed_labels: vec!["tether.dev/maintenance-window".into()],
            ..spec(1, false)
        };
        assert!(r.create_token(&reserved, "a", NOW).is_err());
        let t = r
            .create_token(
                &TokenSpec {
                    allowed_labels: vec!["region".into(), "zone".into()],
                    labels: Labels::new(),
                    ..spec(3, false)
                },
                "admin",
                NOW,
            )
            .unwrap();
        // `join` asks for region only: allowed.
        assert!(r
            .submit_join(&join(&t.token, "c1", &"a".repeat(32)), "p", NOW)
            .is_ok());
        let mut other = join(&t.token, "c2", &"b".repeat(32));
        other.labels.insert("site".into(), "x".into());
        let e = r.submit_join(&other, "p", NOW).unwrap_err();
        assert!(matches!(e, RegistryError::LabelRefused(_)), "{e}");
        assert_eq!(e.wire_code(), ErrorCode::NameInvalid);
        let mut reserved = join(&t.token, "c3", &"c".repeat(32));
        reserved
            .labels
            .insert("tether.dev/maintenance-window".into(), "never".into());
        assert!(matches!(
            r.submit_join(&reserved, "p", NOW),
            Err(RegistryError::LabelRefused(_))
        ));
        // Refusals did not spend uses.
        let tok = r.store.read(|tx| tx.list(&TOKENS)).unwrap();
        assert_eq!(tok[0].1.used, 1);
    }

    #[test]
    fn coalescer_bounds_rows_and_memory() {
        let c = AuditCoalescer::new(Duration::from_secs(60));
        for i in 0..10_000u64 {
            c.record(
                "admin_unauthorized",
                "anonymous",
                format!("GET /v1/x{i}"),
                &format!("10.0.{}.{}:{}", i % 3, i % 7, 1000 + i),
                NOW + i,
            );
        }
        let first = c.drain(NOW + 10_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].detail, "GET /v1/x0");
        assert!(c.drain(NOW + 20_000).is_empty(), "window still open");
        let agg = c.drain(NOW + 60_000);
        assert_eq!(agg.len(), 1);
        assert!(agg[0].detail.starts_with("9999 more"), "{}", agg[0].detail);
        assert!(c.drain(NOW + 120_000).is_empty());
        // Many actors: bounded keys.
        for i in 0..1_000 {
            c.record(
                "join_refused",
                &format!("token:{i}"),
                "x".repeat(10_000),
                "p:1",
                NOW,
            );
        }
        let rows = c.drain(NOW);
        // One overflow key per kind on top of the bound.
        assert!(rows.len() <= COALESCE_KEYS + 1, "{}", rows.len());
        assert!(rows.iter().all(|r| r.detail.len() <= COALESCE_DETAIL));
    }
}
