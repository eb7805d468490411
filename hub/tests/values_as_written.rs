//! Values arrive exactly as written: a number read from a manifest file (YAML) survives the
//! JSON that carries it from tetherctl to the hub. Found by the `work_yaml` fuzz target: without
//! serde_json's `float_roundtrip` this one came back as a neighbouring f64.

#[test]
fn a_number_from_yaml_survives_json_exactly() {
    let v: serde_json::Value =
        serde_yaml_ng::from_str("v: 44444444444444411111111111111111111111111111111").unwrap();
    let text = serde_json::to_string(&v).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v, "{text}");
}
