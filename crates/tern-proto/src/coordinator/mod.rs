//! The shard coordinator core: sequencing, the dirty table, `commit_seq`, read
//! forwarding (DESIGN rules 1, 3, 4, 5, 8).
//!
//! The state that the kernel fast path and user space share lives behind
//! [`ShardState`], whose methods are each atomic. [`crate::SharedShard`]
//! implements it over memory laid out as `tern_wire::maps` describes: on the
//! heap in user mode, the mapped BPF maps in XDP mode, so both paths run this
//! logic against one source of truth.
// PERFORMANCE CRITICAL PATH: `step` runs once per received datagram.

//!
//! Layout: `state` (the shared state's interface), `reads` (rules 3-5),
//! `writes` (rules 1, 3, 4 and resends), `recovery` (rule 8), `freeze`
//! (slot ranges held still for a migration), `process` (the coordinator
//! process and its control calls); this module holds a shard's coordinator,
//! its dispatch, timers and in-place reconfiguration. Locks and the hot-key
//! cache get modules of their own beside these.

mod early;
mod fanout;
mod freeze;
mod process;
mod reads;
mod recovery;
mod settle;
mod state;
mod txn;
mod writes;

use std::net::SocketAddrV4;
use std::time::Duration;

pub use freeze::FREEZES_MAX;
pub use process::{Coordinator, CoordinatorCounters, ExtraStats};
pub use reads::{ReadRoute, route_read};
use recovery::Recovery;
pub use settle::Directory;
pub use state::{FanoutAck, ShardState};
pub use tern_wire::maps::INFLIGHT_WRITES_MAX;
use tern_wire::{Header, MESSAGE_LEN_MAX, Message, Op, Status};
pub use writes::complete_write;

use crate::counters::counters;
use crate::{Outbox, Time};

/// A write not acknowledged this long after it was sent is sent again.
pub const RESEND_AFTER: Duration = Duration::from_millis(100);
/// Interval between sequence probes while a coordinator recovers (rule 8).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Interval between scans of the in-flight window for writes to resend.
pub const RESEND_SCAN_INTERVAL: Duration = Duration::from_millis(25);

/// The shard's identity and chain, as installed by the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    pub shard: u32,
    pub epoch: u32,
    /// Replicas, head first.
    pub chain: Vec<SocketAddrV4>,
    /// The hash slots the shard serves, `[start, end)` each: a request for
    /// a key of another slot is refused WRONG_SHARD (its client's map is
    /// out of date, e.g. after a slot moved to another shard).
    pub slots: Vec<[u32; 2]>,
    /// The map's incarnation of the shard this coordinator serves it at
    /// (`ShardMap::incarnation`); answered with every FREEZE, so that a
    /// migration sees a coordinator that started afresh (without its holds).
    pub incarnation: u64,
    /// Early commit (Whale): a write is answered once the first
    /// `early_commit` replicas of the chain hold it, and the rest of the
    /// chain follows; 0 answers once the tail holds it (synchronous chain
    /// replication). See [`crate::commit_point_index`].
    pub early_commit: u32,
    /// Fan-out replication: the head sends each write to every other
    /// replica at once and each acknowledges it here; a write is complete
    /// once every replica has (`coordinator::fanout`).
    pub fanout: bool,
}

impl ShardConfig {
    fn head(&self) -> SocketAddrV4 {
        self.chain[0]
    }

    fn tail(&self) -> SocketAddrV4 {
        *self.chain.last().expect("a chain has at least one replica")
    }

    /// The replica whose acknowledgement answers a write, and the one
    /// that answers the reads of dirty keys: every write it applied is
    /// held by the replicas before it too, so it is committed. Under
    /// fan-out, the head (it holds every write any replica holds), which
    /// is asked only under early commit, with a stamp.
    pub fn commit_point(&self) -> SocketAddrV4 {
        if self.fanout {
            return self.head();
        }
        self.chain[crate::commit_point_index(self.early_commit, self.chain.len())]
    }

    /// Under fan-out with early commit, K: a write is answered at its K-th
    /// acknowledgement (None: at the last, also when K is the whole chain).
    pub fn fanout_quorum(&self) -> Option<usize> {
        let k = self.early_commit as usize;
        (self.fanout && k > 0 && k < self.chain.len()).then_some(k)
    }

    /// Whether writes are answered before every replica holds them.
    pub fn is_early(&self) -> bool {
        if self.fanout {
            return self.fanout_quorum().is_some();
        }
        self.commit_point() != self.tail()
    }
}

