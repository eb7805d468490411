//! The reconcile loop: enforce the desired state in the store, on start, on every delivery and
//! on an interval, whether or not the hub is reachable.
//!
//! Each pass applies every work (executors are idempotent and correct drift) and records a
//! status in the outbox when it changed, in the same transaction as the applied state.

use crate::breaker::Breaker;
use crate::desired::{self, Loaded, Quarantine};
use crate::executor::{ApplyReport, ExecError, Executor, Managed};
use crate::outbox;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tether_protocol::work::ObjectRef;
use tether_protocol::{WorkPhase, WorkStatus};
use tether_store::agent::{AppliedWork, DesiredWork, APPLIED, DESIRED};
use tether_store::{ReadTx, Store, StoreError, StrTable, WriteTx};
use tokio::sync::Notify;

/// Per work, the objects of its inventory that Tether adopted (they existed before its first
/// apply), so that removal releases them instead of deleting them. Written in the same
/// transaction as the work's `APPLIED` record and removed with it; a work without a row adopted
/// nothing (which is also how inventories from agents before this table read).
pub const ADOPTED: StrTable<BTreeSet<ObjectRef>> = StrTable::new("adopted_objects");

/// Longest a single apply may take before the pass moves on (and retries next pass).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Signals shared between the session and the reconciler.
#[derive(Clone, Default)]
pub struct Signals {
    /// New desired state was committed: reconcile now.
    pub desired_changed: Arc<Notify>,
    /// A status was queued: the session should send it.
    pub outbox_changed: Arc<Notify>,
    /// Send time of the last heartbeat the hub acknowledged (monotonic clock).
    pub last_contact: Arc<std::sync::Mutex<Option<Instant>>>,
    /// A singleton was fenced: the session must start over so that its inventory tells the hub
    /// (which then re-delivers or removes it). A live session alone would never say so.
    pub fenced: Arc<Notify>,
    /// This agent may hold a work with `fenceAfter`, so its heartbeats must be confirmed by
    /// the hub (`tether_transport::beat`). Read from the store when a session starts, set when
    /// such a work is delivered, cleared only by the next session's read: a stale `true` costs
    /// a packet per heartbeat, a stale `false` would only make a singleton fence early.
    pub holds_fencing: Arc<std::sync::atomic::AtomicBool>,
    /// Kubernetes version and node count as last read by the executor (reported in heartbeats).
    pub cluster_facts: Arc<std::sync::Mutex<(Option<String>, Option<u32>)>>,
    /// Supervised tasks that failed and have not recovered yet (reported in heartbeats).
    pub tasks: crate::supervise::TaskHealth,
    /// This host's clock minus the hub's, in ms, as last measured from the hub's answers
    /// (`HelloAck`, `HeartbeatAck`); reported as the `ClockSkew` condition when large.
    pub clock_offset_ms: Arc<std::sync::Mutex<Option<i64>>>,
    /// A delivery was refused because the store failed. The hub does not send refused content
    /// again on the same session, so once the store works the session starts over: its
    /// inventory then makes the hub send what is missing.
    pub refused_for_store: Arc<std::sync::atomic::AtomicBool>,
    /// Deletions the circuit breaker holds, per work (reported in heartbeats: the hub may no
    /// longer track a work it removed, so the work's own status is not enough).
    pub held_deletions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    /// The owner takes removal confirmations on the cluster only (not through the hub).
    pub local_confirmations_only: bool,
}

impl Signals {
    pub fn contact(&self, sent: Instant) {
        let mut last = self.last_contact.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|l| l < sent) {
            *last = Some(sent);
        }
    }

    pub fn since_contact(&self, now: Instant) -> Option<Duration> {
        self.last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| now.saturating_duration_since(t))
    }
}

use tether_protocol::fencing::must_fence;

