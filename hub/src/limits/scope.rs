//! What a cluster may speak about: its own works only.
//!
//! Status and inventory arrive from clusters, which the hub does not trust with anyone else's
//! state. A cluster may report on a work the hub knows that is selected for it now, or that it
//! has a row for (delivered to it, or reported while selected, and not yet withdrawn). Anything
//! else is dropped and counted: a fake status for another cluster's singleton must not block
//! it, and invented work names must not grow the store.

use std::collections::BTreeSet;

/// For the works named in one message from one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Known to the hub (tombstones included).
    pub known: BTreeSet<String>,
    /// Known, and selected for the cluster now.
    pub selected: BTreeSet<String>,
}

/// Sort `names` by what the hub knows (`known`) and selects for the cluster (`selected`).
pub fn of<'a>(
    names: impl IntoIterator<Item = &'a str>,
    known: impl Fn(&str) -> bool,
    selected: impl Fn(&str) -> bool,
) -> Scope {
    let mut scope = Scope::default();
    for name in names.into_iter().filter(|n| known(n)) {
        if selected(name) {
            scope.selected.insert(name.to_string());
        }
        scope.known.insert(name.to_string());
    }
    scope
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_known_works_can_be_selected() {
        let s = super::of(["a", "b", "c"], |n| n != "c", |n| n == "a" || n == "c");
        assert_eq!(s.known.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.selected.into_iter().collect::<Vec<_>>(), ["a"]);
    }
}
