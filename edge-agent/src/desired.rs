//! Desired state as delivered by the hub: committed to the store before it is acknowledged.

use crate::AgentError;
use serde::{Deserialize, Serialize};
use tether_protocol::bundle::{self, BundleError, MAX_BUNDLE_BYTES};
use tether_protocol::names::{validate_work_name, NameError};
use tether_protocol::{ErrorCode, HeldWork, Inventory, WorkAck, WorkRemove, WorkUpdate};
use tether_store::agent::{DesiredWork, Removal, DESIRED};
use tether_store::{ReadTx, Store, StoreError, StrTable, WriteTx};

/// Fault-injection switch for simulations only (`simulations/tests/sim_broken.rs`): when set,
/// [`accept_update`] acknowledges an update WITHOUT committing it to the store, the "acks before
/// committing" bug the simulator must catch. Never set outside tests; off by default.
pub static ACK_BEFORE_COMMIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Works one agent will hold. Keeps the store, the outbox and every reconcile pass bounded.
pub const MAX_WORKS: usize = 5_000;

// ---------------------------------------------------------------- bounded views of DESIRED
//
// `DESIRED` holds each work's manifests. Decoding them whole is what a stored bundle bomb (from
// an agent before the decoding limits) turned into an abort on every start, so the agent reads
// that table through these views of the same redb table instead: heads skip the manifests
// without building them, and `BOUNDED` builds them within `bundle`'s limits. Records are still
// written as `DesiredWork`; the views only read. The table name must be `DESIRED`'s (a test
// below writes through one and reads through the other).

const DESIRED_TABLE: &str = "desired_works";
/// Keys only (values skipped), so one unreadable record cannot hide every other work.
const KEYS: StrTable<serde::de::IgnoredAny> = StrTable::new(DESIRED_TABLE);
const HEADS: StrTable<DesiredHead> = StrTable::new(DESIRED_TABLE);
const BOUNDED: StrTable<BoundedDesired> = StrTable::new(DESIRED_TABLE);

/// A desired work without its manifests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DesiredHead {
    pub name: String,
    pub generation: u64,
    pub hash: String,
    pub force_conflicts: bool,
    pub removal: Option<Removal>,
    #[serde(default)]
    pub fence_after_ms: Option<u64>,
    #[serde(default)]
    pub fenced: bool,
}

impl DesiredHead {
    /// The record with no manifests: what removal, fencing and status reports need.
    pub fn without_manifests(&self) -> DesiredWork {
        DesiredWork {
            name: self.name.clone(),
            generation: self.generation,
            hash: self.hash.clone(),
            force_conflicts: self.force_conflicts,
            manifests: Vec::new(),
            removal: self.removal,
            fence_after_ms: self.fence_after_ms,
            fenced: self.fenced,
        }
    }
}

#[derive(Deserialize)]
struct BoundedDesired {
    name: String,
    generation: u64,
    hash: String,
    force_conflicts: bool,
    manifests: bundle::Manifests,
    removal: Option<Removal>,
    #[serde(default)]
    fence_after_ms: Option<u64>,
    #[serde(default)]
    fenced: bool,
}

/// Works the agent holds but will not run, by name. Written in the same transaction as the
/// work's `DESIRED` record (whose manifests are then empty) and removed with it, or when
/// content it can run replaces it.
pub const QUARANTINE: StrTable<Quarantine> = StrTable::new("quarantined_works");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub generation: u64,
    pub hash: String,
    pub reason: QuarantineReason,
    pub detail: String,
}

/// Why a work is quarantined; reported as the reason of its `Quarantined` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineReason {
    /// Not zstd, not CBOR, or not a list of manifests.
    BundleUnreadable,
    /// Decompresses to more than `bundle::MAX_BUNDLE_BYTES`.
    BundleTooLarge,
    /// Too many manifests or values, or nested too deep (`bundle::LimitExceeded`).
    BundleOverLimits,
    /// A manifest lacks apiVersion, kind or a valid metadata.name.
    ManifestInvalid,
    /// Renders to more than `executor::dir::MAX_RENDERED_BYTES` of YAML.
    RenderTooLarge,
    /// The stored record could not be read back within the limits (written by an older agent).
    StoredRecordUnreadable,
}

