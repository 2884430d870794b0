//! Transactions through the client: [`Client::multi`] sends one shard's
//! one-shot transaction (`tern_wire::multi`), decided by its head in one
//! chain pass; [`Client::transact`] runs optimistic (OCC) transactions on
//! it: reads with plain GETs, writes buffered, and at commit one MULTI that
//! checks every version read and applies every write, retried from the
//! start on a conflict.
//!
//! All keys of one transaction must be of one shard today: transactions
//! across shards (two-phase commit with the coordinators' lock tables) are
//! the next step, and until then a transaction that spans shards is
//! refused with [`ClientError::CrossShard`] before anything is sent.

use std::collections::BTreeMap;
use std::time::Duration;

pub use tern_wire::multi::{Answer, ITEMS_MAX, Item, MultiError, OwnedItem, item_flags, kind};
use tern_wire::{Op, Status, key_hash, multi};

use crate::{Client, ClientError, answer};

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
        let reply = self.send(items[0].key, answer::Call::new(Op::Multi, &value))?;
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

    /// Runs `body` as an optimistic, strictly serializable transaction and
    /// commits it; runs it again from the start (a fresh [`Txn`]) when a
    /// key it read changed before the commit, up to
    /// [`TRANSACT_ATTEMPTS_MAX`] times. `body` must have no effects
    /// outside the transaction, as it may run more than once.
    pub fn transact<T>(
        &mut self,
        mut body: impl FnMut(&mut Txn<'_>) -> Result<T, ClientError>,
    ) -> Result<Transacted<T>, ClientError> {
        for attempt in 0..TRANSACT_ATTEMPTS_MAX {
            let mut txn = Txn {
                client: self,
                read: BTreeMap::new(),
                written: BTreeMap::new(),
            };
            let value = body(&mut txn)?;
            if let Some(version) = txn.commit()? {
                return Ok(Transacted { value, version });
            }
            // Backoff grows with the attempts, so that contending
            // transactions spread out.
            let spread = u64::from(attempt.min(8)) * 200 + rand::random_range(0..200);
            std::thread::sleep(Duration::from_micros(spread));
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
    /// The version it committed at: every write it made has it, and
    /// transactions of one shard are serialized in this order (0: it read
    /// and wrote nothing, so had nothing to commit).
    pub version: u64,
}

/// An optimistic transaction under way ([`Client::transact`]).
#[derive(Debug)]
pub struct Txn<'c> {
    client: &'c mut Client,
    /// Every key read from the store, with the version read (0: absent).
    read: BTreeMap<Vec<u8>, u64>,
    /// Buffered writes (None: a delete), applied at commit.
    written: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Txn<'_> {
    /// The key's value as this transaction sees it: its own write, or the
    /// store's, whose version the commit checks.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        if let Some(written) = self.written.get(key) {
            return Ok(written.clone());
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

    /// Writes `value` at commit.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.written.insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Deletes the key at commit.
    pub fn delete(&mut self, key: &[u8]) {
        self.written.insert(key.to_vec(), None);
    }

    /// Commits: its version when it committed, None on a conflict. A
    /// transaction that read and wrote nothing commits at once.
    fn commit(self) -> Result<Option<u64>, ClientError> {
        let mut items: Vec<Item<'_>> = self
            .read
            .iter()
            .map(|(key, &version)| Item::check(key, version))
            .collect();
        items.extend(self.written.iter().map(|(key, value)| match value {
            Some(value) => Item::put(key, value),
            None => Item::delete(key),
        }));
        if items.is_empty() {
            return Ok(Some(0));
        }
        match self.client.multi(&items)? {
            MultiOutcome::Committed { version, .. } => Ok(Some(version)),
            MultiOutcome::CheckFailed { .. } => Ok(None),
        }
    }
}
