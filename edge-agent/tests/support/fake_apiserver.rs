//! A small Kubernetes API server for the kube executor's tests: plain HTTP on 127.0.0.1, and
//! exactly the endpoints the executor uses, no more:
//!
//! - `GET /version`, `GET /api/v1`, `GET /apis/{group}/{version}` (discovery of the kinds below);
//! - CustomResourceDefinitions: a stored CRD serves its kinds (discovery and paths) after a
//!   configurable delay ([`FakeApiServer::set_crd_delay`]), as a real server does once the CRD
//!   is Established;
//! - `PATCH` with `application/apply-patch+yaml` (server-side apply: `fieldManager` required,
//!   `force`, per-field ownership and 409 conflicts with a Kubernetes `Status` body) and with
//!   `application/merge-patch+json` (an update: it takes ownership of the fields it changes);
//! - `GET` of one object, `LIST` with `labelSelector` (equality and existence terms), metadata-only
//!   lists (`as=PartialObjectMetadataList`), `DELETE` with uid/resourceVersion preconditions.
//!
//! Server-side apply is modelled the way the real one behaves, simplified: every leaf field of
//! an applied configuration is owned by the managers that set it (lists are atomic leaves). An
//! apply that sets a field another manager owns to a different value conflicts unless forced
//! (forcing takes the field over); fields a manager applied before and no longer applies are
//! removed unless another manager still owns them. An update (merge patch, or [`edit_as`]) takes
//! the fields it changes away from everyone else, as kubectl edit/scale do.
//!
//! No controllers run: tests set a workload's `status` with [`set_status`].
//!
//! [`edit_as`]: FakeApiServer::edit_as
//! [`set_status`]: FakeApiServer::set_status

#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A resource type the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource (apply and merge patches leave `status` alone).
    pub status: bool,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
) -> Kind {
    Kind {
        group,
        version,
        kind,
        plural,
        namespaced,
        status,
    }
}

pub const KINDS: &[Kind] = &[
    kind("", "v1", "Namespace", "namespaces", false, true),
    kind("", "v1", "Node", "nodes", false, true),
    kind("", "v1", "ConfigMap", "configmaps", true, false),
    kind("", "v1", "Service", "services", true, true),
    kind("apps", "v1", "Deployment", "deployments", true, true),
    kind("apps", "v1", "StatefulSet", "statefulsets", true, true),
    kind("apps", "v1", "DaemonSet", "daemonsets", true, true),
    kind("batch", "v1", "Job", "jobs", true, true),
    kind(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
    ),
];

fn find_kind(kinds: &[&'static Kind], api_version: &str, kind: &str) -> Option<&'static Kind> {
    kinds
        .iter()
        .copied()
        .find(|k| k.api_version() == api_version && k.kind == kind)
}

/// The served versions of a stored CRD as kinds (leaked: a test serves a handful).
fn crd_kinds(crd: &Value) -> Vec<&'static Kind> {
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).map(str::to_string);
    let leak = |v: String| -> &'static str { Box::leak(v.into_boxed_str()) };
    let (Some(group), Some(kind), Some(plural)) = (
        s("/spec/group"),
        s("/spec/names/kind"),
        s("/spec/names/plural"),
    ) else {
        return Vec::new();
    };
    let namespaced = s("/spec/scope").as_deref() != Some("Cluster");
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .map(|version| {
            let k: &'static Kind = Box::leak(Box::new(Kind {
                group: leak(group.clone()),
                version: leak(version.to_string()),
                kind: leak(kind.clone()),
                plural: leak(plural.clone()),
                namespaced,
                status: false,
            }));
            k
        })
        .collect()
}

/// A field path, e.g. `["spec", "replicas"]`.
type FieldPath = Vec<String>;

fn show(path: &FieldPath) -> String {
    path.iter().map(|s| format!(".{s}")).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    api_version: String,
    kind: &'static str,
    namespace: Option<String>,
    name: String,
}

