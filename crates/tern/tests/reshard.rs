//! `tern reshard` on a running cluster, in each coordinator mode: slots move
//! from shard 0 to shard 1 while clients write and read them. No request
//! fails, every acknowledged INCRBY is counted exactly once at the
//! destination, reads never go back, a CAS with a version from before the
//! move succeeds after it, and impossible reshards are refused with a
//! message and change nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{StopOnDrop, TestCluster};
use tern_client::meta::{self, Reply, Request};
use tern_client::{CasOutcome, Client, ShardId, Slot};

/// Slots 0-1023 move (shard 0 owns 0-8191 of two even shards).
const MOVED: [u32; 2] = [0, 1024];

fn moved(key: &[u8]) -> bool {
    (MOVED[0]..MOVED[1]).contains(&Slot::of_key(key).get())
}

/// Keys of the moved slots, and as many that stay.
fn keys() -> Vec<Vec<u8>> {
    let candidates = (0..).map(|n| format!("counter-{n}").into_bytes());
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for key in candidates {
        if moved(&key) && inside.len() < 8 {
            inside.push(key);
        } else if !moved(&key) && outside.len() < 8 {
            outside.push(key);
        }
        if inside.len() == 8 && outside.len() == 8 {
            break;
        }
    }
    inside.into_iter().chain(outside).collect()
}

fn reshard_under_load(mode: &str, topology: &str) {
    let cluster = TestCluster::up_with(2, 3, mode, topology);
    move_under_load(&cluster);
}

