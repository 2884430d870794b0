//! Values too large for a datagram (`ext::LARGE`): the table of a replica's
//! out-of-band values, shared by its core and the threads of its shell that
//! move the bytes over TCP (`tern_control::transfer`).
//!
//! A large value never rides in a datagram; the datagram names it (length
//! and checksum) and takes the same path as any other, so sequencing,
//! ordering, dedup and the log are unchanged:
//!
//! - **Staged** values: a client uploads a write's value to the head under
//!   the write's (client, request) ids, then sends the write. The head
//!   takes the value when it decides the write; one it lacks is decided as
//!   VALUE_MISSING (nothing applied, nothing remembered: the client stages
//!   again and resends the same request).
//! - **Records**: the value of every large record this replica applied, by
//!   seq, so that its successor can fetch it; and values fetched from the
//!   predecessor for records not applied yet. A REPLICATE whose value is
//!   not here waits in the holdback (DESIGN rule 2: later writes wait
//!   behind it) while the shell fetches it (`wanted`).
//! - **Answers**: large values the replica answered (a read, or the tail's
//!   RETURN_OLD/RETURN_NEW), by (client, request), for the client to fetch
//!   from the replica its reply names.
//!
//! Memory: staged values, records and answers share one budget. Staging is
//! refused while the table is over it (the client waits and tries again),
//! which bounds the large writes in flight; records of committed writes
//! and answers are dropped oldest first to stay within it, and records
//! always once they leave the replica's sent log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tern_wire::Large;

use crate::Time;

/// How long a staged value waits for its write.
pub const STAGED_FOR: Duration = Duration::from_secs(30);
/// How long an answer waits for its client to fetch it.
pub const ANSWERED_FOR: Duration = Duration::from_secs(10);
/// The table's budget unless configured otherwise: 1 GiB.
pub const BUDGET_DEFAULT: usize = 1 << 30;

/// Why a value was not staged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageRefusal {
    /// Longer than the replica's limit.
    TooLarge { limit: usize },
    /// The table is over its budget: try again shortly.
    Full,
}

/// A record whose value the core waits for, to be fetched from `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub seq: u64,
    pub large: Large,
    pub from: SocketAddrV4,
}

/// A write's (client id, request id).
type Ids = (u64, u64);
/// An answer's (client id, request id, checksum).
type AnswerKey = (u64, u64, u32);

#[derive(Debug)]
struct Inner {
    limit: usize,
    budget: usize,
    used: usize,
    /// By (client, request): the value and when it was staged.
    staged: HashMap<Ids, (Arc<[u8]>, Time)>,
    records: BTreeMap<u64, Arc<[u8]>>,
    /// By (client, request, checksum): a request asked again (a read, or
    /// a write answered from dedup) may be answered another value, and each
    /// reply names the one it carries.
    answers: HashMap<AnswerKey, (Arc<[u8]>, Time)>,
    /// (when, key) of answers, oldest first.
    answer_order: VecDeque<(Time, AnswerKey)>,
    wanted: Option<Wanted>,
    /// The replica's commit seq at the last trim: records at or below it
    /// may go to make room.
    committed: u64,
}

