//! `tern bench replication`: write latency and throughput against the
//! number of replicas, for each replication (chain, fan-out) and commit
//! rule (synchronous, Whale's early commit), on YCSB workloads, beside Redis with two asynchronous
//! replicas in the same run. Every configuration runs once per round,
//! rounds alternate (the machine is noisy); medians with min..max, per-round
//! ratios, a JSON file and an SVG plot of write latency against replicas.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tern_bench::plot::{COLORS, Curve, curves};
use tern_bench::{BenchArgs, BenchReport, WorkloadName};
use tern_client::commit_name;

use crate::DurabilityArg;
use crate::cluster::{self, ClusterMode, TopologyKind};
use crate::compare::{bench_then_down, run_redis_workload, spread};

#[derive(Debug, clap::Args)]
pub struct ReplicationArgs {
    /// Chain lengths to measure.
    #[arg(
        long = "replica-counts",
        value_delimiter = ',',
        default_value = "1,2,3,5,7"
    )]
    pub replica_counts: Vec<usize>,
    /// Commit rules (`chain`, `early` = early:2, `early:K`). A rule that
    /// commits early at K needs more than K replicas: with K or fewer it
    /// is the chain, and is not run again.
    #[arg(long, value_delimiter = ',', value_parser = tern_client::parse_commit, default_value = "chain,early")]
    pub commits: Vec<u32>,
    /// Replications (`chain`, `fanout`), each with every commit rule;
    /// fan-out with 2 replicas or more (one replica is the same either
    /// way).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, value_parser = tern_client::parse_replication, default_value = "chain,fanout")]
    pub replications: Vec<bool>,
    /// Coordinator modes, each measured for every configuration.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "user,xdp")]
    pub modes: Vec<ClusterMode>,
    /// YCSB workloads, each measured for every configuration.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b")]
    pub workloads: Vec<WorkloadName>,
    /// Rounds: every configuration runs this many times.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Leave out Redis (a primary and two asynchronous replicas on
    /// loopback, run once per workload per round).
    #[arg(long)]
    pub no_redis: bool,
    /// Tern replica durability (none: like Redis without persistence).
    #[arg(long, value_enum, default_value_t = DurabilityArg::None)]
    pub durability: DurabilityArg,
    /// Where the JSON figures and the SVG plot go (DIR/replication.json,
    /// DIR/replication.svg).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub workload: BenchArgs,
}

/// One configuration's runs.
#[derive(Clone, Debug, Serialize)]
struct Series {
    workload: WorkloadName,
    /// "user" or "xdp" (Redis: "redis").
    mode: String,
    /// None: Redis.
    replicas: Option<usize>,
    commit: String,
    runs: Vec<Run>,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Run {
    throughput: f64,
    write_p50_us: u64,
    write_p99_us: u64,
    failures: u64,
}

impl Run {
    fn of(report: &BenchReport) -> Run {
        let writes = report
            .operations
            .iter()
            .find(|op| op.name == "UPDATE" || op.name == "INSERT")
            .unwrap_or(&report.all);
        Run {
            throughput: report.throughput,
            write_p50_us: writes.p50_us,
            write_p99_us: writes.p99_us,
            failures: report.failures(),
        }
    }
}

impl Series {
    fn median(&self, value: fn(&Run) -> f64) -> (f64, f64, f64) {
        spread(&self.runs.iter().map(value).collect::<Vec<_>>())
    }

    fn label(&self) -> String {
        match self.replicas {
            Some(replicas) => format!("tern {} {replicas} replicas, {}", self.mode, self.commit),
            None => "redis, 2 async replicas".into(),
        }
    }
}

/// One configuration: mode, replicas, fan-out, early commit's K.
type Configuration = (ClusterMode, usize, bool, u32);

/// The configurations of one round, in order; Redis comes after them.
fn configurations(args: &ReplicationArgs) -> Vec<Configuration> {
    let mut configurations = Vec::new();
    for &mode in &args.modes {
        for &replicas in &args.replica_counts {
            for fanout in [false, true] {
                if !args.replications.contains(&fanout) || (fanout && replicas == 1) {
                    continue;
                }
                for &commit in &args.commits {
                    // Early at K with K or fewer replicas commits at the tail.
                    if commit == 0 || (commit as usize) < replicas {
                        configurations.push((mode, replicas, fanout, commit));
                    }
                }
            }
        }
    }
    configurations
}

/// How a configuration commits, as the report names it.
fn rule_name(fanout: bool, early_commit: u32) -> String {
    match (fanout, early_commit) {
        (false, k) => commit_name(k),
        (true, 0) => "fanout".into(),
        (true, k) => format!("fanout {}", commit_name(k)),
    }
}

fn mode_name(mode: ClusterMode) -> &'static str {
    match mode {
        ClusterMode::User => "user",
        ClusterMode::Xdp => "xdp",
        ClusterMode::Auto => "auto",
    }
}

