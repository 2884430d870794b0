//! Transactions across shards: two-phase commit decided by each shard's
//! head, one record per phase, every phase idempotent.
//!
//! A transaction is named by [`TxnId`] (its client and a number the client
//! never reuses). To each shard it touches, its client sends `Op::Prepare`
//! (the value: [`Prepare`], the transaction's items of that shard and the
//! list of every participant); the head checks the versions read, takes
//! the keys' locks (shared for keys only read, exclusive for keys written)
//! and decides the writes without applying them, all in one record
//! (`Effect::Prepare`, value [`PrepareRecord`]). A refusal (a version that
//! changed: CAS_MISMATCH; a key another transaction holds: LOCKED) is an
//! `Effect::Abort` record: the shard has voted no, for good.
//!
//! The transaction is committed exactly when every participant holds its
//! PREPARE (the parallel-commit rule: no record of the decision itself).
//! Then `Op::Commit` to each makes the decided writes visible and releases
//! the locks (`Effect::Commit`, value [`CommitRecord`]); `Op::Abort`
//! releases them without writing. `Op::Resolve` asks a participant where it
//! stands and, when it never saw the PREPARE, makes it vote no for good (an
//! abort tombstone), so that a PREPARE arriving later is refused: whoever
//! asks every participant (the client after a timeout, or a coordinator
//! whose lease on a prepared transaction ran out, the client having gone)
//! learns the one outcome, commits if and only if every participant is
//! prepared or committed, and aborts otherwise.
//!
//! COMMIT, ABORT and RESOLVE are addressed to a shard, not a key
//! (`op_class::ANY_SLOT`): their value is the [`TxnId`] alone, their key
//! empty.
//!
//! A locking (no-wait 2PL) transaction takes its locks as it reads:
//! `Op::Acquire` (the value a [`Prepare`] of GET items, `FOR_UPDATE` for an
//! exclusive lock) locks the keys and reads them in one record
//! (`Effect::Acquire`, a [`PrepareRecord`] with `acquired` set and no
//! writes), or, when another transaction holds one, is refused LOCKED and
//! aborts the transaction at that shard (no waiting, so no deadlock). Its
//! PREPARE later adds the writes to the locks it holds (its CHECKs then
//! cannot fail), and it commits as any other; a shard where it only
//! acquired is no participant that can commit, so RESOLVE aborts it
//! there.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::multi::{self, Decided, Item, MultiError, Reader, kind};
use crate::{KEY_LEN_MAX, VALUE_LEN_MAX};

/// Most shards one transaction spans.
pub const PARTICIPANTS_MAX: usize = 16;
/// Bounds of a transaction's lease: how long after its PREPARE is
/// acknowledged its coordinator waits for the COMMIT or ABORT before it
/// settles the transaction itself.
pub const LEASE_MS_MIN: u32 = 50;
pub const LEASE_MS_MAX: u32 = 60_000;
/// The lease a client asks for unless told otherwise.
pub const LEASE_MS_DEFAULT: u32 = 1000;

/// Bytes of an encoded [`TxnId`]: the value of COMMIT, ABORT and RESOLVE.
pub const TXN_ID_LEN: usize = 16;

/// A lock's mode.
pub mod mode {
    /// The key is only read: other transactions may read it too, nobody
    /// writes it.
    pub const SHARED: u8 = 1;
    /// The key is written: nobody else reads or writes it.
    pub const EXCLUSIVE: u8 = 2;

    /// The lock an item of this kind (`multi::kind`) and flags wants.
    pub const fn of(kind: u8, flags: u8) -> u8 {
        match kind {
            super::kind::GET if flags & super::multi::item_flags::FOR_UPDATE != 0 => EXCLUSIVE,
            super::kind::CHECK | super::kind::GET => SHARED,
            _ => EXCLUSIVE,
        }
    }
}

/// A transaction's name: its client and a number it never uses twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId {
    pub client_id: u64,
    pub txn_seq: u64,
}

impl TxnId {
    pub fn encode(&self) -> [u8; TXN_ID_LEN] {
        let mut out = [0; TXN_ID_LEN];
        out[..8].copy_from_slice(&self.client_id.to_le_bytes());
        out[8..].copy_from_slice(&self.txn_seq.to_le_bytes());
        out
    }

