//! Workloads and the benchmark runner behind `tern bench`.
//!
//! Today: a closed-loop mixed GET/PUT workload over a uniform or scrambled
//! zipfian key set, with a load phase, per-operation HDR latency histograms
//! and counted errors. The YCSB suite, open loop, time series and plots build
//! on this runner.

pub mod distribution;
pub mod persistence;

pub use distribution::KeyChooser;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_client::{Client, ClientError, ClientOptions, ClusterMap, Pipeline, Request};

/// Options of `tern bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients (one thread and one request in flight each).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Length of the measured run, e.g. `10s` or `500ms`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Fraction of operations that are GETs; the rest are PUTs.
    #[arg(long, default_value_t = 0.9)]
    pub read_fraction: f64,
    /// How keys are chosen: uniform, or zipfian (YCSB's scrambled zipfian, theta 0.99).
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Size of each written value in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Requests each client keeps in flight (1 to 16). Above 1, a client is a
    /// pipeline on one socket: far less CPU per request than blocking calls.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub pipeline: u16,
    /// Skip the load phase that writes every key once.
    #[arg(long)]
    pub no_load: bool,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Key distribution of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipfian,
}

/// Parses `10s`, `250ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "m" | "min" => number * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s or m)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Latencies (in microseconds) and error counts of one kind of operation.
#[derive(Debug)]
pub struct OpStats {
    pub name: &'static str,
    pub latency_us: Histogram<u64>,
    pub errors: u64,
    pub timeouts: u64,
}

impl OpStats {
    fn new(name: &'static str) -> Self {
        OpStats {
            name,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
            timeouts: 0,
        }
    }

    fn record(&mut self, started: Instant, result: Result<(), ClientError>) {
        match result {
            Ok(()) => {
                let micros = started.elapsed().as_micros() as u64;
                self.latency_us.saturating_record(micros.max(1));
            }
            Err(ClientError::Timeout { .. }) => self.timeouts += 1,
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: &OpStats) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.errors += other.errors;
        self.timeouts += other.timeouts;
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct BenchReport {
    pub args: BenchArgs,
    pub elapsed: Duration,
    pub operations: Vec<OpStats>,
}

impl BenchReport {
    pub fn completed(&self) -> u64 {
        self.operations.iter().map(|op| op.latency_us.len()).sum()
    }

    pub fn errors(&self) -> u64 {
        self.operations
            .iter()
            .map(|op| op.errors + op.timeouts)
            .sum()
    }

    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64()
    }

    /// Latencies of every operation, in microseconds.
    pub fn latency_all_us(&self) -> Histogram<u64> {
        let mut all = OpStats::new("ALL").latency_us;
        for op in &self.operations {
            all.add(&op.latency_us).expect("same bounds");
        }
        all
    }

    /// The human table.
    pub fn print(&self) {
        let args = &self.args;
        println!(
            "workload: {} clients, {} keys ({:?}), {:.0}% GET / {:.0}% PUT, {}-byte values, {:.1}s",
            args.clients,
            args.keys,
            args.distribution,
            args.read_fraction * 100.0,
            (1.0 - args.read_fraction) * 100.0,
            args.value_size,
            self.elapsed.as_secs_f64()
        );
        println!(
            "throughput: {:.0} ops/s ({} ops, {} errors)",
            self.throughput(),
            self.completed(),
            self.errors()
        );
        println!(
            "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
            "op", "count", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "errors", "timeouts"
        );
        for op in &self.operations {
            let h = &op.latency_us;
            println!(
                "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
                op.name,
                h.len(),
                h.value_at_quantile(0.50),
                h.value_at_quantile(0.90),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                op.errors,
                op.timeouts
            );
        }
    }
}

fn key_name(index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_NAME_LEN);
    write_key_name(index, &mut key);
    key
}

/// Length of every benchmark key (`key:` and 12 digits).
const KEY_NAME_LEN: usize = 16;

/// Writes the name of key `index` into `key` (reused: no allocation).
fn write_key_name(index: u64, key: &mut Vec<u8>) {
    use std::io::Write;
    key.clear();
    let _ = write!(key, "key:{index:012}");
}

