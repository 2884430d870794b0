//! A crash of each participant at each step of a migration, on one running
//! cluster (three meta nodes, a standby coordinator) under a counting
//! workload: `tern reshard --pause-after STEP` stops after the step, the
//! participant is killed there and restarted once the cluster noticed.
//! Each time the migration ends with every slot owned by exactly one shard,
//! the moved range at the destination, nothing of it left at the source,
//! and at the end every acknowledged INCRBY is counted exactly once; no
//! request failed and no read went back behind an acknowledged write.
//!
//! The participants: the driver itself (killed, then run again), the
//! source's tail (it exports the copies), the destination's head (it takes
//! the installs), the coordinator (both shards' in a local cluster: source
//! and destination at once) and meta's leader.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{StopOnDrop, TestCluster};
use tern_client::meta::{self, MetaMap, Reply, Request};
use tern_client::reshard::{PAUSED, Step};
use tern_client::{Client, ClientOptions, ShardId, Slot};
use tern_control::transfer::{self, TransferRequest};
use tern_wire::SLOT_COUNT;
use tern_wire::export::Export;

/// Slots per migration: two groups, so that the first group's steps come
/// with another group still to move.
const RANGE_SLOTS: u32 = 32;
const GROUP_SLOTS: &str = "16";

#[derive(Clone, Copy, Debug)]
enum Participant {
    Driver,
    SourceTail,
    DestinationHead,
    Coordinator,
    MetaLeader,
}

const PARTICIPANTS: [Participant; 5] = [
    Participant::Driver,
    Participant::SourceTail,
    Participant::DestinationHead,
    Participant::Coordinator,
    Participant::MetaLeader,
];

/// The id of meta's leader, as a meta node that answers says.
fn meta_leader(cluster: &TestCluster) -> Option<u64> {
    cluster.map.meta.iter().find_map(|node| {
        match meta::call(*node, &Request::Status, Duration::from_millis(300)) {
            Ok(Reply::Status(status)) => status.leader,
            _ => None,
        }
    })
}

/// Waits until `done` holds, for at most `patience`.
fn wait_until(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every shard has its three replicas and meta a leader again.
fn wait_whole(cluster: &TestCluster) {
    wait_until("the cluster whole again", Duration::from_secs(30), || {
        meta_leader(cluster).is_some()
            && cluster
                .meta_map()
                .shards
                .iter()
                .all(|shard| shard.replicas.len() == 3)
    });
}

/// Kills `participant` (not the driver) and restarts it once the cluster
/// has noticed: the chain without the replica, another coordinator or
/// another leader.
fn crash(cluster: &TestCluster, participant: Participant) {
    let map = cluster.meta_map();
    let name = match participant {
        Participant::Driver => unreachable!("the driver is the test's own child"),
        Participant::SourceTail => cluster.process_at(*map.shards[0].replicas.last().unwrap()),
        Participant::DestinationHead => cluster.process_at(map.shards[1].replicas[0]),
        Participant::Coordinator => cluster.process_at(map.shards[0].coordinator),
        Participant::MetaLeader => format!("meta{}", meta_leader(cluster).expect("a leader")),
    };
    eprintln!("  killing {name}");
    let killed = map_address_of(participant, &map);
    cluster.kill(&[&name]);
    wait_until(
        "the cluster noticing the crash",
        Duration::from_secs(15),
        || match participant {
            Participant::MetaLeader => {
                meta_leader(cluster).is_some_and(|leader| format!("meta{leader}") != name)
            }
            _ => {
                let now = cluster.meta_map();
                map_address_of(participant, &now) != killed
                    || !now.shards.iter().all(|shard| shard.replicas.len() == 3)
            }
        },
    );
    cluster.restart_stopped();
}

/// The address `participant` has in `map` (none for meta's leader).
fn map_address_of(participant: Participant, map: &MetaMap) -> Option<SocketAddrV4> {
    match participant {
        Participant::SourceTail => map.shards[0].replicas.last().copied(),
        Participant::DestinationHead => map.shards[1].replicas.first().copied(),
        Participant::Coordinator => Some(map.shards[0].coordinator),
        Participant::Driver | Participant::MetaLeader => None,
    }
}

/// `tern reshard` of `slots` from shard 0 to shard 1, pausing after `step`.
fn start_reshard(cluster: &TestCluster, slots: [u32; 2], pause: Option<Step>) -> Child {
    let range = format!("{}-{}", slots[0], slots[1] - 1);
    let mut command = common::tern();
    command.arg("--cluster").arg(cluster.map_path()).args([
        "reshard",
        "--from",
        "0",
        "--to",
        "1",
        "--slots",
        &range,
        "--group-slots",
        GROUP_SLOTS,
    ]);
    if let Some(step) = pause {
        command.args(["--pause-after", &format!("{}:1500", step.name())]);
    }
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern reshard starts")
}

/// Waits for `child` to say it paused; its later output stays in the pipe.
fn wait_paused(child: &mut Child, step: Step) {
    let stderr = child.stderr.take().unwrap();
    let (paused, heard) = mpsc::channel();
    std::thread::spawn(move || {
        let mut said = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(PAUSED) {
                let _ = paused.send(Ok(()));
            }
            said.push_str(&line);
            said.push('\n');
        }
        let _ = paused.send(Err(said));
    });
    match heard.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        other => panic!("the reshard never paused after {}: {other:?}", step.name()),
    }
}

