//! `tetherctl rollout status [--watch]`: a progress view that redraws in place on a terminal
//! (counts, ETA, one row per cluster still moving) and prints one line per change otherwise.

use crate::out::{out, outln, print, Output};
use std::io::IsTerminal;
use std::time::Duration;
use tether_hub::api::{ClusterWorkView, RolloutPhase, RolloutView};
use tether_hub::util::now_ms;
use tether_hub::AdminClient;
use tether_protocol::WorkPhase;

/// Cluster rows shown under the counts; the rest are summed up in one line.
const MAX_ROWS: usize = 15;

pub(crate) async fn status(
    client: &AdminClient,
    output: Output,
    work: &str,
    watch: bool,
) -> anyhow::Result<()> {
    let tty = watch && output == Output::Table && std::io::stdout().is_terminal();
    let mut eta = Eta::default();
    let mut drawn = 0usize;
    let mut last_line = String::new();
    loop {
        let r = client.rollout(work).await?;
        let now = now_ms();
        let line = summary(work, &r, eta.estimate(now, &r));
        if tty {
            let clusters = client.work(work).await?.clusters;
            let mut frame = vec![line];
            frame.extend(cluster_rows(&r, &clusters, MAX_ROWS));
            // Back to the first line of the previous frame, clear it, draw the new one.
            if drawn > 0 {
                out!("\x1b[{drawn}F\x1b[J");
            }
            for l in &frame {
                outln!("{l}");
            }
            drawn = frame.len();
        } else if !watch || line != last_line {
            print(output, &r, || outln!("{line}"))?;
            last_line = line;
        }
        if !watch || finished(&r) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn finished(r: &RolloutView) -> bool {
    r.rollback_of.is_some()
        || matches!(
            r.phase,
            RolloutPhase::Complete | RolloutPhase::Paused | RolloutPhase::All
        )
}

pub(crate) fn summary(work: &str, r: &RolloutView, eta: Option<Duration>) -> String {
    let width = 30usize;
    let filled = (r.done * width).checked_div(r.total).unwrap_or(width);
    let phase = if r.reason.is_empty() {
        format!("{:?}", r.phase)
    } else {
        format!("{:?}: {}", r.phase, r.reason)
    };
    let eta = eta.map_or(String::new(), |d| format!(", ETA {}s", d.as_secs().max(1)));
    format!(
        "work/{work} generation {}: [{}{}] {}/{} done, {} updating, {} failed, {} offline pending, {} admitted{eta}  {phase}",
        r.generation,
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width)),
        r.done,
        r.total,
        r.in_flight,
        r.failed,
        r.pending_offline,
        r.admitted,
    )
}

/// Remaining time at the rate clusters finished since the watch began; none until one did.
#[derive(Default)]
pub(crate) struct Eta {
    start: Option<(u64, u64, usize)>,
}