struct Stored {
    object: Value,
    /// Leaf field -> managers that own it.
    owners: BTreeMap<FieldPath, BTreeSet<String>>,
    /// Managers whose ownership came from server-side apply (their `managedFields` entries say
    /// `Apply`; the others say `Update`).
    appliers: BTreeSet<String>,
}

impl Stored {
    /// The object as the API returns it: with `metadata.managedFields`, one `FieldsV1` entry
    /// per manager (the real server splits a manager's entries by operation and subresource;
    /// the executor only looks at `manager`).
    fn shown(&self) -> Value {
        let mut per_manager: BTreeMap<&str, Value> = BTreeMap::new();
        for (path, managers) in &self.owners {
            for m in managers {
                let mut node = per_manager.entry(m.as_str()).or_insert_with(|| json!({}));
                for seg in path {
                    node = node
                        .as_object_mut()
                        .map(|o| o.entry(format!("f:{seg}")).or_insert_with(|| json!({})))
                        .expect("field sets are objects");
                }
            }
        }
        let api_version = self.object["apiVersion"].clone();
        let entries: Vec<Value> = per_manager
            .into_iter()
            .map(|(m, fields)| {
                json!({
                    "manager": m,
                    "operation": if self.appliers.contains(m) { "Apply" } else { "Update" },
                    "apiVersion": api_version,
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields,
                })
            })
            .collect();
        let mut o = self.object.clone();
        if !entries.is_empty() {
            o["metadata"]["managedFields"] = Value::Array(entries);
        }
        o
    }

    /// `metadata.managedFields` set by a client in an update: managers it leaves out lose
    /// their fields (the values stay). As documented for the real server, an empty list
    /// changes nothing, and a list of one empty entry (`[{}]`) clears every manager.
    /// Returns whether any ownership changed.
    fn set_managers(&mut self, list: &Value) -> Result<bool, Failure> {
        let Some(entries) = list.as_array() else {
            return Err(bad_request("metadata.managedFields must be a list"));
        };
        if entries.is_empty() {
            return Ok(false);
        }
        let before = (self.owners.clone(), self.appliers.clone());
        let keep: BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| e.get("manager").and_then(Value::as_str))
            .collect();
        self.owners.retain(|_, o| {
            o.retain(|m| keep.contains(m.as_str()));
            !o.is_empty()
        });
        self.appliers.retain(|m| keep.contains(m.as_str()));
        Ok(before != (self.owners.clone(), self.appliers.clone()))
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    next_uid: u64,
    /// Requests that changed an object (a no-op apply is not a write).
    writes: u64,
    /// `METHOD /path?query`, in arrival order.
    requests: Vec<String>,
    stalled: bool,
    /// How long a stored CRD takes to be served (Established), as on a real server.
    crd_delay: Duration,
    /// CRD name -> when it is served, and its kinds.
    crds: BTreeMap<String, (std::time::Instant, Vec<&'static Kind>)>,
}

/// An error answer: HTTP status and a Kubernetes `Status` body.
struct Failure(StatusCode, Value);

fn status_body(code: StatusCode, reason: &str, message: &str, details: Value) -> Failure {
    Failure(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "details": details, "code": code.as_u16(),
        }),
    )
}

fn not_found(k: &Kind, name: &str) -> Failure {
    status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{}{} \"{name}\" not found", k.plural, group_suffix(k)),
        json!({"name": name, "group": k.group, "kind": k.plural}),
    )
}

fn bad_request(message: &str) -> Failure {
    status_body(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
}

fn group_suffix(k: &Kind) -> String {
    if k.group.is_empty() {
        String::new()
    } else {
        format!(".{}", k.group)
    }
}

// ---- field paths over JSON ----------------------------------------------------------------

/// Leaf fields a manager can own: everything but identity, server-set metadata and status.
fn managed_leaves(object: &Value, has_status: bool) -> BTreeMap<FieldPath, Value> {
    let mut v = object.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        if has_status {
            o.remove("status");
        }
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "managedFields",
            ] {
                m.remove(f);
            }
        }
    }
    let mut out = BTreeMap::new();
    collect_leaves(&v, &mut Vec::new(), &mut out);
    out
}

