//! Every example in docs/examples parses, validates and renders: the user guide cannot rot.

use std::path::Path;

#[test]
fn documented_examples_are_valid_works() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = tether_hub::parse_work_documents(&text)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        for doc in docs {
            for i in 0..doc.spec.overrides.len() {
                tether_hub::parts::render(&doc.spec, &[i])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            let all: Vec<usize> = (0..doc.spec.overrides.len()).collect();
            tether_hub::parts::render(&doc.spec, &all).unwrap();
            seen += 1;
        }
    }
    assert!(seen >= 5, "expected the documented examples, found {seen}");
}

#[test]
fn the_overrides_example_renders_what_the_guide_says() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/overrides.yaml"),
    )
    .unwrap();
    let doc = tether_hub::parse_work_documents(&text).unwrap().remove(0);
    let eu: tether_protocol::Labels = [("region".to_string(), "eu".to_string())].into();
    let rules = tether_hub::parts::matching_rules(&doc.spec, "store-042", &eu);
    let out = tether_hub::parts::render(&doc.spec, &rules).unwrap();
    let c = &out[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "mirror.eu.example.com/nginx:1.27");
    assert_eq!(c["args"][0], "--debug");
    assert_eq!(out[0]["spec"]["replicas"], 1);
}