/// Runs the workload of `args` against the cluster `map`.
pub fn run(map: &ClusterMap, args: &BenchArgs) -> Result<BenchReport> {
    if args.clients == 0 || args.keys == 0 {
        bail!("need at least one client and one key");
    }
    if !(0.0..=1.0).contains(&args.read_fraction) {
        bail!("--read-fraction must be between 0 and 1");
    }
    if !args.no_load {
        load(map, args)?;
    }
    let running = Arc::new(AtomicBool::new(true));
    let start_line = Arc::new(Barrier::new(args.clients + 1));
    let mut workers = Vec::new();
    for worker in 0..args.clients {
        let connection = if args.pipeline > 1 {
            Connection::Pipelined(Pipeline::new(map.clone(), ClientOptions::default())?)
        } else {
            Connection::Blocking(Client::new(map.clone()).context("creating a client")?)
        };
        let (running, start_line, args) = (running.clone(), start_line.clone(), args.clone());
        workers.push(std::thread::spawn(move || {
            let mut workload = Workload::new(&args, worker);
            start_line.wait();
            match connection {
                Connection::Blocking(client) => closed_loop(client, &mut workload, &running),
                Connection::Pipelined(pipeline) => pipelined(
                    pipeline,
                    usize::from(args.pipeline),
                    &mut workload,
                    &running,
                ),
            }
            [workload.gets, workload.puts]
        }));
    }
    start_line.wait();
    let started = Instant::now();
    std::thread::sleep(args.duration);
    running.store(false, Ordering::Relaxed);
    let mut operations = vec![OpStats::new("GET"), OpStats::new("PUT")];
    for worker in workers {
        let stats = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        for (total, part) in operations.iter_mut().zip(stats.iter()) {
            total.merge(part);
        }
    }
    Ok(BenchReport {
        args: args.clone(),
        elapsed: started.elapsed(),
        operations,
    })
}

/// How a worker talks to the cluster.
enum Connection {
    /// One request at a time, blocking.
    Blocking(Client),
    /// Up to `--pipeline` requests in flight.
    Pipelined(Pipeline),
}

/// One worker's random choices and its statistics.
struct Workload {
    random: SmallRng,
    keys: KeyChooser,
    read_fraction: f64,
    value: Vec<u8>,
    key: Vec<u8>,
    gets: OpStats,
    puts: OpStats,
}

/// Token of a pipelined request: which kind of operation it is.
const TOKEN_GET: u64 = 0;
const TOKEN_PUT: u64 = 1;

impl Workload {
    fn new(args: &BenchArgs, worker: usize) -> Self {
        Workload {
            random: SmallRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) + worker as u64),
            keys: match args.distribution {
                Distribution::Uniform => KeyChooser::uniform(args.keys),
                Distribution::Zipfian => KeyChooser::scrambled_zipfian(args.keys),
            },
            read_fraction: args.read_fraction,
            value: vec![b'v'; args.value_size],
            key: Vec::with_capacity(KEY_NAME_LEN),
            gets: OpStats::new("GET"),
            puts: OpStats::new("PUT"),
        }
    }

    /// Chooses the next key (into `self.key`) and whether it is a read.
    fn next(&mut self) -> bool {
        write_key_name(self.keys.next(&mut self.random), &mut self.key);
        self.random.random_bool(self.read_fraction)
    }
}

fn closed_loop(mut client: Client, workload: &mut Workload, running: &AtomicBool) {
    while running.load(Ordering::Relaxed) {
        let read = workload.next();
        let started = Instant::now();
        if read {
            workload
                .gets
                .record(started, client.get(&workload.key).map(drop));
        } else {
            let result = client.put(&workload.key, &workload.value).map(drop);
            workload.puts.record(started, result);
        }
    }
}

fn pipelined(mut pipeline: Pipeline, depth: usize, workload: &mut Workload, running: &AtomicBool) {
    let mut completed = Vec::with_capacity(depth);
    while running.load(Ordering::Relaxed) {
        while pipeline.in_flight() < depth {
            let read = workload.next();
            let (request, token) = if read {
                (Request::Get, TOKEN_GET)
            } else {
                (Request::Put(&workload.value), TOKEN_PUT)
            };
            if let Err(error) = pipeline.submit(request, &workload.key, token) {
                let stats = if read {
                    &mut workload.gets
                } else {
                    &mut workload.puts
                };
                stats.record(Instant::now(), Err(error));
            }
        }
        if let Err(error) = pipeline.poll(&mut completed) {
            workload.gets.record(Instant::now(), Err(error));
        }
        for completion in completed.drain(..) {
            let stats = if completion.token == TOKEN_GET {
                &mut workload.gets
            } else {
                &mut workload.puts
            };
            let result = completion.result.and_then(|reply| match reply.status {
                tern_wire::Status::Ok | tern_wire::Status::NotFound => Ok(()),
                status => Err(ClientError::Refused { status }),
            });
            stats.record(completion.submitted, result);
        }
    }
}

/// Writes every key once, spread over the clients.
fn load(map: &ClusterMap, args: &BenchArgs) -> Result<()> {
    let value = vec![b'v'; args.value_size];
    let loaders: Vec<_> = (0..args.clients as u64)
        .map(|worker| {
            let mut client = Client::new(map.clone())?;
            let (value, keys, clients) = (value.clone(), args.keys, args.clients as u64);
            Ok(std::thread::spawn(move || -> Result<(), ClientError> {
                for index in (worker..keys).step_by(clients as usize) {
                    client.put(&key_name(index), &value)?;
                }
                Ok(())
            }))
        })
        .collect::<Result<_>>()?;
    for loader in loaders {
        loader
            .join()
            .map_err(|_| anyhow::anyhow!("a loader thread panicked"))?
            .context("load phase")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("3 fortnights").is_err());
    }
}
