//! Certificate inspection helpers. Parsing only; signing lives in the hub's PKI module.

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no PEM certificate found in {0}")]
    NoCertificate(&'static str),
    #[error("invalid PEM in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("invalid X.509 certificate: {0}")]
    X509(String),
    #[error("certificate has no common name")]
    NoCommonName,
}

/// The facts about a certificate that Tether makes decisions on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lowercase hex without leading zero bytes stripped.
    pub serial_hex: String,
    pub common_name: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub sha256: String,
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex (what `--ca-sha256` expects).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Parse a user-supplied fingerprint: hex, optionally with ':' separators and a `sha256:` prefix.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let cleaned: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(cleaned.to_ascii_lowercase()).ok()?;
    bytes.try_into().ok()
}

pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate(what));
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        what,
        detail: e.to_string(),
    })
}

pub fn inspect_der(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::X509(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(CertError::NoCommonName)?
        .to_string();
    Ok(CertInfo {
        serial_hex: hex::encode(cert.raw_serial()),
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sha256: fingerprint(der),
    })
}

/// Inspect the first certificate of a PEM bundle.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, CertError> {
    let certs = certs_from_pem(pem, "certificate")?;
    inspect_der(&certs[0])
}

/// Serial of a DER certificate as lowercase hex, or `None` if it does not parse.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| hex::encode(c.raw_serial()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let hex64 = "ab".repeat(32);
        assert!(parse_fingerprint(&hex64).is_some());
        assert!(parse_fingerprint(&format!("sha256:{}", hex64.to_uppercase())).is_some());
        let colons = vec!["ab"; 32].join(":");
        assert!(parse_fingerprint(&colons).is_some());
        assert!(parse_fingerprint("abcd").is_none());
        assert!(parse_fingerprint("zz").is_none());
    }
}
