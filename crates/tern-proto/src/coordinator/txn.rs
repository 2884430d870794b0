//! Transactions across shards at their coordinators (`tern_wire::txn`):
//! the holds a prepared transaction keeps on its written keys' dirty
//! entries, and the sweep that settles a transaction whose client went
//! away.
//!
//! A PREPARE counts the keys it will write dirty when it is sequenced
//! (DESIGN rule 3), and they stay dirty, past the PREPARE's own
//! acknowledgement, until the transaction's COMMIT or ABORT is
//! acknowledged: from the moment its writes may be decided (at another
//! shard, the transaction may commit before this one hears of it) reads of
//! them go to the tail, which holds the lock and answers LOCKED until the
//! COMMIT is applied, and the writes' visibility never depends on a read's
//! stamp. The hold is the transaction's, named by its id: every exit (a
//! refused PREPARE, a COMMIT, an ABORT, a RESOLVE that finds it settled)
//! releases it once, resent requests never take it twice.
//!
//! A locking transaction's ACQUIREs take its hold before its PREPARE (its
//! keys' hashes, for migrations, and its lease; nothing dirty, since
//! nothing is decided), and its PREPARE adds the dirty entries of the keys
//! it writes.
//!
//! The holds live in the shard's shared hold table ([`crate::holds`]), so
//! that the XDP program takes and releases them too (bpf/txn.h, the same
//! rules); this module decides, for user space, what a request takes and
//! what an acknowledgement releases.
//!
//! A hold whose lease runs out (the client sent nothing more in time: no
//! COMMIT or ABORT, or no PREPARE after its ACQUIREs) is handed to the
//! process's [`super::settle::Settler`], which asks every participant and
//! finishes the transaction the one way they allow.

use std::collections::HashMap;
use std::time::Duration;

use tern_wire::txn::{
    Participant, Prepare, PrepareRecord, TxnId, decode_participants, encode_participants, mode,
};
use tern_wire::{Message, Op, Status, key_hash};

use super::{ShardCoordinator, ShardState};
use crate::Time;
use crate::holds::{HoldAck, HoldRefusal, HoldRequest};

/// The hold a PREPARE or ACQUIRE takes (or adds to its transaction's).
#[derive(Clone, Debug)]
pub(super) struct Held {
    id: TxnId,
    /// Each key's hash, and whether its dirty entry counts (a key its
    /// PREPARE writes: decided, exclusive).
    keys: Vec<(u32, bool)>,
    lease_ms: u32,
    /// Encoded as a PREPARE carries them.
    participants: Vec<u8>,
    /// The lease's start, when taken again from the head's report.
    prepared_at: Option<Time>,
}

impl Held {
    /// The hold of a transaction with these locks (mode, key); its
    /// exclusive keys dirty when it has `decided` writes (prepared).
    fn of<'k>(
        id: TxnId,
        locks: impl Iterator<Item = (u8, &'k [u8])>,
        decided: bool,
        participants: &[Participant],
        lease_ms: u32,
        prepared_at: Option<Time>,
    ) -> Held {
        let keys = locks
            .map(|(wanted, key)| (key_hash(key), decided && wanted == mode::EXCLUSIVE))
            .collect();
        Held {
            id,
            keys,
            lease_ms,
            participants: encode_participants(participants),
            prepared_at,
        }
    }

    fn request(&self) -> HoldRequest<'_> {
        HoldRequest {
            id: self.id,
            keys: &self.keys,
            lease_ms: self.lease_ms,
            participants: &self.participants,
            prepared_at: self.prepared_at,
        }
    }
}

/// What the sweep knows of the holds besides the shared table.
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// When each hold was last handed to the settler.
    settling_since: HashMap<TxnId, Time>,
    /// Transactions whose lease ran out, for the settler.
    to_settle: Vec<(TxnId, Vec<Participant>)>,
    /// Holds past their lease at the last sweep.
    in_doubt: u64,
}

