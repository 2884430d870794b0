//! Prometheus metrics of a `cluster up` cluster: every process serves its
//! counters at the address `cluster up` gave it, and a real Prometheus
//! server (Debian's) scrapes them and answers rate queries.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCluster;
use tern_client::Client;

/// Whether `GET path` at `address` answers 200 (Prometheus answers 503
/// until it is ready).
fn http_ok(address: SocketAddrV4, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut response = String::new();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response
            .lines()
            .next()
            .is_some_and(|status| status.contains(" 200 "))
}

/// (content type, body) of `GET path` at `address`.
fn http_get(address: SocketAddrV4, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response}"));
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// The value of the sample `series` (name and labels as exposed) in a
/// scrape.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn cluster_with_gateway() -> TestCluster {
    TestCluster::up_with_args(
        1,
        3,
        &[
            "--topology",
            "loopback",
            "--durability",
            "none",
            "--gateway",
            "--gateway-listen",
            "127.0.0.1:0",
        ],
    )
}

/// (name, data address, metrics address) of every process.
fn metrics_addresses(cluster: &TestCluster) -> Vec<(String, SocketAddrV4, SocketAddrV4)> {
    tern_testbed::cluster::read_table(cluster.dir())
        .unwrap()
        .process
        .into_iter()
        .map(|entry| {
            let metrics = entry
                .metrics
                .unwrap_or_else(|| panic!("{} has no metrics address", entry.name));
            (entry.name, entry.address, metrics)
        })
        .collect()
}

