//! How `tetherctl clusters ...` shows clusters: tables, `-l` selectors, sorting, `--watch`,
//! and the `key=value` / `key-` arguments of `clusters label`.

use crate::out::{ago, out, outln, Output};
use anyhow::bail;
use clap::ValueEnum;
use std::collections::BTreeMap;
use std::time::Duration;
use tether_hub::api::{ClusterView, JoinRequestView, LabelsRequest};
use tether_hub::util::rfc3339;
use tether_hub::AdminClient;
use tether_protocol::Labels;

pub(crate) fn labels_str(l: &Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn pins_str(c: &ClusterView) -> String {
    let p = &c.pins;
    let mut parts = Vec::new();
    let mut show = |name: &str, pinned: Option<String>, reported: String| {
        if let Some(v) = pinned {
            if v == reported {
                parts.push(format!("{name}={v}"));
            } else {
                parts.push(format!("{name}={v} (agent reports {reported:?})"));
            }
        }
    };
    show("arch", p.arch.clone(), c.facts.arch.clone());
    show("os", p.os.clone(), c.facts.os.clone());
    show(
        "cpus",
        p.cpus.map(|n| n.to_string()),
        c.facts.cpus.to_string(),
    );
    show(
        "kubernetes_version",
        p.kubernetes_version.clone(),
        c.facts.kubernetes_version.clone().unwrap_or_default(),
    );
    if parts.is_empty() {
        "nothing (placement follows the agent's reports)".into()
    } else {
        parts.join(", ")
    }
}

fn header(wide: bool) {
    out!(
        "{:<24} {:<8} {:<10} {:<8} {:<10} {:<22} ",
        "NAME",
        "STATE",
        "LAST SEEN",
        "ARCH",
        "AGENT",
        "CERT EXPIRES"
    );
    if wide {
        out!(
            "{:<8} {:>5} {:>9} {:<12} {:<20} ",
            "OS",
            "CPUS",
            "MEMORY",
            "KUBERNETES",
            "JOINED"
        );
    }
    outln!("LABELS");
}

fn row(c: &ClusterView, wide: bool) {
    out!(
        "{:<24} {:<8} {:<10} {:<8} {:<10} {:<22} ",
        c.name,
        c.state.as_str(),
        ago(c.last_seen_ms),
        c.facts.arch,
        c.facts.agent_version,
        rfc3339(c.cert_not_after_ms)
    );
    if wide {
        out!(
            "{:<8} {:>5} {:>9} {:<12} {:<20} ",
            c.facts.os,
            c.facts.cpus,
            format!("{}Mi", c.facts.memory_bytes >> 20),
            c.facts.kubernetes_version.as_deref().unwrap_or("-"),
            rfc3339(c.joined_at_ms)
        );
    }
    outln!("{}", labels_str(&c.labels));
}

pub(crate) fn table(rows: &[ClusterView], output: Output) {
    header(output == Output::Wide);
    for c in rows {
        row(c, output == Output::Wide);
    }
}

pub(crate) fn pending_table(rows: &[JoinRequestView]) {
    outln!(
        "{:<24} {:<14} {:<8} {:<22} {:<22} LABELS",
        "NAME",
        "TOKEN",
        "ARCH",
        "FROM",
        "REQUESTED"
    );
    for r in rows {
        outln!(
            "{:<24} {:<14} {:<8} {:<22} {:<22} {}",
            r.name,
            r.token_id,
            r.facts.arch,
            r.peer_addr,
            rfc3339(r.created_at_ms),
            labels_str(&r.labels)
        );
    }
}

/// One term of `-l`: `k=v` (or `k==v`), `k!=v`, `k` (has the key), `!k` (lacks it).
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Has(String),
    Lacks(String),
}

/// A `kubectl get -l` style equality selector over a cluster's labels and the facts placement
/// sees as labels (`tether.dev/arch`, `tether.dev/os`, `tether.dev/kubernetes-version`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Selector(Vec<Term>);

