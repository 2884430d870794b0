//! `tern bench compare`: the same workload against several targets (Tern in
//! its coordinator modes, Redis with and without synchronous replication),
//! alternating (A B A B ...) so that drifts of a noisy machine hit every
//! target alike; reports medians with min and max and per-round ratios.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tern_bench::{BenchArgs, BenchReport, Driver};
use tern_client::ClusterMap;

use crate::DurabilityArg;
use crate::cluster::{self, ClusterCommand, ClusterMode, TopologyKind};

/// Replicas behind the Redis primary, as Tern's chains have three copies.
const REDIS_REPLICAS: usize = 2;
/// Redis waits 5 s (repl-diskless-sync-delay) before it syncs a replica, and
/// again for one that arrives during a sync.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a comparison runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Tern, user-space coordinator, netns topology.
    User,
    /// Tern, XDP coordinator, netns topology.
    Xdp,
    /// Tern, user-space coordinator, every process on loopback (as Redis).
    UserLoopback,
    /// Redis: a primary and two replicas on loopback, asynchronous replication.
    Redis,
    /// Redis as above, `WAIT 2 0` after every write (synchronous to both replicas).
    RedisWait,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::User => "user",
            Target::Xdp => "xdp",
            Target::UserLoopback => "user-loopback",
            Target::Redis => "redis",
            Target::RedisWait => "redis-wait",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Targets to compare; each round runs them in this order; ratios are to the first.
    #[arg(
        long,
        visible_alias = "modes",
        value_enum,
        value_delimiter = ',',
        default_value = "user,xdp"
    )]
    pub targets: Vec<Target>,
    /// Rounds: each target runs this many times.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Tern replica durability (none: like Redis without persistence).
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
    failures: u64,
}

impl From<&BenchReport> for Sample {
    fn from(report: &BenchReport) -> Self {
        Sample {
            throughput: report.throughput,
            p50_us: report.all.p50_us,
            p99_us: report.all.p99_us,
            failures: report.failures(),
        }
    }
}

/// (median, min, max).
pub(crate) fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    };
    (median, sorted[0], sorted[sorted.len() - 1])
}

fn run_tern(dir: &Path, args: &CompareArgs, target: Target) -> Result<BenchReport> {
    let (mode, topology) = match target {
        Target::User => (ClusterMode::User, TopologyKind::Netns),
        Target::Xdp => (ClusterMode::Xdp, TopologyKind::Netns),
        _ => (ClusterMode::User, TopologyKind::Loopback),
    };
    cluster::up_for_benchmark(
        dir,
        args.shards,
        args.replicas,
        mode,
        topology,
        args.durability,
    )?;
    bench_then_down(dir, &args.workload)
}

/// Runs `workload` with the Tern driver against the cluster just started
/// in `dir`, then stops the cluster whatever the run's outcome.
pub(crate) fn bench_then_down(dir: &Path, workload: &BenchArgs) -> Result<BenchReport> {
    let result = (|| {
        let map = ClusterMap::load(&dir.join("cluster.toml"))?;
        let mut workload = workload.clone();
        workload.driver = Driver::Tern;
        tern_bench::run(Some(&map), &workload)
    })();
    cluster::run(ClusterCommand::Down {
        dir: dir.to_path_buf(),
    })?;
    result
}

/// Redis processes, killed when dropped.
struct RedisGroup(Vec<Child>);

