//! MULTI, EXEC, DISCARD, WATCH and UNWATCH on Tern's one-shot transactions
//! (`tern_client::Client::multi`): the queued commands become the items of
//! one transaction, decided by their shard's head all together, and the
//! watched keys CHECK items with the versions WATCH read. As in Redis, a
//! command refused while queued (unknown, wrong arity, not supported in a
//! transaction) makes EXEC answer EXECABORT; a command that fails when it
//! runs (INCR of a non-integer) fails alone; a watched key that changed
//! makes EXEC answer nil and nothing runs.
//!
//! Keys of one shard make one MULTI (one chain pass); keys of several
//! shards a two-phase commit (`Client::multi_anywhere`). The multi-key
//! commands (MSET, MGET, DEL, EXISTS, ...) run the same way outside MULTI
//! (`atomically`), so that they are atomic as in Redis.

use tern_client::txn::{Answer, Item, MultiError, OwnedItem, item_flags, kind};
use tern_client::{Client, MultiOutcome};
use tern_wire::{Status, VALUE_LEN_MAX};

use crate::resp::Frame;
use crate::{arity_error, parse_i64, tern_error, upper};

/// Commands queued in a transaction at most (Redis has no limit; Tern's
/// one-shot transactions take `tern_wire::multi::ITEMS_MAX` items).
const QUEUED_MAX: usize = 64;

/// A connection's transaction under way (after MULTI).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Each queued command: its items and how its answers make its reply.
    commands: Vec<Queued>,
    /// A command was refused while queued: EXEC answers EXECABORT.
    refused: bool,
    /// Bytes of the items queued (bounded: what a transaction carries).
    bytes: usize,
}

impl Queue {
    /// A command refused while queued: answered `frame`, and EXEC will
    /// answer EXECABORT.
    pub(crate) fn refuse(&mut self, frame: Frame) -> Frame {
        self.refused = true;
        frame
    }
}

#[derive(Debug)]
struct Queued {
    items: Vec<OwnedItem>,
    reply: Reply,
}

/// How a queued command's answers become its reply.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// GET: the value or nil.
    Value,
    /// STRLEN: the value's length.
    Length,
    /// SET (NX/XX): OK, or nil when its condition failed.
    Set,
    /// SETNX: 1 when written.
    Written,
    /// MSET: OK.
    Ok,
    /// DEL, UNLINK: how many existed.
    Deleted,
    /// EXISTS: how many exist.
    Existing,
    /// INCR and the like: the new value.
    Number,
    /// APPEND: the new length.
    Appended,
    /// MGET: every value.
    Values,
}

/// A connection's watched keys (WATCH), with the version each had.
pub(crate) type Watched = Vec<(Vec<u8>, u64)>;

/// Queues one command (`name` upper-case, `args` its keys in the session's
/// database); the reply to the command now: QUEUED, or its refusal.
pub(crate) fn queue(queue: &mut Queue, name: &str, args: &[Vec<u8>]) -> Frame {
    let refused = |queue: &mut Queue, frame: Frame| queue.refuse(frame);
    if queue.commands.len() == QUEUED_MAX {
        return refused(
            queue,
            Frame::error(format!(
                "ERR a Tern transaction takes at most {QUEUED_MAX} commands"
            )),
        );
    }
    match items_of(name, args) {
        Ok(queued) => {
            let bytes: usize = queued
                .items
                .iter()
                .map(|item| item.item().encoded_len())
                .sum();
            if queue.bytes + bytes > VALUE_LEN_MAX {
                // Refused now, so that a queue holds at most this much.
                return refused(
                    queue,
                    Frame::error(format!(
                        "ERR a Tern transaction's commands take at most {VALUE_LEN_MAX} bytes \
                         (keys and values together)"
                    )),
                );
            }
            queue.bytes += bytes;
            queue.commands.push(queued);
            Frame::Simple("QUEUED".into())
        }
        Err(frame) => refused(queue, frame),
    }
}