    /// The value of a COMMIT, ABORT or RESOLVE: exactly an id.
    pub fn decode(bytes: &[u8]) -> Result<TxnId, MultiError> {
        let mut reader = Reader(bytes);
        let id = reader.txn_id()?;
        reader.finish()?;
        Ok(id)
    }
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{}", self.client_id, self.txn_seq)
    }
}

/// A shard a transaction touches, and where its coordinator was when the
/// client prepared (a coordinator settling the transaction asks the newest
/// map first, this address when it has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Participant {
    pub shard: u32,
    pub coordinator: SocketAddrV4,
}

/// Bytes of one participant in a PREPARE: shard (u32), IPv4 address,
/// port (u16).
pub const PARTICIPANT_LEN: usize = 4 + 4 + 2;
/// Bytes of a PREPARE's value before its participants: the id, the lease
/// (u32) and the participant count (u8).
pub const PREPARE_FIXED_LEN: usize = TXN_ID_LEN + 4 + 1;

/// The participant list as a PREPARE carries it: a count, then each.
pub fn encode_participants(participants: &[Participant]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + PARTICIPANT_LEN * participants.len());
    push_participants(participants, &mut out);
    out
}

/// A participant list as [`encode_participants`] wrote it, checked as a
/// PREPARE's is.
pub fn decode_participants(bytes: &[u8]) -> Result<Vec<Participant>, MultiError> {
    let mut reader = Reader(bytes);
    let participants = reader.participants()?;
    reader.finish()?;
    Ok(participants)
}

/// A PREPARE's value: the transaction, its lease, every participant, and
/// the items of this shard (`multi` items: CHECK for every key read with
/// the version read, writes as in a one-shot transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare<'a> {
    pub id: TxnId,
    pub lease_ms: u32,
    pub participants: Vec<Participant>,
    pub items: Vec<Item<'a>>,
}

