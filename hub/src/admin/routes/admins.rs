//! Routes for admin credentials: add, list, renew, revoke, and who the caller is.

use crate::admin::server::bytes_body::Body;
use crate::admin::server::*;
use crate::api::*;
use crate::identity::admins::{Caller, DEFAULT_VALIDITY};
use crate::state::HubState;
use crate::util::now_ms;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn route(
    state: &Arc<HubState>,
    who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let actor = who.actor();
    match (method, seg) {
        (&Method::GET, ["v1", "whoami"]) => Ok(json(
            StatusCode::OK,
            &WhoAmI {
                name: who.name.clone(),
                role: who.role,
                scope: who.scope.clone(),
            },
        )),
        (&Method::GET, ["v1", "admins"]) => {
            let views: Vec<AdminView> = state
                .admins
                .list()
                .into_iter()
                .map(|(fingerprint, r)| AdminView {
                    name: r.name,
                    role: r.role,
                    scope: r.scope,
                    fingerprint,
                    created_at_ms: r.created_at_ms,
                    not_after_ms: r.not_after_ms,
                })
                .collect();
            Ok(json(StatusCode::OK, &views))
        }
        (&Method::POST, ["v1", "admins"]) => {
            let body: AddAdminRequest = read_json(req).await?;
            let grant = Some((body.role, body.scope));
            let issued = issue(
                state,
                body.name,
                grant,
                body.csr_pem,
                body.valid_days,
                actor,
            )
            .await?;
            Ok(json(StatusCode::CREATED, &issued))
        }
        (&Method::POST, ["v1", "admins", name, "renew"]) => {
            if who.name != *name && who.role < AdminRole::Admin {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    format!("{} may renew only its own certificate", who.name),
                ));
            }
            let body: RenewAdminRequest = read_json(req).await?;
            let issued = issue(
                state,
                name.to_string(),
                None,
                body.csr_pem,
                body.valid_days,
                actor,
            )
            .await?;
            Ok(json(StatusCode::CREATED, &issued))
        }
        (&Method::POST, ["v1", "admins", name, "revoke"]) => {
            let n = name.to_string();
            let revoked = in_blocking(state, move |s| {
                s.admins.revoke(&s.store, &n, &actor, now_ms())
            })
            .await?;
            tracing::warn!(admin = %name, certificates = revoked, by = %who.name, "admin credential revoked");
            Ok(json(
                StatusCode::OK,
                &RevokedAdmin {
                    name: name.to_string(),
                    revoked_certificates: revoked,
                },
            ))
        }
        _ => Err(no_route(method, seg)),
    }
}

async fn issue(
    state: &Arc<HubState>,
    name: String,
    grant: Option<(AdminRole, AdminScope)>,
    csr_pem: String,
    valid_days: Option<u64>,
    actor: String,
) -> Result<AdminIssued, Response<Body>> {
    let validity = valid_days.map_or(DEFAULT_VALIDITY, |d| {
        Duration::from_secs(d.saturating_mul(86_400))
    });
    in_blocking(state, move |s| {
        let added = s.admins.add(
            &s.store,
            s.registry.ca(),
            &name,
            grant,
            &csr_pem,
            validity,
            &actor,
            now_ms(),
        )?;
        let who = s
            .admins
            .lookup(&added.fingerprint, now_ms())
            .ok_or_else(|| {
                crate::identity::registry::RegistryError::Conflict(format!(
                    "the certificate for {name} was signed but is not live"
                ))
            })?;
        tracing::info!(admin = %name, role = who.role.as_str(), scope = %who.scope, by = %actor, "admin certificate issued");
        Ok(AdminIssued {
            name,
            role: who.role,
            scope: who.scope,
            fingerprint: added.fingerprint,
            cert_pem: added.cert_pem,
            ca_pem: s.registry.ca_pem().to_string(),
            not_after_ms: added.not_after_ms,
        })
    })
    .await
}
