//! Prometheus metrics of a Tern process (`--metrics-listen`): the samples
//! every process already keeps for STATS (`tern_proto::metrics`), rendered
//! at each scrape in the OpenMetrics text format (by `prometheus-client`)
//! and served over HTTP at `/metrics`.
//!
//! Nothing is added to the per-request path: a process whose state lives
//! in its main loop (replica, coordinator) hands a snapshot over through
//! [`Snapshots`] only when a scrape asks for one, which costs the loop one
//! relaxed atomic load per batch otherwise; the others (meta, gateway)
//! read their atomics or watches from the HTTP thread.
//!
//! Names: `tern_<role>_<name>` (counters get `_total`), the shard as a
//! `shard` label, drops as `tern_<role>_dropped_total{reason=...}`, the XDP
//! program's counters as `tern_<role>_xdp_<name>_total` with a `cpu`
//! label per CPU.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tern_proto::metrics::{Group, Histogram, Kind, Sample, Samples};

/// How long a scrape waits for a main loop's snapshot (the loop looks
/// every few milliseconds).
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(2);
/// What a scrape answers.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where a main loop hands the HTTP thread a snapshot of its samples.
#[derive(Debug, Default)]
pub struct Snapshots {
    wanted: AtomicBool,
    slot: Mutex<Option<Samples>>,
    filled: Condvar,
    /// One scrape at a time.
    scrape: Mutex<()>,
}

impl Snapshots {
    pub fn new() -> Arc<Snapshots> {
        Arc::new(Snapshots::default())
    }

    /// For the main loop, after every batch: when a scrape waits, makes
    /// the samples and hands them over.
    pub fn serve(&self, make: impl FnOnce() -> Samples) {
        if self.wanted.load(Ordering::Relaxed) && self.wanted.swap(false, Ordering::AcqRel) {
            let samples = make();
            *self.slot.lock().expect("snapshot slot") = Some(samples);
            self.filled.notify_all();
        }
    }

    /// For the HTTP thread: asks the main loop for its samples and waits
    /// for them (None: the loop did not answer in time).
    pub fn take(&self) -> Option<Samples> {
        let _one = self.scrape.lock().expect("scrape lock");
        let mut slot = self.slot.lock().expect("snapshot slot");
        *slot = None;
        self.wanted.store(true, Ordering::Release);
        let (mut slot, _) = self
            .filled
            .wait_timeout_while(slot, SNAPSHOT_PATIENCE, |slot| slot.is_none())
            .expect("snapshot slot");
        self.wanted.store(false, Ordering::Relaxed);
        slot.take()
    }
}

/// The snapshots of this process's main loop (each Tern process has one).
pub fn process_snapshots() -> &'static Arc<Snapshots> {
    static PROCESS: std::sync::OnceLock<Arc<Snapshots>> = std::sync::OnceLock::new();
    PROCESS.get_or_init(Snapshots::new)
}

/// For a process's main loop, after every batch: hands its samples to a
/// scrape that waits for them ([`Snapshots::serve`] on
/// [`process_snapshots`]); one relaxed load when none waits.
pub fn offer(make: impl FnOnce() -> Samples) {
    process_snapshots().serve(make);
}

/// What a scrape reports: `role` names the metrics (`tern_<role>_...`),
/// `source` gives the samples at each scrape (None: unavailable now).
struct Exported {
    role: &'static str,
    source: Box<dyn Fn() -> Option<Samples> + Send + Sync>,
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exported")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A family: its name and kind, and each of its samples: label set,
/// value, histogram.
type Families = BTreeMap<(String, KindKey), Vec<(Vec<(String, String)>, u64, Option<Histogram>)>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KindKey {
    Counter,
    Gauge,
    Histogram,
}

/// The family and labels of one sample.
fn family_of(role: &str, sample: &Sample) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = sample
        .labels
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    if let Some(shard) = sample.shard {
        labels.push(("shard".to_string(), shard.to_string()));
    }
    let name = match sample.group {
        Group::Plain => format!("tern_{role}_{}", sample.name),
        Group::Dropped => {
            labels.push(("reason".to_string(), sample.name.clone()));
            format!("tern_{role}_dropped")
        }
        Group::Xdp => format!("tern_{role}_xdp_{}", sample.name),
    };
    (name, labels)
}

/// Groups `samples` into families, per-CPU values as `cpu` labels.
fn families(role: &str, samples: &Samples) -> Families {
    let mut families = Families::new();
    for sample in &samples.0 {
        let (name, labels) = family_of(role, sample);
        let kind = match sample.kind {
            Kind::Counter => KindKey::Counter,
            Kind::Gauge => KindKey::Gauge,
            Kind::Histogram => KindKey::Histogram,
        };
        let entries = families.entry((name, kind)).or_default();
        if sample.per_cpu.is_empty() {
            entries.push((labels, sample.value, sample.histogram.clone()));
        } else {
            for (cpu, value) in sample.per_cpu.iter().enumerate() {
                let mut labels = labels.clone();
                labels.push(("cpu".to_string(), cpu.to_string()));
                entries.push((labels, *value, None));
            }
        }
    }
    families
}

fn encode_value(
    kind: KindKey,
    value: u64,
    histogram: Option<&Histogram>,
    mut encoder: MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match (kind, histogram) {
        (KindKey::Histogram, Some(histogram)) => {
            encoder.encode_histogram::<NoLabels>(histogram.sum, value, &histogram.buckets, None)
        }
        (KindKey::Counter, _) => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder),
    }
}

/// Exemplars' labels: none are kept.
type NoLabels = Vec<(String, String)>;