/// A replica's out-of-band values (clones share one table).
#[derive(Clone, Debug)]
pub struct Values {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

impl Default for Values {
    fn default() -> Self {
        Values::new(tern_wire::LARGE_VALUE_LEN_DEFAULT, BUDGET_DEFAULT)
    }
}

impl Values {
    /// A table for values up to `limit` bytes, holding `budget` bytes.
    pub fn new(limit: usize, budget: usize) -> Values {
        let inner = Inner {
            limit,
            budget: budget.max(limit),
            used: 0,
            staged: HashMap::new(),
            records: BTreeMap::new(),
            answers: HashMap::new(),
            answer_order: VecDeque::new(),
            wanted: None,
            committed: 0,
        };
        Values {
            inner: Arc::new((Mutex::new(inner), Condvar::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere leaves the table consistent: each change is
        // made whole under the lock.
        self.inner
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The longest value accepted.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Takes room for a value of `length` bytes about to be staged, making
    /// it by dropping answers and committed records, oldest first; the
    /// shell asks before it reads the bytes, so that values being read
    /// count too, then stages them (`stage_reserved`) or gives the room
    /// back (`release`). Full when staged values, values being read and
    /// records not yet committed fill the budget.
    pub fn reserve(&self, length: usize) -> Result<(), StageRefusal> {
        let mut inner = self.lock();
        if length > inner.limit {
            return Err(StageRefusal::TooLarge { limit: inner.limit });
        }
        while inner.used + length > inner.budget {
            let committed = inner.committed;
            let record_goes = inner
                .records
                .first_key_value()
                .is_some_and(|(&seq, _)| seq <= committed);
            if record_goes {
                let (_, value) = inner.records.pop_first().expect("just found");
                inner.used -= value.len();
            } else if !inner.drop_oldest_answer() {
                return Err(StageRefusal::Full);
            }
        }
        inner.used += length;
        Ok(())
    }

    /// Gives back room taken by `reserve` for a value that did not come.
    pub fn release(&self, length: usize) {
        self.lock().used -= length;
    }

    /// Stages a client's value for its write (client, request); a value
    /// staged again replaces the first.
    pub fn stage(&self, now: Time, ids: (u64, u64), value: Vec<u8>) -> Result<(), StageRefusal> {
        self.reserve(value.len())?;
        self.stage_reserved(now, ids, value);
        Ok(())
    }

    /// Stages a value whose room `reserve` took.
    pub fn stage_reserved(&self, now: Time, ids: (u64, u64), value: Vec<u8>) {
        let mut inner = self.lock();
        inner.expire(now);
        if let Some((old, _)) = inner.staged.insert(ids, (value.into(), now)) {
            inner.used -= old.len();
        }
    }

    /// The value of record `seq`, if this replica holds it and it is the
    /// one `large` names.
    pub fn record(&self, seq: u64, large: &Large) -> Option<Arc<[u8]>> {
        let inner = self.lock();
        let value = inner.records.get(&seq)?;
        large.names(value).then(|| value.clone())
    }

    /// Whether a value is staged for the write (client, request).
    pub fn holds_staged(&self, ids: (u64, u64)) -> bool {
        self.lock().staged.contains_key(&ids)
    }

    /// The answer kept for a client's request.
    pub fn answer(&self, ids: (u64, u64), checksum: u32) -> Option<Arc<[u8]>> {
        let inner = self.lock();
        let (value, _) = inner.answers.get(&(ids.0, ids.1, checksum))?;
        Some(value.clone())
    }

    /// Waits up to `timeout` for a record the core wants.
    pub fn wait_wanted(&self, timeout: Duration) -> Option<Wanted> {
        let (mutex, condvar) = &*self.inner;
        let inner = mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (inner, _) = condvar
            .wait_timeout_while(inner, timeout, |inner| inner.wanted.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.wanted
    }

    /// Hands in the value of a wanted record, fetched from the predecessor.
    /// Refused (false) unless it is the value wanted.
    pub fn deliver(&self, seq: u64, value: Vec<u8>) -> bool {
        let mut inner = self.lock();
        let Some(wanted) = inner.wanted.filter(|wanted| wanted.seq == seq) else {
            return false;
        };
        if !wanted.large.names(&value) {
            return false;
        }
        inner.wanted = None;
        inner.keep_record(seq, value.into());
        true
    }

    // The core's side.

    /// Takes the value staged for a write, if it is the one `large` names.
    pub(crate) fn take_staged(&self, ids: (u64, u64), large: &Large) -> Option<Arc<[u8]>> {
        let mut inner = self.lock();
        let (value, _) = inner.staged.remove(&ids)?;
        inner.used -= value.len();
        large.names(&value).then_some(value)
    }

    /// Drops what a write's client staged here, once the write is decided
    /// (a head that refused it, or computed another value, used none).
    pub(crate) fn forget_staged(&self, ids: (u64, u64)) {
        let mut inner = self.lock();
        if let Some((value, _)) = inner.staged.remove(&ids) {
            inner.used -= value.len();
        }
    }

    /// Keeps the value of record `seq` (applied here) for the successor.
    pub(crate) fn keep_record(&self, seq: u64, value: Arc<[u8]>) {
        self.lock().keep_record(seq, value);
    }

    /// Asks the shell for record `seq`'s value (one at a time: records
    /// apply in order). True when it was not asked for already.
    pub(crate) fn want(&self, wanted: Wanted) -> bool {
        let mut inner = self.lock();
        if inner.wanted == Some(wanted) {
            return false;
        }
        inner.wanted = Some(wanted);
        self.inner.1.notify_all();
        true
    }

    /// Asks for nothing any more (the records waiting were dropped).
    pub(crate) fn unwant(&self) {
        self.lock().wanted = None;
    }

    /// Keeps an answer for its client to fetch.
    pub(crate) fn keep_answer(&self, now: Time, ids: (u64, u64), checksum: u32, value: Arc<[u8]>) {
        let key = (ids.0, ids.1, checksum);
        let mut inner = self.lock();
        inner.used += value.len();
        if let Some((old, _)) = inner.answers.insert(key, (value, now)) {
            inner.used -= old.len();
        }
        inner.answer_order.push_back((now, key));
    }

    /// Drops what is no longer needed: staged values and answers past their
    /// time, records below `first_kept` (gone from the sent log), and, while
    /// over budget, answers and committed records (at or below
    /// `commit_seq`), oldest first.
    pub(crate) fn trim(&self, now: Time, commit_seq: u64, first_kept: u64) {
        let mut inner = self.lock();
        inner.expire(now);
        inner.committed = commit_seq;
        while let Some((&seq, _)) = inner.records.first_key_value() {
            let over = inner.used > inner.budget && seq <= commit_seq;
            if seq >= first_kept && !over {
                break;
            }
            let value = inner.records.remove(&seq).expect("just found");
            inner.used -= value.len();
        }
        while inner.used > inner.budget && inner.drop_oldest_answer() {}
    }
}

impl Inner {
    fn keep_record(&mut self, seq: u64, value: Arc<[u8]>) {
        self.used += value.len();
        if let Some(old) = self.records.insert(seq, value) {
            self.used -= old.len();
        }
    }

    fn expire(&mut self, now: Time) {
        let mut freed = 0;
        self.staged.retain(|_, (value, at)| {
            let keep = now.since(*at) < STAGED_FOR;
            if !keep {
                freed += value.len();
            }
            keep
        });
        self.used -= freed;
        while self
            .answer_order
            .front()
            .is_some_and(|(at, _)| now.since(*at) >= ANSWERED_FOR)
        {
            self.drop_oldest_answer();
        }
    }

    fn drop_oldest_answer(&mut self) -> bool {
        let Some((at, key)) = self.answer_order.pop_front() else {
            return false;
        };
        // An answer kept again later has a later place in the order too:
        // only the place of its latest keeping drops it.
        if self.answers.get(&key).is_some_and(|(_, kept)| *kept == at)
            && let Some((value, _)) = self.answers.remove(&key)
        {
            self.used -= value.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOWHERE: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);

    #[test]
    fn staging_is_bounded_by_the_limit_and_the_budget_and_taken_once() {
        let values = Values::new(10, 25);
        let now = Time::ZERO;
        assert_eq!(
            values.stage(now, (1, 1), vec![0; 11]),
            Err(StageRefusal::TooLarge { limit: 10 })
        );
        values.stage(now, (1, 1), vec![1; 10]).unwrap();
        values.stage(now, (1, 2), vec![2; 10]).unwrap();
        assert_eq!(
            values.stage(now, (1, 3), vec![3; 10]),
            Err(StageRefusal::Full)
        );
        // Answers (and committed records) make room; staged values do not.
        values.keep_answer(now, (9, 9), 1, vec![9; 4].into());
        assert_eq!(values.stage(now, (1, 4), vec![4; 5]), Ok(()));
        assert_eq!(values.answer((9, 9), 1), None, "dropped to make room");
        assert!(
            values
                .take_staged((1, 4), &Large::of(&[4; 5], NOWHERE))
                .is_some()
        );
        let named = Large::of(&[1; 10], NOWHERE);
        assert_eq!(values.take_staged((1, 2), &named), None, "another value");
        assert_eq!(
            values.take_staged((1, 1), &named).as_deref(),
            Some(&[1; 10][..])
        );
        assert_eq!(values.take_staged((1, 1), &named), None, "taken once");
        assert_eq!(values.used(), 0);
        values.stage(now, (1, 3), vec![3; 10]).unwrap();
        values.trim(now + STAGED_FOR, 0, 0);
        assert_eq!(
            values.used(),
            0,
            "a staged value waits for its write only so long"
        );
    }

    #[test]
    fn records_stay_while_in_the_sent_log_and_uncommitted_ones_even_over_budget() {
        let values = Values::new(10, 20);
        let now = Time::ZERO;
        for seq in 1..=4 {
            values.keep_record(seq, vec![seq as u8; 10].into());
        }
        let third = Large::of(&[3; 10], NOWHERE);
        // Over budget, but nothing committed: all kept.
        values.trim(now, 0, 1);
        assert_eq!(values.used(), 40);
        // Committed up to 3: the oldest go until within budget.
        values.trim(now, 3, 1);
        assert_eq!(values.used(), 20);
        assert!(values.record(3, &third).is_some());
        assert!(values.record(3, &Large::of(&[4; 10], NOWHERE)).is_none());
        // Out of the sent log.
        values.trim(now, 3, 4);
        assert!(values.record(3, &third).is_none());
        // Staging makes room by dropping committed records, never the
        // others.
        values.trim(now, 4, 4);
        values.keep_record(5, vec![5; 10].into());
        assert_eq!(values.reserve(10), Ok(()));
        assert_eq!(values.used(), 20, "record 4 dropped for room");
        values.release(10);
        assert_eq!(
            values.reserve(11),
            Err(StageRefusal::TooLarge { limit: 10 })
        );
        values.keep_record(6, vec![6; 10].into());
        assert_eq!(values.reserve(10), Err(StageRefusal::Full));
        assert_eq!(values.used(), 20);
    }

    #[test]
    fn a_wanted_record_is_delivered_only_as_named() {
        let values = Values::default();
        let large = Large::of(b"the value", NOWHERE);
        values.want(Wanted {
            seq: 7,
            large,
            from: NOWHERE,
        });
        assert_eq!(values.wait_wanted(Duration::ZERO).map(|w| w.seq), Some(7));
        assert!(!values.deliver(7, b"another".to_vec()));
        assert!(!values.deliver(8, b"the value".to_vec()));
        assert!(values.deliver(7, b"the value".to_vec()));
        assert_eq!(values.wait_wanted(Duration::ZERO), None);
        assert_eq!(values.record(7, &large).as_deref(), Some(&b"the value"[..]));
    }

    #[test]
    fn answers_leave_after_their_time_and_each_reply_gets_its_own() {
        let values = Values::default();
        values.keep_answer(Time::ZERO, (5, 9), 1, b"answer".to_vec().into());
        // The same request answered again with another value (a retry):
        // both kept, each under its checksum.
        let later = Time::ZERO + Duration::from_secs(1);
        values.keep_answer(later, (5, 9), 2, b"another".to_vec().into());
        assert_eq!(values.answer((5, 9), 1).as_deref(), Some(&b"answer"[..]));
        assert_eq!(values.answer((5, 9), 2).as_deref(), Some(&b"another"[..]));
        // Kept again: it stays for the time of its latest keeping.
        values.keep_answer(later, (5, 9), 1, b"answer".to_vec().into());
        values.trim(Time::ZERO + ANSWERED_FOR, 0, 0);
        assert!(values.answer((5, 9), 1).is_some());
        values.trim(later + ANSWERED_FOR, 0, 0);
        assert_eq!(values.answer((5, 9), 1), None);
        assert_eq!(values.answer((5, 9), 2), None);
        assert_eq!(values.used(), 0);
    }
}