impl<'a> Prepare<'a> {
    /// Refused when over the limits, each named.
    pub fn encode(&self) -> Result<Vec<u8>, MultiError> {
        check_lease(self.lease_ms)?;
        check_participants(self.participants.len())?;
        multi::check_count(self.items.len())?;
        let mut out = Vec::new();
        push_head(self.id, self.lease_ms, &self.participants, &mut out);
        out.push(self.items.len() as u8);
        for item in &self.items {
            multi::check_item(item)?;
            multi::push_item(item, &mut out);
        }
        if out.len() > VALUE_LEN_MAX {
            return Err(MultiError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Checked as `encode` checks (the coordinator and the head both
    /// decode it).
    pub fn decode(bytes: &'a [u8]) -> Result<Prepare<'a>, MultiError> {
        if bytes.len() > VALUE_LEN_MAX {
            return Err(MultiError::TooLarge(bytes.len()));
        }
        let mut reader = Reader(bytes);
        let (id, lease_ms, participants) = reader.head()?;
        let items = reader.items()?;
        reader.finish()?;
        Ok(Prepare {
            id,
            lease_ms,
            participants,
            items,
        })
    }

    /// The locks its items take, one per key (exclusive when any item
    /// writes it), in the order the keys first appear.
    pub fn locks(&self) -> Vec<(u8, &'a [u8])> {
        let mut locks: Vec<(u8, &[u8])> = Vec::with_capacity(self.items.len());
        for item in &self.items {
            add_lock(&mut locks, mode::of(item.kind, item.flags), item.key);
        }
        locks
    }
}

/// Adds a lock on `key` in mode `wanted` to `locks` (mode, key), one per
/// key: a key already there is made exclusive if `wanted` is.
pub fn add_lock<'k>(locks: &mut Vec<(u8, &'k [u8])>, wanted: u8, key: &'k [u8]) {
    match locks.iter_mut().find(|(_, known)| *known == key) {
        Some(lock) => lock.0 = lock.0.max(wanted),
        None => locks.push((wanted, key)),
    }
}

fn check_lease(lease_ms: u32) -> Result<(), MultiError> {
    if (LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
        Ok(())
    } else {
        Err(MultiError::Lease(lease_ms))
    }
}

fn check_participants(count: usize) -> Result<(), MultiError> {
    match count {
        0 => Err(MultiError::Malformed("a transaction with no participant")),
        count if count > PARTICIPANTS_MAX => Err(MultiError::TooManyParticipants(count)),
        _ => Ok(()),
    }
}

fn push_head(id: TxnId, lease_ms: u32, participants: &[Participant], out: &mut Vec<u8>) {
    out.extend_from_slice(&id.encode());
    out.extend_from_slice(&lease_ms.to_le_bytes());
    push_participants(participants, out);
}

fn push_participants(participants: &[Participant], out: &mut Vec<u8>) {
    out.push(participants.len() as u8);
    for participant in participants {
        out.extend_from_slice(&participant.shard.to_le_bytes());
        out.extend_from_slice(&participant.coordinator.ip().octets());
        out.extend_from_slice(&participant.coordinator.port().to_le_bytes());
    }
}

impl Reader<'_> {
    fn txn_id(&mut self) -> Result<TxnId, MultiError> {
        let client_id = self.u64()?;
        let txn_seq = self.u64()?;
        Ok(TxnId { client_id, txn_seq })
    }

    fn u32(&mut self) -> Result<u32, MultiError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn head(&mut self) -> Result<(TxnId, u32, Vec<Participant>), MultiError> {
        let id = self.txn_id()?;
        let lease_ms = self.u32()?;
        check_lease(lease_ms)?;
        let participants = self.participants()?;
        Ok((id, lease_ms, participants))
    }

    fn participants(&mut self) -> Result<Vec<Participant>, MultiError> {
        let count = self.u8()? as usize;
        check_participants(count)?;
        let mut participants = Vec::with_capacity(count);
        for _ in 0..count {
            let shard = self.u32()?;
            let ip = self.take(4)?;
            let port = self.u16()? as u16;
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            participants.push(Participant {
                shard,
                coordinator: SocketAddrV4::new(ip, port),
            });
        }
        Ok(participants)
    }
}

/// A lock a prepared transaction holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub mode: u8,
    pub key: Vec<u8>,
}

/// What a head decided for a PREPARE it accepted (`Effect::Prepare`'s
/// value): the locks the transaction holds here and its decided writes and
/// answers, kept by every replica until the COMMIT or ABORT. An ACQUIRE's
/// (`Effect::Acquire`) has `acquired` set, no writes, and every lock the
/// transaction holds here so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareRecord {
    pub id: TxnId,
    pub lease_ms: u32,
    pub participants: Vec<Participant>,
    /// Locks taken by ACQUIREs, not prepared (nothing to commit here yet).
    pub acquired: bool,
    pub locks: Vec<Lock>,
    pub decided: Decided,
}

impl PrepareRecord {
    pub fn encoded_len(&self) -> usize {
        TXN_ID_LEN
            + 4
            + 1
            + PARTICIPANT_LEN * self.participants.len()
            + 1
            + 1
            + self
                .locks
                .iter()
                .map(|lock| 1 + 2 + lock.key.len())
                .sum::<usize>()
            + self.decided.encoded_len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        push_head(self.id, self.lease_ms, &self.participants, &mut out);
        out.push(u8::from(self.acquired));
        out.push(self.locks.len() as u8);
        for lock in &self.locks {
            out.push(lock.mode);
            out.extend_from_slice(&(lock.key.len() as u16).to_le_bytes());
            out.extend_from_slice(&lock.key);
        }
        out.extend_from_slice(&self.decided.encode());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<PrepareRecord, MultiError> {
        let mut reader = Reader(bytes);
        let (id, lease_ms, participants) = reader.head()?;
        let acquired = match reader.u8()? {
            0 => false,
            1 => true,
            _ => {
                return Err(MultiError::Malformed(
                    "a transaction record of unknown phase",
                ));
            }
        };
        let count = reader.u8()? as usize;
        multi::check_count(count)?;
        let mut locks = Vec::with_capacity(count);
        for _ in 0..count {
            let mode = reader.u8()?;
            if mode != mode::SHARED && mode != mode::EXCLUSIVE {
                return Err(MultiError::Malformed("a lock of unknown mode"));
            }
            let len = reader.u16()?;
            let key = reader.take(len)?;
            if key.is_empty() {
                return Err(MultiError::EmptyKey);
            }
            if key.len() > KEY_LEN_MAX {
                return Err(MultiError::KeyTooLarge(key.len()));
            }
            locks.push(Lock {
                mode,
                key: key.to_vec(),
            });
        }
        let decided = Decided::decode(reader.0)?;
        Ok(PrepareRecord {
            id,
            lease_ms,
            participants,
            acquired,
            locks,
            decided,
        })
    }
}

/// What a COMMIT record carries (`Effect::Commit`'s value): the
/// transaction and the writes its PREPARE decided, made visible at the
/// COMMIT's seq (a record that says what it writes, as every other does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub id: TxnId,
    pub decided: Decided,
}

