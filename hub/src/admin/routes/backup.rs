//! The backup route: a consistent snapshot taken while the hub serves.

use crate::admin::server::bytes_body::Body;
use crate::admin::server::*;
use crate::identity::admins::Caller;
use crate::state::HubState;
use crate::util::now_ms;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

pub(super) async fn route(
    state: &Arc<HubState>,
    who: &Caller,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let actor = who.actor();
    match (method, seg) {
        (&Method::POST, ["v1", "backup"]) => {
            let body: crate::api::BackupRequest = read_json(req).await?;
            if !state.store.is_embedded() {
                return Err(error(
                    StatusCode::NOT_IMPLEMENTED,
                    "this hub's tables are in PostgreSQL: back them up with PostgreSQL's tools (pg_basebackup, pg_dump, or your provider's), and the data directory's keys with your secrets",
                ));
            }
            let to = std::path::PathBuf::from(&body.to);
            if !to.is_absolute() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "backup path {:?} must be absolute (it is a path on the hub's machine)",
                        body.to
                    ),
                ));
            }
            if to.exists() {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("{} exists; a backup never overwrites a file", to.display()),
                ));
            }
            let info = in_blocking(state, move |s| {
                let info = crate::backup::write_backup(&s.store, &to, now_ms())?;
                s.audit_async(
                    "backup_written",
                    None,
                    &actor,
                    format!("{} ({} rows, {} bytes)", info.path, info.rows, info.bytes),
                );
                Ok(info)
            })
            .await?;
            tracing::info!(path = %info.path, rows = info.rows, bytes = info.bytes, "backup written");
            Ok(json(StatusCode::OK, &info))
        }
        _ => Err(no_route(method, seg)),
    }
}
