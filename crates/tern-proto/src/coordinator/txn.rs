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
//! A hold whose lease runs out (the client sent nothing more in time: no
//! COMMIT or ABORT, or no PREPARE after its ACQUIREs) is handed to the
//! process's [`super::settle::Settler`], which asks every participant and
//! finishes the transaction the one way they allow.

use std::collections::HashMap;
use std::time::Duration;

use tern_wire::txn::{Participant, Prepare, PrepareRecord, TxnId, mode};
use tern_wire::{Message, Op, Status, dirty_index, key_hash};

use super::{ShardCoordinator, ShardState};
use crate::Time;

/// A prepared (or preparing) transaction's hold at its coordinator.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// The dirty entries of the keys it writes, each counted once.
    exclusive: Vec<u32>,
    /// Every key's hash (a migration waits for holds on its slots).
    hashes: Vec<u32>,
    participants: Vec<Participant>,
    lease: Duration,
    /// When its latest PREPARE or ACQUIRE was acknowledged yes (the lease
    /// runs from then).
    prepared_at: Option<Time>,
    /// When it was last handed to the settler.
    settling_since: Option<Time>,
    /// The seq of the PREPARE that took it (0: taken again from the
    /// head's report).
    taken_at: u64,
}

impl Held {
    /// The hold of a transaction with these locks (mode, key); its
    /// exclusive keys dirty when it has `decided` writes (prepared).
    fn of<'k>(
        locks: impl Iterator<Item = (u8, &'k [u8])>,
        decided: bool,
        participants: Vec<Participant>,
        lease_ms: u32,
        prepared_at: Option<Time>,
    ) -> Held {
        let mut exclusive = Vec::new();
        let mut hashes = Vec::new();
        for (wanted, key) in locks {
            let hash = key_hash(key);
            hashes.push(hash);
            if decided && wanted == mode::EXCLUSIVE {
                exclusive.push(dirty_index(hash));
            }
        }
        exclusive.sort_unstable();
        exclusive.dedup();
        Held {
            exclusive,
            hashes,
            participants,
            lease: Duration::from_millis(u64::from(lease_ms)),
            prepared_at,
            settling_since: None,
            taken_at: 0,
        }
    }
}

/// The holds of one shard's coordinator.
#[derive(Debug, Default)]
pub(super) struct Holds {
    held: HashMap<TxnId, Held>,
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
    Prepare(TxnId, Held),
    /// A COMMIT, ABORT or RESOLVE (its transaction's id decoded).
    Finish,
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
            prepare.locks().into_iter(),
            op == Op::Prepare,
            prepare.participants.clone(),
            prepare.lease_ms,
            None,
        );
        Ok(TxnPlan::Prepare(prepare.id, held))
    }

    /// Takes again the hold of a transaction the head reports prepared (a
    /// coordinator starting afresh, DESIGN rule 8): its lease runs from
    /// now.
    pub(super) fn hold_again(&mut self, now: Time, record: &PrepareRecord) {
        if self.holds.held.contains_key(&record.id) {
            return;
        }
        let locks = record.locks.iter().map(|lock| (lock.mode, &lock.key[..]));
        let held = Held::of(
            locks,
            !record.acquired,
            record.participants.clone(),
            record.lease_ms,
            Some(now),
        );
        self.take_hold(record.id, held, 0);
    }

    pub(super) fn holds_count(&self) -> u64 {
        self.holds.held.len() as u64
    }

    /// Takes a PREPARE's (or ACQUIRE's) hold as it is sequenced: its
    /// written keys dirty before the PREPARE can reach anyone (DESIGN rule
    /// 3). Added to the transaction's hold if it has one (its ACQUIREs',
    /// or a resend's): each entry counted once, the newest participants.
    pub(super) fn take_hold(&mut self, id: TxnId, held: Held, seq: u64) {
        let Some(holding) = self.holds.held.get_mut(&id) else {
            for &index in &held.exclusive {
                self.state.increment_dirty(index);
            }
            self.holds.held.insert(
                id,
                Held {
                    taken_at: seq,
                    ..held
                },
            );
            return;
        };
        for index in held.exclusive {
            if let Err(at) = holding.exclusive.binary_search(&index) {
                self.state.increment_dirty(index);
                holding.exclusive.insert(at, index);
            }
        }
        for hash in held.hashes {
            if !holding.hashes.contains(&hash) {
                holding.hashes.push(hash);
            }
        }
        if held.participants.len() >= holding.participants.len() {
            holding.participants = held.participants;
        }
        holding.lease = held.lease;
    }

    /// After the acknowledgement of a transaction request (its datagram
    /// `kept`, as sequenced), with the status the head decided: a yes
    /// starts the lease, anything that says the transaction is settled
    /// here releases the hold.
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
        let taken_here = self
            .holds
            .held
            .get(&id)
            .is_some_and(|held| held.taken_at == seq);
        let settled = match (op, status) {
            (Op::Prepare | Op::Acquire, Status::Ok) | (Op::Resolve, Status::TxnPrepared) => false,
            // A PREPARE (ACQUIRE) the head refused as malformed decided
            // nothing: the hold goes if this one took it, and stays if it
            // is another of a transaction that holds there already. So
            // does a COMMIT refused for a transaction that only acquired.
            (Op::Prepare | Op::Acquire, Status::Malformed) => taken_here,
            (Op::Commit, Status::Malformed) => false,
            // Refusals a coordinator answers itself never reach here; every
            // other answer is the head's: the transaction is not (or no
            // longer) prepared there.
            _ => true,
        };
        if !settled {
            if let Some(held) = self.holds.held.get_mut(&id) {
                match (op, status) {
                    // Its client is still at it: the lease runs again.
                    (Op::Prepare | Op::Acquire, Status::Ok) => held.prepared_at = Some(now),
                    _ => {
                        held.prepared_at.get_or_insert(now);
                    }
                }
            }
            return;
        }
        if let Some(held) = self.holds.held.remove(&id) {
            for &index in &held.exclusive {
                self.state.decrement_dirty(index);
            }
        }
    }

    /// Hands the transactions whose lease ran out (again, after another
    /// lease, while they stay unsettled) to the settler.
    pub(super) fn sweep_holds(&mut self, now: Time) {
        self.holds.in_doubt = 0;
        for (id, held) in &mut self.holds.held {
            let Some(prepared_at) = held.prepared_at else {
                continue;
            };
            if now.since(prepared_at) >= held.lease {
                self.holds.in_doubt += 1;
            }
            let since = held.settling_since.unwrap_or(prepared_at);
            if now.since(since) >= held.lease {
                held.settling_since = Some(now);
                self.holds.to_settle.push((*id, held.participants.clone()));
            }
        }
    }

    /// The transactions to settle now.
    pub(super) fn take_to_settle(&mut self) -> Vec<(TxnId, Vec<Participant>)> {
        std::mem::take(&mut self.holds.to_settle)
    }

    /// Whether a transaction holds a key of a slot in `[start, end)`.
    pub(super) fn holds_any_of(&self, [start, end]: [u32; 2]) -> bool {
        self.holds.held.values().any(|held| {
            held.hashes
                .iter()
                .any(|&hash| (start..end).contains(&tern_wire::slot_of(hash)))
        })
    }

    /// Transactions held here, and those past their lease at the last
    /// sweep.
    pub(super) fn hold_counts(&self) -> (u64, u64) {
        (self.holds.held.len() as u64, self.holds.in_doubt)
    }
}
