//! A replica's transactions across shards (`tern_wire::txn`): the prepared
//! ones with their locks and decided writes, the locking ones with the
//! locks their ACQUIREs took, and the outcomes of finished ones. Built
//! from records alone (ACQUIRE, PREPARE, COMMIT, ABORT), in seq order,
//! so every replica of a chain holds the same, the log replays it and a
//! snapshot carries it: a replica that becomes head decides as its
//! predecessor would have.
//!
//! The head decides by it (rule T4 of ARCHITECTURE.md): a write of a key a
//! transaction holds is refused LOCKED, as is a PREPARE that wants a key
//! another holds in a conflicting mode; every replica answers a read of a
//! key held exclusively LOCKED (its transaction may be committed already
//! at another shard: the old value would be a read from before a write
//! another reader has seen).

use std::collections::{HashMap, VecDeque};

use tern_wire::multi::Decided;
use tern_wire::txn::{PrepareRecord, TxnId, mode};

/// Finished transactions remembered (their outcome answers a RESOLVE and
/// a late COMMIT or ABORT); the oldest are forgotten first. A transaction
/// left prepared at another participant for longer than this many later
/// transactions here take to finish would be settled against a forgotten
/// outcome (ARCHITECTURE.md names the bound).
pub const FINISHED_MAX: usize = 1 << 20;

/// Where a transaction stands at this shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Unknown,
    /// Locks taken by ACQUIREs, nothing prepared.
    Acquired,
    Prepared,
    Committed,
    Aborted,
}

/// Who holds a key.
#[derive(Clone, Debug, Default)]
struct Holders {
    exclusive: Option<TxnId>,
    shared: Vec<TxnId>,
}

/// The transactions of one replica.
#[derive(Clone, Debug, Default)]
pub struct Transactions {
    pending: HashMap<TxnId, PrepareRecord>,
    locks: HashMap<Box<[u8]>, Holders>,
    /// Committed or not, and the version its writes have here (0:
    /// aborted, or unknown in a snapshot of format 3).
    finished: HashMap<TxnId, (bool, u64)>,
    /// `finished` in the order they finished, for forgetting the oldest.
    finished_order: VecDeque<TxnId>,
}

impl Transactions {
    /// Whether no key is held (the common case, checked first).
    pub fn no_locks(&self) -> bool {
        self.locks.is_empty()
    }

    /// Whether a transaction holds the key at all: nobody else writes it.
    pub fn write_blocked(&self, key: &[u8]) -> bool {
        !self.locks.is_empty() && self.locks.contains_key(key)
    }

    /// Whether a transaction holds the key exclusively: nobody reads it.
    pub fn read_blocked(&self, key: &[u8]) -> bool {
        !self.locks.is_empty()
            && self
                .locks
                .get(key)
                .is_some_and(|holders| holders.exclusive.is_some())
    }

    /// Whether `id` (None: a one-shot transaction, which holds nothing)
    /// wanting `key` in `wanted` mode conflicts with another transaction's
    /// hold.
    pub fn conflicts(&self, id: Option<TxnId>, wanted: u8, key: &[u8]) -> bool {
        let Some(holders) = self.locks.get(key) else {
            return false;
        };
        let other = |holder: &TxnId| Some(*holder) != id;
        holders.exclusive.as_ref().is_some_and(other)
            || (wanted == mode::EXCLUSIVE && holders.shared.iter().any(other))
    }

    pub fn standing(&self, id: TxnId) -> Standing {
        if let Some(record) = self.pending.get(&id) {
            return match record.acquired {
                true => Standing::Acquired,
                false => Standing::Prepared,
            };
        }
        match self.finished.get(&id) {
            Some((true, _)) => Standing::Committed,
            Some((false, _)) => Standing::Aborted,
            None => Standing::Unknown,
        }
    }

    /// The version a committed transaction's writes have here (0: not
    /// committed here, or not known).
    pub fn committed_at(&self, id: TxnId) -> u64 {
        match self.finished.get(&id) {
            Some((true, version)) => *version,
            _ => 0,
        }
    }

    /// Whether `id` is prepared here with exactly these locks (mode, key).
    pub fn prepared_with(&self, id: TxnId, locks: &[(u8, &[u8])]) -> bool {
        self.pending.get(&id).is_some_and(|record| {
            record.locks.len() == locks.len()
                && record
                    .locks
                    .iter()
                    .zip(locks)
                    .all(|(lock, (mode, key))| lock.mode == *mode && lock.key == *key)
        })
    }

    /// A prepared transaction's decided writes and answers.
    pub fn decided(&self, id: TxnId) -> Option<&Decided> {
        self.pending.get(&id).map(|record| &record.decided)
    }

    /// The locks `id` holds here (mode, key), in the order taken.
    pub fn locks_of(&self, id: TxnId) -> impl Iterator<Item = (u8, &[u8])> {
        self.pending
            .get(&id)
            .into_iter()
            .flat_map(|record| record.locks.iter().map(|lock| (lock.mode, &lock.key[..])))
    }