/// What a transaction request does at its coordinator, decided before it
/// is sequenced.
#[derive(Debug)]
pub(super) enum TxnPlan {
    /// A PREPARE or ACQUIRE: the hold it takes, or adds to its
    /// transaction's (what it holds already counted once).
    Prepare(Held),
    /// A COMMIT, ABORT or RESOLVE (its transaction's id decoded).
    Finish,
}

/// What a transaction request's acknowledgement does to its hold, the
/// status being the head's decision: a yes (re)starts the lease, anything
/// that says the transaction is settled here releases the hold. `taken_here`:
/// the acknowledged request is the one that took the hold. The same rule
/// as bpf/txn.h's `hold_ack_action`.
pub fn hold_ack(op: Op, status: Status, taken_here: bool) -> HoldAck {
    match (op, status) {
        // Its client is still at it: the lease runs again.
        (Op::Prepare | Op::Acquire, Status::Ok) => HoldAck::Renew,
        (Op::Resolve, Status::TxnPrepared) => HoldAck::Start,
        // A PREPARE (ACQUIRE) the head refused as malformed decided
        // nothing: the hold goes if this one took it, and stays if it is
        // another of a transaction that holds there already. So does a
        // COMMIT refused for a transaction that only acquired.
        (Op::Prepare | Op::Acquire, Status::Malformed) if !taken_here => HoldAck::Start,
        (Op::Commit, Status::Malformed) => HoldAck::Start,
        // Refusals a coordinator answers itself never reach here; every
        // other answer is the head's: the transaction is not (or no
        // longer) prepared there.
        _ => HoldAck::Release,
    }
}

impl<S: ShardState> ShardCoordinator<S> {
    /// The plan of a transaction request, or its refusal: its value must
    /// decode and a PREPARE's items be of slots served here (checked as a
    /// single key's request is).
    pub(super) fn txn_plan(&mut self, message: &Message<'_>) -> Result<TxnPlan, (Status, u64)> {
        let malformed = (Status::Malformed, 0);
        let op = message.header.op();
        if !matches!(op, Op::Prepare | Op::Acquire) {
            // Addressed to the shard: no key, the value exactly an id (as
            // the head checks).
            if !message.key.is_empty() {
                return Err(malformed);
            }
            TxnId::decode(message.value).map_err(|_| malformed)?;
            return Ok(TxnPlan::Finish);
        }
        let prepare = Prepare::decode(message.value).map_err(|_| malformed)?;
        if prepare.items[0].key != message.key {
            return Err(malformed);
        }
        for item in &prepare.items {
            if let Some(refusal) = self.refusal_for_slot(op, key_hash(item.key)) {
                return Err(refusal);
            }
        }
        let held = Held::of(
            prepare.id,
            prepare.locks().into_iter(),
            op == Op::Prepare,
            &prepare.participants,
            prepare.lease_ms,
            None,
        );
        Ok(TxnPlan::Prepare(held))
    }

    /// Takes again the hold of a transaction the head reports prepared (a
    /// coordinator starting afresh, DESIGN rule 8): its lease runs from
    /// now.
    pub(super) fn hold_again(&mut self, now: Time, record: &PrepareRecord) {
        let locks = record.locks.iter().map(|lock| (lock.mode, &lock.key[..]));
        let held = Held::of(
            record.id,
            locks,
            !record.acquired,
            &record.participants,
            record.lease_ms,
            Some(now),
        );
        // Slots were checked by the head when it prepared; a full bucket
        // leaves the hold out (the lease settles nothing then, the
        // transaction's own client or another participant's settler does).
        let taken = self
            .state
            .holds()
            .take(&self.state, &held.request(), || Some(0));
        if taken.is_err() {
            self.counters.holds_full += 1;
        }
    }

    pub(super) fn holds_count(&self) -> u64 {
        self.state.holds().count()
    }

