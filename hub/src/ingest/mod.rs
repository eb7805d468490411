//! Durable writes at fleet rate: the group committer, exactly-once status ingest and the
//! filing of each cluster's status history.

pub mod committer;
pub mod history;
pub mod status;