counters! {
    /// What a shard coordinator did, for STATS.
    pub struct ShardCounters {
        reads_any,
        reads_tail,
        writes,
        acks,
        acks_not_in_flight,
        /// Writes answered at the commit point's acknowledgement (early
        /// commit), before the tail's.
        early_acks,
        /// Early acknowledgements of writes answered already, or no longer
        /// in flight.
        early_acks_late,
        /// Reads of dirty keys refused TRY_AGAIN (early commit) because the
        /// commit point may still lack a write answered before it became
        /// the commit point.
        reads_point_behind,
        /// Fan-out: acknowledgements counted that did not yet complete
        /// their write, those a replica sent again, and those of another
        /// epoch (dropped: every replica acknowledges again at a new one).
        fanout_acks,
        fanout_duplicate_acks,
        acks_other_epoch,
        window_full,
        resent,
        noop_fills,
        /// Committed seqs the head asked for again: its data was lost.
        lost_fills,
        refused_recovering,
        stale_epoch,
        /// Requests for keys of slots this shard does not serve.
        wrong_slot,
        /// Requests held (TRY_AGAIN) because a migration froze their slot.
        held_frozen,
        /// DROP_SLOTS of slots this shard serves, refused (TRY_AGAIN).
        drop_of_served,
        unexpected_sender,
        /// Chain or epoch changes applied in place (`reconfigure`).
        reconfigurations,
        /// MULTI and transaction requests whose value did not decode (or
        /// whose first item is not the header's key): refused MALFORMED.
        malformed_transactions,
        /// Transaction requests refused TRY_AGAIN because their hold
        /// bucket was full (and reported holds left out).
        holds_full,
        /// Holds whose participant list did not decode at a sweep.
        holds_unreadable,
    }
}

/// The coordinator of one shard.
#[derive(Debug)]
pub struct ShardCoordinator<S> {
    config: ShardConfig,
    state: S,
    recovery: Recovery,
    last_probe: Option<Time>,
    /// First sequence number this coordinator assigned; anything below was
    /// assigned by a predecessor and, if missing in the chain, is filled.
    first_seq: u64,
    /// Lowest sequence number that may still be in flight.
    oldest_in_flight: u64,
    /// `next_seq` at the previous resend scan: every sequence number below it
    /// was reserved at least one scan ago, so it is published or finished (a
    /// writer publishes right after reserving; the XDP program within one run).
    scanned_up_to: u64,
    last_scan: Option<Time>,
    /// Set by `reconfigure` when the head changed: the next tick resends
    /// every write in flight to the new head at once.
    resend_all: bool,
    /// Version of the cluster map this coordinator acts on (0: static).
    map_version: u64,
    resend_buffer: Vec<u8>,
    /// Slot ranges a migration holds still (`freeze`).
    freezes: Vec<freeze::Freeze>,
    /// Slots asked while held in PULL mode, for the next FREEZE answer.
    wanted: Vec<u16>,
    /// A client was refused in a way that says its map may be newer than
    /// this coordinator's (WRONG_SHARD, or a higher epoch): the shell
    /// fetches the map early (`Coordinator::take_map_doubt`).
    map_doubted: bool,
    /// What the sweep keeps of the holds (they are in the shared state).
    holds: txn::Holds,
    counters: ShardCounters,
}

