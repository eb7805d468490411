//! Peak memory of an agent that receives a bundle bomb: `cargo run --release -p tether-agent
//! --example bundle_bomb_rss -- BUNDLE_FILE` decodes the delivery the way the session does,
//! stores it, runs one reconcile pass with the dir executor and prints the peak RSS (VmHWM).
//! Without a file argument it writes the bomb (32 MiB of empty CBOR lists in one ConfigMap,
//! about 1 KB compressed) to `bomb.bin` plus its hash to `bomb.hash` first.

use std::sync::Arc;
use std::time::Duration;
use tether_agent::desired::accept_update;
use tether_agent::executor::dir::DirExecutor;
use tether_agent::reconcile::{Reconciler, Signals};
use tether_protocol::WorkUpdate;
use tether_store::Store;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (bundle, hash) = match args.get(1) {
        Some(path) => (
            std::fs::read(path)?,
            std::fs::read_to_string(format!("{path}.hash"))?,
        ),
        None => {
            // CBOR: [{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bomb",
            // "namespace":"default"},"data":[[], [], ...]}]
            let mut raw = vec![0x81, 0xa4];
            let text = |s: &str| {
                let mut t = vec![0x60 | s.len() as u8];
                t.extend_from_slice(s.as_bytes());
                t
            };
            for (k, v) in [("apiVersion", "v1"), ("kind", "ConfigMap")] {
                raw.extend(text(k));
                raw.extend(text(v));
            }
            raw.extend(text("metadata"));
            raw.push(0xa2);
            for (k, v) in [("name", "bomb"), ("namespace", "default")] {
                raw.extend(text(k));
                raw.extend(text(v));
            }
            raw.extend(text("data"));
            let n: u32 = 32 * 1024 * 1024 - 128;
            raw.push(0x9a);
            raw.extend_from_slice(&n.to_be_bytes());
            raw.resize(raw.len() + n as usize, 0x80);
            let packed = tether_protocol::bundle::compress(&raw)?;
            std::fs::write("bomb.bin", &packed.compressed)?;
            std::fs::write("bomb.bin.hash", &packed.hash)?;
            println!(
                "wrote bomb.bin: {} bytes compressed, {} bytes of CBOR",
                packed.compressed.len(),
                raw.len()
            );
            return Ok(());
        }
    };
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path().join("agent.redb"))?);
    let folder = dir.path().join("manifests");
    let update = WorkUpdate {
        name: "bomb".into(),
        generation: 1,
        hash: hash.trim().to_string(),
        force_conflicts: false,
        bundle: Some(bundle),
        base: None,
        fence_after_ms: None,
    };
    let before = peak_rss_kib();
    let ack = accept_update(&store, update, None);
    println!("delivery: {:?}", ack.map(|a| a.held));
    let after_delivery = peak_rss_kib();
    let reconciler = Reconciler::new(
        store,
        Arc::new(DirExecutor::new(&folder)?),
        Signals::default(),
        Duration::from_secs(3600),
    );
    println!("pass: {:?}", reconciler.pass().await);
    let rendered: u64 = std::fs::read_dir(&folder)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "peak RSS: {before} KiB before, {after_delivery} KiB after the delivery, {} KiB after \
         one pass; {rendered} bytes of YAML written",
        peak_rss_kib()
    );
    Ok(())
}
