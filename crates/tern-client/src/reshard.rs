//! Moving a slot range from one shard to another while both serve: the
//! migration behind `tern reshard`.
//!
//! Meta holds the authority (the migration's record and every group handed
//! off); this driver does the work, group by group (the [`Step`]s):
//! 1. the destination forgets whatever an earlier try left of the group
//!    (DROP_SLOTS; it does not serve the group yet);
//! 2. the source's tail exports the group (keys with their versions, dedup
//!    outcomes, a version floor) over its state-transfer connection and
//!    the destination installs it (INSTALL_KEYS, INSTALL_OUTCOME), while
//!    the group serves;
//! 3. the source coordinator holds the group's writes (FREEZE WRITES) and
//!    says when none is in flight; reads go on;
//! 4. the tail exports what changed since the first copy (keys at or above
//!    its floor in full, the rest by name), and the destination installs
//!    it, forgets copied keys deleted since (UNINSTALL) and lifts its
//!    version floor above the source's (REBASE);
//! 5. the source holds the group's reads too, and meta records the
//!    hand-off, fenced by the source's epoch as the hold saw it (a
//!    coordinator that changed since may have let the hold go: the group
//!    starts again);
//! 6. the source is told (FREEZE MOVED) and answers WRONG_SHARD for the
//!    group at once; its hold stays until it runs out, so that a source
//!    that has not seen the new map never serves the group again beside
//!    the destination (or it has lost its lease, shorter than the hold).
//!
//! When every group is handed off the source forgets the range
//! (DROP_SLOTS), then meta completes the migration. A write waits
//! (TRY_AGAIN, retried by the client) only while its group is held; a read
//! from step 5 until the clients have the new map. Every step can be
//! repeated: a driver that stops is run again on the same slots and goes on
//! from the groups meta has not recorded.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use tern_control::meta::{Change, MetaClient, MetaMap, Refusal, Reply, Request};
use tern_control::transfer::{self, TransferRequest};
use tern_control::{ClientId, Epoch, Migration, Seq, ShardId, ShardMap, SlotRange};
use tern_wire::export::{self, Export, ExportedKey};
use tern_wire::load::SlotLoad;

pub use crate::plan::Move;
use crate::plan::{self, plan_by_load, plan_even};
use tern_wire::{
    Extensions, Header, MESSAGE_LEN_MAX, Message, Op, Status, VALUE_LEN_MAX, encode_append_with,
    freeze, key_hash,
};
use thiserror::Error;

/// Installs in flight at once.
const INSTALL_WINDOW: usize = 128;
/// The pause before asking meta again when no leader answered.
const META_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How a reshard runs.
#[derive(Clone, Copy, Debug)]
pub struct ReshardOptions {
    /// Slots per group: the unit held still and handed off at once.
    pub group_slots: u32,
    /// How long one hold lasts unless renewed (the driver renews it).
    pub hold: Duration,
    /// How long one step may keep failing before the reshard gives up.
    pub step_deadline: Duration,
    /// Copy each group while it serves and hold its writes only for what
    /// changed since (true), or hold them for the whole copy (false: the
    /// stop-and-copy baseline of `tern bench migrate`).
    pub copy_first: bool,
    /// At most this many keys moved per second, on average over the
    /// migration (None or 0: as fast as it goes; the default is
    /// [`DEFAULT_MAX_KEYS_PER_S`]). Copying takes the same CPU and network
    /// as the workload; a limit leaves it more of both, and the migration
    /// takes longer.
    pub max_keys_per_s: Option<u64>,
    /// Stop once, for a while, after a step of the first group (fault
    /// drills: a test or an operator crashes a participant there and
    /// watches the migration recover).
    pub pause: Option<Pause>,
}

/// The steps of moving one group, in order (`Dropped` once, after the
/// last group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// The destination forgot whatever an earlier try left of the group.
    Cleared,
    /// The first copy is installed at the destination; the group serves.
    Copied,
    /// The source holds the group's writes and none is in flight.
    WritesHeld,
    /// What changed since the first copy is installed at the destination.
    ChangesInstalled,
    /// The source holds the group's reads too.
    ReadsHeld,
    /// Meta recorded the hand-off.
    HandedOff,
    /// Every group is handed off and the source forgot the range; meta
    /// has not completed the migration yet.
    Dropped,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Cleared,
        Step::Copied,
        Step::WritesHeld,
        Step::ChangesInstalled,
        Step::ReadsHeld,
        Step::HandedOff,
        Step::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Cleared => "cleared",
            Step::Copied => "copied",
            Step::WritesHeld => "writes-held",
            Step::ChangesInstalled => "changes-installed",
            Step::ReadsHeld => "reads-held",
            Step::HandedOff => "handed-off",
            Step::Dropped => "dropped",
        }
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    fn from_str(text: &str) -> Result<Step, String> {
        Step::ALL
            .into_iter()
            .find(|step| step.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Step::ALL.iter().map(|step| step.name()).collect();
                format!("{text:?} is not a step ({})", names.join(", "))
            })
    }
}

/// A pause of the migration after `after`, for `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause {
    pub after: Step,
    pub duration: Duration,
}

/// What the driver writes on standard error when it pauses, followed by
/// the step's name: the line a fault drill waits for.
pub const PAUSED: &str = "reshard paused after ";

/// Slots per group unless asked otherwise. Each group costs a hand-off (two
/// exports, three holds, a meta commit, a new map for every client and
/// process) whatever its size; with groups of 64 slots a migration's cost
/// to the workload is mostly the copy itself (`docs/BENCHMARKS.md`), and a
/// hold covers what changed in 64 slots during one group's copy.
pub const DEFAULT_GROUP_SLOTS: u32 = 64;

