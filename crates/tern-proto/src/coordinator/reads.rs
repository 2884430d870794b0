//! Reads: where a read goes (DESIGN rules 3-5), shared by every path.
// PERFORMANCE CRITICAL PATH: once per read.

use std::net::SocketAddrV4;

use tern_wire::{Message, Status, dirty_index, flags};

use super::{ShardCoordinator, ShardState};
use crate::Outbox;

/// Where a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRoute {
    /// The key may have writes in flight: only the tail (under early
    /// commit, the commit point) is sure to hold every write the
    /// coordinator has acknowledged, so the read goes there.
    Tail,
    /// The key is clean: any replica can answer, at this stamp (rule 5).
    Any { stamp: u64 },
}

/// The read decision, shared by every coordinator path.
///
/// The dirty count is read before `commit_seq`. An acknowledgement advances
/// `commit_seq` before it lowers the dirty count (rule 4), so a read that sees
/// the count already lowered also sees the advanced `commit_seq`. Reading them
/// the other way round could pair an old stamp with a clean key.
pub fn route_read(state: &impl ShardState, key_hash: u32) -> ReadRoute {
    let index = dirty_index(key_hash);
    if state.all_dirty() || state.dirty_count(index) > 0 {
        return ReadRoute::Tail;
    }
    ReadRoute::Any {
        stamp: state.commit_seq(),
    }
}

impl<S: ShardState> ShardCoordinator<S> {
    pub(super) fn forward_read(
        &mut self,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let mut header = message.header;
        header.set_reply_addr(from);
        // Under fan-out no replica holds only committed writes: every read
        // is stamped (`coordinator::fanout`).
        if self.config.fanout && !self.probed() {
            // No stamp yet that every replica holds.
            self.counters.refused_recovering += 1;
            self.refuse(from, &header, (Status::TryAgain, 0), outbox);
            return;
        }
        // Configured to commit early, even once its chain shrank to K:
        // answered writes may still be beyond commit_seq.
        let route = if self.config.fanout && self.config.early_commit == 0 {
            ReadRoute::Any {
                stamp: self.state.commit_seq(),
            }
        } else {
            route_read(&self.state, header.key_hash.get())
        };
        let to = match route {
            ReadRoute::Tail => {
                if self.config.early_commit > 0 && !super::early::point_ready(&self.state) {
                    // The commit point may lack a write answered before it
                    // became one; asked again, it has caught up.
                    self.counters.reads_point_behind += 1;
                    self.refuse(from, &header, (Status::TryAgain, 0), outbox);
                    return;
                }
                self.counters.reads_tail += 1;
                if self.config.fanout {
                    // Fan-out, early: the head, stamped with what K hold
                    // (`coordinator::fanout`).
                    let stamp = self.state.commit_seq().max(self.state.point_applied());
                    header.flags &= !flags::TAIL_READ;
                    header.seq.set(stamp);
                    header.commit_seq.set(stamp);
                } else {
                    header.flags |= flags::TAIL_READ;
                    header.commit_seq.set(self.state.commit_seq());
                }
                // The tail, unless the shard commits early.
                self.config.commit_point()
            }
            ReadRoute::Any { stamp } => {
                self.counters.reads_any += 1;
                header.flags &= !flags::TAIL_READ;
                header.seq.set(stamp);
                header.commit_seq.set(stamp);
                let turn = self.state.next_replica() % self.config.chain.len() as u64;
                self.config.chain[turn as usize]
            }
        };
        outbox.push(to, &header, message.key, &[]);
    }
}
