//! The replica process (`tern server`): binds the replica's chain address and
//! drives a [`Replica`] with batched UDP I/O. With a data directory it keeps
//! the replica's log (tern-store's segments and snapshots): it recovers from
//! it at start, and after every batch it appends the batch's records and, by
//! the durability policy, syncs them before any datagram of the batch leaves.
//! So a replica never forwards or acknowledges a write it has not persisted,
//! and one `fdatasync` covers the whole batch (group commit).

mod listener;
mod member;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tern_net::BatchSocket;
use tern_proto::Outbox;
pub use tern_proto::large::Values;
use tern_proto::replica::{Replica, ReplicaConfig, RestoreError};
use tern_store::log::{self, LogWriter};
use thiserror::Error;

/// When an acknowledged write becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Synced before the replica passes it on (and so before the tail's
    /// ACK): an acknowledged write survives any crash of any replicas,
    /// processes or machines.
    Always,
    /// Written before the replica passes it on (so a process crash loses
    /// nothing) but synced only every `interval`: if the machines of every
    /// replica fail at once, the last interval's writes can be lost,
    /// acknowledged or not.
    Interval(Duration),
    /// Memory only: a restarted replica comes back empty (benchmarks).
    None,
}

/// How a replica persists.
#[derive(Clone, Debug)]
pub struct Persistence {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Records between snapshots; a snapshot lets the log before it go.
    pub snapshot_every: u64,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// The log of a running replica.
struct Journal {
    writer: LogWriter,
    durability: Durability,
    last_sync: Instant,
    records_since_snapshot: u64,
    snapshot_every: u64,
}

impl Journal {
    fn new(writer: LogWriter, persistence: &Persistence, records_since_snapshot: u64) -> Journal {
        Journal {
            writer,
            durability: persistence.durability,
            last_sync: Instant::now(),
            records_since_snapshot,
            snapshot_every: persistence.snapshot_every.max(1),
        }
    }

    /// Appends the batch's records and syncs them if the policy says so.
    fn persist(&mut self, replica: &Replica, outbox: &Outbox) -> io::Result<()> {
        for (seq, record) in outbox.journal() {
            self.writer.append(seq, record);
            self.records_since_snapshot += 1;
        }
        self.writer.write()?;
        match self.durability {
            Durability::Always => self.writer.sync()?,
            Durability::Interval(interval) if self.last_sync.elapsed() >= interval => {
                self.writer.sync()?;
                self.last_sync = Instant::now();
            }
            Durability::Interval(_) | Durability::None => {}
        }
        if self.records_since_snapshot >= self.snapshot_every {
            // The batch's records are written: the snapshot covers them.
            let started = Instant::now();
            self.writer.rotate()?;
            let (seq, bytes) = replica.snapshot();
            self.writer.snapshot(seq, &bytes)?;
            self.records_since_snapshot = 0;
            tracing::info!(seq, bytes = bytes.len(), took = ?started.elapsed(), "snapshot written, older log removed");
        }
        Ok(())
    }
}

/// A replica rebuilt from its data directory, and how.
#[derive(Debug)]
pub struct Recovered {
    pub replica: Replica,
    /// The seq of the snapshot it started from (0: none).
    pub snapshot_seq: u64,
    pub replay: log::ReplayReport,
}

/// Rebuilds a replica from the newest snapshot in `dir` and the log after it
/// (cutting a torn tail off the log).
pub fn recover_replica(config: ReplicaConfig, dir: &Path) -> Result<Recovered, ServerError> {
    let snapshot = log::read_snapshot(dir)?;
    let snapshot_seq = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
    let mut replica = Replica::restore(config, snapshot.as_ref().map(|(_, bytes)| &bytes[..]))?;
    let mut scratch = Outbox::new();
    let mut failure = None;
    let replay = log::replay(dir, snapshot_seq, |_, record| {
        if failure.is_none() {
            failure = replica.replay_record(record, &mut scratch).err();
            scratch.clear();
        }
    })?;
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(Recovered {
            replica,
            snapshot_seq,
            replay,
        }),
    }
}

/// Recovers the replica and opens its log for appending.
fn recover(
    config: ReplicaConfig,
    persistence: &Persistence,
) -> Result<(Replica, Journal), ServerError> {
    let started = Instant::now();
    let dir = &persistence.data_dir;
    std::fs::create_dir_all(dir)?;
    let Recovered {
        replica,
        snapshot_seq,
        replay,
    } = recover_replica(config, dir)?;
    let replica = replica.with_journal();
    let applied = replica.store().applied_seq();
    tracing::info!(
        applied_seq = applied,
        snapshot_seq,
        records = replay.records,
        truncated_bytes = replay.truncated_bytes,
        live_keys = replica.store().live_keys(),
        took = ?started.elapsed(),
        "recovered from {}", dir.display()
    );
    let journal = Journal::new(
        LogWriter::open(dir, applied + 1)?,
        persistence,
        replay.records,
    );
    Ok((replica, journal))
}

