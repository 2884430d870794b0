//! The versioned in-memory store of one shard on one replica.
//!
//! Every write carries the sequence number the coordinator gave it, which
//! orders it; its version (what clients see and CAS on) is the seq plus the
//! store's `offset`, which is 0 until a migration brings in values from
//! another shard. An installed value keeps the version it had there, and the
//! offset rises so that every later version is higher: versions of a key only
//! ever grow, whatever shard wrote them. The store keeps, per key, the
//! newest version at or below the replica's known `commit_seq` plus every newer
//! (not yet committed) version, so that a read stamped with an older
//! `commit_seq` can still be answered with the right value (DESIGN rule 5).
//!
//! The log (`log`) is the one place with file I/O; the store itself has none.
//! No knowledge of the wire here: record payloads are opaque bytes.

pub mod log;

use std::collections::{BTreeSet, HashMap, VecDeque};

/// What a sequenced write does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write<'a> {
    Put(&'a [u8]),
    Delete,
    /// A value copied from another shard, with the version it had there.
    Install {
        value: &'a [u8],
        version: u64,
    },
}

/// A value as read: its version (the sequence number that wrote it, or the
/// version it was installed with), bytes and deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versioned<'a> {
    pub version: u64,
    pub value: &'a [u8],
    /// When the value expires (Unix milliseconds), 0 when it does not. The
    /// store keeps an expired value until a sequenced delete removes it;
    /// readers treat it as absent from its deadline on ([`Versioned::live_at`]).
    pub deadline_ms: u64,
}

impl Versioned<'_> {
    /// Whether the value still exists at `now_ms` (Unix milliseconds).
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.deadline_ms == 0 || now_ms < self.deadline_ms
    }
}

#[derive(Debug)]
struct Version {
    seq: u64,
    /// What clients see: `seq`, unless installed by a migration.
    version: u64,
    /// `None` is a deletion (tombstone).
    value: Option<Box<[u8]>>,
    /// Unix milliseconds; 0: none.
    deadline_ms: u64,
}

impl Version {
    fn read(&self) -> Option<Versioned<'_>> {
        Some(Versioned {
            version: self.version,
            value: self.value.as_deref()?,
            deadline_ms: self.deadline_ms,
        })
    }

    /// The deadline of a live version (0 for a deletion or none).
    fn live_deadline(&self) -> u64 {
        if self.value.is_some() {
            self.deadline_ms
        } else {
            0
        }
    }
}

/// Versions of one key, oldest first.
#[derive(Debug, Default)]
struct Versions(Vec<Version>);

impl Versions {
    fn newest(&self) -> Option<&Version> {
        self.0.last()
    }

    /// Drops versions that no read can need any more: everything older than
    /// the newest version at or below `commit_seq`, and that version too when
    /// it is a deletion (an absent key needs no record). Returns true when no
    /// version is left, i.e. the key can be forgotten.
    fn prune(&mut self, commit_seq: u64) -> bool {
        if let Some(floor) = self.0.iter().rposition(|version| version.seq <= commit_seq) {
            let keep_from = if self.0[floor].value.is_none() {
                floor + 1
            } else {
                floor
            };
            self.0.drain(..keep_from);
        }
        self.0.is_empty()
    }
}

/// Which bucket a key belongs to. The store keeps its keys by bucket, so
/// that the keys of some buckets can be listed or dropped without walking
/// the others (a replica buckets its keys by hash slot, for migrations).
pub type BucketOf = fn(&[u8]) -> u32;

/// The data of one shard on one replica.
#[derive(Debug)]
pub struct Store {
    /// The keys of bucket `b` in `buckets[b]`.
    buckets: Vec<HashMap<Box<[u8]>, Versions>>,
    bucket_of: BucketOf,
    commit_seq: u64,
    applied_seq: u64,
    live_keys: usize,
    /// Deletions not yet committed, oldest first, so that a deleted key that is
    /// never written again is still forgotten once its deletion commits.
    pending_deletions: VecDeque<(u64, Box<[u8]>)>,
    /// What a write's version adds to its seq (raised by `rebase` and by
    /// installs, never lowered).
    offset: u64,
    /// (deadline, key) of every key whose newest version is a value with a
    /// deadline: the keys to reap, soonest first.
    deadlines: BTreeSet<(u64, Box<[u8]>)>,
}

