//! `patch`: bytes on the wire for a one-line change to a large work, sent as a patch against
//! the content the agent holds (`bundle::patch`), next to the whole compressed bundle the hub
//! sent before (the baseline, measured in the same run on the same content). Also the CPU time
//! to make the patch (once per base and content on the hub) and to rebuild the content from
//! it (on the agent), next to packing and unpacking the whole bundle.
//!
//! The input is a directory of plain manifests read as `tetherctl apply -f DIR` reads it
//! (`--patch-input`, e.g. kube-prometheus' `manifests/`), or a synthetic install of 400
//! Deployments when none is given. The change sets one annotation on the middle manifest:
//! one line of YAML.

use super::harness::save;
use super::{BenchArgs, Results};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tether_protocol::bundle::{self, MAX_BUNDLE_BYTES};

#[derive(Debug, Serialize)]
pub struct Patch {
    pub input: String,
    pub manifests: usize,
    pub raw_bytes: usize,
    /// Baseline: the whole bundle, compressed, as sent before patches.
    pub whole_bytes: usize,
    pub patch_bytes: usize,
    pub pack_ms: f64,
    pub make_patch_ms: f64,
    pub unpack_ms: f64,
    pub unpatch_ms: f64,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let input = args.patch_input.clone();
    let p = tokio::task::spawn_blocking(move || measure(input.as_deref())).await??;
    println!(
        "patch: {} ({} manifests, {} B raw): one-line change sent as a patch {} B vs the whole bundle {} B (baseline, {:.0}x less); make {:.1} ms vs pack {:.1} ms; rebuild {:.1} ms vs unpack {:.1} ms",
        p.input,
        p.manifests,
        p.raw_bytes,
        p.patch_bytes,
        p.whole_bytes,
        p.whole_bytes as f64 / p.patch_bytes.max(1) as f64,
        p.make_patch_ms,
        p.pack_ms,
        p.unpatch_ms,
        p.unpack_ms,
    );
    r.patch = Some(p);
    save(&args.out, r)
}

fn measure(input: Option<&std::path::Path>) -> anyhow::Result<Patch> {
    let (label, v1) = match input {
        Some(dir) => (dir.display().to_string(), read_dir(dir)?),
        None => ("synthetic install".to_string(), synthetic(400)),
    };
    anyhow::ensure!(!v1.is_empty(), "no manifests in the input");
    let mut v2 = v1.clone();
    let middle = v2.len() / 2;
    if let Some(meta) = v2[middle]
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert("tether.dev/bench".into(), "changed".into());
        }
    }
    let (base, target) = (bundle::content(&v1)?, bundle::content(&v2)?);
    let (whole, pack) = timed(|| bundle::pack(&v2))?;
    let (patch, make) = timed(|| bundle::patch(&base, &target))?;
    let (_, unpack) = timed(|| bundle::unpack(&whole.compressed, &whole.hash, MAX_BUNDLE_BYTES))?;
    let (rebuilt, unpatch) =
        timed(|| bundle::unpatch(&patch, &base, &whole.hash, MAX_BUNDLE_BYTES))?;
    anyhow::ensure!(rebuilt == v2, "the patch did not rebuild the content");
    Ok(Patch {
        input: label,
        manifests: v1.len(),
        raw_bytes: target.len(),
        whole_bytes: whole.compressed.len(),
        patch_bytes: patch.len(),
        pack_ms: ms(pack),
        make_patch_ms: ms(make),
        unpack_ms: ms(unpack),
        unpatch_ms: ms(unpatch),
    })
}

/// Best of three, so a scheduling hiccup on a shared machine does not make the figure.
fn timed<T, E>(mut f: impl FnMut() -> Result<T, E>) -> Result<(T, Duration), E> {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let v = f()?;
        best = best.min(t.elapsed());
        out = Some(v);
    }
    Ok((out.expect("three runs"), best))
}

fn read_dir(dir: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let inputs = tether_hub::read_inputs(&[dir.to_path_buf()], &mut std::io::empty())?;
    let opts = tether_hub::WrapOptions {
        name: Some("bench".into()),
        clusters: vec!["c".into()],
        ..Default::default()
    };
    let works = tether_hub::build_works(&inputs, &opts)?;
    Ok(works.into_iter().flat_map(|w| w.spec.manifests).collect())
}

fn synthetic(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("svc-{i}"), "namespace": "apps", "labels": {"app": format!("svc-{i}")}},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": format!("svc-{i}")}},
                    "template": {"metadata": {"labels": {"app": format!("svc-{i}")}},
                        "spec": {"containers": [{"name": "main",
                            "image": format!("registry.example/svc-{i}@sha256:{:064x}", (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)),
                            "args": [format!("--shard={i}"), "--log-level=info"],
                            "resources": {"limits": {"cpu": "500m", "memory": format!("{}Mi", 128 + i)}}}]}}}
            })
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