pub use member::run as run_under_meta;

/// What a replica's shell does between batches, in either main loop: hands
/// the core the wall clock again, and gives freed memory back to the
/// system after the store shrank by `TRIM_AFTER_KEYS` keys (a mass expiry,
/// a dropped slot range, a flush): the allocator keeps what a process freed
/// for its next allocations, so without this a replica's resident memory
/// would stay at its peak.
#[derive(Debug)]
pub(crate) struct Upkeep {
    /// The most keys since the last trim.
    peak: usize,
    last: std::time::Instant,
}

/// Keys the store must lose before memory is trimmed.
const TRIM_AFTER_KEYS: usize = 10_000;

impl Upkeep {
    pub(crate) fn new() -> Self {
        Upkeep {
            peak: 0,
            last: std::time::Instant::now(),
        }
    }

    /// Before the first batch and after each: sets the clock; trims, at
    /// most once a second, once the live keys are `TRIM_AFTER_KEYS` below
    /// their peak since the last trim, or half of it (the end of a mass
    /// delete).
    pub(crate) fn after_batch(&mut self, replica: &mut Replica) {
        replica.set_wall_clock(wall_clock());
        tern_metrics::offer(|| {
            let mut samples = replica.samples();
            samples.counter("control_refused", tern_control::tls::refused());
            samples
        });
        let live_keys = replica.store().live_keys();
        self.peak = self.peak.max(live_keys);
        let dropped = self.peak - live_keys;
        let shrank = dropped >= TRIM_AFTER_KEYS || (dropped > 0 && live_keys <= self.peak / 2);
        if shrank && self.last.elapsed() >= Duration::from_secs(1) {
            // SAFETY: a plain call into glibc's allocator, which may be made
            // at any time from any thread.
            unsafe { libc::malloc_trim(0) };
            self.peak = live_keys;
            self.last = std::time::Instant::now();
        }
    }
}

/// The variable that skews a replica's clock, in milliseconds (positive:
/// ahead): for tests of expiry under clock skew, never needed otherwise.
pub const CLOCK_SKEW_VARIABLE: &str = "TERN_CLOCK_SKEW_MS";

/// The replica's wall clock now: the system clock, skewed by
/// `CLOCK_SKEW_VARIABLE` when it is set. Read again after every batch, so
/// that adjustments of the system clock reach the core.
fn wall_clock() -> tern_proto::WallClock {
    static SKEW_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW_MS.get_or_init(|| {
        std::env::var(CLOCK_SKEW_VARIABLE)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    });
    tern_proto::WallClock::with_offset(tern_net::wall_offset_ms() + skew)
}

/// The longest value a replica may be configured to take: its log record
/// must fit `tern_store::log::RECORD_PAYLOAD_MAX`.
pub const LARGE_VALUE_LEN_MOST: usize = tern_wire::LARGE_VALUE_LEN_MOST;

/// The memory for large values of a replica unless configured otherwise.
pub const fn large_budget_default() -> usize {
    tern_proto::large::BUDGET_DEFAULT
}

/// Serves one replica until `shutdown` is set.
pub fn run(
    config: ReplicaConfig,
    persistence: Option<Persistence>,
    values: Values,
    shutdown: &AtomicBool,
) -> Result<(), ServerError> {
    let address = config.chain[config.position];
    let role = config.role_name();
    let shard = config.shard;
    let (mut replica, mut journal) = match persistence.filter(|p| p.durability != Durability::None)
    {
        Some(persistence) => {
            let (replica, journal) = recover(config, &persistence)?;
            (replica, Some(journal))
        }
        None => (Replica::new(config), None),
    };
    replica.set_values(values);
    let mut socket = BatchSocket::bind(address)?;
    listener::start(address, &mut socket, replica.values(), None)?;
    tracing::info!(shard, role, %address, durable = journal.is_some(), "replica serving");
    let mut upkeep = Upkeep::new();
    upkeep.after_batch(&mut replica);
    tern_net::serve_while(
        &mut socket,
        &mut replica,
        |replica| {
            upkeep.after_batch(replica);
            !shutdown.load(std::sync::atomic::Ordering::Relaxed)
        },
        |replica, outbox| match journal.as_mut() {
            Some(journal) => journal.persist(replica, outbox),
            None => Ok(()),
        },
    )?;
    if let Some(journal) = journal.as_mut() {
        journal.writer.sync()?;
    }
    tracing::info!(stats = %replica.render_stats(), send_errors = socket.send_errors(), "replica stopped");
    Ok(())
}