fn items_of(name: &str, args: &[Vec<u8>]) -> Result<Queued, Frame> {
    let one = |kind, key: &[u8], value: &[u8], reply| {
        Ok(Queued {
            items: vec![OwnedItem::new(kind, key, value)],
            reply,
        })
    };
    let each = |kind, keys: &[Vec<u8>], reply| {
        Ok(Queued {
            items: keys
                .iter()
                .map(|key| OwnedItem::new(kind, key, &[]))
                .collect(),
            reply,
        })
    };
    let number = |key: &[u8], delta: i64| {
        one(
            kind::INCR_BY,
            key,
            delta.to_string().as_bytes(),
            Reply::Number,
        )
    };
    match (name, args) {
        ("GET", [key]) => one(kind::GET, key, &[], Reply::Value),
        ("STRLEN", [key]) => one(kind::GET, key, &[], Reply::Length),
        ("SET", [key, value, options @ ..]) => {
            let flags = match options {
                [] => 0,
                [option] if upper(option) == "NX" => item_flags::IF_ABSENT,
                [option] if upper(option) == "XX" => item_flags::IF_EXISTS,
                _ => {
                    return Err(not_in_transaction("SET with options other than NX or XX"));
                }
            };
            let mut item = OwnedItem::new(kind::PUT, key, value);
            item.flags = flags;
            Ok(Queued {
                items: vec![item],
                reply: Reply::Set,
            })
        }
        ("SETNX", [key, value]) => {
            let mut item = OwnedItem::new(kind::PUT, key, value);
            item.flags = item_flags::IF_ABSENT;
            Ok(Queued {
                items: vec![item],
                reply: Reply::Written,
            })
        }
        ("MSET", pairs) if !pairs.is_empty() && pairs.len().is_multiple_of(2) => Ok(Queued {
            items: pairs
                .chunks(2)
                .map(|pair| OwnedItem::new(kind::PUT, &pair[0], &pair[1]))
                .collect(),
            reply: Reply::Ok,
        }),
        ("MGET", keys) if !keys.is_empty() => each(kind::GET, keys, Reply::Values),
        ("DEL" | "UNLINK", keys) if !keys.is_empty() => each(kind::DELETE, keys, Reply::Deleted),
        ("EXISTS" | "TOUCH", keys) if !keys.is_empty() => each(kind::GET, keys, Reply::Existing),
        ("INCR", [key]) => number(key, 1),
        ("DECR", [key]) => number(key, -1),
        ("INCRBY" | "DECRBY", [key, delta]) => match parse_i64(delta) {
            Some(delta) if name == "INCRBY" => number(key, delta),
            Some(delta) => match delta.checked_neg() {
                Some(negated) => number(key, negated),
                None => Err(crate::integer_error()),
            },
            None => Err(crate::integer_error()),
        },
        ("APPEND", [key, value]) => one(kind::APPEND, key, value, Reply::Appended),
        (
            "GET" | "STRLEN" | "SET" | "SETNX" | "MSET" | "MGET" | "DEL" | "UNLINK" | "EXISTS"
            | "TOUCH" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "APPEND",
            _,
        ) => Err(arity_error(name)),
        _ => Err(not_in_transaction(name)),
    }
}

fn not_in_transaction(what: &str) -> Frame {
    Frame::error(format!(
        "ERR {what} is not supported inside MULTI by Tern yet (GET, SET [NX|XX], SETNX, \
         MSET, MGET, DEL, UNLINK, EXISTS, INCR, DECR, INCRBY, DECRBY, APPEND, STRLEN are)"
    ))
}

/// EXEC: runs the queue as one transaction, checking the watched keys.
pub(crate) fn exec(client: &mut Client, queue: Queue, watched: &Watched) -> Frame {
    if queue.refused {
        return Frame::error("EXECABORT Transaction discarded because of previous errors.");
    }
    let mut items: Vec<Item<'_>> = watched
        .iter()
        .map(|(key, version)| Item::check(key, *version))
        .collect();
    let checks = items.len();
    for queued in &queue.commands {
        items.extend(queued.items.iter().map(OwnedItem::item));
    }
    if items.is_empty() {
        // Nothing queued nor watched: Redis answers an empty array.
        return Frame::Array(Vec::new());
    }
    let answers = match client.multi_anywhere(&items) {
        Ok(MultiOutcome::Committed {
            answers: Some(answers),
            ..
        }) => answers,
        Ok(MultiOutcome::Committed { answers: None, .. }) => {
            return Frame::error(
                "ERR the transaction committed but its replies were lost (answered by a resend)",
            );
        }
        Ok(MultiOutcome::CheckFailed { .. }) => return Frame::NullArray,
        Err(error) => return tern_error(error),
    };
    let mut answers = answers.into_iter().skip(checks);
    let replies = queue
        .commands
        .iter()
        .map(|queued| {
            let own: Vec<Answer> = answers.by_ref().take(queued.items.len()).collect();
            reply_of(queued.reply, &own)
        })
        .collect();
    Frame::Array(replies)
}

