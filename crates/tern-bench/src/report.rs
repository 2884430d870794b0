//! What a run measured: HDR histograms per operation, a per-second series,
//! errors; printed as a table, written as JSON.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tern_client::ClientError;

use crate::BenchArgs;
use crate::workload::{Mix, OpKind};

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// One worker's measurements, merged into the report at the end.
#[derive(Debug)]
pub(crate) struct Recorder {
    run_start: Instant,
    per_op: Vec<Histogram<u64>>,
    errors: Vec<u64>,
    timeouts: Vec<u64>,
    /// (operations completed, latency histogram) per second of the run.
    series: Vec<(u64, Histogram<u64>)>,
}

impl Recorder {
    pub(crate) fn new(run_start: Instant) -> Self {
        Recorder {
            run_start,
            per_op: OpKind::ALL.iter().map(|_| histogram()).collect(),
            errors: vec![0; OpKind::ALL.len()],
            timeouts: vec![0; OpKind::ALL.len()],
            series: Vec::new(),
        }
    }

    /// Records an operation that started (or was meant to start) at
    /// `started` and finished now with `result`.
    pub(crate) fn record(
        &mut self,
        kind: OpKind,
        started: Instant,
        result: Result<(), ClientError>,
    ) {
        let now = Instant::now();
        match result {
            Ok(()) => {
                let micros = (now.duration_since(started).as_micros() as u64).max(1);
                self.per_op[kind.index()].saturating_record(micros);
                let second = now.saturating_duration_since(self.run_start).as_secs() as usize;
                while self.series.len() <= second {
                    self.series.push((0, histogram()));
                }
                self.series[second].0 += 1;
                self.series[second].1.saturating_record(micros);
            }
            Err(ClientError::Timeout { .. }) => self.timeouts[kind.index()] += 1,
            Err(_) => self.errors[kind.index()] += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: Recorder) {
        for (mine, theirs) in self.per_op.iter_mut().zip(&other.per_op) {
            mine.add(theirs).expect("same bounds");
        }
        for index in 0..OpKind::ALL.len() {
            self.errors[index] += other.errors[index];
            self.timeouts[index] += other.timeouts[index];
        }
        for (second, (count, latency)) in other.series.into_iter().enumerate() {
            while self.series.len() <= second {
                self.series.push((0, histogram()));
            }
            self.series[second].0 += count;
            self.series[second].1.add(&latency).expect("same bounds");
        }
    }
}

/// Latency figures of one operation type (or of all), in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub name: String,
    pub count: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl OpReport {
    fn of(name: &str, latency: &Histogram<u64>, errors: u64, timeouts: u64) -> Self {
        OpReport {
            name: name.to_string(),
            count: latency.len(),
            errors,
            timeouts,
            mean_us: latency.mean(),
            p50_us: latency.value_at_quantile(0.50),
            p90_us: latency.value_at_quantile(0.90),
            p99_us: latency.value_at_quantile(0.99),
            p999_us: latency.value_at_quantile(0.999),
            max_us: latency.max(),
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct SecondReport {
    pub second: u64,
    pub ops: u64,
    pub p99_us: u64,
}

/// Everything a run measured, with its configuration.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub config: BenchArgs,
    pub mix: Mix,
    pub elapsed_s: f64,
    pub throughput: f64,
    pub completed: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Operation types that ran.
    pub operations: Vec<OpReport>,
    pub all: OpReport,
    pub series: Vec<SecondReport>,
    /// Moments to mark on the plot (e.g. a migration starting).
    pub events: Vec<Event>,
}

/// Something that happened during a run, at `second` since its start.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub second: f64,
    pub label: String,
}

impl BenchReport {
    pub(crate) fn build(args: &BenchArgs, mix: Mix, elapsed: Duration, recorder: Recorder) -> Self {
        let mut all = histogram();
        let mut operations = Vec::new();
        for kind in OpKind::ALL {
            let latency = &recorder.per_op[kind.index()];
            all.add(latency).expect("same bounds");
            let (errors, timeouts) = (
                recorder.errors[kind.index()],
                recorder.timeouts[kind.index()],
            );
            if latency.len() + errors + timeouts > 0 {
                operations.push(OpReport::of(kind.name(), latency, errors, timeouts));
            }
        }
        let errors = recorder.errors.iter().sum();
        let timeouts = recorder.timeouts.iter().sum();
        let series = recorder
            .series
            .iter()
            .enumerate()
            .filter(|(second, _)| (*second as f64) < elapsed.as_secs_f64().floor())
            .map(|(second, (ops, latency))| SecondReport {
                second: second as u64,
                ops: *ops,
                p99_us: latency.value_at_quantile(0.99),
            })
            .collect();
        BenchReport {
            config: args.clone(),
            mix,
            elapsed_s: elapsed.as_secs_f64(),
            throughput: all.len() as f64 / elapsed.as_secs_f64(),
            completed: all.len(),
            errors,
            timeouts,
            all: OpReport::of("ALL", &all, errors, timeouts),
            operations,
            series,
            events: Vec::new(),
        }
    }

    /// Errors and timeouts together.
    pub fn failures(&self) -> u64 {
        self.errors + self.timeouts
    }

    /// The human table.
    pub fn print(&self) {
        let args = &self.config;
        let mix = &self.mix;
        let shape = match args.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None if args.pipeline > 1 => format!("closed loop, {} in flight each", args.pipeline),
            None => "closed loop".to_string(),
        };
        println!(
            "workload {:?}: {:.0}% read {:.0}% update {:.0}% insert {:.0}% read-modify-write, {:?} keys, {} records, {}-byte keys, {}-byte values; {} clients, {shape}, {:?} driver, {:.1}s",
            args.workload,
            mix.read * 100.0,
            mix.update * 100.0,
            mix.insert * 100.0,
            mix.read_modify_write * 100.0,
            mix.distribution,
            args.keys,
            args.key_size.max(16),
            args.value_size,
            args.clients,
            args.driver,
            self.elapsed_s
        );
        println!(
            "throughput: {:.0} ops/s ({} ops, {} errors, {} timeouts)",
            self.throughput, self.completed, self.errors, self.timeouts
        );
        println!(
            "{:<7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8}",
            "op", "count", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "errors", "timeouts"
        );
        for op in self.operations.iter().chain(std::iter::once(&self.all)) {
            println!(
                "{:<7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8}",
                op.name,
                op.count,
                op.p50_us,
                op.p90_us,
                op.p99_us,
                op.p999_us,
                op.max_us,
                op.errors,
                op.timeouts
            );
        }
    }
}
