//! Concurrent clients against a real cluster of real processes; the recorded
//! history must be linearizable (DESIGN.md, "Consistency").

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::TestCluster;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_check::{Input, Output, Recorder, Verdict, check};
use tern_client::{CasOutcome, Client, ClientError, ClusterMap};
use tern_wire::{key_hash, slot_of};

const CLIENTS: usize = 10;
const RUN_TIME: Duration = Duration::from_secs(4);
const KEYS_PER_SHARD: usize = 2;

/// A few keys per shard, so that clients collide on every key.
fn contended_keys(map: &ClusterMap) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    for shard in &map.shards {
        let owned = (0..)
            .map(|index| format!("key-{index}").into_bytes())
            .filter(|key| map.shard_of_slot(slot_of(key_hash(key))).id == shard.id)
            .take(KEYS_PER_SHARD);
        keys.extend(owned);
    }
    keys
}

/// What one client saw, to show the workload really contended.
#[derive(Default)]
struct Tally {
    operations: u64,
    cas_swapped: u64,
    cas_mismatch: u64,
    timeouts: u64,
}

fn run_workload(map: &ClusterMap, seed: u64) -> (Recorder, Tally, usize) {
    let keys = Arc::new(contended_keys(map));
    let recorder = Recorder::new();
    let start_line = Arc::new(Barrier::new(CLIENTS));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            let (keys, recorder, start_line) = (keys.clone(), recorder.clone(), start_line.clone());
            let mut client = Client::new(map.clone()).unwrap();
            std::thread::spawn(move || {
                let mut random = SmallRng::seed_from_u64(seed * 1000 + worker as u64);
                let mut tally = Tally::default();
                let mut last_version = vec![0u64; keys.len()];
                let mut values_read = HashSet::new();
                start_line.wait();
                let end = Instant::now() + RUN_TIME;
                let mut sequence = 0u64;
                while Instant::now() < end {
                    let index = random.random_range(0..keys.len());
                    let key = &keys[index];
                    sequence += 1;
                    let value = format!("c{worker}-{sequence}").into_bytes();
                    let choice = random.random_range(0..100);
                    let call = Instant::now();
                    let (input, result) = if choice < 50 {
                        let result = client.get(key).map(|found| {
                            if let Some(found) = &found {
                                last_version[index] = found.version;
                                values_read.insert(found.value.clone());
                            }
                            Output::Get(found.map(|f| (f.version, f.value)))
                        });
                        (Input::Get, result)
                    } else if choice < 80 {
                        let result = client.put(key, &value).map(|version| {
                            last_version[index] = version;
                            Output::Put { version }
                        });
                        (Input::Put { value }, result)
                    } else {
                        let expected = last_version[index];
                        let result =
                            client
                                .cas(key, expected, &value)
                                .map(|outcome| match outcome {
                                    CasOutcome::Swapped { version } => {
                                        tally.cas_swapped += 1;
                                        last_version[index] = version;
                                        Output::CasSwapped { version }
                                    }
                                    CasOutcome::Mismatch { current } => {
                                        tally.cas_mismatch += 1;
                                        last_version[index] = current;
                                        Output::CasMismatch { current }
                                    }
                                });
                        (Input::Cas { expected, value }, result)
                    };
                    tally.operations += 1;
                    match result {
                        Ok(output) => recorder.record(
                            client.client_id(),
                            key,
                            input,
                            call,
                            output,
                            Some(Instant::now()),
                        ),
                        Err(ClientError::Timeout { .. }) => {
                            tally.timeouts += 1;
                            recorder.record(
                                client.client_id(),
                                key,
                                input,
                                call,
                                Output::Unknown,
                                None,
                            );
                        }
                        Err(error) => panic!("client {worker}: {error}"),
                    }
                }
                (tally, values_read.len())
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut distinct_values = 0;
    for worker in workers {
        let (tally, values) = worker.join().expect("client thread");
        total.operations += tally.operations;
        total.cas_swapped += tally.cas_swapped;
        total.cas_mismatch += tally.cas_mismatch;
        total.timeouts += tally.timeouts;
        distinct_values += values;
    }
    (recorder, total, distinct_values)
}

fn assert_linearizable_under_contention(shards: u32, replicas: usize, mode: &str, topology: &str) {
    let cluster = TestCluster::up_with(shards, replicas, mode, topology);
    let seed = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u16>) as u64;
    eprintln!("seed {seed} (replay with TERN_TEST_SEED={seed})");
    let (recorder, tally, distinct_values) = run_workload(&cluster.map, seed);
    let history = recorder.operations();
    eprintln!(
        "{shards}x{replicas} {mode} on {topology}: {} operations, {} CAS swapped, {} CAS mismatched, {} timeouts, {} distinct values read",
        tally.operations, tally.cas_swapped, tally.cas_mismatch, tally.timeouts, distinct_values
    );
    // The workload must really contend, or the check proves little.
    assert!(
        tally.operations > 2_000,
        "too few operations to mean anything"
    );
    assert!(
        tally.cas_swapped > 0 && tally.cas_mismatch > 0,
        "CAS never raced"
    );
    assert!(
        distinct_values > 10,
        "reads did not observe concurrent writes"
    );
    let started = Instant::now();
    match check(&history) {
        Verdict::Linearizable => eprintln!("linearizable (checked in {:?})", started.elapsed()),
        Verdict::Violation(error) => panic!("seed {seed}: history is not linearizable:\n{error}"),
    }
}

#[test]
fn one_shard_three_replicas_is_linearizable_under_contention() {
    assert_linearizable_under_contention(1, 3, "user", "loopback");
}

#[test]
fn three_shards_three_replicas_is_linearizable_under_contention() {
    assert_linearizable_under_contention(3, 3, "user", "loopback");
}

#[test]
fn one_shard_three_replicas_with_the_xdp_coordinator_is_linearizable_under_contention() {
    assert_linearizable_under_contention(1, 3, "xdp", "netns");
}

#[test]
fn three_shards_three_replicas_with_the_xdp_coordinator_is_linearizable_under_contention() {
    assert_linearizable_under_contention(3, 3, "xdp", "netns");
}