/// Keys moved per second unless asked otherwise: a migration shares the
/// machines with the workload, and on the reference machine (2 cores for
/// the workload, the cluster and the driver) this rate keeps the
/// workload's throughput within a few percent of what it was
/// (`docs/BENCHMARKS.md`); as fast as it goes, the copy took a third of
/// it. `tern reshard --max-keys-per-s 0` lifts the limit.
pub const DEFAULT_MAX_KEYS_PER_S: u64 = 5_000;

impl Default for ReshardOptions {
    fn default() -> Self {
        ReshardOptions {
            group_slots: DEFAULT_GROUP_SLOTS,
            hold: Duration::from_secs(5),
            step_deadline: Duration::from_secs(30),
            copy_first: true,
            max_keys_per_s: Some(DEFAULT_MAX_KEYS_PER_S),
            pause: None,
        }
    }
}

/// What a reshard did.
#[derive(Clone, Debug, Default)]
pub struct ReshardReport {
    pub migration: u64,
    pub groups: u32,
    pub keys: u64,
    pub outcomes: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// How long each group's writes were held, in hand-off order.
    pub holds: Vec<Duration>,
    /// Groups started again because the source changed under them.
    pub restarts: u32,
    /// Ownership-first only: slots pulled ahead of the order because a
    /// client asked for one of them.
    pub priority_pulls: u32,
    /// Where the time went, summed over groups: the first copy (export and
    /// install while the group serves), then, while its writes are held:
    /// until they drained, exporting and installing what changed since the
    /// first copy, and meta's hand-off (with the hold of the reads).
    pub copying: Duration,
    pub draining: Duration,
    pub exporting: Duration,
    pub installing: Duration,
    pub handing_off: Duration,
}

/// Where a migration's time went, per group on average (ms): see
/// [`ReshardReport`]'s fields of the same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct TimePerGroup {
    pub copying_ms: f64,
    pub draining_ms: f64,
    pub exporting_ms: f64,
    pub installing_ms: f64,
    pub handing_off_ms: f64,
}

impl ReshardReport {
    /// Where the time went, per group on average.
    pub fn time_per_group(&self) -> TimePerGroup {
        let per_group = |total: Duration| total.as_secs_f64() * 1e3 / f64::from(self.groups.max(1));
        TimePerGroup {
            copying_ms: per_group(self.copying),
            draining_ms: per_group(self.draining),
            exporting_ms: per_group(self.exporting),
            installing_ms: per_group(self.installing),
            handing_off_ms: per_group(self.handing_off),
        }
    }

    pub fn longest_hold(&self) -> Duration {
        self.holds.iter().copied().max().unwrap_or_default()
    }

