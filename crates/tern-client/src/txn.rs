//! Transactions through the client: [`Client::multi`] sends one shard's
//! one-shot transaction (`tern_wire::multi`), decided by its head in one
//! chain pass; [`Client::transact`] runs optimistic (OCC) transactions:
//! reads with plain GETs, writes buffered, and at commit, when every key
//! is of one shard, one MULTI that checks every version read and applies
//! every write; across shards, two-phase commit (`tern_wire::txn`): a
//! PREPARE to each shard (its versions checked, its keys locked, its
//! writes decided), then COMMIT to each once all said yes, ABORT to all
//! when one said no. A read-only transaction across shards reads every
//! key again instead: it holds if no version changed. Any conflict runs
//! the body again from the start.
//!
//! A locking transaction ([`TxnMode::Locking`], no-wait 2PL) locks each key
//! as it reads it instead (`Op::Acquire`: shared for [`Txn::get`],
//! exclusive for [`Txn::get_for_update`], a chain pass each), and a key
//! another transaction holds aborts it at once (no waiting: no deadlock),
//! releasing everything it took; its commit is the same two-phase commit,
//! whose checks cannot fail under the locks; a read-only one just lets go.
//! It suits contended keys, where optimistic transactions would fail their
//! checks again and again.

use std::collections::BTreeMap;
use std::time::Duration;

pub use tern_wire::multi::{Answer, ITEMS_MAX, Item, MultiError, OwnedItem, item_flags, kind};
pub use tern_wire::txn::TxnId;
use tern_wire::txn::{LEASE_MS_DEFAULT, Participant, Prepare};

/// How a transaction keeps what it read from changing under it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxnMode {
    /// Optimistic (OCC): plain reads, every version checked at commit.
    #[default]
    Optimistic,
    /// No-wait two-phase locking: each key locked as it is read, held to
    /// the end; a key held by another transaction aborts this one.
    Locking,
}
use tern_wire::{Header, Op, Status, key_hash, multi};

use crate::{Client, ClientError, Reply, ShardId, answer};

/// Attempts of [`Client::transact`] before it gives up with
/// [`ClientError::Conflict`].
pub const TRANSACT_ATTEMPTS_MAX: u32 = 32;

/// What a one-shot transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultiOutcome {
    /// Decided: every write at `version`. `answers` has one answer per
    /// item; None when this reply was a resend's, answered from the
    /// head's record of the outcome (the answers went with the first).
    Committed {
        version: u64,
        answers: Option<Vec<Answer>>,
    },
    /// A CHECK item did not match: nothing written. `current` is the
    /// version found (0: absent).
    CheckFailed { current: u64 },
}

