//! Maintenance windows: is a cluster inside its window at a given time? Pure (time is input).

use chrono::{TimeZone, Utc};
use std::str::FromStr;
use tether_protocol::work::MaintenanceWindow;

/// Check a window's cron expression (refused at `tetherctl apply` when invalid).
pub fn validate(w: &MaintenanceWindow) -> Result<(), String> {
    croner::Cron::from_str(&w.cron).map_err(|e| format!("cron {:?}: {e}", w.cron))?;
    if w.duration_minutes == 0 {
        return Err("durationMinutes must be at least 1".into());
    }
    Ok(())
}

/// Inside the window: the latest opening at or before `now_ms` was less than
/// `duration_minutes` ago.
pub fn is_open(w: &MaintenanceWindow, now_ms: u64) -> Result<bool, String> {
    let cron = croner::Cron::from_str(&w.cron).map_err(|e| format!("cron {:?}: {e}", w.cron))?;
    let now = Utc
        .timestamp_millis_opt(i64::try_from(now_ms).map_err(|_| "time out of range")?)
        .single()
        .ok_or("time out of range")?;
    let Ok(opened) = cron.find_previous_occurrence(&now, true) else {
        return Ok(false);
    };
    let open_for = now.signed_duration_since(opened);
    Ok(open_for < chrono::Duration::minutes(i64::from(w.duration_minutes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> u64 {
        // 2026-11-21 is a Saturday.
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, 0)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn nightly_two_hour_window() {
        let w = MaintenanceWindow {
            cron: "0 2 * * *".into(),
            duration_minutes: 120,
        };
        assert!(!is_open(&w, at(1, 59)).unwrap());
        assert!(is_open(&w, at(2, 0)).unwrap());
        assert!(is_open(&w, at(3, 59)).unwrap());
        assert!(!is_open(&w, at(4, 0)).unwrap());
        let weekend = MaintenanceWindow {
            cron: "0 1 * * SAT".into(),
            duration_minutes: 60,
        };
        assert!(is_open(&weekend, at(1, 30)).unwrap());
        assert!(validate(&MaintenanceWindow {
            cron: "nope".into(),
            duration_minutes: 5
        })
        .is_err());
    }
}
