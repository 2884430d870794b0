//! `tern bench migrate`: NetMigrate's experiment. A fresh netns cluster of
//! two shards serves a zipfian workload while part of shard 0's slots move
//! to shard 1; the run's time series (throughput, p50, p99 per interval)
//! is written as JSON and SVG with the migration window marked, and the
//! window is compared with the steady state before it in the same run.
//! Strategies alternate run by run (A B A B ...), so that drifts of a noisy
//! machine hit each alike, and the summary gives medians.
//!
//! Strategies: `live` (Tern's: each group copied while it serves, its
//! writes held only for what changed since), `stop-and-copy` (the whole
//! range's writes held while it is copied, then switched) and
//! `ownership-first` (after Rocksteady: the destination takes the range
//! at once, each group waits there for a background pull in slot order, a
//! group whose slots clients ask for pulled ahead).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tern_bench::{BenchArgs, BenchReport, Event, Window};
use tern_client::reshard::{self, ReshardOptions, ReshardReport};
use tern_client::{ClusterMap, ShardId};

use crate::DurabilityArg;
use crate::cluster::{self, ClusterCommand, ClusterMode, TopologyKind};

/// How the slots move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Tern's migration: copy each group while it serves, hold its writes
    /// for the changes only, hand off group by group.
    Live,
    /// Hold the whole range's writes, copy it, switch (one group).
    StopAndCopy,
    /// Rocksteady: the destination takes the range over at once and each
    /// group waits there until a background pull brings it in, a group
    /// clients ask for pulled ahead of the others.
    OwnershipFirst,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Live => "live",
            Strategy::StopAndCopy => "stop-and-copy",
            Strategy::OwnershipFirst => "ownership-first",
        }
    }

    fn options(self, slots: [u32; 2], args: &MigrateArgs) -> ReshardOptions {
        match self {
            Strategy::Live => ReshardOptions {
                group_slots: args.group_slots,
                max_keys_per_s: Some(args.max_keys_per_s),
                ..ReshardOptions::default()
            },
            Strategy::OwnershipFirst => ReshardOptions::default(),
            Strategy::StopAndCopy => ReshardOptions {
                group_slots: slots[1] - slots[0],
                hold: Duration::from_millis(u64::from(tern_wire::freeze::HOLD_MAX_MS)),
                copy_first: false,
                max_keys_per_s: None,
                ..ReshardOptions::default()
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Coordinator mode of the cluster.
    #[arg(long, value_enum, default_value_t = ClusterMode::User)]
    pub mode: ClusterMode,
    /// Strategies; each round runs them in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "live,stop-and-copy,ownership-first"
    )]
    pub strategies: Vec<Strategy>,
    /// Fractions of operations that are writes (NetMigrate's Table 5 varies
    /// them from 0 to 0.3).
    #[arg(long, value_delimiter = ',', default_value = "0.05")]
    pub write_fractions: Vec<f64>,
    /// Rounds: each strategy runs this many times per write fraction.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Records loaded (zipfian keys).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Length of each measured run.
    #[arg(long, default_value = "12s", value_parser = tern_bench::parse_duration)]
    pub duration: Duration,
    /// When the migration starts, from the start of the measured run.
    #[arg(long, default_value = "3s", value_parser = tern_bench::parse_duration)]
    pub migrate_at: Duration,
    /// The slots that move from shard 0 to shard 1 (FIRST-LAST).
    #[arg(long, default_value = "0-4095", value_parser = parse_slots)]
    pub slots: [u32; 2],
    /// Live migration: at most this many keys moved per second (0: as fast
    /// as it goes). The default is `tern reshard`'s.
    #[arg(long, default_value_t = tern_client::reshard::DEFAULT_MAX_KEYS_PER_S)]
    pub max_keys_per_s: u64,
    /// Slots per group of the live migration.
    #[arg(long, default_value_t = ReshardOptions::default().group_slots)]
    pub group_slots: u32,
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Requests each client keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub pipeline: u16,
    /// Length of each interval of the time series.
    #[arg(long, default_value = "100ms", value_parser = tern_bench::parse_duration)]
    pub interval: Duration,
    /// Where the JSON and SVG of every run go.
    #[arg(long, default_value = "target/bench-migrate")]
    pub out: PathBuf,
}

/// `FIRST-LAST` (inclusive), as `[first, last + 1)`.
fn parse_slots(text: &str) -> Result<[u32; 2], String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not FIRST-LAST"))?;
    let number = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("{part:?} is not a slot number"))
    };
    let (first, last) = (number(first)?, number(last)?);
    if first > last || last >= tern_wire::SLOT_COUNT {
        return Err(format!("slots {first}-{last} are not a range"));
    }
    Ok([first, last + 1])
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
struct Sample {
    steady: Window,
    during: Window,
    failures: u64,
    migration_s: f64,
    hold_p99_ms: f64,
    longest_hold_ms: f64,
}

