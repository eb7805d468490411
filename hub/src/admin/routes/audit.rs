//! The audit log route, and paging through it within a bounded scan.

use crate::admin::server::bytes_body::Body;
use crate::admin::server::*;
use crate::api::*;
use crate::identity::admins::Caller;
use crate::state::HubState;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use tether_store::hub::{AuditEvent, AUDIT};
use tether_store::{ReadTx, StoreError};

pub(super) async fn route(
    state: &Arc<HubState>,
    _who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    match (method, seg) {
        (&Method::GET, ["v1", "audit"]) => {
            // The original shape (a bare array), kept for older tetherctl; filters work here
            // too, the cursor only on /v1/audit/page.
            let (filter, before, limit) =
                audit_query(&req).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
            let page = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| audit_page(tx, &filter, before, limit))?)
            })
            .await?;
            Ok(json(StatusCode::OK, &page.events))
        }
        (&Method::GET, ["v1", "audit", "page"]) => {
            let (filter, before, limit) =
                audit_query(&req).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
            let page = in_blocking(state, move |s| {
                Ok(s.store.read(|tx| audit_page(tx, &filter, before, limit))?)
            })
            .await?;
            Ok(json(StatusCode::OK, &page))
        }
        _ => Err(no_route(method, seg)),
    }
}

/// Most events one audit request returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;
/// Rows one audit request reads at most; a page that needs more ends early with a cursor.
const AUDIT_SCAN_BUDGET: u64 = 100_000;
const AUDIT_CHUNK: u64 = 4_096;
/// Audit times come from the hub's wall clock, which can step backwards. `since`/`until` use
/// the log's order to skip rows, allowing for a clock step up to this size.
pub const AUDIT_CLOCK_SLACK_MS: u64 = 3_600_000;

fn audit_query(req: &Request<Incoming>) -> Result<(AuditFilter, Option<u64>, usize), String> {
    let mut f = AuditFilter::default();
    let mut before = None;
    let mut limit = 100;
    for kv in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).ok_or_else(|| format!("bad percent-encoding in {k}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v:?}: expected a non-negative integer"))
        };
        match k {
            "kind" => f.kind = Some(v),
            "cluster" => f.cluster = Some(v),
            "actor" => f.actor = Some(v),
            "since" => f.since_ms = Some(num(&v)?),
            "until" => f.until_ms = Some(num(&v)?),
            "before" => before = Some(num(&v)?),
            "limit" => limit = (num(&v)? as usize).clamp(1, MAX_AUDIT_LIMIT),
            _ => {
                return Err(format!(
                    "unknown audit query parameter {k:?} (kind, cluster, actor, since, until, before, limit)"
                ))
            }
        }
    }
    Ok((f, before, limit))
}

fn audit_matches(f: &AuditFilter, e: &AuditEvent) -> bool {
    f.kind.as_ref().is_none_or(|k| *k == e.kind)
        && f.actor.as_ref().is_none_or(|a| *a == e.actor)
        && f.cluster
            .as_ref()
            .is_none_or(|c| Some(c) == e.cluster.as_ref())
        && f.since_ms.is_none_or(|t| e.at_ms >= t)
        && f.until_ms.is_none_or(|t| e.at_ms <= t)
}

