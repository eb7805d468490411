//! Admin credentials: who may use the admin API, with which role and scope.
//!
//! An admin makes its own key and CSR (`tetherctl admins request`); an admin with the `admin`
//! role has the hub sign it (`tetherctl admins add NAME --role R --csr F`). The hub trusts a
//! client certificate on the admin API only if its SHA-256 fingerprint is in the `admins`
//! table, so cluster certificates (same CA) are never admin credentials and a revoked admin's
//! certificate, though still signed, opens nothing. Every change is audited with its actor.
//!
//! The table is small and read on every request, so it is held in memory; the store is the
//! truth and every change is written there first. Revocation bumps a generation that every
//! live admin connection watches: each re-checks its own credential and closes if it is gone.

use crate::identity::pki::CertificateAuthority;
use crate::identity::registry::RegistryError;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tether_store::hub::{AdminRecord, AdminRole, AdminScope, AuditEvent, ADMINS, AUDIT};
use tether_store::Store;

/// How long an admin certificate is valid unless asked otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// The longest an admin certificate may be valid: a lost laptop should not hold a key for years.
pub const MAX_VALIDITY: Duration = Duration::from_secs(397 * 86_400);

/// Who is calling, from its verified certificate and the `admins` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: AdminRole,
    pub scope: AdminScope,
    pub fingerprint: String,
}

impl Caller {
    /// How audit events name this caller.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.name)
    }
}

pub struct Admins {
    by_fingerprint: RwLock<HashMap<String, AdminRecord>>,
    generation: tokio::sync::watch::Sender<u64>,
}

/// What `add` answers: the certificate for the new admin, to go with the key it kept.
pub struct Added {
    pub fingerprint: String,
    pub cert_pem: String,
    pub not_after_ms: u64,
}

impl Admins {
    pub fn new(rows: Vec<(String, AdminRecord)>) -> Self {
        Self {
            by_fingerprint: RwLock::new(rows.into_iter().collect()),
            generation: tokio::sync::watch::channel(0).0,
        }
    }

    /// The caller with this certificate fingerprint, if it is a live admin credential.
    pub fn lookup(&self, fingerprint: &str, now_ms: u64) -> Option<Caller> {
        let map = self
            .by_fingerprint
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let rec = map.get(fingerprint)?;
        if rec.not_after_ms.is_some_and(|t| t <= now_ms) {
            return None;
        }
        Some(Caller {
            name: rec.name.clone(),
            role: rec.role,
            scope: rec.scope.clone(),
            fingerprint: fingerprint.to_string(),
        })
    }

