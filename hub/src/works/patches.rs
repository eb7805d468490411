//! Changed works as patches against what each agent holds (`bundle::patch`).
//!
//! The hub remembers recent contents by hash (what it sent, and what agents hold of the
//! current works when they connect), so a later generation can be sent as a patch against the
//! content an agent reports holding. A patch is made once per (base, content) pair, off the
//! runtime, however many sessions ask for it at once; agents that hold the same base (most of
//! a fleet after a rollout) share it. Both memories are bounded; a base the hub has forgotten
//! (or never saw, e.g. after a restart) means a whole bundle, as before.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tether_protocol::bundle::{self, Packed, MAX_BUNDLE_BYTES};
use tokio::sync::OnceCell;

/// Compressed bytes of remembered contents, at most.
const CONTENTS_BYTES: usize = 64 << 20;
/// Bytes of computed patches kept, at most, and how many.
const PATCH_BYTES: usize = 64 << 20;
const PATCHES: usize = 4096;

type Made = Arc<OnceCell<Option<Arc<Vec<u8>>>>>;

/// Patches made at once, at most: each holds two decompressed contents (up to 32 MiB each)
/// and a zstd window over both.
const MAKING: usize = 2;

pub(crate) struct Patches {
    inner: Mutex<Inner>,
    making: Arc<tokio::sync::Semaphore>,
}

impl Default for Patches {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            making: Arc::new(tokio::sync::Semaphore::new(MAKING)),
        }
    }
}

#[derive(Default)]
struct Inner {
    contents: Bounded<String, Arc<Packed>>,
    made: Bounded<(String, String), Made>,
}

impl Patches {
    /// `packed` may be what an agent holds from now on.
    pub(crate) fn remember(&self, packed: &Arc<Packed>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let size = packed.compressed.len();
        inner.contents.insert(
            packed.hash.clone(),
            packed.clone(),
            size,
            CONTENTS_BYTES,
            usize::MAX,
        );
    }

    /// `target` as a patch against the content `base` (a hash), if the hub knows that content
    /// and the patch is smaller than the whole bundle; `None` means send it whole.
    pub(crate) async fn patch(&self, base: &str, target: &Arc<Packed>) -> Option<Arc<Vec<u8>>> {
        let (base_packed, cell) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let base_packed = inner.contents.get(base)?.clone();
            let key = (base.to_string(), target.hash.clone());
            let cell = match inner.made.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = Made::default();
                    // Counted at one byte until made; a finished patch is re-counted below.
                    inner.made.insert(key, c.clone(), 1, PATCH_BYTES, PATCHES);
                    c
                }
            };
            (base_packed, cell)
        };
        let target_packed = target.clone();
        let making = self.making.clone();
        // Made in a task of its own, which fills the cell even if every session that asked
        // went away meanwhile: the next one finds it made, not half-made and started again.
        let filled = cell.clone();
        let made = tokio::spawn(async move {
            filled
                .get_or_init(|| async move {
                    let _permit = making.acquire_owned().await.ok()?;
                    tokio::task::spawn_blocking(move || make(&base_packed, &target_packed))
                        .await
                        .ok()
                        .flatten()
                        .map(Arc::new)
                })
                .await
                .clone()
        })
        .await
        .ok()
        .flatten();
        if let Some(p) = &made {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let key = (base.to_string(), target.hash.clone());
            inner.made.resize(&key, p.len(), PATCH_BYTES);
        }
        made
    }
}

/// The patch, when it is worth sending: smaller than the whole compressed bundle.
fn make(base: &Packed, target: &Packed) -> Option<Vec<u8>> {
    let result = bundle::decompress(&base.compressed, MAX_BUNDLE_BYTES).and_then(|b| {
        let t = bundle::decompress(&target.compressed, MAX_BUNDLE_BYTES)?;
        bundle::patch(&b, &t)
    });
    match result {
        Ok(p) if p.len() < target.compressed.len() => Some(p),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(base = %base.hash, target = %target.hash, error = %e, "could not make a patch; sending the whole bundle");
            None
        }
    }
}

/// A map that forgets its oldest entries past a byte or entry budget.
struct Bounded<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    bytes: usize,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(k).map(|(v, _)| v)
    }

    fn insert(&mut self, k: K, v: V, size: usize, max_bytes: usize, max_entries: usize) {
        if self.map.contains_key(&k) {
            return;
        }
        self.map.insert(k.clone(), (v, size));
        self.order.push_back(k);
        self.bytes += size;
        self.evict(max_bytes, max_entries);
    }

    fn resize(&mut self, k: &K, size: usize, max_bytes: usize) {
        if let Some((_, s)) = self.map.get_mut(k) {
            self.bytes = self.bytes - *s + size;
            *s = size;
        }
        self.evict(max_bytes, usize::MAX);
    }

    /// Oldest first, but never the newest entry: one content over the budget is still kept.
    fn evict(&mut self, max_bytes: usize, max_entries: usize) {
        while (self.bytes > max_bytes || self.map.len() > max_entries) && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front() {
                if let Some((_, s)) = self.map.remove(&old) {
                    self.bytes -= s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packed(v: &str) -> Arc<Packed> {
        let m: Vec<_> = (0..200)
            .map(|i| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")},
                "data": {"v": if i == 100 { v.to_string() } else { format!("value-{i}-{}", "x".repeat(i)) }}}))
            .collect();
        Arc::new(bundle::pack(&m).unwrap())
    }

    #[tokio::test]
    async fn a_known_base_gives_a_small_patch_made_once() {
        let p = Patches::default();
        let (v1, v2) = (packed("one"), packed("two"));
        assert!(p.patch(&v1.hash, &v2).await.is_none(), "unknown base");
        p.remember(&v1);
        let a = p.patch(&v1.hash, &v2).await.unwrap();
        assert!(
            a.len() * 10 < v2.compressed.len(),
            "{} vs {}",
            a.len(),
            v2.compressed.len()
        );
        let b = p.patch(&v1.hash, &v2).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "made once, shared");
        let base = bundle::decompress(&v1.compressed, MAX_BUNDLE_BYTES).unwrap();
        let m = bundle::unpatch(&a, &base, &v2.hash, MAX_BUNDLE_BYTES).unwrap();
        assert_eq!(bundle::pack(&m).unwrap().hash, v2.hash);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_patch() {
        let p = Arc::new(Patches::default());
        let (v1, v2) = (packed("one"), packed("two"));
        p.remember(&v1);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (p, b, t) = (p.clone(), v1.hash.clone(), v2.clone());
                tokio::spawn(async move { p.patch(&b, &t).await.unwrap() })
            })
            .collect();
        let mut made = Vec::new();
        for t in tasks {
            made.push(t.await.unwrap());
        }
        assert!(made.iter().all(|m| Arc::ptr_eq(m, &made[0])));
    }

    #[test]
    fn the_memory_is_bounded_and_keeps_the_newest() {
        let mut b: Bounded<u32, ()> = Bounded::default();
        for i in 0..100 {
            b.insert(i, (), 10, 250, usize::MAX);
        }
        assert_eq!(b.map.len(), 25);
        assert!(b.get(&99).is_some() && b.get(&74).is_none());
        b.insert(1000, (), 10_000, 250, usize::MAX);
        assert_eq!(b.map.len(), 1, "one entry over the budget is still kept");
        let mut c: Bounded<u32, ()> = Bounded::default();
        for i in 0..10 {
            c.insert(i, (), 1, usize::MAX, 3);
        }
        assert_eq!(c.map.len(), 3);
        c.resize(&9, 500, 100);
        assert_eq!((c.map.len(), c.bytes), (1, 500));
    }
}
