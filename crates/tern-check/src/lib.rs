//! A history recorder and a linearizability checker for Tern's key-value
//! operations.
//!
//! The checker is the search of Wing & Gong with the memoization of Lowe (as
//! in Porcupine): operations are linearized one at a time in an order
//! consistent with real time, and a cache of (linearized set, model state)
//! prunes states seen before. Keys are independent (P-compositionality), so
//! each key's history is checked on its own.
//!
//! The model is a versioned register: every write gets the version (the
//! sequence number) the store reports, and versions grow along the
//! linearization. An operation that timed out has an unknown outcome: it may
//! take effect at any point after its call, or never.
//!
//! Transactions are checked by `check_serial`: strict serializability in
//! the commit order the system reports (see its module), and by
//! `check_cycles`: strict serializability with no order assumed, by the
//! cycles of the dependency graph over versioned registers (Adya, Elle),
//! and `check_append`: Elle's list-append check, the version order
//! inferred from the lists read.
//!
//! Depends on nothing: it must be usable by any test, against any system.

mod append;
mod cycles;
mod model;
mod recorder;
mod search;
mod serial;

pub use append::{AppendError, AppendOp, AppendTxn, check_append};
pub use cycles::{CycleError, Edge, Versioned, check_cycles};
pub use model::{Input, Output};
pub use recorder::{Operation, Recorder};
pub use search::{CheckError, Verdict, check, check_key};
pub use serial::{SerialError, Transaction, check_serial};
