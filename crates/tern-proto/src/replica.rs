//! The replica core: one shard's data on one chain member, in any position.
//!
//! The head receives sequenced writes from the coordinator, executes them
//! against its store (CAS is decided here, DESIGN rule 2) and passes the
//! outcome down the chain as REPLICATE; middles apply and forward; the tail
//! applies and acknowledges to the coordinator. Every position applies in
//! strict sequence order, holding back writes that arrive early and asking its
//! predecessor to resend the gap. Reads are answered directly to the client.
// PERFORMANCE CRITICAL PATH: `step` runs once per received datagram.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tern_store::{Store, Write};
use tern_wire::export::{Export, ExportedKey, ExportedOutcome, Named};
use tern_wire::load::SlotLoad;
use tern_wire::{
    DecodeError, Effect, Expiry, Extensions, Header, Large, Message, Op, Status, VALUE_LEN_MAX,
    expiry, flags, multi, txn,
};

use crate::counters::{DecodeDrops, counters};
use crate::edit::EditError;
use crate::expiry::{self as expiring, ExpireOutcome, Reaper};
use crate::fanout::HeadSync;
use crate::large::{Values, Wanted};
use crate::txn::{Standing, Transactions};
use crate::{Core, Outbox, Time, WallClock};

/// Writes held back while waiting for a gap to be filled.
pub const HOLDBACK_MAX: usize = 4096;
/// Outgoing chain datagrams kept for resending to the successor.
pub const SENT_LOG_MAX: usize = 8192;
/// Clients whose recent write outcomes are remembered (DESIGN rule 6).
pub const DEDUP_CLIENTS_MAX: usize = 65536;
/// Outcomes remembered per client: a client keeps at most this many writes
/// outstanding at once.
pub const DEDUP_PER_CLIENT_MAX: usize = 16;
/// Minimum time between two requests to resend the same gap.
pub const GAP_REQUEST_INTERVAL: Duration = Duration::from_millis(20);
/// Most sequence numbers resent for one RETRANSMIT request.
pub const RETRANSMIT_BATCH_MAX: u64 = 512;

/// The head's decision about a sequenced write.
#[derive(Debug)]
struct Decision {
    effect: Effect,
    status: Status,
    /// The version to report (the new one, or the current one on refusal).
    version: u64,
    /// The value to write when it is computed (INCRBY, APPEND), not sent.
    value: Option<Vec<u8>>,
    /// The deadline of the key's new value (Unix milliseconds; 0: none).
    deadline_ms: u64,
    /// The key's value before had expired (flags::OLD_EXPIRED).
    old_expired: bool,
}

impl Decision {
    /// A decision that writes no computed value and no deadline.
    fn of(effect: Effect, status: Status, version: u64) -> Decision {
        Decision {
            effect,
            status,
            version,
            value: None,
            deadline_ms: 0,
            old_expired: false,
        }
    }
}

/// Why a replica could not be restored from its snapshot and log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreError(pub String);

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot restore the replica: {}", self.0)
    }
}

impl std::error::Error for RestoreError {}

/// Where a replica sits and whom it talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub shard: u32,
    pub epoch: u32,
    /// Every replica of the shard, head first.
    pub chain: Vec<SocketAddrV4>,
    /// This replica's index in `chain`.
    pub position: usize,
    pub coordinator: SocketAddrV4,
    /// The shard's early commit (`crate::commit_point_index`): 0 commits
    /// at the tail.
    pub early_commit: u32,
    /// Fan-out replication: the head sends what it decided to every other
    /// replica at once, and every replica acknowledges what it applied to
    /// the coordinator, as a tail does.
    pub fanout: bool,
}

impl ReplicaConfig {
    pub fn is_head(&self) -> bool {
        self.position == 0
    }

    pub fn is_tail(&self) -> bool {
        self.position + 1 == self.chain.len()
    }

    /// Whether this replica answers writes before the tail holds them
    /// (early commit): it acknowledges each client write it applies to
    /// the coordinator, besides passing it on.
    pub fn is_commit_point(&self) -> bool {
        !self.is_tail()
            && !self.fanout
            && crate::commit_point_index(self.early_commit, self.chain.len()) == self.position
    }

    /// Who sends this replica its sequenced writes: the coordinator to
    /// the head; the previous replica in a chain, the head in a fan-out.
    pub fn predecessor(&self) -> SocketAddrV4 {
        match (self.is_head(), self.fanout) {
            (true, _) => self.coordinator,
            (false, false) => self.chain[self.position - 1],
            (false, true) => self.chain[0],
        }
    }

    /// Whether this replica acknowledges what it applies to the
    /// coordinator (answering its client): the tail of a chain, every
    /// replica of a fan-out.
    pub fn acknowledges(&self) -> bool {
        self.is_tail() || self.fanout
    }

    /// Where this replica passes on the records it applied: its successor
    /// in a chain; in a fan-out, every other replica from the head, and
    /// nobody from the others.
    pub fn successors(&self) -> &[SocketAddrV4] {
        match (self.is_head(), self.fanout, self.is_tail()) {
            (_, false, true) | (false, true, _) => &[],
            (true, true, _) => &self.chain[1..],
            (_, false, false) => &self.chain[self.position + 1..self.position + 2],
        }
    }

    pub fn role_name(&self) -> &'static str {
        match (self.is_head(), self.is_tail(), self.fanout) {
            (true, true, _) => "head+tail",
            (true, false, _) => "head",
            (false, true, false) => "tail",
            (false, false, false) => "middle",
            (false, _, true) => "leaf",
        }
    }
}

counters! {
    /// What a replica did, for STATS.
    pub struct ReplicaCounters {
        reads,
        writes_applied,
        dedup_hits,
        /// Late copies of writes older than the outcomes remembered, refused.
        dedup_forgotten,
        duplicates,
        held_back,
        holdback_full,
        gap_requests,
        resent,
        unexpected_sender,
        unexpected_op,
        stale_epoch,
        wrong_shard,
        fenced,
        reconfigurations,
        /// Sequenced writes that failed to decode here, filled as refusals.
        refused_sequenced,
        /// Reads refused because they were stamped above what is applied here.
        behind_stamp,
        /// Decided records whose value did not decode (INSTALL_KEYS): their
        /// seq is used up without a write.
        damaged_records,
        /// Reads forwarded before their slot was dropped here (it moved to
        /// another shard) and arriving after: refused, the client asks again.
        read_before_drop,
        /// Reads of a key whose value had expired here: answered NOT_FOUND.
        expired_reads,
        /// Reap requests this head sent its coordinator for expired keys.
        reap_requests,
        /// Expired keys this head decided to delete.
        reaped,
        /// Records whose out-of-band value was fetched from the predecessor.
        values_fetched,
        /// Records whose out-of-band value the client had staged here too.
        values_staged_here,
        /// Writes decided VALUE_MISSING: their value was not staged here.
        values_missing,
        /// Answers too large for a datagram, kept for their client to fetch.
        large_answers,
        /// Client writes acknowledged to the coordinator as the commit
        /// point (early commit), before the tail held them.
        early_acks,
        /// Fan-out: syncs this replica ran on becoming head, the records
        /// leaves sent it then, and the coordinator's writes it dropped
        /// while syncing (the coordinator resends them).
        fanout_syncs,
        fanout_synced_records,
        fanout_writes_while_syncing,
        /// Reads and writes of a key a transaction held, answered LOCKED.
        locked,
        /// Transactions across shards this head prepared, and those it
        /// refused (the shard voted no).
        txn_prepared,
        txn_refused,
        /// ACQUIREs of locking transactions this head granted.
        txn_acquired,
        txn_committed,
        txn_aborted,
    }
}

/// Where `Replica::resend_range` sends what it resends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Onward, as first sent: to the successors, and as an
    /// acknowledgement from a replica that acknowledges.
    Onward,
    /// As records, to the one replica that asked (a gap in a leaf of a
    /// fan-out, a new head's sync).
    To(SocketAddrV4),
}

#[derive(Clone, Copy, Debug)]
struct Outcome {
    request_id: u64,
    status: Status,
    version: u64,
    /// The key's hash, so that a migration moves the outcome with its slot.
    key_hash: u32,
}

/// A replica's store: its keys bucketed by hash slot, so that a migration
/// lists or drops a slot range's keys without walking the others.
fn new_store() -> Store {
    Store::with_buckets(tern_wire::SLOT_COUNT, |key| {
        tern_wire::slot_of(tern_wire::key_hash(key))
    })
}

/// A key a transaction has written so far (`decide_multi`): its value
/// (None: deleted) and deadline.
type Pending<'k> = (&'k [u8], Option<Vec<u8>>, u64);

/// The replica snapshot's format number (after the store's bytes); 3
/// adds the transactions (format 2 has none), 4 their phase (acquired or
/// prepared).
const SNAPSHOT_FORMAT: u64 = 4;

#[derive(Debug, Default)]
struct ClientOutcomes {
    last_seq: u64,
    /// The outcomes of the client's `DEDUP_PER_CLIENT_MAX` highest request
    /// ids decided here (the lowest is dropped first).
    recent: VecDeque<Outcome>,
}

impl ClientOutcomes {
    /// Whether `request_id` is below every remembered one while as many are
    /// remembered as a client may keep outstanding. A client keeps its
    /// outstanding request ids within `DEDUP_PER_CLIENT_MAX` of each other
    /// (the pipeline's depth), so it sent that many requests after this one
    /// only once this one was answered: this is a late copy, which may have
    /// been applied and is refused rather than applied again. (Requests a
    /// client sends to other shards do not count here, so an old id that
    /// first arrives now, after a migration, is not mistaken for one.)
    fn forgot(&self, request_id: u64) -> bool {
        self.recent.len() == DEDUP_PER_CLIENT_MAX
            && self
                .recent
                .iter()
                .all(|outcome| outcome.request_id > request_id)
    }
}

