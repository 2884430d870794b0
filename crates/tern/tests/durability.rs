//! Crashes with real processes: under a write load, SIGKILL one replica, then
//! all of them, restart them from their logs, and check that every
//! acknowledged write is there (DESIGN: a crashed node never loses an
//! acknowledged write once persistence exists).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_client::{Client, ClientError};

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 8;
const REPLICAS: [&str; 3] = ["shard0-replica0", "shard0-replica1", "shard0-replica2"];

/// What the writers know about one key: the last value acknowledged, and
/// the values tried after it without an answer (they may have been applied).
#[derive(Clone, Debug, Default)]
struct KeyRecord {
    acknowledged: Option<String>,
    unanswered_since: Vec<String>,
}

type Ledger = Arc<Mutex<HashMap<String, KeyRecord>>>;

/// Writers that own disjoint keys and write increasing values until stopped.
fn start_writers(
    cluster: &TestCluster,
    ledger: &Ledger,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..WRITERS)
        .map(|writer| {
            let mut client = Client::new(cluster.map.clone()).unwrap();
            let (ledger, stop) = (ledger.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acknowledged = 0;
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sequence += 1;
                    let key = format!("w{writer}-k{}", sequence as usize % KEYS_PER_WRITER);
                    let value = format!("w{writer}-v{sequence}");
                    let result = client.put(key.as_bytes(), value.as_bytes());
                    let mut ledger = ledger.lock().unwrap();
                    let record = ledger.entry(key).or_default();
                    match result {
                        Ok(_) => {
                            record.acknowledged = Some(value);
                            record.unanswered_since.clear();
                            acknowledged += 1;
                        }
                        Err(ClientError::Timeout { .. }) => record.unanswered_since.push(value),
                        Err(error) => panic!("writer {writer}: {error}"),
                    }
                }
                acknowledged
            })
        })
        .collect()
}

fn check_every_acknowledged_write(cluster: &TestCluster, ledger: &Ledger) -> usize {
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let ledger = ledger.lock().unwrap();
    let mut checked = 0;
    for (key, record) in ledger.iter() {
        let Some(acknowledged) = &record.acknowledged else {
            continue;
        };
        let read = client
            .get(key.as_bytes())
            .expect("the cluster answers after recovery");
        let read = read.map(|found| String::from_utf8(found.value).unwrap());
        let allowed = std::iter::once(acknowledged).chain(record.unanswered_since.iter());
        assert!(
            allowed.clone().any(|value| Some(value) == read.as_ref()),
            "key {key}: read {read:?}, but {acknowledged:?} was acknowledged (later attempts: {:?})",
            record.unanswered_since
        );
        checked += 1;
    }
    checked
}

#[test]
fn acknowledged_writes_survive_killing_one_replica_and_then_all_of_them() {
    let seed = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u16>) as u64;
    eprintln!("seed {seed} (replay with TERN_TEST_SEED={seed})");
    let mut random = SmallRng::seed_from_u64(seed);
    let cluster =
        TestCluster::up_with_args(1, 3, &["--topology", "loopback", "--durability", "always"]);
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&cluster, &ledger, &stop);
    let started = Instant::now();
    // Rounds: each kills at a random moment under load, then restarts.
    let rounds: Vec<Vec<&str>> = vec![
        vec![REPLICAS[random.random_range(0..3)]],
        REPLICAS.to_vec(),
        vec![REPLICAS[random.random_range(0..3)]],
        REPLICAS.to_vec(),
    ];
    for (round, victims) in rounds.iter().enumerate() {
        let delay = Duration::from_millis(random.random_range(150..600));
        std::thread::sleep(delay);
        eprintln!("round {round}: kill -9 {victims:?} after {delay:?}");
        cluster.kill(victims);
        std::thread::sleep(Duration::from_millis(random.random_range(20..200)));
        cluster.restart_stopped();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acknowledged: u64 = writers
        .into_iter()
        .map(|writer| writer.join().unwrap())
        .sum();
    let checked = check_every_acknowledged_write(&cluster, &ledger);
    eprintln!(
        "{acknowledged} writes acknowledged over {:?}; the last acknowledged value of all {checked} keys is intact",
        started.elapsed()
    );
    assert!(acknowledged > 100, "the load was real");
    assert_eq!(checked, WRITERS * KEYS_PER_WRITER);
}

#[test]
fn without_durability_a_restarted_replica_comes_back_empty() {
    // The counter-test: the same restart with `--durability none` loses the
    // data of the restarted replica, which the replica says in its log
    // (so the check above is not passing by accident).
    let cluster =
        TestCluster::up_with_args(1, 1, &["--topology", "loopback", "--durability", "none"]);
    let mut client = Client::new(cluster.map.clone()).unwrap();
    client.put(b"k", b"v").unwrap();
    cluster.kill(&["shard0-replica0"]);
    std::thread::sleep(Duration::from_millis(100));
    cluster.restart_stopped();
    assert_eq!(client.get(b"k").unwrap(), None);
}