fn run_tern(
    dir: &std::path::Path,
    args: &ReplicationArgs,
    workload: WorkloadName,
    (mode, replicas, fanout, early_commit): Configuration,
) -> Result<BenchReport> {
    cluster::up_committing(
        dir,
        1,
        replicas,
        (fanout, early_commit),
        mode,
        TopologyKind::Netns,
        args.durability,
    )?;
    let mut bench = args.workload.clone();
    bench.workload = workload;
    bench_then_down(dir, &bench)
}

pub fn run(args: &ReplicationArgs) -> Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.replica_counts.contains(&0) {
        bail!("--replica-counts: a chain has at least one replica");
    }
    if args.modes.contains(&ClusterMode::Auto) {
        bail!("--modes takes user and xdp (auto would measure either)");
    }
    let configurations = configurations(args);
    println!(
        "replication: {} rounds; 1 shard, netns, durability {:?}; {} clients, {} records, {}-byte values, {:?} per run; configurations {}",
        args.repeat,
        args.durability,
        args.workload.clients,
        args.workload.keys,
        args.workload.value_size,
        args.workload.duration,
        configurations
            .iter()
            .map(|(mode, replicas, fanout, k)| format!(
                "{}/{replicas}/{}",
                mode_name(*mode),
                rule_name(*fanout, *k)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut series: Vec<Series> = Vec::new();
    for &workload in &args.workloads {
        for &(mode, replicas, fanout, k) in &configurations {
            series.push(Series {
                workload,
                mode: mode_name(mode).into(),
                replicas: Some(replicas),
                commit: rule_name(fanout, k),
                runs: Vec::new(),
            });
        }
        if !args.no_redis {
            series.push(Series {
                workload,
                mode: "redis".into(),
                replicas: None,
                commit: "async".into(),
                runs: Vec::new(),
            });
        }
    }
    for round in 1..=args.repeat {
        let mut index = 0;
        for &workload in &args.workloads {
            for &configuration in &configurations {
                let (mode, replicas, fanout, k) = configuration;
                let dir = scratch.path().join(format!(
                    "r{round}-{workload:?}-{}-{replicas}-{}",
                    mode_name(mode),
                    rule_name(fanout, k)
                ));
                let run = Run::of(&run_tern(&dir, args, workload, configuration)?);
                print_run(round, &series[index], &run);
                series[index].runs.push(run);
                index += 1;
            }
            if !args.no_redis {
                let mut bench = args.workload.clone();
                bench.workload = workload;
                let run = Run::of(&run_redis_workload(&bench, false)?);
                print_run(round, &series[index], &run);
                series[index].runs.push(run);
                index += 1;
            }
        }
    }
    report(args, &series)?;
    Ok(())
}

fn print_run(round: usize, series: &Series, run: &Run) {
    println!(
        "round {round} {:?} {:<32} {:>8.0} ops/s  write p50 {:>5} us  p99 {:>5} us  errors {}",
        series.workload,
        series.label(),
        run.throughput,
        run.write_p50_us,
        run.write_p99_us,
        run.failures
    );
}

fn report(args: &ReplicationArgs, series: &[Series]) -> Result<()> {
    println!();
    println!(
        "{:<4} {:<32} {:>30} {:>24} {:>24} {:>7}",
        "load",
        "configuration",
        "throughput ops/s median (min..max)",
        "write p50 us median",
        "write p99 us median",
        "errors"
    );
    for one in series {
        let (t, t_low, t_high) = one.median(|run| run.throughput);
        let (p50, p50_low, p50_high) = one.median(|run| run.write_p50_us as f64);
        let (p99, p99_low, p99_high) = one.median(|run| run.write_p99_us as f64);
        println!(
            "{:<4} {:<32} {t:>12.0} ({t_low:.0}..{t_high:.0}) {p50:>10.0} ({p50_low:.0}..{p50_high:.0}) {p99:>10.0} ({p99_low:.0}..{p99_high:.0}) {:>7}",
            format!("{:?}", one.workload),
            one.label(),
            one.runs.iter().map(|run| run.failures).sum::<u64>()
        );
    }
    // The two goals, as per-round ratios.
    for &workload in &args.workloads {
        let find = |mode: &str, replicas: Option<usize>, commit: &str| {
            series.iter().find(|s| {
                s.workload == workload
                    && s.mode == mode
                    && s.replicas == replicas
                    && s.commit == commit
            })
        };
        for mode in args.modes.iter().map(|mode| mode_name(*mode)) {
            for (rule, replicas, base, base_replicas) in [
                ("early:2", 3, "chain", 1),
                ("fanout", 3, "chain", 1),
                ("fanout", 3, "chain", 3),
                ("fanout", 7, "chain", 7),
                ("fanout early:2", 3, "chain", 1),
                ("fanout early:2", 3, "early:2", 3),
                ("fanout early:2", 7, "early:2", 7),
            ] {
                let (Some(measured), Some(single)) = (
                    find(mode, Some(replicas), rule),
                    find(mode, Some(base_replicas), base),
                ) else {
                    continue;
                };
                let ratios: Vec<f64> = measured
                    .runs
                    .iter()
                    .zip(&single.runs)
                    .map(|(e, s)| e.write_p50_us as f64 / s.write_p50_us.max(1) as f64)
                    .collect();
                let (ratio, low, high) = spread(&ratios);
                println!(
                    "{workload:?} {mode}: write p50, {rule} at {replicas} replicas / {base} at {base_replicas}: median {ratio:.2} ({low:.2}..{high:.2})"
                );
            }
        }
        if let Some(redis) = find("redis", None, "async") {
            for (mode, commit) in args.modes.iter().flat_map(|mode| {
                let mode = mode_name(*mode);
                [
                    (mode, "chain"),
                    (mode, "early:2"),
                    (mode, "fanout"),
                    (mode, "fanout early:2"),
                ]
            }) {
                if let Some(tern) = find(mode, Some(3), commit) {
                    let ratios: Vec<f64> = tern
                        .runs
                        .iter()
                        .zip(&redis.runs)
                        .map(|(t, r)| t.throughput / r.throughput.max(1.0))
                        .collect();
                    let (ratio, low, high) = spread(&ratios);
                    println!(
                        "{workload:?}: throughput, tern {mode} 3 replicas {commit} / redis with 2 async replicas: median {ratio:.2} ({low:.2}..{high:.2})"
                    );
                }
            }
        }
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let json = serde_json::to_string_pretty(series).context("serializing the figures")?;
        std::fs::write(out.join("replication.json"), json)?;
        std::fs::write(out.join("replication.svg"), plot(args, series))?;
        println!(
            "figures: {}, plot: {}",
            out.join("replication.json").display(),
            out.join("replication.svg").display()
        );
    }
    Ok(())
}

/// Write p50 against replicas, a panel per workload, a curve per rule
/// (Redis, which has one configuration, as a flat line).
fn plot(args: &ReplicationArgs, series: &[Series]) -> String {
    let x_max = args.replica_counts.iter().copied().max().unwrap_or(1) as f64;
    let mut panels = Vec::new();
    for &workload in &args.workloads {
        let mut lines = Vec::new();
        let mut rules: Vec<(&str, &str)> = Vec::new();
        for one in series.iter().filter(|s| s.workload == workload) {
            if !rules.contains(&(one.mode.as_str(), one.commit.as_str())) {
                rules.push((&one.mode, &one.commit));
            }
        }
        let names: Vec<String> = rules
            .iter()
            .map(|(mode, rule)| match *mode {
                "redis" => "redis async".to_string(),
                mode => format!("{mode} {rule}"),
            })
            .collect();
        for ((&(mode, rule), name), color) in rules.iter().zip(&names).zip(COLORS) {
            let points: Vec<(f64, f64)> = series
                .iter()
                .filter(|s| s.workload == workload && s.mode == mode && s.commit == rule)
                .flat_map(|s| {
                    let p50 = s.median(|run| run.write_p50_us as f64).0;
                    match s.replicas {
                        Some(replicas) => vec![(replicas as f64, p50)],
                        None => vec![(1.0, p50), (x_max, p50)],
                    }
                })
                .collect();
            lines.push(Curve {
                name: name.clone(),
                color,
                points,
            });
        }
        panels.push((format!("workload {workload:?}: write p50 (us)"), lines));
    }
    curves(
        &format!(
            "write latency against replicas: {} clients, {} medians",
            args.workload.clients, args.repeat
        ),
        "replicas per shard",
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: ReplicationArgs,
    }

    #[test]
    fn early_commit_runs_only_where_the_chain_is_longer_than_k_and_fanout_from_two() {
        let args = <Command as clap::Parser>::parse_from(["bench"]).args;
        let configured = configurations(&args);
        assert_eq!(configured.len(), 30, "15 per mode");
        let user: Vec<(usize, String)> = configured
            .iter()
            .filter(|(mode, ..)| *mode == ClusterMode::User)
            .map(|&(_, replicas, fanout, k)| (replicas, rule_name(fanout, k)))
            .collect();
        let expected: Vec<(usize, String)> = [
            (1, "chain"),
            (2, "chain"),
            (2, "fanout"),
            (3, "chain"),
            (3, "early:2"),
            (3, "fanout"),
            (3, "fanout early:2"),
            (5, "chain"),
            (5, "early:2"),
            (5, "fanout"),
            (5, "fanout early:2"),
            (7, "chain"),
            (7, "early:2"),
            (7, "fanout"),
            (7, "fanout early:2"),
        ]
        .into_iter()
        .map(|(replicas, rule)| (replicas, rule.to_string()))
        .collect();
        assert_eq!(user, expected);
        let args = <Command as clap::Parser>::parse_from([
            "bench",
            "--replica-counts",
            "2,3",
            "--commits",
            "early:1,early:3",
            "--modes",
            "xdp",
            "--replications",
            "chain",
        ])
        .args;
        assert_eq!(
            configurations(&args),
            [
                (ClusterMode::Xdp, 2, false, 1),
                (ClusterMode::Xdp, 3, false, 1)
            ]
        );
    }
}
