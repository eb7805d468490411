//! The hub's certificate authority: creation at `init`, and signing of cluster CSRs.
//!
//! When signing, the hub keeps only the public key from a CSR and sets every security-relevant
//! field itself: subject and SAN (the cluster name), client-auth EKU, not a CA, validity.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate signing request is malformed or its signature does not verify: {0}")]
    CsrInvalid(String),
    #[error("certificate signing request is too large ({0} bytes, limit {MAX_CSR_PEM})")]
    CsrTooLarge(usize),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name {0:?} for a certificate")]
    BadName(String),
}

pub const MAX_CSR_PEM: usize = 16 * 1024;
/// Clock skew the hub's certificates tolerate: an agent whose clock is up to this much slow
/// accepts them at once. Edge boxes without RTC batteries or NTP drift by minutes to hours;
/// 5 minutes (the earlier value) locked such agents out of joining and renewing.
pub const TOLERATED_SKEW: Duration = Duration::from_secs(3600);

/// Issued certificates start `TOLERATED_SKEW` in the past, or a tenth of the validity if that is
/// shorter (so that renewal at 70-90% of the lifetime stays in the future for short-lived
/// certificates).
fn backdate(validity: Duration) -> Duration {
    TOLERATED_SKEW.min(validity / 10)
}

/// A freshly issued certificate and the facts the hub records about it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub serial_hex: String,
    pub not_after_ms: u64,
}

/// Material produced by `tether-hub init`.
pub struct InitMaterial {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub hub_cert_pem: String,
    pub hub_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn at(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive INTEGER with no leading zero byte ambiguity.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(cn: &str, org: &str, now_ms: u64, validity: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = at(now_ms.saturating_sub(backdate(validity).as_millis() as u64));
    p.not_after = at(now_ms.saturating_add(validity.as_millis() as u64));
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

/// Create the CA, the hub serving certificate and the first admin credential.
pub fn generate(hub_name: &str, sans: &[String], now_ms: u64) -> Result<InitMaterial, PkiError> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Tether hub CA ({hub_name})"));
    dn.push(DnType::OrganizationName, "tether");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A day: the CA outlives any one agent's clock error, and nothing is gained by a CA that
    // a slow clock sees as not yet valid.
    ca.not_before = at(now_ms.saturating_sub(86_400_000));
    ca.not_after = at(now_ms + 10 * 365 * 86_400_000);
    ca.serial_number = Some(random_serial());
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let hub_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut hub = leaf_params(
        hub_name,
        "tether",
        now_ms,
        Duration::from_secs(365 * 86_400),
    );
    let mut names: Vec<String> = vec![hub_name.to_string()];
    names.extend(sans.iter().cloned());
    // Loopback names, so the admin API and local agents work out of the box.
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n.clone()) {
            continue;
        }
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into().map_err(|_| PkiError::BadName(n))?),
        };
        hub.subject_alt_names.push(san);
    }
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let hub_cert = hub.signed_by(&hub_key, &issuer)?;

    let admin_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut admin = leaf_params(
        "tether-admin",
        "tether:admins",
        now_ms,
        Duration::from_secs(365 * 86_400),
    );
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    Ok(InitMaterial {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        hub_cert_pem: hub_cert.pem(),
        hub_key_pem: hub_key.serialize_pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
    })
}

/// The CA as loaded by a running hub.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

