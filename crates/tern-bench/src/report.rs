//! What a run measured: HDR histograms per operation, a time series (per
//! second unless `--interval` says otherwise), errors; printed as a table,
//! written as JSON.

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
    /// (operations completed, latency histogram) per interval of the run.
    series: Vec<(u64, Histogram<u64>)>,
    interval: Duration,
}

impl Recorder {
    pub(crate) fn new(run_start: Instant, interval: Duration) -> Self {
        Recorder {
            run_start,
            interval: interval.max(Duration::from_millis(1)),
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
                let since = now.saturating_duration_since(self.run_start);
                let index = (since.as_nanos() / self.interval.as_nanos()) as usize;
                while self.series.len() <= index {
                    self.series.push((0, histogram()));
                }
                self.series[index].0 += 1;
                self.series[index].1.saturating_record(micros);
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
        for (index, (count, latency)) in other.series.into_iter().enumerate() {
            while self.series.len() <= index {
                self.series.push((0, histogram()));
            }
            self.series[index].0 += count;
            self.series[index].1.add(&latency).expect("same bounds");
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

/// One interval of the run (a second unless `--interval` says otherwise).
#[derive(Clone, Debug, Serialize)]
pub struct IntervalReport {
    /// When it starts, in seconds since the run started.
    pub start_s: f64,
    /// Operations completed in it.
    pub ops: u64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Its latencies, for figures over several intervals (`window`).
    #[serde(skip)]
    pub latency: Histogram<u64>,
}

/// Figures over the intervals of a stretch of a run (`BenchReport::window`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Window {
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub intervals: usize,
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
    /// Length of each interval of `series`, in seconds.
    pub interval_s: f64,
    pub series: Vec<IntervalReport>,
    /// Moments to mark on the plot (e.g. a migration starting).
    pub events: Vec<Event>,
    /// When the measured run started (events are placed relative to it).
    #[serde(skip)]
    pub started: Instant,
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
        let interval = recorder.interval.as_secs_f64();
        // Whole intervals only: the last, cut short, would look like a drop.
        let whole = (elapsed.as_secs_f64() / interval + 1e-9).floor() as usize;
        let series = recorder
            .series
            .into_iter()
            .take(whole)
            .enumerate()
            .map(|(index, (ops, latency))| IntervalReport {
                start_s: index as f64 * interval,
                ops,
                ops_per_s: ops as f64 / interval,
                p50_us: latency.value_at_quantile(0.50),
                p99_us: latency.value_at_quantile(0.99),
                latency,
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
            interval_s: interval,
            series,
            events: Vec::new(),
            started: recorder.run_start,
        }
    }

    /// Seconds from the run's start to `at` (negative before it).
    pub fn seconds_at(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.started) {
            Some(after) => after.as_secs_f64(),
            None => -self.started.duration_since(at).as_secs_f64(),
        }
    }

    /// Throughput and latency over the intervals that lie within
    /// `[from_s, to_s)` (seconds since the start); None when none does.
    pub fn window(&self, from_s: f64, to_s: f64) -> Option<Window> {
        let inside: Vec<&IntervalReport> = self
            .series
            .iter()
            .filter(|interval| {
                interval.start_s >= from_s - 1e-9
                    && interval.start_s + self.interval_s <= to_s + 1e-9
            })
            .collect();
        if inside.is_empty() {
            return None;
        }
        let mut latency = histogram();
        for interval in &inside {
            latency.add(&interval.latency).expect("same bounds");
        }
        let ops: u64 = inside.iter().map(|interval| interval.ops).sum();
        Some(Window {
            ops_per_s: ops as f64 / (inside.len() as f64 * self.interval_s),
            p50_us: latency.value_at_quantile(0.50),
            p99_us: latency.value_at_quantile(0.99),
            intervals: inside.len(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_the_intervals_inside_it_with_their_latencies() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: BenchArgs,
        }
        let args = <Command as clap::Parser>::parse_from(["bench", "--interval", "100ms"]).args;
        let mix = Mix::of(args.workload, args.read_fraction, args.distribution).unwrap();
        let mut recorder = Recorder::new(Instant::now(), args.interval);
        // Ten intervals of 100 ms: 10 operations each of 100 us, except
        // intervals 3 and 4 with 5 operations of 10 ms.
        for index in 0..10 {
            let mut latency = histogram();
            let (ops, micros) = if (3..5).contains(&index) {
                (5, 10_000)
            } else {
                (10, 100)
            };
            latency.record_n(micros, ops).unwrap();
            recorder.series.push((ops, latency));
        }
        // A run of 1.05 s: the last, partial interval is left out.
        recorder.series.push((1, histogram()));
        let report = BenchReport::build(&args, mix, Duration::from_millis(1050), recorder);
        assert_eq!(report.series.len(), 10);
        assert!((report.series[4].start_s - 0.4).abs() < 1e-9);
        let slow = report.window(0.3, 0.5).unwrap();
        assert_eq!(slow.intervals, 2);
        assert!((slow.ops_per_s - 50.0).abs() < 1e-6, "{}", slow.ops_per_s);
        assert!(slow.p99_us >= 9_990, "{}", slow.p99_us);
        let steady = report.window(0.0, 0.3).unwrap();
        assert_eq!(steady.intervals, 3);
        assert!((steady.ops_per_s - 100.0).abs() < 1e-6);
        assert!(steady.p99_us < 200);
        assert!(report.window(2.0, 3.0).is_none());
    }
}
