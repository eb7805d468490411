//! Objects two works would both manage. Two works delivering one object to one cluster fight:
//! each pass applies its own copy, the object flips, and each work's label claims it in turn.
//! Found at apply time, before anything reaches a cluster.

use crate::works::WorkMap;
use std::collections::{BTreeMap, BTreeSet};
use tether_protocol::work::WorkDocument;

/// An object's identity across works: the API group (not the version: `apps/v1` and
/// `apps/v1beta2` name one object), kind, namespace and name. A namespaced object without a
/// namespace lands in `default` on a cluster, so the two spellings are one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

fn keys(doc: &WorkDocument) -> BTreeSet<ObjectKey> {
    doc.spec
        .manifests
        .iter()
        .filter_map(|m| {
            let s = |p: &str| m.pointer(p).and_then(|v| v.as_str());
            let api_version = s("/apiVersion")?;
            Some(ObjectKey {
                group: api_version
                    .rsplit_once('/')
                    .map_or("", |(g, _)| g)
                    .to_string(),
                kind: s("/kind")?.to_string(),
                namespace: s("/metadata/namespace")
                    .filter(|ns| *ns != "default" && !ns.is_empty())
                    .map(str::to_string),
                name: s("/metadata/name")?.to_string(),
            })
        })
        .collect()
}

/// For each other live work that shares objects with `doc`: those objects. The caller decides
/// whether the works' clusters overlap.
pub(crate) fn shared_objects(
    doc: &WorkDocument,
    works: &WorkMap,
) -> BTreeMap<String, Vec<ObjectKey>> {
    let mine = keys(doc);
    let mut out = BTreeMap::new();
    if mine.is_empty() {
        return out;
    }
    for (name, entry) in works {
        if *name == doc.metadata.name || entry.record.deleted.is_some() {
            continue;
        }
        let shared: Vec<ObjectKey> = keys(&entry.record.document)
            .intersection(&mine)
            .cloned()
            .collect();
        if !shared.is_empty() {
            out.insert(name.clone(), shared);
        }
    }
    out
}

/// One line per conflicting work: what it shares with the applied one, and where.
pub(crate) fn describe(
    work: &str,
    other: &str,
    objects: &[ObjectKey],
    clusters: &[String],
) -> String {
    const SHOWN: usize = 5;
    let list = |items: Vec<String>| {
        let more = items.len().saturating_sub(SHOWN);
        let mut s = items.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    };
    format!(
        "work {work:?} and work {other:?} both manage {} on cluster(s) {}",
        list(objects.iter().map(|o| o.to_string()).collect()),
        list(clusters.to_vec())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::works::WorkEntry;
    use std::sync::Arc;
    use tether_store::hub::WorkRecord;

    fn doc(name: &str, manifests: Vec<serde_json::Value>) -> WorkDocument {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Work",
            "metadata": {"name": name},
            "spec": {"targets": {"clusters": ["a"]}, "manifests": manifests},
        }))
        .unwrap()
    }

    fn cm(ns: Option<&str>, name: &str) -> serde_json::Value {
        let mut m = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": name}});
        if let Some(ns) = ns {
            m["metadata"]["namespace"] = ns.into();
        }
        m
    }

    fn map(docs: Vec<(WorkDocument, bool)>) -> WorkMap {
        docs.into_iter()
            .map(|(d, deleted)| {
                let name = d.metadata.name.clone();
                let record = WorkRecord {
                    document: d,
                    generation: 1,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                    deleted: deleted.then_some(tether_store::hub::Deletion {
                        at_ms: 0,
                        orphan: false,
                    }),
                    scope: Default::default(),
                };
                (name, Arc::new(WorkEntry::new(record, None)))
            })
            .collect()
    }

    #[test]
    fn shared_objects_are_found_across_spellings_and_only_in_live_works() {
        let applied = doc("new", vec![cm(None, "settings"), cm(Some("team"), "x")]);
        let works = map(vec![
            (
                doc("same-ns-spelled", vec![cm(Some("default"), "settings")]),
                false,
            ),
            (doc("other-ns", vec![cm(Some("elsewhere"), "x")]), false),
            (doc("gone", vec![cm(None, "settings")]), true),
            (doc("new", vec![cm(None, "settings")]), false),
            (
                doc(
                    "deploy-v1beta",
                    vec![
                        serde_json::json!({"apiVersion": "apps/v1beta2", "kind": "Deployment",
                                             "metadata": {"name": "web"}}),
                    ],
                ),
                false,
            ),
        ]);
        let shared = shared_objects(&applied, &works);
        assert_eq!(shared.keys().collect::<Vec<_>>(), vec!["same-ns-spelled"]);
        assert_eq!(
            shared["same-ns-spelled"][0].to_string(),
            "ConfigMap settings"
        );

        let web = doc(
            "web2",
            vec![
                serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                     "metadata": {"name": "web"}}),
            ],
        );
        assert_eq!(
            shared_objects(&web, &works).keys().collect::<Vec<_>>(),
            vec!["deploy-v1beta"],
            "one object under two versions of its group"
        );
    }

    #[test]
    fn description_is_bounded() {
        let objects: Vec<ObjectKey> = (0..8)
            .map(|i| ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: Some("team".into()),
                name: format!("c{i}"),
            })
            .collect();
        let text = describe("a", "b", &objects, &["edge-1".to_string()]);
        assert!(
            text.contains("ConfigMap team/c0") && text.contains("and 3 more"),
            "{text}"
        );
        assert!(!text.contains("c7"), "{text}");
    }
}
