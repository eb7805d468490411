//! The baselines' server: bare quinn with mTLS, the hub's own certificates and transport
//! settings and nothing of the hub above them, so that a ratio against it is the cost of what
//! the hub adds.

use super::harness::{pct, Pct};
use anyhow::Context;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Bare {
    pub(super) server: quinn::Endpoint,
    pub(super) client_cfg: quinn::ClientConfig,
}

/// A bare quinn mTLS server using the hub's own certificates and transport settings, echoing
/// one frame per stream.
pub(super) fn bare_server(data: &tether_hub::config::DataDir) -> anyhow::Result<Bare> {
    let bare = bare_endpoint(data)?;
    tokio::spawn(echo(bare.server.clone()));
    Ok(bare)
}

/// The server endpoint and a client configuration, with nothing accepting yet.
fn bare_endpoint(data: &tether_hub::config::DataDir) -> anyhow::Result<Bare> {
    use tether_transport::{certs, quic, tls};
    let ca_pem = std::fs::read_to_string(data.ca_cert())?;
    let chain = certs::certs_from_pem(&std::fs::read_to_string(data.hub_cert())?, "hub cert")?;
    let key = certs::key_from_pem(&std::fs::read_to_string(data.hub_key())?, "hub key")?;
    let ca = certs::certs_from_pem(&ca_pem, "CA")?
        .into_iter()
        .next()
        .context("no CA certificate")?;
    let verifier = Arc::new(tls::HubClientVerifier::new(
        ca,
        Arc::new(tls::RevocationList::new(Vec::<String>::new())),
        Arc::new(|_| {}),
    )?);
    let server_tls = tls::server_config(chain, key, verifier, &[b"bench"])?;
    let server = quic::server_endpoint("127.0.0.1:0".parse()?, server_tls, &rand::random())?;
    let cert = Arc::new(tls::SwappableClientCert::new(
        &std::fs::read_to_string(data.admin_cert())?,
        &std::fs::read_to_string(data.admin_key())?,
    )?);
    let client_tls = tls::session_client_config(&ca_pem, cert, b"bench")?;
    let client_cfg = quic::client_config(client_tls)?;
    Ok(Bare { server, client_cfg })
}

/// Hold every connection; echo whatever comes on each stream.
async fn echo(ep: quinn::Endpoint) {
    while let Some(incoming) = ep.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(buf) = recv.read_to_end(64 * 1024).await {
                        let _ = send.write_all(&buf).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                });
            }
        });
    }
}

pub(super) async fn bare_connect(
    cfg: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let ep = tether_transport::quic::client_endpoint(addr)?;
    let conn = ep.connect_with(cfg.clone(), addr, "localhost")?.await?;
    Ok((ep, conn))
}

/// `n` bare mTLS connections, at most `in_flight` handshakes at a time, over shared client
/// endpoints (as the lite swarm does). Returns the endpoints and connections to hold.
pub(super) async fn bare_swarm(
    cfg: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<(Vec<quinn::Endpoint>, Vec<quinn::Connection>)> {
    let n_eps = n.div_ceil(crate::lite::AGENTS_PER_ENDPOINT).max(1);
    let eps = (0..n_eps)
        .map(|_| tether_transport::quic::client_endpoint(addr))
        .collect::<Result<Vec<_>, _>>()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ep, cfg, sem) = (eps[i % n_eps].clone(), cfg.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            // Retried like an agent would: a handshake can time out under a herd.
            let mut last = None;
            for _ in 0..5 {
                match ep.connect_with(cfg.clone(), addr, "localhost")?.await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = Some(e),
                }
            }
            Err(anyhow::anyhow!("bare handshake failed: {last:?}"))
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        conns.push(r??);
    }
    Ok((eps, conns))
}

