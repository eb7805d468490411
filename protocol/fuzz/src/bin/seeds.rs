//! Writes the seed corpus, `corpus/<target>/`, from real encodings, so that the fuzzer starts
//! from inputs that reach deep into each decoder instead of rediscovering CBOR, zstd, YAML and
//! PKCS#10 from nothing. Run after a wire or document format change:
//!
//!   cargo run --manifest-path protocol/fuzz/Cargo.toml --bin seeds -- protocol/fuzz/corpus
//!
//! The CSRs carry fresh random keys, so a rerun changes those files and nothing else.

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tether_protocol::bundle::{content, pack, patch};
use tether_protocol::frame::encode_frame;
use tether_protocol::*;

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: seeds CORPUS_DIR"));
    frames(&out.join("frame"));
    bundles(&out.join("bundle"));
    works(&out.join("work_yaml"));
    csrs(&out.join("csr"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn condition() -> Condition {
    Condition {
        kind: "Ready".into(),
        status: "True".into(),
        reason: "Applied".into(),
        message: String::new(),
    }
}

fn held() -> HeldWork {
    HeldWork {
        generation: 3,
        hash: bundle::content_hash(b"x"),
        fenced: true,
    }
}

fn frames(dir: &Path) {
    let facts = Facts {
        arch: "aarch64".into(),
        os: "linux".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        agent_version: "0.1.0".into(),
        hostname: "edge-1".into(),
        kubernetes_version: Some("v1.33.1".into()),
        node_count: Some(1),
    };
    let labels = BTreeMap::from([("region".to_string(), "eu".to_string())]);
    let status = WorkStatus {
        work: "web".into(),
        generation: 3,
        hash: bundle::content_hash(b"x"),
        phase: WorkPhase::Applied,
        conditions: vec![condition()],
        resources: vec![ResourceStatus {
            object: work::ObjectRef::of(
                &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}}),
            )
            .expect("object ref"),
            ready: Some(false),
            detail: "replicas=3 ready=2".into(),
        }],
        message: String::new(),
        observed_at_ms: 1_795_226_400_000,
    };
    let packed =
        pack(&[json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})])
            .expect("pack");
    let messages = [
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            patches: true,
            confirmations: true,
        }),
        Message::HelloAck(HelloAck {
            protocol_version: PROTOCOL_VERSION,
            hub_version: "0.1.0".into(),
            heartbeat_interval_ms: 5000,
            datagram_heartbeats: true,
            hub_time_ms: 1_795_226_400_000,
        }),
        Message::JoinRequest(JoinRequest {
            token: "tok".into(),
            name: "edge-1".into(),
            labels: labels.clone(),
            facts: facts.clone(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"
                .into(),
            request_secret: "s".repeat(32),
        }),
        Message::JoinPoll(JoinPoll {
            name: "edge-1".into(),
            request_secret: "s".repeat(32),
        }),
        Message::JoinStatus(JoinStatus::Pending),
        Message::JoinStatus(JoinStatus::Approved {
            cert_pem: "c".into(),
            ca_pem: "a".into(),
        }),
        Message::JoinStatus(JoinStatus::Denied {
            reason: "no".into(),
        }),
        Message::Heartbeat(Heartbeat {
            facts,
            conditions: vec![condition()],
            sent_at_ms: 1,
            cluster: Some("edge-1".into()),
            outbox_depth: 2,
        }),
        Message::HeartbeatAck(HeartbeatAck { hub_time_ms: 7 }),
        Message::RenewRequest(RenewRequest {
            csr_pem: "x".into(),
        }),
        Message::RenewResponse(RenewResponse {
            cert_pem: "y".into(),
        }),
        Message::Inventory(Inventory {
            works: BTreeMap::from([("web".to_string(), held())]),
        }),
        Message::InventoryAck(InventoryAck { pending_changes: 1 }),
        Message::WorkUpdate(WorkUpdate {
            name: "web".into(),
            generation: 4,
            hash: packed.hash.clone(),
            force_conflicts: false,
            bundle: Some(packed.compressed.clone()),
            base: Some(bundle::content_hash(b"x")),
            fence_after_ms: Some(60_000),
        }),
        Message::WorkRemove(WorkRemove {
            name: "web".into(),
            orphan: true,
        }),
        Message::WorkAck(WorkAck {
            name: "web".into(),
            held: Some(held()),
        }),
        Message::StatusBatch(StatusBatch {
            from_seq: 1,
            to_seq: 2,
            entries: vec![StatusEntry { seq: 2, status }],
        }),
        Message::StatusAck(StatusAck { through_seq: 2 }),
        Message::Error(ErrorMsg {
            code: ErrorCode::TooLarge,
            message: "m".into(),
            content_missing: true,
        }),
    ];
    for (i, m) in messages.iter().enumerate() {
        let frame = encode_frame(m, DEFAULT_MAX_FRAME).expect("frame");
        write(dir, &format!("{i:02}-{}", m.kind()), &frame);
    }
}

fn bundles(dir: &Path) {
    let deployment = |image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "ratio": 0.5, "neg": -1, "template": {"spec": {"containers": [
                {"name": "web", "image": image, "args": ["--a", null, true]}]}}}})
    };
    let v1 = vec![
        deployment("nginx:1.27"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}),
    ];
    let v2 = vec![deployment("nginx:1.28")];
    let seed = |mode: u8, bytes: &[u8]| [&[mode][..], bytes].concat();
    let packed = pack(&v1).expect("pack");
    write(dir, "0-whole", &seed(0, &packed.compressed));
    write(dir, "1-content", &seed(1, &content(&v1).expect("content")));
    write(
        dir,
        "1-content-small",
        &seed(1, &content(&v2).expect("content")),
    );
    // Mode 2: base length, base, patch. The base must fit in one length byte.
    let base =
        content(&[json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})])
            .expect("content");
    assert!(base.len() < 256);
    let target = content(&v2).expect("content");
    let p = patch(&base, &target).expect("patch");
    let mut input = vec![2, base.len() as u8];
    input.extend_from_slice(&base);
    input.extend_from_slice(&p);
    write(dir, "2-patch", &input);
}

fn works(dir: &Path) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut names: Vec<_> = std::fs::read_dir(&examples)
        .expect("docs/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    for p in names {
        let text = std::fs::read(&p).expect("example");
        write(dir, &p.file_name().expect("name").to_string_lossy(), &text);
    }
    // Plain manifests, as `tetherctl apply -f` wraps them (and a git source reads them).
    write(
        dir,
        "plain-manifests.yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: default}\ndata: {k: v}\n---\n\
apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: s}\n  stringData: {p: q}\n",
    );
}

fn csrs(dir: &Path) {
    let algs: [(&str, &'static rcgen::SignatureAlgorithm); 3] = [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ];
    for (name, alg) in algs {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "edge-1");
        // What a hostile agent would ask for: other names, server auth. The hub drops them.
        p.subject_alt_names = vec![SanType::DnsName("hub.example".try_into().expect("dns"))];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = p.serialize_request(&key).expect("csr");
        write(
            dir,
            &format!("der-{name}"),
            &[&[0u8][..], csr.der()].concat(),
        );
        write(
            dir,
            &format!("pem-{name}"),
            &[&[1u8][..], csr.pem().expect("pem").as_bytes()].concat(),
        );
    }
}
