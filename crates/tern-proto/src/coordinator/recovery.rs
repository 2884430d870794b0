//! Recovery of a coordinator that starts a shard afresh (DESIGN rule 8):
//! probe head and tail, resume sequencing above the chain, keep every key
//! dirty until the tail has caught up.

use std::net::SocketAddrV4;

use tern_wire::Header;

use super::{ShardCoordinator, ShardState};

/// Recovery of a coordinator that starts against a chain that may already
/// hold writes (DESIGN rule 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Asking head and tail how far they got; writes are refused meanwhile.
    Probing {
        head_highest: Option<u64>,
        tail_applied: Option<u64>,
    },
    /// Sequencing resumed; every key stays dirty until the tail has
    /// acknowledged everything the head had seen.
    Draining {
        target: u64,
    },
    Done,
}

impl<S: ShardState> ShardCoordinator<S> {
    pub(super) fn learn_progress(&mut self, from: SocketAddrV4, report: &Header) {
        let Recovery::Probing {
            mut head_highest,
            mut tail_applied,
        } = self.recovery
        else {
            return;
        };
        if from == self.config.head() {
            head_highest = Some(report.highest_seen());
        }
        if from == self.config.tail() {
            tail_applied = Some(report.seq.get());
        }
        self.recovery = Recovery::Probing {
            head_highest,
            tail_applied,
        };
        let (Some(highest), Some(applied)) = (head_highest, tail_applied) else {
            return;
        };
        // DESIGN rule 8: sequence above anything the chain has seen.
        self.first_seq = highest + 1;
        self.oldest_in_flight = highest + 1;
        self.scanned_up_to = highest + 1;
        self.state.set_next_seq(highest + 1);
        self.state.advance_commit_seq(applied);
        if applied >= highest {
            self.finish_recovery();
        } else {
            self.recovery = Recovery::Draining { target: highest };
        }
    }

    pub(super) fn finish_recovery(&mut self) {
        self.recovery = Recovery::Done;
        self.state.set_all_dirty(false);
    }
}