    /// The 99th percentile of the holds.
    pub fn hold_p99(&self) -> Duration {
        let mut holds = self.holds.clone();
        holds.sort();
        holds
            .get((holds.len() * 99 / 100).min(holds.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// How a reshard went so far, for progress lines.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub migration: u64,
    pub groups_done: u32,
    pub groups: u32,
    pub keys: u64,
    pub elapsed: Duration,
    pub longest_hold: Duration,
}

#[derive(Debug, Error)]
pub enum ReshardError {
    #[error("meta refused: {0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{step} did not succeed within {deadline:?}: {last}")]
    Stuck {
        step: &'static str,
        deadline: Duration,
        last: String,
    },
    #[error("the migration's export from the source is damaged: {0}")]
    Export(#[from] tern_wire::export::ExportError),
}

/// Moves `slots` from shard `from` to shard `to` of the cluster whose meta
/// nodes are `nodes`; `progress` is called after every group.
pub fn reshard(
    nodes: &[SocketAddrV4],
    from: ShardId,
    to: ShardId,
    slots: SlotRange,
    options: ReshardOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ReshardReport, ReshardError> {
    let started = Instant::now();
    let mut driver = Driver::new(nodes, options)?;
    let migration = driver.begin(from, to, slots)?;
    let mut report = ReshardReport {
        migration: migration.id,
        groups: migration.group_count(),
        ..ReshardReport::default()
    };
    for group in 0..migration.group_count() {
        if !migration.handed_off.iter().any(|done| done.group == group) {
            driver.hand_off(&migration, group, &mut report)?;
            let last = group + 1 == migration.group_count();
            if let Some(rate) = options.max_keys_per_s.filter(|rate| *rate > 0 && !last) {
                let due = Duration::from_secs_f64(report.keys as f64 / rate as f64);
                std::thread::sleep(due.saturating_sub(started.elapsed()));
            }
        }
        progress(&Progress {
            migration: migration.id,
            groups_done: group + 1,
            groups: report.groups,
            keys: report.keys,
            elapsed: started.elapsed(),
            longest_hold: report.longest_hold(),
        });
    }
    // The source forgets the slots it no longer serves, before meta
    // completes the migration: a driver that stops in between is run again
    // on the same slots, finds the migration and drops them again.
    driver.drop_slots(from, slots, "dropping the moved slots at the source")?;
    driver.reached(Step::Dropped);
    driver.change(Change::CompleteMigration {
        migration: migration.id,
    })?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The ownership-first baseline's groups: few enough that the holds they
/// split by pulling slots ahead stay under `freeze::HOLDS_MAX`.
const PULL_GROUPS_MAX: u32 = 64;

/// The ownership-first baseline of `tern bench migrate`, after Rocksteady:
/// the destination takes the whole range over at once and holds each
/// group's requests (TRY_AGAIN) until a background pull, group after group
/// in slot order, has brought it in; a slot clients asked for meanwhile is
/// pulled ahead of the order (Rocksteady's priority pulls, by slot here:
/// the destination names the slots asked in its FREEZE answers,
/// `freeze::PULL`). Not for production use: a failure in the middle is not
/// taken again (the baseline stops with the error, its holds run out by
/// themselves).
pub fn reshard_ownership_first(
    nodes: &[SocketAddrV4],
    from: ShardId,
    to: ShardId,
    slots: SlotRange,
    options: ReshardOptions,
) -> Result<ReshardReport, ReshardError> {
    let started = Instant::now();
    let hold = Duration::from_millis(u64::from(freeze::HOLD_MAX_MS));
    let options = ReshardOptions {
        // One hold per group at the destination, all at once.
        group_slots: options
            .group_slots
            .max((slots[1] - slots[0]).div_ceil(PULL_GROUPS_MAX)),
        hold,
        ..options
    };
    let mut driver = Driver::new(nodes, options)?;
    let migration = driver.begin(from, to, slots)?;
    let groups: Vec<SlotRange> = (0..migration.group_count())
        .map(|group| migration.group_slots_of(group))
        .collect();
    let deadline = started + options.step_deadline;
    let stuck = |step| ReshardError::Stuck {
        step,
        deadline: options.step_deadline,
        last: "the source's tail did not answer".into(),
    };
    // The destination holds every group before it serves any, and keeps
    // the slots asked meanwhile.
    driver.drop_slots(to, slots, "clearing the range at the destination")?;
    for range in &groups {
        driver.freeze(to, *range, freeze::PULL)?;
    }
    // Ownership moves: the source stops serving the range, its dedup
    // outcomes and version floor go first, meta hands every group over.
    let held = Instant::now();
    let source = driver.freeze(from, slots, freeze::ALL)?;
    let (names, _) = driver
        .export(from, slots, u64::MAX, deadline)?
        .ok_or_else(|| stuck("taking the source's floor"))?;
    let first = Export {
        keys: Vec::new(),
        unchanged: Vec::new(),
        ..names
    };
    driver.install(to, &first, &[], Some(first.floor))?;
    let mut map_version = 0;
    for group in 0..migration.group_count() {
        let map = driver.change(Change::HandOff {
            migration: migration.id,
            group,
            floor: Seq(first.floor),
            source_epoch: Epoch(source.epoch),
            source_incarnation: source.incarnation,
        })?;
        map_version = map.version;
    }
    driver.announce_moved(from, slots, map_version);
    let mut report = ReshardReport {
        migration: migration.id,
        groups: migration.group_count(),
        outcomes: first.outcomes.len() as u64,
        ..ReshardReport::default()
    };
    report.handing_off = held.elapsed();
    // The pulls: first every slot a request waits for (Rocksteady's
    // priority pulls: each FREEZE answer names the slots asked since the
    // last), then the next group in slot order without the slots pulled
    // ahead; each is served once it is in.
    let mut waiting: std::collections::BTreeSet<u32> = (0..migration.group_count()).collect();
    let mut pulled_ahead: HashSet<u32> = HashSet::new();
    // Each slot pulled ahead out of a group's middle splits its hold.
    let splits_max = freeze::HOLDS_MAX as u32 - migration.group_count() - 1;
    // Copies `range` from the source into the destination, except the
    // slots pulled ahead (served at the destination already: their keys
    // there may be newer, or deleted since), and serves it there.
    let pull = |driver: &mut Driver,
                what: &'static str,
                range: SlotRange,
                pulled_ahead: &HashSet<u32>,
                report: &mut ReshardReport|
     -> Result<(), ReshardError> {
        let (copy, length) = driver
            .export(from, range, 0, deadline)?
            .ok_or_else(|| stuck(what))?;
        let keys = Export {
            outcomes: Vec::new(),
            keys: copy
                .keys
                .into_iter()
                .filter(|copied| {
                    !pulled_ahead.contains(&tern_wire::slot_of(tern_wire::key_hash(&copied.key)))
                })
                .collect(),
            ..copy
        };
        driver.install(to, &keys, &[], None)?;
        driver.freeze(to, range, freeze::RELEASE)?;
        report.keys += keys.keys.len() as u64;
        report.bytes += length as u64;
        Ok(())
    };
    let mut renewed = Instant::now();
    while let Some(&in_order) = waiting.first() {
        // The pieces of each waiting group still held.
        let held_pieces = |group: u32, pulled: &HashSet<u32>| -> Vec<SlotRange> {
            let mut pieces = vec![groups[group as usize]];
            for slot in pulled {
                tern_wire::slots::remove(&mut pieces, [*slot, slot + 1]);
            }
            pieces
        };
        let due: Vec<u32> = if renewed.elapsed() > hold / 3 {
            renewed = Instant::now();
            waiting.iter().copied().collect()
        } else {
            vec![in_order]
        };
        for group in due {
            for piece in held_pieces(group, &pulled_ahead) {
                driver.freeze(to, piece, freeze::PULL)?;
            }
        }
        let asked: Vec<u32> = std::mem::take(&mut driver.wanted)
            .into_iter()
            .filter(|slot| {
                migration
                    .group_of(tern_control::Slot(*slot))
                    .is_some_and(|group| waiting.contains(&group))
                    && !pulled_ahead.contains(slot)
            })
            .collect();
        // A few slots asked, then a group in order, so that neither waits
        // for the other long (the slots left are asked again by the retries).
        let room = splits_max.saturating_sub(pulled_ahead.len() as u32) as usize;
        for slot in asked.into_iter().take(room.min(8)) {
            pull(
                &mut driver,
                "pulling a slot from the source",
                [slot, slot + 1],
                &pulled_ahead,
                &mut report,
            )?;
            pulled_ahead.insert(slot);
            report.priority_pulls += 1;
        }
        pull(
            &mut driver,
            "pulling a group from the source",
            groups[in_order as usize],
            &pulled_ahead,
            &mut report,
        )?;
        waiting.remove(&in_order);
        // How long this group's requests waited (the slots not pulled
        // ahead).
        report.holds.push(held.elapsed());
    }
    driver.drop_slots(from, slots, "dropping the moved slots at the source")?;
    driver.change(Change::CompleteMigration {
        migration: migration.id,
    })?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What a rebalance evens out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Slot counts (`plan_even`).
    Slots,
    /// Load: what each slot was asked during `window`, measured before
    /// planning (`measure_load`, `plan_by_load`).
    Load { window: Duration },
}

/// What a rebalance did: the moves, and for a rebalance by load the load
/// of each shard (by id) measured before and expected after.
#[derive(Clone, Debug, Default)]
pub struct Rebalanced {
    pub moves: Vec<(Move, ReshardReport)>,
    pub load_before: Vec<(ShardId, u64)>,
    pub load_after: Vec<(ShardId, u64)>,
}

/// Moves slots until every shard owns an even share of what `balance`
/// names, one reshard after another; refused while a migration is under
/// way. `progress` is called after every group of every move.
pub fn rebalance(
    nodes: &[SocketAddrV4],
    options: ReshardOptions,
    balance: Balance,
    progress: &mut dyn FnMut(&Move, &Progress),
) -> Result<Rebalanced, ReshardError> {
    let map = Driver::new(nodes, options)?.refresh()?;
    if let Some(under_way) = map.migrations.first() {
        return Err(std::io::Error::other(format!(
            "migration {} is under way (shard {} -> shard {}): finish it (run the same `tern reshard` again) or cancel it first",
            under_way.id, under_way.from, under_way.to
        ))
        .into());
    }
    let owned: Vec<(ShardId, Vec<SlotRange>)> = map
        .shards
        .iter()
        .map(|shard| (shard.id, shard.slots.clone()))
        .collect();
    let mut done = Rebalanced::default();
    let moves = match balance {
        Balance::Slots => plan_even(&owned),
        Balance::Load { window } => {
            let load = measure_load(&map, window)?;
            let moves = plan_by_load(&owned, &load);
            done.load_before = plan::shard_loads(&owned, &load);
            done.load_after = plan::shard_loads(&plan::after(&owned, &moves), &load);
            moves
        }
    };
    for step in moves {
        let report = reshard(nodes, step.from, step.to, step.slots, options, &mut |p| {
            progress(&step, p)
        })?;
        done.moves.push((step, report));
    }
    Ok(done)
}

/// What each slot was asked during `window`, from the counts of every
/// replica in `map` taken at its start and end (`TransferRequest::Load`):
/// the reads the shard's replicas answered, plus its writes times its chain
/// length (every replica applies each write), so that the figure is the
/// replicas' work. A replica that does not answer both times counts for
/// nothing; if none answers the rebalance stops.
pub fn measure_load(map: &MetaMap, window: Duration) -> Result<Vec<u64>, ReshardError> {
    let sample = || -> HashMap<SocketAddrV4, SlotLoad> {
        map.shards
            .iter()
            .flat_map(|shard| shard.replicas.iter().copied())
            .filter_map(|replica| {
                let (_, bytes) = transfer::fetch(replica, TransferRequest::Load)
                    .inspect_err(|error| tracing::warn!(%replica, %error, "no load from replica"))
                    .ok()?;
                SlotLoad::decode(&bytes)
                    .inspect_err(|error| tracing::warn!(%replica, %error, "bad load from replica"))
                    .ok()
                    .map(|load| (replica, load))
            })
            .collect()
    };
    let first = sample();
    std::thread::sleep(window);
    let second = sample();
    let mut load = vec![0u64; tern_wire::SLOT_COUNT as usize];
    let mut answered = 0;
    for shard in &map.shards {
        let recent: Vec<SlotLoad> = shard
            .replicas
            .iter()
            .filter_map(|replica| Some(second.get(replica)?.since(first.get(replica)?)))
            .collect();
        answered += recent.len();
        let chain = shard.replicas.len() as u64;
        for (slot, asked) in load.iter_mut().enumerate() {
            let slot = slot as u32;
            let reads: u64 = recent.iter().map(|load| load.reads(slot)).sum();
            let writes = recent
                .iter()
                .map(|load| load.writes(slot))
                .max()
                .unwrap_or(0);
            *asked += reads + writes * chain;
        }
    }
    if answered == 0 {
        return Err(std::io::Error::other("no replica reported its load").into());
    }
    Ok(load)
}

/// Stops migration `id`: the groups handed off stay at the destination.
pub fn cancel(nodes: &[SocketAddrV4], id: u64) -> Result<MetaMap, ReshardError> {
    Driver::new(nodes, ReshardOptions::default())?.change(Change::CancelMigration { migration: id })
}

/// The migrations under way.
pub fn status(nodes: &[SocketAddrV4]) -> Result<Vec<Migration>, ReshardError> {
    Ok(Driver::new(nodes, ReshardOptions::default())?
        .map()?
        .migrations)
}

fn shard(map: &MetaMap, id: ShardId) -> &ShardMap {
    map.shards
        .iter()
        .find(|shard| shard.id == id)
        .expect("meta validated the migration's shards")
}

struct Driver {
    meta: MetaClient,
    /// The newest map known (refreshed when a refusal says it is old).
    known: Option<MetaMap>,
    socket: UdpSocket,
    client_id: ClientId,
    next_request: u64,
    options: ReshardOptions,
    buffer: Vec<u8>,
    /// The options' pause is over (it is taken once).
    paused: bool,
    /// Slots clients asked for while held in PULL mode, not pulled yet.
    wanted: std::collections::BTreeSet<u32>,
    /// Connections to destination heads, for copies of large values.
    links: crate::large::Links,
}

/// Who holds a group at the source: its coordinator's epoch and
/// incarnation when it answered the FREEZE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    epoch: u32,
    incarnation: u64,
}

/// How one try at moving a group ended.
enum Attempt {
    HandedOff,
    /// Not handed off (the source changed, or the hold may have lapsed):
    /// take the group again after `pause`.
    Again {
        pause: Duration,
    },
    /// Meta may or may not have recorded the hand-off (no leader answered
    /// before the deadline): the hold must run out by itself, never be
    /// released, in case the destination serves the group already.
    Unknown(ReshardError),
}

/// A request to a shard's coordinator, until it is answered.
#[derive(Clone, Debug)]
struct Pending {
    header: Header,
    /// A copied key's deadline (INSTALL), and a value too large for a
    /// datagram named (`ext::LARGE`): staged at the head before it is
    /// sent, and again when the head answers VALUE_MISSING.
    extensions: Extensions,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Its large value is staged at the head it goes to now.
    staged: bool,
}

impl Pending {
    fn new(header: Header, key: Vec<u8>, value: Vec<u8>) -> Pending {
        Pending {
            header,
            extensions: Extensions::default(),
            key,
            value,
            staged: false,
        }
    }

    fn keyless(header: Header) -> Pending {
        Pending::new(header, Vec::new(), Vec::new())
    }

    /// Whom an answer to it names (an installed outcome is answered as
    /// its own client's request).
    fn id(&self) -> (u64, u64) {
        (self.header.client_id.get(), self.header.request_id.get())
    }
}

impl Driver {
    fn new(nodes: &[SocketAddrV4], options: ReshardOptions) -> Result<Driver, ReshardError> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(Driver {
            meta: MetaClient::new(nodes.to_vec()),
            known: None,
            socket,
            client_id: ClientId::random(),
            next_request: 1,
            options,
            buffer: vec![0; MESSAGE_LEN_MAX],
            paused: false,
            wanted: Default::default(),
            links: crate::large::Links::default(),
        })
    }

    /// Takes the options' pause if it comes after `step` and was not taken.
    fn reached(&mut self, step: Step) {
        let Some(pause) = self.options.pause.filter(|pause| pause.after == step) else {
            return;
        };
        if std::mem::replace(&mut self.paused, true) {
            return;
        }
        eprintln!("{PAUSED}{} for {:?}", step.name(), pause.duration);
        std::thread::sleep(pause.duration);
    }

    /// Asks meta's leader, again while no leader answers (an election)
    /// until the step deadline: every request the driver makes is
    /// idempotent.
    fn call_meta(&mut self, request: &Request) -> Result<MetaMap, ReshardError> {
        let deadline = Instant::now() + self.options.step_deadline;
        loop {
            match self.call_meta_once(request) {
                Err(ReshardError::Io(error)) if Instant::now() < deadline => {
                    tracing::debug!(%error, "no meta leader answered; asking again");
                    std::thread::sleep(META_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    fn call_meta_once(&mut self, request: &Request) -> Result<MetaMap, ReshardError> {
        match self.meta.call_leader(request)? {
            Reply::Map(map) => {
                self.known = Some(map.clone());
                Ok(map)
            }
            Reply::Refused(refusal) => Err(refusal.into()),
            other => Err(std::io::Error::other(format!("unexpected meta reply {other:?}")).into()),
        }
    }

    /// The newest map known, fetched if there is none.
    fn map(&mut self) -> Result<MetaMap, ReshardError> {
        match &self.known {
            Some(map) => Ok(map.clone()),
            None => self.refresh(),
        }
    }

    /// The map as meta has it now.
    fn refresh(&mut self) -> Result<MetaMap, ReshardError> {
        self.call_meta(&Request::GetMap)
    }

    fn change(&mut self, change: Change) -> Result<MetaMap, ReshardError> {
        self.call_meta(&Request::Change(change))
    }

    /// Begins moving `slots` from `from` to `to` in groups of the options'
    /// size (or finds the migration begun before: it is idempotent).
    fn begin(
        &mut self,
        from: ShardId,
        to: ShardId,
        slots: SlotRange,
    ) -> Result<Migration, ReshardError> {
        let map = self.change(Change::BeginMigration {
            from,
            to,
            slots,
            group_slots: self.options.group_slots,
        })?;
        map.migrations
            .into_iter()
            .find(|m| (m.from, m.to, m.slots) == (from, to, slots))
            .ok_or_else(|| {
                std::io::Error::other("meta's map lacks the migration just begun").into()
            })
    }

    /// Moves one group; starts it again when the source changes under it.
    fn hand_off(
        &mut self,
        migration: &Migration,
        group: u32,
        report: &mut ReshardReport,
    ) -> Result<(), ReshardError> {
        let range = migration.group_slots_of(group);
        let deadline = Instant::now() + self.options.step_deadline;
        loop {
            let attempt = self.attempt(migration, group, deadline, report);
            if !matches!(attempt, Ok(Attempt::HandedOff | Attempt::Unknown(_))) {
                // Not handed off: the source serves the group again.
                let _ = self.freeze(migration.from, range, freeze::RELEASE);
            }
            match attempt? {
                Attempt::HandedOff => return Ok(()),
                Attempt::Unknown(error) => return Err(error),
                Attempt::Again { pause } => {
                    report.restarts += 1;
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// One try at moving a group: copy it while it serves, hold its writes,
    /// copy what changed since, hold the reads, hand off.
    fn attempt(
        &mut self,
        migration: &Migration,
        group: u32,
        deadline: Instant,
        report: &mut ReshardReport,
    ) -> Result<Attempt, ReshardError> {
        let range = migration.group_slots_of(group);
        self.refresh()?;
        let copying = Instant::now();
        // What an earlier try (or an earlier driver) installed goes first:
        // a key deleted at the source since would otherwise stay at the
        // destination, named by no copy of this try. The destination does
        // not serve the group yet, so nothing is lost.
        self.drop_slots(migration.to, range, "clearing the group at the destination")?;
        self.reached(Step::Cleared);
        // Without a first copy, the copy taken while held has everything.
        let (mut first, mut first_len) = (Export::default(), 0);
        if self.options.copy_first {
            let Some(copy) = self.export(migration.from, range, 0, deadline)? else {
                return Ok(Attempt::Again {
                    pause: Duration::from_millis(100),
                });
            };
            (first, first_len) = copy;
            self.install(migration.to, &first, &[], None)?;
            self.reached(Step::Copied);
        }
        let held = Instant::now();
        report.copying += held - copying;
        let holder = self.freeze(migration.from, range, freeze::WRITES)?;
        let drained = Instant::now();
        self.reached(Step::WritesHeld);
        // Every write of the group is at the tail now, and none comes
        // after: what changed since the first copy is final.
        let Some((delta, delta_len)) = self.export(migration.from, range, first.floor, deadline)?
        else {
            return Ok(Attempt::Again {
                pause: Duration::from_millis(100),
            });
        };
        let exported = Instant::now();
        let still_live: HashSet<&[u8]> = delta
            .keys
            .iter()
            .map(|copied| &copied.key[..])
            .chain(delta.unchanged.iter().map(|named| &named.key[..]))
            .collect();
        let deleted: Vec<Vec<u8>> = first
            .keys
            .iter()
            .filter(|copied| !still_live.contains(&copied.key[..]))
            .map(|copied| copied.key.clone())
            .collect();
        let installed_first: HashSet<(u64, u64)> = first
            .outcomes
            .iter()
            .map(|outcome| (outcome.client_id, outcome.request_id))
            .collect();
        let changes = Export {
            outcomes: delta
                .outcomes
                .iter()
                .filter(|outcome| {
                    !installed_first.contains(&(outcome.client_id, outcome.request_id))
                })
                .copied()
                .collect(),
            ..delta.clone()
        };
        self.install(migration.to, &changes, &deleted, Some(delta.floor))?;
        let installed = Instant::now();
        self.reached(Step::ChangesInstalled);
        report.draining += drained - held;
        report.exporting += exported - drained;
        report.installing += installed - exported;
        if held.elapsed() > self.options.hold / 2 {
            // The copy took so long that the hold may have lapsed and let
            // writes in after the export: take the group again.
            return Ok(Attempt::Again {
                pause: Duration::ZERO,
            });
        }
        // Renews the hold and takes the reads too: the destination is about
        // to serve the group. Held by the same coordinator at the same epoch
        // and incarnation, or the hold may have lapsed in between (a
        // coordinator that started afresh, at the same epoch after a lost
        // lease, holds nothing).
        if self.freeze(migration.from, range, freeze::ALL)? != holder {
            return Ok(Attempt::Again {
                pause: Duration::ZERO,
            });
        }
        self.reached(Step::ReadsHeld);
        let hand_off = Request::Change(Change::HandOff {
            migration: migration.id,
            group,
            floor: Seq(delta.floor),
            source_epoch: Epoch(holder.epoch),
            source_incarnation: holder.incarnation,
        });
        let handed = loop {
            match self.call_meta_once(&hand_off) {
                Err(ReshardError::Io(error)) => {
                    // Meta between leaders: the hand-off may be recorded or
                    // not. The hold stays, renewed, and the same hand-off
                    // (idempotent) is asked again: meta says which it was.
                    if Instant::now() >= deadline {
                        return Ok(Attempt::Unknown(error.into()));
                    }
                    std::thread::sleep(META_RETRY_PAUSE);
                    // A coordinator that changed since has let the hold go
                    // and meta refuses the hand-off (fenced by the epoch).
                    let _ = self.freeze_within(
                        migration.from,
                        range,
                        freeze::ALL,
                        0,
                        Duration::from_millis(200),
                    );
                }
                other => break other,
            }
        };
        match handed {
            Ok(map) => {
                report.handing_off += installed.elapsed();
                report.keys += still_live.len() as u64;
                report.outcomes += delta.outcomes.len() as u64;
                report.bytes += (first_len + delta_len) as u64;
                report.holds.push(held.elapsed());
                self.reached(Step::HandedOff);
                // Meta has it: the source sends the group's clients to the
                // map at once (WRONG_SHARD) instead of holding them until
                // its own heartbeat brings the map. Only a shortcut: without
                // it the hold does the same, later.
                self.announce_moved(migration.from, range, map.version);
                Ok(Attempt::HandedOff)
            }
            Err(ReshardError::Refused(
                Refusal::SourceChanged { .. } | Refusal::SourceRestarted { .. },
            )) => Ok(Attempt::Again {
                pause: Duration::ZERO,
            }),
            Err(error) => Err(error),
        }
    }

    /// The copy of `range` from `shard_id`'s tail (keys at or above version
    /// `since` in full), with its encoded length; None when the tail cannot
    /// give it now (failing or replaced: the group is taken again from the
    /// chain meta has then).
    fn export(
        &mut self,
        shard_id: ShardId,
        range: SlotRange,
        since: u64,
        deadline: Instant,
    ) -> Result<Option<(Export, usize)>, ReshardError> {
        let map = self.map()?;
        let tail = *shard(&map, shard_id)
            .replicas
            .last()
            .expect("a chain has a tail");
        match transfer::fetch(tail, TransferRequest::Slots { range, since }) {
            Ok((_, bytes)) => Ok(Some((Export::decode(&bytes)?, bytes.len()))),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, %tail, "export failed; taking the group again");
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Forgets every key of `range` at `shard_id` (DROP_SLOTS, sequenced),
    /// which does not serve it.
    fn drop_slots(
        &mut self,
        shard_id: ShardId,
        range: SlotRange,
        step: &'static str,
    ) -> Result<(), ReshardError> {
        let map = self.map()?;
        let epoch = shard(&map, shard_id).epoch.get();
        let mut header = Header::new(Op::DropSlots, shard_id.get(), epoch);
        header.key_hash.set(key_hash(b""));
        header.set_slot_range(range);
        self.exchange(shard_id, vec![Pending::keyless(header)], step)
    }

    /// Tells `shard_id`'s coordinator that `range` was handed off in map
    /// `map_version`: its requests are answered WRONG_SHARD naming it until
    /// the hold runs out. One short try; if it is lost the hold does the
    /// same until the map arrives.
    fn announce_moved(&mut self, shard_id: ShardId, range: SlotRange, map_version: u64) {
        if let Err(error) = self.freeze_within(
            shard_id,
            range,
            freeze::MOVED,
            map_version,
            Duration::from_millis(50),
        ) {
            tracing::debug!(%error, "the source did not confirm the hand-off announcement");
        }
    }

    /// Holds (or releases) `range` at `shard_id`'s coordinator until none of
    /// its writes is in flight; who holds it.
    fn freeze(
        &mut self,
        shard_id: ShardId,
        range: SlotRange,
        mode: u8,
    ) -> Result<Holder, ReshardError> {
        self.freeze_within(shard_id, range, mode, 0, self.options.step_deadline)
    }

    /// [`Driver::freeze`], naming `map_version` (for `freeze::MOVED`),
    /// giving up after `patience`.
    fn freeze_within(
        &mut self,
        shard_id: ShardId,
        range: SlotRange,
        mode: u8,
        map_version: u64,
        patience: Duration,
    ) -> Result<Holder, ReshardError> {
        let hold_ms = self
            .options
            .hold
            .as_millis()
            .min(u128::from(freeze::HOLD_MAX_MS)) as u32;
        let value = freeze::Request {
            mode,
            hold_ms,
            map_version,
        }
        .encode();
        let deadline = Instant::now() + patience;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            let map = self.map()?;
            let source = shard(&map, shard_id);
            let mut header = Header::new(Op::Freeze, shard_id.get(), source.epoch.get());
            header.set_slot_range(range);
            header.client_id.set(self.client_id.get());
            let request_id = self.request_id();
            header.request_id.set(request_id);
            self.send(source.coordinator, &header, &[], &value)?;
            let until = (Instant::now() + Duration::from_millis(200)).min(deadline);
            loop {
                if Instant::now() >= until {
                    // Silence: the coordinator may have moved.
                    self.refresh()?;
                    break;
                }
                let Some((answer, value)) = self.receive()? else {
                    continue;
                };
                if answer.request_id.get() != request_id {
                    continue;
                }
                let answered = freeze::Answer::decode(&value).unwrap_or_default();
                // Slots asked at a coordinator holding in PULL mode.
                self.wanted
                    .extend(answered.wanted.iter().map(|slot| u32::from(*slot)));
                match answer.status() {
                    Status::Ok => {
                        return Ok(Holder {
                            epoch: answer.epoch.get(),
                            incarnation: answered.incarnation,
                        });
                    }
                    Status::TryAgain => {
                        last = "writes still in flight".into();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    other => {
                        last = format!("{other:?}");
                        self.refresh()?;
                    }
                }
                break;
            }
        }
        Err(ReshardError::Stuck {
            step: "holding the group at the source",
            deadline: patience,
            last,
        })
    }

    /// Installs at `shard_id` an export's keys and outcomes, forgets the
    /// copied keys in `deleted` (deleted at the source since they were
    /// copied), and raises the version floor to `floor` when given.
    fn install(
        &mut self,
        shard_id: ShardId,
        export: &Export,
        deleted: &[Vec<u8>],
        floor: Option<u64>,
    ) -> Result<(), ReshardError> {
        let map = self.map()?;
        let epoch = shard(&map, shard_id).epoch.get();
        let mut requests =
            Vec::with_capacity(export.keys.len() + export.outcomes.len() + deleted.len() + 1);
        // Keys go several to a datagram (INSTALL_KEYS), as many as fit one
        // value; a key too large to share one goes alone (INSTALL).
        let mut batch: Vec<&ExportedKey> = Vec::new();
        let mut batch_len = 0;
        let flush = |batch: &mut Vec<&ExportedKey>, requests: &mut Vec<Pending>| {
            if batch.is_empty() {
                return;
            }
            let mut header = Header::new(Op::InstallKeys, shard_id.get(), epoch);
            header.key_hash.set(key_hash(b""));
            requests.push(Pending::new(
                header,
                Vec::new(),
                export::encode_keys(batch.drain(..)),
            ));
        };
        for copied in &export.keys {
            let length = copied.encoded_len();
            if crate::large::is_large(&copied.value) {
                // Out of band, under ids of its own: staged values are
                // found by (client, request), and a client id used once
                // never meets the replicas' dedup window.
                let mut header = Header::new(Op::Install, shard_id.get(), epoch);
                header.key_hash.set(key_hash(&copied.key));
                header.set_version(copied.version);
                header.client_id.set(ClientId::random().get());
                header.request_id.set(1);
                let nowhere = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
                requests.push(Pending {
                    extensions: Extensions {
                        large: Some(tern_wire::Large::of(&copied.value, nowhere)),
                        ..Extensions::deadline(copied.deadline_ms)
                    },
                    ..Pending::new(header, copied.key.clone(), copied.value.clone())
                });
                continue;
            }
            if length > VALUE_LEN_MAX {
                let mut header = Header::new(Op::Install, shard_id.get(), epoch);
                header.key_hash.set(key_hash(&copied.key));
                header.set_version(copied.version);
                requests.push(Pending {
                    extensions: Extensions::deadline(copied.deadline_ms),
                    ..Pending::new(header, copied.key.clone(), copied.value.clone())
                });
                continue;
            }
            if batch_len + length > VALUE_LEN_MAX {
                flush(&mut batch, &mut requests);
                batch_len = 0;
            }
            batch.push(copied);
            batch_len += length;
        }
        flush(&mut batch, &mut requests);
        for key in deleted {
            let mut header = Header::new(Op::Uninstall, shard_id.get(), epoch);
            header.key_hash.set(key_hash(key));
            // Every version the source gave is below the delta's floor.
            header.set_version(floor.unwrap_or(u64::MAX));
            requests.push(Pending::new(header, key.clone(), Vec::new()));
        }
        for outcome in &export.outcomes {
            let mut header = Header::new(Op::InstallOutcome, shard_id.get(), epoch);
            header.key_hash.set(key_hash(b""));
            header.client_id.set(outcome.client_id);
            header.request_id.set(outcome.request_id);
            header.status = outcome.status as u8;
            header.set_version(outcome.version);
            requests.push(Pending::new(
                header,
                Vec::new(),
                outcome.key_hash.to_le_bytes().to_vec(),
            ));
        }
        if let Some(floor) = floor {
            let mut rebase = Header::new(Op::Rebase, shard_id.get(), epoch);
            rebase.key_hash.set(key_hash(b""));
            rebase.set_version(floor);
            requests.push(Pending::keyless(rebase));
        }
        self.exchange(
            shard_id,
            requests,
            "installing the group at the destination",
        )
    }

    /// Sends `requests` to `shard_id`'s coordinator, `INSTALL_WINDOW` in
    /// flight, until each is answered: resent after silence or TRY_AGAIN,
    /// re-stamped with the map's epoch after STALE_EPOCH or WRONG_SHARD.
    /// Each request is idempotent by itself (an INSTALL never replaces a
    /// newer version, a REBASE only raises the floor, dropping slots twice
    /// drops nothing more, an INSTALL_OUTCOME is deduplicated under its own
    /// client's id), so the driver's own go without a client id and need
    /// no dedup window.
    fn exchange(
        &mut self,
        shard_id: ShardId,
        requests: Vec<Pending>,
        step: &'static str,
    ) -> Result<(), ReshardError> {
        const RESEND_AFTER: Duration = Duration::from_millis(100);
        let deadline = Instant::now() + self.options.step_deadline;
        let mut map = self.map()?;
        let mut last_refresh = Instant::now();
        let mut last_answer = Instant::now();
        let mut waiting = requests.into_iter();
        let mut in_flight: HashMap<(u64, u64), (Pending, Instant)> = HashMap::new();
        let mut last = String::from("no answer");
        loop {
            while in_flight.len() < INSTALL_WINDOW
                && let Some(mut request) = waiting.next()
            {
                if request.header.request_id.get() == 0 {
                    // Anonymous (client id 0): nothing here needs the
                    // replicas' dedup (see `exchange`), so no dedup window.
                    let request_id = self.request_id();
                    request.header.request_id.set(request_id);
                }
                // Sent on the first pass of the resend loop below.
                let never = Instant::now() - RESEND_AFTER;
                in_flight.insert(request.id(), (request, never));
            }
            if in_flight.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ReshardError::Stuck {
                    step,
                    deadline: self.options.step_deadline,
                    last,
                });
            }
            let now = Instant::now();
            let silent = now.duration_since(last_answer) >= RESEND_AFTER * 2;
            if silent && last_refresh.elapsed() >= RESEND_AFTER * 2 {
                // Unanswered for a while: the coordinator may have failed
                // over to a standby. The map says where the shard is now.
                map = self.refresh()?;
                last_refresh = Instant::now();
            }
            let target = shard(&map, shard_id);
            let (coordinator, epoch) = (target.coordinator, target.epoch.get());
            let head = target.replicas[0];
            let mut due: Vec<(u64, u64)> = Vec::new();
            for (id, (request, sent)) in &mut in_flight {
                if now.duration_since(*sent) >= RESEND_AFTER {
                    request.header.epoch.set(epoch);
                    *sent = now;
                    due.push(*id);
                }
            }
            for id in due {
                let (request, sent) = in_flight.get_mut(&id).expect("due above");
                if request.extensions.large.is_some() && !request.staged {
                    match self.links.stage(head, id, &request.value) {
                        Ok(()) => request.staged = true,
                        Err(error) => {
                            // The head failed or moved: the map will say.
                            last = format!("staging a large value at {head}: {error}");
                            *sent = now - RESEND_AFTER / 2;
                            continue;
                        }
                    }
                }
                let inline = if request.extensions.large.is_some() {
                    &[][..]
                } else {
                    &request.value[..]
                };
                self.send_with(
                    coordinator,
                    &request.header,
                    &request.extensions,
                    &request.key,
                    inline,
                )?;
            }
            let Some((answer, _)) = self.receive()? else {
                continue;
            };
            let id = (answer.client_id.get(), answer.request_id.get());
            let Some((_, sent)) = in_flight.get_mut(&id) else {
                continue;
            };
            last_answer = now;
            match answer.status() {
                Status::TryAgain => {
                    // A full window at the destination: again shortly.
                    last = "TRY_AGAIN".into();
                    *sent = now - RESEND_AFTER + Duration::from_millis(2);
                }
                Status::StaleEpoch | Status::WrongShard => {
                    last = format!("{:?}", answer.status());
                    *sent = now - RESEND_AFTER;
                    map = self.refresh()?;
                }
                Status::ValueMissing => {
                    // Its head changed (or restarted) since it was staged.
                    last = "VALUE_MISSING".into();
                    if let Some((request, sent)) = in_flight.get_mut(&id) {
                        request.staged = false;
                        *sent = now - RESEND_AFTER;
                    }
                    map = self.refresh()?;
                }
                _ => {
                    in_flight.remove(&id);
                }
            }
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn send(
        &mut self,
        to: SocketAddrV4,
        header: &Header,
        key: &[u8],
        value: &[u8],
    ) -> std::io::Result<()> {
        self.send_with(to, header, &Extensions::default(), key, value)
    }

    fn send_with(
        &mut self,
        to: SocketAddrV4,
        header: &Header,
        extensions: &Extensions,
        key: &[u8],
        value: &[u8],
    ) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        encode_append_with(header, extensions, key, value, &mut bytes)
            .map_err(std::io::Error::other)?;
        self.socket.send_to(&bytes, to)?;
        Ok(())
    }

    /// The header and value of the next reply to arrive (None after a
    /// short wait).
    fn receive(&mut self) -> std::io::Result<Option<(Header, Vec<u8>)>> {
        match self.socket.recv_from(&mut self.buffer) {
            Ok((length, _)) => Ok(Message::decode(&self.buffer[..length])
                .ok()
                .filter(|message| message.header.op() == Op::Reply)
                .map(|message| (message.header, message.value.to_vec()))),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}