impl Eta {
    pub(crate) fn estimate(&mut self, now_ms: u64, r: &RolloutView) -> Option<Duration> {
        let (at, generation, done0) = *self.start.get_or_insert((now_ms, r.generation, r.done));
        if generation != r.generation {
            self.start = Some((now_ms, r.generation, r.done));
            return None;
        }
        let since = r.done.checked_sub(done0).filter(|d| *d > 0)?;
        let left = r
            .total
            .saturating_sub(r.done + r.failed + r.pending_offline);
        if left == 0 || finished(r) {
            return None;
        }
        let per = now_ms.saturating_sub(at) / since as u64;
        Some(Duration::from_millis(per * left as u64))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RowState {
    Failed,
    Updating,
    Waiting,
    Done,
}

fn row_state(generation: u64, c: &ClusterWorkView) -> RowState {
    let on_it = c.applied_generation == Some(generation);
    match c.phase {
        Some(WorkPhase::Failed) if on_it => RowState::Failed,
        Some(WorkPhase::Applied | WorkPhase::Available) if on_it => RowState::Done,
        _ if c.delivered_generation == Some(generation) => RowState::Updating,
        _ => RowState::Waiting,
    }
}

/// Rows for the clusters still moving, failures first; done clusters only as a count.
pub(crate) fn cluster_rows(
    r: &RolloutView,
    clusters: &[ClusterWorkView],
    max: usize,
) -> Vec<String> {
    let mut rows: Vec<(RowState, &ClusterWorkView)> = clusters
        .iter()
        .filter(|c| c.targeted)
        .map(|c| (row_state(r.generation, c), c))
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1.cluster).cmp(&(b.0, &b.1.cluster)));
    let done = rows.iter().filter(|(s, _)| *s == RowState::Done).count();
    let moving: Vec<_> = rows.iter().filter(|(s, _)| *s != RowState::Done).collect();
    let mut out: Vec<String> = moving
        .iter()
        .take(max)
        .map(|(s, c)| {
            let held = c
                .applied_generation
                .map_or("-".to_string(), |g| g.to_string());
            let note = if *s == RowState::Failed {
                c.message.lines().next().unwrap_or_default().to_string()
            } else {
                String::new()
            };
            format!(
                "  {:<24} {:<9} applied {held:<6} {note}",
                c.cluster,
                format!("{s:?}").to_lowercase()
            )
            .trim_end()
            .to_string()
        })
        .collect();
    let hidden = moving.len().saturating_sub(max);
    if hidden > 0 || done > 0 {
        let more = if hidden > 0 {
            format!("{hidden} more moving, ")
        } else {
            String::new()
        };
        out.push(format!("  ({more}{done} done)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        name: &str,
        delivered: Option<u64>,
        applied: Option<u64>,
        phase: Option<WorkPhase>,
    ) -> ClusterWorkView {
        ClusterWorkView {
            cluster: name.into(),
            targeted: true,
            delivered_generation: delivered,
            applied_generation: applied,
            phase,
            conditions: vec![],
            resources: vec![],
            message: if phase == Some(WorkPhase::Failed) {
                "image pull failed\nmore".into()
            } else {
                String::new()
            },
            observed_at_ms: None,
        }
    }

    fn view(done: usize, total: usize) -> RolloutView {
        RolloutView {
            generation: 2,
            phase: RolloutPhase::Progressing,
            total,
            done,
            ..RolloutView::default()
        }
    }

    #[test]
    fn rows_show_failures_first_and_sum_up_the_rest() {
        let clusters = vec![
            row("a", Some(2), Some(2), Some(WorkPhase::Applied)),
            row("b", Some(2), Some(1), Some(WorkPhase::Applied)),
            row("c", Some(2), Some(2), Some(WorkPhase::Failed)),
            row("d", Some(1), Some(1), Some(WorkPhase::Applied)),
            row("e", Some(1), Some(1), Some(WorkPhase::Applied)),
        ];
        let rows = cluster_rows(&view(1, 5), &clusters, 2);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert!(
            rows[0].contains("c")
                && rows[0].contains("failed")
                && rows[0].ends_with("image pull failed")
        );
        assert!(
            rows[1].contains("b") && rows[1].contains("updating"),
            "{rows:#?}"
        );
        assert_eq!(rows[2], "  (2 more moving, 1 done)");
    }

    #[test]
    fn eta_follows_the_rate_since_the_watch_began() {
        let mut eta = Eta::default();
        assert_eq!(eta.estimate(0, &view(2, 10)), None, "nothing finished yet");
        assert_eq!(eta.estimate(4_000, &view(2, 10)), None);
        // 2 finished in 8 s: 6 left take 24 s.
        assert_eq!(
            eta.estimate(8_000, &view(4, 10)),
            Some(Duration::from_secs(24))
        );
        let mut next = view(4, 10);
        next.generation = 3;
        assert_eq!(
            eta.estimate(9_000, &next),
            None,
            "a new generation starts over"
        );
        let mut done = view(10, 10);
        done.phase = RolloutPhase::Complete;
        assert_eq!(Eta::default().estimate(0, &done), None);
    }

    #[test]
    fn the_summary_bar_never_overflows() {
        let s = summary("w", &view(7, 5), None);
        assert!(s.contains("[##############################]"), "{s}");
    }
}