impl Drop for RedisGroup {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn start_redis(port: u16, primary: Option<u16>) -> Result<Child> {
    let mut command = Command::new("redis-server");
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    if let Some(primary) = primary {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (install redis-server; scripts/install-deps.sh does)")
}

/// A primary with its replicas, up and replicating.
fn redis_group() -> Result<(RedisGroup, u16)> {
    let primary = free_port()?;
    let mut group = RedisGroup(vec![start_redis(primary, None)?]);
    for _ in 0..REDIS_REPLICAS {
        group.0.push(start_redis(free_port()?, Some(primary))?);
    }
    let started = Instant::now();
    loop {
        let ready = (|| -> redis::RedisResult<bool> {
            let mut connection =
                redis::Client::open(format!("redis://127.0.0.1:{primary}/"))?.get_connection()?;
            redis::cmd("SET")
                .arg("tern-compare-probe")
                .arg("1")
                .query::<()>(&mut connection)?;
            let replicas: usize = redis::cmd("WAIT")
                .arg(REDIS_REPLICAS)
                .arg(100)
                .query(&mut connection)?;
            Ok(replicas >= REDIS_REPLICAS)
        })();
        if matches!(ready, Ok(true)) {
            return Ok((group, primary));
        }
        if started.elapsed() > REDIS_READY_TIMEOUT {
            bail!("redis primary and replicas not ready after {REDIS_READY_TIMEOUT:?}: {ready:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_redis(args: &CompareArgs, target: Target) -> Result<BenchReport> {
    run_redis_workload(&args.workload, target == Target::RedisWait)
}

/// `workload` against a Redis primary with two replicas on loopback,
/// asynchronous unless `wait` (WAIT for both after every write).
pub(crate) fn run_redis_workload(workload: &BenchArgs, wait: bool) -> Result<BenchReport> {
    let (_group, port) = redis_group()?;
    let mut workload = workload.clone();
    workload.driver = Driver::Resp;
    workload.resp_address = format!("127.0.0.1:{port}");
    workload.resp_wait = wait.then_some(REDIS_REPLICAS as u32);
    workload.pipeline = 1;
    tern_bench::run(None, &workload)
}

pub fn run(args: &CompareArgs) -> Result<()> {
    if args.targets.len() < 2 {
        bail!("--targets takes two or more of user, xdp, user-loopback, redis, redis-wait");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let workload = &args.workload;
    let names: Vec<&str> = args.targets.iter().map(|target| target.name()).collect();
    println!(
        "compare {}: {} rounds; Tern {} shard(s) x {} replicas, durability {:?}; workload {:?}, {} clients, {} records, {}-byte values, {:?} per run",
        names.join(", "),
        args.repeat,
        args.shards,
        args.replicas,
        args.durability,
        workload.workload,
        workload.clients,
        workload.keys,
        workload.value_size,
        workload.duration
    );
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); args.targets.len()];
    for round in 1..=args.repeat {
        for (index, target) in args.targets.iter().enumerate() {
            let report = match target {
                Target::Redis | Target::RedisWait => run_redis(args, *target)?,
                _ => run_tern(
                    &scratch
                        .path()
                        .join(format!("round{round}-{}", target.name())),
                    args,
                    *target,
                )?,
            };
            let sample = Sample::from(&report);
            println!(
                "round {round} {:<13} {:>9.0} ops/s  p50 {:>5} us  p99 {:>5} us  errors {}",
                target.name(),
                sample.throughput,
                sample.p50_us,
                sample.p99_us,
                sample.failures
            );
            samples[index].push(sample);
        }
    }
    println!();
    println!(
        "{:<13} {:>32} {:>20} {:>20} {:>7}",
        "target", "throughput ops/s median (min..max)", "p50 us median", "p99 us median", "errors"
    );
    for (target, runs) in args.targets.iter().zip(&samples) {
        let column =
            |value: fn(&Sample) -> f64| spread(&runs.iter().map(value).collect::<Vec<_>>());
        let (t, t_min, t_max) = column(|s| s.throughput);
        let (p50, p50_min, p50_max) = column(|s| s.p50_us as f64);
        let (p99, p99_min, p99_max) = column(|s| s.p99_us as f64);
        println!(
            "{:<13} {:>9.0} ({:.0}..{:.0}) {:>10.0} ({:.0}..{:.0}) {:>10.0} ({:.0}..{:.0}) {:>7}",
            target.name(),
            t,
            t_min,
            t_max,
            p50,
            p50_min,
            p50_max,
            p99,
            p99_min,
            p99_max,
            runs.iter().map(|s| s.failures).sum::<u64>()
        );
    }
    let base = &samples[0];
    for (target, runs) in args.targets.iter().zip(&samples).skip(1) {
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
            target.name(),
            args.targets[0].name(),
            ratios.len()
        );
    }
    Ok(())
}

/// How a transaction benchmark is compared across coordinator modes.
#[derive(Debug, clap::Args)]
pub struct TxnCompareArgs {
    /// Coordinator modes to compare, in this order each round; ratios are
    /// to the first.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "user,xdp")]
    pub modes: Vec<ClusterMode>,
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    #[arg(long, value_enum, default_value_t = DurabilityArg::None)]
    pub durability: DurabilityArg,
}

/// `tern bench smallbank-compare`.
#[derive(Debug, clap::Args)]
pub struct SmallbankCompareArgs {
    #[command(flatten)]
    pub compare: TxnCompareArgs,
    #[command(flatten)]
    pub workload: tern_bench::smallbank::SmallbankArgs,
}

/// `tern bench tatp-compare`.
#[derive(Debug, clap::Args)]
pub struct TatpCompareArgs {
    #[command(flatten)]
    pub compare: TxnCompareArgs,
    #[command(flatten)]
    pub workload: tern_bench::tatp::TatpArgs,
}

pub fn run_smallbank(args: &SmallbankCompareArgs) -> Result<()> {
    let workload = &args.workload;
    let about = format!(
        "smallbank, {} accounts ({} hot), {} clients, {:?} per run",
        workload.accounts, workload.hot, workload.mix.clients, workload.mix.duration
    );
    run_txn_compare(&args.compare, &about, ["SendPayment", "Balance"], |map| {
        Ok(tern_bench::smallbank::run(map, workload)?.mix)
    })
}

pub fn run_tatp(args: &TatpCompareArgs) -> Result<()> {
    let workload = &args.workload;
    let about = format!(
        "tatp, {} subscribers, {} clients, {:?} per run",
        workload.subscribers, workload.mix.clients, workload.mix.duration
    );
    run_txn_compare(
        &args.compare,
        &about,
        ["GetSubscriberData", "UpdateLocation"],
        |map| Ok(tern_bench::tatp::run(map, workload)?.mix),
    )
}

/// The CPU time of a cluster's coordinators, sampled through a run: user
/// and system time of each coordinator process, plus the run time of the
/// XDP programs (the kernel's part in XDP mode; the softirq work around
/// them, driver and veth, is nobody's here).
struct CpuProbe {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
    _run_time: Option<tern_coord::xdp::RunTimeStats>,
}

/// How often the probe samples.
const CPU_SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// User plus system time of process `pid`, in nanoseconds.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), in ")".
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: a plain query of a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / per_second)
}

impl CpuProbe {
    fn start(dir: &Path) -> Result<CpuProbe> {
        let pids: Vec<u32> = cluster::read_table(dir)?
            .process
            .iter()
            .filter(|entry| {
                entry
                    .role()
                    .is_some_and(cluster::ProcessRole::is_coordinator)
            })
            .map(|entry| entry.pid)
            .collect();
        // Without BPF_ENABLE_STATS (an older kernel) the kernel's part reads 0.
        let run_time = tern_coord::xdp::count_run_time().ok();
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let user: u64 = pids.iter().filter_map(|pid| process_cpu_ns(*pid)).sum();
                    let cpu = user + tern_coord::xdp::program_run_ns();
                    samples
                        .lock()
                        .expect("the sampler never panics holding it")
                        .push((Instant::now(), cpu));
                    std::thread::sleep(CPU_SAMPLE_EVERY);
                }
            })
        };
        Ok(CpuProbe {
            samples,
            stop,
            sampler: Some(sampler),
            _run_time: run_time,
        })
    }

    /// Coordinator CPU time between the samples nearest `from` and `until`,
    /// in nanoseconds.
    fn between(mut self, (from, until): (Instant, Instant)) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
        let samples = self.samples.lock().expect("the sampler has stopped");
        let at = |when: Instant| {
            samples
                .iter()
                .min_by_key(|(taken, _)| (*taken).max(when) - (*taken).min(when))
                .map_or(0, |(_, cpu)| *cpu)
        };
        at(until).saturating_sub(at(from))
    }
}