impl Client {
    /// Runs `items` as one transaction, decided by the head of their shard
    /// all together. Every key must be of one shard.
    pub fn multi(&mut self, items: &[Item<'_>]) -> Result<MultiOutcome, ClientError> {
        let value = multi::encode_items(items).map_err(ClientError::Transaction)?;
        self.one_shard(items.iter().map(|item| item.key))?;
        self.one_shot(items, &value)
    }

    /// Runs `items` as one transaction wherever their keys are: one MULTI
    /// when they are of one shard, else two-phase commit, the items of
    /// each shard decided by its head in order (a key's items all go to
    /// its shard, so the answers are those of one MULTI of them all), the
    /// answers returned in the items' order. A transaction that meets
    /// another's lock is tried again, up to [`TRANSACT_ATTEMPTS_MAX`]
    /// times (then [`ClientError::Conflict`]).
    pub fn multi_anywhere(&mut self, items: &[Item<'_>]) -> Result<MultiOutcome, ClientError> {
        let value = multi::encode_items(items).map_err(ClientError::Transaction)?;
        for attempt in 0..TRANSACT_ATTEMPTS_MAX {
            let started = std::time::Instant::now();
            // Planned by the map as it is now (again after a slot moved).
            let mut by_shard: BTreeMap<u32, Vec<Item<'_>>> = BTreeMap::new();
            let mut places = Vec::with_capacity(items.len());
            for item in items {
                let shard = self.map.shard_of_key_hash(key_hash(item.key)).id.get();
                let of_shard = by_shard.entry(shard).or_default();
                places.push((shard, of_shard.len()));
                of_shard.push(*item);
            }
            if by_shard.len() == 1 {
                return self.one_shot(items, &value);
            }
            let id = self.new_txn_id();
            match self.two_phase(id, &by_shard)? {
                TwoPhase::Committed { answers, .. } => {
                    // Each item's answer from its shard's, in the items' order.
                    let answers = answers.and_then(|of_shard| {
                        places
                            .iter()
                            .map(|(shard, at)| of_shard.get(shard)?.get(*at).cloned())
                            .collect::<Option<Vec<Answer>>>()
                    });
                    return Ok(MultiOutcome::Committed {
                        version: 0,
                        answers,
                    });
                }
                TwoPhase::No(Status::CasMismatch, current) => {
                    return Ok(MultiOutcome::CheckFailed { current });
                }
                TwoPhase::No(..) => backoff(attempt, started.elapsed()),
            }
        }
        Err(ClientError::Conflict {
            attempts: TRANSACT_ATTEMPTS_MAX,
        })
    }

    /// One MULTI of items of one shard (`value` their encoding).
    fn one_shot(&mut self, items: &[Item<'_>], value: &[u8]) -> Result<MultiOutcome, ClientError> {
        let reply = self.send(items[0].key, answer::Call::new(Op::Multi, value))?;
        match reply.status {
            Status::Ok if reply.value.is_empty() => Ok(MultiOutcome::Committed {
                version: reply.header.version(),
                answers: None,
            }),
            Status::Ok => {
                let answers =
                    multi::decode_answers(&reply.value).map_err(ClientError::Transaction)?;
                Ok(MultiOutcome::Committed {
                    version: reply.header.version(),
                    answers: Some(answers),
                })
            }
            Status::CasMismatch => Ok(MultiOutcome::CheckFailed {
                current: reply.header.version(),
            }),
            Status::TooLarge => Err(ClientError::Transaction(MultiError::DecidedTooLarge)),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Begins a transaction to drive by hand: reads with [`Txn::get`] and
    /// [`Txn::get_for_update`], writes with [`Txn::put`] and
    /// [`Txn::delete`], then [`Txn::commit`] (or [`Txn::abort`], or drop
    /// it: a locking one lets go of its locks). [`Client::transact`] does
    /// the same and runs the body again on a conflict.
    pub fn begin(&mut self, mode: TxnMode) -> Txn<'_> {
        Txn {
            client: self,
            mode,
            id: None,
            read: BTreeMap::new(),
            values: BTreeMap::new(),
            written: BTreeMap::new(),
            locked: Vec::new(),
            acquired_at: BTreeMap::new(),
            conflicted: false,
        }
    }

    /// Runs `body` as a strictly serializable transaction (optimistic or
    /// locking, `mode`) and commits it; runs it again from the start (a
    /// fresh [`Txn`]) when it conflicted (a key it read changed before the
    /// commit; a key it wanted to lock was held), up to
    /// [`TRANSACT_ATTEMPTS_MAX`] times. `body` must have no effects
    /// outside the transaction, as it may run more than once.
    pub fn transact<T>(
        &mut self,
        mode: TxnMode,
        mut body: impl FnMut(&mut Txn<'_>) -> Result<T, ClientError>,
    ) -> Result<Transacted<T>, ClientError> {
        for attempt in 0..TRANSACT_ATTEMPTS_MAX {
            let started = std::time::Instant::now();
            let mut txn = self.begin(mode);
            let value = match body(&mut txn) {
                Ok(value) => value,
                // A lock refused (no-wait): the transaction let go of
                // everything; it runs again.
                Err(ClientError::Conflict { .. }) if txn.conflicted => {
                    drop(txn);
                    backoff(attempt, started.elapsed());
                    continue;
                }
                Err(error) => return Err(error),
            };
            if let Some((versions, written)) = txn.try_commit()? {
                let version = match versions[..] {
                    [(_, version)] => version,
                    _ => 0,
                };
                return Ok(Transacted {
                    value,
                    version,
                    versions,
                    written,
                });
            }
            backoff(attempt, started.elapsed());
        }
        Err(ClientError::Conflict {
            attempts: TRANSACT_ATTEMPTS_MAX,
        })
    }

    /// Refuses keys of more than one shard, naming two of them.
    fn one_shard<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), ClientError> {
        let mut first = None;
        for key in keys {
            let shard = self.map.shard_of_key_hash(key_hash(key)).id;
            match first {
                None => first = Some(shard),
                Some(seen) if seen != shard => {
                    return Err(ClientError::CrossShard {
                        first: seen.get(),
                        second: shard.get(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A committed transaction's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transacted<T> {
    /// What its body returned (the last run's, the one that committed).
    pub value: T,
    /// Of one shard: the version it committed at; every write it made
    /// has it, and transactions of one shard are serialized in this order
    /// (0: it read and wrote nothing, so had nothing to commit). Across
    /// shards: 0 (see `versions`).
    pub version: u64,
    /// The version it committed at on each shard it touched (its writes
    /// there have it; 0 for a shard it only read, or whose COMMIT went
    /// unanswered, settled by its lease).
    pub versions: Vec<(u32, u64)>,
    /// Each key it wrote with the version its write has (0: unknown, its
    /// shard's COMMIT went unanswered), by the shards the keys were of
    /// when it committed.
    pub written: Vec<(Vec<u8>, u64)>,
}

/// What a commit made: each shard's version, each written key's.
type Committed = (Vec<(u32, u64)>, Vec<(Vec<u8>, u64)>);

/// Waits before attempt `attempt + 1` of a transaction that conflicted,
/// whose last attempt took `took`: a random time up to a ceiling that
/// doubles with the attempts from the attempt's own length (at least
/// 200 us, at most 20 ms), so that transactions that keep meeting each
/// other (no-wait locking ones above all, which abort each other in turn)
/// spread out rather than collide again.
fn backoff(attempt: u32, took: Duration) {
    let base = took.clamp(Duration::from_micros(200), Duration::from_millis(20));
    let ceiling = base.as_micros() as u64 * (1 << attempt.min(5));
    std::thread::sleep(Duration::from_micros(rand::random_range(0..=ceiling)));
}

/// How a two-phase commit ended.
#[derive(Debug)]
enum TwoPhase {
    /// Committed: the version on each shard (0: its COMMIT went
    /// unanswered, settled by the lease) and, when every PREPARE's reply
    /// carried them, each shard's answers.
    Committed {
        versions: Vec<(u32, u64)>,
        answers: Option<BTreeMap<u32, Vec<Answer>>>,
    },
    /// A shard voted no (CAS_MISMATCH with the version found, LOCKED,
    /// TXN_ABORTED): aborted everywhere.
    No(Status, u64),
}

/// A participant's vote on a PREPARE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vote {
    Yes,
    No,
    /// No answer in time: it may or may not have prepared.
    Unknown,
}

/// A transaction under way ([`Client::transact`], [`Client::begin`]).
#[derive(Debug)]
pub struct Txn<'c> {
    client: &'c mut Client,
    mode: TxnMode,
    /// Its name, taken at its first lock or at its commit.
    id: Option<TxnId>,
    /// Every key read from the store, with the version read (0: absent).
    read: BTreeMap<Vec<u8>, u64>,
    /// Locking: each key locked and read, with its value and whether the
    /// lock is exclusive.
    values: BTreeMap<Vec<u8>, (Option<Vec<u8>>, bool)>,
    /// Buffered writes (None: a delete), applied at commit.
    written: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Locking: the shards sent an ACQUIRE (they may hold its locks) until
    /// it commits or lets go.
    locked: Vec<u32>,
    /// Locking: the version of its latest ACQUIRE granted at each shard
    /// (a read-only one is serialized there at the last).
    acquired_at: BTreeMap<u32, u64>,
    /// Locking: a lock was refused, and everything let go.
    conflicted: bool,
}

impl Txn<'_> {
    /// The key's value as this transaction sees it: its own write, or the
    /// store's (whose version an optimistic commit checks; locked shared
    /// by a locking transaction, [`ClientError::Conflict`] when another
    /// transaction holds it exclusively).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read_key(key, false)
    }

    /// As [`Txn::get`], for a key the transaction will write: a locking
    /// transaction locks it exclusively now ([`ClientError::Conflict`]
    /// when another transaction holds it at all), so that no other can
    /// read it and write it meanwhile; an optimistic one reads it.
    pub fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read_key(key, true)
    }

    fn read_key(&mut self, key: &[u8], for_update: bool) -> Result<Option<Vec<u8>>, ClientError> {
        if self.conflicted {
            return Err(ClientError::Conflict { attempts: 1 });
        }
        if let Some(written) = self.written.get(key) {
            return Ok(written.clone());
        }
        if self.mode == TxnMode::Locking {
            return self.lock_and_read(key, for_update);
        }
        let found = self.client.get(key)?;
        let version = found.as_ref().map_or(0, |found| found.version);
        match self.read.get(key) {
            // Read twice, two versions: it cannot commit; the commit's
            // check of the first fails and the body runs again.
            Some(&first) if first != version => {}
            _ => {
                self.read.insert(key.to_vec(), version);
            }
        }
        Ok(found.map(|found| found.value))
    }

    /// The version of `key` this transaction read from the store (0: it
    /// was absent), which its commit checks; None if it did not read it.
    pub fn version_read(&self, key: &[u8]) -> Option<u64> {
        self.read.get(key).copied()
    }

    /// Writes `value` at commit.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.written.insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Deletes the key at commit.
    pub fn delete(&mut self, key: &[u8]) {
        self.written.insert(key.to_vec(), None);
    }

    /// Commits what it read and wrote: its versions, or
    /// [`ClientError::Conflict`] when a key it read changed before (or
    /// another transaction held one): nothing was written, and a new
    /// transaction may try again.
    pub fn commit(self) -> Result<Transacted<()>, ClientError> {
        match self.try_commit()? {
            Some((versions, written)) => Ok(Transacted {
                value: (),
                version: match versions[..] {
                    [(_, version)] => version,
                    _ => 0,
                },
                versions,
                written,
            }),
            None => Err(ClientError::Conflict { attempts: 1 }),
        }
    }

    /// Gives the transaction up: nothing is written, and a locking one
    /// lets go of its locks (as when it is dropped).
    pub fn abort(self) {}

    /// ACQUIRE: locks `key` (exclusively `for_update`) at its shard and
    /// reads it under the lock. A lock refused lets go of everything and
    /// answers [`ClientError::Conflict`].
    fn lock_and_read(
        &mut self,
        key: &[u8],
        for_update: bool,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        match self.values.get(key) {
            Some((value, exclusive)) if *exclusive || !for_update => return Ok(value.clone()),
            _ => {}
        }
        let client = &mut *self.client;
        let id = *self.id.get_or_insert_with(|| client.new_txn_id());
        let shard = client.map.shard_of_key_hash(key_hash(key)).id.get();
        let flags = if for_update {
            item_flags::FOR_UPDATE
        } else {
            0
        };
        let value = Prepare {
            id,
            lease_ms: LEASE_MS_DEFAULT,
            participants: vec![Participant {
                shard,
                coordinator: client.coordinator_of(shard),
            }],
            items: vec![Item::get(key).with_flags(flags)],
        }
        .encode()
        .map_err(ClientError::Transaction)?;
        if !self.locked.contains(&shard) {
            self.locked.push(shard);
        }
        // A reply without the answer is a resend's, answered from the
        // head's record of the outcome: locked, so asked again (a new
        // request: the lock is its own already, the read fresh).
        let mut status = Status::Ok;
        let mut answer = None;
        for _ in 0..3 {
            let reply = match self
                .client
                .send(key, answer::Call::new(Op::Acquire, &value))
            {
                Ok(reply) => reply,
                Err(ClientError::StaleEpoch { .. }) => {
                    status = Status::StaleEpoch;
                    break;
                }
                Err(error) => {
                    self.release();
                    return Err(error);
                }
            };
            status = reply.status;
            if status == Status::Ok {
                let at = self.acquired_at.entry(shard).or_default();
                *at = (*at).max(reply.header.version());
            }
            if status != Status::Ok || !reply.value.is_empty() {
                answer = multi::decode_answers(&reply.value)
                    .ok()
                    .and_then(|mut answers| answers.pop())
                    .filter(|_| status == Status::Ok);
                break;
            }
        }
        let Some(answer) = answer else {
            // LOCKED (another holds the key: this shard aborted it),
            // TXN_ABORTED (its lease ran out), a map that changed (the
            // transaction starts again on the newest), or a refusal.
            if matches!(status, Status::StaleEpoch | Status::WrongShard) {
                self.client.refresh_map();
            }
            self.release();
            return match status {
                Status::Locked | Status::TxnAborted | Status::StaleEpoch | Status::WrongShard => {
                    self.client.counters.txn_locked += 1;
                    self.conflicted = true;
                    Err(ClientError::Conflict { attempts: 1 })
                }
                Status::TooLarge => Err(ClientError::Transaction(MultiError::DecidedTooLarge)),
                // OK without answers three times, or answers that do not
                // decode.
                Status::Ok => Err(ClientError::Transaction(MultiError::Malformed(
                    "an ACQUIRE answered without its read",
                ))),
                status => Err(ClientError::Refused { status }),
            };
        };
        self.read.insert(key.to_vec(), answer.number);
        self.values
            .insert(key.to_vec(), (answer.value.clone(), for_update));
        Ok(answer.value)
    }

    /// Lets go of every lock it may hold (an unanswered ABORT is settled
    /// by the lease).
    fn release(&mut self) {
        if let (Some(id), false) = (self.id, self.locked.is_empty()) {
            let shards = std::mem::take(&mut self.locked);
            self.client.finish(&shards, Op::Abort, id);
        }
    }

    /// Commits: the version it committed at on each shard and each written
    /// key's, None on a conflict. A transaction that read and wrote nothing
    /// commits at once.
    fn try_commit(mut self) -> Result<Option<Committed>, ClientError> {
        if self.conflicted {
            return Ok(None);
        }
        if self.mode == TxnMode::Locking && self.written.is_empty() {
            // Read under locks held together: every value was current
            // when the last was taken (at each shard, its version there).
            // Nothing to commit; it lets go.
            let shards = self
                .locked
                .iter()
                .map(|&shard| (shard, self.acquired_at.get(&shard).copied().unwrap_or(0)))
                .collect();
            self.release();
            return Ok(Some((shards, Vec::new())));
        }
        let client = &mut *self.client;
        let mut items: Vec<Item<'_>> = self
            .read
            .iter()
            .filter(|(key, _)| !self.written.contains_key(*key))
            .map(|(key, &version)| Item::check(key, version))
            .collect();
        // A key read and then written is checked just before its write.
        for (key, value) in &self.written {
            if let Some(&version) = self.read.get(key) {
                items.push(Item::check(key, version));
            }
            items.push(match value {
                Some(value) => Item::put(key, value),
                None => Item::delete(key),
            });
        }
        if items.is_empty() {
            return Ok(Some((Vec::new(), Vec::new())));
        }
        let mut by_shard: BTreeMap<u32, Vec<Item<'_>>> = BTreeMap::new();
        let mut shard_of_key: BTreeMap<&[u8], u32> = BTreeMap::new();
        for item in items {
            let shard = client.map.shard_of_key_hash(key_hash(item.key)).id.get();
            shard_of_key.insert(item.key, shard);
            by_shard.entry(shard).or_default().push(item);
        }
        let written_at = |versions: &[(u32, u64)]| -> Vec<(Vec<u8>, u64)> {
            self.written
                .keys()
                .map(|key| {
                    let shard = shard_of_key[&key[..]];
                    let version = versions
                        .iter()
                        .find(|(of, _)| *of == shard)
                        .map_or(0, |(_, version)| *version);
                    (key.clone(), version)
                })
                .collect()
        };
        if by_shard.len() == 1 && self.mode == TxnMode::Optimistic {
            let (shard, items) = by_shard.pop_first().expect("one shard");
            return match client.multi(&items) {
                Ok(MultiOutcome::Committed { version, .. }) => {
                    let versions = vec![(shard, version)];
                    let written = written_at(&versions);
                    Ok(Some((versions, written)))
                }
                Ok(MultiOutcome::CheckFailed { .. }) => {
                    client.counters.txn_changed += 1;
                    Ok(None)
                }
                Err(ClientError::Refused {
                    status: Status::Locked,
                }) => {
                    client.counters.txn_locked += 1;
                    Ok(None)
                }
                Err(error) => Err(error),
            };
        }
        if self.written.is_empty() {
            // Read-only across shards: every key read again; unchanged
            // versions mean every value read was current together, between
            // the last first read and the first second one.
            for (key, &version) in &self.read {
                let now = client.get(key)?.map_or(0, |found| found.version);
                if now != version {
                    client.counters.txn_changed += 1;
                    return Ok(None);
                }
            }
            return Ok(Some((
                by_shard.keys().map(|&shard| (shard, 0)).collect(),
                Vec::new(),
            )));
        }
        // A locking transaction commits under its own name (its locks'),
        // every shard it locked taking part (each has a key read, CHECKed).
        let id = match self.id {
            Some(id) => id,
            None => client.new_txn_id(),
        };
        let outcome = client.two_phase(id, &by_shard);
        // Committed or aborted, every participant settled (or its lease
        // will): nothing left to let go of, but a shard it locked that the
        // commit did not reach (its key's slot moved meanwhile).
        self.locked.retain(|shard| !by_shard.contains_key(shard));
        match outcome? {
            TwoPhase::Committed { versions, .. } => {
                let written = written_at(&versions);
                Ok(Some((versions, written)))
            }
            TwoPhase::No(Status::CasMismatch, _) => {
                client.counters.txn_changed += 1;
                Ok(None)
            }
            TwoPhase::No(..) => {
                client.counters.txn_locked += 1;
                Ok(None)
            }
        }
    }
}

impl Client {
    /// Commits items of several shards by two-phase commit: every shard's
    /// PREPARE sent at once, then every COMMIT (or ABORT) at once.
    fn two_phase(
        &mut self,
        id: TxnId,
        by_shard: &BTreeMap<u32, Vec<Item<'_>>>,
    ) -> Result<TwoPhase, ClientError> {
        let participants: Vec<Participant> = by_shard
            .keys()
            .map(|&shard| Participant {
                shard,
                coordinator: self.coordinator_of(shard),
            })
            .collect();
        let mut requests = Vec::with_capacity(by_shard.len());
        for items in by_shard.values() {
            let value = Prepare {
                id,
                lease_ms: LEASE_MS_DEFAULT,
                participants: participants.clone(),
                items: items.clone(),
            }
            .encode()
            .map_err(ClientError::Transaction)?;
            let call = answer::Call::new(Op::Prepare, &value);
            let key = items[0].key;
            let limit = self.options.value_limit;
            let (header, coordinator) =
                crate::request_header(&self.map, self.client_id, key, &call, limit)?;
            requests.push((coordinator, header, key.to_vec(), value.clone()));
        }
        let replies = self.exchange_all(requests);
        let mut votes: Vec<(u32, Vote)> = Vec::with_capacity(by_shard.len());
        let mut answers = Some(BTreeMap::new());
        let mut refused = None;
        let mut no = (Status::TxnAborted, 0);
        let mut map_stale = false;
        for (&shard, reply) in by_shard.keys().zip(replies) {
            let vote = match reply {
                Ok(reply) => match reply.status {
                    // A settler may have committed it already, if this
                    // client was slower than the lease.
                    Status::Ok | Status::TxnCommitted => {
                        let decoded = multi::decode_answers(&reply.value).ok();
                        match (&mut answers, decoded) {
                            (Some(all), Some(of_shard)) => {
                                all.insert(shard, of_shard);
                            }
                            _ => answers = None,
                        }
                        Vote::Yes
                    }
                    // The head's no, for good (an abort tombstone).
                    status @ (Status::CasMismatch | Status::Locked | Status::TxnAborted) => {
                        no = (status, reply.header.version());
                        Vote::No
                    }
                    Status::TooLarge => {
                        refused = Some(ClientError::Transaction(MultiError::DecidedTooLarge));
                        Vote::No
                    }
                    // Not the head's answer but a refusal of this copy (a
                    // map that changed: a new epoch, a slot moved): an
                    // earlier copy may have been prepared, so the shard is
                    // asked; the transaction then starts again on the
                    // newest map.
                    Status::StaleEpoch | Status::WrongShard => {
                        map_stale = true;
                        Vote::Unknown
                    }
                    _ => Vote::Unknown,
                },
                // No answer in time, or none that says: the shard is asked.
                Err(_) => Vote::Unknown,
            };
            votes.push((shard, vote));
        }
        // Where a PREPARE went unanswered, the shard is asked where it
        // stands (and made to vote no for good if it never saw it).
        if !votes.iter().any(|(_, vote)| *vote == Vote::No) {
            for (shard, vote) in votes.iter_mut().filter(|(_, vote)| *vote == Vote::Unknown) {
                answers = None;
                *vote = match self.finish(&[*shard], Op::Resolve, id).pop() {
                    Some(Ok(reply)) => match reply.status {
                        Status::TxnPrepared | Status::TxnCommitted => Vote::Yes,
                        _ => Vote::No,
                    },
                    _ => return Err(ClientError::InDoubt { id, shard: *shard }),
                };
                if *vote == Vote::No {
                    break;
                }
            }
        }
        if map_stale {
            self.refresh_map();
        }
        if votes.iter().any(|(_, vote)| *vote == Vote::No) {
            // One shard voted no for good: nobody can commit it. Every
            // shard that may hold its PREPARE lets go (an unanswered ABORT
            // is settled by the lease).
            let holding: Vec<u32> = votes
                .iter()
                .filter(|(_, vote)| *vote != Vote::No)
                .map(|(shard, _)| *shard)
                .collect();
            self.finish(&holding, Op::Abort, id);
            return match refused {
                Some(error) => Err(error),
                None => Ok(TwoPhase::No(no.0, no.1)),
            };
        }
        // Every shard holds its PREPARE: the transaction is committed. Each
        // COMMIT is sent until answered (a shard committed before answers
        // with its version too), up to the client's deadline.
        let deadline = std::time::Instant::now() + self.options.deadline;
        let mut versions: Vec<(u32, Option<u64>)> =
            votes.iter().map(|(shard, _)| (*shard, None)).collect();
        loop {
            let pending: Vec<u32> = versions
                .iter()
                .filter(|(_, version)| version.is_none())
                .map(|(shard, _)| *shard)
                .collect();
            if pending.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            let replies = self.finish(&pending, Op::Commit, id);
            let (mut answered, mut stale) = (false, false);
            for (shard, reply) in pending.into_iter().zip(replies) {
                let version = match reply.map(|reply| (reply.status, reply.header.version())) {
                    Ok((Status::Ok, version)) => version,
                    Ok((Status::StaleEpoch | Status::WrongShard, _)) => {
                        stale = true;
                        continue;
                    }
                    Ok((Status::TryAgain | Status::Locked, _)) | Err(_) => continue,
                    // Any other answer is final; the version unknown.
                    Ok(_) => 0,
                };
                answered = true;
                if let Some(entry) = versions.iter_mut().find(|(of, _)| *of == shard) {
                    entry.1 = Some(version);
                }
            }
            if stale {
                self.refresh_map();
            } else if !answered {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Committed all the same where unanswered: its lease settles it.
        let versions = versions
            .into_iter()
            .map(|(shard, version)| (shard, version.unwrap_or(0)))
            .collect();
        Ok(TwoPhase::Committed { versions, answers })
    }

    /// Sends a COMMIT, ABORT or RESOLVE of `id` to each of `shards` at
    /// once; their replies in order.
    fn finish(&mut self, shards: &[u32], op: Op, id: TxnId) -> Vec<Result<Reply, ClientError>> {
        let value = id.encode().to_vec();
        let mut requests = Vec::with_capacity(shards.len());
        for &shard in shards {
            // A shard gone from the map (removed meanwhile) has nowhere to
            // be asked: its request fails, and its lease settles it.
            let (epoch, coordinator) = self
                .map
                .shard(ShardId(shard))
                .map_or((0, std::net::SocketAddrV4::new(0.into(), 0)), |found| {
                    (found.epoch.get(), found.coordinator)
                });
            let mut header = Header::new(op, shard, epoch);
            header.key_hash.set(key_hash(b""));
            header.client_id.set(self.client_id.get());
            requests.push((coordinator, header, Vec::new(), value.clone()));
        }
        self.exchange_all(requests)
    }

    /// A name no other transaction of this client has.
    fn new_txn_id(&mut self) -> TxnId {
        TxnId {
            client_id: self.client_id.get(),
            txn_seq: self.take_request_id(),
        }
    }

    fn coordinator_of(&self, shard: u32) -> std::net::SocketAddrV4 {
        self.map
            .shard(ShardId(shard))
            .map(|s| s.coordinator)
            .expect("a shard of the map")
    }
}

impl Drop for Txn<'_> {
    /// A locking transaction dropped before it committed lets go.
    fn drop(&mut self) {
        self.release();
    }
}