impl CertificateAuthority {
    pub fn load(ca_pem: &str, ca_key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key)?;
        Ok(Self {
            issuer,
            ca_pem: ca_pem.to_string(),
        })
    }

    /// Check a CSR's syntax and self-signature without signing it.
    pub fn check_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, PkiError> {
        if csr_pem.len() > MAX_CSR_PEM {
            return Err(PkiError::CsrTooLarge(csr_pem.len()));
        }
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::CsrInvalid(e.to_string()))
    }

    /// Sign a cluster's CSR. Only the public key is taken from the request.
    pub fn sign_cluster(
        &self,
        csr_pem: &str,
        cluster: &str,
        validity: Duration,
        now_ms: u64,
    ) -> Result<Issued, PkiError> {
        self.sign_client(csr_pem, cluster, "tether:clusters", validity, now_ms)
    }

    /// Sign an admin's CSR (made on the admin's machine). The organization tells the two kinds
    /// apart to a reader; the hub itself trusts only the fingerprints in its `admins` table.
    pub fn sign_admin(
        &self,
        csr_pem: &str,
        name: &str,
        validity: Duration,
        now_ms: u64,
    ) -> Result<Issued, PkiError> {
        self.sign_client(csr_pem, name, "tether:admins", validity, now_ms)
    }

    fn sign_client(
        &self,
        csr_pem: &str,
        name: &str,
        org: &str,
        validity: Duration,
        now_ms: u64,
    ) -> Result<Issued, PkiError> {
        let csr = Self::check_csr(csr_pem)?;
        let mut p = leaf_params(name, org, now_ms, validity);
        p.subject_alt_names = vec![SanType::DnsName(
            name.to_string()
                .try_into()
                .map_err(|_| PkiError::BadName(name.to_string()))?,
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial_hex = p
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        let cert = p.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial_hex,
            not_after_ms: now_ms.saturating_add(validity.as_millis() as u64),
        })
    }
}

/// Warn loudly this long before a hub certificate expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum CertCheckError {
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("the {what} {path} expired at {at} ({days} days ago): agents and tetherctl refuse it, so the hub will not start. There is no renewal tooling yet; `tether-hub init` a new data directory (agents must join again)")]
    Expired {
        what: &'static str,
        path: std::path::PathBuf,
        at: String,
        days: i64,
    },
    #[error("the {what} {path} is not valid before {at}: check the system clock")]
    NotYetValid {
        what: &'static str,
        path: std::path::PathBuf,
        at: String,
    },
}

/// One of the hub's own certificates, as checked at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// `hub`, `ca` or `admin:<name>` (the metric label).
    pub label: String,
    pub path: std::path::PathBuf,
    pub not_after_s: i64,
}

