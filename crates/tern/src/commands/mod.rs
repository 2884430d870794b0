//! The `tern` commands, one module per kind: the long-running roles, the
//! client commands, and membership changes through meta. Cluster, chaos and
//! comparison commands live in `tern-testbed`.

pub mod data;
pub mod node;
pub mod reshard;
pub mod roles;
