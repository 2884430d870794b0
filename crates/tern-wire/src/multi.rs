//! A one-shot transaction of one shard (`Op::Multi`): the items a client
//! asks for, in order, and what the head decided (the record's writes and
//! each item's answer).
//!
//! A MULTI request's value is its items ([`encode_items`]); its header's
//! key is the first item's key, so that routing, slot checks and the
//! coordinator's migration holds treat it like any write of that key (the
//! coordinator checks every other item's slot too). The head evaluates the
//! items in order against its store, each seeing the writes of the items
//! before it: CHECK items first, all of them against the state before the
//! transaction (a mismatch refuses the whole transaction, CAS_MISMATCH,
//! nothing written: Redis's WATCH), then the others one by one, where a
//! failing item (INCRBY of a non-integer, a PUT whose condition fails)
//! fails alone, as a queued command does in Redis's EXEC. Every write of
//! one transaction gets the same version, its seq: a stamped read sees all
//! of them or none.
//!
//! The decided record (`Effect::Multi`) carries [`Decided`]: the final
//! value of every key written (or its deletion) and the answers, which the
//! tail returns as the acknowledgement's value ([`encode_answers`]).

use thiserror::Error;

use crate::{KEY_LEN_MAX, Status, VALUE_LEN_MAX};

/// Most items in one transaction (its bytes are bounded too, by
/// `VALUE_LEN_MAX`, which usually binds first).
pub const ITEMS_MAX: usize = 64;

/// The kinds of item.
pub mod kind {
    /// The key's version must be `version` (0: the key is absent), else
    /// the transaction is refused whole (CAS_MISMATCH).
    pub const CHECK: u8 = 1;
    /// The key takes the value (and loses any deadline).
    pub const PUT: u8 = 2;
    /// The key is deleted; answered OK if it existed, else NOT_FOUND.
    pub const DELETE: u8 = 3;
    /// The value, a decimal integer, is added to the key's (absent: 0);
    /// answered with the sum, or NOT_INTEGER.
    pub const INCR_BY: u8 = 4;
    /// The value is appended; answered with the new length.
    pub const APPEND: u8 = 5;
    /// The key's value at this point of the transaction.
    pub const GET: u8 = 6;
}

/// Bits of [`Item::flags`].
pub mod item_flags {
    /// PUT only if the key exists (Redis `SET XX`); else NOT_FOUND.
    pub const IF_EXISTS: u8 = 1;
    /// PUT only if the key is absent (Redis `SET NX`); else CAS_MISMATCH.
    pub const IF_ABSENT: u8 = 2;
    /// GET of a key the transaction will write: its lock is exclusive
    /// (`txn::mode`; an ACQUIRE's `get_for_update`).
    pub const FOR_UPDATE: u8 = 4;
    pub const ALL: u8 = IF_EXISTS | IF_ABSENT | FOR_UPDATE;

    /// The flags an item of `kind` may carry.
    pub const fn allowed(kind: u8) -> u8 {
        match kind {
            super::kind::PUT => IF_EXISTS | IF_ABSENT,
            super::kind::GET => FOR_UPDATE,
            _ => 0,
        }
    }
}

/// One item of a transaction as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item<'a> {
    pub kind: u8,
    pub flags: u8,
    /// CHECK: the expected version; 0 otherwise.
    pub version: u64,
    pub key: &'a [u8],
    /// PUT, INCR_BY, APPEND: the operand; empty otherwise.
    pub value: &'a [u8],
}

impl<'a> Item<'a> {
    pub fn check(key: &'a [u8], version: u64) -> Self {
        Item::of(kind::CHECK, key, &[]).with_version(version)
    }

    pub fn put(key: &'a [u8], value: &'a [u8]) -> Self {
        Item::of(kind::PUT, key, value)
    }

    pub fn delete(key: &'a [u8]) -> Self {
        Item::of(kind::DELETE, key, &[])
    }

    pub fn get(key: &'a [u8]) -> Self {
        Item::of(kind::GET, key, &[])
    }

    pub fn append(key: &'a [u8], value: &'a [u8]) -> Self {
        Item::of(kind::APPEND, key, value)
    }

    /// INCR_BY with its decimal operand (`delta.to_string()`).
    pub fn incr_by(key: &'a [u8], delta: &'a [u8]) -> Self {
        Item::of(kind::INCR_BY, key, delta)
    }

    pub fn of(kind: u8, key: &'a [u8], value: &'a [u8]) -> Self {
        Item {
            kind,
            flags: 0,
            version: 0,
            key,
            value,
        }
    }

    pub fn with_version(self, version: u64) -> Self {
        Item { version, ..self }
    }

    pub fn with_flags(self, flags: u8) -> Self {
        Item { flags, ..self }
    }

