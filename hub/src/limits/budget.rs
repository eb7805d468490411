//! Per-cluster budgets for what authenticated clusters may make the hub do (status entries):
//! a token bucket as a pure function of the time it is given.
//!
//! An honest agent stays far inside its budget (its outbox holds at most one entry per work);
//! a hostile one is slowed to the sustained rate, first by waiting for its answer (so honest
//! bursts after a partition only queue), then by refusal once the wait would be too long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
    /// A caller that would wait longer than this is refused instead.
    pub max_wait: Duration,
}

/// Status entries a cluster may have stored: 8 full batches at once, then 200 a second.
pub const STATUS_ENTRIES: Rate = Rate {
    per_second: 200.0,
    burst: 2048.0,
    max_wait: Duration::from_secs(10),
};

#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    /// May go negative: the debt of callers told to wait.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Take `n`; `Ok(wait)` to proceed after `wait`, `Err(wait)` (nothing taken) when that wait
    /// would exceed `rate.max_wait`.
    fn take(&mut self, rate: Rate, n: f64, now: Instant) -> Result<Duration, Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        let after = tokens - n;
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after / rate.per_second)
        };
        // Never backwards: a clock step must not hand out credit twice.
        self.at = self.at.max(now);
        if wait > rate.max_wait {
            self.tokens = tokens;
            return Err(wait);
        }
        self.tokens = after;
        Ok(wait)
    }
}

/// One bucket per cluster (bounded by the registered clusters that have sessions).
pub struct Budgets {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Budgets {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn take(&self, cluster: &str, n: usize, now: Instant) -> Result<Duration, Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(cluster.to_string())
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, n as f64, now)
    }

    /// A detached cluster's name may come back as a new cluster: with a full budget.
    pub fn forget(&self, cluster: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 20.0,
        max_wait: Duration::from_secs(2),
    };

    #[test]
    fn burst_then_sustained_rate_then_refusal() {
        let b = Budgets::new(RATE);
        let t0 = Instant::now();
        assert_eq!(b.take("a", 20, t0), Ok(Duration::ZERO));
        // 10 more: one second of debt.
        assert_eq!(b.take("a", 10, t0), Ok(Duration::from_secs(1)));
        // 15 more would be 2.5 s: refused, and nothing is taken.
        assert_eq!(b.take("a", 15, t0), Err(Duration::from_millis(2500)));
        assert_eq!(b.take("a", 5, t0), Ok(Duration::from_millis(1500)));
        // Other clusters are not affected.
        assert_eq!(b.take("b", 20, t0), Ok(Duration::ZERO));
        // Time repays debt at the rate, and saves no more than the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.take("a", 20, later), Ok(Duration::ZERO));
        assert!(b.take("a", 1, later).unwrap() > Duration::ZERO);
        b.forget("a");
        assert_eq!(b.take("a", 20, later), Ok(Duration::ZERO));
    }

    #[test]
    fn time_going_backwards_takes_nothing_extra() {
        let b = Budgets::new(RATE);
        let t0 = Instant::now() + Duration::from_secs(5);
        assert_eq!(b.take("a", 20, t0), Ok(Duration::ZERO));
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(b.take("a", 10, earlier), Ok(Duration::from_secs(1)));
    }
}
