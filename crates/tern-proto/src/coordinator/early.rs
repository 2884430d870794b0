//! Early commit (Whale): a write is answered when the shard's commit point
//! (the K-th replica of the chain) acknowledges it, while the rest of the
//! chain follows; its key stays dirty, and its window place taken (the
//! credit it uses), until the tail acknowledges it too. Reads of dirty keys
//! go to the commit point, which holds every write answered.
//!
//! The state is in the shard's shared memory (the cell's `point_applied`
//! and `point_barrier`, each window place's `answered`), so that the XDP
//! program answers early acknowledgements and routes dirty reads by the
//! same rules (`bpf/writes.h`, `bpf/reads.h`).
// PERFORMANCE CRITICAL PATH: once per early acknowledgement.

use tern_wire::Message;

use super::{ShardConfig, ShardCoordinator, ShardState};
use crate::Outbox;

/// For a coordinator that starts: under early commit the commit point is
/// not trusted with dirty reads until the probes say how far the chain got
/// (a coordinator before this one may have answered writes it lacks, at a
/// commit point that failed since). Committing at the tail, the tail is, as
/// always.
pub(super) fn starting(state: &impl ShardState, config: &ShardConfig) {
    let barrier = if config.early_commit > 0 { u64::MAX } else { 0 };
    state.reset_point(0, barrier);
}

/// A new commit point (a chain change of a shard under early commit, even
/// one that now commits at its tail): trusted with dirty reads once it
/// holds every seq sequenced so far (below `next_seq`), since the commit
/// point before it may have answered writes it lacks.
pub(super) fn new_point(state: &impl ShardState) {
    state.reset_point(0, state.next_seq().saturating_sub(1));
}

/// After recovery's probes: the chain's head has seen up to `highest`
/// (the commit point's report, when it came, is kept).
pub(super) fn recovered(state: &impl ShardState, highest: u64) {
    state.reset_point(state.point_applied(), highest);
}

/// Whether the commit point holds every seq up to the barrier (the tail's
/// `commit_seq` counts: the commit point holds that too).
pub(super) fn point_ready(state: &impl ShardState) -> bool {
    state.point_applied().max(state.commit_seq()) >= state.point_barrier()
}

impl<S: ShardState> ShardCoordinator<S> {
    /// The commit point's acknowledgement of `seq`: the client's answer,
    /// once. The write stays in flight (dirty, in the window, resent) until
    /// the tail acknowledges it.
    pub(super) fn acknowledge_early(&mut self, message: &Message<'_>, outbox: &mut Outbox) {
        let seq = message.header.seq.get();
        self.state.learn_point(seq);
        if !self.state.mark_answered(seq) {
            // Late: the tail acknowledged it already (and answered), a
            // previous coordinator sequenced it, or a duplicate.
            self.counters.early_acks_late += 1;
            return;
        }
        self.counters.early_acks += 1;
        self.answer_write(message, outbox);
    }
}
