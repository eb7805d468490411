//! Join CSRs as the hub receives them: `JoinRequest.csr_pem` comes from an agent that has not
//! authenticated (only a token, checked after the CSR). The hub checks the CSR at join and
//! signs it when an administrator approves (or at renewal).
//!
//! Input: a selector byte, then the payload: DER (wrapped in PEM here, so that mutations reach
//! the ASN.1 parser instead of breaking base64) or the PEM text as sent.
//!
//! Properties: nothing panics; a CSR the join check accepts can be signed (else a join is
//! accepted that no approval can complete); the certificate carries the CSR's public key and
//! nothing else of it: the cluster name, client auth only, not a CA.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use tether_hub::parts::pki::{generate, CertificateAuthority};
use x509_parser::prelude::*;

const NOW_MS: u64 = 1_795_226_400_000;
const CLUSTER: &str = "edge-1";

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        let m = generate("fuzz-hub", &[], NOW_MS).expect("CA");
        CertificateAuthority::load(&m.ca_pem, &m.ca_key_pem).expect("CA loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let csr_pem = if mode % 2 == 0 {
        ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", payload.to_vec()))
    } else {
        match std::str::from_utf8(payload) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        }
    };
    if CertificateAuthority::check_csr(&csr_pem).is_err() {
        return;
    }
    // The request as a TLS peer would read it, to compare the key with the certificate's.
    let csr_der = ::pem::parse(&csr_pem).expect("check_csr parsed this PEM");
    let (_, csr) =
        X509CertificationRequest::from_der(csr_der.contents()).expect("check_csr parsed this DER");
    let csr_spki = csr.certification_request_info.subject_pki.raw;
    let issued = ca()
        .sign_cluster(&csr_pem, CLUSTER, Duration::from_secs(30 * 86_400), NOW_MS)
        .unwrap_or_else(|e| panic!("check_csr accepted a CSR that cannot be signed: {e}"));

    let (_, der) = parse_x509_pem(issued.cert_pem.as_bytes()).expect("issued PEM");
    let (_, cert) = parse_x509_certificate(&der.contents).expect("issued certificate parses");
    // The whole SubjectPublicKeyInfo, algorithm and parameters included: the same key bits
    // under another curve would be a certificate for a different (or no) key.
    assert_eq!(
        cert.public_key().raw,
        csr_spki,
        "the certificate is not for the CSR's key"
    );
    let cn: Vec<_> = cert.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().ok(), Some(CLUSTER));
    assert!(!cert.is_ca());
    let eku = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .expect("an EKU extension");
    assert!(eku.value.client_auth && !eku.value.server_auth && !eku.value.any);
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .expect("a SAN extension");
    assert_eq!(
        san.value.general_names,
        [GeneralName::DNSName(CLUSTER)],
        "the CSR's names leaked into the certificate"
    );
    assert_eq!(
        cert.serial.to_bytes_be(),
        hex_decode(&issued.serial_hex),
        "the recorded serial is not the certificate's"
    );
});

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex serial"))
        .collect()
}
