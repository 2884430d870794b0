//! [`ShardState`]: the coordinator state of one shard, shared by the kernel
//! fast path and user space; [`crate::SharedShard`] is its implementation.

use crate::Time;
use crate::holds::HoldTable;

/// Coordinator state of one shard shared by the fast and rare paths.
///
/// Every method is atomic on its own; the coordinator logic decides their
/// order, which is what makes forwarded reads linearizable (DESIGN rule 4).
pub trait ShardState {
    /// Reserves the next sequence number if its in-flight window slot is
    /// free; `None` when the window is full.
    fn begin_write(&self) -> Option<u64>;
    /// Publishes reserved `seq` in the window with the datagram sent for it.
    fn record_sent(&self, seq: u64, dirty_index: u32, datagram: &[u8], now: Time);
    /// Removes `seq` from the window; its dirty index when it was in flight.
    fn end_write(&self, seq: u64) -> Option<u32>;
    fn is_in_flight(&self, seq: u64) -> bool;
    /// The dirty index `seq` was recorded with, while it is in flight.
    fn in_flight_index(&self, seq: u64) -> Option<u32>;
    /// When `seq` is in flight, copies its datagram into `out` and returns
    /// true.
    fn copy_in_flight(&self, seq: u64, out: &mut Vec<u8>) -> bool;
    /// When `seq` is in flight and was last sent before `sent_before`, copies
    /// its datagram into `out`, marks it sent at `now` and returns true.
    fn resend(&self, seq: u64, sent_before: Time, now: Time, out: &mut Vec<u8>) -> bool;
    /// The next sequence number `begin_write` would assign.
    fn next_seq(&self) -> u64;
    /// Control path: where sequencing resumes after recovery (rule 8).
    fn set_next_seq(&self, seq: u64);
    fn commit_seq(&self) -> u64;
    /// `commit_seq = max(commit_seq, seq)`.
    fn advance_commit_seq(&self, seq: u64);
    fn dirty_count(&self, dirty_index: u32) -> u64;
    fn increment_dirty(&self, dirty_index: u32);
    fn decrement_dirty(&self, dirty_index: u32);
    /// While set, every key counts as dirty (a recovering coordinator, rule 8).
    fn all_dirty(&self) -> bool;
    fn set_all_dirty(&self, on: bool);
    /// Takes the next value of the round-robin counter of clean reads.
    fn next_replica(&self) -> u64;
    /// Whether the shard serves keys of hash slot `slot` here.
    fn serves_slot(&self, slot: u32) -> bool;
    /// Control path: the shard serves exactly these `[start, end)` ranges.
    fn set_slots(&self, ranges: &[[u32; 2]]);
    /// The transactions held at this shard (locked per bucket).
    fn holds(&self) -> &HoldTable;
    /// Early commit: whether in-flight `seq` was answered at the commit
    /// point's acknowledgement.
    fn answered_early(&self, seq: u64) -> bool;
    /// Early commit: marks in-flight `seq` answered; false when it was
    /// already, or is not in flight.
    fn mark_answered(&self, seq: u64) -> bool;
    /// Early commit: the highest seq the commit point acknowledged.
    fn point_applied(&self) -> u64;
    /// `point_applied = max(point_applied, seq)`.
    fn learn_point(&self, seq: u64);
    /// Early commit: the seq the commit point must hold before it answers
    /// reads of dirty keys.
    fn point_barrier(&self) -> u64;
    /// Control path: a new commit point's progress and barrier.
    fn reset_point(&self, applied: u64, barrier: u64);
    /// Fan-out: counts the acknowledgement of in-flight `seq` by the
    /// replica at `position` of a chain of `replicas`, under `epoch` (the
    /// shard's current one: counts taken under an earlier epoch start
    /// over).
    fn fanout_ack(&self, seq: u64, epoch: u32, position: usize, replicas: usize) -> FanoutAck;
}

/// What one fan-out acknowledgement did to its write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanoutAck {
    /// The write is not in flight (completed, or never sequenced here).
    NotInFlight,
    /// Counted, the `acks`-th replica to acknowledge it; others have yet
    /// to.
    Counted { acks: u32 },
    /// This replica had acknowledged it already; others have yet to.
    Duplicate,
    /// Every replica has acknowledged it (this one last, or again): the
    /// write is complete.
    Complete,
}
