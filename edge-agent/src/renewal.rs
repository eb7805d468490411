//! When to renew the client certificate. Pure: the random fraction is an input.

/// Renew at `fraction` (drawn once per certificate from [0.7, 0.9]) of the lifetime, so a fleet
/// issued certificates at the same moment does not renew at the same moment.
pub fn due_ms(not_before_ms: u64, not_after_ms: u64, fraction: f64) -> u64 {
    let lifetime = not_after_ms.saturating_sub(not_before_ms);
    not_before_ms + (lifetime as f64 * fraction.clamp(0.0, 1.0)) as u64
}

pub const FRACTION_RANGE: std::ops::Range<f64> = 0.7..0.9;

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
}
