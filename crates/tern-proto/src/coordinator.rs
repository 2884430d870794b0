//! The shard coordinator core: sequencing, the dirty table, `commit_seq`, read
//! forwarding (DESIGN rules 1, 3, 4, 5, 8).
//!
//! The state that the kernel fast path and user space share lives behind
//! [`ShardState`], whose methods are each atomic. [`crate::SharedShard`]
//! implements it over memory laid out as `tern_wire::maps` describes: on the
//! heap in user mode, the mapped BPF maps in XDP mode, so both paths run this
//! logic against one source of truth.
// PERFORMANCE CRITICAL PATH: `step` runs once per received datagram.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Duration;

pub use tern_wire::maps::INFLIGHT_WRITES_MAX;
use tern_wire::{Header, MESSAGE_LEN_MAX, Message, Op, Status, VALUE_LEN_MAX, dirty_index, flags};
use zerocopy::FromBytes;

use crate::counters::{DecodeDrops, counters};
use crate::{Core, Outbox, Time};

/// A write not acknowledged this long after it was sent is sent again.
pub const RESEND_AFTER: Duration = Duration::from_millis(100);
/// Interval between sequence probes while a coordinator recovers (rule 8).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Interval between scans of the in-flight window for writes to resend.
pub const RESEND_SCAN_INTERVAL: Duration = Duration::from_millis(25);

/// Coordinator state of one shard shared by the fast and rare paths.
///
/// Every method is atomic on its own; the coordinator logic decides their
/// order, which is what makes forwarded reads linearizable (DESIGN rule 4).
pub trait ShardState {
    /// Reserves the next sequence number if its in-flight window slot is
    /// free; `None` when the window is full.
    fn begin_write(&self) -> Option<u64>;
    /// Publishes reserved `seq` in the window with the datagram sent for it.
    fn record_sent(&self, seq: u64, dirty_index: u32, datagram: &[u8], now: Time);
    /// Removes `seq` from the window; its dirty index when it was in flight.
    fn end_write(&self, seq: u64) -> Option<u32>;
    fn is_in_flight(&self, seq: u64) -> bool;
    /// When `seq` is in flight and was last sent before `sent_before`, copies
    /// its datagram into `out`, marks it sent at `now` and returns true.
    fn resend(&self, seq: u64, sent_before: Time, now: Time, out: &mut Vec<u8>) -> bool;
    /// The next sequence number `begin_write` would assign.
    fn next_seq(&self) -> u64;
    /// Control path: where sequencing resumes after recovery (rule 8).
    fn set_next_seq(&self, seq: u64);
    fn commit_seq(&self) -> u64;
    /// `commit_seq = max(commit_seq, seq)`.
    fn advance_commit_seq(&self, seq: u64);
    fn dirty_count(&self, dirty_index: u32) -> u64;
    fn increment_dirty(&self, dirty_index: u32);
    fn decrement_dirty(&self, dirty_index: u32);
    /// While set, every key counts as dirty (a recovering coordinator, rule 8).
    fn all_dirty(&self) -> bool;
    fn set_all_dirty(&self, on: bool);
    /// Takes the next value of the round-robin counter of clean reads.
    fn next_replica(&self) -> u64;
}

/// Where a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRoute {
    /// The key may have writes in flight: only the tail is sure to hold every
    /// write the coordinator has acknowledged, so the read goes there.
    Tail,
    /// The key is clean: any replica can answer, at this stamp (rule 5).
    Any { stamp: u64 },
}

/// The read decision, shared by every coordinator path.
///
/// The dirty count is read before `commit_seq`. An acknowledgement advances
/// `commit_seq` before it lowers the dirty count (rule 4), so a read that sees
/// the count already lowered also sees the advanced `commit_seq`. Reading them
/// the other way round could pair an old stamp with a clean key.
pub fn route_read(state: &impl ShardState, key_hash: u32) -> ReadRoute {
    let index = dirty_index(key_hash);
    if state.all_dirty() || state.dirty_count(index) > 0 {
        return ReadRoute::Tail;
    }
    ReadRoute::Any {
        stamp: state.commit_seq(),
    }
}

