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
        /// Fan-out: the replicas that reported (bit by position), and
        /// what each applied; `tail_applied` (the least) once all have.
        reported: u8,
        applied: [u64; tern_wire::maps::CHAIN_LEN_MAX],
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
        applied: [0; tern_wire::maps::CHAIN_LEN_MAX],
    };
}

impl<S: ShardState> ShardCoordinator<S> {
    pub(super) fn learn_progress(&mut self, from: SocketAddrV4, report: &Message<'_>) {
        let Recovery::Probing {
            mut head_highest,
            mut tail_applied,
            mut head_prepared,
            mut reported,
            mut applied,
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
                applied[position] = header.seq.get();
            }
            let replicas = self.config.chain.len();
            if reported == tern_wire::maps::fanout_acks::all(replicas) {
                tail_applied = applied[..replicas].iter().copied().min();
            }
        } else {
            if from == self.config.tail() {
                tail_applied = Some(header.seq.get());
            }
            if from == self.config.commit_point() {
                self.state.learn_point(header.seq.get());
            }
        }
        self.recovery = Recovery::Probing {
            head_highest,
            tail_applied,
            head_prepared,
            reported,
            applied,
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
            applied: ref every_applied,
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
        // Under fan-out with early commit, K replicas hold every write up
        // to the K-th most any applied; reads of dirty keys (every key,
        // while draining) wait, as in a chain, until that reaches the
        // head's highest (a write answered before may be held by fewer
        // than K now, after failures): at once when the replicas agree.
        let fanout_early = self.config.fanout && self.config.early_commit > 0;
        if fanout_early {
            let replicas = self.config.chain.len();
            let mut most = every_applied[..replicas].to_vec();
            most.sort_unstable_by(|a, b| b.cmp(a));
            let k = (self.config.early_commit as usize).min(replicas);
            self.state.learn_point(most[k - 1]);
        }
        super::early::recovered(&self.state, highest);
        // A fan-out's reads are stamped, whatever is dirty (and its writes
        // of coordinators before this one complete nowhere: a replica's
        // acknowledgement of one says nothing of the others); committing
        // early, every key stays dirty until commit_seq passes the head's
        // highest.
        let target = if self.config.fanout && !fanout_early {
            applied
        } else {
            highest
        };
        if applied >= target {
            self.finish_recovery();
        } else {
            self.recovery = Recovery::Draining { target };
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