pub(crate) fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut terms = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let key_ok = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        let term = if let Some((k, v)) = t.split_once("!=") {
            Term::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            Term::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = t.strip_prefix('!') {
            Term::Lacks(k.trim().into())
        } else {
            Term::Has(t.into())
        };
        let (Term::Eq(k, _) | Term::Ne(k, _) | Term::Has(k) | Term::Lacks(k)) = &term;
        if !key_ok(k) {
            return Err(format!(
                "selector term {t:?}: use key=value, key!=value, key or !key"
            ));
        }
        terms.push(term);
    }
    Ok(Selector(terms))
}

impl Selector {
    pub(crate) fn matches(&self, c: &ClusterView) -> bool {
        let value = |k: &str| -> Option<String> {
            if let Some(v) = c.labels.get(k) {
                return Some(v.clone());
            }
            let p = &c.pins;
            match k {
                "tether.dev/arch" => Some(p.arch.clone().unwrap_or(c.facts.arch.clone())),
                "tether.dev/os" => Some(p.os.clone().unwrap_or(c.facts.os.clone())),
                "tether.dev/kubernetes-version" => p
                    .kubernetes_version
                    .clone()
                    .or(c.facts.kubernetes_version.clone()),
                _ => None,
            }
        };
        self.0.iter().all(|t| match t {
            Term::Eq(k, v) => value(k).as_deref() == Some(v),
            Term::Ne(k, v) => value(k).as_deref() != Some(v),
            Term::Has(k) => value(k).is_some(),
            Term::Lacks(k) => value(k).is_none(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SortBy {
    Name,
    State,
    LastSeen,
    CertExpiry,
    Joined,
}

pub(crate) fn sort(rows: &mut [ClusterView], by: SortBy) {
    match by {
        SortBy::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        SortBy::State => {
            rows.sort_by(|a, b| (a.state.as_str(), &a.name).cmp(&(b.state.as_str(), &b.name)))
        }
        // Longest silent first: the clusters to look at.
        SortBy::LastSeen => {
            rows.sort_by(|a, b| (a.last_seen_ms, &a.name).cmp(&(b.last_seen_ms, &b.name)))
        }
        SortBy::CertExpiry => {
            rows.sort_by(|a, b| (a.cert_not_after_ms, &a.name).cmp(&(b.cert_not_after_ms, &b.name)))
        }
        SortBy::Joined => {
            rows.sort_by(|a, b| (a.joined_at_ms, &a.name).cmp(&(b.joined_at_ms, &b.name)))
        }
    }
}

/// What `--watch` compares: a row is printed again when any of these changes, not on every
/// heartbeat (last-seen moves all the time).
fn watched(c: &ClusterView) -> impl PartialEq {
    (
        c.state,
        c.connected,
        c.labels.clone(),
        c.facts.clone(),
        c.cert_serial.clone(),
    )
}

/// `clusters list --watch`: the list once, then a row per cluster that appears, changes or
/// goes (as `STATE` `Removed` in tables, `{"removed": NAME}` in JSON), until interrupted.
pub(crate) async fn watch(
    client: &AdminClient,
    selector: &Selector,
    output: Output,
    every: Duration,
) -> anyhow::Result<()> {
    let mut seen: BTreeMap<String, ClusterView> = BTreeMap::new();
    let mut first = true;
    loop {
        let rows: Vec<ClusterView> = client
            .clusters()
            .await?
            .into_iter()
            .filter(|c| selector.matches(c))
            .collect();
        if first && matches!(output, Output::Table | Output::Wide) {
            header(output == Output::Wide);
        }
        let mut now_seen = BTreeMap::new();
        for c in rows {
            let changed = seen
                .get(&c.name)
                .is_none_or(|old| watched(old) != watched(&c));
            if changed {
                emit_one(&c, output)?;
            }
            now_seen.insert(c.name.clone(), c);
        }
        for gone in seen.keys().filter(|n| !now_seen.contains_key(*n)) {
            match output {
                Output::Table | Output::Wide => outln!("{gone:<24} Removed"),
                Output::Json => outln!("{}", serde_json::json!({ "removed": gone })),
                Output::Yaml => out!("---\nremoved: {gone}\n"),
            }
        }
        seen = now_seen;
        first = false;
        tokio::time::sleep(every).await;
    }
}

fn emit_one(c: &ClusterView, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table | Output::Wide => row(c, output == Output::Wide),
        // One document per line, so that `| jq` can follow the stream.
        Output::Json => outln!("{}", serde_json::to_string(c)?),
        Output::Yaml => out!("---\n{}", serde_yaml_ng::to_string(c)?),
    }
    Ok(())
}

/// `clusters label` arguments: `key=value` sets, `key-` removes.
pub(crate) fn parse_label_changes(args: &[String]) -> anyhow::Result<LabelsRequest> {
    let mut req = LabelsRequest::default();
    for a in args {
        if a.contains('=') {
            let (k, v) = tether_protocol::names::parse_label(a).map_err(anyhow::Error::msg)?;
            req.set.insert(k, v);
        } else if let Some(k) = a.strip_suffix('-') {
            if k.is_empty() {
                bail!("{a:?}: name the label to remove, e.g. region-");
            }
            req.remove.push(k.to_string());
        } else {
            bail!("{a:?}: use key=value to set a label or key- to remove one");
        }
    }
    if req.set.is_empty() && req.remove.is_empty() {
        bail!("no label changes: give key=value or key- (at least one)");
    }
    Ok(req)
}

/// Changing a label that has a value needs `--overwrite`, as with `kubectl label`: a typo in
/// a key's value silently moving a cluster out of a rollout is worth one flag.
pub(crate) fn check_overwrite(
    current: &Labels,
    req: &LabelsRequest,
    overwrite: bool,
) -> anyhow::Result<()> {
    if overwrite {
        return Ok(());
    }
    for (k, v) in &req.set {
        if let Some(old) = current.get(k).filter(|old| *old != v) {
            bail!("label {k:?} already has the value {old:?}; pass --overwrite to change it");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(labels: &[(&str, &str)], arch: &str) -> ClusterView {
        let mut c: ClusterView = serde_json::from_value(serde_json::json!({
            "name": "c", "state": "Ready", "connected": true, "labels": {},
            "facts": {"arch": arch, "os": "linux", "cpus": 2, "memory_bytes": 0,
                      "hostname": "h", "agent_version": "0"},
            "conditions": [], "last_seen_ms": null, "joined_at_ms": 0,
            "cert_serial": "", "cert_not_after_ms": 0
        }))
        .unwrap();
        c.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    #[test]
    fn selector_terms_match_like_kubectl() {
        let eu = cluster(&[("region", "eu"), ("tier", "edge")], "arm64");
        let us = cluster(&[("region", "us")], "amd64");
        let m = |s: &str, c: &ClusterView| parse_selector(s).unwrap().matches(c);
        assert!(m("region=eu", &eu) && !m("region=eu", &us));
        assert!(m("region==eu,tier=edge", &eu));
        assert!(m("region!=eu", &us) && !m("region!=eu", &eu));
        assert!(m("tier", &eu) && !m("tier", &us));
        assert!(m("!tier", &us) && !m("!tier", &eu));
        assert!(m("tether.dev/arch=arm64", &eu) && !m("tether.dev/arch=arm64", &us));
        assert!(m("", &us), "an empty selector matches everything");
        assert!(parse_selector("re gion=eu").is_err());
        assert!(parse_selector("=eu").is_err());
    }

    #[test]
    fn label_arguments_set_and_remove() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = parse_label_changes(&args(&["region=eu", "old-", "empty="])).unwrap();
        assert_eq!(r.set["region"], "eu");
        assert_eq!(r.set["empty"], "");
        assert_eq!(r.remove, vec!["old".to_string()]);
        assert!(parse_label_changes(&args(&["region"])).is_err());
        assert!(parse_label_changes(&args(&["-"])).is_err());
        assert!(parse_label_changes(&args(&[])).is_err());
        assert!(parse_label_changes(&args(&["bad key=x"])).is_err());
        let current = Labels::from([("region".to_string(), "us".to_string())]);
        let change = parse_label_changes(&args(&["region=eu"])).unwrap();
        assert!(check_overwrite(&current, &change, false).is_err());
        assert!(check_overwrite(&current, &change, true).is_ok());
        let same = parse_label_changes(&args(&["region=us"])).unwrap();
        assert!(check_overwrite(&current, &same, false).is_ok());
    }
}
