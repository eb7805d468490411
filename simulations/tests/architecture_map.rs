//! docs/ARCHITECTURE.md is the map a newcomer reads first: every crate directory and every
//! module file of the workspace must be named in it, and every file it names must exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_code_map_names_every_crate_and_module_and_nothing_that_is_gone() {
    let map = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for krate in [
        "protocol",
        "transport",
        "store",
        "hub",
        "edge-agent",
        "simulations",
        "cross",
    ] {
        if !map.contains(&format!("`{krate}/`")) {
            missing.push(format!("crate directory {krate}/"));
        }
        let src = root().join(krate).join("src");
        if !src.exists() {
            continue;
        }
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            // Crate roots and test modules are not modules a reader looks for.
            if ["lib.rs", "mod.rs", "tests.rs"].contains(&name.as_str()) {
                continue;
            }
            let parent_dir = f
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| format!("`{}/`", n.to_string_lossy()));
            let named = map.contains(&format!("`{name}`"))
                || map.contains(&format!("{name}`"))
                || map.contains(&format!("/{name}"));
            if !named {
                missing.push(format!(
                    "{} (folder {})",
                    f.strip_prefix(root()).unwrap_or(&f).display(),
                    parent_dir.unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not name: {missing:#?}"
    );

    // Every `something.rs` the map names exists somewhere in the workspace.
    let mut existing = BTreeSet::new();
    for krate in [
        "protocol",
        "transport",
        "store",
        "hub",
        "edge-agent",
        "simulations",
    ] {
        let mut files = Vec::new();
        for sub in ["src", "tests"] {
            let d = root().join(krate).join(sub);
            if d.exists() {
                rs_files(&d, &mut files);
            }
        }
        for f in files {
            existing.insert(f.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    let gone: Vec<&str> = map
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| w.ends_with(".rs") && w.len() > 3)
        .filter(|w| !existing.contains(*w))
        .collect();
    assert!(
        gone.is_empty(),
        "docs/ARCHITECTURE.md names files that do not exist: {gone:?}"
    );
}

/// The one-writer rule: the modules on the fleet-rate paths (sessions, status, deliveries,
/// health) write only through the group committer (`HubState::committer`), which batches many
/// writes per fsync on its own thread. A direct `store.write` there would fsync once per agent
/// message, and on a runtime worker.
#[test]
fn fleet_rate_paths_write_only_through_the_group_committer() {
    let hub = root().join("hub/src");
    let mut offenders = Vec::new();
    for file in [
        "server.rs",
        "delivery.rs",
        "sessions.rs",
        "health.rs",
        "scope.rs",
        "budget.rs",
    ] {
        let text = std::fs::read_to_string(hub.join(file)).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("store.write(") || line.contains("store().write(") {
                offenders.push(format!("hub/src/{file}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "direct store writes on a fleet-rate path: {offenders:#?}"
    );
}