impl Collector for Exported {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(samples) = (self.source)() else {
            // The main loop did not answer in time: say so, not zeros.
            let up = ConstGauge::new(0i64);
            let name = format!("tern_{}_up", self.role);
            let family = encoder.encode_descriptor(
                &name,
                "whether the process answered this scrape",
                None,
                up.metric_type(),
            )?;
            return up.encode(family);
        };
        for ((name, kind), entries) in families(self.role, &samples) {
            let metric_type = match kind {
                KindKey::Counter => MetricType::Counter,
                KindKey::Gauge => MetricType::Gauge,
                KindKey::Histogram => MetricType::Histogram,
            };
            let help = name.replace('_', " ");
            let mut family = encoder.encode_descriptor(&name, &help, None, metric_type)?;
            match &entries[..] {
                // No labels: the metric itself, not `name{}`.
                [(labels, value, histogram)] if labels.is_empty() => {
                    encode_value(kind, *value, histogram.as_ref(), family)?
                }
                _ => {
                    for (labels, value, histogram) in &entries {
                        let encoder = family.encode_family(labels)?;
                        encode_value(kind, *value, histogram.as_ref(), encoder)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A registry reporting `source`'s samples as `tern_<role>_...`.
fn registry(
    role: &'static str,
    source: impl Fn() -> Option<Samples> + Send + Sync + 'static,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exported {
        role,
        source: Box::new(source),
    }));
    registry
}

/// What [`serve`] prints, followed by the address it listens on (with
/// port 0, the one the kernel chose): where `cluster up` learns it.
pub const LISTENING_LINE: &str = "metrics listening on ";

/// Serves `/metrics` on `listen` from a thread of its own until the
/// process ends: `source` gives the samples at each scrape. Prints
/// [`LISTENING_LINE`] and the address; returns it, or an error that names
/// `listen`.
pub fn serve(
    listen: SocketAddr,
    role: &'static str,
    source: impl Fn() -> Option<Samples> + Send + Sync + 'static,
) -> io::Result<SocketAddr> {
    let server = tiny_http::Server::http(listen).map_err(|error| {
        io::Error::other(format!("metrics: cannot listen on {listen}: {error}"))
    })?;
    let address = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("metrics: not an IP address"))?;
    println!("{LISTENING_LINE}{address}");
    let registry = registry(role, source);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => tiny_http::Response::from_string(text).with_header(
                            tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                                .expect("a valid header"),
                        ),
                        Err(_) => tiny_http::Response::from_string("encoding failed")
                            .with_status_code(500),
                    }
                } else {
                    tiny_http::Response::from_string("see /metrics").with_status_code(404)
                };
                if let Err(error) = request.respond(response) {
                    tracing::debug!(%error, "a metrics scrape went unanswered");
                }
            }
        })?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenMetrics text of `samples` for a process of `role`.
    fn render(role: &'static str, samples: Samples) -> String {
        let mut text = String::new();
        let registry = registry(role, move || Some(samples.clone()));
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn samples_become_families_with_prometheus_names_and_labels() {
        let mut samples = Samples::new();
        samples.counter("writes_applied", 7);
        samples.gauge("applied_seq", 9);
        samples.add(Kind::Counter, Group::Dropped, None, "truncated", 2);
        samples.add(Kind::Counter, Group::Dropped, None, "bad_magic", 1);
        samples.add(Kind::Counter, Group::Plain, Some(3), "writes", 5);
        samples
            .add(Kind::Counter, Group::Xdp, None, "pass", 5)
            .per_cpu = vec![2, 3];
        samples
            .add(Kind::Histogram, Group::Plain, None, "took_seconds", 3)
            .histogram = Some(Histogram {
            sum: 0.5,
            buckets: vec![(0.1, 2), (1.0, 1), (f64::MAX, 0)],
        });
        let text = render("replica", samples);
        for line in [
            "# TYPE tern_replica_writes_applied counter",
            "tern_replica_writes_applied_total 7",
            "# TYPE tern_replica_applied_seq gauge",
            "tern_replica_applied_seq 9",
            "tern_replica_dropped_total{reason=\"truncated\"} 2",
            "tern_replica_dropped_total{reason=\"bad_magic\"} 1",
            "tern_replica_writes_total{shard=\"3\"} 5",
            "tern_replica_xdp_pass_total{cpu=\"0\"} 2",
            "tern_replica_xdp_pass_total{cpu=\"1\"} 3",
            "# TYPE tern_replica_took_seconds histogram",
            "tern_replica_took_seconds_count 3",
            "tern_replica_took_seconds_bucket{le=\"0.1\"} 2",
            "tern_replica_took_seconds_bucket{le=\"1.0\"} 3",
            "tern_replica_took_seconds_bucket{le=\"+Inf\"} 3",
        ] {
            assert!(
                text.lines().any(|got| got == line),
                "no {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_snapshot_is_made_by_the_loop_only_when_a_scrape_asks() {
        let snapshots = Snapshots::new();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, Ordering::Relaxed);
            let mut samples = Samples::new();
            samples.counter("reads", 1);
            samples
        };
        snapshots.serve(make);
        assert_eq!(made.load(Ordering::Relaxed), 0, "nobody asked");
        let asking = snapshots.clone();
        let scrape = std::thread::spawn(move || asking.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !scrape.is_finished() {
            snapshots.serve(make);
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        let taken = scrape.join().unwrap().expect("answered");
        assert_eq!(taken.get("reads"), Some(1));
        assert_eq!(made.load(Ordering::Relaxed), 1, "once per scrape");
    }
}