    /// Sequences a PREPARE's (or ACQUIRE's) request, taking its hold: its
    /// written keys dirty before it can reach anyone (DESIGN rule 3).
    /// Added to the transaction's hold if it has one (its ACQUIREs', or a
    /// resend's): each entry counted once, the newest participants. The
    /// seq, or the refusal for the client.
    pub(super) fn sequence_held(&mut self, held: &Held) -> Result<u64, (Status, u64)> {
        let try_again = (Status::TryAgain, self.map_version);
        match self
            .state
            .holds()
            .take(&self.state, &held.request(), || self.state.begin_write())
        {
            Ok(seq) => Ok(seq),
            // Its keys' union is more than a hold names, and more than the
            // head locks: the head refuses it TOO_LARGE, whose
            // acknowledgement releases what the transaction holds here.
            Err(HoldRefusal::TooManyKeys) => self.state.begin_write().ok_or_else(|| {
                self.counters.window_full += 1;
                try_again
            }),
            Err(HoldRefusal::WindowFull) => {
                self.counters.window_full += 1;
                Err(try_again)
            }
            Err(HoldRefusal::NotServed) => {
                self.counters.held_frozen += 1;
                Err(try_again)
            }
            Err(HoldRefusal::Full) => {
                self.counters.holds_full += 1;
                Err(try_again)
            }
        }
    }

    /// After the acknowledgement of a transaction request (its datagram
    /// `kept`, as sequenced), with the status the head decided
    /// ([`hold_ack`]).
    pub(super) fn acknowledged_txn(&mut self, now: Time, kept: &[u8], status: Status) {
        let Ok(message) = Message::decode(kept) else {
            return;
        };
        let seq = message.header.seq.get();
        let op = message.header.op();
        let id = match op {
            Op::Prepare | Op::Acquire => Prepare::decode(message.value).map(|prepare| prepare.id),
            Op::Commit | Op::Abort | Op::Resolve => TxnId::decode(message.value),
            _ => return,
        };
        let Ok(id) = id else { return };
        self.state
            .holds()
            .acknowledged(&self.state, id, seq, now, |taken_here| {
                hold_ack(op, status, taken_here)
            });
    }

    /// Hands the transactions whose lease ran out (again, after another
    /// lease, while they stay unsettled) to the settler.
    pub(super) fn sweep_holds(&mut self, now: Time) {
        let holds = self.state.holds().snapshot();
        let settling = &mut self.holds.settling_since;
        settling.retain(|id, _| holds.iter().any(|held| held.id == *id));
        self.holds.in_doubt = 0;
        for held in holds {
            let Some(prepared_at) = held.prepared_at else {
                continue;
            };
            let lease = Duration::from_millis(u64::from(held.lease_ms));
            if now.since(prepared_at) >= lease {
                self.holds.in_doubt += 1;
            }
            let since = settling.get(&held.id).copied().unwrap_or(prepared_at);
            if now.since(since) >= lease {
                settling.insert(held.id, now);
                match decode_participants(&held.participants) {
                    Ok(participants) => self.holds.to_settle.push((held.id, participants)),
                    // Written by this coordinator or by the kernel from a
                    // PREPARE it checked: never seen, but counted.
                    Err(_) => self.counters.holds_unreadable += 1,
                }
            }
        }
    }

    /// The transactions to settle now.
    pub(super) fn take_to_settle(&mut self) -> Vec<(TxnId, Vec<Participant>)> {
        std::mem::take(&mut self.holds.to_settle)
    }

    /// Whether a transaction holds a key of a slot in `[start, end)`.
    pub(super) fn holds_any_of(&self, [start, end]: [u32; 2]) -> bool {
        self.state.holds().snapshot().iter().any(|held| {
            held.hashes
                .iter()
                .any(|&hash| (start..end).contains(&tern_wire::slot_of(hash)))
        })
    }

    /// Transactions held here, and those past their lease at the last
    /// sweep.
    pub(super) fn hold_counts(&self) -> (u64, u64) {
        (self.holds_count(), self.holds.in_doubt)
    }
}