/// Status to report for an apply outcome (pure).
pub fn status_for(
    work: &DesiredWork,
    outcome: &Result<ApplyReport, ExecError>,
    at_ms: u64,
) -> WorkStatus {
    let (phase, conditions, resources, message) = match outcome {
        Ok(r) if !r.refused.is_empty() => {
            let message = format!(
                "refused by this cluster's edge policy (the rest was applied): {}",
                r.refused.join("; ")
            );
            let mut conditions = r.conditions.clone();
            conditions.push(crate::executor::condition(
                crate::policy::EDGE_POLICY,
                false,
                "Refused",
                message.clone(),
            ));
            (WorkPhase::Failed, conditions, r.resources.clone(), message)
        }
        Ok(r) => {
            let all_ready = r.resources.iter().all(|s| s.ready != Some(false));
            let phase = if r.readiness_known && all_ready {
                WorkPhase::Available
            } else {
                WorkPhase::Applied
            };
            (
                phase,
                r.conditions.clone(),
                r.resources.clone(),
                String::new(),
            )
        }
        Err(e) => (
            WorkPhase::Failed,
            vec![crate::executor::condition(
                "Applied",
                false,
                e.reason(),
                e.message.clone(),
            )],
            Vec::new(),
            e.message.clone(),
        ),
    };
    WorkStatus {
        work: work.name.clone(),
        generation: work.generation,
        hash: work.hash.clone(),
        phase,
        conditions,
        resources,
        message,
        observed_at_ms: at_ms,
    }
}

/// Status of a quarantined work (pure): Failed, with a `Quarantined` condition.
pub fn quarantine_status(work: &DesiredWork, q: &Quarantine, at_ms: u64) -> WorkStatus {
    WorkStatus {
        work: work.name.clone(),
        generation: work.generation,
        hash: work.hash.clone(),
        phase: WorkPhase::Failed,
        conditions: vec![
            crate::executor::condition(
                tether_protocol::bundle::QUARANTINED_CONDITION,
                true,
                q.reason.as_str(),
                q.detail.clone(),
            ),
            crate::executor::condition("Applied", false, q.reason.as_str(), q.detail.clone()),
        ],
        resources: Vec::new(),
        message: format!("quarantined ({}): {}", q.reason.as_str(), q.detail),
        observed_at_ms: at_ms,
    }
}

/// Two statuses that differ only in observation time are the same news.
fn same_news(a: &WorkStatus, b: &WorkStatus) -> bool {
    WorkStatus {
        observed_at_ms: 0,
        ..a.clone()
    } == WorkStatus {
        observed_at_ms: 0,
        ..b.clone()
    }
}

/// What the agent last recorded as managed for a work.
pub(crate) fn managed(tx: &ReadTx, name: &str) -> Result<Managed, StoreError> {
    Ok(Managed {
        inventory: tx
            .get(&APPLIED, name)?
            .map(|a| a.inventory)
            .unwrap_or_default(),
        adopted: tx.get(&ADOPTED, name)?.unwrap_or_default(),
    })
}

fn put_adopted(tx: &WriteTx, name: &str, adopted: &BTreeSet<ObjectRef>) -> Result<(), StoreError> {
    if adopted.is_empty() {
        tx.remove(&ADOPTED, name)?;
    } else {
        tx.put(&ADOPTED, name, adopted)?;
    }
    Ok(())
}

/// The reconciler's name in supervision logs and heartbeat conditions.
pub const TASK: &str = "reconciler";

/// Await an executor call in its own task, so that a panic in it fails this one work (reported
/// as a failed status, retried next pass) instead of killing the loop that applies every work.
async fn isolated<T: Send + 'static>(
    what: &str,
    work: &str,
    fut: impl std::future::Future<Output = Result<T, ExecError>> + Send + 'static,
) -> Result<T, ExecError> {
    let handle = tokio::spawn(fut);
    let _guard = crate::supervise::AbortOnDrop(handle.abort_handle());
    match tokio::time::timeout(APPLY_TIMEOUT, handle).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_panic() => {
            let text = crate::supervise::panic_text(&*e.into_panic());
            tracing::error!(work, %text, "the executor panicked during {what}");
            Err(ExecError::transient(format!(
                "the executor panicked during {what}: {text}"
            )))
        }
        Ok(Err(e)) => Err(ExecError::transient(format!("{what} was cancelled: {e}"))),
        Err(_) => Err(ExecError::transient(format!(
            "{what} did not finish within {APPLY_TIMEOUT:?}"
        ))),
    }
}

