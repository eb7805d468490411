//! Routes for join requests and join tokens.

use crate::admin::server::bytes_body::Body;
use crate::admin::server::*;
use crate::api::*;
use crate::identity::admins::Caller;
use crate::identity::registry::TokenSpec;
use crate::state::HubState;
use crate::util::now_ms;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tether_store::hub::{JoinDecision, JOIN_REQUESTS, TOKENS};

pub(super) async fn route(
    state: &Arc<HubState>,
    who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let actor = who.actor();
    match (method, seg) {
        (&Method::GET, ["v1", "join-requests"]) => {
            let rows =
                in_blocking(state, |s| Ok(s.store.read(|tx| tx.list(&JOIN_REQUESTS))?)).await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(_, r)| {
                    let (st, reason) = match r.decision {
                        JoinDecision::Pending => (crate::api::JoinState::Pending, None),
                        JoinDecision::Approved { .. } => (crate::api::JoinState::Approved, None),
                        JoinDecision::Denied { reason } => {
                            (crate::api::JoinState::Denied, Some(reason))
                        }
                    };
                    JoinRequestView {
                        name: r.name,
                        state: st,
                        reason,
                        token_id: r.token_id,
                        labels: r.labels,
                        facts: r.facts,
                        peer_addr: r.peer_addr,
                        created_at_ms: r.created_at_ms,
                    }
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::POST, ["v1", "tokens"]) => {
            let body: CreateTokenRequest = read_json(req).await?;
            let spec = TokenSpec {
                ttl: Duration::from_secs(body.ttl_secs),
                uses: body.uses,
                auto_approve: body.auto_approve,
                labels: body.labels,
                allowed_labels: body.allowed_labels,
            };
            let created = in_blocking(state, move |s| {
                s.registry.create_token(&spec, &actor, now_ms())
            })
            .await?;
            tracing::info!(token = %created.id, "bootstrap token created");
            Ok(json(StatusCode::CREATED, &created))
        }
        (&Method::GET, ["v1", "tokens"]) => {
            let rows = in_blocking(state, |s| Ok(s.store.read(|tx| tx.list(&TOKENS))?)).await?;
            let views: Vec<_> = rows
                .into_iter()
                .map(|(_, t)| TokenView {
                    id: t.id,
                    expires_at_ms: t.expires_at_ms,
                    max_uses: t.max_uses,
                    used: t.used,
                    auto_approve: t.auto_approve,
                    labels: t.labels,
                    allowed_labels: t.allowed_labels,
                    revoked_at_ms: t.revoked_at_ms,
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::POST, ["v1", "tokens", id, "revoke"]) => {
            let id = id.to_string();
            let t = in_blocking(state, move |s| {
                s.registry.revoke_token(&id, &actor, now_ms())
            })
            .await?;
            tracing::warn!(token = %t.id, "bootstrap token revoked by admin");
            Ok(json(
                StatusCode::OK,
                &TokenView {
                    id: t.id,
                    expires_at_ms: t.expires_at_ms,
                    max_uses: t.max_uses,
                    used: t.used,
                    auto_approve: t.auto_approve,
                    labels: t.labels,
                    allowed_labels: t.allowed_labels,
                    revoked_at_ms: t.revoked_at_ms,
                },
            ))
        }
        _ => Err(no_route(method, seg)),
    }
}
