//! Work documents as `tetherctl apply -f` reads them (YAML, several documents per file, Work
//! documents or plain manifests that it wraps into one Work), then what the hub does with an
//! accepted document: each override rule rendered on its own (as `apply` checks them) and all
//! together, the result packed, the maintenance windows' cron expressions parsed and evaluated.
//! The same reader takes the manifests of a git source (`plain_manifests`), i.e. YAML from
//! someone else's repository.
//!
//! Properties: nothing panics; an accepted document is valid; it survives the encodings it
//! travels in unchanged: JSON (tetherctl to the admin API), CBOR (the hub's store) and YAML
//! (`tetherctl get work -o yaml`, re-applied).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use tether_hub::parts::{matching_rules, render, window_is_open, window_validate};
use tether_hub::{build_works, read_inputs, ManifestError, WrapOptions};
use tether_protocol::bundle::pack;
use tether_protocol::work::{validate, WorkDocument};

fuzz_target!(|data: &[u8]| {
    let Ok(inputs) = read_inputs(&[PathBuf::from("-")], &mut &data[..]) else {
        return; // not UTF-8
    };
    // As written (Work documents); plain manifests are refused for want of a name, and are
    // then read again the way `tetherctl apply -f FILE --name fuzz --cluster edge-1` wraps
    // them. The second parse only for those keeps the common case at one parse per run.
    let docs = match build_works(&inputs, &WrapOptions::default()) {
        Err(ManifestError::NoName) => {
            let wrapped = WrapOptions {
                name: Some("fuzz".into()),
                clusters: vec!["edge-1".into()],
                selector: Default::default(),
            };
            build_works(&inputs, &wrapped)
        }
        other => other,
    };
    for doc in docs.iter().flatten() {
        accepted(doc);
    }
});

fn accepted(doc: &WorkDocument) {
    assert_eq!(
        validate(doc),
        Ok(()),
        "build_works returned an invalid document"
    );
    let spec = &doc.spec;

    let all: Vec<usize> = (0..spec.overrides.len()).collect();
    let each_alone_ok = all.iter().all(|&i| render(spec, &[i]).is_ok());
    let rendered = render(spec, &all);
    if each_alone_ok && all.is_empty() {
        assert_eq!(rendered.as_ref().ok(), Some(&spec.manifests));
    }
    if let Ok(manifests) = rendered {
        let _ = pack(&manifests);
    }
    let _ = matching_rules(spec, "edge-1", &doc.metadata.labels);

    if let Some(rollout) = &spec.rollout {
        for w in rollout.maintenance_windows.values() {
            if window_validate(w).is_ok() {
                // 2026-11-21T02:00:00Z, the epoch and the far end: find_previous_occurrence
                // searches backwards from each.
                for now_ms in [1_795_226_400_000, 0, i64::MAX as u64] {
                    let _ = window_is_open(w, now_ms);
                }
            }
        }
    }

    let json = serde_json::to_vec(doc).expect("an accepted document encodes as JSON");
    let back: WorkDocument = serde_json::from_slice(&json).expect("and decodes from it");
    assert_eq!(&back, doc, "JSON round trip changed the document");

    let cbor = tether_protocol::encode(doc).expect("an accepted document encodes as CBOR");
    let back: WorkDocument = tether_protocol::decode(&cbor).expect("and decodes from it");
    assert_eq!(&back, doc, "CBOR round trip changed the document");

    let yaml = serde_yaml_ng::to_string(doc).expect("an accepted document encodes as YAML");
    let inputs = read_inputs(&[PathBuf::from("-")], &mut yaml.as_bytes()).expect("UTF-8");
    match build_works(&inputs, &WrapOptions::default()) {
        Ok(back) => assert_eq!(back, [doc.clone()], "YAML round trip changed the document"),
        Err(e) => panic!("`get work -o yaml` output is refused by `apply -f`: {e}\n{yaml}"),
    }
}
