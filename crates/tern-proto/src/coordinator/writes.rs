//! Writes: sequencing (rule 1), the dirty table (rule 3), acknowledgements
//! in the order of rule 4, and resends of writes in flight.
// PERFORMANCE CRITICAL PATH: once per write and per acknowledgement.

use std::net::SocketAddrV4;

use tern_wire::maps::WINDOW_MULTI;
use tern_wire::{Header, Message, Op, Status, dirty_index, flags, key_hash, multi};
use zerocopy::FromBytes;

use super::recovery::Recovery;
use super::txn::TxnPlan;
use super::{INFLIGHT_WRITES_MAX, ShardCoordinator, ShardState};
use crate::{Outbox, Time};

/// Handles the tail's acknowledgement of `seq` in the order of DESIGN rule 4:
/// first advance `commit_seq`, then lower the dirty count; the caller replies
/// to the client only afterwards. Returns whether `seq` was in flight here.
pub fn complete_write(state: &impl ShardState, seq: u64) -> bool {
    complete_write_keeping(state, seq, &mut Vec::new())
}

/// `complete_write`, leaving in `kept` the datagram of a write that user
/// space handles (a MULTI's, a transaction's; otherwise it is left empty).
fn complete_write_keeping(state: &impl ShardState, seq: u64, kept: &mut Vec<u8>) -> bool {
    state.advance_commit_seq(seq);
    kept.clear();
    // A MULTI's entries are read from its datagram while `seq` still holds
    // its window slot (nobody can reuse the slot before `end_write`).
    let multi = match state.in_flight_index(seq) {
        Some(index) if index & WINDOW_MULTI != 0 => {
            state.copy_in_flight(seq, kept);
            multi_dirty_indices(kept)
        }
        _ => None,
    };
    match state.end_write(seq) {
        Some(index) if index & WINDOW_MULTI != 0 => {
            for index in multi.unwrap_or_default() {
                state.decrement_dirty(index);
            }
            true
        }
        Some(index) => {
            state.decrement_dirty(index);
            true
        }
        None => false,
    }
}

/// The dirty entries a MULTI datagram counts, one per item (an entry
/// counted twice when two items share it); None when it is not one.
fn multi_dirty_indices(datagram: &[u8]) -> Option<Vec<u32>> {
    let message = Message::decode(datagram).ok()?;
    if message.header.op() != Op::Multi {
        return None;
    }
    let items = multi::decode_items(message.value).ok()?;
    Some(
        items
            .iter()
            .map(|item| dirty_index(key_hash(item.key)))
            .collect(),
    )
}

impl<S: ShardState> ShardCoordinator<S> {
    pub(super) fn sequence_write(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let header = &message.header;
        if matches!(self.recovery, Recovery::Probing { .. }) {
            self.counters.refused_recovering += 1;
            self.refuse(from, header, (Status::TryAgain, 0), outbox);
            return;
        }
        // A MULTI counts every item's key dirty: its items must decode,
        // start with the header's key, and all be of slots served here. A
        // transaction's request must decode too.
        let planned = match header.op() {
            Op::Multi => self.multi_items(message).map(|items| (Some(items), None)),
            Op::Prepare | Op::Acquire | Op::Commit | Op::Abort | Op::Resolve => {
                self.txn_plan(message).map(|plan| (None, Some(plan)))
            }
            _ => Ok((None, None)),
        };
        let (items, plan) = match planned {
            Ok(planned) => planned,
            Err(refusal) => {
                if refusal.0 == Status::Malformed {
                    self.counters.malformed_transactions += 1;
                }
                self.refuse(from, header, refusal, outbox);
                return;
            }
        };
        // User space reads the datagrams of these back at their
        // acknowledgement (the kernel hands those up).
        let index = match (&items, &plan) {
            (None, None) => dirty_index(header.key_hash.get()),
            _ => WINDOW_MULTI,
        };
        // DESIGN rule 1: this is the shard's only serialization point. A
        // PREPARE's (ACQUIRE's) seq is reserved as its hold is taken, all
        // or nothing.
        let seq = match &plan {
            Some(TxnPlan::Prepare(held)) => self.sequence_held(held),
            _ => self.state.begin_write().ok_or_else(|| {
                self.counters.window_full += 1;
                (Status::TryAgain, 0)
            }),
        };
        let seq = match seq {
            Ok(seq) => seq,
            Err(refusal) => {
                self.refuse(from, header, refusal, outbox);
                return;
            }
        };
        // DESIGN rule 3: the key is dirty before the write can reach anyone
        // (a hold's keys were counted as it was taken).
        match (&items, &plan) {
            (Some(indices), _) => {
                for &index in indices {
                    self.state.increment_dirty(index);
                }
            }
            (None, Some(_)) => {}
            (None, None) => self.state.increment_dirty(index),
        }
        let mut forwarded = *header;
        forwarded.set_reply_addr(from);
        forwarded.flags &= flags::WRITE_OPTIONS;
        forwarded.seq.set(seq);
        forwarded.commit_seq.set(self.state.commit_seq());
        self.counters.writes += 1;
        // Forwarded whole, its extensions too (a deadline asked for).
        outbox.push_with(
            self.config.head(),
            &forwarded,
            &message.extensions,
            message.key,
            message.value,
        );
        let sent = outbox.iter().last().expect("just pushed").1;
        self.state.record_sent(seq, index, sent, now);
    }