/// The first sequence number whose event is later than `t`, assuming times grow along the
/// log (binary search; a few reads whatever the log's size).
fn first_seq_after(tx: &ReadTx, t: u64, end: u64) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (1u64, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match tx.range(&AUDIT, mid, 1)?.into_iter().next() {
            Some((seq, e)) if e.at_ms <= t => lo = seq.max(mid) + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The newest `limit` events matching `f` with a sequence number below `before`, reading at
/// most about `AUDIT_SCAN_BUDGET` rows.
pub fn audit_page(
    tx: &ReadTx,
    f: &AuditFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<AuditPage, StoreError> {
    let Some((last, _)) = tx.tail(&AUDIT, 1)?.into_iter().next() else {
        return Ok(AuditPage::default());
    };
    let mut upper = before.unwrap_or(u64::MAX).min(last + 1);
    if let Some(until) = f.until_ms {
        upper = upper.min(first_seq_after(
            tx,
            until.saturating_add(AUDIT_CLOCK_SLACK_MS),
            last + 1,
        )?);
    }
    let floor_ms = f.since_ms.map(|t| t.saturating_sub(AUDIT_CLOCK_SLACK_MS));
    let mut found = Vec::new();
    let mut scanned = 0u64;
    let mut done = false;
    'scan: while upper > 1 && scanned < AUDIT_SCAN_BUDGET {
        let lower = upper.saturating_sub(AUDIT_CHUNK).max(1);
        let rows = tx.range(&AUDIT, lower, (upper - lower) as usize)?;
        scanned += rows.len() as u64;
        for (seq, e) in rows.into_iter().rev() {
            if seq >= upper {
                continue;
            }
            if floor_ms.is_some_and(|floor| e.at_ms < floor) {
                done = true;
                break 'scan;
            }
            if audit_matches(f, &e) {
                found.push(AuditView {
                    seq,
                    at_ms: e.at_ms,
                    kind: e.kind,
                    cluster: e.cluster,
                    actor: e.actor,
                    detail: e.detail,
                });
                if found.len() >= limit {
                    upper = seq;
                    break 'scan;
                }
            }
        }
        upper = lower;
    }
    found.reverse();
    Ok(AuditPage {
        events: found,
        next_before: (!done && upper > 1).then_some(upper),
        scanned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_store::Store;

    fn event(at_ms: u64, kind: &str, actor: &str) -> AuditEvent {
        AuditEvent {
            at_ms,
            kind: kind.into(),
            cluster: None,
            actor: actor.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn audit_pages_reach_every_event_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.redb")).unwrap();
        let n = AUDIT_SCAN_BUDGET + 50_000;
        store
            .write(|tx| {
                tx.append(&AUDIT, &event(1_000, "token_created", "admin"))?;
                for i in 0..n {
                    // 100 ms apart: the log spans more than the clock slack.
                    tx.append(
                        &AUDIT,
                        &event(10_000_000 + i * 100, "cert_renewed", "agent:a"),
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let kind = AuditFilter {
            kind: Some("token_created".into()),
            ..Default::default()
        };
        // More rows than one request may read: the first page ends early with a cursor.
        let p1 = store.read(|tx| audit_page(tx, &kind, None, 10)).unwrap();
        assert!(p1.events.is_empty());
        assert!(p1.scanned <= AUDIT_SCAN_BUDGET + AUDIT_CHUNK);
        let p2 = store
            .read(|tx| audit_page(tx, &kind, p1.next_before, 10))
            .unwrap();
        assert_eq!(p2.events.len(), 1);
        assert_eq!(p2.events[0].seq, 1);
        assert_eq!(p2.next_before, None);
        // `until` jumps over the newer rows by binary search: one page, few rows read.
        let until = AuditFilter {
            until_ms: Some(5_000),
            ..Default::default()
        };
        let p = store.read(|tx| audit_page(tx, &until, None, 10)).unwrap();
        assert_eq!(p.events.len(), 1);
        assert!(p.scanned < 10, "{}", p.scanned);
        // `since` stops the scan (past the clock slack) instead of reading to the start.
        let since = AuditFilter {
            since_ms: Some(10_000_000 + (n - 100) * 100),
            ..Default::default()
        };
        let p = store
            .read(|tx| audit_page(tx, &since, None, 10_000))
            .unwrap();
        assert_eq!(p.events.len(), 100);
        assert_eq!(p.next_before, None);
        assert!(p.scanned < AUDIT_SCAN_BUDGET, "{}", p.scanned);
        // A limit-sized page continues from its oldest event.
        let all = AuditFilter::default();
        let p = store.read(|tx| audit_page(tx, &all, None, 3)).unwrap();
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![n - 1, n, n + 1]
        );
        assert_eq!(p.next_before, Some(n - 1));
    }
}
