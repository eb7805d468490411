//! Who a peer is: the cluster registry (joins, approval, certificates, revocation), admin
//! credentials with their roles and scopes, the hub's PKI and `init`.

pub mod admins;
pub mod init;
pub mod pki;
pub mod registry;