/// Moves `MOVED` from shard 0 to shard 1 while two clients INCRBY and read
/// keys inside and outside it; then checks that no request failed, every
/// acknowledged INCRBY counted once, and the map. (Crashes during a move:
/// tests/reshard_faults.rs.)
fn move_under_load(cluster: &TestCluster) {
    let keys = keys();
    let mut setup = Client::new(cluster.map.clone()).unwrap();
    // A key of the moved slots whose version from before the move is kept
    // for a CAS after it.
    let cas_key = (0..)
        .map(|n| format!("cas-{n}").into_bytes())
        .find(|key| moved(key))
        .unwrap();
    let old_version = setup.put(&cas_key, b"before").unwrap();
    let running = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let (keys, running, map) = (&keys, &running, cluster.map.clone());
                scope.spawn(move || {
                    let mut client = Client::new(map).unwrap();
                    let mut acknowledged: HashMap<Vec<u8>, i64> = HashMap::new();
                    let mut seen: HashMap<Vec<u8>, i64> = HashMap::new();
                    let mut failures = Vec::new();
                    let mut n = worker;
                    while running.load(Ordering::Relaxed) {
                        let key = &keys[n % keys.len()];
                        n += 1;
                        match client.incr_by(key, 1) {
                            Ok(value) => {
                                *acknowledged.entry(key.clone()).or_default() += 1;
                                let last = seen.entry(key.clone()).or_default();
                                assert!(value > *last, "INCRBY went back on {key:?}");
                                *last = value;
                            }
                            Err(error) => failures.push(format!("incrby: {error}")),
                        }
                        match client.get(key) {
                            Ok(found) => {
                                let value: i64 = found.map_or(0, |v| {
                                    String::from_utf8(v.value).unwrap().parse().unwrap()
                                });
                                let last = seen.entry(key.clone()).or_default();
                                assert!(value >= *last, "a read went back on {key:?}");
                                *last = value;
                            }
                            Err(error) => failures.push(format!("get: {error}")),
                        }
                    }
                    (acknowledged, failures)
                })
            })
            .collect();
        // The workers stop however this thread leaves the scope (a failed
        // assertion included), or the scope would wait for them forever.
        let _stop = StopOnDrop(&running);
        std::thread::sleep(Duration::from_millis(400));
        let group_slots = "64";
        let output = cluster.tern(&[
            "reshard",
            "--from",
            "0",
            "--to",
            "1",
            "--slots",
            &format!("{}-{}", MOVED[0], MOVED[1] - 1),
            "--group-slots",
            group_slots,
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        if !output.status.success() {
            // What the processes counted, to see where it stuck.
            let stats = cluster.tern(&["stats"]);
            panic!(
                "reshard failed: {stdout}{}\n{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&stats.stdout),
                cluster.log_tails(15)
            );
        }
        let groups = (MOVED[1] - MOVED[0]) / group_slots.parse::<u32>().unwrap();
        assert!(stdout.contains(&format!("{groups} groups")), "{stdout}");
        std::thread::sleep(Duration::from_millis(400));
        running.store(false, Ordering::Relaxed);
        let mut total: HashMap<Vec<u8>, i64> = HashMap::new();
        for worker in workers {
            let (acknowledged, failures) = worker.join().unwrap();
            assert!(failures.is_empty(), "requests failed: {failures:?}");
            for (key, count) in acknowledged {
                *total.entry(key).or_default() += count;
            }
        }
        // Every acknowledged INCRBY counted once, wherever its key lives now.
        let mut reader = Client::new(cluster.map.clone()).unwrap();
        for key in &keys {
            let found = reader.get(key).unwrap();
            let value: i64 =
                found.map_or(0, |v| String::from_utf8(v.value).unwrap().parse().unwrap());
            assert_eq!(value, total.get(key).copied().unwrap_or(0), "{key:?}");
        }
    });
    let map = cluster.meta_map();
    assert!(map.migrations.is_empty(), "{:?}", map.migrations);
    assert_eq!(map.shards[1].slots[0], MOVED, "{:?}", map.shards[1].slots);
    let routed = map.to_cluster_map(&cluster.map.meta).unwrap();
    for key in keys.iter().filter(|key| moved(key)) {
        assert_eq!(routed.shard_of_slot(Slot::of_key(key)).id, ShardId(1));
    }
    // A version from before the move still names the key's value.
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let outcome = client.cas(&cas_key, old_version, b"after").unwrap();
    assert!(matches!(outcome, CasOutcome::Swapped { .. }), "{outcome:?}");
    let status = cluster.tern(&["reshard", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no migration under way"));
}

#[test]
fn slots_move_under_load_with_the_user_space_coordinator() {
    reshard_under_load("user", "loopback");
}

#[test]
fn slots_move_under_load_with_the_xdp_coordinator() {
    reshard_under_load("xdp", "netns");
}

#[test]
fn impossible_reshards_are_refused_with_a_message_and_change_nothing() {
    let cluster = TestCluster::up_with(2, 1, "user", "loopback");
    let before = cluster.meta_map();
    for (args, message) in [
        (
            ["--from", "0", "--to", "1", "--slots", "8000-8300"],
            "shard 0 does not own slot 8192",
        ),
        (
            ["--from", "0", "--to", "7", "--slots", "0-10"],
            "there is no shard 7",
        ),
        (
            ["--from", "1", "--to", "1", "--slots", "9000-9010"],
            "to the shard that owns them",
        ),
        (
            ["--from", "0", "--to", "1", "--slots", "10-5"],
            "not a range",
        ),
    ] {
        let mut all = vec!["reshard"];
        all.extend(args);
        let output = cluster.tern(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    assert_eq!(cluster.meta_map(), before, "nothing changed");
    // A range overlapping a migration under way (one begun and not driven).
    let begun = meta::call_leader(
        &cluster.map.meta,
        &mut None,
        &Request::Change(meta::Change::BeginMigration {
            from: ShardId(0),
            to: ShardId(1),
            slots: [0, 100],
            group_slots: 16,
        }),
    );
    assert!(matches!(begun, Ok(Reply::Map(_))), "{begun:?}");
    let before = cluster.meta_map();
    let output = cluster.tern(&["reshard", "--from", "0", "--to", "1", "--slots", "50-150"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("slot 50 is already moving in migration"),
        "{stderr}"
    );
    assert_eq!(cluster.meta_map(), before, "nothing changed");
    let status = cluster.tern(&["reshard", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("0/7 groups handed off"));
}

#[test]
fn rebalance_evens_the_slots_and_keeps_every_key() {
    let cluster = TestCluster::up_with(3, 1, "user", "loopback");
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let keys: Vec<Vec<u8>> = (0..300).map(|n| format!("key-{n}").into_bytes()).collect();
    for key in &keys {
        client.put(key, key).unwrap();
    }
    // Uneven first: most of shard 0's slots go to shard 1.
    let output = cluster.tern(&["reshard", "--from", "0", "--to", "1", "--slots", "0-4999"]);
    assert!(output.status.success(), "{output:?}");
    let output = cluster.tern(&["reshard", "rebalance", "--group-slots", "64"]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rebalanced"), "{stdout}");
    let map = cluster.meta_map();
    assert!(map.migrations.is_empty());
    let counts: Vec<u32> = map
        .shards
        .iter()
        .map(|shard| shard.slots.iter().map(|[s, e]| e - s).sum())
        .collect();
    assert_eq!(counts.iter().sum::<u32>(), tern_wire::SLOT_COUNT);
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{counts:?}"
    );
    for key in &keys {
        let found = client.get(key).unwrap().expect("every key is still there");
        assert_eq!(&found.value, key);
    }
    let again = cluster.tern(&["reshard", "rebalance"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("even already"));
}

#[test]
fn rebalance_by_load_moves_hot_slots_to_the_idle_shard() {
    let cluster = TestCluster::up_with(2, 2, "user", "loopback");
    // Every key the workload asks lives at shard 0 (slots 0-8191).
    let hot: Vec<Vec<u8>> = (0..)
        .map(|n| format!("hot-{n}").into_bytes())
        .filter(|key| Slot::of_key(key).get() < tern_wire::SLOT_COUNT / 2)
        .take(200)
        .collect();
    let mut setup = Client::new(cluster.map.clone()).unwrap();
    for key in &hot {
        setup.put(key, key).unwrap();
    }
    let running = AtomicBool::new(true);
    let output = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut client = Client::new(cluster.map.clone()).unwrap();
            let mut failures = 0;
            for key in hot.iter().cycle() {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(key) {
                    Ok(Some(found)) if &found.value == key => {}
                    _ => failures += 1,
                }
            }
            failures
        });
        let _stop = StopOnDrop(&running);
        std::thread::sleep(Duration::from_millis(300));
        let output = cluster.tern(&[
            "reshard",
            "rebalance",
            "--by",
            "load",
            "--load-window",
            "1",
            "--group-slots",
            "64",
        ]);
        running.store(false, Ordering::Relaxed);
        assert_eq!(worker.join().unwrap(), 0, "reads failed");
        output
    });
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("load before: shard 0 100%, shard 1 0%"),
        "{stdout}"
    );
    assert!(stdout.contains("rebalanced"), "{stdout}");
    // About half of the hot keys live at shard 1 now.
    let map = cluster.meta_map();
    assert!(map.migrations.is_empty());
    let routed = map.to_cluster_map(&cluster.map.meta).unwrap();
    let moved = hot
        .iter()
        .filter(|key| routed.shard_of_slot(Slot::of_key(key)).id == ShardId(1))
        .count();
    assert!((60..=140).contains(&moved), "{moved} of 200 hot keys moved");
    let mut client = Client::new(cluster.map.clone()).unwrap();
    for key in &hot {
        assert_eq!(&client.get(key).unwrap().unwrap().value, key);
    }
}

/// Replica processes a test starts itself, killed when dropped.
struct Spares(Vec<std::process::Child>);

impl Drop for Spares {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_shard_is_added_from_spares_given_its_share_then_drained_and_retired() {
    let cluster = TestCluster::up_with(2, 1, "user", "loopback");
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let keys: Vec<Vec<u8>> = (0..300).map(|n| format!("key-{n}").into_bytes()).collect();
    for key in &keys {
        client.put(key, key).unwrap();
    }
    // Two spares of the new shard 2, started as an operator would.
    let addresses: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let map_path = cluster.map_path();
    // Each with its replica certificate: meta takes a replica's heartbeat
    // only from a replica of its address.
    let certs = cluster.dir().join("certs");
    for number in 0..addresses.len() {
        common::issue_certificate(&certs, &format!("spare{number}"), "replica", "127.0.0.1");
    }
    let _spares = Spares(
        addresses
            .iter()
            .enumerate()
            .map(|(number, address)| {
                common::tern()
                    .args(["--cluster", map_path.to_str().unwrap()])
                    .args(["--identity", &format!("spare{number}")])
                    .args(["server", "--shard", "2", "--listen", address])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let coordinator = cluster.map.shards[0].coordinator.to_string();
    let mut add = vec![
        "node",
        "add-shard",
        "--shard",
        "2",
        "--coordinator",
        &coordinator,
    ];
    add.extend(addresses.iter().map(String::as_str));
    // Refused until both report as spares.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = cluster.tern(&add);
        if output.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(stderr.contains("not a live spare"), "{stderr}");
        assert!(
            Instant::now() < deadline,
            "the spares never reported: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = cluster.tern(&["reshard", "rebalance", "--group-slots", "128"]);
    assert!(output.status.success(), "{output:?}");
    let counts = |map: &meta::MetaMap| -> Vec<(u32, u32)> {
        map.shards
            .iter()
            .map(|s| (s.id.get(), s.slots.iter().map(|[a, b]| b - a).sum()))
            .collect()
    };
    let map = cluster.meta_map();
    let even = counts(&map);
    assert_eq!(even.len(), 3, "{even:?}");
    assert!(
        even.iter()
            .all(|(_, n)| n.abs_diff(tern_wire::SLOT_COUNT / 3) <= 1),
        "{even:?}"
    );
    // Every key still there, and the new shard takes writes.
    let mut moved = 0;
    for key in &keys {
        assert_eq!(client.get(key).unwrap().unwrap().value, *key);
        let routed = map.to_cluster_map(&cluster.map.meta).unwrap();
        if routed.shard_of_slot(Slot::of_key(key)).id == ShardId(2) {
            client.put(key, b"on shard 2").unwrap();
            moved += 1;
        }
    }
    assert!(moved > 50, "{moved} keys on the new shard");
    // A shard that still owns slots is not retired.
    let refused = cluster.tern(&["node", "remove-shard", "2"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("still owns"));
    // Drained back to shard 0, then retired.
    for [start, end] in map
        .shards
        .iter()
        .find(|s| s.id == ShardId(2))
        .unwrap()
        .slots
        .clone()
    {
        let slots = format!("{start}-{}", end - 1);
        let output = cluster.tern(&["reshard", "--from", "2", "--to", "0", "--slots", &slots]);
        assert!(output.status.success(), "{output:?}");
    }
    let output = cluster.tern(&["node", "remove-shard", "2"]);
    assert!(output.status.success(), "{output:?}");
    let map = cluster.meta_map();
    assert_eq!(map.shards.len(), 2);
    for key in &keys {
        let found = client.get(key).unwrap().unwrap();
        let routed = map.to_cluster_map(&cluster.map.meta).unwrap();
        assert_ne!(routed.shard_of_slot(Slot::of_key(key)).id, ShardId(2));
        assert!(found.value == *key || found.value == b"on shard 2");
    }
}

#[test]
fn cluster_add_shard_and_remove_shard_grow_and_shrink_a_running_cluster() {
    let cluster = TestCluster::up_with(2, 1, "user", "loopback");
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let keys: Vec<Vec<u8>> = (0..200).map(|n| format!("key-{n}").into_bytes()).collect();
    for key in &keys {
        client.put(key, key).unwrap();
    }
    let dir = cluster.dir().to_str().unwrap().to_string();
    let output = common::run_tern(&["cluster", "add-shard", "--dir", &dir, "--replicas", "2"]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("shard 2 added"), "{stdout}");
    let map = cluster.meta_map();
    let counts: Vec<u32> = map
        .shards
        .iter()
        .map(|s| s.slots.iter().map(|[a, b]| b - a).sum())
        .collect();
    assert_eq!(counts.len(), 3);
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{counts:?}"
    );
    for key in &keys {
        assert_eq!(client.get(key).unwrap().unwrap().value, *key);
    }
    let output = common::run_tern(&["cluster", "remove-shard", "--dir", &dir, "--shard", "2"]);
    assert!(output.status.success(), "{output:?}");
    let map = cluster.meta_map();
    assert_eq!(map.shards.len(), 2);
    for key in &keys {
        assert_eq!(client.get(key).unwrap().unwrap().value, *key);
    }
    // Its replicas are gone from the process table.
    assert!(
        cluster
            .processes()
            .iter()
            .all(|(name, _)| !name.starts_with("shard2-"))
    );
}
