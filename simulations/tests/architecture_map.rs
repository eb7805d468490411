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
            // A file in a folder is named with its folder (`net/server.rs`), so that two
            // files of one name in different layers cannot hide each other.
            let rel = f
                .strip_prefix(&src)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            let parent_dir = f
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| format!("`{}/`", n.to_string_lossy()));
            let named = if rel.contains('/') {
                map.contains(&format!("`{rel}`")) || map.contains(&format!("/{rel}"))
            } else {
                map.contains(&format!("`{name}`"))
                    || map.contains(&format!("{name}`"))
                    || map.contains(&format!("/{name}"))
            };
            if !named {
                missing.push(format!(
                    "{} (folder {})",
                    f.strip_prefix(root()).unwrap_or(&f).display(),
                    parent_dir.unwrap_or_default()
                ));
            }
        }
    }
    // Every folder of the hub crate is a layer and has its own entry in the code map.
    for entry in std::fs::read_dir(root().join("hub/src")).unwrap().flatten() {
        if entry.path().is_dir() {
            let folder = entry.file_name().to_string_lossy().to_string();
            if !map.contains(&format!("`hub/src/{folder}/`")) {
                missing.push(format!("hub folder hub/src/{folder}/"));
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
    // The session shells and everything they call per agent message.
    let mut files = Vec::new();
    for folder in ["net", "delivery", "fleet", "limits"] {
        rs_files(&hub.join(folder), &mut files);
    }
    files.push(hub.join("state.rs"));
    for path in files {
        let file = path
            .strip_prefix(&hub)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).unwrap();
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

/// Top-level modules of the hub crate (a file or a folder under hub/src) and the ones each
/// names through `crate::`, outside its test modules.
fn hub_module_edges() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let src = root().join("hub/src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut edges: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if ["lib", "main", "bin"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let targets = edges.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                inner
                    .split(',')
                    .filter_map(|p| p.trim().split("::").next())
                    .collect()
            } else {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .into_iter()
                    .collect()
            };
            for n in names {
                if !n.is_empty() && n != module {
                    targets.insert(n.to_string());
                }
            }
        }
    }
    let known: BTreeSet<String> = edges.keys().cloned().collect();
    for t in edges.values_mut() {
        t.retain(|n| known.contains(n));
    }
    edges
}

/// The hub's layers import downwards only: no two top-level modules reach each other.
#[test]
fn the_hub_crate_has_no_import_cycle() {
    let edges = hub_module_edges();
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for n in edges.get(&m).into_iter().flatten() {
                if n == to {
                    return true;
                }
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        false
    };
    let mut cycles = Vec::new();
    for (m, targets) in &edges {
        for t in targets {
            if m < t && reaches(t, m) {
                cycles.push(format!("{m} <-> {t}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles in the hub crate: {cycles:?}"
    );
    // The admin client knows the wire shapes and its configuration, nothing of the server.
    let client = std::fs::read_to_string(root().join("hub/src/admin/client.rs")).unwrap();
    for (i, _) in client.match_indices("crate::") {
        let rest = &client[i + "crate::".len()..];
        assert!(
            rest.starts_with("api") || rest.starts_with("config"),
            "admin/client.rs imports server internals: crate::{}",
            &rest[..rest.find([';', '\n']).unwrap_or(rest.len())]
        );
    }
}

/// `decide/` is a pure function of its inputs: it knows nothing of the store, tokio, the
/// sessions or the clock.
#[test]
fn the_decision_core_does_no_io_and_reads_no_clock() {
    let mut files = Vec::new();
    rs_files(&root().join("hub/src/decide"), &mut files);
    let mut offenders = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for banned in [
                "tokio",
                "tether_store::Store",
                "store.",
                "now_ms()",
                "SystemTime",
                "Instant::now",
                "crate::state",
                "crate::fleet::sessions",
            ] {
                if code.contains(banned) {
                    offenders.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "I/O or clock in decide/: {offenders:#?}"
    );
}