impl Default for Store {
    fn default() -> Self {
        Store::with_buckets(1, |_| 0)
    }
}

impl Store {
    /// A store with all its keys in one bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose keys go to `count` buckets by `bucket_of`, which must
    /// give every key a bucket below `count`.
    pub fn with_buckets(count: u32, bucket_of: BucketOf) -> Self {
        Store {
            buckets: (0..count.max(1)).map(|_| HashMap::new()).collect(),
            bucket_of,
            commit_seq: 0,
            applied_seq: 0,
            live_keys: 0,
            pending_deletions: VecDeque::new(),
            offset: 0,
            deadlines: BTreeSet::new(),
        }
    }

    fn bucket(&self, key: &[u8]) -> &HashMap<Box<[u8]>, Versions> {
        &self.buckets[(self.bucket_of)(key) as usize]
    }

    fn bucket_mut(&mut self, key: &[u8]) -> &mut HashMap<Box<[u8]>, Versions> {
        let index = (self.bucket_of)(key) as usize;
        &mut self.buckets[index]
    }

    /// Highest sequence number applied.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// Highest sequence number this replica knows to be committed.
    pub fn commit_seq(&self) -> u64 {
        self.commit_seq
    }

    /// Number of keys whose newest applied version is a value.
    pub fn live_keys(&self) -> usize {
        self.live_keys
    }

    /// Number of keys whose newest applied version has a deadline.
    pub fn expiring_keys(&self) -> usize {
        self.deadlines.len()
    }

    /// Keys whose newest version's deadline is at or before `now_ms`,
    /// soonest first: the ones a head reaps.
    pub fn expired_at(&self, now_ms: u64) -> impl Iterator<Item = &[u8]> {
        self.deadlines
            .iter()
            .take_while(move |(deadline, _)| *deadline <= now_ms)
            .map(|(_, key)| &key[..])
    }

    /// The version a write applied at `seq` gets.
    pub fn version_of(&self, seq: u64) -> u64 {
        seq + self.offset
    }

    /// Consumes `seq` and makes every later write's version at least
    /// `floor` (a migration's destination, above every version the moved
    /// keys had at their source).
    pub fn rebase(&mut self, seq: u64, floor: u64) {
        self.skip(seq);
        self.raise_offset(seq, floor);
    }

    fn raise_offset(&mut self, seq: u64, floor: u64) {
        self.offset = self.offset.max(floor.saturating_sub(seq));
    }

    /// Consumes `seq` and forgets every key of the buckets `[start, end)`,
    /// at once and without tombstones: for keys of slots that moved to
    /// another shard, which this shard serves no more.
    pub fn drop_buckets(&mut self, seq: u64, [start, end]: [u32; 2]) {
        self.skip(seq);
        let end = (end as usize).min(self.buckets.len());
        for bucket in &mut self.buckets[(start as usize).min(end)..end] {
            let live = bucket
                .values()
                .filter(|versions| versions.newest().is_some_and(|v| v.value.is_some()))
                .count();
            self.live_keys -= live;
            bucket.clear();
        }
        let bucket_of = self.bucket_of;
        self.pending_deletions
            .retain(|(_, key)| !(start..end as u32).contains(&bucket_of(key)));
        self.deadlines
            .retain(|(_, key)| !(start..end as u32).contains(&bucket_of(key)));
    }

