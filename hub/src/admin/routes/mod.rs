//! The admin API's routes, one module per resource. Every route here runs after the caller's
//! admin certificate has been checked and its role found sufficient by [`required_role`] (see
//! `server`); scope checks are the routes' own, since they depend on what is named.

mod admins;
mod audit;
mod backup;
mod clusters;
mod joins;
mod ui;
mod works;

use crate::admin::server::bytes_body::Body;
use crate::admin::server::no_route;
use crate::identity::admins::Caller;
use crate::state::HubState;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use std::sync::Arc;
use tether_store::hub::AdminRole;

/// The role each route needs. A route missing here is answered 404 whatever the caller's role
/// (deny by default), and `every_route_has_a_rule` fails when one of the route modules matches a
/// path this table does not.
pub(crate) fn required_role(method: &Method, seg: &[&str]) -> Option<AdminRole> {
    use AdminRole::{Admin, Operator, Viewer};
    let role = match (method.as_str(), seg) {
        ("GET", ["v1", "version" | "whoami" | "openapi.json"]) => Viewer,
        // The dashboard's page and assets: what it shows comes from the routes above, each
        // with its own rule, so a viewer's buttons get 403 from the route they call.
        ("GET", ["ui"] | ["ui", "app.js" | "app.css"]) => Viewer,
        (
            "GET",
            ["v1", "clusters"] | ["v1", "clusters", _] | ["v1", "clusters", _, "status-log"],
        ) => Viewer,
        ("POST", ["v1", "clusters", _, "approve" | "deny" | "labels" | "facts"]) => Operator,
        ("POST", ["v1", "clusters", _, "detach"]) => Admin,
        ("GET", ["v1", "join-requests"]) => Viewer,
        ("GET" | "POST", ["v1", "tokens"]) | ("POST", ["v1", "tokens", _, "revoke"]) => Admin,
        ("GET", ["v1", "audit"] | ["v1", "audit", "page"]) => Viewer,
        ("PUT", ["v1", "works"]) => Operator,
        // A dry run: computes, changes nothing.
        ("POST", ["v1", "works", "render"]) => Viewer,
        (
            "GET",
            ["v1", "works"]
            | ["v1", "works", _]
            | ["v1", "works", _, "placement" | "rollout" | "history"]
            | ["v1", "works", _, "rendered", _],
        ) => Viewer,
        ("POST", ["v1", "works", _, "sync" | "pause" | "resume" | "undo" | "confirm-removal"])
        | ("DELETE", ["v1", "works", _]) => Operator,
        ("POST", ["v1", "backup"]) => Admin,
        ("GET" | "POST", ["v1", "admins"]) | ("POST", ["v1", "admins", _, "revoke"]) => Admin,
        // Anyone may renew their own certificate; the route lets only admins renew another's.
        ("POST", ["v1", "admins", _, "renew"]) => Viewer,
        _ => return None,
    };
    Some(role)
}

pub(super) async fn route(
    state: &Arc<HubState>,
    who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    match seg {
        ["v1", "clusters", ..] => clusters::route(state, who, method, seg, req).await,
        ["v1", "join-requests", ..] | ["v1", "tokens", ..] => {
            joins::route(state, who, method, seg, req).await
        }
        ["v1", "audit", ..] => audit::route(state, who, method, seg, req).await,
        ["v1", "works", ..] => works::route(state, who, method, seg, req).await,
        ["v1", "backup"] => backup::route(state, who, method, seg, req).await,
        ["v1", "admins", ..] | ["v1", "whoami"] => {
            admins::route(state, who, method, seg, req).await
        }
        ["ui", ..] => ui::route(method, seg),
        ["v1", "openapi.json"] if method == Method::GET => Ok(crate::admin::server::json_text(
            hyper::StatusCode::OK,
            crate::admin::openapi::json(),
        )),
        ["v1", "version"] if method == Method::GET => Ok(crate::admin::server::json(
            hyper::StatusCode::OK,
            &crate::api::VersionView {
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol_version: tether_protocol::PROTOCOL_VERSION,
            },
        )),
        _ => Err(no_route(method, seg)),
    }
}

