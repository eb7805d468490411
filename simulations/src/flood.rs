//! A handshake flood: QUIC Initial packets that never complete, as a hostile client sends them
//! (a fresh connection each, answers never read), from a source address of its own.
//!
//! Built on quinn-proto's client state machine, so every packet is a well-formed Initial with
//! a real ClientHello, the costly kind for a server. Used by the security tests and by
//! `tether-sim bench --only flood`.

use anyhow::Context;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_protocol::ALPN_SESSION;

/// Connections a flood endpoint starts before it is replaced (bounds its memory).
const PER_ENDPOINT: usize = 1000;

pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    /// Send `per_second` Initials to `target` from `from` (e.g. 127.0.0.2 on loopback).
    pub fn start(target: SocketAddr, from: IpAddr, per_second: u32) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind((from, 0)).with_context(|| format!("binding {from}"))?;
        let mut tls =
            rustls::ClientConfig::builder_with_provider(tether_transport::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN_SESSION.to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| anyhow::anyhow!("flood TLS config: {e}"))?;
        let client = quinn_proto::ClientConfig::new(Arc::new(crypto));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let thread = std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || {
                let mut endpoint = None;
                let mut made = 0usize;
                let mut buf = Vec::with_capacity(1500);
                let mut next = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    if made.is_multiple_of(PER_ENDPOINT) {
                        endpoint = Some(quinn_proto::Endpoint::new(
                            Arc::new(quinn_proto::EndpointConfig::default()),
                            None,
                            false,
                            None,
                        ));
                    }
                    made += 1;
                    let Some(ep) = endpoint.as_mut() else { break };
                    let now = Instant::now();
                    if let Ok((_, mut conn)) = ep.connect(now, client.clone(), target, "localhost")
                    {
                        buf.clear();
                        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                            if socket.send_to(&buf[..t.size], t.destination).is_ok() {
                                sent2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > Duration::from_secs(1) {
                        // Fell behind (a busy machine): do not burst to catch up.
                        next = now;
                    }
                }
            })?;
        Ok(Self {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Initials sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