fn collect_leaves(v: &Value, at: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(k.clone());
                collect_leaves(child, at, out);
                at.pop();
            }
        }
        // Lists are atomic (real SSA merges keyed lists; the executor never relies on it).
        _ if !at.is_empty() => {
            out.insert(at.clone(), v.clone());
        }
        _ => {}
    }
}

fn get_at<'a>(v: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn set_at(v: &mut Value, path: &FieldPath, value: Value) {
    let mut cur = v;
    for k in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        cur = map.entry(k.clone()).or_insert(Value::Null);
    }
    *cur = value;
}

/// Remove a leaf and the maps it leaves empty (never `metadata` itself).
fn remove_at(v: &mut Value, path: &FieldPath) {
    fn go(cur: &mut Value, path: &[String], depth: usize) {
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        match path {
            [] => {}
            [last] => {
                map.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = map.get_mut(first) {
                    go(child, rest, depth + 1);
                    let empty = child.as_object().is_some_and(Map::is_empty);
                    if empty && !(depth == 0 && first == "metadata") {
                        map.remove(first);
                    }
                }
            }
        }
    }
    go(v, path, 0)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Everything a controller would call the spec: not metadata, not status.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

// ---- label selectors ----------------------------------------------------------------------

enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

fn parse_selector(s: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t.contains(' ') || t.contains('(') {
            return Err(format!(
                "unsupported selector term {t:?} (set-based terms are not implemented)"
            ));
        }
        let term = if let Some((k, v)) = t.split_once("!=") {
            Term::Ne(k.into(), v.into())
        } else if let Some((k, v)) = t.split_once("==") {
            Term::Eq(k.into(), v.into())
        } else if let Some((k, v)) = t.split_once('=') {
            Term::Eq(k.into(), v.into())
        } else if let Some(k) = t.strip_prefix('!') {
            Term::Absent(k.into())
        } else {
            Term::Exists(t.into())
        };
        terms.push(term);
    }
    Ok(terms)
}