impl QuarantineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::BundleUnreadable => "BundleUnreadable",
            QuarantineReason::BundleTooLarge => "BundleTooLarge",
            QuarantineReason::BundleOverLimits => "BundleOverLimits",
            QuarantineReason::ManifestInvalid => "ManifestInvalid",
            QuarantineReason::RenderTooLarge => "RenderTooLarge",
            QuarantineReason::StoredRecordUnreadable => "StoredRecordUnreadable",
        }
    }
}

/// A desired work as read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Work(DesiredWork),
    /// The record is there but its manifests cannot be used; quarantine it.
    Unusable {
        head: DesiredHead,
        reason: QuarantineReason,
        detail: String,
    },
}

fn loaded(
    bounded: Result<Option<BoundedDesired>, StoreError>,
    head: impl FnOnce() -> Result<Option<DesiredHead>, StoreError>,
) -> Result<Option<Loaded>, StoreError> {
    match bounded {
        Ok(None) => Ok(None),
        Ok(Some(b)) => {
            let head = DesiredHead {
                name: b.name,
                generation: b.generation,
                hash: b.hash,
                force_conflicts: b.force_conflicts,
                removal: b.removal,
                fence_after_ms: b.fence_after_ms,
                fenced: b.fenced,
            };
            Ok(Some(match b.manifests.0 {
                Ok(manifests) => Loaded::Work(DesiredWork {
                    manifests,
                    ..head.without_manifests()
                }),
                Err(e) => Loaded::Unusable {
                    head,
                    reason: QuarantineReason::StoredRecordUnreadable,
                    detail: format!("the stored bundle has {e}"),
                },
            }))
        }
        // Past even the CBOR recursion limit: the head may still be readable.
        Err(StoreError::Corrupt { detail, .. }) => Ok(head()?.map(|head| Loaded::Unusable {
            head,
            reason: QuarantineReason::StoredRecordUnreadable,
            detail: format!("the stored record cannot be decoded: {detail}"),
        })),
        Err(e) => Err(e),
    }
}

/// One desired work, its manifests decoded within the bundle limits.
pub fn load(tx: &ReadTx, name: &str) -> Result<Option<Loaded>, StoreError> {
    loaded(tx.get(&BOUNDED, name), || tx.get(&HEADS, name))
}

fn load_w(tx: &WriteTx, name: &str) -> Result<Option<Loaded>, StoreError> {
    loaded(tx.get(&BOUNDED, name), || tx.get(&HEADS, name))
}

/// Every desired work without its manifests, in name order. A record whose head cannot be
/// read is logged and skipped rather than failing every other work with it.
pub fn heads(tx: &ReadTx) -> Result<Vec<DesiredHead>, StoreError> {
    let mut out = Vec::new();
    for (name, _) in tx.list(&KEYS)? {
        match tx.get(&HEADS, &name) {
            Ok(Some(h)) => out.push(h),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(work = %name, error = %e, "unreadable desired record; skipped")
            }
        }
    }
    Ok(out)
}

pub fn head(tx: &WriteTx, name: &str) -> Result<Option<DesiredHead>, StoreError> {
    tx.get(&HEADS, name)
}

/// Change a stored desired work. A record whose manifests cannot be read is quarantined on the
/// way (stored again without them), so a stored bomb is decoded within limits once and never
/// again. Returns the record as written, or `None` if there is none.
pub fn modify(
    tx: &WriteTx,
    name: &str,
    change: impl FnOnce(&mut DesiredWork),
) -> Result<Option<DesiredWork>, StoreError> {
    let mut work = match load_w(tx, name)? {
        None => return Ok(None),
        Some(Loaded::Work(w)) => w,
        Some(Loaded::Unusable {
            head,
            reason,
            detail,
        }) => {
            quarantine_stored(tx, &head, reason, detail)?;
            head.without_manifests()
        }
    };
    change(&mut work);
    tx.put(&DESIRED, name, &work)?;
    Ok(Some(work))
}

