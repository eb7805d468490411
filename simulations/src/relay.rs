//! A userspace fault-injecting UDP relay: one per agent link.
//!
//! The agent dials the relay's front address instead of the hub. Every datagram from the agent is
//! forwarded to the hub's QUIC port from one upstream socket, and every datagram from the hub back
//! to the last agent address seen. On the way, each datagram meets the link's [`LinkProfile`]:
//! loss, duplication, latency + jitter (FIFO unless reordered), reordering, a bandwidth cap with a
//! bounded queue (tail drop), and a partition switch that drops everything.
//!
//! Fates are drawn from a per-link, per-direction `StdRng` seeded from the scenario seed and the
//! link index, so the n-th datagram of a link in one direction always meets the same fate for the
//! same seed. Which datagram is the n-th depends on OS timing, so a run is reproducible in its
//! fault schedule, not bit for bit.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Datagrams a link holds in flight per direction; more are dropped (a router's tail drop).
pub const MAX_QUEUED: usize = 2_048;
/// Bytes a link holds in flight per direction.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// How one link behaves. Applied to each direction independently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProfile {
    /// One-way base latency.
    #[serde(default)]
    pub latency_ms: u64,
    /// Extra one-way delay drawn uniformly from `0..=jitter_ms` per datagram. Order is kept
    /// (a datagram never overtakes an earlier one) unless it is picked for reordering.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability a datagram is dropped.
    #[serde(default)]
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    #[serde(default)]
    pub duplicate: f64,
    /// Probability a datagram may overtake earlier ones (its jittered delay is not clamped to
    /// FIFO order, and it gets up to `latency + jitter` less delay).
    #[serde(default)]
    pub reorder: f64,
    /// Bandwidth cap per direction in kilobits per second; 0 = unlimited.
    #[serde(default)]
    pub bandwidth_kbps: u64,
}

impl LinkProfile {
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be between 0 and 1, got {p}"));
            }
        }
        if self.latency_ms > 60_000 || self.jitter_ms > 60_000 {
            return Err("latency_ms and jitter_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// Counters of one link, both directions.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Bytes and datagrams handed on (agent -> hub, hub -> agent), duplicates included.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub packets_up: AtomicU64,
    pub packets_down: AtomicU64,
    /// Dropped by loss, partition or a full queue.
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub packets_up: u64,
    pub packets_down: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

impl LinkCounters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
            packets_up: g(&self.packets_up),
            packets_down: g(&self.packets_down),
            dropped: g(&self.dropped),
            duplicated: g(&self.duplicated),
            reordered: g(&self.reordered),
        }
    }
}

struct Control {
    profile: LinkProfile,
    partitioned: bool,
    target: SocketAddr,
}

