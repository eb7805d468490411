//! What a cluster may speak about: its own works only.
//!
//! Status and inventory arrive from clusters, which the hub does not trust with anyone else's
//! state. A cluster may report on a work the hub knows that is selected for it now, or that it
//! has a row for (delivered to it, or reported while selected, and not yet withdrawn). Anything
//! else is dropped and counted: a fake status for another cluster's singleton must not block
//! it, and invented work names must not grow the store.

use crate::controller::WorkDecision;
use crate::works::WorkMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// For the works named in one message from one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Known to the hub (tombstones included).
    pub known: BTreeSet<String>,
    /// Known, and selected for the cluster now.
    pub selected: BTreeSet<String>,
}

pub fn of<'a>(
    works: &WorkMap,
    decisions: &BTreeMap<String, Arc<WorkDecision>>,
    cluster: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Scope {
    let mut scope = Scope::default();
    for name in names.into_iter().filter(|n| works.contains_key(*n)) {
        if decisions
            .get(name)
            .is_some_and(|d| d.selected.contains_key(cluster))
        {
            scope.selected.insert(name.to_string());
        }
        scope.known.insert(name.to_string());
    }
    scope
}
