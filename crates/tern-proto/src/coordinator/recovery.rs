//! Recovery of a coordinator that starts a shard afresh (DESIGN rule 8):
//! probe head and tail, resume sequencing above the chain, keep every key
//! dirty until the tail has caught up.

use std::net::SocketAddrV4;

use tern_wire::Message;
use tern_wire::txn::PrepareRecord;

use super::{ShardCoordinator, ShardState};
use crate::Time;

/// Recovery of a coordinator that starts against a chain that may already
/// hold writes (DESIGN rule 8), and transactions prepared under the
/// coordinator before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Asking head and tail how far they got, and the head which
    /// transactions it holds prepared; writes are refused meanwhile.
    Probing {
        head_highest: Option<u64>,
        tail_applied: Option<u64>,
        /// How many transactions the head holds prepared (each reported
        /// by a TXN_REPORT, whose holds are taken as they come).
        head_prepared: Option<u64>,
        /// Fan-out: the replicas that reported (bit by position), and the
        /// least any of them applied; `tail_applied` once all have.
        reported: u8,
        least_applied: u64,
    },
    /// Sequencing resumed; every key stays dirty until the tail has
    /// acknowledged everything the head had seen.
    Draining {
        target: u64,
    },
    Done,
}

impl Recovery {
    pub(super) const PROBING: Recovery = Recovery::Probing {
        head_highest: None,
        tail_applied: None,
        head_prepared: None,
        reported: 0,
        least_applied: u64::MAX,
    };
}

impl<S: ShardState> ShardCoordinator<S> {
    pub(super) fn learn_progress(&mut self, from: SocketAddrV4, report: &Message<'_>) {
        let Recovery::Probing {
            mut head_highest,
            mut tail_applied,
            mut head_prepared,
            mut reported,
            mut least_applied,
        } = self.recovery
        else {
            return;
        };
        let header = &report.header;
        if from == self.config.head() {
            head_highest = Some(header.highest_seen());
            // A replica that predates transactions sends no count.
            head_prepared = Some(match <[u8; 8]>::try_from(report.value) {
                Ok(count) => u64::from_le_bytes(count),
                Err(_) => 0,
            });
        }
        if self.config.fanout {
            // Every replica of a fan-out acknowledges: commit_seq starts at
            // the least any applied.
            if let Some(position) = self.config.chain.iter().position(|&r| r == from) {
                reported |= 1 << position;
                least_applied = least_applied.min(header.seq.get());
            }
            if reported == tern_wire::maps::fanout_acks::all(self.config.chain.len()) {
                tail_applied = Some(least_applied);
            }
        } else if from == self.config.tail() {
            tail_applied = Some(header.seq.get());
        }
        if from == self.config.commit_point() {
            self.state.learn_point(header.seq.get());
        }
        self.recovery = Recovery::Probing {
            head_highest,
            tail_applied,
            head_prepared,
            reported,
            least_applied,
        };
        self.finish_probing();
    }

    /// A TXN_REPORT from the head: the transaction's hold taken again.
    pub(super) fn learn_prepared(&mut self, now: Time, report: &Message<'_>) {
        if !matches!(self.recovery, Recovery::Probing { .. }) {
            return;
        }
        if let Ok(record) = PrepareRecord::decode(report.value) {
            self.hold_again(now, &record);
        }
        self.finish_probing();
    }

    /// Resumes sequencing once the head, the tail and every transaction
    /// the head holds have answered.
    fn finish_probing(&mut self) {
        let Recovery::Probing {
            head_highest: Some(highest),
            tail_applied: Some(applied),
            head_prepared: Some(prepared),
            ..
        } = self.recovery
        else {
            return;
        };
        if self.holds_count() < prepared {
            return;
        }
        // DESIGN rule 8: sequence above anything the chain has seen.
        self.first_seq = highest + 1;
        self.oldest_in_flight = highest + 1;
        self.scanned_up_to = highest + 1;
        self.state.set_next_seq(highest + 1);
        self.state.advance_commit_seq(applied);
        super::early::recovered(&self.state, highest);
        // A fan-out's reads are stamped, whatever is dirty (and its writes
        // of coordinators before this one complete nowhere: a replica's
        // acknowledgement of one says nothing of the others).
        if applied >= highest || self.config.fanout {
            self.finish_recovery();
        } else {
            self.recovery = Recovery::Draining { target: highest };
        }
    }

    /// Whether the probes have answered (sequencing resumed).
    pub(super) fn probed(&self) -> bool {
        !matches!(self.recovery, Recovery::Probing { .. })
    }

    pub(super) fn finish_recovery(&mut self) {
        self.recovery = Recovery::Done;
        self.state.set_all_dirty(false);
    }
}
