//! The admin API: the HTTPS server, its read models, the client `tetherctl` uses and what
//! `tetherctl apply` reads (manifests). The
//! client knows only the wire shapes (`crate::api`), never the server's internals.

pub mod client;
pub mod manifests;
mod routes;
pub mod server;
pub mod views;
