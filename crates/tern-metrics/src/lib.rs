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
        let Some(mut samples) = (self.source)() else {
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
        samples.counter("metrics_connections_refused", refused_connections());
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

/// Scrapes served at once; a connection beyond is closed at once (and
/// counted), so that no client can hold the endpoint's memory or threads.
pub const CONNECTIONS_MAX: usize = 8;
/// How long a connection may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may stay open, requests and answers included.
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(10);
/// Bytes a connection may have buffered (a request head is a few hundred).
const BUFFER_MAX: usize = 16 * 1024;

/// Connections closed because [`CONNECTIONS_MAX`] were open.
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Connections to the metrics endpoint closed unserved since start (every
/// server of this process).
pub fn refused_connections() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Serves `/metrics` on `listen` from a thread of its own until the
/// process ends: `source` gives the samples at each scrape. Prints
/// [`LISTENING_LINE`] and the address; returns it, or an error that names
/// `listen`. Bounded: at most [`CONNECTIONS_MAX`] connections at once,
/// each with [`HEADER_TIMEOUT`] to send its request, [`BUFFER_MAX`] bytes
/// of buffer and [`CONNECTION_TIME_MAX`] in all (HTTP/1.1 by `hyper`, on a
/// one-thread tokio runtime).
pub fn serve(
    listen: SocketAddr,
    role: &'static str,
    source: impl Fn() -> Option<Samples> + Send + Sync + 'static,
) -> io::Result<SocketAddr> {
    let cannot =
        |error: io::Error| io::Error::other(format!("metrics: cannot listen on {listen}: {error}"));
    let listener = std::net::TcpListener::bind(listen).map_err(cannot)?;
    listener.set_nonblocking(true).map_err(cannot)?;
    let address = listener.local_addr().map_err(cannot)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    println!("{LISTENING_LINE}{address}");
    let registry = Arc::new(registry(role, source));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept_scrapes(listener, registry)))?;
    Ok(address)
}

async fn accept_scrapes(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "metrics: the listener cannot be served");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::debug!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let answer = respond(&registry, &request);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(BUFFER_MAX)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_TIME_MAX, connection).await {
                tracing::debug!(%error, "a metrics scrape went unanswered");
            }
        });
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

/// The answer to one request: the metrics at `/metrics`, 404 elsewhere.
fn respond(
    registry: &Registry,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let answer = |status: u16, content_type: &str, text: String| {
        hyper::Response::builder()
            .status(status)
            .header("Content-Type", content_type)
            .body(Body::from(text))
            .expect("a valid response")
    };
    if request.uri().path() != "/metrics" {
        return answer(404, "text/plain", "see /metrics".into());
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => answer(200, CONTENT_TYPE, text),
        Err(_) => answer(500, "text/plain", "encoding failed".into()),
    }
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

    /// One scrape over a fresh connection: the answer's text, or None when
    /// the connection was closed unanswered.
    fn scrape(address: SocketAddr, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        (!answer.is_empty()).then_some(answer)
    }

    #[test]
    fn the_endpoint_serves_scrapes_and_bounds_its_connections() {
        let address = serve("127.0.0.1:0".parse().unwrap(), "test", || {
            let mut samples = Samples::new();
            samples.counter("writes", 3);
            Some(samples)
        })
        .unwrap();
        let answer = scrape(address, "/metrics").expect("answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("tern_test_writes_total 3"), "{answer}");
        assert!(
            scrape(address, "/other")
                .unwrap()
                .starts_with("HTTP/1.1 404")
        );
        // Idle connections take every place: one more is closed unserved.
        let idle: Vec<_> = (0..CONNECTIONS_MAX)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let refused_before = refused_connections();
        assert_eq!(scrape(address, "/metrics"), None);
        assert!(refused_connections() > refused_before);
        // The idle ones run out of time to send a request; scrapes go on.
        std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(500));
        let answer = scrape(address, "/metrics").expect("answered again");
        assert!(
            answer.contains("tern_test_metrics_connections_refused_total"),
            "{answer}"
        );
        drop(idle);
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
