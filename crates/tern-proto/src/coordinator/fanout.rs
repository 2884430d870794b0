//! Fan-out replication (`--replication fanout`) at the coordinator.
//!
//! The head sends each write it decided to every other replica at once
//! (`crate::fanout`), and every replica acknowledges it here. A write is
//! complete once every replica of the chain has: then, as a tail's
//! acknowledgement in a chain, it proves that every replica holds every
//! write up to it (each applies in seq order), so `commit_seq` may rise to
//! it, and the write completes by rule 4 (`acknowledge`). Which replicas
//! acknowledged is counted in the window slot's `acks` word
//! (`tern_wire::maps::fanout_acks`), in shared memory, so that the XDP
//! program counts by the same rules (`bpf/writes.h`).
//!
//! No replica of a fan-out holds only committed writes (a chain's tail
//! does), so reads are never sent for a replica's newest value: every read
//! is stamped with `commit_seq` and goes to any replica (rule 5), which
//! answers the newest version at or below it, or TRY_AGAIN while it has
//! not applied that far. A coordinator that starts probes every replica and
//! starts `commit_seq` at the least any of them applied.
//!
//! Early commit (`--commit early:K`): a write is answered at its K-th
//! acknowledgement (the K replicas hold every write up to it, so
//! `point_applied` rises to it), and completes at the last as before. A
//! read of a dirty key goes to the head, which holds every write any
//! replica holds, stamped with max(`commit_seq`, `point_applied`): it sees
//! every answered write and nothing only fewer than K replicas hold. A
//! coordinator that starts takes the K-th most any replica applied for
//! `point_applied`, the head's highest for the barrier (as in a chain: a
//! write answered before may be held by fewer than K now), and keeps every
//! key dirty until `commit_seq` passes it (`recovery`).
// PERFORMANCE CRITICAL PATH: once per acknowledgement.

use std::net::SocketAddrV4;

use tern_wire::Message;

use super::{FanoutAck, ShardCoordinator, ShardState};
use crate::{Outbox, Time};

impl<S: ShardState> ShardCoordinator<S> {
    /// A replica's acknowledgement of a write under fan-out: counted, and
    /// the write completed (and answered) once every replica has sent one.
    pub(super) fn acknowledge_fanout(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let header = &message.header;
        let Some(position) = self
            .config
            .chain
            .iter()
            .position(|&replica| replica == from)
        else {
            self.counters.unexpected_sender += 1;
            return;
        };
        if header.epoch.get() != self.config.epoch {
            // Sent under another chain, whose positions meant other
            // replicas; every replica acknowledges again at a new epoch.
            self.counters.acks_other_epoch += 1;
            return;
        }
        let seq = header.seq.get();
        match self
            .state
            .fanout_ack(seq, self.config.epoch, position, self.config.chain.len())
        {
            FanoutAck::Complete => self.acknowledge(now, message, outbox),
            // Early commit: answered at the K-th (`acknowledge_early`
            // learns that K replicas hold every write up to it).
            FanoutAck::Counted { acks } if self.config.fanout_quorum() == Some(acks as usize) => {
                self.counters.fanout_acks += 1;
                self.acknowledge_early(message, outbox);
            }
            FanoutAck::Counted { .. } => self.counters.fanout_acks += 1,
            FanoutAck::Duplicate => self.counters.fanout_duplicate_acks += 1,
            // Completed already, or sequenced by a coordinator before this
            // one: one replica's acknowledgement says nothing of the others,
            // so commit_seq stays.
            FanoutAck::NotInFlight => self.counters.acks_not_in_flight += 1,
        }
    }
}
