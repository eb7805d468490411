//! Who is out there: cluster health, live sessions, reported facts, deliveries in flight.

pub mod changes;
pub mod facts;
pub mod health;
pub mod in_flight;
pub mod sessions;
