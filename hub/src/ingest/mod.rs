//! Durable writes at fleet rate: the group committer and exactly-once status ingest.

pub mod committer;
pub mod status;
