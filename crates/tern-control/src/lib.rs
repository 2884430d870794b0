//! The control plane's vocabulary, shared by every Tern process: the cluster
//! map (slot ranges, shards, chains, coordinators, epochs), the requests a
//! process or an operator sends to meta and meta's replies (refusals are
//! typed: callers match on [`meta::Refusal`], never on text), and the
//! heartbeat thread that keeps a process's map and lease fresh.
//!
//! The client, the servers, the coordinator and meta depend on this crate;
//! it depends on no server crate and on nothing of the data path beyond the
//! wire format's limits.

mod ids;
mod map;
pub mod meta;
pub mod tls;
pub mod transfer;

pub use ids::{ClientId, Epoch, Seq, ShardId, Slot};
pub use map::{
    ClusterMap, HandOff, MapError, Migration, ShardMap, SlotRange, SlotState, commit_name,
    first_slot_missing, parse_commit, parse_replication, replication_name, served_slots,
};
