//! A replica taken out of its chain and appended back, under a steady write
//! load, in each coordinator mode: the coordinator reconfigures its shard in
//! place (the same coordinator instance sees both changes: no restart, no
//! rule-8 recovery, the XDP program keeps serving from the kernel), and
//! every write succeeds.

mod common;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestCluster, counter, stats_of};
use tern_client::Client;
use tern_client::meta::{self, Reply, Request};

/// Shard 0's chain as meta has it now.
fn chain(cluster: &TestCluster) -> Vec<SocketAddrV4> {
    match meta::call_leader(&cluster.map.meta, &mut None, &Request::GetMap) {
        Ok(Reply::Map(map)) => map.shards[0].replicas.clone(),
        other => panic!("no map from meta: {other:?}"),
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_and_add_under_load(mode: &str, topology: &str) {
    let cluster = TestCluster::up_with(1, 3, mode, topology);
    let coordinator = cluster.map.shards[0].coordinator;
    let middle = cluster.map.shards[0].replicas[1];
    let running = AtomicBool::new(true);
    let mut admin = Client::new(cluster.map.clone()).unwrap();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut client = Client::new(cluster.map.clone()).unwrap();
            let (mut written, mut failed) = (0u64, Vec::new());
            while running.load(Ordering::Relaxed) {
                let key = format!("key-{}", written % 64);
                match client.put(key.as_bytes(), b"value") {
                    Ok(_) => written += 1,
                    Err(error) => failed.push(error.to_string()),
                }
            }
            (written, failed)
        });
        std::thread::sleep(Duration::from_millis(500));
        let remove = cluster.tern(&["node", "remove", "--shard", "0", &middle.to_string()]);
        assert!(
            remove.status.success(),
            "{}",
            String::from_utf8_lossy(&remove.stderr)
        );
        wait_for("the chain without the middle", || {
            chain(&cluster).len() == 2
        });
        std::thread::sleep(Duration::from_millis(500));
        // The removed replica drops its data and reports itself spare;
        // meta appends only a spare, so ask until it is one.
        wait_for("the replica appended back", || {
            cluster
                .tern(&["node", "add", "--shard", "0", &middle.to_string()])
                .status
                .success()
        });
        wait_for("the chain with the replica back", || {
            chain(&cluster).len() == 3
        });
        let before = stats_of(&mut admin, coordinator);
        std::thread::sleep(Duration::from_millis(700));
        running.store(false, Ordering::Relaxed);
        let (written, failed) = writer.join().unwrap();
        assert!(failed.is_empty(), "writes failed: {failed:?}");
        assert!(written > 100, "only {written} writes");
        let after = stats_of(&mut admin, coordinator);
        // One coordinator instance saw both changes: a restart would have
        // started the shard afresh, with its counters at zero.
        assert!(
            counter(&after, "shard0.reconfigurations") >= 2,
            "the shard was not reconfigured in place twice:\n{after}"
        );
        assert_eq!(counter(&after, "shard0.ready"), 1);
        assert!(
            counter(&after, "shard0.writes") + counter_or_zero(&after, "xdp.writes") >= written
        );
        if mode == "xdp" {
            // The kernel still sequences the writes after the changes.
            assert!(
                counter(&after, "xdp.writes") > counter(&before, "xdp.writes"),
                "the fast path stopped serving:\n{after}"
            );
        }
    });
}

fn counter_or_zero(stats: &str, name: &str) -> u64 {
    if stats
        .lines()
        .any(|line| line.starts_with(&format!("{name} ")))
    {
        counter(stats, name)
    } else {
        0
    }
}

#[test]
fn the_user_space_coordinator_reconfigures_in_place_under_load() {
    remove_and_add_under_load("user", "loopback");
}

#[test]
fn the_xdp_coordinator_reconfigures_in_place_under_load() {
    remove_and_add_under_load("xdp", "netns");
}