fn selects(terms: &[Term], object: &Value) -> bool {
    let label = |k: &str| {
        object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
    };
    terms.iter().all(|t| match t {
        Term::Eq(k, v) => label(k) == Some(v.as_str()),
        Term::Ne(k, v) => label(k) != Some(v.as_str()),
        Term::Exists(k) => label(k).is_some(),
        Term::Absent(k) => label(k).is_none(),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

// ---- the object store -----------------------------------------------------------------------

impl State {
    /// The built-in kinds and those of every stored CRD that is established by now.
    fn served(&mut self) -> Vec<&'static Kind> {
        let now = std::time::Instant::now();
        let crds: Vec<(String, Value)> = self
            .objects
            .iter()
            .filter(|(k, _)| k.kind == "CustomResourceDefinition")
            .map(|(k, o)| (k.name.clone(), o.object.clone()))
            .collect();
        self.crds
            .retain(|name, _| crds.iter().any(|(n, _)| n == name));
        let delay = self.crd_delay;
        let mut kinds: Vec<&'static Kind> = KINDS.iter().collect();
        for (name, object) in crds {
            let (at, ks) = self
                .crds
                .entry(name)
                .or_insert_with(|| (now + delay, crd_kinds(&object)));
            if *at <= now {
                kinds.extend(ks.iter().copied());
            }
        }
        kinds
    }

    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn key(k: &Kind, namespace: Option<&str>, name: &str) -> Key {
        Key {
            api_version: k.api_version(),
            kind: k.kind,
            namespace: if k.namespaced {
                namespace.map(str::to_string)
            } else {
                None
            },
            name: name.to_string(),
        }
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&Key {
            api_version: "v1".into(),
            kind: "Namespace",
            namespace: None,
            name: ns.into(),
        })
    }

    /// Server-side apply of `config` by `manager`.
    fn apply(
        &mut self,
        k: &Kind,
        namespace: Option<&str>,
        name: &str,
        manager: &str,
        force: bool,
        config: &Value,
    ) -> Result<(StatusCode, Value), Failure> {
        if !config.is_object() {
            return Err(bad_request("the apply configuration must be an object"));
        }
        if config.get("apiVersion").and_then(Value::as_str) != Some(k.api_version().as_str())
            || config.get("kind").and_then(Value::as_str) != Some(k.kind)
        {
            return Err(bad_request(&format!(
                "the apply configuration must have apiVersion {} and kind {}",
                k.api_version(),
                k.kind
            )));
        }
        match config.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            _ => {
                return Err(bad_request(
                    "the name of the object does not match the name on the URL",
                ))
            }
        }
        if let Some(ns) = config
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            if k.namespaced && Some(ns) != namespace {
                return Err(bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if let Some(ns) = namespace.filter(|_| k.namespaced) {
            if !self.namespace_exists(ns) {
                return Err(status_body(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("namespaces \"{ns}\" not found"),
                    json!({"name": ns, "kind": "namespaces"}),
                ));
            }
        }
        let desired = managed_leaves(config, k.status);
        let key = Self::key(k, namespace, name);
        let created = !self.objects.contains_key(&key);
        if created {
            self.next_uid += 1;
            let mut metadata = json!({
                "name": name,
                "uid": format!("00000000-0000-0000-0000-{:012}", self.next_uid),
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            });
            if let Some(ns) = namespace.filter(|_| k.namespaced) {
                metadata["namespace"] = json!(ns);
            }
            self.objects.insert(
                key.clone(),
                Stored {
                    object: json!({"apiVersion": k.api_version(), "kind": k.kind, "metadata": metadata}),
                    owners: BTreeMap::new(),
                    appliers: BTreeSet::new(),
                },
            );
        }
        let Some(stored) = self.objects.get_mut(&key) else {
            return Err(bad_request("object vanished"));
        };

        // Conflicts: a field someone else owns, set to a different value.
        let mut conflicts: BTreeMap<String, Vec<FieldPath>> = BTreeMap::new();
        for (path, value) in &desired {
            let others: Vec<&String> = stored
                .owners
                .get(path)
                .map(|o| o.iter().filter(|m| *m != manager).collect())
                .unwrap_or_default();
            if !others.is_empty() && get_at(&stored.object, path) != Some(value) {
                for m in others {
                    conflicts.entry(m.clone()).or_default().push(path.clone());
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let api_version = k.api_version();
            let count: usize = conflicts.values().map(Vec::len).sum();
            let mut causes = Vec::new();
            let mut parts = Vec::new();
            for (m, paths) in &conflicts {
                for p in paths {
                    causes.push(json!({
                        "reason": "FieldManagerConflict",
                        "message": format!("conflict with \"{m}\" using {api_version}"),
                        "field": show(p),
                    }));
                }
                if count == 1 {
                    parts.push(format!(
                        "conflict with \"{m}\" using {api_version}: {}",
                        show(&paths[0])
                    ));
                } else {
                    let list: String = paths.iter().map(|p| format!("\n- {}", show(p))).collect();
                    parts.push(format!("conflicts with \"{m}\" using {api_version}:{list}"));
                }
            }
            let message = format!(
                "Apply failed with {count} conflict{}: {}",
                if count == 1 { "" } else { "s" },
                parts.join("\n")
            );
            return Err(status_body(
                StatusCode::CONFLICT,
                "Conflict",
                &message,
                json!({"name": name, "group": k.group, "kind": k.plural, "causes": causes}),
            ));
        }

        let before = stored.object.clone();
        // Fields this manager stops applying are released, and removed if nobody else owns them.
        let released: Vec<FieldPath> = stored
            .owners
            .iter()
            .filter(|(p, o)| o.contains(manager) && !desired.contains_key(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in released {
            let orphaned = stored.owners.get_mut(&p).is_some_and(|o| {
                o.remove(manager);
                o.is_empty()
            });
            if orphaned {
                stored.owners.remove(&p);
                remove_at(&mut stored.object, &p);
            }
        }
        for (path, value) in desired {
            let take_over = force && conflicts.values().any(|ps| ps.contains(&path));
            let owners = stored.owners.entry(path.clone()).or_default();
            if take_over {
                owners.clear();
            }
            owners.insert(manager.to_string());
            set_at(&mut stored.object, &path, value);
        }
        stored.appliers.insert(manager.to_string());
        self.finish(&key, &before, created);
        let object = self
            .objects
            .get(&key)
            .map(Stored::shown)
            .unwrap_or(Value::Null);
        Ok((
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            object,
        ))
    }

    /// An update by `manager`: it owns every field it changed, alone.
    fn update(
        &mut self,
        k: &Kind,
        namespace: Option<&str>,
        name: &str,
        manager: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value, Failure> {
        let key = Self::key(k, namespace, name);
        let Some(stored) = self.objects.get_mut(&key) else {
            return Err(not_found(k, name));
        };
        let before = stored.object.clone();
        change(&mut stored.object);
        let old = managed_leaves(&before, k.status);
        let new = managed_leaves(&stored.object, k.status);
        for (path, value) in &new {
            if old.get(path) != Some(value) {
                stored
                    .owners
                    .insert(path.clone(), BTreeSet::from([manager.to_string()]));
            }
        }
        for path in old.keys().filter(|p| !new.contains_key(*p)) {
            stored.owners.remove(path);
        }
        self.finish(&key, &before, false);
        Ok(self
            .objects
            .get(&key)
            .map(Stored::shown)
            .unwrap_or(Value::Null))
    }

    /// Bump generation and resourceVersion if the object changed. Returns whether it did.
    fn finish(&mut self, key: &Key, before: &Value, created: bool) -> bool {
        let changed = {
            let Some(stored) = self.objects.get(key) else {
                return false;
            };
            created || without_rv(before) != without_rv(&stored.object)
        };
        if !changed {
            return false;
        }
        let rv = self.bump();
        self.writes += 1;
        if let Some(stored) = self.objects.get_mut(key) {
            if !created && spec_part(before) != spec_part(&stored.object) {
                let g = stored
                    .object
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                stored.object["metadata"]["generation"] = json!(g + 1);
            }
            stored.object["metadata"]["resourceVersion"] = json!(rv);
        }
        true
    }

    fn delete(
        &mut self,
        k: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value, Failure> {
        let key = Self::key(k, namespace, name);
        let Some(stored) = self.objects.get(&key) else {
            return Err(not_found(k, name));
        };
        for (field, pointer) in [("UID", "uid"), ("ResourceVersion", "resourceVersion")] {
            if let Some(want) = options
                .pointer(&format!("/preconditions/{pointer}"))
                .and_then(Value::as_str)
            {
                let have = stored
                    .object
                    .pointer(&format!("/metadata/{pointer}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if want != have {
                    return Err(status_body(
                        StatusCode::CONFLICT,
                        "Conflict",
                        &format!(
                            "Operation cannot be fulfilled on {}{} \"{name}\": Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}",
                            k.plural,
                            group_suffix(k)
                        ),
                        json!({"name": name, "group": k.group, "kind": k.plural}),
                    ));
                }
            }
        }
        let removed = self
            .objects
            .remove(&key)
            .map(|s| s.object)
            .unwrap_or(Value::Null);
        if k.kind == "Namespace" {
            // The namespace controller's job, done at once.
            self.objects
                .retain(|key, _| key.namespace.as_deref() != Some(name));
        }
        self.bump();
        self.writes += 1;
        Ok(removed)
    }

    fn list(
        &self,
        k: &Kind,
        namespace: Option<&str>,
        selector: &[Term],
        metadata_only: bool,
    ) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(key, _)| key.api_version == k.api_version() && key.kind == k.kind)
            .filter(|(key, _)| namespace.is_none() || key.namespace.as_deref() == namespace)
            .filter(|(_, s)| selects(selector, &s.object))
            .map(|(_, s)| {
                if metadata_only {
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                           "metadata": s.shown()["metadata"].clone()})
                } else {
                    // Items of a typed list carry no apiVersion/kind.
                    let mut o = s.shown();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                }
            })
            .collect();
        let (api_version, kind) = if metadata_only {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadataList".to_string(),
            )
        } else {
            (k.api_version(), format!("{}List", k.kind))
        };
        json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"resourceVersion": self.resource_version.to_string()},
            "items": items,
        })
    }
}

// ---- HTTP -------------------------------------------------------------------------------------

enum Route {
    Version,
    Discovery(String, String),
    Collection(&'static Kind, Option<String>),
    Object(&'static Kind, Option<String>, String),
    NotFound,
}

fn route(kinds: &[&'static Kind], path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api", v] => return Route::Discovery(String::new(), v.to_string()),
        ["apis", g, v] => return Route::Discovery(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let lookup = |plural: &str, namespaced: bool| {
        kinds.iter().copied().find(|k| {
            k.group == group
                && k.version == version
                && k.plural == plural
                && k.namespaced == namespaced
        })
    };
    let any = |plural: &str| {
        kinds
            .iter()
            .copied()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    };
    match rest {
        ["namespaces", ns, plural] => match lookup(plural, true) {
            Some(k) => Route::Collection(k, Some(ns.to_string())),
            None => Route::NotFound,
        },
        ["namespaces", ns, plural, name] => match lookup(plural, true) {
            Some(k) => Route::Object(k, Some(ns.to_string()), name.to_string()),
            None => Route::NotFound,
        },
        [plural] => match any(plural) {
            Some(k) => Route::Collection(k, None),
            None => Route::NotFound,
        },
        [plural, name] => match lookup(plural, false) {
            Some(k) => Route::Object(k, None, name.to_string()),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

fn discovery(served: &[&'static Kind], group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = served
        .iter()
        .copied()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in kinds {
        resources.push(json!({
            "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if k.status {
            resources.push(json!({
                "name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    }))
}

type Body = Full<Bytes>;

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn failure(f: Failure) -> Response<Body> {
    respond(f.0, &f.1)
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = query_map(req.uri().query());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let stalled = {
        let mut s = lock(&state);
        s.requests.push(match req.uri().query() {
            Some(q) if !q.is_empty() => format!("{method} {path}?{}", percent_decode(q)),
            _ => format!("{method} {path}"),
        });
        s.stalled
    };
    if stalled {
        // Accept, then never answer (bounded so a forgotten server cannot hang a test run).
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return failure(bad_request(&format!("reading body: {e}"))),
    };
    let parsed_body = || -> Result<Value, Failure> {
        if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
        }
    };

    let mut s = lock(&state);
    let served = s.served();
    match route(&served, &path) {
        Route::Version if method == Method::GET => respond(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1+k3s1",
                    "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/arm64"}),
        ),
        Route::Discovery(g, v) if method == Method::GET => match discovery(&served, &g, &v) {
            Some(d) => respond(StatusCode::OK, &d),
            // The real server answers unknown group versions with a plain-text 404.
            None => {
                let mut r = Response::new(Full::new(Bytes::from("404 page not found\n")));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        },
        Route::Collection(k, ns) if method == Method::GET => {
            let selector =
                match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
                    Ok(t) => t,
                    Err(e) => return failure(bad_request(&e)),
                };
            let metadata_only = accept.contains("as=PartialObjectMetadataList");
            respond(
                StatusCode::OK,
                &s.list(k, ns.as_deref(), &selector, metadata_only),
            )
        }
        Route::Object(k, ns, name) if method == Method::GET => {
            match s.objects.get(&State::key(k, ns.as_deref(), &name)) {
                Some(o) => respond(StatusCode::OK, &o.shown()),
                None => failure(not_found(k, &name)),
            }
        }
        Route::Object(k, ns, name) if method == Method::PATCH => {
            let patch = match parsed_body() {
                Ok(v) => v,
                Err(f) => return failure(f),
            };
            if content_type.starts_with("application/apply-patch+yaml") {
                let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return failure(status_body(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                        json!({}),
                    ));
                };
                let force = query.get("force").is_some_and(|f| f == "true");
                match s.apply(k, ns.as_deref(), &name, manager, force, &patch) {
                    Ok((code, obj)) => respond(code, &obj),
                    Err(f) => failure(f),
                }
            } else if content_type.starts_with("application/merge-patch+json") {
                let manager = query
                    .get("fieldManager")
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                let has_status = k.status;
                // `metadata.resourceVersion` in a patch is a precondition; `managedFields` sets
                // the managers (see `Stored::set_managers`). Neither is merged as a value.
                let mut patch = patch;
                let meta = patch.get_mut("metadata").and_then(Value::as_object_mut);
                let (want_rv, managers) = match meta {
                    Some(m) => (m.remove("resourceVersion"), m.remove("managedFields")),
                    None => (None, None),
                };
                let key = State::key(k, ns.as_deref(), &name);
                let Some(stored) = s.objects.get_mut(&key) else {
                    return failure(not_found(k, &name));
                };
                if let Some(want) = want_rv {
                    if stored.object.pointer("/metadata/resourceVersion") != Some(&want) {
                        return failure(status_body(
                            StatusCode::CONFLICT,
                            "Conflict",
                            &format!(
                                "Operation cannot be fulfilled on {}{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                                k.plural,
                                group_suffix(k)
                            ),
                            json!({"name": name, "group": k.group, "kind": k.plural}),
                        ));
                    }
                }
                let managers_changed = match managers.map(|l| stored.set_managers(&l)) {
                    Some(Ok(changed)) => changed,
                    Some(Err(f)) => return failure(f),
                    None => false,
                };
                let rv_before = stored.object.pointer("/metadata/resourceVersion").cloned();
                let result = s.update(k, ns.as_deref(), &name, &manager, |o| {
                    let saved = o.get("status").cloned();
                    merge_patch(o, &patch);
                    if has_status {
                        match saved {
                            Some(st) => o["status"] = st,
                            None => {
                                if let Some(m) = o.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                    }
                });
                // Changing only the managers is a write too: a new resourceVersion.
                let unchanged = s.objects.get(&key).is_some_and(|o| {
                    o.object.pointer("/metadata/resourceVersion") == rv_before.as_ref()
                });
                if managers_changed && unchanged {
                    let rv = s.bump();
                    s.writes += 1;
                    if let Some(o) = s.objects.get_mut(&key) {
                        o.object["metadata"]["resourceVersion"] = json!(rv);
                    }
                }
                match result {
                    Ok(_) => match s.objects.get(&key) {
                        Some(o) => respond(StatusCode::OK, &o.shown()),
                        None => failure(not_found(k, &name)),
                    },
                    Err(f) => failure(f),
                }
            } else {
                failure(status_body(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    &format!("the body of the request was in an unknown format ({content_type}): this test server implements apply-patch+yaml and merge-patch+json"),
                    json!({}),
                ))
            }
        }
        Route::Object(k, ns, name) if method == Method::DELETE => {
            let options = match parsed_body() {
                Ok(v) => v,
                Err(f) => return failure(f),
            };
            match s.delete(k, ns.as_deref(), &name, &options) {
                Ok(obj) => respond(StatusCode::OK, &obj),
                Err(f) => failure(f),
            }
        }
        Route::NotFound => failure(status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        )),
        _ => failure(status_body(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not implemented by this test server on {path}"),
            json!({}),
        )),
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The test API server. Dropping it stops it and closes its connections.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Listen on 127.0.0.1 (a free port) with the `default` namespace and two nodes.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let server = FakeApiServer {
            addr,
            state: state.clone(),
            task: tokio::spawn(async move {
                // Connections live in this set: aborting the task closes them all.
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            }),
        };
        server.create(
            "v1",
            "Namespace",
            None,
            json!({"metadata": {"name": "default"}}),
        );
        for n in ["node-a", "node-b"] {
            server.create("v1", "Node", None, json!({"metadata": {"name": n}}));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube configuration pointing at this server (no TLS, no auth, namespace `default`).
    pub fn kube_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("valid URL"))
    }

    /// Stop answering: close the listener and every open connection.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Accept requests but never answer them.
    pub fn set_stalled(&self, stalled: bool) {
        lock(&self.state).stalled = stalled;
    }

    /// Requests that changed an object so far.
    pub fn writes(&self) -> u64 {
        lock(&self.state).writes
    }

    /// `METHOD /path?query` of every request so far (query percent-decoded).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// CRDs applied from now on are served (in discovery and by path) only after `delay`.
    pub fn set_crd_delay(&self, delay: Duration) {
        lock(&self.state).crd_delay = delay;
    }

    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }

    fn kind(&self, api_version: &str, kind: &str) -> &'static Kind {
        find_kind(&lock(&self.state).served(), api_version, kind)
            .unwrap_or_else(|| panic!("test server does not serve {api_version} {kind}"))
    }

    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let k = self.kind(api_version, kind);
        lock(&self.state)
            .objects
            .get(&State::key(k, ns, name))
            .map(|s| s.object.clone())
    }

    /// Create an object as an unrelated client would (an update by `kubectl-create`).
    pub fn create(&self, api_version: &str, kind: &str, ns: Option<&str>, body: Value) {
        let k = self.kind(api_version, kind);
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .expect("metadata.name")
            .to_string();
        let mut config = body;
        config["apiVersion"] = json!(api_version);
        config["kind"] = json!(kind);
        if let Some(ns) = ns {
            config["metadata"]["namespace"] = json!(ns);
        }
        let mut s = lock(&self.state);
        // Created with apply semantics, then ownership recorded as an update.
        if let Err(Failure(code, body)) = s.apply(k, ns, &name, "kubectl-create", true, &config) {
            panic!("creating {kind} {name}: {code} {body}");
        }
        if let Some(stored) = s.objects.get_mut(&State::key(k, ns, &name)) {
            stored.appliers.remove("kubectl-create");
        }
    }

    /// Server-side apply by another field manager (e.g. `helm`, `kubectl`).
    pub fn apply_as(&self, manager: &str, force: bool, config: Value) -> Result<Value, Value> {
        let api_version = config["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_string();
        let kind = config["kind"].as_str().expect("kind").to_string();
        let k = self.kind(&api_version, &kind);
        let name = config["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let ns = config["metadata"]["namespace"].as_str().map(str::to_string);
        lock(&self.state)
            .apply(k, ns.as_deref(), &name, manager, force, &config)
            .map(|(_, v)| v)
            .map_err(|Failure(_, v)| v)
    }

    /// An edit by another client (kubectl edit/scale/label): it takes the fields it changes.
    pub fn edit_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) {
        let k = self.kind(api_version, kind);
        if let Err(Failure(code, body)) = lock(&self.state).update(k, ns, name, manager, change) {
            panic!("editing {kind} {name}: {code} {body}");
        }
    }

    /// Delete behind the executor's back.
    pub fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> bool {
        let k = self.kind(api_version, kind);
        lock(&self.state).delete(k, ns, name, &Value::Null).is_ok()
    }

    /// What a controller would write to the status subresource.
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let k = self.kind(api_version, kind);
        let mut s = lock(&self.state);
        let key = State::key(k, ns, name);
        let rv = s.bump();
        let stored = s
            .objects
            .get_mut(&key)
            .unwrap_or_else(|| panic!("no {kind} {name}"));
        stored.object["status"] = status;
        stored.object["metadata"]["resourceVersion"] = json!(rv);
    }

    /// Field managers that own `field` (e.g. `.spec.replicas`) of an object.
    pub fn owners(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        field: &str,
    ) -> Vec<String> {
        let k = self.kind(api_version, kind);
        let s = lock(&self.state);
        s.objects
            .get(&State::key(k, ns, name))
            .and_then(|o| o.owners.iter().find(|(p, _)| show(p) == field))
            .map(|(_, o)| o.iter().cloned().collect())
            .unwrap_or_default()
    }
}
