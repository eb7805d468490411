//! `flood`: honest session handshakes (connect, mTLS, Hello) while a flood of QUIC Initials
//! that never complete runs from another address (`crate::flood`): share that succeed and
//! their latency. Baseline: the same handshakes without the flood.

use super::harness::{bench_hub_config, init_hub_dir, pct, save, Pct};
use super::{BenchArgs, Results};
use crate::fleet::{metric, LocalHub};
use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct FloodResult {
    pub attempts: usize,
    pub flood_initials_per_s: f64,
    pub succeeded: usize,
    pub handshake: Pct,
    pub baseline_succeeded: usize,
    pub baseline_handshake: Pct,
    pub retries_sent: f64,
}

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    let f = flood(args.flood_attempts, args.flood_rate).await?;
    println!(
        "flood: {}/{} honest handshakes succeeded ({:.1}%) during {:.0} Initials/s, p50 {:.1} ms p99 {:.1} ms ({:.0} Retry packets sent); without the flood {}/{} , p50 {:.1} ms p99 {:.1} ms",
        f.succeeded, f.attempts, 100.0 * f.succeeded as f64 / f.attempts.max(1) as f64,
        f.flood_initials_per_s, f.handshake.p50_ms, f.handshake.p99_ms, f.retries_sent,
        f.baseline_succeeded, f.attempts, f.baseline_handshake.p50_ms, f.baseline_handshake.p99_ms
    );
    r.flood = Some(f);
    save(&args.out, r)
}

/// `attempts` honest session handshakes, one after another, each on a fresh endpoint (an agent
/// reconnecting): how many got a HelloAck within 10 s, and how long each took.
async fn honest_handshakes(
    addr: std::net::SocketAddr,
    tls: &rustls::ClientConfig,
    attempts: usize,
) -> anyhow::Result<(usize, Vec<f64>)> {
    let limits = tether_transport::Limits {
        read_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let hello = tether_protocol::Message::Hello(tether_protocol::Hello {
        protocol_version: tether_protocol::PROTOCOL_VERSION,
        agent_version: "bench".into(),
        patches: false,
        confirmations: false,
    });
    let mut ok = 0;
    let mut took = Vec::with_capacity(attempts);
    for _ in 0..attempts {
        let ep = tether_transport::quic::client_endpoint(addr)?;
        let cfg = tether_transport::quic::client_config(tls.clone())?;
        let t = Instant::now();
        let attempt = tokio::time::timeout(Duration::from_secs(10), async {
            let conn = ep.connect_with(cfg, addr, "localhost").ok()?.await.ok()?;
            let answer = tether_transport::framed::request(&conn, &hello, limits).await;
            conn.close(0u32.into(), b"bench");
            matches!(answer, Ok(tether_protocol::Message::HelloAck(_))).then_some(())
        })
        .await;
        if matches!(attempt, Ok(Some(()))) {
            ok += 1;
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((ok, took))
}

async fn flood(attempts: usize, rate: u32) -> anyhow::Result<FloodResult> {
    let tmp = tempfile::tempdir()?;
    let hub_dir = tmp.path().join("hub");
    init_hub_dir(&hub_dir)?;
    let id = crate::lite::provision(&hub_dir, "fl", 1)?
        .pop()
        .context("no identity provisioned")?;
    let hub = LocalHub::start(&hub_dir, bench_hub_config(&hub_dir)).await?;
    let ca_pem = std::fs::read_to_string(hub.cfg.data_dir.ca_cert())?;
    let cert = Arc::new(tether_transport::tls::SwappableClientCert::new(
        &id.cert_pem,
        &id.key_pem,
    )?);
    let tls =
        tether_transport::tls::session_client_config(&ca_pem, cert, tether_protocol::ALPN_SESSION)?;
    let addr = hub.quic_addr();
    let (baseline_succeeded, baseline) = honest_handshakes(addr, &tls, attempts).await?;
    let flood = crate::flood::Flood::start(addr, "127.0.0.2".parse()?, rate)?;
    // Let the flood fill whatever it can fill before the honest agents come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let sent_before = flood.sent();
    let (succeeded, took) = honest_handshakes(addr, &tls, attempts).await?;
    let flood_initials_per_s = (flood.sent() - sent_before) as f64 / t.elapsed().as_secs_f64();
    drop(flood);
    let retries_sent = metric(
        &hub.admin()?.get_text("/metrics").await?,
        "tether_hub_handshakes_rejected_total{reason=\"retry_sent\"}",
    );
    let mut hub = hub;
    hub.stop().await;
    Ok(FloodResult {
        attempts,
        flood_initials_per_s,
        succeeded,
        handshake: pct(took),
        baseline_succeeded,
        baseline_handshake: pct(baseline),
        retries_sent,
    })
}
