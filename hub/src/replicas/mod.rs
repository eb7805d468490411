//! Several hub processes serving one PostgreSQL database at once (active/active replicas).
//!
//! Every replica accepts any agent and any admin. What must be shared lives in the database;
//! a replica keeps caches (the work catalog, the published decisions, admin credentials,
//! revoked serials, the health of clusters held elsewhere) and follows the change feed to
//! keep them current (`feed`). One replica at a time holds the lease and runs the controller
//! (`leader`): its decisions are stored, fenced by the lease's epoch, and every other replica
//! publishes them to its own sessions. Which replica holds each cluster's session is stored
//! too (`fleet::replica`): the holder alone decides that cluster's health, and when a
//! replica dies the leader speaks for its clusters until they connect elsewhere.
//!
//! On the embedded store none of this runs: one process is the whole hub.

pub(crate) mod feed;
pub(crate) mod leader;
pub(crate) mod route;