/// Handles the tail's acknowledgement of `seq` in the order of DESIGN rule 4:
/// first advance `commit_seq`, then lower the dirty count; the caller replies
/// to the client only afterwards. Returns whether `seq` was in flight here.
pub fn complete_write(state: &impl ShardState, seq: u64) -> bool {
    state.advance_commit_seq(seq);
    match state.end_write(seq) {
        Some(index) => {
            state.decrement_dirty(index);
            true
        }
        None => false,
    }
}

/// The shard's identity and chain, as installed by the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    pub shard: u32,
    pub epoch: u32,
    /// Replicas, head first.
    pub chain: Vec<SocketAddrV4>,
}

impl ShardConfig {
    fn head(&self) -> SocketAddrV4 {
        self.chain[0]
    }

    fn tail(&self) -> SocketAddrV4 {
        *self.chain.last().expect("a chain has at least one replica")
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
        window_full,
        resent,
        noop_fills,
        /// Committed seqs the head asked for again: its data was lost.
        lost_fills,
        refused_recovering,
        stale_epoch,
        unexpected_sender,
        /// Chain or epoch changes applied in place (`reconfigure`).
        reconfigurations,
    }
}

/// Recovery of a coordinator that starts against a chain that may already
/// hold writes (DESIGN rule 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    /// Asking head and tail how far they got; writes are refused meanwhile.
    Probing {
        head_highest: Option<u64>,
        tail_applied: Option<u64>,
    },
    /// Sequencing resumed; every key stays dirty until the tail has
    /// acknowledged everything the head had seen.
    Draining {
        target: u64,
    },
    Done,
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
        ShardCoordinator {
            config,
            state,
            recovery: Recovery::Probing {
                head_highest: None,
                tail_applied: None,
            },
            last_probe: None,
            first_seq: u64::MAX,
            oldest_in_flight: 0,
            scanned_up_to: 0,
            last_scan: None,
            resend_all: false,
            map_version: 0,
            resend_buffer: Vec::with_capacity(MESSAGE_LEN_MAX),
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
        self.counters.reconfigurations += 1;
        if config.head() != self.config.head() {
            self.resend_all = true;
        }
        if let Recovery::Probing { .. } = self.recovery
            && (config.head() != self.config.head() || config.tail() != self.config.tail())
        {
            // Probe the new head and tail instead.
            self.recovery = Recovery::Probing {
                head_highest: None,
                tail_applied: None,
            };
            self.last_probe = None;
        }
        self.config = config;
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
                    crate::answer_status(
                        from,
                        header,
                        Status::StaleEpoch,
                        self.config.epoch,
                        self.map_version,
                        outbox,
                    );
                } else if header.op() == Op::Get {
                    self.forward_read(from, message, outbox);
                } else {
                    self.sequence_write(now, from, message, outbox);
                }
            }
            Op::Ack if from == self.config.tail() => self.acknowledge(message, outbox),
            Op::Retransmit if from == self.config.head() => {
                self.resend_range(now, header.seq.get(), header.retransmit_last(), outbox);
            }
            Op::SeqReport if self.config.chain.contains(&from) => self.learn_progress(from, header),
            _ => self.counters.unexpected_sender += 1,
        }
    }

    fn forward_read(&mut self, from: SocketAddrV4, message: &Message<'_>, outbox: &mut Outbox) {
        let mut header = message.header;
        header.set_reply_addr(from);
        let to = match route_read(&self.state, header.key_hash.get()) {
            ReadRoute::Tail => {
                self.counters.reads_tail += 1;
                header.flags |= flags::TAIL_READ;
                header.commit_seq.set(self.state.commit_seq());
                self.config.tail()
            }
            ReadRoute::Any { stamp } => {
                self.counters.reads_any += 1;
                header.flags &= !flags::TAIL_READ;
                header.seq.set(stamp);
                header.commit_seq.set(stamp);
                let turn = self.state.next_replica() % self.config.chain.len() as u64;
                self.config.chain[turn as usize]
            }
        };
        outbox.push(to, &header, message.key, &[]);
    }

    fn sequence_write(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let header = &message.header;
        if matches!(self.recovery, Recovery::Probing { .. }) {
            self.counters.refused_recovering += 1;
            crate::answer_status(from, header, Status::TryAgain, self.config.epoch, 0, outbox);
            return;
        }
        let index = dirty_index(header.key_hash.get());
        // DESIGN rule 1: this is the shard's only serialization point.
        let Some(seq) = self.state.begin_write() else {
            self.counters.window_full += 1;
            crate::answer_status(from, header, Status::TryAgain, self.config.epoch, 0, outbox);
            return;
        };
        // DESIGN rule 3: the key is dirty before the write can reach anyone.
        self.state.increment_dirty(index);
        let mut forwarded = *header;
        forwarded.set_reply_addr(from);
        forwarded.flags &= flags::WRITE_OPTIONS;
        forwarded.seq.set(seq);
        forwarded.commit_seq.set(self.state.commit_seq());
        self.counters.writes += 1;
        outbox.push(self.config.head(), &forwarded, message.key, message.value);
        let sent = outbox.iter().last().expect("just pushed").1;
        self.state.record_sent(seq, index, sent, now);
    }

    fn acknowledge(&mut self, message: &Message<'_>, outbox: &mut Outbox) {
        let header = &message.header;
        let seq = header.seq.get();
        // DESIGN rule 4: commit_seq first, dirty count second, reply last.
        if complete_write(&self.state, seq) {
            self.counters.acks += 1;
        } else {
            // A duplicate, or a write sequenced by a previous coordinator.
            self.counters.acks_not_in_flight += 1;
        }
        if let Recovery::Draining { target } = self.recovery
            && self.state.commit_seq() >= target
        {
            self.finish_recovery();
        }
        if header.reply_port.get() != 0 {
            // The acknowledgement turned into the reply as it is, as the
            // kernel path does it in place.
            let mut reply = *header;
            reply.op = Op::Reply as u8;
            reply.flags &= flags::REPLY_OPTIONS;
            outbox.push(header.reply_addr(), &reply, message.key, message.value);
        }
    }

    /// Sends `seq` to the head again if it is in flight and was last sent
    /// before `sent_before`: the datagram kept in the window, at the
    /// current epoch (it may have been sequenced before a reconfiguration).
    fn resend(&mut self, seq: u64, sent_before: Time, now: Time, outbox: &mut Outbox) -> bool {
        if !self
            .state
            .resend(seq, sent_before, now, &mut self.resend_buffer)
        {
            return false;
        }
        if let Ok((header, _)) = Header::mut_from_prefix(&mut self.resend_buffer[..]) {
            header.epoch.set(self.config.epoch);
        }
        self.counters.resent += 1;
        outbox.push_encoded(self.config.head(), &self.resend_buffer);
        true
    }

    fn resend_range(&mut self, now: Time, first: u64, last: u64, outbox: &mut Outbox) {
        let last = last.min(first.saturating_add(INFLIGHT_WRITES_MAX - 1));
        for seq in first..=last {
            if self.resend(seq, Time::MAX, now, outbox) {
                continue;
            } else if seq < self.first_seq || seq <= self.state.commit_seq() {
                // Assigned by a coordinator that is gone and never applied by
                // the head (the head asks for it), or acknowledged once and
                // lost since by every replica that had it (a chain that
                // restarted without durable state): fill it with nothing, so
                // that the chain can move on. A healthy head never asks for
                // a committed seq: it applied every one before the tail.
                if seq < self.first_seq {
                    self.counters.noop_fills += 1;
                } else {
                    self.counters.lost_fills += 1;
                }
                let mut noop = Header::new(Op::Noop, self.config.shard, self.config.epoch);
                noop.seq.set(seq);
                noop.commit_seq.set(self.state.commit_seq());
                outbox.push(self.config.head(), &noop, &[], &[]);
            }
        }
    }

    fn learn_progress(&mut self, from: SocketAddrV4, report: &Header) {
        let Recovery::Probing {
            mut head_highest,
            mut tail_applied,
        } = self.recovery
        else {
            return;
        };
        if from == self.config.head() {
            head_highest = Some(report.highest_seen());
        }
        if from == self.config.tail() {
            tail_applied = Some(report.seq.get());
        }
        self.recovery = Recovery::Probing {
            head_highest,
            tail_applied,
        };
        let (Some(highest), Some(applied)) = (head_highest, tail_applied) else {
            return;
        };
        // DESIGN rule 8: sequence above anything the chain has seen.
        self.first_seq = highest + 1;
        self.oldest_in_flight = highest + 1;
        self.scanned_up_to = highest + 1;
        self.state.set_next_seq(highest + 1);
        self.state.advance_commit_seq(applied);
        if applied >= highest {
            self.finish_recovery();
        } else {
            self.recovery = Recovery::Draining { target: highest };
        }
    }

    fn finish_recovery(&mut self) {
        self.recovery = Recovery::Done;
        self.state.set_all_dirty(false);
    }

    /// Drives timers: recovery probes and resends of unacknowledged writes.
    pub fn tick(&mut self, now: Time, outbox: &mut Outbox) {
        if let Recovery::Probing { .. } = self.recovery {
            if self
                .last_probe
                .is_none_or(|last| now.since(last) >= PROBE_INTERVAL)
            {
                self.last_probe = Some(now);
                let probe = Header::new(Op::SeqProbe, self.config.shard, self.config.epoch);
                outbox.push(self.config.head(), &probe, &[], &[]);
                if self.config.tail() != self.config.head() {
                    outbox.push(self.config.tail(), &probe, &[], &[]);
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

    fn render_stats(&self, out: &mut String) {
        let prefix = format!("shard{}.", self.config.shard);
        self.counters.render(&prefix, out);
        let _ = std::fmt::Write::write_fmt(
            out,
            format_args!(
                "{prefix}next_seq {}\n{prefix}commit_seq {}\n{prefix}ready {}\n",
                self.state.next_seq(),
                self.state.commit_seq(),
                u8::from(self.is_ready())
            ),
        );
    }
}

counters! {
    /// Process-wide counters of a coordinator.
    pub struct CoordinatorCounters {
        unknown_shard,
        unexpected_op,
    }
}

/// A coordinator process: the coordinators of one or more shards behind one
/// address, dispatching on the header's shard.
pub struct Coordinator<S> {
    shards: HashMap<u32, ShardCoordinator<S>>,
    counters: CoordinatorCounters,
    drops: DecodeDrops,
    /// More `name value` lines for STATS (the XDP fast path's counters).
    extra_stats: Option<ExtraStats>,
    /// Version of the cluster map this process acts on (0: static).
    map_version: u64,
}

/// A source of extra STATS lines.
pub type ExtraStats = Box<dyn Fn(&mut String) + Send>;

impl<S: std::fmt::Debug> std::fmt::Debug for Coordinator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("shards", &self.shards)
            .field("counters", &self.counters)
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl<S: ShardState> Coordinator<S> {
    pub fn new(shards: impl IntoIterator<Item = ShardCoordinator<S>>) -> Self {
        Coordinator {
            shards: shards
                .into_iter()
                .map(|shard| (shard.config.shard, shard))
                .collect(),
            counters: CoordinatorCounters::default(),
            drops: DecodeDrops::default(),
            extra_stats: None,
            map_version: 0,
        }
    }

    /// Adds lines to every STATS answer.
    pub fn with_extra_stats(mut self, extra: ExtraStats) -> Self {
        self.extra_stats = Some(extra);
        self
    }

    pub fn shard(&self, shard: u32) -> Option<&ShardCoordinator<S>> {
        self.shards.get(&shard)
    }

    /// The ids of the shards served here.
    pub fn shard_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.shards.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Records the version of the cluster map this process now acts on; its
    /// STALE_EPOCH and WRONG_SHARD refusals name it.
    pub fn set_map_version(&mut self, version: u64) {
        self.map_version = version;
        for shard in self.shards.values_mut() {
            shard.map_version = version;
        }
    }

    /// Stops serving `shard` (the map moved it elsewhere); its requests are
    /// answered WRONG_SHARD from now on. False when it was not served here.
    pub fn remove(&mut self, shard: u32) -> bool {
        self.shards.remove(&shard).is_some()
    }

    /// Installs a new chain or epoch of a shard served here, in place
    /// ([`ShardCoordinator::reconfigure`]); false when the shard is not.
    pub fn reconfigure(&mut self, config: ShardConfig) -> bool {
        match self.shards.get_mut(&config.shard) {
            Some(shard) => {
                shard.reconfigure(config);
                true
            }
            None => false,
        }
    }

    pub fn drops(&self) -> &DecodeDrops {
        &self.drops
    }

    /// Whether every shard has finished recovering.
    pub fn is_ready(&self) -> bool {
        self.shards.values().all(ShardCoordinator::is_ready)
    }

    fn answer_ping(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let shard = self.shards.get(&received.shard.get());
        let mut reply = Header::new(Op::Reply, received.shard.get(), received.epoch.get());
        reply.request_id = received.request_id;
        reply.client_id = received.client_id;
        if let Some(shard) = shard {
            reply.epoch.set(shard.config.epoch);
            reply.seq.set(shard.state.next_seq());
            reply.commit_seq.set(shard.state.commit_seq());
            if !shard.is_ready() {
                reply.status = Status::TryAgain as u8;
            }
        }
        outbox.push(to, &reply, &[], b"coordinator");
    }

    /// Counters as `name value` lines: the process's and those of the shard
    /// named in the request (all shards when it names none it hosts).
    pub fn render_stats(&self, shard: Option<u32>) -> String {
        let mut text = String::new();
        self.counters.render("", &mut text);
        self.drops.render("drop_", &mut text);
        if let Some(extra) = &self.extra_stats {
            extra(&mut text);
        }
        let mut shards: Vec<_> = self.shards.values().collect();
        shards.sort_by_key(|shard| shard.config.shard);
        for coordinator in shards {
            if shard.is_none_or(|wanted| wanted == coordinator.config.shard) {
                coordinator.render_stats(&mut text);
            }
        }
        text
    }

    fn answer_stats(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let shard = Some(received.shard.get()).filter(|shard| self.shards.contains_key(shard));
        let text = self.render_stats(shard);
        let mut reply = Header::new(Op::Reply, received.shard.get(), received.epoch.get());
        reply.request_id = received.request_id;
        reply.client_id = received.client_id;
        let end = text.len().min(VALUE_LEN_MAX);
        outbox.push(to, &reply, &[], &text.as_bytes()[..end]);
    }
}

impl<S: ShardState> Core for Coordinator<S> {
    /// Handles one received datagram.
    fn step(&mut self, now: Time, from: SocketAddrV4, bytes: &[u8], outbox: &mut Outbox) {
        let Some(message) = crate::decode_or_refuse(from, bytes, &mut self.drops, outbox) else {
            return;
        };
        let header = &message.header;
        match header.op() {
            Op::Ping => return self.answer_ping(from, header, outbox),
            Op::Stats => return self.answer_stats(from, header, outbox),
            Op::Get
            | Op::Put
            | Op::Delete
            | Op::Cas
            | Op::IncrBy
            | Op::Append
            | Op::Ack
            | Op::Retransmit
            | Op::SeqReport => {}
            Op::Noop | Op::Reply | Op::Replicate | Op::SeqProbe => {
                self.counters.unexpected_op += 1;
                return;
            }
        }
        match self.shards.get_mut(&header.shard.get()) {
            Some(shard) => shard.step(now, from, &message, outbox),
            None => {
                self.counters.unknown_shard += 1;
                crate::answer_status(
                    from,
                    header,
                    Status::WrongShard,
                    header.epoch.get(),
                    self.map_version,
                    outbox,
                );
            }
        }
    }

    fn tick(&mut self, now: Time, outbox: &mut Outbox) {
        for shard in self.shards.values_mut() {
            shard.tick(now, outbox);
        }
    }
}
