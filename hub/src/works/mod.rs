//! The work catalog: validated, versioned Work documents, their per-cluster rendering and
//! maintenance windows.

mod catalog;
pub mod render;
pub mod windows;

pub use catalog::*;
