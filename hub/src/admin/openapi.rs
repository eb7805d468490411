//! The admin API's OpenAPI 3.1 document, served at `GET /v1/openapi.json`.
//!
//! The schemas are derived (utoipa) from the `api` types serde writes and reads, so a field
//! changed there changes here. The paths are described once, below, one stub per route: the
//! routes themselves match on path segments, which no macro can read, so
//! `routes::tests::every_rule_is_documented` checks this list against the role table instead
//! (a route without a description, or a description without a route, fails there).

use crate::api::*;
use std::sync::OnceLock;
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tether hub admin API",
        description = "The hub's admin HTTPS API. Every /v1 route needs a live admin client \
                       certificate (mutual TLS) and the role the route names; docs/admin-api.md."
    ),
    paths(
        paths::version, paths::whoami, paths::openapi_json, paths::list_clusters,
        paths::get_cluster, paths::status_log, paths::approve, paths::deny, paths::detach,
        paths::pin_facts, paths::set_labels, paths::join_requests, paths::list_tokens,
        paths::create_token, paths::revoke_token, paths::audit, paths::audit_page,
        paths::apply_work, paths::render_work, paths::list_works, paths::get_work,
        paths::delete_work, paths::placement, paths::rollout, paths::history, paths::rendered,
        paths::sync_work, paths::pause, paths::resume, paths::undo, paths::confirm_removal,
        paths::backup,
        paths::list_admins, paths::add_admin, paths::revoke_admin, paths::renew_admin,
    ),
    components(schemas(ApiError)),
    tags(
        (name = "clusters", description = "Registered clusters and join requests"),
        (name = "works", description = "Works, their placement and rollouts"),
        (name = "access", description = "Join tokens and admin credentials"),
        (name = "hub", description = "The hub itself: version, audit log, backups"),
    )
)]
struct AdminApi;

/// The document as served, made once: it is a function of the types only.
pub(crate) fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_string(&document()).unwrap_or_else(|_| "{}".into()))
}

/// The derived document plus what every route shares: the mutual-TLS scheme and the answers
/// the listener itself gives before a route runs (401 without a live admin certificate, 403
/// for a role below the route's, 503 when the store or the connection limit says so).
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    let mut doc = AdminApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "adminCertificate".into(),
        RefOr::T(SecurityScheme::MutualTls {
            description: Some(
                "A client certificate whose SHA-256 is a live admin credential: the one in the \
                 tetherctl.yaml `tether-hub init` wrote, or one from `tetherctl admins add`."
                    .into(),
            ),
            deprecated: None,
            extensions: None,
        }),
    );
    doc.security = Some(vec![SecurityRequirement::new::<_, _, &str>(
        "adminCertificate",
        [],
    )]);
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            for (code, why) in [
                (
                    "401",
                    "No client certificate, or not a live admin credential.",
                ),
                ("403", "The credential's role or scope does not allow this."),
                (
                    "503",
                    "The store is unavailable, or too many admin connections.",
                ),
            ] {
                op.responses
                    .responses
                    .entry(code.into())
                    .or_insert_with(|| error_response(why));
            }
        }
    }
    doc
}

fn error_response(description: &str) -> RefOr<Response> {
    let mut r = Response::new(description);
    r.content.insert(
        "application/json".into(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("ApiError")))),
    );
    RefOr::T(r)
}

/// One stub per route, there for its `#[utoipa::path]` attribute: nothing calls them.
#[allow(dead_code)]
mod paths {
    use crate::api::*;

    // ---------------------------------------------------------------- hub