    /// Records that everything up to `commit_seq` is acknowledged by the tail.
    /// Never moves backwards (stamps and piggybacks can arrive out of order).
    pub fn observe_commit(&mut self, commit_seq: u64) {
        if commit_seq <= self.commit_seq {
            return;
        }
        self.commit_seq = commit_seq;
        while let Some((seq, _)) = self.pending_deletions.front() {
            if *seq > commit_seq {
                break;
            }
            let (_, key) = self.pending_deletions.pop_front().expect("front exists");
            let bucket = self.bucket_mut(&key);
            if bucket
                .get_mut(&key)
                .is_some_and(|versions| versions.prune(commit_seq))
            {
                bucket.remove(&key);
                if bucket.is_empty() {
                    // A map keeps its capacity when emptied: after a mass
                    // delete (expiry, a flush) the memory would stay taken.
                    *bucket = HashMap::new();
                }
            }
        }
        let queue = &mut self.pending_deletions;
        if queue.capacity() > 4096 && queue.len() < queue.capacity() / 4 {
            queue.shrink_to(queue.len() * 2);
        }
    }

    /// Forgets the versions of `key` older than its newest committed one
    /// (as `observe_commit` does for a deleted key): a read stamped below
    /// that version then gets it (`read_at`), not what came before.
    pub fn prune_key(&mut self, key: &[u8]) {
        let commit_seq = self.commit_seq;
        let bucket = self.bucket_mut(key);
        if bucket
            .get_mut(key)
            .is_some_and(|versions| versions.prune(commit_seq))
        {
            // Only a committed deletion leaves nothing: it was counted
            // dead when applied.
            bucket.remove(key);
        }
    }

    /// Applies the write with sequence number `seq`. Writes must be applied in
    /// strictly increasing sequence order; the caller (the replica role)
    /// guarantees it, so a violation is a programmer error.
    pub fn apply(&mut self, seq: u64, key: &[u8], write: Write<'_>) {
        self.apply_expiring(seq, key, write, 0);
    }

    /// Applies a write whose value expires at `deadline_ms` (Unix
    /// milliseconds; 0: never; ignored for a deletion), as `apply` does.
    pub fn apply_expiring(&mut self, seq: u64, key: &[u8], write: Write<'_>, deadline_ms: u64) {
        self.advance_to(seq);
        self.write_key(seq, key, write, deadline_ms);
    }