impl Sample {
    fn throughput_ratio(&self) -> f64 {
        self.during.ops_per_s / self.steady.ops_per_s.max(1e-9)
    }

    fn p99_ratio(&self) -> f64 {
        self.during.p99_us as f64 / self.steady.p99_us.max(1) as f64
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn bench_args(args: &MigrateArgs, write_fraction: f64, load: bool) -> BenchArgs {
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: BenchArgs,
    }
    let mut bench = <Command as clap::Parser>::parse_from(["bench"]).args;
    bench.read_fraction = 1.0 - write_fraction;
    bench.distribution = Some(tern_bench::Distribution::Zipfian);
    bench.keys = args.records;
    bench.clients = args.clients;
    bench.pipeline = args.pipeline;
    bench.interval = args.interval;
    bench.no_load = !load;
    bench.duration = if load {
        Duration::from_millis(500)
    } else {
        args.duration
    };
    bench
}

fn one_run(
    args: &MigrateArgs,
    strategy: Strategy,
    write_fraction: f64,
    name: &str,
) -> Result<Sample> {
    let dir = tempfile::tempdir().context("creating a cluster directory")?;
    cluster::up_for_benchmark(
        dir.path(),
        2,
        3,
        args.mode,
        TopologyKind::Netns,
        DurabilityArg::None,
    )?;
    let result = (|| -> Result<Sample> {
        let map = ClusterMap::load(&dir.path().join("cluster.toml"))?;
        tern_bench::run(Some(&map), &bench_args(args, write_fraction, true))?;
        let measured = bench_args(args, write_fraction, false);
        let (mut report, moved, started, ended) = std::thread::scope(|scope| {
            let bench = scope.spawn(|| tern_bench::run(Some(&map), &measured));
            std::thread::sleep(args.migrate_at);
            let started = Instant::now();
            let options = strategy.options(args.slots, args);
            let (from, to) = (ShardId(0), ShardId(1));
            let moved = match strategy {
                Strategy::OwnershipFirst => {
                    reshard::reshard_ownership_first(&map.meta, from, to, args.slots, options)
                }
                _ => reshard::reshard(&map.meta, from, to, args.slots, options, &mut |_| {}),
            };
            let ended = Instant::now();
            let report = bench
                .join()
                .map_err(|_| anyhow::anyhow!("the workload panicked"))?;
            anyhow::Ok((report?, moved, started, ended))
        })?;
        let moved = moved.context("moving the slots")?;
        let (start_s, end_s) = (report.seconds_at(started), report.seconds_at(ended));
        if end_s >= report.elapsed_s {
            bail!(
                "the migration ended {end_s:.1}s into a {:.1}s run: give a longer --duration",
                report.elapsed_s
            );
        }
        report.events = vec![
            Event {
                second: start_s,
                label: format!("{} starts", strategy.name()),
            },
            Event {
                second: end_s,
                label: "ends".into(),
            },
        ];
        let sample = sample_of(&report, &moved, start_s, end_s)?;
        std::fs::create_dir_all(&args.out)?;
        let base = args.out.join(name);
        std::fs::write(
            base.with_extension("json"),
            serde_json_report(&report, &moved, &sample)?,
        )?;
        std::fs::write(base.with_extension("svg"), tern_bench::plot::svg(&report))?;
        Ok(sample)
    })();
    cluster::run(ClusterCommand::Down {
        dir: dir.path().to_path_buf(),
    })?;
    result
}

/// The run's figures: steady state from one second in until the migration
/// starts, and over every interval the migration overlaps.
fn sample_of(
    report: &BenchReport,
    moved: &ReshardReport,
    start_s: f64,
    end_s: f64,
) -> Result<Sample> {
    let interval = report.interval_s;
    let steady = report
        .window(1.0, (start_s / interval).floor() * interval)
        .context("no steady state before the migration: give a later --migrate-at")?;
    let during = report
        .window(
            (start_s / interval).floor() * interval,
            (end_s / interval).ceil() * interval,
        )
        .context("no interval inside the migration")?;
    let milliseconds = |hold: Duration| hold.as_secs_f64() * 1e3;
    let (hold_p99_ms, longest_hold_ms) = (
        milliseconds(moved.hold_p99()),
        milliseconds(moved.longest_hold()),
    );
    Ok(Sample {
        steady,
        during,
        failures: report.failures(),
        migration_s: end_s - start_s,
        hold_p99_ms,
        longest_hold_ms,
    })
}

fn serde_json_report(
    report: &BenchReport,
    moved: &ReshardReport,
    sample: &Sample,
) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Run<'a> {
        bench: &'a BenchReport,
        steady: Window,
        during_migration: Window,
        migration_s: f64,
        groups: u32,
        keys: u64,
        write_hold_p99_ms: f64,
        longest_write_hold_ms: f64,
        /// Where the time went (live and stop-and-copy).
        time_per_group: reshard::TimePerGroup,
        /// Ownership-first: slots pulled ahead because a request waited.
        priority_pulls: u32,
    }
    Ok(serde_json::to_string_pretty(&Run {
        bench: report,
        steady: sample.steady,
        during_migration: sample.during,
        migration_s: sample.migration_s,
        groups: moved.groups,
        keys: moved.keys,
        write_hold_p99_ms: sample.hold_p99_ms,
        longest_write_hold_ms: sample.longest_hold_ms,
        time_per_group: moved.time_per_group(),
        priority_pulls: moved.priority_pulls,
    })?)
}