/// Runs a transaction benchmark in every mode `repeat` times, alternating,
/// each run on a fresh netns cluster; prints each run (with the p50 of two
/// of its types and the coordinators' CPU time per committed transaction
/// over the measured part), the medians (min..max) and the per-round
/// ratios of committed transactions per second to the first mode.
fn run_txn_compare(
    args: &TxnCompareArgs,
    about: &str,
    shown: [&str; 2],
    run: impl Fn(&ClusterMap) -> Result<tern_bench::mix::MixReport>,
) -> Result<()> {
    if args.modes.len() < 2 || args.repeat == 0 {
        bail!("--modes takes two modes and --repeat at least 1");
    }
    println!(
        "compare {:?}: {} rounds; {} shard(s) x {} replicas, durability {:?}; {about}",
        args.modes, args.repeat, args.shards, args.replicas, args.durability
    );
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut committed: Vec<Vec<f64>> = vec![Vec::new(); args.modes.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); args.modes.len()];
    for round in 1..=args.repeat {
        for (index, mode) in args.modes.iter().enumerate() {
            let dir = scratch.path().join(format!("round{round}-{mode:?}"));
            cluster::up_for_benchmark(
                &dir,
                args.shards,
                args.replicas,
                *mode,
                TopologyKind::Netns,
                args.durability,
            )?;
            let probe = CpuProbe::start(&dir)?;
            let report = ClusterMap::load(&dir.join("cluster.toml"))
                .map_err(anyhow::Error::from)
                .and_then(|map| run(&map));
            let report = report.map(|report| {
                let cpu_ns = probe.between(report.measured);
                (cpu_ns, report)
            });
            cluster::run(ClusterCommand::Down { dir: dir.clone() })?;
            let (cpu_ns, report) = report?;
            let cpu_us_per_commit = cpu_ns as f64 / 1000.0 / report.committed.max(1) as f64;
            println!(
                "round {round} {:<5} committed {:>7.0}/s  attempted {:>7.0}/s  conflicts {}+{}  failed {}  coordinator CPU {cpu_us_per_commit:.1} us/commit  p50 {} {} us, {} {} us",
                format!("{mode:?}"),
                report.committed_per_s,
                report.attempted_per_s,
                report.conflicts_changed,
                report.conflicts_locked,
                report.failed,
                shown[0],
                report.p50_of(shown[0]),
                shown[1],
                report.p50_of(shown[1]),
            );
            committed[index].push(report.committed_per_s);
            cpu[index].push(cpu_us_per_commit);
        }
    }
    println!();
    for ((mode, runs), cpu) in args.modes.iter().zip(&committed).zip(&cpu) {
        let (median, low, high) = spread(runs);
        let (cpu_median, _, _) = spread(cpu);
        println!(
            "{mode:?}: committed/s median {median:.0} ({low:.0}..{high:.0}), coordinator CPU median {cpu_median:.1} us/commit"
        );
    }
    for (mode, runs) in args.modes.iter().zip(&committed).skip(1) {
        let ratios: Vec<f64> = runs
            .iter()
            .zip(&committed[0])
            .map(|(run, base)| run / base)
            .collect();
        let (ratio, low, high) = spread(&ratios);
        println!(
            "{mode:?}/{:?}: median of per-round ratios {ratio:.2}x ({low:.2}..{high:.2})",
            args.modes[0]
        );
    }
    Ok(())
}