/// Quarantine a stored record whose manifests cannot be used: keep the head, drop the manifests.
pub fn quarantine_stored(
    tx: &WriteTx,
    head: &DesiredHead,
    reason: QuarantineReason,
    detail: String,
) -> Result<Quarantine, StoreError> {
    let q = Quarantine {
        generation: head.generation,
        hash: head.hash.clone(),
        reason,
        detail,
    };
    tx.put(&DESIRED, &head.name, &head.without_manifests())?;
    tx.put(&QUARANTINE, &head.name, &q)?;
    Ok(q)
}

/// What this agent holds, for the hub to compute the difference on connect.
pub fn inventory(tx: &ReadTx) -> Result<Inventory, AgentError> {
    let works = heads(tx)?
        .into_iter()
        .filter(|d| d.removal.is_none())
        .map(|d| {
            (
                d.name,
                HeldWork {
                    generation: d.generation,
                    hash: d.hash,
                    fenced: d.fenced,
                },
            )
        })
        .collect();
    Ok(Inventory { works })
}

/// Whether this agent holds a work that fences (a singleton), read once per session: then every heartbeat must be
/// confirmed by the hub, because the fencing deadline counts from the last confirmed one.
pub fn holds_fencing_work(tx: &ReadTx) -> Result<bool, AgentError> {
    Ok(heads(tx)?.iter().any(|d| d.fence_after_ms.is_some()))
}