pub struct Reconciler<E> {
    store: Arc<Store>,
    executor: Arc<E>,
    signals: Signals,
    interval: Duration,
    breaker: std::sync::Mutex<Breaker>,
    /// Where removal confirmations are (the database's directory).
    data_dir: std::path::PathBuf,
}

/// Condition kind of a work whose deletion the circuit breaker holds.
pub const DELETION_BREAKER: &str = "DeletionBreaker";

enum Gate {
    Go { confirmed: bool },
    Held(String),
}

impl<E: Executor> Reconciler<E> {
    pub fn new(store: Arc<Store>, executor: Arc<E>, signals: Signals, interval: Duration) -> Self {
        let data_dir = store
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        Self {
            store,
            executor,
            signals,
            interval,
            breaker: std::sync::Mutex::new(Breaker::default()),
            data_dir,
        }
    }

    pub fn with_breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = std::sync::Mutex::new(breaker);
        self
    }

    /// Whether deleting `deleting` objects of `work` may go ahead now.
    fn deletion_gate(&self, work: &str, deleting: usize) -> Result<Gate, StoreError> {
        if deleting == 0 {
            return Ok(Gate::Go { confirmed: false });
        }
        let now = Instant::now();
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if crate::breaker::is_confirmed(&self.data_dir, work) {
            tracing::warn!(
                work,
                deleting,
                "deletion confirmed on the cluster; the breaker lets it through"
            );
            b.record(now, deleting);
            return Ok(Gate::Go { confirmed: true });
        }
        let managed: usize = self.store.read(|tx| {
            Ok::<_, StoreError>(
                tx.list(&APPLIED)?
                    .iter()
                    .map(|(_, a)| a.inventory.len())
                    .sum(),
            )
        })?;
        Ok(match b.admit(now, deleting, managed) {
            Ok(()) => Gate::Go { confirmed: false },
            Err(held) => Gate::Held(held.explain(work, b.window)),
        })
    }

    fn note_held(&self, work: &str, why: Option<&str>) {
        let mut held = self
            .signals
            .held_deletions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match why {
            Some(w) => {
                if held.insert(work.to_string(), w.to_string()).as_deref() != Some(w) {
                    tracing::error!(work, "{w}");
                }
            }
            None => {
                if held.remove(work).is_some() {
                    tracing::info!(work, "the held deletion went ahead");
                }
            }
        }
    }

    /// Report a held deletion (once per change of the message); the work stays as it is.
    fn report_held(&self, work: &DesiredWork, why: String) -> Result<usize, StoreError> {
        self.note_held(&work.name, Some(&why));
        let mut status = status_for(work, &Err(ExecError::transient(why.clone())), now_ms());
        status.conditions = vec![crate::executor::condition(
            DELETION_BREAKER,
            true,
            "Held",
            why,
        )];
        self.record_status(&work.name, &status)
    }

    /// Keep `status` as the work's last word and queue it, unless it says nothing new; the
    /// applied state stays as it was. Returns how many statuses were queued.
    fn record_status(&self, name: &str, status: &WorkStatus) -> Result<usize, StoreError> {
        self.store.write(|tx| {
            let last = tx.get(&APPLIED, name)?;
            if last
                .as_ref()
                .is_some_and(|l| same_news(&l.last_status, status))
            {
                return Ok(0);
            }
            if let Some(mut l) = last {
                l.last_status = status.clone();
                tx.put(&APPLIED, name, &l)?;
            }
            outbox::record(tx, status)?;
            Ok(1)
        })
    }

    /// Run until `shutdown` fires. A failing store is logged and retried next interval: the
    /// cluster keeps whatever was last applied.
    pub async fn run(self, mut shutdown: crate::Shutdown) {
        loop {
            let facts =
                tokio::time::timeout(Duration::from_secs(10), self.executor.cluster_facts())
                    .await
                    .unwrap_or_default();
            *self
                .signals
                .cluster_facts
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = facts;
            match self.pass().await {
                Ok(_) => self.signals.tasks.healthy(TASK),
                Err(e) => tracing::error!(error = %e, "reconcile pass failed"),
            }
            // Wake in time for the earliest fence deadline, not just at the interval.
            let wait = self
                .next_fence_in()
                .unwrap_or(self.interval)
                .min(self.interval);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.signals.desired_changed.notified() => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    fn next_fence_in(&self) -> Option<Duration> {
        let since = self.signals.since_contact(Instant::now())?;
        let desired = self.store.read(crate::desired::heads).ok()?;
        desired
            .iter()
            .filter(|d| !d.fenced && d.removal.is_none())
            .filter_map(|d| d.fence_after_ms)
            .map(|ms| Duration::from_millis(ms).saturating_sub(since) + Duration::from_millis(10))
            .min()
    }

    /// One pass over every work. Returns how many statuses were queued.
    ///
    /// Works are listed without their manifests; each is then loaded within the bundle limits,
    /// so a record that cannot be used (a bomb stored by an older agent) is quarantined here
    /// instead of taking the agent down on every start.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        // Each work's applied record is read once here: only this loop writes it, and only
        // while it handles that work.
        let works = self.store.read(|tx| {
            let mut works = Vec::new();
            for head in desired::heads(tx)? {
                let applied = tx.get(&APPLIED, &head.name)?;
                works.push((head, applied));
            }
            Ok::<_, StoreError>(works)
        })?;
        // What changed first (a new delivery, a removal): its status should not wait behind
        // the re-check of every unchanged work this agent holds.
        let mut works = works;
        works.sort_by_key(|(h, applied)| {
            let changed = h.removal.is_some()
                || applied
                    .as_ref()
                    .is_none_or(|a| a.generation != h.generation || a.hash != h.hash);
            !changed
        });
        let mut queued = 0;
        let mut notified = 0;
        for (head, previous) in works {
            // Send each status as soon as it is queued, not at the end of the pass.
            if queued > notified {
                self.signals.outbox_changed.notify_one();
                notified = queued;
            }
            let name = head.name.clone();
            if head.removal.is_none() {
                let work = head.without_manifests();
                if head.fenced {
                    // Stays down until the hub delivers it again. A copy still running under
                    // it (a late delivery was stored fenced over a live one) goes now.
                    if previous.is_some() {
                        queued += self.fence(&work).await?;
                    }
                    continue;
                }
                if let Some(ms) = head.fence_after_ms {
                    let since = self.signals.since_contact(Instant::now());
                    if must_fence(Duration::from_millis(ms), since) {
                        queued += self.fence(&work).await?;
                        continue;
                    }
                }
            }
            let managed = Managed {
                inventory: previous
                    .as_ref()
                    .map(|a| a.inventory.clone())
                    .unwrap_or_default(),
                adopted: self
                    .store
                    .read(|tx| tx.get(&ADOPTED, &name))?
                    .unwrap_or_default(),
            };
            if let Some(removal) = head.removal {
                queued += self
                    .remove(&head.without_manifests(), &managed, removal.orphan)
                    .await?;
                continue;
            }
            let (loaded, quarantine) = self.store.read(|tx| {
                Ok::<_, StoreError>((
                    desired::load(tx, &name)?,
                    tx.get(&desired::QUARANTINE, &name)?,
                ))
            })?;
            queued += match (loaded, quarantine) {
                (None, _) => 0,
                (Some(Loaded::Work(w)), Some(q)) if q.hash == w.hash => {
                    self.report_quarantine(&w, &q, previous).await?
                }
                (Some(Loaded::Work(w)), _) => self.apply(&w, previous, &managed).await?,
                (
                    Some(Loaded::Unusable {
                        head,
                        reason,
                        detail,
                    }),
                    _,
                ) => {
                    tracing::error!(work = %name, reason = reason.as_str(), %detail, "stored work cannot be used; quarantining it");
                    let q = self
                        .store
                        .write(|tx| desired::quarantine_stored(tx, &head, reason, detail))?;
                    self.report_quarantine(&head.without_manifests(), &q, previous)
                        .await?
                }
            };
        }
        if queued > notified {
            self.signals.outbox_changed.notify_one();
        }
        Ok(queued)
    }

    /// Report a quarantined work (once per change): Failed, with a `Quarantined` condition whose
    /// reason says why. Nothing is applied or pruned: whatever an earlier generation put on the
    /// cluster stays as it was, and its inventory is kept for a later removal.
    async fn report_quarantine(
        &self,
        work: &DesiredWork,
        q: &Quarantine,
        previous: Option<AppliedWork>,
    ) -> Result<usize, StoreError> {
        let status = quarantine_status(work, q, now_ms());
        if previous
            .as_ref()
            .is_some_and(|p| same_news(&p.last_status, &status))
        {
            return Ok(0);
        }
        tracing::warn!(work = %work.name, generation = work.generation, reason = q.reason.as_str(), "work status changed: quarantined");
        let name = work.name.clone();
        self.store.write(|tx| {
            // Withdrawn or replaced meanwhile: the next pass deals with it.
            let still = desired::head(tx, &name)?;
            if still
                .as_ref()
                .is_none_or(|d| d.removal.is_some() || d.hash != q.hash)
            {
                return Ok(0);
            }
            tx.put(
                &APPLIED,
                &name,
                &AppliedWork {
                    generation: work.generation,
                    hash: work.hash.clone(),
                    inventory: previous.map(|p| p.inventory).unwrap_or_default(),
                    last_status: status.clone(),
                },
            )?;
            outbox::record(tx, &status)?;
            Ok(1)
        })
    }

    async fn apply(
        &self,
        work: &DesiredWork,
        previous: Option<AppliedWork>,
        managed: &Managed,
    ) -> Result<usize, StoreError> {
        let refs: BTreeSet<ObjectRef> = work
            .manifests
            .iter()
            .filter_map(|m| crate::executor::object_ref(m).ok())
            .collect();
        let pruning = managed
            .inventory
            .iter()
            .filter(|r| !refs.contains(*r) && !managed.adopted.contains(*r))
            .count();
        let confirmed = match self.deletion_gate(&work.name, pruning)? {
            Gate::Held(why) => return self.report_held(work, why),
            Gate::Go { confirmed } => {
                self.note_held(&work.name, None);
                confirmed
            }
        };
        let (executor, w, m) = (self.executor.clone(), work.clone(), managed.clone());
        let outcome = isolated(
            "apply",
            &work.name,
            async move { executor.apply(&w, &m).await },
        )
        .await;
        if let Err(e) = &outcome {
            tracing::warn!(work = %work.name, generation = work.generation, error = %e, "apply failed");
        } else if confirmed {
            crate::breaker::consume(&self.data_dir, &work.name);
        }
        let status = status_for(work, &outcome, now_ms());
        // A failed apply may have changed nothing or something: keep pruning what we knew.
        let new = match &outcome {
            Ok(r) => r.managed(),
            Err(_) => managed.clone(),
        };
        let new_inventory = new.inventory.clone();
        let news = previous
            .as_ref()
            .is_none_or(|p| !same_news(&p.last_status, &status));
        let inventory_moved = previous
            .as_ref()
            .is_none_or(|p| p.inventory != new_inventory)
            || new.adopted != managed.adopted;
        if !news && !inventory_moved {
            return Ok(0);
        }
        if news {
            tracing::info!(work = %work.name, generation = work.generation, phase = status.phase.as_str(), "work status changed");
        }
        let name = work.name.clone();
        let generation = work.generation;
        self.store.write(|tx| {
            // The hub may have withdrawn the work while we applied; its removal wins. It must
            // still learn what this apply created, or those objects would outlive the work.
            let still = desired::head(tx, &name)?;
            if still.as_ref().is_none_or(|d| d.removal.is_some()) {
                if still.is_some() {
                    let mut both: BTreeSet<_> = managed.inventory.iter().cloned().collect();
                    both.extend(new_inventory);
                    let mut adopted = managed.adopted.clone();
                    adopted.extend(new.adopted.iter().cloned());
                    put_adopted(tx, &name, &adopted)?;
                    tx.put(
                        &APPLIED,
                        &name,
                        &AppliedWork {
                            generation,
                            hash: status.hash.clone(),
                            inventory: both.into_iter().collect(),
                            last_status: previous.map_or(status, |p| p.last_status),
                        },
                    )?;
                }
                return Ok(0);
            }
            tx.put(
                &APPLIED,
                &name,
                &AppliedWork {
                    generation,
                    hash: status.hash.clone(),
                    inventory: new_inventory,
                    last_status: status.clone(),
                },
            )?;
            put_adopted(tx, &name, &new.adopted)?;
            if news {
                outbox::record(tx, &status)?;
                Ok(1)
            } else {
                Ok(0)
            }
        })
    }

    /// Remove a singleton's objects because the hub is out of reach: another cluster may take
    /// it over after `fenceAfter` plus the hub's margin, and two copies must never run.
    async fn fence(&self, work: &DesiredWork) -> Result<usize, StoreError> {
        let managed = self.store.read(|tx| managed(tx, &work.name))?;
        tracing::warn!(work = %work.name, "no hub contact for fenceAfter: fencing this singleton (removing its copy)");
        let (executor, name) = (self.executor.clone(), work.name.clone());
        let m = managed.clone();
        let removed = isolated("fencing", &work.name, async move {
            executor.remove(&name, &m, false).await
        })
        .await;
        if let Err(e) = removed {
            tracing::error!(work = %work.name, error = %e, "fencing failed; will retry");
            return Ok(0);
        }
        let mut status = status_for(work, &Ok(ApplyReport::default()), now_ms());
        status.phase = WorkPhase::Fenced;
        status.conditions.clear();
        let name = work.name.clone();
        let generation = work.generation;
        self.store
            .write(|tx| {
                let Some(d) = desired::head(tx, &name)? else {
                    return Ok(0);
                };
                if d.generation != generation || d.removal.is_some() {
                    return Ok(0);
                }
                desired::modify(tx, &name, |d| d.fenced = true)?;
                tx.remove(&APPLIED, &name)?;
                tx.remove(&ADOPTED, &name)?;
                outbox::record(tx, &status)?;
                Ok(1)
            })
            .inspect(|n| {
                if *n > 0 {
                    self.signals.fenced.notify_one();
                }
            })
    }

    async fn remove(
        &self,
        work: &DesiredWork,
        managed: &Managed,
        orphan: bool,
    ) -> Result<usize, StoreError> {
        let deleting = if orphan {
            0
        } else {
            managed
                .inventory
                .iter()
                .filter(|r| !managed.adopted.contains(*r))
                .count()
        };
        let confirmed = match self.deletion_gate(&work.name, deleting)? {
            Gate::Held(why) => return self.report_held(work, why),
            Gate::Go { confirmed } => {
                self.note_held(&work.name, None);
                confirmed
            }
        };
        let (executor, name) = (self.executor.clone(), work.name.clone());
        let m = managed.clone();
        let outcome = isolated("removal", &work.name, async move {
            executor.remove(&name, &m, orphan).await
        })
        .await;
        let at = now_ms();
        let name = work.name.clone();
        match outcome {
            Ok(()) => {
                if confirmed {
                    crate::breaker::consume(&self.data_dir, &work.name);
                }
                let mut status = status_for(work, &Ok(ApplyReport::default()), at);
                status.phase = if orphan {
                    WorkPhase::Orphaned
                } else {
                    WorkPhase::Removed
                };
                status.conditions.clear();
                tracing::info!(work = %name, orphan, "work removed");
                self.store.write(|tx| {
                    // Re-delivered in the meantime: keep it.
                    if desired::head(tx, &name)?.is_some_and(|d| d.removal.is_none()) {
                        return Ok(0);
                    }
                    tx.remove(&DESIRED, &name)?;
                    tx.remove(&desired::QUARANTINE, &name)?;
                    tx.remove(&APPLIED, &name)?;
                    tx.remove(&ADOPTED, &name)?;
                    outbox::record(tx, &status)?;
                    Ok(1)
                })
            }
            Err(e) => {
                tracing::warn!(work = %name, error = %e, "removal failed; will retry");
                self.record_status(&name, &status_for(work, &Err(e), at))
            }
        }
    }
}
