//! The settler: a coordinator process's own client for transactions whose
//! lease ran out at one of its shards (their client crashed, or lost touch,
//! between PREPARE and COMMIT).
//!
//! It asks every participant where the transaction stands (RESOLVE, which
//! makes one that never saw the PREPARE vote no for good), then commits
//! it everywhere if every participant is prepared or committed, and aborts
//! it everywhere otherwise: the one outcome the participants allow, the
//! same the client reaches if it comes back (states only move forward, so
//! settlers of several shards and a late client agree). Every request is
//! resent until answered; a settling that has not finished in
//! [`SETTLE_GIVE_UP`] is dropped, and the participant's sweep hands it
//! over again after another lease.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_wire::txn::{Participant, TxnId};
use tern_wire::{Header, Op, Status, key_hash};

use crate::counters::counters;
use crate::{Outbox, Time};

/// An unanswered request of the settler goes again after this long.
pub const SETTLE_RESEND: Duration = Duration::from_millis(100);
/// A settling not finished after this long is dropped (and handed over
/// again by the sweep).
pub const SETTLE_GIVE_UP: Duration = Duration::from_secs(10);

/// One participant's request under way.
#[derive(Clone, Debug)]
struct Ask {
    participant: Participant,
    request_id: u64,
    /// The shard's epoch as last learnt (0 at first: a STALE_EPOCH refusal
    /// names it).
    epoch: u32,
    answer: Option<Status>,
}

#[derive(Clone, Debug)]
struct Job {
    /// None while asking where it stands; then commit or abort.
    commit: Option<bool>,
    asks: Vec<Ask>,
    started: Time,
    last_sent: Option<Time>,
}

/// Where each shard's coordinator is, by the newest map (kept up to date
/// by the process's shell): a participant's coordinator may have failed
/// over since its client prepared.
pub type Directory = Arc<Mutex<HashMap<u32, SocketAddrV4>>>;

counters! {
    /// What the settler did, for STATS.
    pub struct SettleCounts {
        txn_settles_started,
        txn_settled_committed,
        txn_settled_aborted,
        txn_settles_given_up,
        /// A participant answered against the decision (a COMMIT refused
        /// TXN_ABORTED): never expected; counted so that a test sees it.
        txn_settle_disagreed,
    }
}

/// The settler of one coordinator process.
#[derive(Debug)]
pub struct Settler {
    client_id: u64,
    next_request_id: u64,
    jobs: HashMap<TxnId, Job>,
    /// Request id to the transaction and participant it asks.
    requests: HashMap<u64, (TxnId, usize)>,
    counts: SettleCounts,
    /// The newest coordinators, when the shell knows them.
    directory: Option<Directory>,
}

impl Default for Settler {
    fn default() -> Self {
        Settler::new()
    }
}

impl Settler {
    pub fn new() -> Settler {
        // A client id of its own, unlike any client's (random, as theirs).
        let client_id = RandomState::new().hash_one(0u8) | 1;
        Settler {
            client_id,
            next_request_id: 1,
            jobs: HashMap::new(),
            requests: HashMap::new(),
            counts: SettleCounts::default(),
            directory: None,
        }
    }

    /// Sends to the coordinators `directory` names (the participants'
    /// addresses as their client knew them otherwise).
    pub fn set_directory(&mut self, directory: Directory) {
        self.directory = Some(directory);
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn counts(&self) -> &SettleCounts {
        &self.counts
    }

    /// Transactions being settled.
    pub fn settling(&self) -> usize {
        self.jobs.len()
    }

    /// Starts settling `id` unless it is under way; `epoch_of` gives the
    /// epochs of the shards this process serves.
    pub fn start(
        &mut self,
        now: Time,
        id: TxnId,
        participants: &[Participant],
        epoch_of: impl Fn(u32) -> Option<u32>,
    ) {
        if self.jobs.contains_key(&id) {
            return;
        }
        self.counts.txn_settles_started += 1;
        let asks = participants
            .iter()
            .enumerate()
            .map(|(index, participant)| {
                let request_id = self.take_request_id(id, index);
                Ask {
                    participant: *participant,
                    request_id,
                    epoch: epoch_of(participant.shard).unwrap_or(0),
                    answer: None,
                }
            })
            .collect();
        let job = Job {
            commit: None,
            asks,
            started: now,
            last_sent: None,
        };
        self.jobs.insert(id, job);
    }

    fn take_request_id(&mut self, id: TxnId, index: usize) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.requests.insert(request_id, (id, index));
        request_id
    }

