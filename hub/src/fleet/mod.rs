//! Who is out there: cluster health, live sessions, reported facts, deliveries in flight, and
//! this process as one of several hub replicas.

pub mod changes;
pub mod facts;
pub mod health;
pub mod in_flight;
pub(crate) mod replica;
pub mod sessions;
