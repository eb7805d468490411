//! When to renew the client certificate. Pure: the random fraction is an input.

use std::time::Duration;

/// Renew at `fraction` (drawn once per certificate from [0.7, 0.9]) of the lifetime, so a fleet
/// issued certificates at the same moment does not renew at the same moment.
pub fn due_ms(not_before_ms: u64, not_after_ms: u64, fraction: f64) -> u64 {
    let lifetime = not_after_ms.saturating_sub(not_before_ms);
    not_before_ms + (lifetime as f64 * fraction.clamp(0.0, 1.0)) as u64
}

pub const FRACTION_RANGE: std::ops::Range<f64> = 0.7..0.9;

/// First and longest wait before retrying a failed renewal.
pub const RETRY_BASE: Duration = Duration::from_secs(5);
pub const RETRY_CAP: Duration = Duration::from_secs(15 * 60);

/// When to retry after `failures` renewals failed in a row, with `left_ms` of validity left
/// and `unit` a uniform draw from [0, 1). A renewal the hub refuses (or this agent refuses,
/// a clock off by hours) fails the same way on every try, so the wait grows exponentially
/// with jitter, up to `RETRY_CAP`. It never waits past half of what is left, so that a
/// transient failure still leaves tries before expiry; and never less than a second.
pub fn retry_in(failures: u32, left_ms: u64, unit: f64) -> Duration {
    let window = RETRY_BASE
        .saturating_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
        .min(RETRY_CAP);
    // Equal jitter: half the window, plus up to the other half.
    let wait = window / 2 + window.mul_f64(unit.clamp(0.0, 1.0) / 2.0);
    wait.min(Duration::from_millis(left_ms / 2))
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_inside_window() {
        assert_eq!(due_ms(1000, 2000, 0.7), 1700);
        assert_eq!(due_ms(1000, 2000, 0.9), 1900);
        assert_eq!(
            due_ms(2000, 1000, 0.8),
            2000,
            "inverted validity renews at once"
        );
    }

    #[test]
    fn failed_renewals_back_off_and_still_leave_tries_before_expiry() {
        let month = 30 * 86_400_000;
        let waits: Vec<_> = (0..12).map(|n| retry_in(n, month, 0.0)).collect();
        assert_eq!(waits[0], RETRY_BASE / 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(waits[8] > Duration::from_secs(60), "{waits:?}");
        assert_eq!(waits[11], RETRY_CAP / 2);
        assert!(retry_in(30, month, 0.999) <= RETRY_CAP);
        // Close to expiry: half of what is left, never under a second.
        assert_eq!(retry_in(10, 20_000, 0.5), Duration::from_secs(10));
        assert_eq!(retry_in(10, 500, 0.5), Duration::from_secs(1));
    }
}