fn succeeded(child: Child) {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// After a migration of `slots`: no migration left, each slot owned by
/// exactly one shard, `slots` by shard 1, and nothing of them at shard 0.
fn check_moved(cluster: &TestCluster, slots: [u32; 2]) {
    let map = cluster.meta_map();
    assert!(map.migrations.is_empty(), "{:?}", map.migrations);
    let mut owned: Vec<(u32, u32, ShardId)> = map
        .shards
        .iter()
        .flat_map(|shard| shard.slots.iter().map(|r| (r[0], r[1], shard.id)))
        .collect();
    owned.sort();
    let mut next = 0;
    for (start, end, _) in &owned {
        assert_eq!(*start, next, "slots not owned exactly once: {owned:?}");
        next = *end;
    }
    assert_eq!(next, SLOT_COUNT, "{owned:?}");
    assert!(
        owned.iter().any(|(start, end, shard)| *shard == ShardId(1)
            && *start <= slots[0]
            && slots[1] <= *end),
        "{slots:?} not at shard 1: {owned:?}"
    );
    let tail = *map.shards[0].replicas.last().unwrap();
    let (_, bytes) = transfer::fetch(
        tail,
        TransferRequest::Slots {
            range: slots,
            since: 0,
        },
    )
    .unwrap();
    let left = Export::decode(&bytes).unwrap();
    assert!(
        left.keys.is_empty(),
        "the source kept {} keys of {slots:?}",
        left.keys.len()
    );
}

/// Two keys in each of `ranges`, and four of the slots that never move.
fn keys(ranges: &[[u32; 2]]) -> Vec<Vec<u8>> {
    let mut wanted: Vec<usize> = vec![2; ranges.len()];
    let mut staying = 4;
    let mut chosen = Vec::new();
    for key in (0..).map(|n| format!("counter-{n}").into_bytes()) {
        let slot = Slot::of_key(&key).get();
        match ranges.iter().position(|r| (r[0]..r[1]).contains(&slot)) {
            Some(range) if wanted[range] > 0 => {
                wanted[range] -= 1;
                chosen.push(key);
            }
            None if staying > 0 && slot >= SLOT_COUNT / 2 => {
                staying -= 1;
                chosen.push(key);
            }
            _ => {}
        }
        if staying == 0 && wanted.iter().all(|w| *w == 0) {
            return chosen;
        }
    }
    unreachable!()
}

#[test]
fn a_crash_of_each_participant_at_each_step_loses_nothing() {
    let cluster = TestCluster::up_with_args(
        2,
        3,
        &[
            "--mode",
            "user",
            "--topology",
            "loopback",
            "--meta",
            "3",
            "--standby",
            "1",
            "--failure-timeout-ms",
            "500",
        ],
    );
    let scenarios: Vec<(Step, Participant)> = Step::ALL
        .into_iter()
        .flat_map(|step| PARTICIPANTS.map(|participant| (step, participant)))
        .collect();
    let ranges: Vec<[u32; 2]> = (0..scenarios.len() as u32)
        .map(|n| [n * RANGE_SLOTS, (n + 1) * RANGE_SLOTS])
        .collect();
    assert!(
        ranges.last().unwrap()[1] <= SLOT_COUNT / 2,
        "shard 0's slots"
    );
    let keys = keys(&ranges);
    let running = AtomicBool::new(true);
    // The scenario under way, named in failures.
    let scenario = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            // Patient: a write of a group held while the driver pauses
            // waits the pause out (a timeout would leave its count unknown).
            let options = ClientOptions {
                deadline: Duration::from_secs(30),
                ..ClientOptions::default()
            };
            let mut client = Client::with_options(cluster.map.clone(), options).unwrap();
            let mut acknowledged: HashMap<Vec<u8>, i64> = HashMap::new();
            let mut failures = Vec::new();
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                let key = &keys[n % keys.len()];
                n += 1;
                let counted = match client.incr_by(key, 1) {
                    Ok(value) => {
                        *acknowledged.entry(key.clone()).or_default() += 1;
                        value
                    }
                    Err(error) => {
                        let during = scenario.load(Ordering::Relaxed);
                        failures.push(format!("scenario {during}: incrby {key:?}: {error}"));
                        continue;
                    }
                };
                // A read never goes back behind an acknowledged write.
                let during = scenario.load(Ordering::Relaxed);
                let key_name = String::from_utf8_lossy(key);
                match client.get(key) {
                    Ok(found) => {
                        let version = found.as_ref().map(|found| found.version);
                        let value: i64 = found.map_or(0, |found| {
                            String::from_utf8(found.value).unwrap().parse().unwrap()
                        });
                        if value < counted {
                            failures.push(format!(
                                "scenario {during}: {key_name} (slot {}) read {value} (version {version:?}) after {counted}",
                                Slot::of_key(key).get()
                            ));
                        }
                    }
                    Err(error) => failures.push(format!("scenario {during}: get {key_name}: {error}")),
                }
            }
            (acknowledged, failures)
        });
        let _stop = StopOnDrop(&running);
        for (index, ((step, participant), slots)) in scenarios.iter().zip(&ranges).enumerate() {
            scenario.store(index, Ordering::Relaxed);
            eprintln!(
                "scenario {index}: crashing {participant:?} after {} (slots {slots:?})",
                step.name()
            );
            let started = Instant::now();
            let mut child = start_reshard(&cluster, *slots, Some(*step));
            wait_paused(&mut child, *step);
            match participant {
                Participant::Driver => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    // Run again on the same slots, it goes on from what
                    // meta recorded.
                    succeeded(start_reshard(&cluster, *slots, None));
                }
                _ => {
                    crash(&cluster, *participant);
                    succeeded(child);
                }
            }
            check_moved(&cluster, *slots);
            wait_whole(&cluster);
            eprintln!("  done in {:.1}s", started.elapsed().as_secs_f64());
        }
        running.store(false, Ordering::Relaxed);
        let (acknowledged, failures) = worker.join().unwrap();
        assert!(failures.is_empty(), "requests failed: {failures:?}");
        let mut reader = Client::new(cluster.map.clone()).unwrap();
        for key in &keys {
            let value: i64 = reader.get(key).unwrap().map_or(0, |found| {
                String::from_utf8(found.value).unwrap().parse().unwrap()
            });
            assert_eq!(
                value,
                acknowledged.get(key).copied().unwrap_or(0),
                "{key:?}"
            );
        }
        assert!(acknowledged.values().sum::<i64>() > 0, "the workload ran");
    });
}