/// Request/response round trips on one connection, one stream each, as the hub's requests go.
pub(super) async fn quic_rtt(bare: &Bare, rounds: usize) -> anyhow::Result<Pct> {
    let addr = bare.server.local_addr()?;
    let (_ep, conn) = bare_connect(&bare.client_cfg, addr).await?;
    let payload = vec![7u8; 256];
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&payload).await?;
        send.finish()?;
        let back = recv.read_to_end(64 * 1024).await?;
        anyhow::ensure!(back.len() == payload.len(), "echo mismatch");
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(pct(v))
}

/// The network floor of one propagation: the two exchanges a delivery costs (the server opens
/// a stream with a 256-byte update and reads the answer; on receipt the client opens one with
/// a 256-byte status and reads the answer) to `n` connections at once, bare quinn with the
/// hub's TLS and transport settings, client and server in this process as in the lite bench.
/// Milliseconds from the start to each answered update and to each status the server read.
#[derive(Debug, serde::Serialize)]
pub struct FanOut {
    pub connections: usize,
    pub delivered: Pct,
    pub reported: Pct,
}

pub(super) async fn fan_out(
    data: &tether_hub::config::DataDir,
    n: usize,
) -> anyhow::Result<FanOut> {
    use std::sync::Mutex;
    use std::time::Duration;
    let bare = bare_endpoint(data)?;
    let addr = bare.server.local_addr()?;
    let t0: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let reported: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (conns_tx, mut conns_rx) = tokio::sync::mpsc::channel::<quinn::Connection>(n.max(1));
    let acceptor = {
        let (ep, t0, reported) = (bare.server.clone(), t0.clone(), reported.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (conns_tx, t0, reported) = (conns_tx.clone(), t0.clone(), reported.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    if conns_tx.send(conn.clone()).await.is_err() {
                        return;
                    }
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        if let Ok(buf) = recv.read_to_end(64 * 1024).await {
                            if let Some(t0) = t0.get() {
                                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                                reported.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                            }
                            let _ = send.write_all(&buf[..buf.len().min(16)]).await;
                            let _ = send.finish();
                        }
                    }
                });
            }
        })
    };
    let (_eps, clients) = bare_swarm(&bare.client_cfg, addr, n, 64).await?;
    let mut agents = tokio::task::JoinSet::new();
    for conn in clients {
        agents.spawn(async move {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let update = recv.read_to_end(64 * 1024).await?;
            send.write_all(&update[..update.len().min(16)]).await?;
            send.finish()?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&[9u8; 256]).await?;
            send.finish()?;
            recv.read_to_end(64 * 1024).await?;
            // Held until the end so that no close races the other exchanges.
            Ok::<_, anyhow::Error>(conn)
        });
    }
    let mut servers = Vec::with_capacity(n);
    while servers.len() < n {
        servers.push(conns_rx.recv().await.context("the bare acceptor stopped")?);
    }
    let start = Instant::now();
    let _ = t0.set(start);
    let mut updates = tokio::task::JoinSet::new();
    for conn in servers {
        updates.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&[7u8; 256]).await?;
            send.finish()?;
            recv.read_to_end(64 * 1024).await?;
            Ok::<_, anyhow::Error>((start.elapsed().as_secs_f64() * 1000.0, conn))
        });
    }
    let mut delivered = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    while let Some(r) = updates.join_next().await {
        let (ms, conn) = r??;
        delivered.push(ms);
        held.push(conn);
    }
    let mut clients_held = Vec::with_capacity(n);
    let deadline = Duration::from_secs(120);
    while let Some(r) = tokio::time::timeout(deadline, agents.join_next())
        .await
        .context("bare fan-out: clients did not finish in 120 s")?
    {
        clients_held.push(r??);
    }
    acceptor.abort();
    let reported = std::mem::take(&mut *reported.lock().unwrap_or_else(|p| p.into_inner()));
    anyhow::ensure!(
        reported.len() == n,
        "bare fan-out: {} of {n} statuses read",
        reported.len()
    );
    Ok(FanOut {
        connections: n,
        delivered: pct(delivered),
        reported: pct(reported),
    })
}