impl<S: ShardState> ShardCoordinator<S> {
    /// A coordinator that first learns how far the chain got (rule 8): every
    /// key counts as dirty and writes are refused until the probes answer.
    pub fn new(config: ShardConfig, state: S) -> Self {
        assert!(
            !config.chain.is_empty(),
            "a shard needs at least one replica"
        );
        state.set_all_dirty(true);
        state.set_slots(&config.slots);
        early::starting(&state, &config);
        ShardCoordinator {
            config,
            state,
            recovery: Recovery::PROBING,
            last_probe: None,
            first_seq: u64::MAX,
            oldest_in_flight: 0,
            scanned_up_to: 0,
            last_scan: None,
            resend_all: false,
            map_version: 0,
            resend_buffer: Vec::with_capacity(MESSAGE_LEN_MAX),
            freezes: Vec::new(),
            wanted: Vec::new(),
            map_doubted: false,
            holds: txn::Holds::default(),
            counters: ShardCounters::default(),
        }
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// Whether the coordinator has finished recovering (rule 8).
    pub fn is_ready(&self) -> bool {
        self.recovery == Recovery::Done
    }

    /// Installs a new chain or epoch of this shard in place, keeping the
    /// sequence counter, `commit_seq`, the dirty table and the in-flight
    /// window: everything this coordinator has acknowledged is held by every
    /// survivor of the chain (chain replication's prefix property), and a
    /// replica that joins loads it before it serves. Writes in flight go
    /// again to a new head on the next tick, at the new epoch; a new tail
    /// acknowledges what it holds by itself (`Replica::reconfigure`).
    /// Only a coordinator that newly takes over a shard starts afresh
    /// (rule 8), with [`ShardCoordinator::new`].
    pub fn reconfigure(&mut self, config: ShardConfig) {
        assert_eq!(
            config.shard, self.config.shard,
            "reconfigure of another shard"
        );
        assert!(
            !config.chain.is_empty(),
            "a shard needs at least one replica"
        );
        if config == self.config {
            return;
        }
        let slots_changed = config.slots != self.config.slots;
        self.counters.reconfigurations += 1;
        if config.head() != self.config.head() {
            self.resend_all = true;
        }
        if config.early_commit > 0 && config.commit_point() != self.config.commit_point() {
            early::new_point(&self.state);
        }
        if let Recovery::Probing { .. } = self.recovery
            && (config.head() != self.config.head()
                || config.tail() != self.config.tail()
                || (config.fanout && config.chain != self.config.chain))
        {
            // Probe the new head and tail instead.
            self.recovery = Recovery::PROBING;
            self.last_probe = None;
        }
        self.config = config;
        if slots_changed {
            self.install_slots();
        }
    }

    /// Handles a decoded datagram addressed to this shard.
    pub fn step(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let header = &message.header;
        match header.op() {
            op if op.is_client_request() => {
                if header.epoch.get() != self.config.epoch {
                    self.counters.stale_epoch += 1;
                    self.map_doubted |= header.epoch.get() > self.config.epoch;
                    self.refuse(from, header, (Status::StaleEpoch, self.map_version), outbox);
                } else if let Some(refusal) =
                    self.refusal_for_slot(header.op(), header.key_hash.get())
                {
                    self.refuse(from, header, refusal, outbox);
                } else if header.op() == Op::DropSlots
                    && tern_wire::slots::overlaps(&self.config.slots, header.slot_range())
                {
                    // A shard never forgets slots it serves: a migration's
                    // drop at the source waits for the map without them, and
                    // a destination that took a group over keeps it.
                    self.counters.drop_of_served += 1;
                    self.refuse(from, header, (Status::TryAgain, self.map_version), outbox);
                } else if header.op() == Op::Get {
                    self.forward_read(from, message, outbox);
                } else {
                    self.sequence_write(now, from, message, outbox);
                }
            }
            Op::Ack if self.config.fanout => self.acknowledge_fanout(now, from, message, outbox),
            Op::Ack if from == self.config.tail() => self.acknowledge(now, message, outbox),
            Op::Ack if self.config.is_early() && from == self.config.commit_point() => {
                self.acknowledge_early(message, outbox);
            }
            Op::Retransmit if from == self.config.head() => {
                self.resend_range(now, header.seq.get(), header.retransmit_last(), outbox);
            }
            Op::SeqReport if self.config.chain.contains(&from) => {
                self.learn_progress(from, message);
            }
            Op::TxnReport if from == self.config.head() => self.learn_prepared(now, message),
            Op::Freeze => self.freeze(now, from, message, outbox),
            _ => self.counters.unexpected_sender += 1,
        }
    }

    /// Answers a client's request with a refusal: its status and the map
    /// version it names, at this shard's epoch.
    fn refuse(
        &self,
        from: SocketAddrV4,
        header: &Header,
        (status, map_version): (Status, u64),
        outbox: &mut Outbox,
    ) {
        crate::answer_status(from, header, status, self.config.epoch, map_version, outbox);
    }

    /// Drives timers: recovery probes, resends of unacknowledged writes,
    /// holds that ran out.
    pub fn tick(&mut self, now: Time, outbox: &mut Outbox) {
        self.expire_freezes(now);
        if let Recovery::Probing { .. } = self.recovery {
            if self
                .last_probe
                .is_none_or(|last| now.since(last) >= PROBE_INTERVAL)
            {
                self.last_probe = Some(now);
                let probe = Header::new(Op::SeqProbe, self.config.shard, self.config.epoch);
                outbox.push(self.config.head(), &probe, &[], &[]);
                if self.config.fanout {
                    // Every replica: commit_seq starts at the least applied.
                    for &replica in &self.config.chain[1..] {
                        outbox.push(replica, &probe, &[], &[]);
                    }
                } else if self.config.tail() != self.config.head() {
                    outbox.push(self.config.tail(), &probe, &[], &[]);
                }
                if self.config.is_early() && self.config.commit_point() != self.config.head() {
                    outbox.push(self.config.commit_point(), &probe, &[], &[]);
                }
            }
            return;
        }
        if !self.resend_all
            && self
                .last_scan
                .is_some_and(|last| now.since(last) < RESEND_SCAN_INTERVAL)
        {
            return;
        }
        self.last_scan = Some(now);
        self.sweep_holds(now);
        let next = self.state.next_seq();
        while self.oldest_in_flight < self.scanned_up_to
            && !self.state.is_in_flight(self.oldest_in_flight)
        {
            self.oldest_in_flight += 1;
        }
        self.scanned_up_to = next;
        // After a change of head, everything in flight goes to it now; else
        // what has waited for its acknowledgement too long.
        let sent_before = if std::mem::take(&mut self.resend_all) {
            Time::MAX
        } else {
            now - RESEND_AFTER
        };
        for seq in self.oldest_in_flight..next {
            self.resend(seq, sent_before, now, outbox);
        }
    }

    fn samples(&self, out: &mut crate::metrics::Samples) {
        use crate::metrics::{Group, Kind};
        let shard = Some(self.config.shard);
        self.counters.samples(Group::Plain, shard, out);
        let (txn_held, txn_in_doubt) = self.hold_counts();
        for (name, value) in [
            ("next_seq", self.state.next_seq()),
            ("commit_seq", self.state.commit_seq()),
            ("ready", u64::from(self.is_ready())),
            ("txn_held", txn_held),
            ("txn_in_doubt", txn_in_doubt),
        ] {
            out.add(Kind::Gauge, Group::Plain, shard, name, value);
        }
    }
}
