//! The driver of the transaction benchmarks (`smallbank`, `tatp`): closed
//! loop, one blocking client per thread, each picking a transaction type
//! from its mix and running it (`Client::transact`, or a plain GET for a
//! read of one key). Reported: committed and attempted transactions per
//! second (an attempt is a run of a transaction's body: a conflict runs it
//! again), conflicts by cause (a version read changed; another transaction
//! held a key), and p50/p99 of each type's committed transactions, over
//! the measured part after a warm-up.

use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tern_client::{Client, ClientError, ClusterMap, TxnMode};

/// How a mix runs.
#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct MixArgs {
    /// Concurrent clients (threads, one transaction outstanding each).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Run before the measured part (not counted).
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    #[arg(long)]
    pub seed: Option<u64>,
    /// How transactions keep what they read: optimistic (checked at
    /// commit) or locking (no-wait two-phase locking).
    #[arg(long, value_enum, default_value_t = Concurrency::Optimistic)]
    pub txn_mode: Concurrency,
}

/// `--txn-mode`: `tern_client::TxnMode` by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    Optimistic,
    Locking,
}

impl MixArgs {
    pub fn mode(&self) -> TxnMode {
        match self.txn_mode {
            Concurrency::Optimistic => TxnMode::Optimistic,
            Concurrency::Locking => TxnMode::Locking,
        }
    }
}

/// A benchmark's transaction types and how to run one.
pub trait Mix: Send + Sync {
    /// The types, by index, each with its share of the mix (percent,
    /// adding up to 100).
    fn kinds(&self) -> &'static [(&'static str, u32)];
    /// Runs one transaction of type `kind`; counts the runs of its body in
    /// `runs`. What it returned: a value the benchmark sums over committed
    /// transactions (SmallBank's money).
    fn run(
        &self,
        kind: usize,
        client: &mut Client,
        random: &mut SmallRng,
        runs: &mut u64,
    ) -> Result<i64, ClientError>;
}

/// The index of a type drawn by its share.
fn pick(random: &mut SmallRng, kinds: &[(&str, u32)]) -> usize {
    let mut roll = random.random_range(0..100);
    kinds
        .iter()
        .position(|&(_, share)| {
            let here = roll < share;
            roll = roll.saturating_sub(share);
            here
        })
        .expect("the shares add up to 100")
}

/// One type's figures.
#[derive(Clone, Debug, Serialize)]
pub struct KindReport {
    pub kind: &'static str,
    pub committed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// A run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct MixReport {
    pub elapsed_s: f64,
    pub committed: u64,
    /// Runs of transaction bodies (committed ones and conflicts).
    pub attempted: u64,
    pub committed_per_s: f64,
    pub attempted_per_s: f64,
    /// Commits refused because a version read had changed.
    pub conflicts_changed: u64,
    /// Commits refused because another transaction held a key.
    pub conflicts_locked: u64,
    /// Transactions that failed (timeouts, gave up after conflicts).
    pub failed: u64,
    pub kinds: Vec<KindReport>,
    /// The sum of what committed transactions returned, warm-up included.
    pub sum: i64,
    /// When the measured part began and ended.
    #[serde(skip)]
    pub measured: (Instant, Instant),
}

impl MixReport {
    /// The p50 of a type's committed transactions (0: none ran).
    pub fn p50_of(&self, kind: &str) -> u64 {
        self.kinds
            .iter()
            .find(|of| of.kind == kind)
            .map_or(0, |of| of.p50_us)
    }

    pub fn print(&self) {
        println!(
            "committed {:.0}/s ({}), attempted {:.0}/s ({}); conflicts: {} changed, {} locked; failed {}",
            self.committed_per_s,
            self.committed,
            self.attempted_per_s,
            self.attempted,
            self.conflicts_changed,
            self.conflicts_locked,
            self.failed
        );
        for kind in &self.kinds {
            println!(
                "  {:<22} {:>8} committed  p50 {:>6} us  p99 {:>6} us",
                kind.kind, kind.committed, kind.p50_us, kind.p99_us
            );
        }
    }
}

/// What one client did.
struct Tally {
    committed: Vec<Histogram<u64>>,
    attempted: u64,
    failed: u64,
    changed: u64,
    locked: u64,
    sum: i64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn client_loop(
    map: &ClusterMap,
    mix: &dyn Mix,
    seed: u64,
    measure_from: Instant,
    until: Instant,
) -> Result<Tally> {
    let mut client = Client::new(map.clone())?;
    let mut random = SmallRng::seed_from_u64(seed);
    let mut tally = Tally {
        committed: mix.kinds().iter().map(|_| histogram()).collect(),
        attempted: 0,
        failed: 0,
        changed: 0,
        locked: 0,
        sum: 0,
    };
    let mut counted_from = None;
    while Instant::now() < until {
        let started = Instant::now();
        let measured = started >= measure_from;
        if measured && counted_from.is_none() {
            counted_from = Some(client.counters());
        }
        let mut runs = 0;
        let kind = pick(&mut random, mix.kinds());
        let result = mix.run(kind, &mut client, &mut random, &mut runs);
        if let Ok(value) = result {
            tally.sum += value;
        }
        if !measured {
            continue;
        }
        tally.attempted += runs;
        match result {
            Ok(_) => {
                let took = started.elapsed().as_micros() as u64;
                tally.committed[kind].saturating_record(took.max(1));
            }
            Err(_) => tally.failed += 1,
        }
    }
    let after = client.counters();
    let from = counted_from.unwrap_or(after);
    tally.changed = after.txn_changed - from.txn_changed;
    tally.locked = after.txn_locked - from.txn_locked;
    Ok(tally)
}

/// Runs `mix` with `args.clients` clients.
pub fn run_mix(
    map: &ClusterMap,
    args: &MixArgs,
    mix: std::sync::Arc<dyn Mix>,
) -> Result<MixReport> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let measure_from = Instant::now() + args.warmup;
    let until = measure_from + args.duration;
    let threads: Vec<_> = (0..args.clients)
        .map(|index| {
            let (map, mix) = (map.clone(), mix.clone());
            std::thread::spawn(move || {
                client_loop(
                    &map,
                    &*mix,
                    seed.wrapping_add(index as u64),
                    measure_from,
                    until,
                )
            })
        })
        .collect();
    let mut kinds: Vec<Histogram<u64>> = mix.kinds().iter().map(|_| histogram()).collect();
    let (mut attempted, mut failed, mut changed, mut locked, mut sum) = (0, 0, 0, 0, 0);
    for thread in threads {
        let tally = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        for (all, of_client) in kinds.iter_mut().zip(&tally.committed) {
            all.add(of_client)?;
        }
        attempted += tally.attempted;
        failed += tally.failed;
        changed += tally.changed;
        locked += tally.locked;
        sum += tally.sum;
    }
    let elapsed_s = args.duration.as_secs_f64();
    let committed: u64 = kinds.iter().map(Histogram::len).sum();
    Ok(MixReport {
        elapsed_s,
        committed,
        attempted,
        committed_per_s: committed as f64 / elapsed_s,
        attempted_per_s: attempted as f64 / elapsed_s,
        conflicts_changed: changed,
        conflicts_locked: locked,
        failed,
        kinds: mix
            .kinds()
            .iter()
            .zip(kinds)
            .filter(|(_, histogram)| !histogram.is_empty())
            .map(|((kind, _), histogram)| KindReport {
                kind,
                committed: histogram.len(),
                p50_us: histogram.value_at_quantile(0.5),
                p99_us: histogram.value_at_quantile(0.99),
            })
            .collect(),
        sum,
        measured: (measure_from, until),
    })
}
