//! The admin API: the HTTPS server, its read models and the client `tetherctl` uses. The
//! client knows only the wire shapes (`crate::api`), never the server's internals.

pub mod client;
pub(crate) mod openapi;
mod routes;
pub mod server;
pub mod views;