/// Handle to a running relay. Dropping it stops the relay.
pub struct Relay {
    pub front: SocketAddr,
    control: Arc<Mutex<Control>>,
    pub counters: Arc<LinkCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Bind a front socket on loopback and relay to `target` with `profile`.
    pub async fn start(
        target: SocketAddr,
        profile: LinkProfile,
        seed: u64,
    ) -> std::io::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let upstream = UdpSocket::bind("127.0.0.1:0").await?;
        let front_addr = front.local_addr()?;
        let control = Arc::new(Mutex::new(Control {
            profile,
            partitioned: false,
            target,
        }));
        let counters = Arc::new(LinkCounters::default());
        let task = tokio::spawn(run(
            front,
            upstream,
            control.clone(),
            counters.clone(),
            seed,
        ));
        Ok(Self {
            front: front_addr,
            control,
            counters,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop everything (both directions) while `on`.
    pub fn set_partitioned(&self, on: bool) {
        self.lock().partitioned = on;
    }

    pub fn partitioned(&self) -> bool {
        self.lock().partitioned
    }

    pub fn set_profile(&self, profile: LinkProfile) {
        self.lock().profile = profile;
    }

    pub fn profile(&self) -> LinkProfile {
        self.lock().profile.clone()
    }

    /// Forward to another hub address from now on.
    pub fn set_target(&self, target: SocketAddr) {
        self.lock().target = target;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

struct Pending {
    at: Instant,
    order: u64,
    dir: Dir,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Per-direction state: its own random stream, FIFO clamp, bandwidth clock and queue size.
struct Lane {
    rng: StdRng,
    last_at: Instant,
    link_free_at: Instant,
    queued: usize,
    queued_bytes: usize,
}

impl Lane {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        Self {
            rng: StdRng::seed_from_u64(seed),
            last_at: now,
            link_free_at: now,
            queued: 0,
            queued_bytes: 0,
        }
    }

    /// Decide the fate of one datagram: the delivery times of its copies (empty = dropped).
    fn admit(
        &mut self,
        p: &LinkProfile,
        partitioned: bool,
        len: usize,
        c: &LinkCounters,
    ) -> Vec<Instant> {
        // Draw every number first so that the stream position does not depend on the outcome.
        let lose = self.rng.random_bool(p.loss.clamp(0.0, 1.0));
        let dup = self.rng.random_bool(p.duplicate.clamp(0.0, 1.0));
        let reorder = self.rng.random_bool(p.reorder.clamp(0.0, 1.0));
        let jitter = if p.jitter_ms > 0 {
            self.rng.random_range(0..=p.jitter_ms)
        } else {
            0
        };
        let early = self.rng.random_range(0.0..1.0f64);
        if partitioned || lose {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return vec![];
        }
        let copies = if dup { 2 } else { 1 };
        if self.queued + copies > MAX_QUEUED || self.queued_bytes + len * copies > MAX_QUEUED_BYTES
        {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return vec![];
        }
        let now = Instant::now();
        let mut out = Vec::with_capacity(copies);
        for _ in 0..copies {
            let mut sent = now;
            if p.bandwidth_kbps > 0 {
                // Serialisation delay: the link sends one datagram after the other.
                let tx = Duration::from_micros((len as u64 * 8 * 1000) / p.bandwidth_kbps.max(1));
                self.link_free_at = self.link_free_at.max(now) + tx;
                sent = self.link_free_at;
            }
            let delay = Duration::from_millis(p.latency_ms + jitter);
            let mut at = sent + delay;
            if reorder {
                let max_early = Duration::from_millis(p.latency_ms + p.jitter_ms).mul_f64(early);
                at = at.checked_sub(max_early).unwrap_or(now).max(now);
                c.reordered.fetch_add(1, Ordering::Relaxed);
            } else {
                at = at.max(self.last_at);
                self.last_at = at;
            }
            out.push(at);
        }
        if dup {
            c.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        self.queued += out.len();
        self.queued_bytes += len * out.len();
        out
    }
}

async fn run(
    front: UdpSocket,
    upstream: UdpSocket,
    control: Arc<Mutex<Control>>,
    counters: Arc<LinkCounters>,
    seed: u64,
) {
    let mut lanes = [
        Lane::new(seed.wrapping_mul(2)),
        Lane::new(seed.wrapping_mul(2).wrapping_add(1)),
    ];
    let mut heap: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut client: Option<SocketAddr> = None;
    let mut buf_front = vec![0u8; 65_536];
    let mut buf_up = vec![0u8; 65_536];
    loop {
        let next = heap.peek().map(|Reverse(p)| p.at);
        let received = tokio::select! {
            r = front.recv_from(&mut buf_front) => match r {
                Ok((n, from)) => {
                    client = Some(from);
                    Some((Dir::Up, buf_front[..n].to_vec()))
                }
                Err(_) => None,
            },
            r = upstream.recv_from(&mut buf_up) => match r {
                Ok((n, from)) => {
                    let target = control.lock().unwrap_or_else(|p| p.into_inner()).target;
                    // Only the current hub address talks back.
                    (from == target).then(|| (Dir::Down, buf_up[..n].to_vec()))
                }
                Err(_) => None,
            },
            _ = sleep_until_opt(next) => None,
        };
        if let Some((dir, data)) = received {
            let (profile, partitioned) = {
                let c = control.lock().unwrap_or_else(|p| p.into_inner());
                (c.profile.clone(), c.partitioned)
            };
            let lane = &mut lanes[dir as usize];
            for at in lane.admit(&profile, partitioned, data.len(), &counters) {
                order += 1;
                heap.push(Reverse(Pending {
                    at,
                    order,
                    dir,
                    data: data.clone(),
                }));
            }
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(p)| p.at <= now) {
            let Some(Reverse(p)) = heap.pop() else { break };
            let lane = &mut lanes[p.dir as usize];
            lane.queued -= 1;
            lane.queued_bytes -= p.data.len();
            let (target, partitioned) = {
                let c = control.lock().unwrap_or_else(|p| p.into_inner());
                (c.target, c.partitioned)
            };
            // A partition also swallows what was already in flight.
            if partitioned {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let len = p.data.len() as u64;
            match p.dir {
                Dir::Up => {
                    if upstream.send_to(&p.data, target).await.is_ok() {
                        counters.bytes_up.fetch_add(len, Ordering::Relaxed);
                        counters.packets_up.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Dir::Down => {
                    if let Some(c) = client {
                        if front.send_to(&p.data, c).await.is_ok() {
                            counters.bytes_down.fetch_add(len, Ordering::Relaxed);
                            counters.packets_down.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_fates() {
        let p = LinkProfile {
            latency_ms: 10,
            jitter_ms: 50,
            loss: 0.2,
            duplicate: 0.1,
            reorder: 0.1,
            bandwidth_kbps: 0,
        };
        let fates = |seed| {
            let c = LinkCounters::default();
            let mut lane = Lane::new(seed);
            (0..500)
                .map(|_| {
                    let out = lane.admit(&p, false, 100, &c);
                    lane.queued = 0;
                    lane.queued_bytes = 0;
                    out.len()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fates(7), fates(7));
        assert_ne!(fates(7), fates(8));
        let dropped = fates(7).iter().filter(|n| **n == 0).count();
        assert!((60..140).contains(&dropped), "{dropped}");
    }

    #[tokio::test]
    async fn relays_and_partitions() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(server.local_addr().unwrap(), LinkProfile::default(), 1)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", relay.front).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).await.unwrap();
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
        relay.set_partitioned(true);
        client.send_to(b"lost", relay.front).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(200), server.recv_from(&mut buf)).await;
        assert!(r.is_err(), "a partitioned link delivered");
        assert_eq!(relay.counters.snapshot().dropped, 1);
    }
}