fn reply_of(reply: Reply, answers: &[Answer]) -> Frame {
    let Some(first) = answers.first() else {
        return Frame::error("ERR the transaction's answers are missing");
    };
    let value = |answer: &Answer| answer.value.clone().map_or(Frame::Nil, Frame::bulk);
    match (reply, first.status) {
        (Reply::Number, Status::NotInteger) => crate::integer_error(),
        (Reply::Appended, Status::TooLarge) => Frame::error(
            "ERR string exceeds maximum allowed size (the longest value the Tern replicas take)",
        ),
        (Reply::Value, _) => value(first),
        (Reply::Length, _) => Frame::Integer(first.value.as_ref().map_or(0, Vec::len) as i64),
        (Reply::Set, Status::Ok) | (Reply::Ok, _) => Frame::ok(),
        (Reply::Set, _) => Frame::Nil,
        (Reply::Written, status) => Frame::Integer(i64::from(status == Status::Ok)),
        (Reply::Deleted, _) => Frame::Integer(
            answers
                .iter()
                .filter(|answer| answer.status == Status::Ok)
                .count() as i64,
        ),
        (Reply::Existing, _) => Frame::Integer(
            answers
                .iter()
                .filter(|answer| answer.value.is_some())
                .count() as i64,
        ),
        (Reply::Number, _) => first
            .value
            .as_deref()
            .and_then(parse_i64)
            .map_or_else(crate::integer_error, Frame::Integer),
        (Reply::Appended, _) => Frame::Integer(first.number as i64),
        (Reply::Values, _) => Frame::Array(answers.iter().map(value).collect()),
    }
}

/// The multi-key commands run as one transaction outside MULTI (MSET,
/// MGET, DEL, UNLINK, EXISTS, TOUCH of more than one key): atomic, as in
/// Redis, when they fit a transaction (`tern_wire::multi::ITEMS_MAX`
/// items, `VALUE_LEN_MAX` bytes); larger ones run key by key.
pub(crate) fn runs_atomically(name: &str, args: &[Vec<u8>]) -> bool {
    let keys = match name {
        "MSET" => args.len() / 2,
        "MGET" | "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => args.len(),
        _ => return false,
    };
    keys > 1
        && items_of(name, args).is_ok_and(|queued| {
            let items: Vec<Item<'_>> = queued.items.iter().map(OwnedItem::item).collect();
            tern_wire::multi::encode_items(&items).is_ok()
        })
}

/// Runs one command (`runs_atomically`) as a transaction: one MULTI of
/// its shard, or two-phase commit across shards. None when what it reads
/// is too large for one transaction's record (the values of an MGET):
/// the caller runs it key by key.
pub(crate) fn atomically(client: &mut Client, name: &str, args: &[Vec<u8>]) -> Option<Frame> {
    let queued = match items_of(name, args) {
        Ok(queued) => queued,
        Err(refusal) => return Some(refusal),
    };
    let items: Vec<Item<'_>> = queued.items.iter().map(OwnedItem::item).collect();
    Some(match client.multi_anywhere(&items) {
        Ok(MultiOutcome::Committed {
            answers: Some(answers),
            ..
        }) => reply_of(queued.reply, &answers),
        Ok(MultiOutcome::Committed { answers: None, .. }) => Frame::error(
            "ERR the command committed but its replies were lost (answered by a resend)",
        ),
        // No CHECK item: never.
        Ok(MultiOutcome::CheckFailed { .. }) => Frame::error("ERR the command conflicted"),
        Err(tern_client::ClientError::Transaction(MultiError::DecidedTooLarge)) => return None,
        Err(error) => tern_error(error),
    })
}

/// MSETNX: every key set if none exists, as one transaction (a CHECK that
/// each is absent, then the writes), across shards by two-phase commit.
pub(crate) fn mset_nx(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    if args.is_empty() || !args.len().is_multiple_of(2) {
        return arity_error("MSETNX");
    }
    let pairs: Vec<&[Vec<u8>]> = args.chunks(2).collect();
    let mut items: Vec<Item<'_>> = pairs.iter().map(|pair| Item::check(&pair[0], 0)).collect();
    items.extend(pairs.iter().map(|pair| Item::put(&pair[0], &pair[1])));
    match client.multi_anywhere(&items) {
        Ok(MultiOutcome::Committed { .. }) => Frame::Integer(1),
        Ok(MultiOutcome::CheckFailed { .. }) => Frame::Integer(0),
        Err(error) => tern_error(error),
    }
}

/// WATCH: remembers each key's version now.
pub(crate) fn watch(client: &mut Client, watched: &mut Watched, keys: &[Vec<u8>]) -> Frame {
    if keys.is_empty() {
        return arity_error("WATCH");
    }
    for key in keys {
        match client.get(key) {
            Ok(found) => {
                let version = found.map_or(0, |found| found.version);
                if !watched.iter().any(|(known, _)| known == key) {
                    watched.push((key.clone(), version));
                }
            }
            Err(error) => return tern_error(error),
        }
    }
    Frame::ok()
}
