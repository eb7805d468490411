//! TLS from the hub to PostgreSQL: what the store's URL asks for, and the connector that does it.
//!
//! The URL speaks libpq's words, with one rule of ours: whenever the link is encrypted, the
//! server's certificate is verified, chain and host name (libpq's `verify-full`), against the CA
//! in `sslrootcert`, or against the system's CA certificates when the URL names none. An
//! encrypted link to an unverified server would only hide a man in the middle.
//!
//! - `sslmode=disable`: plain text.
//! - `sslmode=prefer` (the default): TLS, verified, when the server offers it; plain text when
//!   it does not, with a warning. A server that offers TLS but fails verification is an error,
//!   never a retry in plain text. An attacker on the path can still make the server appear to
//!   offer no TLS: only `require` protects against that.
//! - `sslmode=require` (and its libpq name for what it does here, `verify-full`): TLS, verified,
//!   or no connection.
//!
//! `sslrootcert`, `sslcert` and `sslkey` are libpq's parameters, which `postgres::Config` does
//! not know: [`split`] takes them out of the URL before it is parsed.

use postgres::config::{Host, SslMode};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::{Client, Config, NoTls, Socket};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS parameters of a store URL that `postgres::Config` does not parse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    /// A PEM file of CA certificates, or `system`.
    pub root_cert: Option<String>,
    /// Client certificate (PEM chain) and its key, for `cert` authentication.
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// Split `url` (a `postgres://` URL or a `key=value` string) into what `postgres::Config` parses
/// and the TLS parameters it would refuse as unknown. `sslmode=verify-full` becomes `require`,
/// which verifies the same way here.
pub(crate) fn split(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: String| -> Result<Option<String>, String> {
        match key {
            "sslrootcert" => params.root_cert = Some(value),
            "sslcert" => params.cert = Some(value),
            "sslkey" => params.key = Some(value),
            "sslmode" => return sslmode(&value).map(Some),
            _ => return Ok(None),
        }
        Ok(Some(String::new()))
    };
    let rest = match ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| url.strip_prefix(p).map(|r| (p.len(), r)))
    {
        Some(found) => found,
        None => {
            let kept = keyword_split(url, &mut take)?;
            return Ok((kept, params));
        }
    };
    // Where the query starts, found as postgres::Config finds it: after the user information,
    // which ends at the first `@`.
    let (prefix_len, rest) = rest;
    let after_user = rest.find('@').map_or(0, |at| at + 1);
    let Some(q) = rest[after_user..]
        .find('?')
        .map(|q| prefix_len + after_user + q)
    else {
        return Ok((url.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match take(&percent_decode(key)?, percent_decode(value)?)? {
            None => kept.push(pair.to_string()),
            Some(replacement) if replacement.is_empty() => {}
            Some(replacement) => kept.push(format!("{key}={replacement}")),
        }
    }
    let mut out = url[..q].to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, params))
}