    #[utoipa::path(get, path = "/v1/version", tag = "hub",
        responses((status = 200, description = "The hub's version", body = VersionView)))]
    fn version() {}

    #[utoipa::path(get, path = "/v1/whoami", tag = "access",
        responses((status = 200, description = "The credential of this connection", body = WhoAmI)))]
    fn whoami() {}

    #[utoipa::path(get, path = "/v1/openapi.json", tag = "hub",
        responses((status = 200, description = "This document", body = Object)))]
    fn openapi_json() {}

    // ---------------------------------------------------------------- clusters

    #[utoipa::path(get, path = "/v1/clusters", tag = "clusters",
        responses((status = 200, description = "Every registered cluster", body = Vec<ClusterView>)))]
    fn list_clusters() {}

    #[utoipa::path(get, path = "/v1/clusters/{name}", tag = "clusters",
        params(("name" = String, Path, description = "Cluster name", example = "edge-1")),
        responses(
            (status = 200, description = "The cluster", body = ClusterView),
            (status = 404, description = "No such cluster", body = ApiError),
        ))]
    fn get_cluster() {}

    #[utoipa::path(get, path = "/v1/clusters/{name}/status-log", tag = "clusters",
        params(
            ("name" = String, Path, description = "Cluster name", example = "edge-1"),
            ("limit" = Option<u64>, Query, description = "Newest entries to return (default 1000, at most 100000)"),
        ),
        responses(
            (status = 200, description = "The cluster's status history, oldest first (empty for an unknown cluster)", body = Vec<StatusLogView>),
        ))]
    fn status_log() {}

    #[utoipa::path(post, path = "/v1/clusters/{name}/approve", tag = "clusters",
        params(("name" = String, Path, description = "Name of a pending join request", example = "edge-2")),
        responses(
            (status = 200, description = "Approved; the agent gets its certificate at its next poll", body = ActionResult),
            (status = 400, description = "The request cannot be approved as it is", body = ApiError),
            (status = 404, description = "No such join request", body = ApiError),
            (status = 409, description = "Already decided", body = ApiError),
        ))]
    fn approve() {}

    #[utoipa::path(post, path = "/v1/clusters/{name}/deny", tag = "clusters",
        params(("name" = String, Path, description = "Cluster or join request name", example = "edge-1")),
        request_body = Option<DenyRequest>,
        responses(
            (status = 200, description = "Denied; certificates revoked, a live session closed", body = ActionResult),
            (status = 400, description = "Invalid body", body = ApiError),
            (status = 404, description = "No such cluster or join request", body = ApiError),
            (status = 409, description = "Conflicts with the cluster's state", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn deny() {}

    #[utoipa::path(post, path = "/v1/clusters/{name}/detach", tag = "clusters",
        params(("name" = String, Path, description = "Cluster name", example = "edge-1")),
        request_body = Option<DenyRequest>,
        responses(
            (status = 200, description = "Detached: revoked and deleted, the name is free", body = ActionResult),
            (status = 400, description = "Invalid body", body = ApiError),
            (status = 404, description = "No such cluster", body = ApiError),
            (status = 409, description = "Conflicts with the cluster's state", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn detach() {}

    #[utoipa::path(post, path = "/v1/clusters/{name}/facts", tag = "clusters",
        params(("name" = String, Path, description = "Cluster name", example = "edge-1")),
        request_body = PinFactsRequest,
        responses(
            (status = 200, description = "The cluster with its new pins", body = ClusterView),
            (status = 400, description = "Invalid body or fact", body = ApiError),
            (status = 404, description = "No such cluster", body = ApiError),
            (status = 409, description = "Conflicts with the cluster's state", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn pin_facts() {}

    #[utoipa::path(post, path = "/v1/clusters/{name}/labels", tag = "clusters",
        params(("name" = String, Path, description = "Cluster name", example = "edge-1")),
        request_body = LabelsRequest,
        responses(
            (status = 200, description = "The cluster with its new labels", body = ClusterView),
            (status = 400, description = "Invalid body or label", body = ApiError),
            (status = 404, description = "No such cluster", body = ApiError),
            (status = 409, description = "Conflicts with the cluster's state", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn set_labels() {}

    #[utoipa::path(get, path = "/v1/join-requests", tag = "clusters",
        responses((status = 200, description = "Every join request", body = Vec<JoinRequestView>)))]
    fn join_requests() {}

    // ---------------------------------------------------------------- tokens

    #[utoipa::path(get, path = "/v1/tokens", tag = "access",
        responses((status = 200, description = "Every bootstrap token (never the secret)", body = Vec<TokenView>)))]
    fn list_tokens() {}

    #[utoipa::path(post, path = "/v1/tokens", tag = "access",
        request_body = CreateTokenRequest,
        responses(
            (status = 201, description = "The token; its secret is shown only here", body = CreatedToken),
            (status = 400, description = "Invalid body, lifetime or labels", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn create_token() {}

    #[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "access",
        params(("id" = String, Path, description = "Token id")),
        responses(
            (status = 200, description = "The revoked token", body = TokenView),
            (status = 400, description = "Cannot be revoked", body = ApiError),
            (status = 404, description = "No such token", body = ApiError),
            (status = 409, description = "Already revoked", body = ApiError),
        ))]
    fn revoke_token() {}

    // ---------------------------------------------------------------- audit

    #[utoipa::path(get, path = "/v1/audit", tag = "hub",
        params(AuditQuery),
        responses(
            (status = 200, description = "Matching events, oldest first", body = Vec<AuditView>),
            (status = 400, description = "A filter that is not a number or not percent-encoded", body = ApiError),
        ))]
    fn audit() {}

    #[utoipa::path(get, path = "/v1/audit/page", tag = "hub",
        params(AuditQuery),
        responses(
            (status = 200, description = "One page of matching events and the cursor to the next", body = AuditPage),
            (status = 400, description = "A filter that is not a number or not percent-encoded", body = ApiError),
        ))]
    fn audit_page() {}

    /// The audit routes' query (`routes/audit.rs` `audit_query`).
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    struct AuditQuery {
        /// Event kind, e.g. `cluster_approved`.
        kind: Option<String>,
        /// Cluster name.
        cluster: Option<String>,
        /// Who did it, e.g. `admin:alice`.
        actor: Option<String>,
        /// Only events at or after this hub time (Unix ms).
        since: Option<u64>,
        /// Only events at or before this hub time (Unix ms).
        until: Option<u64>,
        /// Cursor: only events with a sequence number below this.
        before: Option<u64>,
        /// Most events to return (1 to 10000, default 100).
        limit: Option<u64>,
    }

    // ---------------------------------------------------------------- works

    #[utoipa::path(put, path = "/v1/works", tag = "works",
        params(("force" = Option<bool>, Query, description = "Apply even if another work delivers the same object to the same cluster")),
        request_body(content = Object, description = "A Work document (docs/user-guide-placement-rollout.md), as JSON"),
        responses(
            (status = 200, description = "Updated or unchanged", body = ApplyResult),
            (status = 201, description = "Created", body = ApplyResult),
            (status = 400, description = "Not a Work document", body = ApiError),
            (status = 409, description = "Another work delivers one of its objects to the same cluster", body = ApiError),
            (status = 413, description = "Body over 32 MiB, or bundle over the frame size", body = ApiError),
            (status = 422, description = "A Work document that does not validate", body = ApiError),
            (status = 502, description = "Its git source did not answer", body = ApiError),
        ))]
    fn apply_work() {}

    #[utoipa::path(post, path = "/v1/works/render", tag = "works",
        params(("cluster" = Option<String>, Query, description = "Render as this cluster would receive it")),
        request_body(content = Object, description = "A Work document, as JSON"),
        responses(
            (status = 200, description = "The manifests it would deliver; nothing is stored", body = Vec<Object>),
            (status = 400, description = "Not a Work document", body = ApiError),
            (status = 404, description = "No such cluster", body = ApiError),
            (status = 413, description = "Body over 32 MiB", body = ApiError),
            (status = 422, description = "A Work document that does not validate", body = ApiError),
            (status = 502, description = "Its git source did not answer", body = ApiError),
        ))]
    fn render_work() {}

    #[utoipa::path(get, path = "/v1/works", tag = "works",
        responses((status = 200, description = "Every work, deleted ones still being cleaned up included", body = Vec<WorkSummary>)))]
    fn list_works() {}

    #[utoipa::path(get, path = "/v1/works/{name}", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "The work, its document and its row on each cluster", body = WorkDetail),
            (status = 404, description = "No such work", body = ApiError),
        ))]
    fn get_work() {}

    #[utoipa::path(delete, path = "/v1/works/{name}", tag = "works",
        params(
            ("name" = String, Path, description = "Work name", example = "web"),
            ("orphan" = Option<bool>, Query, description = "Leave the objects in place on the clusters"),
        ),
        responses(
            (status = 200, description = "Deleted; clusters remove it", body = DeleteResult),
            (status = 404, description = "No such work", body = ApiError),
        ))]
    fn delete_work() {}

    #[utoipa::path(get, path = "/v1/works/{name}/placement", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "Every cluster, selected or not, and why", body = Vec<Choice>),
            (status = 404, description = "No such work", body = ApiError),
        ))]
    fn placement() {}

    #[utoipa::path(get, path = "/v1/works/{name}/rollout", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "Where the current generation's rollout stands", body = RolloutView),
            (status = 404, description = "No such work", body = ApiError),
        ))]
    fn rollout() {}

    #[utoipa::path(get, path = "/v1/works/{name}/history", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "The generations kept for undo, oldest first", body = Vec<RevisionView>),
            (status = 404, description = "No such work", body = ApiError),
        ))]
    fn history() {}

    #[utoipa::path(get, path = "/v1/works/{name}/rendered/{cluster}", tag = "works",
        params(
            ("name" = String, Path, description = "Work name", example = "web"),
            ("cluster" = String, Path, description = "Cluster name", example = "edge-1"),
        ),
        responses(
            (status = 200, description = "The manifests this cluster receives", body = Vec<Object>),
            (status = 404, description = "No such work, or not placed on that cluster", body = ApiError),
            (status = 422, description = "Its overrides do not apply", body = ApiError),
        ))]
    fn rendered() {}

    #[utoipa::path(post, path = "/v1/works/{name}/sync", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "Fetched; a new generation if the commit changed what it delivers", body = ApplyResult),
            (status = 404, description = "No such work", body = ApiError),
            (status = 422, description = "Not a git-sourced work, or what it read does not validate", body = ApiError),
            (status = 502, description = "The repository did not answer", body = ApiError),
        ))]
    fn sync_work() {}

    #[utoipa::path(post, path = "/v1/works/{name}/pause", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "Paused: no cluster is admitted until resumed", body = PauseResult),
            (status = 404, description = "No such work", body = ApiError),
            (status = 422, description = "Cannot be paused", body = ApiError),
        ))]
    fn pause() {}

    #[utoipa::path(post, path = "/v1/works/{name}/resume", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        responses(
            (status = 200, description = "Resumed", body = PauseResult),
            (status = 404, description = "No such work", body = ApiError),
            (status = 422, description = "Cannot be resumed", body = ApiError),
        ))]
    fn resume() {}

    #[utoipa::path(post, path = "/v1/works/{name}/undo", tag = "works",
        params(
            ("name" = String, Path, description = "Work name", example = "web"),
            ("to_generation" = Option<u64>, Query, description = "Generation to restore (default: the one before the current)"),
        ),
        responses(
            (status = 200, description = "A new generation restoring the older one", body = UndoResult),
            (status = 404, description = "No such work or generation", body = ApiError),
            (status = 422, description = "Nothing to undo to", body = ApiError),
        ))]
    fn undo() {}

    #[utoipa::path(post, path = "/v1/works/{name}/confirm-removal", tag = "works",
        params(("name" = String, Path, description = "Work name", example = "web")),
        request_body = ConfirmRemovalRequest,
        responses(
            (status = 200, description = "The cluster's agent recorded the confirmation", body = ConfirmRemovalResult),
            (status = 400, description = "Invalid body", body = ApiError),
            (status = 403, description = "Outside the caller's scope, or the agent takes confirmations on the cluster only", body = ApiError),
            (status = 404, description = "No such work or cluster", body = ApiError),
            (status = 409, description = "The cluster has no session, or its agent is too old", body = ApiError),
            (status = 502, description = "The agent answered something else", body = ApiError),
            (status = 504, description = "The agent did not answer in time", body = ApiError),
        ))]
    fn confirm_removal() {}

    // ---------------------------------------------------------------- backup

    #[utoipa::path(post, path = "/v1/backup", tag = "hub",
        request_body = BackupRequest,
        responses(
            (status = 200, description = "A consistent snapshot was written", body = BackupInfo),
            (status = 400, description = "Invalid body, or a relative path", body = ApiError),
            (status = 409, description = "The path exists: a backup never overwrites", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
            (status = 501, description = "The hub's tables are in PostgreSQL", body = ApiError),
        ))]
    fn backup() {}

    // ---------------------------------------------------------------- admins

    #[utoipa::path(get, path = "/v1/admins", tag = "access",
        responses((status = 200, description = "Every admin credential", body = Vec<AdminView>)))]
    fn list_admins() {}

    #[utoipa::path(post, path = "/v1/admins", tag = "access",
        request_body = AddAdminRequest,
        responses(
            (status = 201, description = "The signed certificate", body = AdminIssued),
            (status = 400, description = "Invalid body, name or CSR", body = ApiError),
            (status = 409, description = "The name is taken", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn add_admin() {}

    #[utoipa::path(post, path = "/v1/admins/{name}/revoke", tag = "access",
        params(("name" = String, Path, description = "Admin name")),
        responses(
            (status = 200, description = "Revoked; its live connections are closed", body = RevokedAdmin),
            (status = 400, description = "Cannot be revoked", body = ApiError),
            (status = 404, description = "No such admin", body = ApiError),
            (status = 409, description = "The last admin is kept", body = ApiError),
        ))]
    fn revoke_admin() {}

    #[utoipa::path(post, path = "/v1/admins/{name}/renew", tag = "access",
        params(("name" = String, Path, description = "Admin name (only admins may renew another's)")),
        request_body = RenewAdminRequest,
        responses(
            (status = 201, description = "The new certificate, same role and scope", body = AdminIssued),
            (status = 400, description = "Invalid body or CSR", body = ApiError),
            (status = 404, description = "No such admin", body = ApiError),
            (status = 409, description = "Conflicts with the credential's state", body = ApiError),
            (status = 413, description = "Body over 64 KiB", body = ApiError),
        ))]
    fn renew_admin() {}
}