    /// Handles a reply to one of its requests.
    pub fn on_reply(&mut self, header: &Header) {
        let Some(&(id, index)) = self.requests.get(&header.request_id.get()) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            self.requests.remove(&header.request_id.get());
            return;
        };
        let status = header.status();
        match status {
            Status::StaleEpoch => {
                job.asks[index].epoch = header.epoch.get();
                // Sent again at once, at the epoch named.
                job.last_sent = None;
                return;
            }
            Status::Forgotten => {
                // Its head forgot this request id (the settler had more
                // outstanding than a client may): a new id, the same
                // request (every phase is idempotent by transaction).
                self.requests.remove(&header.request_id.get());
                let request_id = self.take_request_id(id, index);
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.asks[index].request_id = request_id;
                }
                return;
            }
            // Asked again at the next resend.
            Status::TryAgain | Status::WrongShard | Status::Locked => return,
            _ => {}
        }
        self.requests.remove(&header.request_id.get());
        let ask = &mut job.asks[index];
        if ask.answer.is_some() {
            return;
        }
        ask.answer = Some(status);
        match job.commit {
            None => {
                let no = status == Status::TxnAborted;
                let all_yes = job.asks.iter().all(|ask| {
                    matches!(ask.answer, Some(Status::TxnPrepared | Status::TxnCommitted))
                });
                if no || all_yes {
                    self.decide(id, all_yes && !no);
                }
            }
            Some(commit) => {
                if commit && status == Status::TxnAborted {
                    self.counts.txn_settle_disagreed += 1;
                }
                if job.asks.iter().all(|ask| ask.answer.is_some()) {
                    if commit {
                        self.counts.txn_settled_committed += 1;
                    } else {
                        self.counts.txn_settled_aborted += 1;
                    }
                    self.forget(id);
                }
            }
        }
    }

    /// Moves `id` from asking to finishing: COMMIT or ABORT to every
    /// participant, sent at the next tick.
    fn decide(&mut self, id: TxnId, commit: bool) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let participants = job.asks.len();
        for ask in &job.asks {
            self.requests.remove(&ask.request_id);
        }
        let request_ids: Vec<u64> = (0..participants)
            .map(|index| self.take_request_id(id, index))
            .collect();
        let job = self.jobs.get_mut(&id).expect("looked up above");
        job.commit = Some(commit);
        job.last_sent = None;
        for (ask, request_id) in job.asks.iter_mut().zip(request_ids) {
            ask.request_id = request_id;
            ask.answer = None;
        }
    }

    fn forget(&mut self, id: TxnId) {
        if let Some(job) = self.jobs.remove(&id) {
            for ask in &job.asks {
                self.requests.remove(&ask.request_id);
            }
        }
    }

    /// Sends what is due: new requests, and unanswered ones again.
    pub fn tick(&mut self, now: Time, outbox: &mut Outbox) {
        let expired: Vec<TxnId> = self
            .jobs
            .iter()
            .filter(|(_, job)| now.since(job.started) >= SETTLE_GIVE_UP)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.counts.txn_settles_given_up += 1;
            self.forget(id);
        }
        let directory = match (&self.directory, self.jobs.is_empty()) {
            (Some(directory), false) => directory.lock().map(|known| known.clone()).ok(),
            _ => None,
        };
        for (id, job) in &mut self.jobs {
            if job
                .last_sent
                .is_some_and(|last| now.since(last) < SETTLE_RESEND)
            {
                continue;
            }
            job.last_sent = Some(now);
            let op = match job.commit {
                None => Op::Resolve,
                Some(true) => Op::Commit,
                Some(false) => Op::Abort,
            };
            for ask in job.asks.iter().filter(|ask| ask.answer.is_none()) {
                let mut header = Header::new(op, ask.participant.shard, ask.epoch);
                header.key_hash.set(key_hash(b""));
                header.client_id.set(self.client_id);
                header.request_id.set(ask.request_id);
                let shard = ask.participant.shard;
                let to = directory
                    .as_ref()
                    .and_then(|known| known.get(&shard).copied())
                    .unwrap_or(ask.participant.coordinator);
                outbox.push(to, &header, &[], &id.encode());
            }
        }
    }
}