    /// Applies several writes under the one sequence number `seq` (a
    /// migration's INSTALL_KEYS), in order, each with its deadline, as
    /// `apply_expiring` applies one.
    pub fn apply_all<'a>(
        &mut self,
        seq: u64,
        writes: impl IntoIterator<Item = (&'a [u8], Write<'a>, u64)>,
    ) {
        self.advance_to(seq);
        for (key, write, deadline_ms) in writes {
            self.write_key(seq, key, write, deadline_ms);
        }
    }

    fn advance_to(&mut self, seq: u64) {
        assert!(
            seq > self.applied_seq,
            "write {seq} applied after {}",
            self.applied_seq
        );
        self.applied_seq = seq;
    }

    fn write_key(&mut self, seq: u64, key: &[u8], write: Write<'_>, deadline_ms: u64) {
        let (value, version) = match write {
            Write::Put(value) => (Some(Box::<[u8]>::from(value)), self.version_of(seq)),
            Write::Delete => (None, self.version_of(seq)),
            Write::Install { value, version } => {
                // Later writes get higher versions than the installed one.
                self.raise_offset(seq, version);
                (Some(Box::<[u8]>::from(value)), version)
            }
        };
        let commit_seq = self.commit_seq;
        let bucket = (self.bucket_of)(key) as usize;
        let versions = match self.buckets[bucket].get_mut(key) {
            Some(versions) => versions,
            None => {
                if value.is_none() {
                    // Deleting an absent key leaves nothing to remember: a read
                    // at any stamp finds the key absent either way.
                    return;
                }
                self.buckets[bucket].entry(Box::from(key)).or_default()
            }
        };
        let was_live = versions
            .newest()
            .is_some_and(|version| version.value.is_some());
        let was_due = versions.newest().map_or(0, Version::live_deadline);
        let is_live = value.is_some();
        let deadline_ms = if is_live { deadline_ms } else { 0 };
        versions.0.push(Version {
            seq,
            version,
            value,
            deadline_ms,
        });
        // The new version is above every commit_seq seen so far (the tail has
        // not acknowledged it yet), so pruning never empties the list here.
        versions.prune(commit_seq);
        if was_due != deadline_ms {
            if was_due != 0 {
                self.deadlines.remove(&(was_due, Box::from(key)));
            }
            if deadline_ms != 0 {
                self.deadlines.insert((deadline_ms, Box::from(key)));
            }
        }
        match (was_live, is_live) {
            (false, true) => self.live_keys += 1,
            (true, false) => self.live_keys -= 1,
            _ => {}
        }
        if !is_live {
            self.pending_deletions.push_back((seq, Box::from(key)));
        }
    }

    /// Consumes sequence number `seq` without writing anything (a failed CAS,
    /// a deduplicated retry, a gap fill): sequence numbers stay contiguous.
    pub fn skip(&mut self, seq: u64) {
        assert!(
            seq > self.applied_seq,
            "write {seq} applied after {}",
            self.applied_seq
        );
        self.applied_seq = seq;
    }

    /// The newest applied version of `key`, committed or not. Used by the
    /// head to execute CAS and by the tail for reads of dirty keys.
    pub fn latest(&self, key: &[u8]) -> Option<Versioned<'_>> {
        self.bucket(key).get(key)?.newest()?.read()
    }

    /// The newest version of `key` at or below `stamp` (DESIGN rule 5).
    ///
    /// When the stamp is older than anything retained, the oldest retained
    /// version is committed (pruning keeps the newest committed version), and
    /// returning it is linearizable: it was committed before this read ran.
    pub fn read_at(&self, key: &[u8], stamp: u64) -> Option<Versioned<'_>> {
        let versions = &self.bucket(key).get(key)?.0;
        let version = match versions.iter().rev().find(|version| version.seq <= stamp) {
            Some(version) => version,
            None => versions
                .first()
                .filter(|version| version.seq <= self.commit_seq)?,
        };
        version.read()
    }

    /// Every key with a value in the buckets `[start, end)`, each with its
    /// newest applied version.
    pub fn live_in(&self, [start, end]: [u32; 2]) -> impl Iterator<Item = (&[u8], Versioned<'_>)> {
        let end = (end as usize).min(self.buckets.len());
        self.buckets[(start as usize).min(end)..end]
            .iter()
            .flatten()
            .filter_map(|(key, versions)| Some((&key[..], versions.newest()?.read()?)))
    }

    /// Number of versions held for `key` (for tests and statistics).
    pub fn version_count(&self, key: &[u8]) -> usize {
        self.bucket(key)
            .get(key)
            .map_or(0, |versions| versions.0.len())
    }
}

/// Why snapshot bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid store snapshot: {}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

