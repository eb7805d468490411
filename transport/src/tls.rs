//! rustls configurations and Tether's certificate verifiers. TLS 1.3 only, ring provider.
//!
//! Trust rules enforced here:
//! - Hub side: a client certificate, when presented, must chain to the hub CA, be within its
//!   validity and not carry a revoked serial; otherwise the handshake fails with a TLS alert.
//!   Whether a certificate is *required* depends on the ALPN and is enforced by the caller
//!   after the handshake (the join ALPN carries none).
//! - Agent side, joining: the hub must present a CA whose SHA-256 matches the pin given by the
//!   operator, and a serving certificate signed by it for the dialed name.
//! - Agent side, session: the hub must chain to the stored CA; the agent presents its current
//!   certificate, which can be swapped at runtime after renewal.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use crate::certs::{self, CertError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Serials (lowercase hex) the hub refuses. Shared between the store and the verifier so that a
/// revocation takes effect on the very next handshake.
#[derive(Debug, Default)]
pub struct RevocationList {
    serials: RwLock<HashSet<String>>,
}

impl RevocationList {
    pub fn new(serials: impl IntoIterator<Item = String>) -> Self {
        Self {
            serials: RwLock::new(serials.into_iter().collect()),
        }
    }

    pub fn revoke(&self, serial_hex: &str) {
        self.serials
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(serial_hex.to_string());
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial_hex)
    }
}

/// Called with a short reason whenever the hub rejects a client certificate (for metrics/audit).
pub type RejectHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Map a rustls verification error to a stable, low-cardinality reason label.
pub fn reject_reason(err: &Error) -> &'static str {
    match err {
        Error::InvalidCertificate(CertificateError::Revoked) => "revoked",
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => "expired",
        Error::InvalidCertificate(CertificateError::NotValidYet)
        | Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => "not_yet_valid",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer",
        Error::InvalidCertificate(CertificateError::BadSignature) => "bad_signature",
        Error::InvalidCertificate(_) => "invalid_certificate",
        _ => "other",
    }
}

/// Hub-side verifier: CA chain + validity (webpki) + revocation list. Client certificates are
/// optional at the TLS layer; see the module docs.
pub struct HubClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevocationList>,
    on_reject: RejectHook,
}

impl fmt::Debug for HubClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientVerifier").finish_non_exhaustive()
    }
}

impl HubClientVerifier {
    pub fn new(
        ca: CertificateDer<'static>,
        revoked: Arc<RevocationList>,
        on_reject: RejectHook,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self {
            inner,
            revoked,
            on_reject,
        })
    }
}

impl ClientCertVerifier for HubClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|ok| match certs::serial_hex(end_entity) {
                Some(serial) if self.revoked.is_revoked(&serial) => {
                    Err(Error::InvalidCertificate(CertificateError::Revoked))
                }
                Some(_) => Ok(ok),
                None => Err(Error::InvalidCertificate(CertificateError::BadEncoding)),
            });
        if let Err(e) = &verified {
            (self.on_reject)(reject_reason(e));
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server configuration shared by the QUIC listener and the admin HTTPS listener.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<HubClientVerifier>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed TLS 1.3 session reuses the client certificate of the
    // first handshake without running our verifier, which would skip expiry and revocation
    // checks and hide a renewed certificate's serial. Full handshakes only.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Agent-side verifier for the join channel: trust comes from the operator's CA pin alone.
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The CA the hub presented that matched the pin: the agent stores it as its trust anchor.
    matched_ca: Mutex<Option<CertificateDer<'static>>>,
    /// Why the last verification failed, in words an operator can act on.
    last_failure: Mutex<Option<String>>,
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier").finish_non_exhaustive()
    }
}

impl PinnedCaVerifier {
    pub fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: provider(),
            matched_ca: Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    pub fn matched_ca(&self) -> Option<CertificateDer<'static>> {
        self.matched_ca
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fail(&self, why: String) -> Error {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        Error::General(why)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let pin_hex = hex::encode(self.pin);
        let Some(ca) = intermediates
            .iter()
            .find(|c| certs::fingerprint(c) == pin_hex)
        else {
            let presented: Vec<String> = intermediates
                .iter()
                .map(|c| certs::fingerprint(c))
                .collect();
            return Err(self.fail(format!(
                "hub CA fingerprint mismatch: pinned sha256 {pin_hex}, hub presented [{}]",
                presented.join(", ")
            )));
        };
        let ca = ca.clone().into_owned();
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| self.fail(format!("pinned CA is not a usable trust anchor: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| self.fail(format!("pinned CA: {e}")))?;
        let verified = inner
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            .map_err(|e| {
                self.fail(format!(
                    "hub certificate does not verify against the pinned CA: {e}"
                ))
            })?;
        *self.matched_ca.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client configuration for the join channel.
pub fn join_client_config(
    verifier: Arc<PinnedCaVerifier>,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The agent's current certificate and key, replaceable at runtime after a renewal so that the
/// next handshake uses the new identity while the running session continues.
#[derive(Debug)]
pub struct SwappableClientCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl SwappableClientCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        })
    }

    pub fn swap(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs::certs_from_pem(cert_pem, "client certificate")?;
    let key = certs::key_from_pem(key_pem, "client key")?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

impl ResolvesClientCert for SwappableClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client configuration for the authenticated session (and for tetherctl's admin connection).
pub fn session_client_config(
    ca_pem: &str,
    client_cert: Arc<dyn ResolvesClientCert>,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs::certs_from_pem(ca_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(client_cert);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    // Every session presents the current certificate in a full handshake (see server_config).
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// Check a certificate the hub issued before the agent stores it: it verifies as a client
/// certificate under `ca_pem` now (what the hub will check) and belongs to `key_pem`. A bad
/// answer must not replace a working identity.
pub fn verify_issued(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    verify_issued_at(ca_pem, cert_pem, key_pem, UnixTime::now())
}

/// [`verify_issued`] as of `at` instead of now: for a caller that tolerates its own clock
/// being off (the agent checks the validity period itself, within a documented skew).
pub fn verify_issued_at(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    at: UnixTime,
) -> Result<(), TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs::certs_from_pem(ca_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let chain = certs::certs_from_pem(cert_pem, "issued certificate")?;
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(TlsError::Verifier("issued certificate is empty".into()));
    };
    verifier.verify_client_cert(end_entity, intermediates, at)?;
    let key = certs::key_from_pem(key_pem, "private key")?;
    let signing = provider().key_provider.load_private_key(key)?;
    CertifiedKey::new(chain, signing).keys_match()?;
    Ok(())
}