    /// Bytes of its encoding.
    pub fn encoded_len(&self) -> usize {
        ITEM_HEADER_LEN + self.key.len() + self.value.len()
    }

    pub(crate) fn carries_value(kind: u8) -> bool {
        matches!(kind, kind::PUT | kind::INCR_BY | kind::APPEND)
    }
}

/// An item that owns its bytes (a queued command's, a parsed one's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedItem {
    pub kind: u8,
    pub flags: u8,
    pub version: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl OwnedItem {
    pub fn new(kind: u8, key: &[u8], value: &[u8]) -> OwnedItem {
        OwnedItem {
            kind,
            key: key.to_vec(),
            value: value.to_vec(),
            ..OwnedItem::default()
        }
    }

    /// The item it is.
    pub fn item(&self) -> Item<'_> {
        Item {
            kind: self.kind,
            flags: self.flags,
            version: self.version,
            key: &self.key,
            value: &self.value,
        }
    }
}

/// kind, flags, key length (u16), value length (u16), version (u64).
pub(crate) const ITEM_HEADER_LEN: usize = 1 + 1 + 2 + 2 + 8;

/// Why a transaction's bytes were refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MultiError {
    #[error("a transaction has at most {ITEMS_MAX} items, not {0}")]
    TooManyItems(usize),
    #[error("a transaction has at least one item")]
    Empty,
    #[error("transaction truncated")]
    Truncated,
    #[error("transaction item of kind {0} is unknown")]
    UnknownKind(u8),
    #[error("transaction item with unknown flags {0:#x}")]
    UnknownFlags(u8),
    #[error("transaction key of {0} bytes exceeds the limit of {KEY_LEN_MAX} bytes")]
    KeyTooLarge(usize),
    #[error("a transaction item of kind {0} carries no value")]
    UnexpectedValue(u8),
    #[error("a transaction item has an empty key")]
    EmptyKey,
    #[error(
        "transaction of {0} bytes exceeds the limit of {VALUE_LEN_MAX} bytes \
         (items, keys and values together)"
    )]
    TooLarge(usize),
    /// Refused by the head: what it decided does not fit one record.
    #[error(
        "the transaction's writes and answers together exceed the limit of \
         {VALUE_LEN_MAX} bytes (large values cannot take part in a transaction yet)"
    )]
    DecidedTooLarge,
    #[error("transaction answer of unknown status {0}")]
    UnknownStatus(u8),
    #[error("transaction bytes malformed: {0}")]
    Malformed(&'static str),
    #[error("{0} bytes after the transaction")]
    Trailing(usize),
    #[error(
        "a transaction spans at most {max} shards, not {0}",
        max = crate::txn::PARTICIPANTS_MAX
    )]
    TooManyParticipants(usize),
    #[error(
        "a transaction's lease of {0} ms is outside {min}..={max} ms",
        min = crate::txn::LEASE_MS_MIN,
        max = crate::txn::LEASE_MS_MAX
    )]
    Lease(u32),
}

/// A MULTI request's value; refused when over the limits.
pub fn encode_items(items: &[Item<'_>]) -> Result<Vec<u8>, MultiError> {
    check_count(items.len())?;
    let mut out = Vec::with_capacity(1 + items.iter().map(Item::encoded_len).sum::<usize>());
    out.push(items.len() as u8);
    for item in items {
        check_item(item)?;
        push_item(item, &mut out);
    }
    if out.len() > VALUE_LEN_MAX {
        return Err(MultiError::TooLarge(out.len()));
    }
    Ok(out)
}

pub(crate) fn check_count(count: usize) -> Result<(), MultiError> {
    match count {
        0 => Err(MultiError::Empty),
        count if count > ITEMS_MAX => Err(MultiError::TooManyItems(count)),
        _ => Ok(()),
    }
}

pub(crate) fn check_item(item: &Item<'_>) -> Result<(), MultiError> {
    if !(kind::CHECK..=kind::GET).contains(&item.kind) {
        return Err(MultiError::UnknownKind(item.kind));
    }
    if item.flags & !item_flags::allowed(item.kind) != 0 {
        return Err(MultiError::UnknownFlags(item.flags));
    }
    if item.key.is_empty() {
        return Err(MultiError::EmptyKey);
    }
    if item.key.len() > KEY_LEN_MAX {
        return Err(MultiError::KeyTooLarge(item.key.len()));
    }
    if !item.value.is_empty() && !Item::carries_value(item.kind) {
        return Err(MultiError::UnexpectedValue(item.kind));
    }
    Ok(())
}

pub(crate) fn push_item(item: &Item<'_>, out: &mut Vec<u8>) {
    out.push(item.kind);
    out.push(item.flags);
    out.extend_from_slice(&(item.key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(item.value.len() as u16).to_le_bytes());
    out.extend_from_slice(&item.version.to_le_bytes());
    out.extend_from_slice(item.key);
    out.extend_from_slice(item.value);
}

/// Reads bytes off the front of a slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], MultiError> {
        if self.0.len() < len {
            return Err(MultiError::Truncated);
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MultiError> {
        Ok(self.take(1)?[0])
    }

    /// A byte that is 0 or 1.
    pub(crate) fn flag(&mut self) -> Result<bool, MultiError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(MultiError::Malformed("a flag byte that is not 0 or 1")),
        }
    }

    pub(crate) fn u16(&mut self) -> Result<usize, MultiError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]) as usize)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MultiError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub(crate) fn items(&mut self) -> Result<Vec<Item<'a>>, MultiError> {
        let count = self.u8()? as usize;
        check_count(count)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = self.u8()?;
            let flags = self.u8()?;
            let key_len = self.u16()?;
            let value_len = self.u16()?;
            let version = self.u64()?;
            let item = Item {
                kind,
                flags,
                version,
                key: self.take(key_len)?,
                value: self.take(value_len)?,
            };
            check_item(&item)?;
            items.push(item);
        }
        Ok(items)
    }

    pub(crate) fn finish(self) -> Result<(), MultiError> {
        match self.0.len() {
            0 => Ok(()),
            trailing => Err(MultiError::Trailing(trailing)),
        }
    }
}

