//! The admin API's routes, one module per resource. Every route here runs after the caller's
//! admin certificate has been checked (see `server`).

mod audit;
mod backup;
mod clusters;
mod joins;
mod works;

use crate::admin::server::bytes_body::Body;
use crate::admin::server::no_route;
use crate::state::HubState;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use std::sync::Arc;

pub(super) async fn route(
    state: &Arc<HubState>,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    match seg {
        ["v1", "clusters", ..] => clusters::route(state, method, seg, req).await,
        ["v1", "join-requests", ..] | ["v1", "tokens", ..] => {
            joins::route(state, method, seg, req).await
        }
        ["v1", "audit", ..] => audit::route(state, method, seg, req).await,
        ["v1", "works", ..] => works::route(state, method, seg, req).await,
        ["v1", "backup"] => backup::route(state, method, seg, req).await,
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
