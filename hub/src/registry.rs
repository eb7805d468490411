//! Registration and identity decisions over the hub store: bootstrap tokens, join requests,
//! approval, denial, detachment and certificate renewal.
//!
//! Every operation runs in one durable transaction and writes its audit event in that same
//! transaction, so the audit log never disagrees with the state it describes. The current time
//! is a parameter.

use crate::pki::{CertificateAuthority, PkiError};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tether_protocol::names::{validate_cluster_name, validate_labels, NameError};
use tether_protocol::{ErrorCode, JoinPoll, JoinRequest, JoinStatus, Labels};
use tether_store::hub::{
    cluster_prefix, AuditEvent, ClusterRecord, ClusterState, JoinDecision, JoinRequestRecord,
    RevokedRecord, TokenRecord, AUDIT, CLUSTERS, CLUSTER_WORKS, JOIN_REQUESTS, REVOKED,
    STATUS_CURSORS, STATUS_HISTORY, TOKENS, WORKS,
};
use tether_store::{Store, StoreError, WriteTx};
use tether_transport::tls::RevocationList;

/// A cluster keeps at most this many live serials (current + ones from renewals whose answer
/// may not have arrived). Older ones stop being accepted.
const MAX_LIVE_SERIALS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown bootstrap token")]
    TokenInvalid,
    #[error("bootstrap token {0} has expired")]
    TokenExpired(String),
    #[error("bootstrap token {0} has no uses left")]
    TokenExhausted(String),
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
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

impl RegistryError {
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            RegistryError::TokenInvalid => ErrorCode::TokenInvalid,
            RegistryError::TokenExpired(_) => ErrorCode::TokenExpired,
            RegistryError::TokenExhausted(_) => ErrorCode::TokenExhausted,
            RegistryError::NameTaken(_) | RegistryError::Conflict(_) => ErrorCode::NameTaken,
            RegistryError::Name(_) => ErrorCode::NameInvalid,
            RegistryError::Csr(_) => ErrorCode::CsrInvalid,
            RegistryError::UnknownRequest(_) | RegistryError::NotFound(_) => {
                ErrorCode::Unauthorized
            }
            RegistryError::Denied(_) => ErrorCode::Denied,
            RegistryError::BadRequest(_) => ErrorCode::BadRequest,
            RegistryError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// Options for a new bootstrap token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub ttl: Duration,
    pub uses: u32,
    pub auto_approve: bool,
    pub labels: Labels,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreatedToken {
    /// The secret. Shown once; the hub keeps only its hash.
    pub token: String,
    pub id: String,
    pub expires_at_ms: u64,
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
    tx.remove_prefix(&STATUS_HISTORY, &prefix)?;
    tx.remove(&STATUS_CURSORS, cluster)?;
    for (key, mut row) in tx.list_prefix(&CLUSTER_WORKS, &prefix)? {
        let work = &key[prefix.len()..];
        let singleton = tx.get(&WORKS, work)?.is_some_and(|w| {
            w.document
                .spec
                .failover
                .is_some_and(|f| f.mode == tether_protocol::work::FailoverMode::Singleton)
        });
        if singleton && crate::singleton::copy_may_run(Some(&row)) {
            row.status_seq = 0;
            tx.put(&CLUSTER_WORKS, &key, &row)?;
        } else {
            tx.remove(&CLUSTER_WORKS, &key)?;
        }
    }
    Ok(())
}

impl Registry {
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
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
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
        if spec.ttl.is_zero() {
            return Err(RegistryError::BadRequest(
                "token ttl must be positive".into(),
            ));
        }
        validate_labels(&spec.labels)?;
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
                    "token {id}: uses={} auto_approve={} expires={}",
                    spec.uses,
                    spec.auto_approve,
                    crate::util::rfc3339(expires_at_ms)
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
        CertificateAuthority::check_csr(&req.csr_pem)?;
        let secret_hash = sha256_hex(&req.request_secret);
        let token_hash = sha256_hex(&req.token);
        self.store.write(|tx| {
            if let Some(existing) = tx.get(&JOIN_REQUESTS, &req.name)? {
                if same_secret(&existing.secret_sha256, &secret_hash) {
                    // A retry after a lost answer: report, do not spend the token again.
                    return Ok(self.status_of(&existing));
                }
            }
            let mut token = tx
                .get(&TOKENS, &token_hash)?
                .ok_or(RegistryError::TokenInvalid)?;
            if now_ms >= token.expires_at_ms {
                return Err(RegistryError::TokenExpired(token.id));
            }
            if token.used >= token.max_uses {
                return Err(RegistryError::TokenExhausted(token.id));
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
                facts: req.facts.clone(),
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
                    req.facts.arch, req.facts.agent_version
                ),
            )?;
            if token.auto_approve {
                self.approve_in(tx, &mut record, &format!("token:{}", token.id), now_ms)?;
            }
            tx.put(&JOIN_REQUESTS, &req.name, &record)?;
            Ok(self.status_of(&record))
        })
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
            conditions: Vec::new(),
            state: ClusterState::Unknown,
            state_since_ms: now_ms,
            joined_at_ms: now_ms,
            last_seen_ms: None,
            cert_serial: issued.serial_hex.clone(),
            cert_not_after_ms: issued.not_after_ms,
            serials: vec![issued.serial_hex.clone()],
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
        self.store.write(|tx| {
            let mut record = tx
                .get(&CLUSTERS, cluster)?
                .ok_or_else(|| RegistryError::NotFound(format!("cluster {cluster:?}")))?;
            if record.state == ClusterState::Denied {
                return Err(RegistryError::Denied(cluster.to_string()));
            }
            let issued = self
                .ca
                .sign_cluster(csr_pem, cluster, self.cert_validity, now_ms)?;
            record.cert_serial = issued.serial_hex.clone();
            record.cert_not_after_ms = issued.not_after_ms;
            record.serials.push(issued.serial_hex.clone());
            while record.serials.len() > MAX_LIVE_SERIALS {
                match record.serials.iter().position(|s| s != presented_serial) {
                    Some(oldest_other) => record.serials.remove(oldest_other),
                    None => break,
                };
            }
            tx.put(&CLUSTERS, cluster, &record)?;
            audit(
                tx,
                now_ms,
                "cert_renewed",
                Some(cluster),
                &format!("agent:{cluster}"),
                format!(
                    "serial {} valid until {}",
                    issued.serial_hex,
                    crate::util::rfc3339(issued.not_after_ms)
                ),
            )?;
            Ok(issued.cert_pem)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::Facts;

    const NOW: u64 = 1_800_000_000_000;

    fn registry(dir: &std::path::Path) -> Registry {
        let m = crate::pki::generate("hub", &[], NOW).unwrap();
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
            Err(RegistryError::TokenInvalid)
        ));
        // Expired.
        assert!(matches!(
            r.submit_join(&join(&t.token, "c1", &s1), "p", NOW + 60_000),
            Err(RegistryError::TokenExpired(_))
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
            Err(RegistryError::TokenExhausted(_))
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
}