    /// Installs an ACQUIRE or PREPARE record: its locks (every lock the
    /// transaction holds here, replacing what its ACQUIREs took before),
    /// a PREPARE's writes kept. Only a transaction unknown here or only
    /// acquired moves on: its head refuses the rest, and a replayed log or
    /// a resent record changes nothing.
    pub fn hold(&mut self, record: PrepareRecord) {
        match self.standing(record.id) {
            Standing::Unknown => {}
            Standing::Acquired => {
                self.release(record.id);
            }
            Standing::Prepared | Standing::Committed | Standing::Aborted => return,
        }
        for lock in &record.locks {
            let holders = self.locks.entry(lock.key.clone().into()).or_default();
            if lock.mode == mode::EXCLUSIVE {
                holders.exclusive = Some(record.id);
            } else {
                holders.shared.push(record.id);
            }
        }
        self.pending.insert(record.id, record);
    }

    /// Finishes `id` (committed at `version`, or aborted: None): its locks
    /// released, its outcome remembered. An abort of a transaction never
    /// prepared here is a tombstone. Returns the prepared record, if it
    /// was prepared.
    pub fn finish(&mut self, id: TxnId, committed_at: Option<u64>) -> Option<PrepareRecord> {
        if self.finished.contains_key(&id) {
            return None;
        }
        let record = self.release(id);
        let outcome = (committed_at.is_some(), committed_at.unwrap_or(0));
        self.finished.insert(id, outcome);
        self.finished_order.push_back(id);
        while self.finished_order.len() > FINISHED_MAX {
            let oldest = self.finished_order.pop_front().expect("not empty");
            self.finished.remove(&oldest);
        }
        record
    }

    /// Lets go of every lock `id` holds; returns its record.
    fn release(&mut self, id: TxnId) -> Option<PrepareRecord> {
        let record = self.pending.remove(&id);
        for lock in record.iter().flat_map(|record| &record.locks) {
            let Some(holders) = self.locks.get_mut(&lock.key[..]) else {
                continue;
            };
            if holders.exclusive == Some(id) {
                holders.exclusive = None;
            }
            holders.shared.retain(|holder| *holder != id);
            if holders.exclusive.is_none() && holders.shared.is_empty() {
                self.locks.remove(&lock.key[..]);
            }
        }
        record
    }

    /// Transactions prepared (or acquired) here, neither committed nor
    /// aborted.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Keys held.
    pub fn locked_keys(&self) -> usize {
        self.locks.len()
    }

    /// The prepared (and acquired) transactions, for a coordinator that
    /// rebuilds its holds.
    pub fn prepared(&self) -> impl Iterator<Item = &PrepareRecord> {
        self.pending.values()
    }