/// The `sslmode` value to hand on, or why it is refused.
fn sslmode(value: &str) -> Result<String, String> {
    match value {
        "verify-full" => Ok("require".into()),
        "verify-ca" => Err(
            "sslmode=verify-ca is not supported: the hub always checks that the \
             server's certificate is for the host it connects to; use sslmode=require (or \
             verify-full) with the host name in the certificate"
                .into(),
        ),
        "allow" => Err(
            "sslmode=allow is not supported: use prefer (TLS when the server \
             offers it), require, or disable"
                .into(),
        ),
        other => Ok(other.to_string()),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in URL parameter {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("URL parameter {s:?} is not UTF-8"))
}

/// [`split`] for the `key=value` form, read as `postgres::Config` reads it: values may be
/// single-quoted, and a backslash escapes the next character. Kept pairs stay as written.
fn keyword_split(
    s: &str,
    take: &mut impl FnMut(&str, String) -> Result<Option<String>, String>,
) -> Result<String, String> {
    let mut kept: Vec<String> = Vec::new();
    let mut it = s.char_indices().peekable();
    loop {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = it.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if it.next_if(|(_, c)| *c == '=').is_none() {
            // Not ours to judge: postgres::Config reports the malformed string.
            return Ok(s.to_string());
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let quoted = it.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        loop {
            match it.peek() {
                None => break,
                Some(&(_, '\'')) if quoted => {
                    it.next();
                    break;
                }
                Some(&(_, c)) if !quoted && c.is_whitespace() => break,
                Some(_) => {}
            }
            if let Some((_, c)) = it.next() {
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = it.peek().map_or(s.len(), |&(i, _)| i);
        match take(&key, value)? {
            None => kept.push(s[start..end].to_string()),
            Some(replacement) if replacement.is_empty() => {}
            Some(replacement) => kept.push(format!("{key}={replacement}")),
        }
    }
    Ok(kept.join(" "))
}

/// How one store connects: plain, or TLS verified as the module header says.
#[derive(Clone)]
pub(crate) struct Tls {
    /// As the files were when the store opened.
    rustls: Option<MakeRustlsConnect>,
    params: Arc<TlsParams>,
    label: Arc<str>,
    /// The plain-text warning is given once per store, not once per connection.
    warned_plain: Arc<AtomicBool>,
}

impl Tls {
    /// Read the CA (and client certificate) files now, so that a wrong path fails at start, not
    /// at the first connection.
    pub(crate) fn new(config: &Config, params: &TlsParams, label: &str) -> Result<Self, String> {
        let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        let plain = config.get_ssl_mode() == SslMode::Disable || !tcp;
        let rustls = if plain {
            None
        } else {
            Some(MakeRustlsConnect::new(client_config(params)?))
        };
        Ok(Self {
            rustls,
            params: Arc::new(params.clone()),
            label: label.into(),
            warned_plain: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn connect(&self, config: &Config) -> Result<Client, postgres::Error> {
        let Some(opened) = &self.rustls else {
            return config.connect(NoTls);
        };
        let rustls = self.reread().unwrap_or_else(|| opened.clone());
        let encrypted = Arc::new(AtomicBool::new(false));
        let client = config.connect(Noting {
            inner: rustls,
            encrypted: encrypted.clone(),
        })?;
        if !encrypted.load(Ordering::Relaxed) && !self.warned_plain.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                database = %self.label,
                "connected to PostgreSQL in plain text: the server offers no TLS, which \
                 sslmode=prefer accepts (and an attacker on the path can fake); set \
                 sslmode=require once the server has a certificate, or sslmode=disable to say \
                 plain text is intended"
            );
        }
        Ok(client)
    }
}

impl Tls {
    /// The named files read again for a new connection: a CA or client certificate renewed on
    /// disk (CloudNativePG renews its certificates, Kubernetes updates a mounted Secret) takes
    /// effect without a restart. If they no longer read, the ones read at start stay in use.
    fn reread(&self) -> Option<MakeRustlsConnect> {
        let p = &self.params;
        let named = p.root_cert.as_deref().is_some_and(|r| r != "system") || p.cert.is_some();
        if !named {
            return None;
        }
        match client_config(p) {
            Ok(c) => Some(MakeRustlsConnect::new(c)),
            Err(e) => {
                tracing::warn!(database = %self.label, error = %e, "keeping the TLS files read at start");
                None
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(params: &TlsParams) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match params.root_cert.as_deref() {
        Some(path) if path != "system" => {
            builder.with_root_certificates(Arc::new(roots_from_file(path)?))
        }
        _ => {
            let roots = system_roots();
            if roots.is_empty() {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoRoots(provider)))
            } else {
                builder.with_root_certificates(Arc::new(roots))
            }
        }
    };
    let mut config = match (&params.cert, &params.key) {
        (Some(cert), Some(key_file)) => {
            let (chain, key) = client_identity(cert, key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("sslcert {cert} and sslkey {key_file} do not make a client identity: {e}")
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("sslcert and sslkey go together: name both files, or neither".into()),
    };
    // PostgreSQL 17 requires it for sslnegotiation=direct; earlier servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The most a TLS file named in the URL may hold: a CA bundle is a few hundred KiB, and a
/// wrong path (a device, a log) must fail, not fill memory.
const MAX_TLS_FILE: u64 = 4 << 20;

fn read(what: &str, path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TLS_FILE + 1).read_to_end(&mut out))
        .map_err(|e| format!("cannot read {what} {path}: {e}"))?;
    if out.len() as u64 > MAX_TLS_FILE {
        return Err(format!(
            "{what} {path} is larger than {} MiB: not a certificate or key file",
            MAX_TLS_FILE >> 20
        ));
    }
    Ok(out)
}

fn roots_from_file(path: &str) -> Result<RootCertStore, String> {
    let pem = read("sslrootcert", path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {path}: bad PEM: {e}"))?;
        roots.add(cert).map_err(|e| {
            format!("sslrootcert {path}: a certificate in it cannot be a trust anchor: {e}")
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {path}: no certificate in it (expected PEM, \
             -----BEGIN CERTIFICATE-----): name the file with the CA that signed the database \
             server's certificate"
        ));
    }
    Ok(roots)
}

/// The system's CA certificates; those that do not parse are skipped, as a browser would.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "reading the system's CA certificates");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    roots
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_identity(cert: &str, key: &str) -> Result<Identity, String> {
    let chain = CertificateDer::pem_slice_iter(&read("sslcert", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslcert {cert}: bad PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert {cert}: no certificate in it (expected PEM)"
        ));
    }
    // The key's path only: its contents never go into a message.
    let key = PrivateKeyDer::from_pem_slice(&read("sslkey", key)?)
        .map_err(|e| format!("sslkey {key}: no PEM private key in it: {e}"))?;
    Ok((chain, key))
}

/// Without a CA to verify against, a server that offers TLS is refused rather than trusted
/// blindly or talked to in plain text: either would hide a man in the middle.
#[derive(Debug)]
struct NoRoots(Arc<CryptoProvider>);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(NO_ROOTS.into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(NO_ROOTS.into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(NO_ROOTS.into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

const NO_ROOTS: &str = "no CA certificate to verify the server's certificate with: the URL \
    names no sslrootcert and the system has no CA certificates (SSL_CERT_FILE, /etc/ssl/certs); \
    add sslrootcert=/path/ca.pem (the CA that signed the server's certificate)";

/// The rustls connector, noting whether the server took up TLS: with `prefer` a server that
/// answers "no TLS" leaves it unused.
struct Noting {
    inner: MakeRustlsConnect,
    encrypted: Arc<AtomicBool>,
}

struct NotingConnect {
    inner: <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect,
    encrypted: Arc<AtomicBool>,
}

impl MakeTlsConnect<Socket> for Noting {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = NotingConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<NotingConnect, Self::Error> {
        Ok(NotingConnect {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, domain)?,
            encrypted: self.encrypted.clone(),
        })
    }
}

type InnerConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

impl TlsConnect<Socket> for NotingConnect {
    type Stream = <InnerConnect as TlsConnect<Socket>>::Stream;
    type Error = <InnerConnect as TlsConnect<Socket>>::Error;
    type Future = <InnerConnect as TlsConnect<Socket>>::Future;

    fn connect(self, stream: Socket) -> Self::Future {
        self.encrypted.store(true, Ordering::Relaxed);
        self.inner.connect(stream)
    }
}

/// A connection error (not a statement's) in words, with what to change when TLS was the cause.
pub(crate) fn describe(e: &postgres::Error) -> String {
    // postgres::Error's Display names only the kind ("error performing TLS handshake"); the
    // cause is what the operator can act on.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    if let Some(hint) = hint(e) {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}

fn hint(e: &postgres::Error) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let rustls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match rustls {
            Some(rustls::Error::InvalidCertificate(c)) => {
                return Some(match c {
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => {
                        "the server's certificate is not for the host in the URL: connect by a \
                         name (or address) the certificate lists"
                    }
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. } => {
                        "the server's certificate is expired or not yet valid (or this \
                         machine's clock is wrong)"
                    }
                    _ => {
                        "the server's certificate is not trusted (not signed by the CA in \
                         sslrootcert, or by one of the system's without it): name the CA that \
                         signed it with sslrootcert=/path/ca.pem in the URL"
                    }
                });
            }
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
            )) => {
                return Some(
                    "the server refused the TLS handshake: if it wants a client certificate, \
                     add sslcert= and sslkey= to the URL",
                );
            }
            Some(_) => return None,
            None => {}
        }
        if err.to_string() == "server does not support TLS" {
            return Some(
                "the server offers no TLS and the URL requires it: turn on ssl in the server \
                 (ssl=on, a certificate and key), or set sslmode=disable to send everything, \
                 passwords included, in plain text",
            );
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(root: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsParams {
        TlsParams {
            root_cert: root.map(String::from),
            cert: cert.map(String::from),
            key: key.map(String::from),
        }
    }

    #[test]
    fn split_takes_out_what_config_does_not_know() {
        let (url, p) = split(
            "postgres://u:p%3F@db:5432/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p%3F@db:5432/x?sslmode=require&application_name=a"
        );
        assert_eq!(p, params(Some("/etc/ca.pem"), None, None));
        url.parse::<Config>().unwrap();

        let (url, p) =
            split("postgresql://db/x?sslcert=/c.pem&sslkey=/k.pem&sslrootcert=system").unwrap();
        assert_eq!(url, "postgresql://db/x");
        assert_eq!(p, params(Some("system"), Some("/c.pem"), Some("/k.pem")));

        // A `?` in the password is not the query.
        let (url, p) = split("postgres://u:a?b@db/x").unwrap();
        assert_eq!(url, "postgres://u:a?b@db/x");
        assert_eq!(p, TlsParams::default());

        let (kv, p) = split(
            "host=db sslrootcert = '/my certs/ca.pem' password='a b' sslmode=verify-full dbname=x",
        )
        .unwrap();
        assert_eq!(kv, "host=db password='a b' sslmode=require dbname=x");
        assert_eq!(p, params(Some("/my certs/ca.pem"), None, None));
        kv.parse::<Config>().unwrap();
    }

    #[test]
    fn split_refuses_modes_that_would_verify_less() {
        let e = split("postgres://db/x?sslmode=verify-ca").unwrap_err();
        assert!(e.contains("verify-ca is not supported"), "{e}");
        let e = split("host=db sslmode=allow").unwrap_err();
        assert!(e.contains("allow is not supported"), "{e}");
    }

    #[test]
    fn unreadable_or_empty_ca_files_say_which_and_why() {
        let e = client_config(&params(Some("/nonexistent/ca.pem"), None, None)).unwrap_err();
        assert!(
            e.contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.display().to_string();
        let e = client_config(&params(Some(&junk), None, None)).unwrap_err();
        assert!(e.contains("no certificate in it"), "{e}");

        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = bad.display().to_string();
        let e = client_config(&params(Some(&bad), None, None)).unwrap_err();
        assert!(e.contains("bad PEM"), "{e}");

        let e = client_config(&params(None, Some("/c.pem"), None)).unwrap_err();
        assert!(e.contains("go together"), "{e}");

        // A path that never ends (a device) is refused at the limit, not read into memory.
        let e = client_config(&params(Some("/dev/zero"), None, None)).unwrap_err();
        assert!(e.contains("larger than 4 MiB"), "{e}");
    }
}