/// Why an update was refused; sent back to the hub as an error reply.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("work name {0:?} refused: {1}")]
    Name(String, NameError),
    #[error("work {0:?}: {1}")]
    Bundle(String, BundleError),
    #[error("work {0:?}: {1:.80?} is not a content hash (sha256:<64 hex digits>)")]
    Hash(String, String),
    #[error("work {0:?}: no content with hash {1} is held here; send the bundle")]
    MissingContent(String, String),
    #[error("work {0:?}: the patch does not rebuild the announced content ({1}); send the bundle")]
    PatchUnusable(String, BundleError),
    #[error("this agent already holds {MAX_WORKS} works; refusing {0:?}")]
    TooManyWorks(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl DeliveryError {
    /// The error reply to the hub: what it acts on is typed (`code`, `content_missing`).
    pub fn reply(&self) -> tether_protocol::Message {
        tether_protocol::Message::Error(tether_protocol::ErrorMsg {
            code: self.code(),
            message: self.to_string(),
            content_missing: matches!(
                self,
                DeliveryError::MissingContent(..) | DeliveryError::PatchUnusable(..)
            ),
        })
    }

    /// The typed code of the error reply, which is what the hub acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            DeliveryError::Name(..) => ErrorCode::NameInvalid,
            DeliveryError::Bundle(..)
            | DeliveryError::Hash(..)
            | DeliveryError::MissingContent(..)
            | DeliveryError::PatchUnusable(..) => ErrorCode::BadRequest,
            DeliveryError::TooManyWorks(_) => ErrorCode::TooLarge,
            // The agent's disk, not the hub's input, failed: `Busy` tells the hub to send the
            // same delivery again later; never `BadRequest`, which means "do not resend this".
            DeliveryError::Agent(AgentError::Store(e)) if crate::error::store_retryable(e) => {
                ErrorCode::Busy
            }
            DeliveryError::Agent(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for DeliveryError {
    fn from(e: StoreError) -> Self {
        DeliveryError::Agent(e.into())
    }
}

/// What a delivery carries, once checked.
enum Content {
    Manifests(Vec<serde_json::Value>),
    /// Authentic (or at least deterministic) content this agent will not run.
    Quarantine(QuarantineReason, String),
    /// No bundle: the agent must already hold this hash.
    Same,
}

fn quarantine_reason(e: &BundleError) -> QuarantineReason {
    match e {
        BundleError::TooLarge { .. } => QuarantineReason::BundleTooLarge,
        BundleError::Limit(_) => QuarantineReason::BundleOverLimits,
        BundleError::Compression(_)
        | BundleError::Decode(_)
        | BundleError::Encode(_)
        | BundleError::HashMismatch { .. } => QuarantineReason::BundleUnreadable,
    }
}

/// Everything the executors rely on, checked once at delivery instead of on every pass.
fn check_manifests(manifests: &[serde_json::Value]) -> Result<(), (QuarantineReason, String)> {
    for (i, manifest) in manifests.iter().enumerate() {
        crate::executor::object_ref(manifest).map_err(|e| {
            (
                QuarantineReason::ManifestInvalid,
                format!("manifest {i}: {e}"),
            )
        })?;
    }
    crate::executor::dir::rendered_len(manifests)
        .map_err(|e| (QuarantineReason::RenderTooLarge, e.to_string()))?;
    Ok(())
}

/// Decode, validate and commit a work update. Returns the acknowledgement to send.
///
/// The name is checked before anything else: it keys the store and names files. Content the
/// agent cannot run (see [`QuarantineReason`]) is not refused: a refusal would only make the
/// hub send it again on every session. It is stored quarantined (acknowledged under its hash,
/// so the hub stops sending it) and the reconciler reports it as a failed status; a delivery
/// with different content lifts the quarantine. Only a hash mismatch is refused: the content
/// is not what the hub says it is, so it cannot be held under that hash.
///
/// `since_contact`: how long ago the agent last had a heartbeat acknowledged. A singleton
/// that arrives while that is already past its `fenceAfter` is a delivery delayed in the
/// network: the hub may have moved the work meanwhile, so it is stored fenced (kept, not run)
/// and acknowledged as such; the hub sends it again over a fresh session if it is still ours.
pub fn accept_update(
    store: &Store,
    update: WorkUpdate,
    since_contact: Option<std::time::Duration>,
) -> Result<WorkAck, DeliveryError> {
    validate_work_name(&update.name).map_err(|e| DeliveryError::Name(update.name.clone(), e))?;
    if !bundle::is_content_hash(&update.hash) {
        return Err(DeliveryError::Hash(update.name, update.hash));
    }
    let name = update.name.clone();
    let fenced = update.fence_after_ms.is_some_and(|ms| {
        tether_protocol::fencing::must_fence(std::time::Duration::from_millis(ms), since_contact)
    });
    let unpacked = match (&update.bundle, &update.base) {
        (Some(b), None) => Some(bundle::unpack(b, &update.hash, MAX_BUNDLE_BYTES)),
        (Some(p), Some(base)) => Some(unpatch(store, &name, p, base, &update.hash)?),
        (None, _) => None,
    };
    let content = match unpacked {
        Some(Err(e @ BundleError::HashMismatch { .. })) => {
            return Err(DeliveryError::Bundle(name, e))
        }
        Some(Err(e)) => Content::Quarantine(quarantine_reason(&e), e.to_string()),
        Some(Ok(m)) => match check_manifests(&m) {
            Ok(()) => Content::Manifests(m),
            Err((reason, detail)) => Content::Quarantine(reason, detail),
        },
        None => Content::Same,
    };
    if ACK_BEFORE_COMMIT.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(WorkAck {
            name,
            held: Some(HeldWork {
                generation: update.generation,
                hash: update.hash,
                fenced: false,
            }),
        });
    }
    let quarantined = store.write(|tx| {
        let existing = match head(tx, &name) {
            Ok(h) => h,
            // Unreadable even without its manifests: this delivery replaces it.
            Err(StoreError::Corrupt { detail, .. }) => {
                tracing::error!(work = %name, %detail, "unreadable desired record; replacing it");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let quarantine = |reason, detail| Quarantine {
            generation: update.generation,
            hash: update.hash.clone(),
            reason,
            detail,
        };
        let (manifests, quarantine) = match content {
            Content::Manifests(m) => (m, None),
            Content::Quarantine(reason, detail) => (Vec::new(), Some(quarantine(reason, detail))),
            Content::Same if existing.as_ref().is_some_and(|d| d.hash == update.hash) => {
                match tx
                    .get(&QUARANTINE, &name)?
                    .filter(|q| q.hash == update.hash)
                {
                    Some(q) => (Vec::new(), Some(quarantine(q.reason, q.detail))),
                    None => match load_w(tx, &name)? {
                        Some(Loaded::Work(w)) => (w.manifests, None),
                        Some(Loaded::Unusable { reason, detail, .. }) => {
                            (Vec::new(), Some(quarantine(reason, detail)))
                        }
                        None => {
                            return Err(DeliveryError::MissingContent(
                                name.clone(),
                                update.hash.clone(),
                            ))
                        }
                    },
                }
            }
            Content::Same => {
                return Err(DeliveryError::MissingContent(
                    name.clone(),
                    update.hash.clone(),
                ))
            }
        };
        if existing.is_none() && tx.count(&DESIRED)? >= MAX_WORKS as u64 {
            return Err(DeliveryError::TooManyWorks(name.clone()));
        }
        let desired = DesiredWork {
            name: name.clone(),
            generation: update.generation,
            hash: update.hash.clone(),
            force_conflicts: update.force_conflicts,
            manifests,
            removal: None,
            fence_after_ms: update.fence_after_ms,
            // A timely delivery is the hub's word that this cluster holds the work again.
            fenced,
        };
        tx.put(&DESIRED, &name, &desired)?;
        match &quarantine {
            Some(q) => tx.put(&QUARANTINE, &name, q)?,
            None => {
                tx.remove(&QUARANTINE, &name)?;
            }
        }
        Ok(quarantine)
    })?;
    if let Some(q) = quarantined {
        tracing::warn!(work = %name, generation = update.generation, reason = q.reason.as_str(), detail = %q.detail, "work quarantined: stored, acknowledged, not run");
    }
    Ok(WorkAck {
        name,
        held: Some(HeldWork {
            generation: update.generation,
            hash: update.hash,
            fenced,
        }),
    })
}

/// The content a patch rebuilds, from the manifests this agent holds for the work under
/// `base`. Content over the limits is as final as in a whole bundle (the same content would
/// come again); anything else that goes wrong asks for the whole bundle, since the patch,
/// not the content, may be at fault.
fn unpatch(
    store: &Store,
    name: &str,
    patch: &[u8],
    base: &str,
    hash: &str,
) -> Result<Result<Vec<serde_json::Value>, BundleError>, DeliveryError> {
    let missing = || DeliveryError::MissingContent(name.to_string(), base.to_string());
    let held = match store.read(|tx| load(tx, name))? {
        Some(Loaded::Work(w)) if w.hash == base => w.manifests,
        _ => return Err(missing()),
    };
    let base_content = bundle::content(&held).map_err(|_| missing())?;
    // The stored manifests must encode to the very bytes the patch was made against.
    if bundle::content_hash(&base_content) != base {
        return Err(missing());
    }
    match bundle::unpatch(patch, &base_content, hash, MAX_BUNDLE_BYTES) {
        Err(e @ (BundleError::TooLarge { .. } | BundleError::Limit(_))) => Ok(Err(e)),
        Err(e) => Err(DeliveryError::PatchUnusable(name.to_string(), e)),
        Ok(m) => Ok(Ok(m)),
    }
}

/// Mark a work for removal (the reconciler carries it out) and commit.
pub fn accept_removal(store: &Store, removal: WorkRemove) -> Result<WorkAck, DeliveryError> {
    validate_work_name(&removal.name).map_err(|e| DeliveryError::Name(removal.name.clone(), e))?;
    store.write(|tx| {
        modify(tx, &removal.name, |d| {
            d.removal = Some(Removal {
                orphan: removal.orphan,
            })
        })?;
        Ok::<_, DeliveryError>(())
    })?;
    Ok(WorkAck {
        name: removal.name,
        held: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn singleton_update() -> WorkUpdate {
        let manifests = vec![serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "controller", "namespace": "default"},
        })];
        let packed = bundle::pack(&manifests).unwrap();
        WorkUpdate {
            name: "controller".into(),
            generation: 1,
            hash: packed.hash,
            force_conflicts: false,
            bundle: Some(packed.compressed),
            base: None,
            fence_after_ms: Some(1_000),
        }
    }

    fn stored(store: &Store) -> DesiredWork {
        store
            .read(|tx| tx.get(&DESIRED, "controller"))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_singleton_arriving_after_contact_lapsed_is_stored_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        let late = accept_update(&store, singleton_update(), Some(Duration::from_secs(3))).unwrap();
        assert!(late.held.unwrap().fenced);
        assert!(stored(&store).fenced);
        let never = accept_update(&store, singleton_update(), None).unwrap();
        assert!(
            never.held.unwrap().fenced,
            "no contact at all is no contact"
        );
        // Delivered again within fenceAfter of contact: the hub's word that it is ours.
        let timely =
            accept_update(&store, singleton_update(), Some(Duration::from_millis(200))).unwrap();
        assert!(!timely.held.unwrap().fenced);
        assert!(!stored(&store).fenced);
    }

    #[test]
    fn works_without_fencing_ignore_contact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        let mut update = singleton_update();
        update.fence_after_ms = None;
        let ack = accept_update(&store, update, None).unwrap();
        assert!(!ack.held.unwrap().fenced);
    }

    #[test]
    fn hostile_names_are_refused_with_a_typed_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        for name in ["../x", "", ".", "a/b", "a\nb", "Web"] {
            let mut update = singleton_update();
            update.name = name.into();
            let err = accept_update(&store, update, None).unwrap_err();
            assert_eq!(err.code(), ErrorCode::NameInvalid, "{name:?}: {err}");
            let removal = WorkRemove {
                name: name.into(),
                orphan: true,
            };
            let err = accept_removal(&store, removal).unwrap_err();
            assert_eq!(err.code(), ErrorCode::NameInvalid, "{name:?}: {err}");
        }
        assert!(store.read(|tx| tx.list(&DESIRED)).unwrap().is_empty());
    }

    #[test]
    fn the_bounded_views_read_what_desired_work_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        accept_update(&store, singleton_update(), Some(Duration::from_millis(1))).unwrap();
        let written = stored(&store);
        let heads = store.read(heads).unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].without_manifests().manifests.len(), 0);
        assert_eq!(
            DesiredWork {
                manifests: written.manifests.clone(),
                ..heads[0].without_manifests()
            },
            written
        );
        let loaded = store.read(|tx| load(tx, "controller")).unwrap();
        assert_eq!(loaded, Some(Loaded::Work(written)));
    }

    #[test]
    fn a_bump_for_content_not_held_asks_for_the_bundle_in_a_typed_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        let mut update = singleton_update();
        update.bundle = None;
        update.hash = format!("sha256:{}", "cd".repeat(32));
        let err = accept_update(&store, update, None).unwrap_err();
        let bytes = tether_protocol::encode(&err.reply()).unwrap();
        match tether_protocol::decode::<tether_protocol::Message>(&bytes).unwrap() {
            tether_protocol::Message::Error(e) => assert!(e.content_missing, "{e}"),
            other => panic!("{other:?}"),
        }
        // Every other refusal leaves the field out, and a peer that omits it means false.
        let other = DeliveryError::TooManyWorks("x".into()).reply();
        let bytes = tether_protocol::encode(&other).unwrap();
        match tether_protocol::decode::<tether_protocol::Message>(&bytes).unwrap() {
            tether_protocol::Message::Error(e) => assert!(!e.content_missing),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_patch_against_the_held_content_is_stored_and_any_other_asks_for_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        let cm = |v: &str| {
            vec![serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "default"}, "data": {"k": v, "big": "x".repeat(50_000)}})]
        };
        let (v1, v2) = (cm("one"), cm("two"));
        let mut update = singleton_update();
        update.fence_after_ms = None;
        let p1 = bundle::pack(&v1).unwrap();
        update.hash = p1.hash.clone();
        update.bundle = Some(p1.compressed);
        accept_update(&store, update.clone(), None).unwrap();

        let p2 = bundle::pack(&v2).unwrap();
        let patch = bundle::patch(
            &bundle::content(&v1).unwrap(),
            &bundle::content(&v2).unwrap(),
        )
        .unwrap();
        let patched = WorkUpdate {
            generation: 2,
            hash: p2.hash.clone(),
            bundle: Some(patch.clone()),
            base: Some(p1.hash.clone()),
            ..update.clone()
        };
        let ack = accept_update(&store, patched.clone(), None).unwrap();
        assert_eq!(ack.held.unwrap().hash, p2.hash);
        assert_eq!(stored(&store).manifests, v2);

        // The agent now holds v2: the same patch names a base it no longer has.
        let err = accept_update(&store, patched.clone(), None).unwrap_err();
        assert!(matches!(err, DeliveryError::MissingContent(..)), "{err}");
        // A patch that does not rebuild the announced content asks for the bundle too, and
        // leaves what is held alone.
        // (Garbage, and a patch that rebuilds something other than the announced content.)
        for wrong in [b"not zstd".to_vec(), patch] {
            let wrong = WorkUpdate {
                generation: 3,
                hash: bundle::pack(&cm("three")).unwrap().hash,
                bundle: Some(wrong),
                base: Some(p2.hash.clone()),
                ..patched.clone()
            };
            let err = accept_update(&store, wrong, None).unwrap_err();
            assert!(matches!(err, DeliveryError::PatchUnusable(..)), "{err}");
            match err.reply() {
                tether_protocol::Message::Error(e) => assert!(e.content_missing, "{e}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored(&store).manifests, v2);
        assert_eq!(stored(&store).generation, 2);
    }

    #[test]
    fn an_announced_hash_that_is_not_a_content_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        // Undecodable content would be quarantined under the announced hash, which the agent
        // cannot check: that hash must at least look like one.
        for hash in ["sha256:00\nkind: Secret", "", &"a".repeat(100_000)] {
            let mut update = singleton_update();
            update.bundle = Some(b"not zstd".to_vec());
            update.hash = hash.to_string();
            let err = accept_update(&store, update, None).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
        }
        assert!(store.read(|tx| tx.list(&DESIRED)).unwrap().is_empty());
        let mut update = singleton_update();
        update.bundle = Some(b"not zstd".to_vec());
        update.hash = format!("sha256:{}", "ab".repeat(32));
        accept_update(&store, update, None).expect("quarantined under a well-formed hash");
    }

    #[test]
    fn an_unreadable_record_is_skipped_by_listings_and_replaced_by_a_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("agent.redb")).unwrap();
        // Not a desired work at all: no head can be read from it.
        const RAW: StrTable<serde_json::Value> = StrTable::new(DESIRED_TABLE);
        store
            .write(|tx| tx.put(&RAW, "controller", &serde_json::json!({"name": 5})))
            .unwrap();
        assert!(store.read(heads).unwrap().is_empty());
        assert!(store.read(inventory).unwrap().works.is_empty());
        accept_update(&store, singleton_update(), Some(Duration::from_millis(1))).unwrap();
        assert_eq!(store.read(heads).unwrap().len(), 1);
        assert!(matches!(
            store.read(|tx| load(tx, "controller")).unwrap(),
            Some(Loaded::Work(_))
        ));
    }
}