fn inspect_file(
    path: std::path::PathBuf,
) -> Result<(tether_transport::certs::CertInfo, std::path::PathBuf), CertCheckError> {
    let pem = std::fs::read_to_string(&path).map_err(|source| CertCheckError::Read {
        path: path.clone(),
        source,
    })?;
    let info = tether_transport::certs::inspect_pem(&pem).map_err(|e| CertCheckError::Invalid {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    Ok((info, path))
}

/// Check the hub's serving certificate, its CA and the admin credential made by `init`.
///
/// An expired (or not yet valid) serving certificate or CA is an error: every agent and
/// `tetherctl` would refuse the hub, and starting anyway looks healthy while nothing can
/// connect. An expired admin certificate only locks out that admin, so it is logged as an
/// error and the hub starts. Anything expiring within `EXPIRY_WARNING` is logged as a warning.
/// `admins` names admin fingerprints (the `admins` table).
pub fn check_certificates(
    dir: &crate::config::DataDir,
    admins: &[(String, tether_store::hub::AdminRecord)],
    now_ms: u64,
) -> Result<Vec<CertExpiry>, CertCheckError> {
    let now_s = (now_ms / 1000) as i64;
    let warn_s = EXPIRY_WARNING.as_secs() as i64;
    let mut out = Vec::new();
    for (label, what, path) in [
        ("ca", "hub CA certificate", dir.ca_cert()),
        ("hub", "hub serving certificate", dir.hub_cert()),
    ] {
        let (info, path) = inspect_file(path)?;
        if info.not_after <= now_s {
            return Err(CertCheckError::Expired {
                what,
                path,
                at: crate::util::rfc3339(info.not_after as u64 * 1000),
                days: (now_s - info.not_after) / 86_400,
            });
        }
        if info.not_before > now_s {
            return Err(CertCheckError::NotYetValid {
                what,
                path,
                at: crate::util::rfc3339(info.not_before as u64 * 1000),
            });
        }
        out.push(CertExpiry {
            label: label.into(),
            path,
            not_after_s: info.not_after,
        });
    }
    // The admin credential `init` wrote; others (added by hand) are not on disk.
    if dir.admin_cert().exists() {
        let (info, path) = inspect_file(dir.admin_cert())?;
        let name = admins
            .iter()
            .find(|(fp, _)| *fp == info.sha256)
            .map_or(info.common_name.clone(), |(_, a)| a.name.clone());
        if info.not_after <= now_s {
            tracing::error!(admin = %name, path = %path.display(), expired = %crate::util::rfc3339(info.not_after as u64 * 1000), "admin certificate has EXPIRED: tetherctl with it is refused");
        }
        out.push(CertExpiry {
            label: format!("admin:{name}"),
            path,
            not_after_s: info.not_after,
        });
    }
    for c in &out {
        let left = c.not_after_s - now_s;
        if left > 0 && left <= warn_s {
            tracing::warn!(cert = %c.label, path = %c.path.display(), expires = %crate::util::rfc3339(c.not_after_s as u64 * 1000), days_left = left / 86_400, "certificate expires soon");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::CertificateParams;
    use tether_transport::certs;

    #[test]
    fn agents_can_check_what_they_were_issued() {
        let now = crate::util::now_ms();
        let m = generate("hub.example", &[], now).unwrap();
        let ca = CertificateAuthority::load(&m.ca_pem, &m.ca_key_pem).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(vec!["c1".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let issued = ca
            .sign_cluster(&csr, "c1", std::time::Duration::from_secs(3600), now)
            .unwrap();
        use tether_transport::tls::verify_issued;
        assert!(verify_issued(&m.ca_pem, &issued.cert_pem, &key.serialize_pem()).is_ok());
        // Someone else's key, another CA, an expired certificate: all refused.
        let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(verify_issued(&m.ca_pem, &issued.cert_pem, &other_key.serialize_pem()).is_err());
        let other = generate("evil", &[], now).unwrap();
        assert!(verify_issued(&other.ca_pem, &issued.cert_pem, &key.serialize_pem()).is_err());
        let old = ca
            .sign_cluster(
                &csr,
                "c1",
                std::time::Duration::from_secs(3600),
                now - 86_400_000,
            )
            .unwrap();
        assert!(verify_issued(&m.ca_pem, &old.cert_pem, &key.serialize_pem()).is_err());
    }

    #[test]
    fn signing_overrides_every_security_field_of_the_csr() {
        let m = generate("hub.example", &[], 1_700_000_000_000).unwrap();
        let ca = CertificateAuthority::load(&m.ca_pem, &m.ca_key_pem).unwrap();
        // A hostile CSR asking to be a CA, for another name, for server auth.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut evil = CertificateParams::new(vec!["victim".to_string()]).unwrap();
        evil.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        evil.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        evil.distinguished_name.push(DnType::CommonName, "victim");
        let csr = evil.serialize_request(&key).unwrap().pem().unwrap();
        let now = 1_700_000_000_000;
        let issued = ca
            .sign_cluster(&csr, "store-1", Duration::from_secs(86_400), now)
            .unwrap();
        let info = certs::inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.common_name, "store-1");
        assert_eq!(info.serial_hex, issued.serial_hex);
        assert_eq!(info.not_after * 1000, (now + 86_400_000) as i64);
        let der = certs::certs_from_pem(&issued.cert_pem, "t").unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let san = x.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 1);
        assert_eq!(
            format!("{:?}", san.general_names[0]),
            format!(
                "{:?}",
                x509_parser::extensions::GeneralName::DNSName("store-1")
            )
        );
    }

    #[test]
    fn malformed_csrs_are_refused() {
        for bad in [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(matches!(
                CertificateAuthority::check_csr(bad),
                Err(PkiError::CsrInvalid(_))
            ));
        }
        let huge = "A".repeat(MAX_CSR_PEM + 1);
        assert!(matches!(
            CertificateAuthority::check_csr(&huge),
            Err(PkiError::CsrTooLarge(_))
        ));
    }
}