/// `(method, path)` of every documented operation, paths as written (`{name}`).
#[cfg(test)]
pub(crate) fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
        ] {
            if op.is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_its_errors_as_api_error() {
        let doc: serde_json::Value = serde_json::from_str(json()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object().expect("responses");
                for code in ["401", "403"] {
                    assert!(responses.contains_key(code), "{method} {path} lacks {code}");
                }
                for (code, r) in responses {
                    if code.starts_with('4') || code.starts_with('5') {
                        assert_eq!(
                            r["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ApiError",
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
        // The types embedded from the protocol and store crates come with their schemas.
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "ClusterView",
            "Facts",
            "Condition",
            "ClusterState",
            "AdminRole",
        ] {
            assert!(schemas.contains_key(name), "{name} missing");
        }
        // A `Labels` field without `#[schema(inline)]` shows up as a type named after the map.
        assert!(!schemas.contains_key("BTreeMap"));
        // Bounds written as literals in api.rs: they must be the ones the registry enforces.
        let token = &schemas["CreateTokenRequest"]["properties"];
        use crate::identity::registry::{MAX_TOKEN_TTL, MAX_TOKEN_USES};
        assert_eq!(token["ttl_secs"]["maximum"], MAX_TOKEN_TTL.as_secs());
        assert_eq!(token["uses"]["maximum"], MAX_TOKEN_USES);
    }
}