/// The items of a MULTI request's value, checked as [`encode_items`]
/// checks them (the coordinator and the head both decode them).
pub fn decode_items(bytes: &[u8]) -> Result<Vec<Item<'_>>, MultiError> {
    if bytes.len() > VALUE_LEN_MAX {
        return Err(MultiError::TooLarge(bytes.len()));
    }
    let mut reader = Reader(bytes);
    let items = reader.items()?;
    reader.finish()?;
    Ok(items)
}

/// What one item got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    /// APPEND: the new length; GET: the version of the value read (0:
    /// absent, or written by an earlier item of the transaction); 0
    /// otherwise.
    pub number: u64,
    /// GET: the value (None: absent); INCR_BY: the sum in decimal.
    pub value: Option<Vec<u8>>,
}

impl Answer {
    pub fn status(status: Status) -> Self {
        Answer {
            status,
            number: 0,
            value: None,
        }
    }

    fn encoded_len(&self) -> usize {
        1 + 1 + 8 + 2 + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// One key's final state in a decided transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub key: Vec<u8>,
    /// None: deleted.
    pub value: Option<Vec<u8>>,
    /// The key's deadline (Unix milliseconds; 0: none).
    pub deadline_ms: u64,
}

/// A decided transaction (`Effect::Multi`'s value): what it writes, and
/// the answers, one per item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    pub writes: Vec<Written>,
    pub answers: Vec<Answer>,
}

