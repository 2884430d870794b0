//! The local testbed behind `tern cluster`, `tern chaos` and `tern bench
//! compare`: clusters of real processes (the `tern` binary in every role) on
//! loopback or in network namespaces joined by veth pairs, started, watched,
//! restarted and torn down; faults injected under a recorded workload and
//! the history checked; Tern compared with its peers in interleaved runs.
//!
//! Processes are told apart by their typed [`cluster::ProcessRole`], never
//! by the text of their names. The binary stays a thin CLI over this crate.

pub mod bank;
pub mod certs;
pub mod chaos;
mod chaos_txn;
pub mod cluster;
pub mod compare;
pub mod deploy;
pub mod migrate;
pub mod netns;
pub mod replication;

/// How durably replicas keep what they apply (`--durability`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// fdatasync before a replica passes a write on: nothing acknowledged is lost.
    Always,
    /// write before passing on, fdatasync every --sync-interval-ms: a power
    /// loss of every replica's machine can lose the last interval's writes.
    Interval,
    /// Memory only (the benchmark mode).
    None,
}