    /// Changes whenever a credential is revoked: live connections re-check theirs.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn list(&self) -> Vec<(String, AdminRecord)> {
        let map = self
            .by_fingerprint
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| (&a.1.name, &a.0).cmp(&(&b.1.name, &b.0)));
        out
    }

    /// Sign `csr_pem` for a new admin `name` (or a new certificate of an existing one, with the
    /// same role and scope: renewal) and record it.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &self,
        store: &Store,
        ca: &CertificateAuthority,
        name: &str,
        grant: Option<(AdminRole, AdminScope)>,
        csr_pem: &str,
        validity: Duration,
        actor: &str,
        now_ms: u64,
    ) -> Result<Added, RegistryError> {
        tether_protocol::names::validate_cluster_name(name)
            .map_err(|e| RegistryError::BadRequest(format!("admin name: {e}")))?;
        if validity.is_zero() || validity > MAX_VALIDITY {
            return Err(RegistryError::BadRequest(format!(
                "validity must be between 1 s and {} days",
                MAX_VALIDITY.as_secs() / 86_400
            )));
        }
        for ns in grant.iter().flat_map(|(_, s)| &s.namespaces) {
            tether_protocol::names::validate_cluster_name(ns)
                .map_err(|e| RegistryError::BadRequest(format!("scope namespace {ns:?}: {e}")))?;
        }
        let existing = self
            .list()
            .into_iter()
            .find(|(_, r)| r.name == name)
            .map(|(_, r)| r);
        let (role, scope, kind) = match (grant, existing) {
            (Some(_), Some(_)) => {
                return Err(RegistryError::Conflict(format!(
                    "an admin named {name} exists; revoke it first, or renew its certificate"
                )))
            }
            (Some((role, scope)), None) => (role, scope, "admin_added"),
            (None, Some(r)) => (r.role, r.scope, "admin_renewed"),
            (None, None) => return Err(RegistryError::NotFound(format!("admin {name}"))),
        };
        let issued = ca.sign_admin(csr_pem, name, validity, now_ms)?;
        let fingerprint = tether_transport::certs::inspect_pem(&issued.cert_pem)
            .map_err(|e| RegistryError::BadRequest(format!("signed certificate: {e}")))?
            .sha256;
        let rec = AdminRecord {
            name: name.to_string(),
            created_at_ms: now_ms,
            role,
            scope,
            not_after_ms: Some(issued.not_after_ms),
        };
        store.write(|tx| {
            tx.put(&ADMINS, &fingerprint, &rec)?;
            tx.append(
                &AUDIT,
                &AuditEvent {
                    at_ms: now_ms,
                    kind: kind.into(),
                    cluster: None,
                    actor: actor.into(),
                    detail: format!(
                        "admin {name} role {} scope {} serial {} until {}",
                        rec.role.as_str(),
                        rec.scope,
                        issued.serial_hex,
                        issued.not_after_ms
                    ),
                },
            )?;
            Ok::<_, RegistryError>(())
        })?;
        self.by_fingerprint
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint.clone(), rec);
        Ok(Added {
            fingerprint,
            cert_pem: issued.cert_pem,
            not_after_ms: issued.not_after_ms,
        })
    }

    /// Remove every credential of `name` and cut its live connections. The last full admin
    /// cannot be revoked: nobody could add another.
    pub fn revoke(
        &self,
        store: &Store,
        name: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<usize, RegistryError> {
        let all = self.list();
        let doomed: Vec<String> = all
            .iter()
            .filter(|(_, r)| r.name == name)
            .map(|(fp, _)| fp.clone())
            .collect();
        if doomed.is_empty() {
            return Err(RegistryError::NotFound(format!("admin {name}")));
        }
        let admins_left = all
            .iter()
            .filter(|(fp, r)| {
                r.role == AdminRole::Admin
                    && !doomed.contains(fp)
                    && r.not_after_ms.is_none_or(|t| t > now_ms)
            })
            .count();
        if admins_left == 0 {
            return Err(RegistryError::Conflict(format!(
                "{name} holds the last live credential with the admin role; add another admin first"
            )));
        }
        store.write(|tx| {
            for fp in &doomed {
                tx.remove(&ADMINS, fp)?;
            }
            tx.append(
                &AUDIT,
                &AuditEvent {
                    at_ms: now_ms,
                    kind: "admin_revoked".into(),
                    cluster: None,
                    actor: actor.into(),
                    detail: format!("admin {name}: {} certificate(s)", doomed.len()),
                },
            )?;
            Ok::<_, RegistryError>(())
        })?;
        {
            let mut map = self
                .by_fingerprint
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for fp in &doomed {
                map.remove(fp);
            }
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(doomed.len())
    }

    /// Take the credentials another hub replica committed: live connections re-check theirs,
    /// so a revocation made there cuts this replica's connections too.
    pub(crate) fn replace_all(&self, rows: Vec<(String, AdminRecord)>) {
        let next: HashMap<String, AdminRecord> = rows.into_iter().collect();
        let mut map = self
            .by_fingerprint
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if *map == next {
            return;
        }
        *map = next;
        drop(map);
        self.generation.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::pki;

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn setup() -> (tempfile::TempDir, Store, CertificateAuthority, Admins) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db.redb")).unwrap();
        let m = pki::generate("hub", &[], 1_000).unwrap();
        let ca = CertificateAuthority::load(&m.ca_pem, &m.ca_key_pem).unwrap();
        let root = AdminRecord {
            name: "tether-admin".into(),
            created_at_ms: 0,
            role: AdminRole::Admin,
            scope: AdminScope::default(),
            not_after_ms: None,
        };
        (dir, store, ca, Admins::new(vec![("root".into(), root)]))
    }

    #[test]
    fn added_admins_are_looked_up_by_their_certificate_and_revoked_by_name() {
        let (_d, store, ca, admins) = setup();
        let scope = AdminScope {
            clusters: [("region".to_string(), "eu".to_string())].into(),
            namespaces: vec!["apps".into()],
        };
        let a = admins
            .add(
                &store,
                &ca,
                "alice",
                Some((AdminRole::Operator, scope.clone())),
                &csr(),
                DEFAULT_VALIDITY,
                "admin:tether-admin",
                1_000,
            )
            .unwrap();
        let who = admins.lookup(&a.fingerprint, 2_000).unwrap();
        assert_eq!(
            (who.role, &who.scope, who.actor()),
            (AdminRole::Operator, &scope, "admin:alice".to_string())
        );
        assert_eq!(
            admins.lookup(&a.fingerprint, a.not_after_ms),
            None,
            "expired"
        );
        // Renewal keeps role and scope; a second add under the name is refused.
        let renewed = admins
            .add(
                &store,
                &ca,
                "alice",
                None,
                &csr(),
                DEFAULT_VALIDITY,
                "admin:alice",
                5_000,
            )
            .unwrap();
        assert_eq!(
            admins.lookup(&renewed.fingerprint, 6_000).unwrap().scope,
            scope
        );
        assert!(matches!(
            admins.add(
                &store,
                &ca,
                "alice",
                Some((AdminRole::Viewer, AdminScope::default())),
                &csr(),
                DEFAULT_VALIDITY,
                "x",
                1
            ),
            Err(RegistryError::Conflict(_))
        ));
        let cut = admins.watch();
        assert_eq!(
            admins
                .revoke(&store, "alice", "admin:tether-admin", 7_000)
                .unwrap(),
            2
        );
        assert!(cut.has_changed().unwrap());
        assert_eq!(admins.lookup(&a.fingerprint, 7_000), None);
        assert_eq!(admins.lookup(&renewed.fingerprint, 7_000), None);
        let stored = store.read(|tx| tx.list(&ADMINS)).unwrap();
        assert!(
            stored.is_empty(),
            "alice's rows are gone from the store: {stored:?}"
        );
        let audit = store.read(|tx| tx.tail(&AUDIT, 10)).unwrap();
        let kinds: Vec<(&str, &str)> = audit
            .iter()
            .map(|(_, e)| (e.kind.as_str(), e.actor.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("admin_added", "admin:tether-admin"),
                ("admin_renewed", "admin:alice"),
                ("admin_revoked", "admin:tether-admin")
            ]
        );
    }

    #[test]
    fn the_last_admin_cannot_be_revoked_and_bad_input_is_refused() {
        let (_d, store, ca, admins) = setup();
        assert!(matches!(
            admins.revoke(&store, "tether-admin", "x", 1),
            Err(RegistryError::Conflict(_))
        ));
        assert!(matches!(
            admins.revoke(&store, "nobody", "x", 1),
            Err(RegistryError::NotFound(_))
        ));
        for (name, validity) in [
            ("Bad_Name", DEFAULT_VALIDITY),
            ("ok", MAX_VALIDITY * 2),
            ("ok", Duration::ZERO),
        ] {
            assert!(matches!(
                admins.add(
                    &store,
                    &ca,
                    name,
                    Some((AdminRole::Viewer, AdminScope::default())),
                    &csr(),
                    validity,
                    "x",
                    1
                ),
                Err(RegistryError::BadRequest(_))
            ));
        }
        assert!(admins
            .add(
                &store,
                &ca,
                "bob",
                Some((AdminRole::Viewer, AdminScope::default())),
                "not a csr",
                DEFAULT_VALIDITY,
                "x",
                1
            )
            .is_err());
    }
}
