//! Multithreaded allocation benchmark: the allocation pattern of a tokio + rustls + CBOR process
//! (many short-lived buffers of mixed sizes, some freed on another thread than the one that
//! allocated them), run on N threads at once. Prints one line per thread count:
//! `ALLOCATOR threads=N ops=... secs=... Mops/s=...`.
//!
//! Usage: tether-allocbench [OPS_PER_THREAD] [THREADS...]   (defaults: 2000000, 1 2 4 8)

#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::time::Instant;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NAME: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(target_env = "musl") {
    "musl-malloc"
} else {
    "system"
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Mostly small (16..256 B), some medium (up to 4 KiB), a few large (up to 64 KiB).
    fn size(&mut self) -> usize {
        let r = self.next();
        match r % 100 {
            0..=79 => 16 + (r >> 8) as usize % 240,
            80..=97 => 256 + (r >> 8) as usize % 3840,
            _ => 4096 + (r >> 8) as usize % 61440,
        }
    }
}

fn worker(id: u64, ops: usize, to_next: mpsc::SyncSender<Vec<u8>>, from_prev: mpsc::Receiver<Vec<u8>>) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
    // A live window of 256 buffers, replaced at random: allocations outlive a few iterations.
    let mut window: Vec<Vec<u8>> = (0..256).map(|_| vec![0u8; rng.size()]).collect();
    let mut sum = 0u64;
    for i in 0..ops {
        let n = rng.size();
        let mut v = Vec::with_capacity(n);
        v.resize(n.min(64), 1u8); // touch the start like a header write would
        let slot = (rng.next() % 256) as usize;
        let old = std::mem::replace(&mut window[slot], v);
        if i % 8 == 0 {
            // 1 in 8 buffers is handed to the next thread and freed there (cross-thread free).
            let _ = to_next.try_send(old);
        } else {
            sum = sum.wrapping_add(old.len() as u64);
        }
        while let Ok(b) = from_prev.try_recv() {
            sum = sum.wrapping_add(b.capacity() as u64);
        }
    }
    sum
}

fn run(threads: usize, ops: usize) -> f64 {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(1024);
        senders.push(tx);
        receivers.push(rx);
    }
    // Thread i sends to thread i+1 (ring); with one thread it sends to itself.
    senders.rotate_left(1);
    let start = Instant::now();
    let handles: Vec<_> = senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(i, (tx, rx))| std::thread::spawn(move || worker(i as u64, ops, tx, rx)))
        .collect();
    let mut total = 0u64;
    for h in handles {
        total = total.wrapping_add(h.join().unwrap());
    }
    std::hint::black_box(total);
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().map(|s| s.parse().expect("OPS_PER_THREAD")).unwrap_or(2_000_000);
    let mut counts: Vec<usize> = args.map(|s| s.parse().expect("THREADS")).collect();
    if counts.is_empty() {
        counts = vec![1, 2, 4, 8];
    }
    for t in counts {
        let secs = run(t, ops);
        let total = (t * ops) as f64;
        println!(
            "{NAME} threads={t} ops={} secs={secs:.3} Mops/s={:.2}",
            t * ops,
            total / secs / 1e6
        );
    }
}