/// A `redis` crate connection to the cluster's gateway.
fn gateway_connection(processes: &[(String, SocketAddrV4, SocketAddrV4)]) -> redis::Connection {
    let gateway = processes
        .iter()
        .find(|(name, ..)| name == "gateway")
        .expect("a gateway")
        .1;
    redis::Client::open(format!("redis://{gateway}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn every_process_serves_its_counters_in_the_openmetrics_format() {
    let cluster = cluster_with_gateway();
    let mut client = Client::new(cluster.map.clone()).unwrap();
    const WRITES: usize = 50;
    for index in 0..WRITES {
        client
            .put(format!("key{index}").as_bytes(), b"value")
            .unwrap();
    }
    let processes = metrics_addresses(&cluster);
    let mut redis = gateway_connection(&processes);
    for _ in 0..3 {
        let _: () = redis::cmd("SET")
            .arg("r")
            .arg("v")
            .query(&mut redis)
            .unwrap();
    }
    let chain = &cluster.map.shards[0].replicas;
    let mut leaders = 0.0;
    for (name, address, metrics) in &processes {
        let (content_type, body) = http_get(*metrics, "/metrics");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{name}: {content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "{name}: {body}");
        let at_least = |series: &str, least: f64| {
            let found =
                value(&body, series).unwrap_or_else(|| panic!("{name}: no {series} in\n{body}"));
            assert!(
                found >= least,
                "{name}: {series} is {found}, wanted {least}+"
            );
        };
        if name == "coordinator" {
            at_least("tern_coordinator_writes_total{shard=\"0\"}", WRITES as f64);
            at_least("tern_coordinator_ready{shard=\"0\"}", 1.0);
            at_least("tern_coordinator_dropped_total{reason=\"truncated\"}", 0.0);
        } else if chain.contains(address) {
            at_least("tern_replica_writes_applied_total", WRITES as f64);
            at_least("tern_replica_applied_seq", WRITES as f64);
            at_least("tern_replica_live_keys", WRITES as f64);
        } else if name.starts_with("meta") {
            at_least("tern_meta_raft_term", 1.0);
            at_least("tern_meta_map_version", 1.0);
            leaders += value(&body, "tern_meta_raft_is_leader").unwrap();
        } else if name == "gateway" {
            at_least("tern_gateway_command_calls_total{command=\"set\"}", 3.0);
            at_least(
                "tern_gateway_command_duration_seconds_count{command=\"set\"}",
                3.0,
            );
            at_least(
                "tern_gateway_command_duration_seconds_bucket{le=\"+Inf\",command=\"set\"}",
                3.0,
            );
            at_least("tern_gateway_connected_clients", 1.0);
        }
    }
    assert_eq!(leaders, 1.0, "one meta leader");
    // A metrics address already taken: the process says which flag.
    let taken = processes[0].2.to_string();
    let output = cluster.tern(&[
        "--identity",
        "shard0-replica0",
        "server",
        "--shard",
        "0",
        "--listen",
        "127.0.0.1:1",
        "--metrics-listen",
        &taken,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--metrics-listen {taken}")),
        "{stderr}"
    );
}

/// The numbers a Prometheus instant query returns, one per series.
fn query(prometheus: SocketAddrV4, expression: &str) -> Vec<f64> {
    let encoded: String = expression
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let (_, body) = http_get(prometheus, &format!("/api/v1/query?query={encoded}"));
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{body}");
    answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| series["value"][1].as_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_prometheus_server_scrapes_every_process_and_answers_rates() {
    let cluster = cluster_with_gateway();
    let processes = metrics_addresses(&cluster);
    let targets: Vec<String> = processes
        .iter()
        .map(|(_, _, metrics)| format!("'{metrics}'"))
        .collect();
    let config = cluster.dir().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: tern\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let port = common::free_port();
    let prometheus_at = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            cluster.dir().join("prometheus").display()
        ))
        .arg(format!("--web.listen-address={prometheus_at}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package; scripts/install-deps.sh installs it)");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(prometheus);
    // Writes for a while, as Prometheus scrapes, some through the gateway.
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let mut redis = gateway_connection(&processes);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut written = 0u64;
    loop {
        for _ in 0..200 {
            client
                .put(format!("key{}", written % 1000).as_bytes(), b"value")
                .unwrap();
            written += 1;
        }
        for _ in 0..20 {
            let _: () = redis::cmd("SET")
                .arg("r")
                .arg("v")
                .query(&mut redis)
                .unwrap();
        }
        let scraped = http_ok(prometheus_at, "/-/ready")
            && query(prometheus_at, "up").len() == processes.len();
        if scraped {
            let up = query(prometheus_at, "sum(up)");
            // Over the same closed window, so both rates count the same
            // scrapes.
            let at = "[10s:1s]";
            let rates = query(
                prometheus_at,
                &format!("avg_over_time(rate(tern_replica_writes_applied_total[3s]){at})"),
            );
            let coordinator = query(
                prometheus_at,
                &format!("avg_over_time(rate(tern_coordinator_writes_total[3s]){at})"),
            );
            // The gateway's latency distribution: a quantile that is a
            // time, above zero and under a second on loopback.
            let p99 = query(
                prometheus_at,
                "histogram_quantile(0.99, sum by (le) (rate(tern_gateway_command_duration_seconds_bucket{command=\"set\"}[5s])))",
            );
            let p99_sane = p99.first().is_some_and(|p99| *p99 > 0.0 && *p99 < 1.0);
            if up == [processes.len() as f64]
                && p99_sane
                && rates.len() == 3
                && rates.iter().all(|rate| *rate > 0.0)
                && coordinator.first().is_some_and(|rate| *rate > 0.0)
                && written > 3000
            {
                // Every write reaches each of the three replicas: together
                // they apply about three times what the coordinator
                // sequences (one may be catching up, in bursts).
                let ratio = rates.iter().sum::<f64>() / coordinator[0];
                assert!(
                    (1.5..=4.5).contains(&ratio),
                    "{rates:?} against {coordinator:?}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw every target up with writes flowing ({written} written): up {}",
            if http_ok(prometheus_at, "/-/ready") {
                http_get(prometheus_at, "/api/v1/query?query=up").1
            } else {
                "(not ready)".to_string()
            }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