/// Reads little-endian fields off the front of a byte slice.
/// Added to a snapshot's version kind (1, 2) when a deadline follows the
/// version.
const KIND_EXPIRING: u8 = 4;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < length {
            return Err(SnapshotError(format!(
                "truncated: {length} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (taken, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(taken)
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

impl Store {
    /// Appends the whole state to `out`: applied and commit seq, and every
    /// retained version of every key (uncommitted ones included, so that a
    /// read stamped below them is still answered right after a restart).
    pub fn encode(&self, out: &mut Vec<u8>) {
        // A marker no applied seq can be, then the offset: snapshots written
        // before the offset existed start with the applied seq.
        out.extend_from_slice(&u64::MAX.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.applied_seq.to_le_bytes());
        out.extend_from_slice(&self.commit_seq.to_le_bytes());
        let key_count: usize = self.buckets.iter().map(HashMap::len).sum();
        out.extend_from_slice(&(key_count as u64).to_le_bytes());
        for (key, versions) in self.buckets.iter().flatten() {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(versions.0.len() as u32).to_le_bytes());
            for version in &versions.0 {
                out.extend_from_slice(&version.seq.to_le_bytes());
                match &version.value {
                    Some(value) => {
                        let expiring = if version.deadline_ms == 0 {
                            0
                        } else {
                            KIND_EXPIRING
                        };
                        if version.version == version.seq {
                            out.push(1 | expiring);
                        } else {
                            out.push(2 | expiring);
                            out.extend_from_slice(&version.version.to_le_bytes());
                        }
                        if expiring != 0 {
                            out.extend_from_slice(&version.deadline_ms.to_le_bytes());
                        }
                        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                        out.extend_from_slice(value);
                    }
                    None => out.push(0),
                }
            }
        }
    }

    /// Decodes what `encode` wrote at the start of `bytes`; returns the store
    /// and the number of bytes used.
    pub fn decode(bytes: &[u8]) -> Result<(Store, usize), SnapshotError> {
        Store::decode_into(bytes, Store::new())
    }

    /// As `decode`, into `store` (empty, with its buckets).
    pub fn decode_into(bytes: &[u8], mut store: Store) -> Result<(Store, usize), SnapshotError> {
        let mut reader = Reader(bytes);
        store.applied_seq = reader.u64()?;
        if store.applied_seq == u64::MAX {
            store.offset = reader.u64()?;
            store.applied_seq = reader.u64()?;
        }
        store.commit_seq = reader.u64()?;
        let key_count = reader.u64()?;
        let mut deletions = Vec::new();
        for _ in 0..key_count {
            let key_length = reader.u32()? as usize;
            let key: Box<[u8]> = reader.take(key_length)?.into();
            let version_count = reader.u32()?;
            let mut versions = Versions::default();
            for _ in 0..version_count {
                let seq = reader.u64()?;
                let kind = reader.take(1)?[0];
                // A value's kind (1, 2) plus KIND_EXPIRING when a deadline follows.
                let expiring = kind & KIND_EXPIRING != 0 && kind != KIND_EXPIRING;
                let kind = if expiring {
                    kind & !KIND_EXPIRING
                } else {
                    kind
                };
                let version = if kind == 2 { reader.u64()? } else { seq };
                let deadline_ms = if expiring { reader.u64()? } else { 0 };
                if expiring && deadline_ms == 0 {
                    return Err(SnapshotError(format!("version {seq}: a deadline of 0")));
                }
                let value = match kind {
                    0 => {
                        deletions.push((seq, key.clone()));
                        None
                    }
                    1 | 2 => {
                        let length = reader.u32()? as usize;
                        Some(reader.take(length)?.into())
                    }
                    other => return Err(SnapshotError(format!("version kind {other}"))),
                };
                if versions.newest().is_some_and(|newest| newest.seq >= seq)
                    || seq > store.applied_seq
                {
                    return Err(SnapshotError(format!("version {seq} out of order")));
                }
                versions.0.push(Version {
                    seq,
                    version,
                    value,
                    deadline_ms,
                });
            }
            if versions
                .newest()
                .is_some_and(|newest| newest.value.is_some())
            {
                store.live_keys += 1;
            }
            let due = versions.newest().map_or(0, Version::live_deadline);
            if due != 0 {
                store.deadlines.insert((due, key.clone()));
            }
            let bucket = (store.bucket_of)(&key) as usize;
            store.buckets[bucket].insert(key, versions);
        }
        deletions.sort();
        store.pending_deletions = deletions.into();
        Ok((store, bytes.len() - reader.0.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_value_keeps_its_version_and_is_ordered_by_its_seq() {
        let mut store = Store::new();
        store.apply(1, b"k", Write::Put(b"here"));
        // Copied from another shard where it had version 7000; here it is
        // the write of seq 2, and a read stamped 2 sees it.
        store.apply(
            2,
            b"m",
            Write::Install {
                value: b"moved",
                version: 7000,
            },
        );
        store.observe_commit(2);
        let moved = store.read_at(b"m", 2).unwrap();
        assert_eq!((moved.version, moved.value), (7000, &b"moved"[..]));
        // A later write gets a higher version, on any key.
        store.apply(3, b"m", Write::Put(b"later"));
        assert_eq!(store.latest(b"m").unwrap().version, 7001);
        assert_eq!(store.read_at(b"m", 2).unwrap().version, 7000);
        store.apply(4, b"k", Write::Put(b"again"));
        assert_eq!(store.latest(b"k").unwrap().version, 7002);
        // Snapshots keep both numbers.
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        let (restored, _) = Store::decode(&bytes).unwrap();
        assert_eq!(restored.read_at(b"m", 2).unwrap().version, 7000);
        assert_eq!(restored.read_at(b"k", 2).unwrap().version, 1);
        assert_eq!(restored.latest(b"m").unwrap().value, b"later");
    }

    #[test]
    fn a_rebase_lifts_every_later_version_above_its_floor_and_survives_snapshots() {
        let mut store = Store::new();
        store.apply(1, b"k", Write::Put(b"a"));
        store.rebase(2, 5000);
        store.apply(3, b"k", Write::Put(b"b"));
        assert_eq!(store.latest(b"k").unwrap().version, 5001);
        // A lower floor never lowers versions.
        store.rebase(4, 10);
        store.apply(5, b"k", Write::Put(b"c"));
        assert_eq!(store.latest(b"k").unwrap().version, 5003);
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        let (mut restored, _) = Store::decode(&bytes).unwrap();
        restored.apply(6, b"k", Write::Put(b"d"));
        assert_eq!(restored.latest(b"k").unwrap().version, 5004);
    }

    #[test]
    fn dropped_keys_are_forgotten_at_once() {
        let mut store = Store::with_buckets(2, |key| u32::from(key.starts_with(b"gone")));
        store.apply(1, b"gone-1", Write::Put(b"a"));
        store.apply(2, b"kept", Write::Put(b"b"));
        store.apply(3, b"gone-2", Write::Delete);
        store.apply(4, b"gone-3", Write::Put(b"c"));
        store.apply(5, b"gone-3", Write::Delete);
        store.drop_buckets(6, [1, 2]);
        assert_eq!(store.applied_seq(), 6);
        assert_eq!(store.live_keys(), 1);
        assert_eq!(store.version_count(b"gone-1"), 0);
        assert_eq!(store.version_count(b"gone-3"), 0);
        assert_eq!(store.latest(b"kept").unwrap().value, b"b");
        store.observe_commit(6);
        assert_eq!(store.latest(b"kept").unwrap().value, b"b");
    }

    #[test]
    fn snapshots_written_before_the_offset_existed_still_restore() {
        // The old format: applied, commit, keys (one key, one version).
        let mut old = Vec::new();
        old.extend_from_slice(&3u64.to_le_bytes());
        old.extend_from_slice(&3u64.to_le_bytes());
        old.extend_from_slice(&1u64.to_le_bytes());
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(b"k");
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&3u64.to_le_bytes());
        old.push(1);
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(b"v");
        let (store, used) = Store::decode(&old).unwrap();
        assert_eq!(used, old.len());
        assert_eq!(store.latest(b"k").unwrap().version, 3);
        assert_eq!(store.version_of(4), 4);
    }

    #[test]
    fn deadlines_travel_with_their_version_and_the_due_keys_are_listed_soonest_first() {
        let mut store = Store::new();
        store.apply_expiring(1, b"late", Write::Put(b"a"), 9000);
        store.apply_expiring(2, b"soon", Write::Put(b"b"), 5000);
        store.apply(3, b"lasting", Write::Put(b"c"));
        store.observe_commit(3);
        assert_eq!(store.expiring_keys(), 2);
        let due: Vec<&[u8]> = store.expired_at(6000).collect();
        assert_eq!(due, vec![&b"soon"[..]]);
        let soon = store.latest(b"soon").unwrap();
        assert_eq!(soon.deadline_ms, 5000);
        assert!(soon.live_at(4999) && !soon.live_at(5000));
        assert!(store.latest(b"lasting").unwrap().live_at(u64::MAX));
        // A new version with another deadline, or none, moves the key in
        // the list; a read at an older stamp still gets the older deadline.
        store.apply_expiring(4, b"soon", Write::Put(b"b2"), 20_000);
        store.apply(5, b"late", Write::Put(b"a2"));
        assert_eq!(store.read_at(b"soon", 3).unwrap().deadline_ms, 5000);
        assert_eq!(store.expired_at(10_000).count(), 0);
        assert_eq!(store.expiring_keys(), 1);
        // Snapshots keep deadlines; a delete takes the key off the list.
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        let (mut restored, used) = Store::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(restored.latest(b"soon").unwrap().deadline_ms, 20_000);
        assert_eq!(restored.read_at(b"soon", 3).unwrap().deadline_ms, 5000);
        assert_eq!(restored.latest(b"late").unwrap().deadline_ms, 0);
        assert_eq!(
            restored.expired_at(u64::MAX).collect::<Vec<_>>(),
            vec![&b"soon"[..]]
        );
        restored.apply(6, b"soon", Write::Delete);
        assert_eq!(restored.expiring_keys(), 0);
        // A dropped bucket's keys leave the list too.
        let mut buckets = Store::with_buckets(2, |key| u32::from(key.starts_with(b"gone")));
        buckets.apply_expiring(1, b"gone", Write::Put(b"x"), 10);
        buckets.apply_expiring(2, b"kept", Write::Put(b"y"), 10);
        buckets.drop_buckets(3, [1, 2]);
        assert_eq!(
            buckets.expired_at(10).collect::<Vec<_>>(),
            vec![&b"kept"[..]]
        );
    }

    #[test]
    fn read_at_stamp_ignores_uncommitted_newer_versions() {
        // DESIGN rule 5: a clean read stamped with commit_seq returns the
        // newest version at or below the stamp, not a newer in-flight write.
        let mut store = Store::new();
        store.apply(1, b"k", Write::Put(b"old"));
        store.observe_commit(1);
        store.apply(2, b"k", Write::Put(b"new"));
        assert_eq!(store.read_at(b"k", 1).unwrap().value, b"old");
        assert_eq!(store.read_at(b"k", 2).unwrap().value, b"new");
        assert_eq!(store.latest(b"k").unwrap().value, b"new");
        assert_eq!(store.version_count(b"k"), 2);
    }

    #[test]
    fn committed_versions_are_pruned_on_the_next_write() {
        let mut store = Store::new();
        for seq in 1..=10 {
            store.apply(seq, b"k", Write::Put(b"v"));
            store.observe_commit(seq);
        }
        store.apply(11, b"k", Write::Put(b"v"));
        // The newest committed version (10) and the uncommitted one (11).
        assert_eq!(store.version_count(b"k"), 2);
    }

    #[test]
    fn stale_stamp_gets_the_oldest_retained_committed_version() {
        let mut store = Store::new();
        store.apply(1, b"k", Write::Put(b"a"));
        store.apply(2, b"k", Write::Put(b"b"));
        store.observe_commit(2);
        store.apply(3, b"k", Write::Put(b"c"));
        // Version 1 is gone; stamp 1 gets version 2, committed before the read.
        assert_eq!(store.read_at(b"k", 1).unwrap().version, 2);
    }

    #[test]
    fn a_key_written_after_the_stamp_is_absent_at_the_stamp() {
        let mut store = Store::new();
        store.apply(5, b"k", Write::Put(b"a"));
        assert_eq!(store.read_at(b"k", 4), None);
        assert_eq!(store.read_at(b"k", 5).unwrap().value, b"a");
    }

    #[test]
    fn deletion_hides_the_value_and_a_committed_deletion_frees_the_key() {
        let mut store = Store::new();
        store.apply(1, b"k", Write::Put(b"a"));
        store.observe_commit(1);
        store.apply(2, b"k", Write::Delete);
        assert_eq!(store.latest(b"k"), None);
        assert_eq!(store.read_at(b"k", 1).unwrap().value, b"a");
        assert_eq!(store.live_keys(), 0);
        // Once the deletion commits, nothing of the key is kept.
        store.observe_commit(2);
        assert_eq!(store.version_count(b"k"), 0);
        assert_eq!(store.read_at(b"k", 1), None);
    }

    #[test]
    fn a_committed_deletion_below_a_newer_write_is_dropped() {
        let mut store = Store::new();
        store.apply(1, b"k", Write::Put(b"a"));
        store.apply(2, b"k", Write::Delete);
        store.apply(3, b"k", Write::Put(b"b"));
        store.observe_commit(2);
        store.apply(4, b"j", Write::Put(b"x"));
        assert_eq!(store.read_at(b"k", 2), None);
        assert_eq!(store.read_at(b"k", 3).unwrap().value, b"b");
        assert_eq!(store.version_count(b"k"), 1);
        assert_eq!(store.live_keys(), 2);
    }

    #[test]
    fn a_snapshot_restores_every_retained_version() {
        let mut store = Store::new();
        store.apply(1, b"a", Write::Put(b"1"));
        store.apply(2, b"b", Write::Put(b"2"));
        store.observe_commit(2);
        store.apply(3, b"a", Write::Put(b"3"));
        store.apply(4, b"b", Write::Delete);
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        bytes.extend_from_slice(b"trailing");
        let (restored, used) = Store::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len() - b"trailing".len());
        assert_eq!(restored.applied_seq(), 4);
        assert_eq!(restored.commit_seq(), 2);
        assert_eq!(restored.live_keys(), 1);
        assert_eq!(
            restored.read_at(b"a", 2).unwrap().value,
            b"1",
            "the committed version"
        );
        assert_eq!(
            restored.latest(b"a").unwrap().value,
            b"3",
            "and the newer one"
        );
        assert_eq!(restored.latest(b"b"), None);
        assert!(
            Store::decode(&bytes[..bytes.len() / 2]).is_err(),
            "a cut snapshot is refused"
        );
    }

    #[test]
    #[should_panic(expected = "applied after")]
    fn applying_out_of_order_is_a_programmer_error() {
        let mut store = Store::new();
        store.apply(2, b"k", Write::Put(b"a"));
        store.apply(1, b"k", Write::Put(b"b"));
    }
}

#[cfg(test)]
mod model_tests {
    //! The store against a model that keeps every version forever.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Put(u8, u8),
        Delete(u8),
        Commit,
        Read(u8, u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4, any::<u8>()).prop_map(|(key, value)| Step::Put(key, value)),
            (0u8..4).prop_map(Step::Delete),
            Just(Step::Commit),
            (0u8..4, any::<u8>()).prop_map(|(key, back)| Step::Read(key, back)),
        ]
    }

    proptest! {
        #[test]
        fn reads_at_committed_or_newer_stamps_match_a_full_history(steps in prop::collection::vec(step(), 1..200)) {
            let mut store = Store::new();
            // Full history: (seq, key, value or None).
            let mut history: Vec<(u64, u8, Option<u8>)> = Vec::new();
            let mut seq = 0;
            for step in steps {
                match step {
                    Step::Put(key, value) => {
                        seq += 1;
                        store.apply(seq, &[key], Write::Put(&[value]));
                        history.push((seq, key, Some(value)));
                    }
                    Step::Delete(key) => {
                        seq += 1;
                        store.apply(seq, &[key], Write::Delete);
                        history.push((seq, key, None));
                    }
                    Step::Commit => store.observe_commit(seq),
                    Step::Read(key, back) => {
                        // Stamps never go below the replica's known commit in
                        // this model; older stamps are covered by unit tests.
                        let low = store.commit_seq();
                        let stamp = low + u64::from(back) % (seq - low + 1);
                        let expected = history.iter().rev()
                            .find(|(s, k, _)| *k == key && *s <= stamp)
                            .and_then(|(s, _, v)| v.map(|v| (*s, v)));
                        let got = store.read_at(&[key], stamp).map(|r| (r.version, r.value[0]));
                        prop_assert_eq!(got, expected);
                    }
                }
            }
        }
    }
}
