//! Redis's numbered databases over Tern's one keyspace, and walking the
//! keys (`KEYS`, `SCAN`, `RANDOMKEY`, `DBSIZE`, `FLUSHDB`).
//!
//! Database 0 is Tern's keyspace as the CLI and the client library see it;
//! database N (1-15) keeps its keys under the prefix `\0dbN\0`, so the
//! databases never meet (a key of database 0 that begins with such a prefix
//! is listed in that database instead: keys do not begin with a zero byte
//! in practice). The keys are walked slot by slot: each slot's keys come
//! from the tail of the shard the map says serves it, by name (the tail's
//! slot export, `TransferRequest::Slots` with nothing asked in full). A
//! walk sees every key that existed for the whole of it, as Redis's SCAN
//! promises; keys written or deleted meanwhile may or may not appear.

use std::io;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use tern_client::ClusterMap;
use tern_control::transfer::{self, TransferRequest};
use tern_wire::SLOT_COUNT;
use tern_wire::export::{Export, Named};

/// Databases `SELECT` accepts (Redis's default `databases 16`).
pub const DATABASES: u32 = 16;

/// The prefix of database `db`'s keys (none for database 0).
fn prefix(db: u32) -> Vec<u8> {
    if db == 0 {
        Vec::new()
    } else {
        format!("\0db{db}\0").into_bytes()
    }
}

/// Tern's key for `key` in database `db`.
pub fn key_in(db: u32, key: &[u8]) -> Vec<u8> {
    let mut stored = prefix(db);
    stored.extend_from_slice(key);
    stored
}

/// The database and the Redis key of a key as Tern stores it.
pub fn split(stored: &[u8]) -> (u32, &[u8]) {
    if let Some(rest) = stored.strip_prefix(b"\0db")
        && let Some(end) = rest.iter().position(|byte| *byte == 0)
        && let Some(db) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|digits| digits.parse::<u32>().ok())
            .filter(|db| (1..DATABASES).contains(db) && rest[..end] == *db.to_string().as_bytes())
    {
        return (db, &rest[end + 1..]);
    }
    (0, stored)
}

/// The keys of slots `[start, end)` as Tern stores them, from the tails of
/// the shards serving them; with the slot where the walk stopped (`end`, or
/// earlier at a shard's boundary: one shard is asked per call).
pub fn keys_of_slots(map: &ClusterMap, start: u32, end: u32) -> io::Result<(Vec<Vec<u8>>, u32)> {
    let (named, stop) = named_of_slots(map, start, end)?;
    Ok((named.into_iter().map(|named| named.key).collect(), stop))
}

/// As `keys_of_slots`, each key with its deadline.
fn named_of_slots(map: &ClusterMap, start: u32, end: u32) -> io::Result<(Vec<Named>, u32)> {
    let shard = map.shard_of_slot(tern_client::Slot(start));
    let mut stop = start + 1;
    while stop < end && map.shard_of_slot(tern_client::Slot(stop)).id == shard.id {
        stop += 1;
    }
    let tail = *shard.replicas.last().expect("a chain has a tail");
    Ok((fetch_names(tail, start, stop)?, stop))
}

/// Every key as Tern stores it, of every database, shard after shard.
pub fn all_stored(map: &ClusterMap) -> io::Result<Vec<Vec<u8>>> {
    Ok(all_named(map)?.into_iter().map(|named| named.key).collect())
}

/// As `all_stored`, each key with its deadline.
fn all_named(map: &ClusterMap) -> io::Result<Vec<Named>> {
    let mut stored = Vec::new();
    let mut slot = 0;
    while slot < SLOT_COUNT {
        let (named, next) = named_of_slots(map, slot, SLOT_COUNT)?;
        stored.extend(named);
        slot = next;
    }
    Ok(stored)
}

/// Every key of database `db`, as Redis names it.
pub fn all_keys(map: &ClusterMap, db: u32) -> io::Result<Vec<Vec<u8>>> {
    Ok(all_stored(map)?
        .iter()
        .filter_map(|stored| {
            let (in_db, key) = split(stored);
            (in_db == db).then(|| key.to_vec())
        })
        .collect())
}