    /// The dirty entries of a MULTI's items, or the refusal it gets.
    fn multi_items(&mut self, message: &Message<'_>) -> Result<Vec<u32>, (Status, u64)> {
        // Refused to the client, as a failed CAS is (not a datagram that
        // failed to decode: no drop counter).
        let items = multi::decode_items(message.value).map_err(|_| (Status::Malformed, 0))?;
        if items[0].key != message.key {
            return Err((Status::Malformed, 0));
        }
        let mut indices = Vec::with_capacity(items.len());
        for item in &items {
            let hash = key_hash(item.key);
            if let Some(refusal) = self.refusal_for_slot(Op::Multi, hash) {
                return Err(refusal);
            }
            indices.push(dirty_index(hash));
        }
        Ok(indices)
    }

    pub(super) fn acknowledge(&mut self, now: Time, message: &Message<'_>, outbox: &mut Outbox) {
        let header = &message.header;
        let seq = header.seq.get();
        // DESIGN rule 4: commit_seq first, dirty count second (a
        // transaction's hold too), reply last.
        // Read while `seq` still holds its window place.
        let answered = self.state.answered_early(seq);
        let mut kept = std::mem::take(&mut self.resend_buffer);
        let completed = complete_write_keeping(&self.state, seq, &mut kept);
        // Only the acknowledgement that completed the request changes its
        // hold (as in the kernel): a duplicate finds it done.
        if completed && !kept.is_empty() {
            self.acknowledged_txn(now, &kept, header.status());
        }
        self.resend_buffer = kept;
        if completed {
            self.counters.acks += 1;
        } else {
            // A duplicate, or a write sequenced by a previous coordinator.
            self.counters.acks_not_in_flight += 1;
        }
        if let Recovery::Draining { target } = self.recovery
            && self.state.commit_seq() >= target
        {
            self.finish_recovery();
        }
        if answered && completed {
            // Answered at the commit point's acknowledgement.
            return;
        }
        self.answer_write(message, outbox);
    }

    /// Turns an acknowledgement into its write's reply (when the write has
    /// a client to answer).
    pub(super) fn answer_write(&self, message: &Message<'_>, outbox: &mut Outbox) {
        let header = &message.header;
        if header.reply_port.get() != 0 {
            // The acknowledgement turned into the reply as it is, as the
            // kernel path does it in place.
            let mut reply = *header;
            reply.op = Op::Reply as u8;
            reply.flags &= flags::REPLY_OPTIONS;
            outbox.push_with(
                header.reply_addr(),
                &reply,
                &message.extensions,
                message.key,
                message.value,
            );
        }
    }

    /// Sends `seq` to the head again if it is in flight and was last sent
    /// before `sent_before`: the datagram kept in the window, at the
    /// current epoch (it may have been sequenced before a reconfiguration).
    pub(super) fn resend(
        &mut self,
        seq: u64,
        sent_before: Time,
        now: Time,
        outbox: &mut Outbox,
    ) -> bool {
        if !self
            .state
            .resend(seq, sent_before, now, &mut self.resend_buffer)
        {
            return false;
        }
        if let Ok((header, _)) = Header::mut_from_prefix(&mut self.resend_buffer[..]) {
            header.epoch.set(self.config.epoch);
        }
        self.counters.resent += 1;
        outbox.push_encoded(self.config.head(), &self.resend_buffer);
        true
    }

    pub(super) fn resend_range(&mut self, now: Time, first: u64, last: u64, outbox: &mut Outbox) {
        let last = last.min(first.saturating_add(INFLIGHT_WRITES_MAX - 1));
        for seq in first..=last {
            if self.resend(seq, Time::MAX, now, outbox) {
                continue;
            }
            if seq < self.first_seq
                || (seq <= self.state.commit_seq() && self.config.chain.len() == 1)
            {
                // Assigned by a coordinator that is gone and never applied by
                // the head (the head asks for it), or acknowledged once and
                // lost since by the chain's only replica (it restarted
                // without durable state; nobody else can have it): fill it
                // with nothing, so that the shard writes again. A healthy
                // head never asks for a committed seq (it applied every one
                // before the tail); in a longer chain its successors still
                // hold that write, so filling it would make this head serve
                // stale values: it is left waiting instead.
                if seq < self.first_seq {
                    self.counters.noop_fills += 1;
                } else {
                    self.counters.lost_fills += 1;
                }
                let mut noop = Header::new(Op::Noop, self.config.shard, self.config.epoch);
                noop.seq.set(seq);
                noop.commit_seq.set(self.state.commit_seq());
                outbox.push(self.config.head(), &noop, &[], &[]);
            }
        }
    }
}
