//! `tern bench compare`: the same workload against clusters in different
//! coordinator modes, alternating (A B A B ...) so that drifts of a noisy
//! machine hit every mode alike; reports medians and per-round ratios.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tern_bench::BenchArgs;
use tern_client::ClusterMap;

use crate::DurabilityArg;
use crate::cluster::{self, ClusterCommand, ClusterMode, TopologyKind};

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Coordinator modes to compare; each round runs them in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "user,xdp")]
    pub modes: Vec<ClusterMode>,
    /// Rounds: each mode runs this many times.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    #[arg(long, value_enum, default_value_t = TopologyKind::Netns)]
    pub topology: TopologyKind,
    /// Replica durability (none: compare the coordinators alone).
    #[arg(long, value_enum, default_value_t = DurabilityArg::None)]
    pub durability: DurabilityArg,
    #[command(flatten)]
    pub workload: BenchArgs,
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
struct Sample {
    throughput: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    let middle = median(&mut sorted);
    (middle, sorted[0], sorted[sorted.len() - 1])
}

fn run_once(dir: &Path, args: &CompareArgs, mode: ClusterMode) -> Result<Sample> {
    let up = ClusterCommand::Up {
        dir: dir.to_path_buf(),
        shards: args.shards,
        replicas: args.replicas,
        mode,
        topology: Some(args.topology),
        durability: args.durability,
        snapshot_every: 200_000,
    };
    cluster::run(up)?;
    let result = (|| {
        let map = ClusterMap::load(&dir.join("cluster.toml"))?;
        let report = tern_bench::run(&map, &args.workload)?;
        let all = report.latency_all_us();
        Ok::<_, anyhow::Error>(Sample {
            throughput: report.throughput(),
            p50_us: all.value_at_quantile(0.5),
            p99_us: all.value_at_quantile(0.99),
            errors: report.errors(),
        })
    })();
    cluster::run(ClusterCommand::Down {
        dir: dir.to_path_buf(),
    })?;
    result
}

pub fn run(args: &CompareArgs) -> Result<()> {
    if args.modes.len() < 2 || args.modes.contains(&ClusterMode::Auto) {
        bail!("--modes takes two or more of user, xdp");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let workload = &args.workload;
    println!(
        "compare {:?}: {} rounds, {} shard(s) x {} replicas on {:?}; workload {} clients, {:.0}% GET, {:?} over {} keys, {}-byte values, {:?} per run",
        args.modes,
        args.repeat,
        args.shards,
        args.replicas,
        args.topology,
        workload.clients,
        workload.read_fraction * 100.0,
        workload.distribution,
        workload.keys,
        workload.value_size,
        workload.duration
    );
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); args.modes.len()];
    for round in 1..=args.repeat {
        for (index, mode) in args.modes.iter().enumerate() {
            let dir = scratch
                .path()
                .join(format!("round{round}-{mode:?}").to_lowercase());
            let sample = run_once(&dir, args, *mode)?;
            println!(
                "round {round} {:<5} {:>9.0} ops/s  p50 {:>5} us  p99 {:>5} us  errors {}",
                format!("{mode:?}").to_lowercase(),
                sample.throughput,
                sample.p50_us,
                sample.p99_us,
                sample.errors
            );
            samples[index].push(sample);
        }
    }
    println!();
    println!(
        "{:<6} {:>28} {:>22} {:>22} {:>7}",
        "mode", "throughput ops/s median (min..max)", "p50 us median", "p99 us median", "errors"
    );
    for (mode, runs) in args.modes.iter().zip(&samples) {
        let throughput: Vec<f64> = runs.iter().map(|s| s.throughput).collect();
        let p50: Vec<f64> = runs.iter().map(|s| s.p50_us as f64).collect();
        let p99: Vec<f64> = runs.iter().map(|s| s.p99_us as f64).collect();
        let (t, t_min, t_max) = spread(&throughput);
        let (p50, p50_min, p50_max) = spread(&p50);
        let (p99, p99_min, p99_max) = spread(&p99);
        println!(
            "{:<6} {:>9.0} ({:.0}..{:.0}) {:>10.0} ({:.0}..{:.0}) {:>10.0} ({:.0}..{:.0}) {:>7}",
            format!("{mode:?}").to_lowercase(),
            t,
            t_min,
            t_max,
            p50,
            p50_min,
            p50_max,
            p99,
            p99_min,
            p99_max,
            runs.iter().map(|s| s.errors).sum::<u64>()
        );
    }
    let base = &samples[0];
    for (mode, runs) in args.modes.iter().zip(&samples).skip(1) {
        let ratios: Vec<f64> = runs
            .iter()
            .zip(base)
            .map(|(run, base)| run.throughput / base.throughput)
            .collect();
        let (ratio, low, high) = spread(&ratios);
        let p50_ratios: Vec<f64> = runs
            .iter()
            .zip(base)
            .map(|(run, base)| run.p50_us as f64 / base.p50_us.max(1) as f64)
            .collect();
        let (p50_ratio, _, _) = spread(&p50_ratios);
        println!(
            "ratio {}/{} throughput: median {ratio:.2} (min {low:.2}, max {high:.2}) over {} rounds; p50 latency ratio median {p50_ratio:.2}",
            format!("{mode:?}").to_lowercase(),
            format!("{:?}", args.modes[0]).to_lowercase(),
            ratios.len()
        );
    }
    Ok(())
}