/// What `INFO keyspace` says of one database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub keys: u64,
    /// Keys with a deadline.
    pub expires: u64,
    /// Their mean time left, in milliseconds, at `now_ms` (0 without any).
    pub avg_ttl_ms: u64,
}

/// The keys of each database (index = database), at Unix time `now_ms`.
pub fn counts(map: &ClusterMap, now_ms: u64) -> io::Result<Vec<Count>> {
    let mut counts = vec![Count::default(); DATABASES as usize];
    let mut ttl_sums = vec![0u128; DATABASES as usize];
    for named in all_named(map)? {
        let db = split(&named.key).0 as usize;
        counts[db].keys += 1;
        if named.deadline_ms != 0 {
            counts[db].expires += 1;
            ttl_sums[db] += u128::from(named.deadline_ms.saturating_sub(now_ms));
        }
    }
    for (count, sum) in counts.iter_mut().zip(ttl_sums) {
        if count.expires > 0 {
            count.avg_ttl_ms = (sum / u128::from(count.expires)) as u64;
        }
    }
    Ok(counts)
}

/// How long a tail that does not give its keys yet is asked again: one
/// that has just started serves state only once meta granted its lease, and
/// all of its transfer connections may be taken for a moment.
const FETCH_PATIENCE: Duration = Duration::from_secs(2);

fn fetch_names(tail: SocketAddrV4, start: u32, end: u32) -> io::Result<Vec<Named>> {
    // Nothing is new enough to come in full: every live key by name.
    let request = TransferRequest::Slots {
        range: [start, end],
        since: u64::MAX,
    };
    let deadline = Instant::now() + FETCH_PATIENCE;
    let bytes = loop {
        match transfer::fetch(tail, request) {
            Ok((_, bytes)) => break bytes,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => return Err(error),
        }
    };
    let export = Export::decode(&bytes).map_err(io::Error::other)?;
    Ok(export
        .unchanged
        .into_iter()
        .chain(export.keys.into_iter().map(|copied| Named {
            key: copied.key,
            deadline_ms: copied.deadline_ms,
        }))
        .collect())
}

/// Whether `text` matches the glob `pattern` as Redis's `stringmatchlen`
/// matches: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, and `\` to take the next
/// character as it is.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to go back to after a `*` that matched too little.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p + 1 < pattern.len() && pattern[p] == b'\\' {
            // An escaped character matches only itself.
            if pattern[p + 1] == text[t] {
                p += 2;
                t += 1;
                continue;
            }
        } else if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, text[t])
                        && matched
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                byte if byte == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_t)) => {
                star = Some((star_p, star_t + 1));
                p = star_p + 1;
                t = star_t + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|byte| *byte == b'*')
}

/// A `[...]` class at `pattern[open]` against `byte`: whether it matches,
/// and where the pattern goes on after it. An unclosed class runs to the
/// pattern's end, as in Redis.
fn class_match(pattern: &[u8], open: usize, byte: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == byte;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (low, high) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (low..=high).contains(&byte);
            i += 3;
        } else {
            matched |= pattern[i] == byte;
            i += 1;
        }
    }
    let next = (i + 1).min(pattern.len());
    Some((matched != negate, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_keep_apart_and_round_trip() {
        for db in 0..DATABASES {
            let stored = key_in(db, b"user:1");
            assert_eq!(split(&stored), (db, &b"user:1"[..]));
        }
        assert_ne!(key_in(3, b"k"), key_in(0, b"k"));
        // Not a prefix of ours: database 0's, whole.
        for stored in [
            &b"\0db16\0k"[..],
            b"\0db03\0k",
            b"\0db0\0k",
            b"\0dbx\0k",
            b"\0db3",
        ] {
            assert_eq!(split(stored), (0, stored), "{stored:?}");
        }
    }

    #[test]
    fn globs_match_as_redis_matches() {
        let cases: [(&str, &str, bool); 17] = [
            ("*", "anything", true),
            ("*", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:age", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern} against {text}"
            );
        }
    }
}