    /// Appends the state for a snapshot.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.pending.len() as u64).to_le_bytes());
        for record in self.pending.values() {
            let bytes = record.encode();
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&(self.finished_order.len() as u64).to_le_bytes());
        for id in &self.finished_order {
            out.extend_from_slice(&id.encode());
            let (committed, version) = self.finished[id];
            out.push(u8::from(committed));
            out.extend_from_slice(&version.to_le_bytes());
        }
    }

    /// The state `encode` wrote, read with `take` (bytes off the front);
    /// without `phased` (snapshot format 3, before locking transactions)
    /// only if no transaction was pending, whose records lack their phase,
    /// and with commit versions unknown.
    pub fn decode<'a, E>(
        phased: bool,
        mut take: impl FnMut(usize) -> Result<&'a [u8], E>,
        malformed: impl Fn(String) -> E,
    ) -> Result<Transactions, E> {
        let u64_of = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        let mut transactions = Transactions::default();
        let pending = u64_of(take(8)?);
        if !phased && pending > 0 {
            return Err(malformed(format!(
                "{pending} transactions prepared in a snapshot of format 3: \
                 finish them with the Tern that wrote it"
            )));
        }
        for _ in 0..pending {
            let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
            let record = PrepareRecord::decode(take(len as usize)?)
                .map_err(|error| malformed(format!("a prepared transaction: {error}")))?;
            transactions.hold(record);
        }
        let finished = u64_of(take(8)?);
        for _ in 0..finished {
            let id = TxnId::decode(take(16)?)
                .map_err(|error| malformed(format!("a finished transaction: {error}")))?;
            let committed = match take(1)?[0] {
                0 => false,
                1 => true,
                other => {
                    return Err(malformed(format!(
                        "a finished transaction's outcome {other}"
                    )));
                }
            };
            let version = if phased { u64_of(take(8)?) } else { 0 };
            transactions.finish(id, committed.then_some(version));
        }
        Ok(transactions)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use tern_wire::txn::{Lock, Participant};

    use super::*;

    fn record(txn_seq: u64, locks: &[(u8, &[u8])]) -> PrepareRecord {
        PrepareRecord {
            id: TxnId {
                client_id: 1,
                txn_seq,
            },
            lease_ms: 1000,
            participants: vec![Participant {
                shard: 0,
                coordinator: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            }],
            acquired: false,
            locks: locks
                .iter()
                .map(|(mode, key)| Lock {
                    mode: *mode,
                    key: key.to_vec(),
                })
                .collect(),
            decided: Decided::default(),
        }
    }

    #[test]
    fn shared_locks_admit_readers_and_exclusive_ones_nobody() {
        let mut transactions = Transactions::default();
        let first = record(1, &[(mode::SHARED, b"a"), (mode::EXCLUSIVE, b"b")]);
        let (one, two) = (first.id, record(2, &[]).id);
        transactions.hold(first);
        assert!(transactions.write_blocked(b"a") && !transactions.read_blocked(b"a"));
        assert!(transactions.write_blocked(b"b") && transactions.read_blocked(b"b"));
        assert!(!transactions.conflicts(Some(two), mode::SHARED, b"a"));
        assert!(transactions.conflicts(Some(two), mode::EXCLUSIVE, b"a"));
        assert!(transactions.conflicts(None, mode::EXCLUSIVE, b"a"));
        assert!(transactions.conflicts(Some(two), mode::SHARED, b"b"));
        assert!(!transactions.conflicts(Some(one), mode::EXCLUSIVE, b"b"));
        assert!(!transactions.conflicts(Some(one), mode::EXCLUSIVE, b"a"));
        assert_eq!(transactions.standing(one), Standing::Prepared);
        assert!(transactions.finish(one, Some(5)).is_some());
        assert!(transactions.no_locks());
        assert_eq!(transactions.standing(one), Standing::Committed);
        // A second outcome changes nothing.
        assert!(transactions.finish(one, None).is_none());
        assert_eq!(transactions.standing(one), Standing::Committed);
        // An abort of one never prepared is a tombstone.
        transactions.finish(two, None);
        assert_eq!(transactions.standing(two), Standing::Aborted);
        transactions.hold(record(2, &[(mode::EXCLUSIVE, b"c")]));
        assert!(!transactions.write_blocked(b"c"), "a tombstone refuses it");
    }

    #[test]
    fn acquired_locks_are_replaced_by_the_prepare_and_released_by_the_end() {
        let mut transactions = Transactions::default();
        let acquired = PrepareRecord {
            acquired: true,
            ..record(1, &[(mode::SHARED, b"a"), (mode::EXCLUSIVE, b"b")])
        };
        let id = acquired.id;
        transactions.hold(acquired);
        assert_eq!(transactions.standing(id), Standing::Acquired);
        assert!(transactions.read_blocked(b"b") && transactions.write_blocked(b"a"));
        // A later ACQUIRE's record holds every lock so far.
        transactions.hold(PrepareRecord {
            acquired: true,
            ..record(1, &[(mode::EXCLUSIVE, b"a"), (mode::EXCLUSIVE, b"b")])
        });
        assert!(transactions.read_blocked(b"a"));
        assert_eq!(transactions.locked_keys(), 2);
        // The PREPARE's record replaces them (here: `b` only read after all).
        transactions.hold(record(1, &[(mode::EXCLUSIVE, b"a"), (mode::SHARED, b"b")]));
        assert_eq!(transactions.standing(id), Standing::Prepared);
        assert!(!transactions.read_blocked(b"b") && transactions.read_blocked(b"a"));
        // Prepared, it takes no other record.
        transactions.hold(PrepareRecord {
            acquired: true,
            ..record(1, &[(mode::EXCLUSIVE, b"c")])
        });
        assert!(!transactions.write_blocked(b"c"));
        assert_eq!(transactions.pending(), 1);
        transactions.finish(id, None);
        assert!(transactions.no_locks());
        assert_eq!(transactions.pending(), 0);
    }

    #[test]
    fn the_state_survives_a_snapshot() {
        let mut transactions = Transactions::default();
        transactions.hold(record(1, &[(mode::SHARED, b"a")]));
        transactions.hold(record(2, &[(mode::SHARED, b"a"), (mode::EXCLUSIVE, b"z")]));
        transactions.finish(record(3, &[]).id, Some(7));
        let mut bytes = Vec::new();
        transactions.encode(&mut bytes);
        let mut rest = &bytes[..];
        let restored = Transactions::decode(
            true,
            |len| {
                let (taken, left) = rest.split_at_checked(len).ok_or("short")?;
                rest = left;
                Ok::<_, &str>(taken)
            },
            |_| "malformed",
        )
        .unwrap();
        assert!(rest.is_empty());
        assert_eq!(restored.pending(), 2);
        assert!(restored.read_blocked(b"z") && !restored.read_blocked(b"a"));
        assert_eq!(restored.standing(record(3, &[]).id), Standing::Committed);
        assert_eq!(restored.committed_at(record(3, &[]).id), 7);
    }
}