/// One replica of one shard.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    store: Store,
    highest_seen: u64,
    holdback: BTreeMap<u64, Vec<u8>>,
    /// Datagrams sent downstream, for sequence numbers
    /// `sent_log_first_seq ..= store.applied_seq()`.
    sent_log: VecDeque<Vec<u8>>,
    sent_log_first_seq: u64,
    /// Outcomes of recent writes by client. Every replica keeps it (built from
    /// REPLICATE), so that any replica can take over as head.
    outcomes: HashMap<u64, ClientOutcomes>,
    last_gap_request: Option<Time>,
    /// Whether applied writes are also queued as log records.
    journaling: bool,
    /// A fenced replica serves no reads and applies no writes: it has no
    /// lease from meta, is not in the chain, or is still joining.
    fenced: bool,
    /// Set by `reconfigure`: the next tick resends to the new downstream.
    downstream_changed: bool,
    /// Set by `catch_up`: the next tick asks the predecessor for everything
    /// after the state this replica was loaded with.
    catching_up: bool,
    /// A new head of a fan-out catching up with its leaves before it
    /// decides anything (`crate::fanout`).
    syncing: Option<HeadSync>,
    /// Fan-out: the keys a transaction's COMMIT wrote here, with its seq,
    /// until this replica knows that seq committed (`settle_txn_writes`).
    txn_writes: HashMap<Box<[u8]>, u64>,
    /// The seq a snapshot brought this replica to (0: none): `txn_writes`
    /// is not in snapshots, so under fan-out reads stamped below it are
    /// refused TRY_AGAIN (a COMMIT at or below it may not be known
    /// committed yet).
    restored_at: u64,
    /// Version of the cluster map this replica acts on (0: a static map),
    /// named in its STALE_EPOCH and WRONG_SHARD refusals.
    map_version: u64,
    /// Scratch space for encoding sent-log entries.
    scratch: Vec<u8>,
    /// By slot, the seq of the last DROP_SLOTS that covered it (none before
    /// the first drop): a forwarded read stamped below it was routed before
    /// the slot left this shard.
    dropped_at: Option<Box<[u64]>>,
    /// Reads answered and client writes applied, by slot (`tern reshard
    /// rebalance --by load`).
    load: SlotLoad,
    counters: ReplicaCounters,
    drops: DecodeDrops,
    /// Unix time from the monotonic time handed in (set by the shell).
    clock: WallClock,
    /// The time handed to the step or tick under way.
    now: Time,
    /// The reap requests this replica has outstanding while it is head.
    reaper: Reaper,
    /// Values too large for a datagram, shared with the shell.
    values: Values,
    /// Transactions across shards: prepared ones and their locks, and
    /// the outcomes of finished ones.
    txns: Transactions,
}

impl Replica {
    pub fn new(config: ReplicaConfig) -> Self {
        assert!(
            config.position < config.chain.len(),
            "position outside the chain"
        );
        Replica {
            store: new_store(),
            highest_seen: 0,
            holdback: BTreeMap::new(),
            sent_log: VecDeque::new(),
            sent_log_first_seq: 1,
            outcomes: HashMap::new(),
            last_gap_request: None,
            journaling: false,
            fenced: false,
            downstream_changed: false,
            catching_up: false,
            syncing: None,
            txn_writes: HashMap::new(),
            restored_at: 0,
            map_version: 0,
            scratch: Vec::new(),
            dropped_at: None,
            load: SlotLoad::default(),
            counters: ReplicaCounters::default(),
            drops: DecodeDrops::default(),
            clock: WallClock::default(),
            now: Time::ZERO,
            reaper: Reaper::new(config.chain[config.position]),
            values: Values::default(),
            txns: Transactions::default(),
            config,
        }
    }

    /// The clock by which deadlines are decided and values hide once
    /// expired. The shell sets it from the system clock, and again now and
    /// then so that adjustments of the system clock reach it.
    pub fn set_wall_clock(&mut self, clock: WallClock) {
        self.clock = clock;
    }

    /// Unix milliseconds now, by this replica's clock.
    fn unix_ms(&self) -> u64 {
        self.clock.unix_ms(self.now)
    }

    /// The table of out-of-band values this replica uses: the shell's, which
    /// its threads fill and serve from (a replica starts with a table of
    /// its own, with the default limits).
    pub fn set_values(&mut self, values: Values) {
        self.values = values;
    }

    pub fn values(&self) -> &Values {
        &self.values
    }

    /// Also queue every applied write as a log record (see `Outbox::journal`).
    pub fn with_journal(mut self) -> Self {
        self.journaling = true;
        self
    }

    /// Replays one log record written by `with_journal`: applies it as it was
    /// applied before the restart and rebuilds what depends on it (dedup
    /// outcomes, the sent log for resends). `scratch` receives the datagrams
    /// that applying produces; the caller discards them.
    pub fn replay_record(
        &mut self,
        payload: &[u8],
        scratch: &mut Outbox,
    ) -> Result<(), RestoreError> {
        let (message, trailer) = Message::decode_with_trailer(payload)
            .map_err(|error| RestoreError(format!("record: {error}")))?;
        let header = &message.header;
        // A large value follows its record's datagram.
        let value = match message.extensions.large {
            Some(large) if large.names(trailer) => trailer,
            None if trailer.is_empty() => message.value,
            _ => {
                return Err(RestoreError(format!(
                    "record {}: its value does not match its length and checksum",
                    header.seq.get()
                )));
            }
        };
        if header.op() != Op::Replicate {
            return Err(RestoreError(format!("a record of op {:?}", header.op())));
        }
        let seq = header.seq.get();
        let applied = self.store.applied_seq();
        if seq <= applied {
            return Ok(());
        }
        if seq != applied + 1 {
            return Err(RestoreError(format!(
                "record {seq} follows {applied}: the log has a gap"
            )));
        }
        self.observe_commit(header.commit_seq.get());
        self.highest_seen = self.highest_seen.max(seq);
        let deadline_ms = message
            .extensions
            .expiry
            .map_or(0, |asked| asked.deadline_ms);
        let extensions = record_extensions(deadline_ms, value);
        self.apply_record(header, message.key, value, &extensions, scratch);
        Ok(())
    }