pub fn run(args: &MigrateArgs) -> Result<()> {
    if args.strategies.is_empty() || args.write_fractions.is_empty() || args.repeat == 0 {
        bail!("give at least one strategy, one write fraction and one round");
    }
    if let Some(bad) = args
        .write_fractions
        .iter()
        .find(|fraction| !(0.0..=1.0).contains(*fraction))
    {
        bail!("write fraction {bad} is not between 0 and 1");
    }
    println!(
        "bench migrate ({:?} mode): slots {}-{} from shard 0 to shard 1 at {:?} into {:?} runs; {} records, zipfian, {} clients x {} in flight; {} rounds; series in {}",
        args.mode,
        args.slots[0],
        args.slots[1] - 1,
        args.migrate_at,
        args.duration,
        args.records,
        args.clients,
        args.pipeline,
        args.repeat,
        args.out.display()
    );
    let mut samples: Vec<(Strategy, f64, Sample)> = Vec::new();
    for round in 1..=args.repeat {
        for &write_fraction in &args.write_fractions {
            for &strategy in &args.strategies {
                let name = format!(
                    "{}-writes{:.0}-round{round}",
                    strategy.name(),
                    write_fraction * 100.0
                );
                let sample = one_run(args, strategy, write_fraction, &name)
                    .with_context(|| format!("run {name}"))?;
                println!(
                    "{name:<32} steady {:>7.0} ops/s p99 {:>6} us | migrating {:>5.2}s: {:>7.0} ops/s ({:.2}x) p50 {:>5} us p99 {:>6} us ({:.2}x) | write hold p99 {:.1} ms, longest {:.1} ms | {} failed",
                    sample.steady.ops_per_s,
                    sample.steady.p99_us,
                    sample.migration_s,
                    sample.during.ops_per_s,
                    sample.throughput_ratio(),
                    sample.during.p50_us,
                    sample.during.p99_us,
                    sample.p99_ratio(),
                    sample.hold_p99_ms,
                    sample.longest_hold_ms,
                    sample.failures
                );
                samples.push((strategy, write_fraction, sample));
            }
        }
    }
    println!();
    println!(
        "{:<14} {:>7} {:>12} {:>14} {:>11} {:>15} {:>13} {:>7}",
        "strategy",
        "writes",
        "migration s",
        "throughput x",
        "p99 x",
        "hold p99 ms",
        "longest ms",
        "failed"
    );
    for &write_fraction in &args.write_fractions {
        for &strategy in &args.strategies {
            let runs: Vec<&Sample> = samples
                .iter()
                .filter(|(s, w, _)| *s == strategy && *w == write_fraction)
                .map(|(_, _, sample)| sample)
                .collect();
            println!(
                "{:<14} {:>6.0}% {:>12.2} {:>14.2} {:>11.2} {:>15.1} {:>13.1} {:>7}",
                strategy.name(),
                write_fraction * 100.0,
                median(runs.iter().map(|s| s.migration_s)),
                median(runs.iter().map(|s| s.throughput_ratio())),
                median(runs.iter().map(|s| s.p99_ratio())),
                median(runs.iter().map(|s| s.hold_p99_ms)),
                median(runs.iter().map(|s| s.longest_hold_ms)),
                runs.iter().map(|s| s.failures).sum::<u64>()
            );
        }
    }
    println!(
        "(medians over {} rounds; x = during the migration / steady state before it in the same run)",
        args.repeat
    );
    Ok(())
}
