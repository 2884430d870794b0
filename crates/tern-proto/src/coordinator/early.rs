//! Early commit (Whale): a write is answered when the shard's commit point
//! (the K-th replica of the chain) acknowledges it, while the rest of the
//! chain follows; its key stays dirty, and its window place taken (the
//! credit it uses), until the tail acknowledges it too. Reads of dirty keys
//! go to the commit point, which holds every write answered.
// PERFORMANCE CRITICAL PATH: once per early acknowledgement.

use tern_wire::Message;

use super::{INFLIGHT_WRITES_MAX, ShardConfig, ShardCoordinator, ShardState};
use crate::Outbox;

/// What early commit keeps per shard coordinator.
#[derive(Debug, Default)]
pub(super) struct Early {
    /// Per window place, the seq answered early (0: none), so that the
    /// tail's acknowledgement does not answer it again. Empty while the
    /// shard commits at the tail.
    answered: Vec<u64>,
    /// The highest seq the commit point acknowledged: it applies in seq
    /// order, so it holds every seq up to it.
    point_applied: u64,
    /// Reads of dirty keys go to the commit point only once it holds
    /// every seq up to this one: a replica that just became the commit
    /// point, and any commit point while a coordinator starts, may lack
    /// writes answered before (they are on the replicas before it).
    barrier: u64,
}

impl Early {
    /// For a coordinator that starts: under early commit the commit point
    /// is not trusted until the probes say how far the chain got (a
    /// coordinator before this one may have answered writes it lacks, at
    /// a commit point that failed since). Committing at the tail, the tail
    /// is, as always.
    pub(super) fn starting(config: &ShardConfig) -> Self {
        let mut early = Early {
            barrier: if config.early_commit > 0 { u64::MAX } else { 0 },
            ..Early::default()
        };
        early.size_for(config);
        early
    }

    pub(super) fn size_for(&mut self, config: &ShardConfig) {
        if config.is_early() && self.answered.is_empty() {
            self.answered = vec![0; INFLIGHT_WRITES_MAX as usize];
        }
    }

    /// Whether the commit point holds every seq up to the barrier, given
    /// the shard's `commit_seq` (the tail's, which it holds too).
    pub(super) fn point_ready(&self, commit_seq: u64) -> bool {
        self.point_applied.max(commit_seq) >= self.barrier
    }

    /// The commit point reported (probe) or acknowledged `applied`.
    pub(super) fn learn_point(&mut self, applied: u64) {
        self.point_applied = self.point_applied.max(applied);
    }

    /// A new commit point (a chain change of a shard under early commit,
    /// even one that now commits at its tail): it is trusted with dirty
    /// reads once it holds every seq sequenced so far (below `next_seq`),
    /// since the commit point before it may have answered writes it lacks.
    pub(super) fn new_point(&mut self, config: &ShardConfig, next_seq: u64) {
        self.size_for(config);
        self.point_applied = 0;
        self.barrier = next_seq.saturating_sub(1);
    }

    /// After recovery's probes: the chain's head has seen up to `highest`.
    pub(super) fn recovered(&mut self, highest: u64) {
        self.barrier = highest;
    }

    /// Whether `seq` was answered early (and forgets it: its window place
    /// is being freed).
    pub(super) fn take_answered(&mut self, seq: u64) -> bool {
        let Some(place) = self.answered.get_mut(place_of(seq)) else {
            return false;
        };
        let answered = *place == seq;
        if answered {
            *place = 0;
        }
        answered
    }
}

fn place_of(seq: u64) -> usize {
    (seq % INFLIGHT_WRITES_MAX) as usize
}

impl<S: ShardState> ShardCoordinator<S> {
    /// The commit point's acknowledgement of `seq`: the client's answer,
    /// once. The write stays in flight (dirty, in the window, resent) until
    /// the tail acknowledges it.
    pub(super) fn acknowledge_early(&mut self, message: &Message<'_>, outbox: &mut Outbox) {
        let seq = message.header.seq.get();
        self.early.learn_point(seq);
        if !self.state.is_in_flight(seq) {
            // Late: the tail acknowledged it already (and answered), or a
            // previous coordinator sequenced it.
            self.counters.early_acks_late += 1;
            return;
        }
        let Some(place) = self.early.answered.get_mut(place_of(seq)) else {
            return;
        };
        if *place == seq {
            self.counters.early_acks_late += 1;
            return;
        }
        *place = seq;
        self.counters.early_acks += 1;
        self.answer_write(message, outbox);
    }
}