    /// The replica's state for a snapshot: the store with every retained
    /// version, the highest seq seen, and the dedup outcomes.
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        let mut bytes = Vec::new();
        self.store.encode(&mut bytes);
        // A marker no highest seq can be, and the format: snapshots written
        // before the format had a number start with the highest seq seen.
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        bytes.extend_from_slice(&self.highest_seen.to_le_bytes());
        bytes.extend_from_slice(&(self.outcomes.len() as u64).to_le_bytes());
        for (client_id, client) in &self.outcomes {
            bytes.extend_from_slice(&client_id.to_le_bytes());
            bytes.extend_from_slice(&client.last_seq.to_le_bytes());
            bytes.extend_from_slice(&(client.recent.len() as u32).to_le_bytes());
            for outcome in &client.recent {
                bytes.extend_from_slice(&outcome.request_id.to_le_bytes());
                bytes.push(outcome.status as u8);
                bytes.extend_from_slice(&outcome.version.to_le_bytes());
                bytes.extend_from_slice(&outcome.key_hash.to_le_bytes());
            }
        }
        self.txns.encode(&mut bytes);
        (self.store.applied_seq(), bytes)
    }

    /// A replica restored from `snapshot` (None: empty), to be completed by
    /// `replay_record` for every later record.
    pub fn restore(
        config: ReplicaConfig,
        snapshot: Option<&[u8]>,
    ) -> Result<Replica, RestoreError> {
        let mut replica = Replica::new(config);
        let Some(bytes) = snapshot else {
            return Ok(replica);
        };
        let (store, used) = Store::decode_into(bytes, new_store())
            .map_err(|error| RestoreError(error.to_string()))?;
        let rest = std::cell::Cell::new(&bytes[used..]);
        let take = |length: usize| -> Result<&[u8], RestoreError> {
            let Some((taken, left)) = rest.get().split_at_checked(length) else {
                return Err(RestoreError("snapshot truncated".into()));
            };
            rest.set(left);
            Ok(taken)
        };
        let u64_of = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        let u32_of = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        let mut first = u64_of(take(8)?);
        // Format 1 (unnumbered): outcomes without key hashes.
        let numbered = first == u64::MAX;
        let mut format = 1;
        if numbered {
            format = u64_of(take(8)?);
            if !(2..=SNAPSHOT_FORMAT).contains(&format) {
                return Err(RestoreError(format!("unknown snapshot format {format}")));
            }
            first = u64_of(take(8)?);
        }
        replica.highest_seen = first;
        let clients = u64_of(take(8)?);
        for _ in 0..clients {
            let client_id = u64_of(take(8)?);
            let last_seq = u64_of(take(8)?);
            let count = u32_of(take(4)?);
            let mut client = ClientOutcomes {
                last_seq,
                recent: VecDeque::new(),
            };
            for _ in 0..count {
                let request_id = u64_of(take(8)?);
                let status = Status::from_u8(take(1)?[0])
                    .ok_or_else(|| RestoreError("unknown status in snapshot".into()))?;
                let version = u64_of(take(8)?);
                let key_hash = if numbered { u32_of(take(4)?) } else { 0 };
                client.recent.push_back(Outcome {
                    request_id,
                    status,
                    version,
                    key_hash,
                });
            }
            replica.outcomes.insert(client_id, client);
        }
        if format >= 3 {
            replica.txns = Transactions::decode(format >= 4, take, RestoreError)?;
        }
        replica.sent_log_first_seq = store.applied_seq() + 1;
        replica.restored_at = store.applied_seq();
        replica.store = store;
        Ok(replica)
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The copy of the slot range `[start, end)` a migration takes from
    /// this replica (the source's tail, once the range's writes have all
    /// committed): its live keys with their newest versions, its dedup
    /// outcomes, and a version floor above every version it gave. Keys
    /// whose version is below `since` (the floor of an earlier copy, which
    /// had them) come by name only. Keys expired by this replica's clock
    /// are left out: they exist for no reader, here or there.
    pub fn export_slots(&self, [start, end]: [u32; 2], since: u64) -> Export {
        let in_range = |hash: u32| (start..end).contains(&tern_wire::slot_of(hash));
        let mut keys = Vec::new();
        let mut unchanged = Vec::new();
        let now_ms = self.unix_ms();
        let live = self.store.live_in([start, end]);
        for (key, found) in live.filter(|(_, found)| found.live_at(now_ms)) {
            if found.version >= since {
                keys.push(ExportedKey {
                    key: key.to_vec(),
                    version: found.version,
                    value: found.value.to_vec(),
                    deadline_ms: found.deadline_ms,
                });
            } else {
                unchanged.push(Named {
                    key: key.to_vec(),
                    deadline_ms: found.deadline_ms,
                });
            }
        }
        let outcomes = self
            .outcomes
            .iter()
            .flat_map(|(client_id, client)| {
                client
                    .recent
                    .iter()
                    .filter(|outcome| in_range(outcome.key_hash))
                    .map(|outcome| ExportedOutcome {
                        client_id: *client_id,
                        request_id: outcome.request_id,
                        status: outcome.status,
                        version: outcome.version,
                        key_hash: outcome.key_hash,
                    })
            })
            .collect();
        Export {
            floor: self.store.version_of(self.store.applied_seq() + 1),
            keys,
            outcomes,
            unchanged,
        }
    }

    /// Installs a new chain configuration (a new epoch) from meta. Writes this
    /// replica passed on but not yet committed go again to its downstream
    /// on the next tick, at the new epoch (copies on their way at the old
    /// one are refused there); a new tail acknowledges them itself. Under
    /// early commit some of them are answered already, and no client
    /// resends them: without this they reached the rest of the chain only
    /// behind the next write.
    pub fn reconfigure(&mut self, config: ReplicaConfig) {
        assert!(
            config.position < config.chain.len(),
            "position outside the chain"
        );
        if config.successors() != self.config.successors()
            || config.acknowledges() != self.config.acknowledges()
            || config.epoch != self.config.epoch
        {
            self.downstream_changed = true;
        }
        let new_head = config.is_head() && !self.config.is_head();
        if config.fanout && config.is_head() && (new_head || self.syncing.is_some()) {
            // The leaves may hold records this replica lacks (a chain's
            // prefix property does not hold in a fan-out); a sync under
            // way starts over with the leaves of the new chain.
            self.syncing = Some(HeadSync::new(&config.chain[1..]));
            self.counters.fanout_syncs += u64::from(new_head);
        } else if !config.is_head() {
            self.syncing = None;
        }
        if new_head {
            // Writes held back here were decided by the failed head on a
            // state that may include a write no survivor has (the gap before
            // them): drop them. Nobody after this replica has them either,
            // so none was acknowledged; their clients send them again.
            self.holdback.clear();
            self.values.unwant();
            self.last_gap_request = None;
            self.highest_seen = self.store.applied_seq();
        }
        self.counters.reconfigurations += 1;
        self.config = config;
    }

    /// Records the version of the cluster map this replica now acts on.
    pub fn set_map_version(&mut self, version: u64) {
        self.map_version = version;
    }

    /// Fences the replica (no reads, no writes) or lifts the fence.
    pub fn set_fenced(&mut self, fenced: bool) {
        self.fenced = fenced;
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Keeps `previous`'s event and drop counters: they count what this
    /// process saw since it started, not since its state was last replaced
    /// (a join, a new shard's empty start, a drop of its data).
    pub fn keep_counters_of(&mut self, previous: &Replica) {
        self.counters = previous.counters.clone();
        self.drops = previous.drops.clone();
        self.clock = previous.clock;
        self.values = previous.values.clone();
    }

    /// After loading a predecessor's state: asks it for everything later.
    pub fn catch_up(&mut self) {
        self.catching_up = true;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads answered and client writes applied here, by slot, since start.
    pub fn slot_load(&self) -> &SlotLoad {
        &self.load
    }

    pub fn counters(&self) -> &ReplicaCounters {
        &self.counters
    }

    pub fn drops(&self) -> &DecodeDrops {
        &self.drops
    }

    fn serve_read(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        message: &Message<'_>,
        outbox: &mut Outbox,
    ) {
        let header = &message.header;
        // Forwarded reads name the client to answer; direct ones do not.
        let to = if header.reply_port.get() == 0 {
            from
        } else {
            header.reply_addr()
        };
        if header.commit_seq.get() > self.store.applied_seq() {
            // The coordinator has acknowledged writes this replica has not
            // applied yet (it restarted from a log that lacked them, or is
            // catching up): answering could return an older value than one
            // a client already saw. The client tries again.
            // It asks its predecessor for what it lacks meanwhile.
            self.counters.behind_stamp += 1;
            self.request_up_to(now, header.commit_seq.get(), outbox);
            return self.answer_status(to, header, Status::TryAgain, outbox);
        }
        let slot = tern_wire::slot_of(header.key_hash.get());
        if header.reply_port.get() != 0 && self.dropped_since(slot, header.commit_seq.get()) {
            // Routed here before its slot moved away, and late: this chain
            // forgot the slot's keys since. Asked again, the read goes
            // where the slot is now.
            self.counters.read_before_drop += 1;
            return self.answer_status(to, header, Status::TryAgain, outbox);
        }
        if self.txns.read_blocked(message.key) {
            // A transaction across shards writes it and may have committed
            // (at another shard) already: asked again, the read finds its
            // write or the old value once it is settled here.
            self.counters.locked += 1;
            return self.answer_status(to, header, Status::Locked, outbox);
        }
        if self.config.fanout
            && !header.has_flag(flags::TAIL_READ)
            && header.seq.get() < self.restored_at
        {
            // Restored from a snapshot, which does not say which keys a
            // COMMIT not yet known committed wrote (`txn_writes`).
            self.counters.behind_stamp += 1;
            return self.answer_status(to, header, Status::TryAgain, outbox);
        }
        if !header.has_flag(flags::TAIL_READ)
            && self
                .txn_writes
                .get(message.key)
                .is_some_and(|&committed_at| committed_at > header.seq.get())
        {
            // Fan-out: its lock is gone here, but the read's stamp is below
            // the COMMIT that wrote it, and the transaction may be visible
            // at another shard already: the value before it must not be
            // read. Asked again, the stamp has caught up.
            self.counters.locked += 1;
            return self.answer_status(to, header, Status::Locked, outbox);
        }
        self.observe_commit(header.commit_seq.get());
        // DESIGN rule 5: a clean read returns the newest version at or below
        // its stamp; a dirty read (sent to the tail) the newest applied one.
        let stored = if header.has_flag(flags::TAIL_READ) {
            self.store.latest(message.key)
        } else {
            self.store.read_at(message.key, header.seq.get())
        };
        // An expired value is gone for readers from its deadline on, by this
        // replica's clock, though its delete may not have come yet.
        let now_ms = self.unix_ms();
        let found = stored.filter(|found| found.live_at(now_ms));
        if stored.is_some() && found.is_none() {
            self.counters.expired_reads += 1;
        }
        let mut reply = Header::new(Op::Reply, self.config.shard, self.config.epoch);
        reply.client_id = header.client_id;
        reply.request_id = header.request_id;
        reply.key_hash = header.key_hash;
        reply.commit_seq.set(self.store.commit_seq());
        self.counters.reads += 1;
        self.load.count_read(slot);
        match found {
            Some(found) => {
                reply.status = Status::Ok as u8;
                reply.set_version(found.version);
                let deadline = Extensions::deadline(found.deadline_ms);
                let value = found.value;
                if self.push_answer(to, &reply, deadline, value, outbox) {
                    self.counters.large_answers += 1;
                }
            }
            None => {
                reply.status = Status::NotFound as u8;
                outbox.push(to, &reply, &[], &[]);
            }
        }
    }

    /// Whether `slot` was dropped here after a read of it was stamped with
    /// `stamp` (every stamp is the coordinator's commit seq when it
    /// forwarded).
    fn dropped_since(&self, slot: u32, stamp: u64) -> bool {
        self.dropped_at
            .as_ref()
            .is_some_and(|dropped_at| dropped_at[slot as usize] > stamp)
    }

    fn receive_sequenced(
        &mut self,
        now: Time,
        message: &Message<'_>,
        bytes: &[u8],
        outbox: &mut Outbox,
    ) {
        let seq = message.header.seq.get();
        self.observe_commit(message.header.commit_seq.get());
        let applied = self.store.applied_seq();
        if seq <= applied {
            // A resend of something already applied (a lost acknowledgement
            // somewhere below): pass our record of it on again.
            self.counters.duplicates += 1;
            if seq < self.sent_log_first_seq
                && !self.config.acknowledges()
                && message.header.op() == Op::Replicate
            {
                // No record of it here: it came in the snapshot this replica
                // joined with. The decided record just received goes on
                // instead; every replica below joined later, from a state
                // that holds it too, so the tail answers it with a bare
                // acknowledgement (without this the resend stopped here and
                // the write stayed in flight for good).
                self.counters.resent += 1;
                for &to in self.config.successors() {
                    outbox.push_encoded(to, bytes);
                }
                return;
            }
            self.resend_range(seq, seq, Resend::Onward, outbox);
            return;
        }
        self.highest_seen = self.highest_seen.max(seq);
        if seq > applied + 1 {
            // DESIGN rule 2: hold back until the gap is filled.
            if self.holdback.len() < HOLDBACK_MAX || self.holdback.contains_key(&seq) {
                self.counters.held_back += 1;
                self.holdback.entry(seq).or_insert_with(|| bytes.to_vec());
            } else {
                self.counters.holdback_full += 1;
            }
            self.request_gap(now, outbox);
            return;
        }
        if !self.execute(message, outbox) {
            // Its value is on its way from the predecessor.
            self.holdback.entry(seq).or_insert_with(|| bytes.to_vec());
            return;
        }
        self.apply_held(outbox);
    }

    /// Applies the held-back writes that are next in order.
    fn apply_held(&mut self, outbox: &mut Outbox) {
        while let Some(entry) = self.holdback.first_entry() {
            if *entry.key() <= self.store.applied_seq() {
                // Held while its value was fetched, then applied from a
                // resend that came once the value was here.
                entry.remove();
                continue;
            }
            if *entry.key() != self.store.applied_seq() + 1 {
                break;
            }
            let held = entry.remove();
            let message = Message::decode(&held).expect("held datagrams were decoded once");
            if !self.execute(&message, outbox) {
                let seq = message.header.seq.get();
                self.holdback.insert(seq, held);
                return;
            }
        }
        if self.holdback.is_empty() {
            self.last_gap_request = None;
        }
    }

    /// The value a sequenced write brings: in the datagram, or out of band
    /// (`ext::LARGE`): staged here by its client (for the head to decide;
    /// `Err(VALUE_MISSING)` when it is not), or, for a decided record,
    /// fetched from the predecessor (None: not here yet, and asked for).
    fn value_of(&mut self, message: &Message<'_>) -> Option<Result<Arc<[u8]>, Status>> {
        let header = &message.header;
        let large = message.extensions.large?;
        let ids = (header.client_id.get(), header.request_id.get());
        if header.op() != Op::Replicate {
            if !message.value.is_empty() {
                // A client's write names its value or carries it, not both.
                return Some(Err(Status::Malformed));
            }
            return Some(
                self.values
                    .take_staged(ids, &large)
                    .ok_or(Status::ValueMissing),
            );
        }
        let seq = header.seq.get();
        if let Some(value) = self.values.record(seq, &large) {
            return Some(Ok(value));
        }
        // The client's own value, staged here too: no fetch.
        if header.has_flag(flags::CLIENT_VALUE)
            && let Some(value) = self.values.take_staged(ids, &large)
        {
            self.counters.values_staged_here += 1;
            return Some(Ok(value));
        }
        // A syncing fan-out head fetches from the leaf that sent it.
        let from = self
            .syncing
            .as_ref()
            .and_then(HeadSync::richest)
            .unwrap_or_else(|| self.config.predecessor());
        let asked = self.values.want(Wanted { seq, large, from });
        if asked {
            self.counters.values_fetched += 1;
        }
        None
    }

    /// Applies the write that carries the next sequence number and sends it
    /// on; false when it cannot yet, its value being on its way.
    fn execute(&mut self, message: &Message<'_>, outbox: &mut Outbox) -> bool {
        let header = &message.header;
        let out_of_band = match self.value_of(message) {
            Some(value) => Some(value),
            None if message.extensions.large.is_some() => return false,
            None => None,
        };
        let operand = match &out_of_band {
            Some(Ok(value)) => Ok(&value[..]),
            Some(Err(status)) => Err(*status),
            None => Ok(message.value),
        };
        // A REPLICATE carries its head's decision, even at a replica that
        // became head after receiving it (held back across a reconfiguration).
        let decision = if self.config.is_head() && header.op() != Op::Replicate {
            self.decide(message, operand)
        } else {
            Decision {
                effect: header.effect(),
                status: header.status(),
                version: header.version(),
                value: None,
                deadline_ms: message
                    .extensions
                    .expiry
                    .map_or(0, |decided| decided.deadline_ms),
                old_expired: header.has_flag(flags::OLD_EXPIRED),
            }
        };
        let (effect, status, version) = (decision.effect, decision.status, decision.version);
        // The decided write, as this replica passes it on and logs it.
        let mut record = *header;
        // Held-back writes may carry the previous epoch.
        record.epoch.set(self.config.epoch);
        record.op = Op::Replicate as u8;
        record.effect = effect as u8;
        record.status = status as u8;
        // Only the client's write options travel on with the write, and
        // what the head found.
        record.flags &= flags::WRITE_OPTIONS;
        if decision.old_expired {
            record.flags |= flags::OLD_EXPIRED;
        }
        let client_value = matches!(&out_of_band, Some(Ok(_)))
            && decision.value.is_none()
            && matches!(effect, Effect::Put | Effect::Install);
        let decided_upstream = header.op() == Op::Replicate;
        if client_value || (decided_upstream && header.has_flag(flags::CLIENT_VALUE)) {
            // Decided here (or upstream, kept as it was) to be the client's;
            // a client's own flags never say so.
            record.flags |= flags::CLIENT_VALUE;
        }
        record.set_version(version);
        record.commit_seq.set(self.store.commit_seq());
        let value = match (effect, &decision.value, operand) {
            (
                Effect::Put
                | Effect::InstallKeys
                | Effect::Multi
                | Effect::Acquire
                | Effect::Prepare
                | Effect::Commit
                | Effect::Abort,
                Some(computed),
                _,
            ) => &computed[..],
            // The client's value, or as decided upstream (a REPLICATE).
            (Effect::Put | Effect::Install, None, Ok(operand)) => operand,
            (
                Effect::InstallKeys
                | Effect::Outcome
                | Effect::Multi
                | Effect::Acquire
                | Effect::Prepare
                | Effect::Commit
                | Effect::Abort,
                None,
                _,
            ) => message.value,
            _ => &[],
        };
        // Only a written value has a deadline.
        let deadline_ms = match effect {
            Effect::Put | Effect::Install => decision.deadline_ms,
            _ => 0,
        };
        // Its deadline, and a large value's name (its checksum computed
        // once, for the log and the record sent on).
        let extensions = record_extensions(deadline_ms, value);
        if self.journaling {
            outbox.journal_push(header.seq.get(), &record, &extensions, message.key, value);
        }
        // Counted live only: a replay of the log is no load.
        if matches!(
            record.effect(),
            Effect::Put | Effect::Delete | Effect::Multi | Effect::Commit
        ) {
            self.load
                .count_write(tern_wire::slot_of(record.key_hash.get()));
        }
        self.apply_record(&record, message.key, value, &extensions, outbox);
        true
    }

    /// Applies a decided write (a REPLICATE record) and queues what goes
    /// downstream: the record to the successor, or an ACK from the tail.
    /// Execution and log replay both come through here.
    /// `extensions` are the record's (`record_extensions`): the value's
    /// deadline and, for a large value, its name.
    fn apply_record(
        &mut self,
        record: &Header,
        key: &[u8],
        value: &[u8],
        extensions: &Extensions,
        outbox: &mut Outbox,
    ) {
        let seq = record.seq.get();
        let deadline_ms = extensions.expiry.map_or(0, |decided| decided.deadline_ms);
        // The tail answers with the key's value before or after this write
        // when asked: it applies every write in order, so it knows both.
        // The value before is answered whatever the outcome (a refused
        // `SET NX GET` returns the existing value); the value after only on
        // success. None inside: the key had no value.
        // A value the head found expired is answered as none.
        let answer_with = |store: &Store| store.latest(key).map(|found| found.value.to_vec());
        // The tail answers, and under fan-out every replica (whichever
        // acknowledgement completes the write carries the answer).
        let tail = self.config.acknowledges();
        // Under early commit the commit point answers as the tail does,
        // and first: it applies in the same order.
        let early = self.config.is_commit_point() && answered_early(record.effect());
        let answers = tail || early;
        let mut result_value = (answers && record.has_flag(flags::RETURN_OLD)).then(|| {
            if answer_hidden(record, false) {
                None
            } else {
                answer_with(&self.store)
            }
        });
        match record.effect() {
            Effect::Put => self
                .store
                .apply_expiring(seq, key, Write::Put(value), deadline_ms),
            Effect::Delete => self.store.apply(seq, key, Write::Delete),
            Effect::Install => {
                let version = record.version();
                self.store
                    .apply_expiring(seq, key, Write::Install { value, version }, deadline_ms);
            }
            Effect::InstallKeys => match tern_wire::export::decode_keys(value) {
                Ok(keys) => self.store.apply_all(
                    seq,
                    keys.iter().map(|copied| {
                        let write = Write::Install {
                            value: &copied.value,
                            version: copied.version,
                        };
                        (&copied.key[..], write, copied.deadline_ms)
                    }),
                ),
                Err(_) => {
                    // Its head wrote the value from keys it decoded: only
                    // a damaged record gets here. The seq is used up.
                    self.counters.damaged_records += 1;
                    self.store.skip(seq);
                }
            },
            Effect::Multi => match multi::Decided::decode(value) {
                Ok(decided) => {
                    apply_writes(&mut self.store, seq, &decided.writes);
                    if answers {
                        // The answers, as the head decided them.
                        result_value = Some(Some(multi::encode_answers(&decided.answers)));
                    }
                }
                Err(_) => {
                    // Its head encoded it: only a damaged record gets here.
                    self.counters.damaged_records += 1;
                    self.store.skip(seq);
                }
            },
            Effect::Prepare | Effect::Acquire => match txn::PrepareRecord::decode(value) {
                Ok(prepared) => {
                    if tail {
                        result_value = Some(Some(multi::encode_answers(&prepared.decided.answers)));
                    }
                    self.txns.hold(prepared);
                    self.store.skip(seq);
                }
                Err(_) => {
                    self.counters.damaged_records += 1;
                    self.store.skip(seq);
                }
            },
            Effect::Commit => match txn::CommitRecord::decode(value) {
                Ok(committed) => {
                    apply_writes(&mut self.store, seq, &committed.decided.writes);
                    if self.config.fanout {
                        for written in &committed.decided.writes {
                            self.txn_writes.insert(written.key[..].into(), seq);
                        }
                    }
                    self.txns.finish(committed.id, Some(record.version()));
                    self.counters.txn_committed += 1;
                }
                Err(_) => {
                    self.counters.damaged_records += 1;
                    self.store.skip(seq);
                }
            },
            Effect::Abort => {
                match txn::TxnId::decode(value) {
                    Ok(id) => {
                        self.txns.finish(id, None);
                        self.counters.txn_aborted += 1;
                    }
                    Err(_) => self.counters.damaged_records += 1,
                }
                self.store.skip(seq);
            }
            Effect::Rebase => self.store.rebase(seq, record.version()),
            Effect::DropSlots => {
                let [start, end] = record.slot_range();
                self.store.drop_buckets(seq, [start, end]);
                let dropped_at = self.dropped_at.get_or_insert_with(|| {
                    vec![0; tern_wire::SLOT_COUNT as usize].into_boxed_slice()
                });
                // Decided ranges are inside the slots (checked at the head).
                let end = end.min(tern_wire::SLOT_COUNT) as usize;
                dropped_at[(start as usize).min(end)..end].fill(seq);
            }
            Effect::None | Effect::Outcome => self.store.skip(seq),
        }
        if record.client_id.get() != 0 {
            self.values
                .forget_staged((record.client_id.get(), record.request_id.get()));
            // An installed outcome names its key's hash in the value.
            let key_hash = match (record.effect(), <[u8; 4]>::try_from(value)) {
                (Effect::Outcome, Ok(hash)) => u32::from_le_bytes(hash),
                _ => record.key_hash.get(),
            };
            let outcome = Outcome {
                request_id: record.request_id.get(),
                status: record.status(),
                version: record.version(),
                key_hash,
            };
            self.remember_outcome(record.client_id.get(), seq, outcome);
        }
        if answers && record.has_flag(flags::RETURN_NEW) && record.status() == Status::Ok {
            result_value = Some(if answer_hidden(record, true) {
                None
            } else {
                answer_with(&self.store)
            });
        }
        self.counters.writes_applied += 1;
        let mut next = *record;
        next.commit_seq.set(self.store.commit_seq());
        let inline = if extensions.large.is_some() {
            // Kept for the successor to fetch while the record is in the
            // sent log.
            self.values.keep_record(seq, value.into());
            &[][..]
        } else {
            value
        };
        if answers {
            let mut ack = next;
            ack.op = Op::Ack as u8;
            if matches!(result_value, Some(None)) {
                ack.flags |= flags::ANSWER_ABSENT;
            }
            let answer = result_value.flatten();
            let answer = answer.as_deref().unwrap_or_default();
            if self.push_answer(
                self.config.coordinator,
                &ack,
                Extensions::default(),
                answer,
                outbox,
            ) {
                self.counters.large_answers += 1;
            }
            if early {
                self.counters.early_acks += 1;
            }
        }
        let successors = self.config.successors();
        if successors.is_empty() {
            // The log keeps the record itself: if this replica stops being
            // the tail (a leaf), it passes the record on instead.
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            tern_wire::encode_append_with(record, extensions, key, inline, &mut scratch)
                .expect("an applied record fits a datagram");
            self.log_sent(seq, &scratch);
            self.scratch = scratch;
        } else {
            // To the successor; from a fan-out's head, to every leaf at
            // once (one batch of the outbox).
            for &to in successors {
                outbox.push_with(to, &next, extensions, key, inline);
            }
            let sent = outbox.iter().last().expect("just pushed").1;
            self.log_sent(seq, sent);
        }
    }

    /// Queues an answer (a read's REPLY, the tail's ACK) that carries
    /// `value`: in the datagram when it fits, else kept here for its
    /// client to fetch, named by `ext::LARGE` with this replica's address
    /// (then true, for the caller to count).
    #[must_use]
    fn push_answer(
        &self,
        to: SocketAddrV4,
        header: &Header,
        mut extensions: Extensions,
        value: &[u8],
        outbox: &mut Outbox,
    ) -> bool {
        if value.len() <= VALUE_LEN_MAX {
            outbox.push_with(to, header, &extensions, &[], value);
            return false;
        }
        let holder = self.config.chain[self.config.position];
        let large = Large::of(value, holder);
        extensions.large = Some(large);
        let ids = (header.client_id.get(), header.request_id.get());
        self.values
            .keep_answer(self.now, ids, large.checksum, value.into());
        outbox.push_with(to, header, &extensions, &[], &[]);
        true
    }

    /// A datagram that failed to decode: counted, answered when its sender
    /// can be answered, and, when it is a write the coordinator sequenced for
    /// this head, decided as a refusal so that its seq is filled.
    fn refuse(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        error: DecodeError,
        outbox: &mut Outbox,
    ) {
        self.drops.record(&error);
        let (Some(status), Some(received)) =
            (error.reply_status(), Message::readable_header(bytes))
        else {
            return;
        };
        let sequenced_here = !matches!(error, DecodeError::UnsupportedVersion { .. })
            && Op::from_u8(received.op).is_some_and(Op::is_client_write)
            && received.seq.get() != 0
            && self.config.is_head()
            && from == self.config.coordinator
            && received.shard.get() == self.config.shard
            && received.epoch.get() == self.config.epoch
            && !self.fenced;
        if !sequenced_here {
            return crate::refuse_undecodable(from, bytes, &error, outbox);
        }
        // Defence in depth: the coordinator checks what this decoder checks,
        // so this never happens while both agree. If they ever disagree, a
        // seq the coordinator handed out must still end applied: leaving it
        // unfilled would hold back every later write of the shard for good.
        // The write is decided as a no-op that carries the refusal, and the
        // client gets the error with the acknowledgement.
        if received.seq.get() > self.store.applied_seq() {
            self.counters.refused_sequenced += 1;
        }
        let mut refusal = Header::new(Op::Noop, self.config.shard, self.config.epoch);
        refusal.status = status as u8;
        refusal.seq = received.seq;
        refusal.commit_seq = received.commit_seq;
        refusal.client_id = received.client_id;
        refusal.request_id = received.request_id;
        refusal.reply_ip = received.reply_ip;
        refusal.reply_port = received.reply_port;
        let encoded = tern_wire::encode(&refusal, &[], &[]).expect("an empty datagram encodes");
        let message = Message::decode(&encoded).expect("a refusal is a valid datagram");
        self.receive_sequenced(now, &message, &encoded, outbox);
    }

    /// The head's decision for a sequenced client write (DESIGN rules 2, 6).
    fn decide(&mut self, message: &Message<'_>, operand: Result<&[u8], Status>) -> Decision {
        let header = &message.header;
        // The version this write gives its key (its seq, plus the offset a
        // migration into this shard may have added).
        let new_version = self.store.version_of(header.seq.get());
        let decided = Decision::of;
        if header.op() == Op::Noop {
            // A gap fill (Ok), or a sequenced write this head refused (`refuse`).
            return decided(Effect::None, header.status(), 0);
        }
        if let Some(outcome) = self
            .outcomes
            .get(&header.client_id.get())
            .and_then(|client| {
                client
                    .recent
                    .iter()
                    .find(|outcome| outcome.request_id == header.request_id.get())
            })
        {
            // A retry of a write already applied: applied once, same answer.
            self.counters.dedup_hits += 1;
            return decided(Effect::None, outcome.status, outcome.version);
        }
        if self
            .outcomes
            .get(&header.client_id.get())
            .is_some_and(|client| client.forgot(header.request_id.get()))
        {
            // A late copy of a write whose outcome is no longer remembered.
            self.counters.dedup_forgotten += 1;
            return decided(Effect::None, Status::Forgotten, 0);
        }
        // The value the write brings (out of band, it may be missing here).
        let operand = match operand {
            Ok(operand) => operand,
            Err(status) => {
                if status == Status::ValueMissing {
                    self.counters.values_missing += 1;
                }
                return decided(Effect::None, status, 0);
            }
        };
        let limit = self.values.limit();
        // A value whose deadline has passed by this head's clock is absent
        // to every decision but a migration's version comparisons.
        let now_ms = self.unix_ms();
        let stored = self.store.latest(message.key);
        let current = stored.filter(|found| found.live_at(now_ms));
        let old_expired = stored.is_some() && current.is_none();
        let version = current.map(|found| found.version);
        let stored_version = stored.map(|found| found.version);
        // What INCRBY, APPEND and EDIT give the new value: the key's own.
        let kept_deadline = current.map_or(0, |found| found.deadline_ms);
        let asked = message.extensions.expiry;
        let op = header.op();
        if asked.is_some() && !matches!(op, Op::Put | Op::Cas | Op::Expire | Op::Install) {
            return decided(Effect::None, Status::Malformed, 0);
        }
        let with_deadline = |decision: Decision, deadline_ms| Decision {
            deadline_ms,
            ..decision
        };
        // The deadline of a whole new value (SET, CAS), or a refusal.
        let deadline_of_write = expiring::deadline_of_write(asked, current, now_ms);
        if matches!(
            op,
            Op::Put | Op::Delete | Op::Cas | Op::IncrBy | Op::Append | Op::Expire | Op::Edit
        ) && self.txns.write_blocked(message.key)
        {
            // Rule T4: a transaction holds the key until its COMMIT or
            // ABORT (a reaped key waits too).
            self.counters.locked += 1;
            return decided(Effect::None, Status::Locked, version.unwrap_or(0));
        }
        let mut decision = match op {
            _ if matches!(op, Op::Put | Op::Cas) && deadline_of_write.is_none() => {
                decided(Effect::None, Status::Malformed, 0)
            }
            Op::Put if header.has_flag(flags::IF_EXISTS) && current.is_none() => {
                decided(Effect::None, Status::NotFound, 0)
            }
            Op::Put => with_deadline(
                decided(Effect::Put, Status::Ok, new_version),
                deadline_of_write.unwrap_or(0),
            ),
            Op::Delete => match (version, stored_version) {
                (Some(_), _) => decided(Effect::Delete, Status::Ok, new_version),
                // Expired: gone for the client, and its memory reclaimed now.
                (None, Some(_)) => decided(Effect::Delete, Status::NotFound, new_version),
                (None, None) => decided(Effect::None, Status::NotFound, new_version),
            },
            Op::Cas => {
                let version = version.unwrap_or(0);
                if version == header.expected_version() {
                    with_deadline(
                        decided(Effect::Put, Status::Ok, new_version),
                        deadline_of_write.unwrap_or(0),
                    )
                } else {
                    decided(Effect::None, Status::CasMismatch, version)
                }
            }
            Op::IncrBy => {
                // Redis semantics: an absent key counts as 0; the value and
                // the delta must be decimal 64-bit integers; no overflow;
                // the key keeps its deadline.
                let parse = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<i64>().ok();
                let sum = match (
                    current.map_or(Some(0), |found| parse(found.value)),
                    parse(operand),
                ) {
                    (Some(value), Some(delta)) => value.checked_add(delta),
                    _ => None,
                };
                match sum {
                    Some(sum) => Decision {
                        value: Some(sum.to_string().into_bytes()),
                        deadline_ms: kept_deadline,
                        ..decided(Effect::Put, Status::Ok, new_version)
                    },
                    None => decided(Effect::None, Status::NotInteger, version.unwrap_or(0)),
                }
            }
            Op::Append => {
                let mut value = current.map_or_else(Vec::new, |found| found.value.to_vec());
                value.extend_from_slice(operand);
                if value.len() > limit {
                    return decided(Effect::None, Status::TooLarge, version.unwrap_or(0));
                }
                Decision {
                    value: Some(value),
                    deadline_ms: kept_deadline,
                    ..decided(Effect::Put, Status::Ok, new_version)
                }
            }
            Op::Expire => expire_decision(asked, stored, current, now_ms, new_version),
            Op::Edit => {
                let (kind, offset) = header.edit();
                let before = current.map_or(&[][..], |found| found.value);
                let refused = |status| decided(Effect::None, status, version.unwrap_or(0));
                match crate::edit::apply(kind, offset, before, operand, limit) {
                    Ok(Some(value)) => Decision {
                        value: Some(value),
                        deadline_ms: kept_deadline,
                        ..decided(Effect::Put, Status::Ok, new_version)
                    },
                    // Nothing to change (SETRANGE of nothing): answered
                    // with the value as it is.
                    Ok(None) => decided(Effect::None, Status::Ok, version.unwrap_or(0)),
                    Err(EditError::TooLarge) => refused(Status::TooLarge),
                    Err(EditError::NotNumber) => refused(Status::NotInteger),
                    Err(EditError::NotFinite) => refused(Status::NotFinite),
                    Err(EditError::Malformed) => refused(Status::Malformed),
                }
            }
            Op::Install => {
                // A copy never replaces what is newer: installs of one key
                // may arrive more than once (a migration resumed). It keeps
                // the deadline it had (absolute, as its source decided it).
                let installed = header.version();
                match (stored_version, asked) {
                    (_, Some(copied)) if copied.mode != 0 => {
                        decided(Effect::None, Status::Malformed, 0)
                    }
                    (Some(current), _) if current >= installed => {
                        decided(Effect::None, Status::Ok, current)
                    }
                    _ => with_deadline(
                        decided(Effect::Install, Status::Ok, installed),
                        asked.map_or(0, |copied| copied.deadline_ms),
                    ),
                }
            }
            Op::Uninstall => match stored_version {
                // A newer copy (or nothing to forget): left as it is.
                Some(current) if current < header.version() => {
                    decided(Effect::Delete, Status::Ok, current)
                }
                _ => decided(Effect::None, Status::Ok, stored_version.unwrap_or(0)),
            },
            Op::InstallKeys => match tern_wire::export::decode_keys(message.value) {
                Ok(keys) => {
                    // As INSTALL, key by key: only what is newer goes in.
                    let newer: Vec<&tern_wire::export::ExportedKey> = keys
                        .iter()
                        .filter(|copied| {
                            self.store
                                .latest(&copied.key)
                                .is_none_or(|current| current.version < copied.version)
                        })
                        .collect();
                    if newer.is_empty() {
                        decided(Effect::None, Status::Ok, 0)
                    } else {
                        Decision {
                            value: Some(tern_wire::export::encode_keys(newer)),
                            ..decided(Effect::InstallKeys, Status::Ok, 0)
                        }
                    }
                }
                Err(_) => decided(Effect::None, Status::Malformed, 0),
            },
            Op::Multi => self.decide_multi(message, new_version, now_ms),
            Op::Prepare | Op::Acquire => self.decide_prepare(message, new_version, now_ms),
            Op::Commit | Op::Abort | Op::Resolve => self.decide_finish(message, new_version),
            Op::Rebase => decided(Effect::Rebase, Status::Ok, header.version()),
            // Not known here yet (the dedup check above found none).
            Op::InstallOutcome if message.value.len() == 4 => {
                decided(Effect::Outcome, header.status(), header.version())
            }
            Op::InstallOutcome => decided(Effect::None, Status::Malformed, 0),
            Op::DropSlots => {
                let [start, end] = header.slot_range();
                if start < end && end <= tern_wire::SLOT_COUNT {
                    decided(Effect::DropSlots, Status::Ok, header.version())
                } else {
                    decided(Effect::None, Status::Malformed, 0)
                }
            }
            other => unreachable!("{other:?} is not a client write"),
        };
        decision.old_expired = old_expired;
        if op == Op::Expire
            && asked.is_some_and(|asked| asked.has(expiry::REAP))
            && decision.effect == Effect::Delete
        {
            self.counters.reaped += 1;
        }
        decision
    }

    /// The head's decision for a one-shot transaction (`tern_wire::multi`):
    /// refused LOCKED when a transaction across shards holds a key it
    /// reads (exclusively) or writes; else `decide_items`, all writes at
    /// `new_version`.
    fn decide_multi(&mut self, message: &Message<'_>, new_version: u64, now_ms: u64) -> Decision {
        let decided = Decision::of;
        let items = match multi::decode_items(message.value) {
            // The answers are the reply's value: no write option applies.
            Ok(items)
                if items[0].key == message.key
                    && message.header.flags & flags::WRITE_OPTIONS == 0 =>
            {
                items
            }
            _ => return decided(Effect::None, Status::Malformed, 0),
        };
        if !self.txns.no_locks()
            && items.iter().any(|item| {
                let wanted = txn::mode::of(item.kind, item.flags);
                self.txns.conflicts(None, wanted, item.key)
            })
        {
            self.counters.locked += 1;
            return decided(Effect::None, Status::Locked, 0);
        }
        match self.decide_items(&items, now_ms) {
            Ok(decision) if decision.encoded_len() > VALUE_LEN_MAX => {
                // The record travels in one datagram: a transaction of
                // large values (or answers) is refused whole.
                decided(Effect::None, Status::TooLarge, 0)
            }
            Ok(decision) => Decision {
                value: Some(decision.encode()),
                ..decided(Effect::Multi, Status::Ok, new_version)
            },
            Err((status, version)) => decided(Effect::None, status, version),
        }
    }

    /// The head's decision for a PREPARE or an ACQUIRE (`tern_wire::txn`).
    /// A PREPARE once per transaction (a second is answered with where it
    /// stands): its keys locked (with those its ACQUIREs took) unless
    /// another transaction holds one (LOCKED), its CHECKs and items decided
    /// as a one-shot transaction's. An ACQUIRE adds its keys' locks to
    /// those the transaction holds here and reads them, refused LOCKED the
    /// same way (no-wait). Every refusal is an abort tombstone, this
    /// shard's no for good, which releases what the transaction held.
    fn decide_prepare(&mut self, message: &Message<'_>, new_version: u64, now_ms: u64) -> Decision {
        let decided = Decision::of;
        let acquire = message.header.op() == Op::Acquire;
        let prepare = match txn::Prepare::decode(message.value) {
            Ok(prepare)
                if prepare.items[0].key == message.key
                    && message.header.flags & flags::WRITE_OPTIONS == 0
                    && (!acquire
                        || prepare
                            .items
                            .iter()
                            .all(|item| item.kind == multi::kind::GET)) =>
            {
                prepare
            }
            _ => return decided(Effect::None, Status::Malformed, 0),
        };
        let id = prepare.id;
        let asked = prepare.locks();
        match self.txns.standing(id) {
            Standing::Unknown | Standing::Acquired => {}
            // Prepared here before (a copy of its PREPARE beyond dedup):
            // still yes; the answers went with the first.
            Standing::Prepared if !acquire && self.txns.prepared_with(id, &asked) => {
                return decided(Effect::None, Status::Ok, 0);
            }
            // Another PREPARE of the same transaction here (its client
            // planned it twice), or an ACQUIRE after its PREPARE: refused,
            // the first stands.
            Standing::Prepared => return decided(Effect::None, Status::Malformed, 0),
            Standing::Committed => {
                let version = self.txns.committed_at(id);
                return decided(Effect::None, Status::TxnCommitted, version);
            }
            Standing::Aborted => return decided(Effect::None, Status::TxnAborted, 0),
        }
        let no = |status: Status, version: u64| Decision {
            value: Some(id.encode().to_vec()),
            ..decided(Effect::Abort, status, version)
        };
        if asked
            .iter()
            .any(|(wanted, key)| self.txns.conflicts(Some(id), *wanted, key))
        {
            self.counters.locked += 1;
            self.counters.txn_refused += 1;
            return no(Status::Locked, 0);
        }
        // Every lock it holds here from now on: those taken before, each
        // made exclusive where this one wants it so, then the new ones.
        let mut locks: Vec<(u8, &[u8])> = self.txns.locks_of(id).collect();
        for (wanted, key) in asked {
            txn::add_lock(&mut locks, wanted, key);
        }
        let locks: Vec<txn::Lock> = locks
            .into_iter()
            .map(|(mode, key)| txn::Lock {
                mode,
                key: key.to_vec(),
            })
            .collect();
        if locks.len() > multi::ITEMS_MAX {
            self.counters.txn_refused += 1;
            return no(Status::TooLarge, 0);
        }
        let decision = match self.decide_items(&prepare.items, now_ms) {
            Ok(decision) => decision,
            Err((status, version)) => {
                self.counters.txn_refused += 1;
                return no(status, version);
            }
        };
        let record = txn::PrepareRecord {
            id,
            lease_ms: prepare.lease_ms,
            participants: prepare.participants,
            acquired: acquire,
            locks,
            decided: decision,
        };
        if record.encoded_len() > VALUE_LEN_MAX {
            self.counters.txn_refused += 1;
            return no(Status::TooLarge, 0);
        }
        let effect = match acquire {
            true => {
                self.counters.txn_acquired += 1;
                Effect::Acquire
            }
            false => {
                self.counters.txn_prepared += 1;
                Effect::Prepare
            }
        };
        Decision {
            value: Some(record.encode()),
            ..decided(effect, Status::Ok, new_version)
        }
    }

    /// The head's decision for a COMMIT, ABORT or RESOLVE: each moves a
    /// transaction only forward (prepared to committed or aborted, unknown
    /// to aborted), and answers where it stands.
    fn decide_finish(&mut self, message: &Message<'_>, new_version: u64) -> Decision {
        let decided = Decision::of;
        let op = message.header.op();
        let Ok(id) = txn::TxnId::decode(message.value) else {
            return decided(Effect::None, Status::Malformed, 0);
        };
        if !message.key.is_empty() || message.header.flags & flags::WRITE_OPTIONS != 0 {
            return decided(Effect::None, Status::Malformed, 0);
        }
        let abort = |status| Decision {
            value: Some(id.encode().to_vec()),
            ..decided(Effect::Abort, status, new_version)
        };
        match (op, self.txns.standing(id)) {
            (Op::Commit, Standing::Prepared) => {
                let decided_writes = self.txns.decided(id).expect("prepared").clone();
                let record = txn::CommitRecord {
                    id,
                    decided: multi::Decided {
                        writes: decided_writes.writes,
                        answers: Vec::new(),
                    },
                };
                Decision {
                    value: Some(record.encode()),
                    ..decided(Effect::Commit, Status::Ok, new_version)
                }
            }
            // Committed before: answered with its version here.
            (Op::Commit, Standing::Committed) => {
                decided(Effect::None, Status::Ok, self.txns.committed_at(id))
            }
            (Op::Commit, Standing::Aborted) => decided(Effect::None, Status::TxnAborted, 0),
            (Op::Commit, Standing::Unknown) => decided(Effect::None, Status::TxnUnknown, 0),
            // Only locked, never prepared: nothing here to commit (its
            // client must PREPARE every shard it locked).
            (Op::Commit, Standing::Acquired) => decided(Effect::None, Status::Malformed, 0),
            (Op::Abort, Standing::Prepared | Standing::Acquired | Standing::Unknown) => {
                abort(Status::Ok)
            }
            (Op::Abort, Standing::Aborted) => decided(Effect::None, Status::Ok, 0),
            (_, Standing::Committed) => decided(
                Effect::None,
                Status::TxnCommitted,
                self.txns.committed_at(id),
            ),
            (_, Standing::Prepared) => decided(Effect::None, Status::TxnPrepared, 0),
            (_, Standing::Aborted) => decided(Effect::None, Status::TxnAborted, 0),
            // RESOLVE: a shard that did not prepare votes no for good.
            (_, Standing::Unknown | Standing::Acquired) => abort(Status::TxnAborted),
        }
    }

    /// A transaction's items decided against the store (`tern_wire::multi`):
    /// CHECK items against the state before it (CAS_MISMATCH with the
    /// version found when one fails), then every item in order, each
    /// seeing the writes before it.
    fn decide_items(
        &self,
        items: &[multi::Item<'_>],
        now_ms: u64,
    ) -> Result<multi::Decided, (Status, u64)> {
        use multi::{Answer, item_flags, kind};
        let live = |key: &[u8]| self.store.latest(key).filter(|found| found.live_at(now_ms));
        for item in items.iter().filter(|item| item.kind == kind::CHECK) {
            let found = live(item.key).map_or(0, |found| found.version);
            if found != item.version {
                return Err((Status::CasMismatch, found));
            }
        }
        // Each written key's state so far: value (None: deleted), deadline.
        let mut written: Vec<Pending<'_>> = Vec::new();
        let view = |written: &[Pending<'_>], key: &[u8]| match written
            .iter()
            .find(|(known, _, _)| *known == key)
        {
            Some((_, value, deadline_ms)) => value.clone().map(|value| (value, *deadline_ms)),
            None => live(key).map(|found| (found.value.to_vec(), found.deadline_ms)),
        };
        fn set<'k>(
            written: &mut Vec<Pending<'k>>,
            key: &'k [u8],
            value: Option<Vec<u8>>,
            deadline_ms: u64,
        ) {
            match written.iter_mut().find(|(known, _, _)| *known == key) {
                Some(entry) => *entry = (key, value, deadline_ms),
                None => written.push((key, value, deadline_ms)),
            }
        }
        let limit = self.values.limit();
        let parse = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<i64>().ok();
        let mut answers = Vec::with_capacity(items.len());
        for item in items {
            let before = view(&written, item.key);
            let answer = match item.kind {
                kind::CHECK => Answer::status(Status::Ok),
                kind::GET => Answer {
                    value: before.map(|(value, _)| value),
                    // The version read, unless an earlier item wrote it.
                    number: match written.iter().any(|(known, _, _)| *known == item.key) {
                        true => 0,
                        false => live(item.key).map_or(0, |found| found.version),
                    },
                    ..Answer::status(Status::Ok)
                },
                kind::PUT if item.flags & item_flags::IF_EXISTS != 0 && before.is_none() => {
                    Answer::status(Status::NotFound)
                }
                kind::PUT if item.flags & item_flags::IF_ABSENT != 0 && before.is_some() => {
                    Answer::status(Status::CasMismatch)
                }
                kind::PUT => {
                    set(&mut written, item.key, Some(item.value.to_vec()), 0);
                    Answer::status(Status::Ok)
                }
                kind::DELETE if before.is_some() => {
                    set(&mut written, item.key, None, 0);
                    Answer::status(Status::Ok)
                }
                kind::DELETE => Answer::status(Status::NotFound),
                kind::INCR_BY => {
                    let (value, deadline_ms) = before.unwrap_or_else(|| (b"0".to_vec(), 0));
                    match (parse(&value), parse(item.value)) {
                        (Some(value), Some(delta)) if value.checked_add(delta).is_some() => {
                            let sum = (value + delta).to_string().into_bytes();
                            set(&mut written, item.key, Some(sum.clone()), deadline_ms);
                            Answer {
                                value: Some(sum),
                                ..Answer::status(Status::Ok)
                            }
                        }
                        _ => Answer::status(Status::NotInteger),
                    }
                }
                kind::APPEND => {
                    let (mut value, deadline_ms) = before.unwrap_or_default();
                    value.extend_from_slice(item.value);
                    if value.len() > limit {
                        Answer::status(Status::TooLarge)
                    } else {
                        let number = value.len() as u64;
                        set(&mut written, item.key, Some(value), deadline_ms);
                        Answer {
                            number,
                            ..Answer::status(Status::Ok)
                        }
                    }
                }
                other => unreachable!("item kind {other} passed decode_items"),
            };
            answers.push(answer);
        }
        let writes = written
            .into_iter()
            // A key that was never stored and ends deleted needs no write.
            .filter(|(key, value, _)| value.is_some() || self.store.latest(key).is_some())
            .map(|(key, value, deadline_ms)| multi::Written {
                key: key.to_vec(),
                value,
                deadline_ms,
            })
            .collect();
        Ok(multi::Decided { writes, answers })
    }

    fn remember_outcome(&mut self, client_id: u64, seq: u64, outcome: Outcome) {
        if self.outcomes.len() >= DEDUP_CLIENTS_MAX && !self.outcomes.contains_key(&client_id) {
            self.forget_idle_clients();
        }
        let client = self.outcomes.entry(client_id).or_default();
        client.last_seq = seq;
        if client
            .recent
            .iter()
            .any(|known| known.request_id == outcome.request_id)
        {
            return;
        }
        if matches!(
            outcome.status,
            Status::Forgotten | Status::Malformed | Status::ValueMissing | Status::Locked
        ) {
            // Nothing to answer a later copy with but the same refusal,
            // which it gets again: keep the room for real outcomes (a
            // malformed INSTALL_OUTCOME must not stand for its client's).
            // A write refused LOCKED changed nothing: asked again, it is
            // decided afresh, and finds the key free once the transaction
            // holding it is settled.
            return;
        }
        if client.forgot(outcome.request_id) {
            // Older than all it would displace (an installed outcome).
            return;
        }
        if client.recent.len() == DEDUP_PER_CLIENT_MAX
            && let Some(lowest) =
                (0..client.recent.len()).min_by_key(|&index| client.recent[index].request_id)
        {
            client.recent.remove(lowest);
        }
        client.recent.push_back(outcome);
    }

    /// Forgets the half of the clients that wrote least recently. Runs once
    /// per DEDUP_CLIENTS_MAX / 2 new clients, so its cost is amortized.
    fn forget_idle_clients(&mut self) {
        let mut last_seqs: Vec<u64> = self
            .outcomes
            .values()
            .map(|client| client.last_seq)
            .collect();
        let middle = last_seqs.len() / 2;
        let (_, median, _) = last_seqs.select_nth_unstable(middle);
        let median = *median;
        self.outcomes.retain(|_, client| client.last_seq > median);
    }

    fn log_sent(&mut self, seq: u64, bytes: &[u8]) {
        debug_assert_eq!(seq, self.sent_log_first_seq + self.sent_log.len() as u64);
        let mut buffer = if self.sent_log.len() == SENT_LOG_MAX {
            self.sent_log_first_seq += 1;
            self.sent_log.pop_front().expect("log is full")
        } else {
            Vec::new()
        };
        buffer.clear();
        buffer.extend_from_slice(bytes);
        self.sent_log.push_back(buffer);
    }

    /// Resends what this replica sent downstream for `first..=last`:
    /// onward (to its successors, and as acknowledgements when it
    /// acknowledges), or as records to one replica that asked.
    fn resend_range(&mut self, first: u64, last: u64, resend: Resend, outbox: &mut Outbox) {
        let acknowledge = resend == Resend::Onward && self.config.acknowledges();
        if acknowledge && first < self.sent_log_first_seq {
            // Applied here with no record left to send (they came with a
            // snapshot, or left the bounded log). The tail has them, so they
            // are committed: a bare acknowledgement, with no client to
            // answer, lets the coordinator finish them (their window places
            // and dirty counts would otherwise stay taken for good). Their
            // clients, unanswered, retry and are answered from dedup.
            let bare_last = last
                .min(self.sent_log_first_seq - 1)
                .min(self.store.applied_seq())
                .min(first.saturating_add(RETRANSMIT_BATCH_MAX - 1));
            for seq in first..=bare_last {
                let mut ack = Header::new(Op::Ack, self.config.shard, self.config.epoch);
                ack.seq.set(seq);
                ack.commit_seq.set(self.store.commit_seq());
                ack.key_hash.set(tern_wire::key_hash(b""));
                self.counters.resent += 1;
                outbox.push(self.config.coordinator, &ack, &[], &[]);
            }
        }
        let first = first.max(self.sent_log_first_seq);
        let last = last
            .min(self.store.applied_seq())
            .min(first.saturating_add(RETRANSMIT_BATCH_MAX - 1));
        let asked;
        let to = match resend {
            Resend::Onward => self.config.successors(),
            Resend::To(replica) => {
                asked = [replica];
                &asked[..]
            }
        };
        for seq in first..=last {
            let index = (seq - self.sent_log_first_seq) as usize;
            let Some(bytes) = self.sent_log.get(index) else {
                continue;
            };
            self.counters.resent += 1;
            let record = Message::decode(bytes).expect("logged datagrams were encoded here");
            let current = record.header.epoch.get() == self.config.epoch;
            // Logged under another epoch: the record again under the
            // current one, whole (its deadline too).
            let mut header = record.header;
            header.epoch.set(self.config.epoch);
            header.commit_seq.set(self.store.commit_seq());
            for &to in to {
                if current {
                    outbox.push_encoded(to, bytes);
                } else {
                    outbox.push_with(to, &header, &record.extensions, record.key, record.value);
                }
            }
            if !acknowledge {
                continue;
            }
            // The values before and after this write are still kept: it is
            // not committed yet (the coordinator resends only those).
            let hide_old = answer_hidden(&header, false);
            let hide_new = answer_hidden(&header, true);
            header.op = Op::Ack as u8;
            header.flags &= flags::WRITE_OPTIONS;
            let answer = if header.has_flag(flags::RETURN_OLD) {
                Some(
                    self.store
                        .read_at(record.key, seq - 1)
                        .filter(|_| !hide_old),
                )
            } else if header.has_flag(flags::RETURN_NEW) && header.status() == Status::Ok {
                Some(self.store.read_at(record.key, seq).filter(|_| !hide_new))
            } else {
                None
            };
            if matches!(answer, Some(None)) {
                header.flags |= flags::ANSWER_ABSENT;
            }
            let value = answer.flatten().map(|found| found.value.to_vec());
            let value = value.as_deref().unwrap_or_default();
            let coordinator = self.config.coordinator;
            if self.push_answer(coordinator, &header, Extensions::default(), value, outbox) {
                self.counters.large_answers += 1;
            }
        }
    }

    /// Learns that the coordinator committed up to `commit_seq`; under
    /// fan-out, settles the transactions' writes that covers.
    fn observe_commit(&mut self, commit_seq: u64) {
        self.store.observe_commit(commit_seq);
        if !self.txn_writes.is_empty() {
            self.settle_txn_writes();
        }
    }

    /// Fan-out: a transaction's writes here, once committed, lose the
    /// versions before them, so that a read stamped below the COMMIT (sent
    /// before it completed, arriving late) gets the committed value, never
    /// the one before it, which another shard may already have replaced.
    /// (In a chain such reads go to the tail, which has the lock or the
    /// write.)
    fn settle_txn_writes(&mut self) {
        let commit_seq = self.store.commit_seq();
        let store = &mut self.store;
        self.txn_writes.retain(|key, &mut committed_at| {
            if committed_at > commit_seq {
                return true;
            }
            store.prune_key(key);
            false
        });
    }

    /// A record a leaf sent this syncing fan-out head: applied as decided
    /// (and passed on to the other leaves, and acknowledged), in order.
    fn receive_synced(
        &mut self,
        now: Time,
        message: &Message<'_>,
        bytes: &[u8],
        outbox: &mut Outbox,
    ) {
        if message.header.seq.get() <= self.store.applied_seq() {
            self.counters.duplicates += 1;
            return;
        }
        self.counters.fanout_synced_records += 1;
        self.receive_sequenced(now, message, bytes, outbox);
        self.finish_sync();
    }

    /// Ends a fan-out head's sync once it holds what every leaf holds.
    fn finish_sync(&mut self) {
        let applied = self.store.applied_seq();
        if self.syncing.as_ref().is_some_and(|sync| sync.done(applied)) {
            self.syncing = None;
            // What the leaves lack goes to them on the next tick.
            self.downstream_changed = true;
        }
    }

    /// A syncing fan-out head asks the leaves that have not reported, or
    /// hold more than it, for their progress and records, at most every
    /// GAP_REQUEST_INTERVAL.
    fn ask_leaves(&mut self, now: Time, outbox: &mut Outbox) {
        self.finish_sync();
        let Some(sync) = &self.syncing else {
            return;
        };
        if self
            .last_gap_request
            .is_some_and(|previous| now.since(previous) < GAP_REQUEST_INTERVAL)
        {
            return;
        }
        self.last_gap_request = Some(now);
        let applied = self.store.applied_seq();
        let mut request = Header::new(Op::Retransmit, self.config.shard, self.config.epoch);
        request.seq.set(applied + 1);
        request.set_retransmit_last(u64::MAX);
        for leaf in sync.to_ask(applied) {
            self.counters.gap_requests += 1;
            outbox.push(leaf, &request, &[], &[]);
        }
    }

    fn request_gap(&mut self, now: Time, outbox: &mut Outbox) {
        let Some(first_held) = self.holdback.keys().next() else {
            return;
        };
        self.request_up_to(now, first_held - 1, outbox);
    }

    /// Asks the predecessor for everything after what is applied here, up
    /// to `last`, at most every GAP_REQUEST_INTERVAL.
    fn request_up_to(&mut self, now: Time, last: u64, outbox: &mut Outbox) {
        if self
            .last_gap_request
            .is_some_and(|previous| now.since(previous) < GAP_REQUEST_INTERVAL)
        {
            return;
        }
        self.last_gap_request = Some(now);
        self.counters.gap_requests += 1;
        let mut request = Header::new(Op::Retransmit, self.config.shard, self.config.epoch);
        request.seq.set(self.store.applied_seq() + 1);
        request.set_retransmit_last(last);
        outbox.push(self.config.predecessor(), &request, &[], &[]);
    }

    /// Asks the coordinator to sequence the delete of expired keys: an
    /// EXPIRE with `expiry::REAP` for each, sent as a client would (a key
    /// written again meanwhile is left alone when its turn comes).
    fn reap(&mut self, now: Time, outbox: &mut Outbox) {
        let unix_ms = self.unix_ms();
        let chosen = self
            .reaper
            .choose(now, unix_ms, self.store.expired_at(unix_ms));
        let reap = Extensions {
            expiry: Some(Expiry {
                deadline_ms: 0,
                mode: expiry::REAP,
            }),
            ..Extensions::default()
        };
        for (request_id, key) in chosen {
            let mut request = Header::new(Op::Expire, self.config.shard, self.config.epoch);
            request.key_hash.set(tern_wire::key_hash(&key));
            request.client_id.set(self.reaper.client_id());
            request.request_id.set(request_id);
            outbox.push_with(self.config.coordinator, &request, &reap, &key, &[]);
            self.counters.reap_requests += 1;
        }
    }

    fn answer_status(
        &self,
        to: SocketAddrV4,
        received: &Header,
        status: Status,
        outbox: &mut Outbox,
    ) {
        crate::answer_status(
            to,
            received,
            status,
            self.config.epoch,
            self.map_version,
            outbox,
        );
    }

    fn answer_ping(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let mut reply = Header::new(Op::Reply, self.config.shard, self.config.epoch);
        reply.request_id = received.request_id;
        reply.client_id = received.client_id;
        reply.seq.set(self.store.applied_seq());
        reply.commit_seq.set(self.store.commit_seq());
        reply.set_highest_seen(self.highest_seen);
        outbox.push(to, &reply, &[], self.config.role_name().as_bytes());
    }

    fn answer_seq_probe(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let mut report = Header::new(Op::SeqReport, self.config.shard, self.config.epoch);
        report.request_id = received.request_id;
        report.seq.set(self.store.applied_seq());
        report.commit_seq.set(self.store.commit_seq());
        report.set_highest_seen(self.highest_seen.max(self.store.applied_seq()));
        let pending = self.txns.pending() as u64;
        outbox.push(to, &report, &[], &pending.to_le_bytes());
        if self.config.is_head() {
            // What a coordinator starting afresh holds again before it
            // sequences (its holds were in the memory of the one before).
            let mut report = Header::new(Op::TxnReport, self.config.shard, self.config.epoch);
            report.request_id = received.request_id;
            for record in self.txns.prepared() {
                outbox.push(to, &report, &[], &record.encode());
            }
        }
    }

    /// Counters as `name value` lines.
    /// The replica's counters and gauges.
    pub fn samples(&self) -> crate::metrics::Samples {
        use crate::metrics::{Group, Samples};
        let mut samples = Samples::new();
        self.counters.samples(Group::Plain, None, &mut samples);
        self.drops.samples(Group::Dropped, None, &mut samples);
        for (name, value) in [
            ("applied_seq", self.store.applied_seq()),
            ("commit_seq", self.store.commit_seq()),
            ("live_keys", self.store.live_keys() as u64),
            ("expiring_keys", self.store.expiring_keys() as u64),
            ("held_back_now", self.holdback.len() as u64),
            ("large_values_bytes", self.values.used() as u64),
            ("txn_pending", self.txns.pending() as u64),
            ("txn_locked_keys", self.txns.locked_keys() as u64),
        ] {
            samples.gauge(name, value);
        }
        samples
    }

    /// [`Replica::samples`] as STATS text.
    pub fn render_stats(&self) -> String {
        self.samples().text()
    }

    fn answer_stats(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let reply = Header::new(Op::Reply, self.config.shard, self.config.epoch);
        crate::answer_stats_page(to, received, reply, &self.render_stats(), outbox);
    }
}

impl Core for Replica {
    /// Handles one received datagram.
    fn step(&mut self, now: Time, from: SocketAddrV4, bytes: &[u8], outbox: &mut Outbox) {
        self.now = now;
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(error) => return self.refuse(now, from, bytes, error, outbox),
        };
        let header = &message.header;
        match header.op() {
            Op::Ping => return self.answer_ping(from, header, outbox),
            Op::Stats => return self.answer_stats(from, header, outbox),
            Op::Reply => {
                // The answer to one of this head's reap requests, whatever
                // its epoch; any other reply is nobody's business here.
                if header.client_id.get() != self.reaper.client_id()
                    || !self.reaper.answered(header.request_id.get())
                {
                    self.counters.unexpected_op += 1;
                }
                return;
            }
            _ => {}
        }
        if header.shard.get() != self.config.shard {
            self.counters.wrong_shard += 1;
            return self.answer_status(from, header, Status::WrongShard, outbox);
        }
        if header.epoch.get() != self.config.epoch {
            // DESIGN rule 7: an explicit refusal, so the sender refreshes its map.
            self.counters.stale_epoch += 1;
            return self.answer_status(from, header, Status::StaleEpoch, outbox);
        }
        if self.fenced {
            match header.op() {
                Op::Get => {
                    self.counters.fenced += 1;
                    return self.answer_status(from, header, Status::TryAgain, outbox);
                }
                Op::Retransmit => {}
                _ => {
                    self.counters.fenced += 1;
                    return;
                }
            }
        }
        let op = header.op();
        match op {
            Op::Get => self.serve_read(now, from, &message, outbox),
            // Sequenced writes (by op class) and gap fills, from the
            // coordinator to the head.
            _ if op.is_client_write() || op == Op::Noop => {
                if !self.config.is_head() || from != self.config.coordinator {
                    self.counters.unexpected_sender += 1;
                } else if self.syncing.is_some() {
                    // Decided only once the leaves' records are in; the
                    // coordinator resends it.
                    self.counters.fanout_writes_while_syncing += 1;
                } else {
                    self.receive_sequenced(now, &message, bytes, outbox);
                }
            }
            Op::Replicate => {
                if !self.config.is_head() && from == self.config.predecessor() {
                    self.receive_sequenced(now, &message, bytes, outbox);
                } else if self.syncing.is_some() && self.config.chain[1..].contains(&from) {
                    self.receive_synced(now, &message, bytes, outbox);
                } else {
                    self.counters.unexpected_sender += 1;
                }
            }
            Op::Retransmit => {
                let (first, last) = (header.seq.get(), header.retransmit_last());
                if self.config.successors().contains(&from) {
                    self.resend_range(first, last, Resend::To(from), outbox);
                } else if self.config.fanout
                    && !self.config.is_head()
                    && from == self.config.predecessor()
                {
                    // A new head's sync: how far this leaf got, and the
                    // records it lacks.
                    self.answer_seq_probe(from, header, outbox);
                    self.resend_range(first, last, Resend::To(from), outbox);
                } else {
                    self.counters.unexpected_sender += 1;
                }
            }
            Op::SeqReport => {
                let applied = header.seq.get();
                let reported = self
                    .syncing
                    .as_mut()
                    .is_some_and(|sync| sync.report(from, applied));
                if reported {
                    self.finish_sync();
                } else {
                    self.counters.unexpected_op += 1;
                }
            }
            Op::SeqProbe => self.answer_seq_probe(from, header, outbox),
            _ => self.counters.unexpected_op += 1,
        }
    }

    /// Drives timers: asks again for a gap whose resend did not arrive.
    fn tick(&mut self, now: Time, outbox: &mut Outbox) {
        self.now = now;
        if self.fenced || !self.config.is_head() {
            self.reaper.clear();
        } else {
            self.reap(now, outbox);
        }
        if self.fenced {
            return;
        }
        self.ask_leaves(now, outbox);
        if self.syncing.is_none() && std::mem::take(&mut self.downstream_changed) {
            // Everything the new downstream may lack: nothing committed is
            // missing anywhere in the chain.
            let applied = self.store.applied_seq();
            let mut first = self.store.commit_seq() + 1;
            while first <= applied {
                self.resend_range(first, applied, Resend::Onward, outbox);
                first += RETRANSMIT_BATCH_MAX;
            }
        }
        if std::mem::take(&mut self.catching_up) && !self.config.is_head() {
            let mut request = Header::new(Op::Retransmit, self.config.shard, self.config.epoch);
            request.seq.set(self.store.applied_seq() + 1);
            request.set_retransmit_last(u64::MAX);
            outbox.push(self.config.predecessor(), &request, &[], &[]);
        }
        if !self.holdback.is_empty() {
            // A value fetched since may let the next record apply.
            self.apply_held(outbox);
            self.request_gap(now, outbox);
        }
        self.values
            .trim(now, self.store.commit_seq(), self.sent_log_first_seq);
    }
}

/// The extensions of a decided record: its value's deadline, and, for a
/// value too large for a datagram, its length and checksum (the value
/// then travels out of band).
fn record_extensions(deadline_ms: u64, value: &[u8]) -> Extensions {
    let nowhere = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
    Extensions {
        large: (value.len() > VALUE_LEN_MAX).then(|| Large::of(value, nowhere)),
        ..Extensions::deadline(deadline_ms)
    }
}

/// Whether the commit point answers a write of this effect before the
/// tail (early commit): every write but a transaction's phases, whose
/// holds the coordinator changes at the tail's acknowledgement.
fn answered_early(effect: Effect) -> bool {
    !matches!(
        effect,
        Effect::Prepare | Effect::Acquire | Effect::Commit | Effect::Abort
    )
}

/// Whether the tail answers a decided write's value before it (`after`
/// false: RETURN_OLD) or after it (RETURN_NEW) as none although its store
/// holds one: the head found that value expired (`flags::OLD_EXPIRED`), and
/// the value after is that same value when the write changed nothing.
fn answer_hidden(record: &Header, after: bool) -> bool {
    record.has_flag(flags::OLD_EXPIRED) && (!after || record.effect() == Effect::None)
}

/// The head's decision for an EXPIRE: a new deadline for a live key (its
/// value written again under a new version, so that a read at an older
/// stamp still sees the older deadline), its deletion, or, with
/// `expiry::REAP`, the deletion of a key that has expired.
fn expire_decision(
    asked: Option<Expiry>,
    stored: Option<tern_store::Versioned<'_>>,
    current: Option<tern_store::Versioned<'_>>,
    now_ms: u64,
    new_version: u64,
) -> Decision {
    let decided = Decision::of;
    let Some(asked) = asked else {
        return decided(Effect::None, Status::Malformed, 0);
    };
    if asked.has(expiry::REAP) {
        if asked.mode != expiry::REAP {
            return decided(Effect::None, Status::Malformed, 0);
        }
        return match (stored, current) {
            (Some(_), None) => decided(Effect::Delete, Status::Ok, new_version),
            // Written again since it was found due, or gone already.
            _ => decided(Effect::None, Status::NotFound, 0),
        };
    }
    let Some(found) = current else {
        return decided(Effect::None, Status::NotFound, 0);
    };
    match expiring::decide_expire(asked, found.deadline_ms, now_ms) {
        ExpireOutcome::Set(deadline_ms) => Decision {
            value: Some(found.value.to_vec()),
            deadline_ms,
            ..decided(Effect::Put, Status::Ok, new_version)
        },
        ExpireOutcome::Delete => decided(Effect::Delete, Status::Ok, new_version),
        ExpireOutcome::Unchanged => decided(Effect::None, Status::CasMismatch, found.version),
        ExpireOutcome::Malformed => decided(Effect::None, Status::Malformed, 0),
    }
}

/// A transaction's decided writes, applied at `seq` (a MULTI's, a COMMIT's).
fn apply_writes(store: &mut Store, seq: u64, writes: &[multi::Written]) {
    store.apply_all(
        seq,
        writes.iter().map(|written| {
            let write = match &written.value {
                Some(value) => Write::Put(value),
                None => Write::Delete,
            };
            (&written.key[..], write, written.deadline_ms)
        }),
    );
}