/// 403 unless the caller's cluster set holds a cluster with these labels.
// The error is the HTTP answer itself, made once per refused request, as in the async helpers.
#[allow(clippy::result_large_err)]
pub(crate) fn cluster_in_scope(
    who: &Caller,
    cluster: &str,
    labels: &tether_protocol::Labels,
) -> Result<(), Response<Body>> {
    if who.scope.admits_cluster(labels) {
        return Ok(());
    }
    Err(crate::admin::server::error(
        hyper::StatusCode::FORBIDDEN,
        format!(
            "cluster {cluster} is outside the scope of {} ({})",
            who.name, who.scope
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Route by route: the role each needs. A change of a role is a change of this table.
    const RULES: &[(&str, &str, AdminRole)] = &[
        ("GET", "/v1/version", AdminRole::Viewer),
        ("GET", "/v1/whoami", AdminRole::Viewer),
        ("GET", "/v1/openapi.json", AdminRole::Viewer),
        ("GET", "/ui", AdminRole::Viewer),
        ("GET", "/ui/app.js", AdminRole::Viewer),
        ("GET", "/ui/app.css", AdminRole::Viewer),
        ("GET", "/v1/clusters", AdminRole::Viewer),
        ("GET", "/v1/clusters/x", AdminRole::Viewer),
        ("GET", "/v1/clusters/x/status-log", AdminRole::Viewer),
        ("POST", "/v1/clusters/x/approve", AdminRole::Operator),
        ("POST", "/v1/clusters/x/deny", AdminRole::Operator),
        ("POST", "/v1/clusters/x/labels", AdminRole::Operator),
        ("POST", "/v1/clusters/x/facts", AdminRole::Operator),
        ("POST", "/v1/clusters/x/detach", AdminRole::Admin),
        ("GET", "/v1/join-requests", AdminRole::Viewer),
        ("GET", "/v1/tokens", AdminRole::Admin),
        ("POST", "/v1/tokens", AdminRole::Admin),
        ("POST", "/v1/tokens/x/revoke", AdminRole::Admin),
        ("GET", "/v1/audit", AdminRole::Viewer),
        ("GET", "/v1/audit/page", AdminRole::Viewer),
        ("PUT", "/v1/works", AdminRole::Operator),
        ("POST", "/v1/works/render", AdminRole::Viewer),
        ("GET", "/v1/works", AdminRole::Viewer),
        ("GET", "/v1/works/x", AdminRole::Viewer),
        ("GET", "/v1/works/x/placement", AdminRole::Viewer),
        ("GET", "/v1/works/x/rollout", AdminRole::Viewer),
        ("GET", "/v1/works/x/history", AdminRole::Viewer),
        ("GET", "/v1/works/x/rendered/x", AdminRole::Viewer),
        ("POST", "/v1/works/x/sync", AdminRole::Operator),
        ("POST", "/v1/works/x/pause", AdminRole::Operator),
        ("POST", "/v1/works/x/resume", AdminRole::Operator),
        ("POST", "/v1/works/x/undo", AdminRole::Operator),
        ("POST", "/v1/works/x/confirm-removal", AdminRole::Operator),
        ("DELETE", "/v1/works/x", AdminRole::Operator),
        ("POST", "/v1/backup", AdminRole::Admin),
        ("GET", "/v1/admins", AdminRole::Admin),
        ("POST", "/v1/admins", AdminRole::Admin),
        ("POST", "/v1/admins/x/revoke", AdminRole::Admin),
        ("POST", "/v1/admins/x/renew", AdminRole::Viewer),
    ];

    /// The OpenAPI document names every `/v1` route of `RULES`, and nothing else: a new route
    /// must be described, a removed one undescribed. (`/ui` is the dashboard, not the API.)
    #[test]
    fn every_rule_is_documented() {
        let documented: std::collections::BTreeSet<(String, String)> =
            crate::admin::openapi::operations()
                .into_iter()
                .map(|(m, p)| {
                    let generic: Vec<&str> = p
                        .split('/')
                        .map(|s| if s.starts_with('{') { "x" } else { s })
                        .collect();
                    (m, generic.join("/"))
                })
                .collect();
        let ruled: std::collections::BTreeSet<(String, String)> = RULES
            .iter()
            .filter(|(_, p, _)| p.starts_with("/v1/"))
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        let undocumented: Vec<_> = ruled.difference(&documented).collect();
        let unruled: Vec<_> = documented.difference(&ruled).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.rs: {undocumented:?}"
        );
        assert!(unruled.is_empty(), "documented but not routes: {unruled:?}");
        // Each documented operation is reachable with the role its rule names.
        for (m, p) in &documented {
            assert!(rule(m, p).is_some(), "{m} {p} has no rule");
        }
    }

    fn rule(method: &str, path: &str) -> Option<AdminRole> {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
        required_role(&m, &seg)
    }

    #[test]
    fn each_route_needs_its_role() {
        for (m, p, role) in RULES {
            assert_eq!(rule(m, p), Some(*role), "{m} {p}");
        }
        assert_eq!(rule("GET", "/v1/nothing"), None);
        assert_eq!(rule("DELETE", "/v1/clusters/x"), None);
    }

    /// Reads the route modules' match arms (`(&Method::X, ["v1", ...])`) and checks that each
    /// has a rule, and a row in `RULES`: a new route without one fails here.
    #[test]
    fn every_route_has_a_rule() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/routes");
        let mut seen = 0;
        for f in std::fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            if path.file_name().is_some_and(|n| n == "mod.rs") {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            for (method, pattern) in arms(&src) {
                for route in expand(&pattern) {
                    seen += 1;
                    let found = rule(&method, &route);
                    assert!(
                        found.is_some(),
                        "{}: {method} {route} has no rule in required_role",
                        path.display()
                    );
                    assert!(
                        RULES
                            .iter()
                            .any(|(m, p, r)| *m == method && *p == route && Some(*r) == found),
                        "{method} {route} is not in RULES"
                    );
                }
            }
        }
        assert!(
            seen >= 30,
            "only {seen} routes found: has the match-arm shape changed?"
        );
    }

    /// `(method, what is between the brackets)` of every `(&Method::X, [...])`.
    fn arms(src: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find("(&Method::") {
            rest = &rest[i + "(&Method::".len()..];
            let method: String = rest.chars().take_while(char::is_ascii_uppercase).collect();
            let after = rest[method.len()..].trim_start_matches([',', ' ', '\n']);
            if let Some(body) = after.strip_prefix('[') {
                if let Some(end) = body.find(']') {
                    out.push((method, body[..end].to_string()));
                }
            }
        }
        out
    }

    /// `"v1", "works", name, action @ ("pause" | "resume")` -> `/v1/works/x/pause`, `.../resume`.
    fn expand(pattern: &str) -> Vec<String> {
        // Split on the commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in pattern.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&pattern[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&pattern[start..]);
        let mut paths = vec![String::new()];
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let choices: Vec<String> = if part.contains('"') {
                part.split('"')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect()
            } else {
                vec!["x".to_string()]
            };
            paths = paths
                .iter()
                .flat_map(|p| choices.iter().map(move |c| format!("{p}/{c}")))
                .collect();
        }
        paths
    }
}