impl CommitRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.id.encode().to_vec();
        out.extend_from_slice(&self.decided.encode());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CommitRecord, MultiError> {
        let mut reader = Reader(bytes);
        let id = reader.txn_id()?;
        let decided = Decided::decode(reader.0)?;
        Ok(CommitRecord { id, decided })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use crate::multi::{Answer, Written};

    fn participants(count: usize) -> Vec<Participant> {
        (0..count)
            .map(|shard| Participant {
                shard: shard as u32,
                coordinator: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000 + shard as u16),
            })
            .collect()
    }

    #[test]
    fn prepares_round_trip_and_their_limits_are_named() {
        let prepare = Prepare {
            id: TxnId {
                client_id: 9,
                txn_seq: 4,
            },
            lease_ms: 1000,
            participants: participants(3),
            items: vec![
                Item::check(b"a", 7),
                Item::put(b"b", b"2"),
                Item::check(b"b", 3),
                Item::get(b"c"),
            ],
        };
        let bytes = prepare.encode().unwrap();
        assert_eq!(Prepare::decode(&bytes).unwrap(), prepare);
        for len in 0..bytes.len() {
            assert!(Prepare::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        assert_eq!(
            prepare.locks(),
            vec![
                (mode::SHARED, &b"a"[..]),
                (mode::EXCLUSIVE, &b"b"[..]),
                (mode::SHARED, &b"c"[..]),
            ]
        );
        let too_many = Prepare {
            participants: participants(PARTICIPANTS_MAX + 1),
            ..prepare.clone()
        };
        let error = too_many.encode().unwrap_err();
        assert!(error.to_string().contains("at most 16 shards"), "{error}");
        let short = Prepare {
            lease_ms: 1,
            ..prepare.clone()
        };
        assert!(
            short
                .encode()
                .unwrap_err()
                .to_string()
                .contains("50..=60000")
        );
        let id = prepare.id.encode();
        assert_eq!(TxnId::decode(&id).unwrap(), prepare.id);
        assert!(TxnId::decode(&id[..15]).is_err());
        assert_eq!(
            TxnId::decode(&[id, id].concat()),
            Err(MultiError::Trailing(16))
        );
    }

    #[test]
    fn records_round_trip() {
        let decided = Decided {
            writes: vec![Written {
                key: b"b".to_vec(),
                value: Some(b"2".to_vec()),
                deadline_ms: 0,
            }],
            answers: vec![Answer::status(Status::Ok)],
        };
        let record = PrepareRecord {
            id: TxnId {
                client_id: 1,
                txn_seq: 2,
            },
            lease_ms: 500,
            participants: participants(2),
            acquired: false,
            locks: vec![Lock {
                mode: mode::EXCLUSIVE,
                key: b"b".to_vec(),
            }],
            decided: decided.clone(),
        };
        let bytes = record.encode();
        assert_eq!(bytes.len(), record.encoded_len());
        assert_eq!(PrepareRecord::decode(&bytes).unwrap(), record);
        for len in 0..bytes.len() {
            assert!(PrepareRecord::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        let commit = CommitRecord {
            id: record.id,
            decided,
        };
        assert_eq!(CommitRecord::decode(&commit.encode()).unwrap(), commit);
    }
}
