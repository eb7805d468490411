//! What the dir executor writes decodes, with a YAML 1.1 reader (PyYAML, as kubectl's and
//! k3s's readers behave), to exactly the JSON the user wrote: for the manifests of every
//! example in docs/examples and for a corpus of ambiguous scalars. Before, `"no"` (Argo CD's
//! install.yaml has one) was written unquoted and read back as `false`.

use std::process::{Command, Stdio};
use tether_agent::executor::dir::DirExecutor;
use tether_agent::executor::{Executor, Managed};
use tether_store::agent::DesiredWork;

fn python(script: &str, stdin: &str) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(stdin.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    assert!(out.status.success(), "python failed");
    String::from_utf8(out.stdout).ok()
}

fn ambiguous_corpus() -> Vec<serde_json::Value> {
    let words = [
        "no",
        "No",
        "NO",
        "yes",
        "Yes",
        "y",
        "Y",
        "n",
        "N",
        "on",
        "On",
        "off",
        "OFF",
        "true",
        "False",
        "null",
        "Null",
        "~",
        "",
        " ",
        "1_000",
        "0x1F",
        "0o17",
        "017",
        "1e3",
        "1.5",
        ".inf",
        "-.Inf",
        ".nan",
        "12:30",
        "1:20:30",
        "2026-12-03",
        "2026-12-03T10:00:00Z",
        "=",
        "<<",
        "- a",
        "a: b",
        "# c",
        "&a",
        "*a",
        "!tag",
        "%x",
        "@x",
        "`x",
        "'q'",
        "\"dq\"",
        "tab\there",
        "line\nbreak",
        "trailing ",
        "ünïcode",
        "{a}",
        "[b]",
        "?",
        "|",
        ">",
    ];
    let mut data = serde_json::Map::new();
    for (i, w) in words.iter().enumerate() {
        data.insert(format!("k{i}"), serde_json::json!(w));
        // The same words as keys.
        data.insert(w.to_string(), serde_json::json!(i));
    }
    vec![
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "words", "namespace": "default"}, "data": data}),
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "argocd-like", "namespace": "argocd",
                "labels": {"app.kubernetes.io/name": "x"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{
                "name": "server", "image": "quay.io/argoproj/argocd:v2.13.0",
                "args": ["/usr/local/bin/argocd-server", "--insecure", "no"],
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                "ports": [{"containerPort": 8080}]}]}}},
            "extra": {"f": 0.5, "big": 1e300, "small": -2.0e-7, "int": 9007199254740993u64,
                "neg": -1, "t": true, "nil": null, "empty": {}, "none": [], "nested": [[1, []], [{}]]}}),
    ]
}

#[tokio::test]
async fn what_the_dir_executor_writes_decodes_to_what_was_written() {
    let load_examples = r#"
import glob, json, sys, yaml
out = []
for p in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    for doc in yaml.safe_load_all(open(p)):
        if doc and doc.get("kind") == "Work":
            out.extend(doc["spec"].get("manifests", []))
print(json.dumps(out))
"#;
    let examples_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples");
    let probe = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with the yaml module is needed (Debian: python3-yaml)"
        );
        eprintln!("SKIPPED: python3 with yaml is not available");
        return;
    }
    let examples = Command::new("python3")
        .args(["-c", load_examples, examples_dir])
        .output()
        .unwrap();
    assert!(examples.status.success());
    let mut manifests: Vec<serde_json::Value> = serde_json::from_slice(&examples.stdout).unwrap();
    assert!(manifests.len() >= 7, "examples not found");
    manifests.extend(ambiguous_corpus());

    let dir = tempfile::tempdir().unwrap();
    let exec = DirExecutor::new(dir.path()).unwrap();
    let work = DesiredWork {
        name: "corpus".into(),
        generation: 1,
        hash: format!("sha256:{}", "0".repeat(64)),
        force_conflicts: false,
        manifests: manifests.clone(),
        removal: None,
        fence_after_ms: None,
        fenced: false,
    };
    exec.apply(&work, &Managed::default()).await.unwrap();
    let written = std::fs::read_to_string(dir.path().join("tether-corpus.yaml")).unwrap();
    let decoded = python(
        "import json, sys, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        &written,
    )
    .unwrap();
    let decoded: Vec<serde_json::Value> = serde_json::from_str(&decoded).unwrap();
    assert_eq!(decoded.len(), manifests.len());
    // The executor writes Namespaces first, then CRDs, then the rest, each group in the order given.
    let rank = |m: &serde_json::Value| match (m["apiVersion"].as_str(), m["kind"].as_str()) {
        (Some("v1"), Some("Namespace")) => 0,
        (Some(v), Some("CustomResourceDefinition")) if v.starts_with("apiextensions.k8s.io/") => 1,
        _ => 2,
    };
    manifests.sort_by_key(rank);
    for (got, want) in decoded.iter().zip(&manifests) {
        assert_eq!(got, want, "decoded differently:\n{written}");
    }
}