impl Decided {
    /// Bytes of its encoding.
    pub fn encoded_len(&self) -> usize {
        let writes: usize = self
            .writes
            .iter()
            .map(|write| 1 + 2 + 2 + 8 + write.key.len() + write.value.as_ref().map_or(0, Vec::len))
            .sum();
        1 + writes + answers_len(&self.answers)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(self.writes.len() as u8);
        for write in &self.writes {
            out.push(u8::from(write.value.is_some()));
            out.extend_from_slice(&(write.key.len() as u16).to_le_bytes());
            let value = write.value.as_deref().unwrap_or_default();
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(&write.deadline_ms.to_le_bytes());
            out.extend_from_slice(&write.key);
            out.extend_from_slice(value);
        }
        push_answers(&self.answers, &mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Decided, MultiError> {
        let mut reader = Reader(bytes);
        let count = reader.u8()? as usize;
        if count > ITEMS_MAX {
            return Err(MultiError::TooManyItems(count));
        }
        let mut writes = Vec::with_capacity(count);
        for _ in 0..count {
            let present = reader.flag()?;
            let key_len = reader.u16()?;
            let value_len = reader.u16()?;
            if !present && value_len != 0 {
                return Err(MultiError::Malformed("a deleted key with a value"));
            }
            let deadline_ms = reader.u64()?;
            let key = reader.take(key_len)?.to_vec();
            let value = reader.take(value_len)?;
            if key.is_empty() {
                return Err(MultiError::EmptyKey);
            }
            if key.len() > KEY_LEN_MAX {
                return Err(MultiError::KeyTooLarge(key.len()));
            }
            writes.push(Written {
                key,
                value: present.then(|| value.to_vec()),
                deadline_ms,
            });
        }
        let answers = reader.answers()?;
        reader.finish()?;
        Ok(Decided { writes, answers })
    }
}

fn answers_len(answers: &[Answer]) -> usize {
    1 + answers.iter().map(Answer::encoded_len).sum::<usize>()
}

fn push_answers(answers: &[Answer], out: &mut Vec<u8>) {
    out.push(answers.len() as u8);
    for answer in answers {
        out.push(answer.status as u8);
        out.push(u8::from(answer.value.is_some()));
        out.extend_from_slice(&answer.number.to_le_bytes());
        let value = answer.value.as_deref().unwrap_or_default();
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }
}

impl Reader<'_> {
    pub(crate) fn answers(&mut self) -> Result<Vec<Answer>, MultiError> {
        let count = self.u8()? as usize;
        if count > ITEMS_MAX {
            return Err(MultiError::TooManyItems(count));
        }
        let mut answers = Vec::with_capacity(count);
        for _ in 0..count {
            let status = self.u8()?;
            let status = Status::from_u8(status).ok_or(MultiError::UnknownStatus(status))?;
            let present = self.flag()?;
            let number = self.u64()?;
            let len = self.u16()?;
            if !present && len != 0 {
                return Err(MultiError::Malformed("an absent answer with a value"));
            }
            let value = self.take(len)?;
            answers.push(Answer {
                status,
                number,
                value: present.then(|| value.to_vec()),
            });
        }
        Ok(answers)
    }
}

/// The answers as the tail returns them.
pub fn encode_answers(answers: &[Answer]) -> Vec<u8> {
    let mut out = Vec::with_capacity(answers_len(answers));
    push_answers(answers, &mut out);
    out
}

/// The answers of a MULTI reply's value.
pub fn decode_answers(bytes: &[u8]) -> Result<Vec<Answer>, MultiError> {
    let mut reader = Reader(bytes);
    let answers = reader.answers()?;
    reader.finish()?;
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_limits_are_named() {
        let items = [
            Item::check(b"a", 7),
            Item::put(b"a", b"one").with_flags(item_flags::IF_ABSENT),
            Item::incr_by(b"n", b"-3"),
            Item::get(b"a"),
            Item::delete(b"b"),
            Item::append(b"c", b"xyz"),
        ];
        let bytes = encode_items(&items).unwrap();
        assert_eq!(decode_items(&bytes).unwrap(), items);
        // Every truncation is refused, never a panic.
        for len in 0..bytes.len() {
            assert!(decode_items(&bytes[..len]).is_err(), "{len} bytes");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode_items(&trailing), Err(MultiError::Trailing(1)));
        assert_eq!(encode_items(&[]), Err(MultiError::Empty));
        let many = vec![Item::get(b"k"); ITEMS_MAX + 1];
        assert_eq!(encode_items(&many), Err(MultiError::TooManyItems(65)));
        let big = vec![7u8; VALUE_LEN_MAX];
        let error = encode_items(&[Item::put(b"k", &big)]).unwrap_err();
        assert!(error.to_string().contains("limit of 1024 bytes"), "{error}");
        assert_eq!(
            encode_items(&[Item::get(b"k").with_flags(item_flags::IF_EXISTS)]),
            Err(MultiError::UnknownFlags(1))
        );
        assert_eq!(
            encode_items(&[Item::of(kind::DELETE, b"k", b"v")]),
            Err(MultiError::UnexpectedValue(kind::DELETE))
        );
        assert_eq!(encode_items(&[Item::get(b"")]), Err(MultiError::EmptyKey));
        let mut unknown = encode_items(&[Item::get(b"k")]).unwrap();
        unknown[1] = 9;
        assert_eq!(decode_items(&unknown), Err(MultiError::UnknownKind(9)));
    }

    #[test]
    fn decisions_round_trip_and_give_their_answers() {
        let decided = Decided {
            writes: vec![
                Written {
                    key: b"a".to_vec(),
                    value: Some(b"one".to_vec()),
                    deadline_ms: 0,
                },
                Written {
                    key: b"b".to_vec(),
                    value: None,
                    deadline_ms: 5,
                },
            ],
            answers: vec![
                Answer::status(Status::Ok),
                Answer {
                    status: Status::Ok,
                    number: 3,
                    value: Some(b"12".to_vec()),
                },
                Answer::status(Status::NotInteger),
            ],
        };
        let bytes = decided.encode();
        assert_eq!(bytes.len(), decided.encoded_len());
        assert_eq!(Decided::decode(&bytes).unwrap(), decided);
        let answers = encode_answers(&decided.answers);
        assert_eq!(decode_answers(&answers).unwrap(), decided.answers);
        assert!(
            bytes.ends_with(&answers),
            "a decision ends with its answers"
        );
        for len in 0..bytes.len() {
            assert!(Decided::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
    }
}
