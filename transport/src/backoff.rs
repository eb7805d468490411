//! Reconnect schedule: exponential backoff with full jitter over a list of hub addresses.
//!
//! Sans-IO: the caller supplies the random draw, so tests and the simulator are deterministic.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// Delay before the next attempt. `unit` is a uniform draw from `[0, 1)`; "full jitter"
    /// spreads a fleet that lost its hub at the same moment over the whole window.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX));
        let window = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        window.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The upper bound the next delay will be drawn from.
    pub fn current_window(&self) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// Call after a session was established and ran for a while.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_doubles_to_the_cap_and_jitter_stays_inside() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let windows: Vec<_> = (0..10)
            .map(|_| {
                let w = b.current_window();
                let d = b.next_delay(0.999);
                assert!(d <= w);
                w.as_millis()
            })
            .collect();
        assert_eq!(
            windows,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        b.reset();
        assert_eq!(b.current_window(), Duration::from_millis(500));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(60));
        }
    }
}
