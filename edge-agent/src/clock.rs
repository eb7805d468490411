//! The agent's own clock, when it checks a certificate the hub just issued to it.
//!
//! The hub backdates certificates by 5 minutes; an agent whose clock was further behind
//! refused the certificate it got at join ("not valid yet"), and every renewal after it. What
//! the hub will check is the hub's clock, not ours, so the agent checks the period itself with
//! a tolerance of [`MAX_CLOCK_SKEW`] and verifies the rest (chain, usage, key) as of a moment
//! inside the period. Beyond the tolerance the error names the local clock: that is what the
//! operator must fix (NTP), not the hub.

use crate::AgentError;
use rustls::pki_types::UnixTime;
use std::time::Duration;
use tether_transport::certs;

/// How far this host's clock may be off the hub's when the agent checks its new certificate.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

fn rfc3339(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_s.to_string())
}

fn human(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Check a certificate issued to this agent (`what`: "issued" at join, "renewed"): its name,
/// its chain to `ca_pem`, its key, and its validity period as of `now_s` (this host's clock,
/// Unix seconds) give or take [`MAX_CLOCK_SKEW`].
pub fn check_issued(
    what: &str,
    name: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    now_s: i64,
) -> Result<(), AgentError> {
    let info = certs::inspect_pem(cert_pem)
        .map_err(|e| AgentError::Protocol(format!("{what} certificate: {e}")))?;
    if info.common_name != name {
        return Err(AgentError::Protocol(format!(
            "{what} certificate names {:?}, expected {name:?}",
            info.common_name
        )));
    }
    let skew = MAX_CLOCK_SKEW.as_secs() as i64;
    let off = if now_s < info.not_before {
        Some((
            info.not_before - now_s,
            "behind",
            "before it becomes valid at",
        ))
    } else if now_s > info.not_after {
        Some((now_s - info.not_after, "ahead", "after it expires at"))
    } else {
        None
    };
    if let Some((by, direction, when)) = off {
        let message = format!(
            "this host's clock reads {} (local time), {} {when} {}; the local clock is at least that far {direction} of the hub's. The agent tolerates {}: set this host's clock (NTP)",
            rfc3339(now_s),
            human(by as u64),
            rfc3339(if direction == "behind" { info.not_before } else { info.not_after }),
            human(skew as u64),
        );
        if by > skew {
            return Err(AgentError::ClockSkew(format!(
                "{what} certificate refused: {message}"
            )));
        }
        tracing::warn!(skew_secs = by, "{what} certificate: {message}");
    }
    // Inside the period, so that only the local clock's offset is forgiven, nothing else.
    let at = now_s.clamp(info.not_before, info.not_after).max(0) as u64;
    tether_transport::tls::verify_issued_at(
        ca_pem,
        cert_pem,
        key_pem,
        UnixTime::since_unix_epoch(Duration::from_secs(at)),
    )
    .map_err(|e| AgentError::Protocol(format!("{what} certificate refused: {e}")))
}

pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    fn at(s: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    /// A CA valid for years and a client certificate for `name` valid from `nb` for a day,
    /// both as the hub makes them.
    fn issue(name: &str, nb: i64) -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = at(nb - 86_400 * 365);
        ca.not_after = at(nb + 86_400 * 365);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(nb);
        p.not_after = at(nb + 86_400);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_local_clock_behind_the_hub_within_the_tolerance_accepts_the_certificate() {
        let now = now_s();
        // Issued by a hub 35 minutes ahead (backdated 5 minutes): valid 30 minutes from now.
        let (ca, cert, key) = issue("edge-1", now + 30 * 60);
        assert!(
            tether_transport::tls::verify_issued(&ca, &cert, &key).is_err(),
            "what the agent did before: refused"
        );
        check_issued("issued", "edge-1", &ca, &cert, &key, now).unwrap();
    }

    #[test]
    fn a_local_clock_beyond_the_tolerance_is_named_in_the_error() {
        let now = now_s();
        let (ca, cert, key) = issue("edge-1", now + 2 * 3600);
        let e = check_issued("issued", "edge-1", &ca, &cert, &key, now).unwrap_err();
        assert!(matches!(e, AgentError::ClockSkew(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("this host's clock"), "{text}");
        assert!(text.contains("behind"), "{text}");
        assert!(!e.is_fatal(), "NTP may fix it: retried, with backoff");
        // Ahead of an expired certificate by more than the tolerance, too.
        let (ca, cert, key) = issue("edge-1", now - 86_400 - 2 * 3600);
        let e = check_issued("renewed", "edge-1", &ca, &cert, &key, now).unwrap_err();
        assert!(e.to_string().contains("ahead"), "{e}");
    }

    #[test]
    fn the_tolerance_forgives_only_the_clock() {
        let now = now_s();
        let (ca, cert, key) = issue("edge-1", now + 60);
        let (other_ca, _, other_key) = issue("edge-1", now + 60);
        check_issued("issued", "edge-1", &ca, &cert, &key, now).unwrap();
        assert!(check_issued("issued", "edge-1", &other_ca, &cert, &key, now).is_err());
        assert!(check_issued("issued", "edge-1", &ca, &cert, &other_key, now).is_err());
        assert!(check_issued("issued", "edge-2", &ca, &cert, &key, now).is_err());
    }
}
