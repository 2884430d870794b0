//! Workloads and the benchmark runner behind `tern bench`.
//!
//! YCSB's core workloads A-F (E is refused: no scans) or a custom GET/PUT mix,
//! over uniform, scrambled zipfian or latest keys, with a load phase and a
//! run phase; closed loop (N clients, one request or a pipeline each) or
//! open loop (a target rate, latency measured from each request's intended
//! send time, so coordinated omission is corrected); HDR histograms per
//! operation, a per-second time series, JSON and SVG output. Drivers: Tern's
//! client, or RESP for any Redis-protocol server.

pub mod distribution;
pub mod mix;
pub mod persistence;
pub mod plot;
mod report;
mod run;
pub mod smallbank;
pub mod tatp;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

pub use distribution::KeyChooser;
pub use report::{BenchReport, Event, IntervalReport, OpReport, Window};
pub use run::run;
pub use workload::{Distribution, Mix, OpKind, WorkloadName};

/// Which client talks to the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Tern's client library (blocking, or pipelined with --pipeline).
    Tern,
    /// RESP (the Redis protocol), against --resp-address.
    Resp,
}

/// Options of `tern bench`.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct BenchArgs {
    /// YCSB core workload (a-f; e is not supported), or custom.
    #[arg(long, value_enum, default_value_t = WorkloadName::Custom)]
    pub workload: WorkloadName,
    /// Concurrent clients (one thread each).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Length of the measured run, e.g. `10s` or `500ms`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Records written by the load phase (YCSB recordcount).
    #[arg(long = "records", alias = "keys", default_value_t = 1000)]
    pub keys: u64,
    /// Custom workload: fraction of operations that are reads.
    #[arg(long, default_value_t = 0.9)]
    pub read_fraction: f64,
    /// Key distribution (default: the workload's).
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Size of each written value in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Size of each key in bytes (a zero-padded number; at least 16).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Requests each Tern client keeps in flight (1 to 16).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub pipeline: u16,
    /// Open loop: target operations per second of all clients together;
    /// latency counts from each request's intended send time.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Skip the load phase.
    #[arg(long)]
    pub no_load: bool,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Driver::Tern)]
    pub driver: Driver,
    /// RESP driver: the server's address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub resp_address: String,
    /// RESP driver: send `WAIT N 0` after every write (N replicas acknowledge).
    #[arg(long)]
    pub resp_wait: Option<u32>,
    /// Write every figure and the configuration as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and p50/p99 latency per interval as SVG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Length of each interval of the time series, e.g. `1s` or `100ms`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "seconds")]
    pub interval: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// The name of benchmark key `index`, `key_size` bytes long (at least 16).
pub fn key_name(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(key_size.max(KEY_NAME_LEN));
    write_key_name(index, key_size, &mut key);
    key
}

/// Length of the shortest benchmark key (`key:` and 12 digits).
const KEY_NAME_LEN: usize = 16;

/// Writes the name of key `index` into `key` (reused: no allocation).
pub fn write_key_name(index: u64, key_size: usize, key: &mut Vec<u8>) {
    use std::io::Write;
    key.clear();
    let digits = key_size.max(KEY_NAME_LEN) - 4;
    let _ = write!(key, "key:{index:0digits$}");
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
