//! Values too large for a datagram on a running cluster: 1 KiB to 16 MiB
//! through the client library and the CLI (from a file and from standard
//! input), intact after SIGKILL of every replica (durability `always`),
//! written while the chain is reconfigured around a failed head, and held
//! by a replica that came back through a state transfer once it is the
//! only one left.

mod common;

use std::io::Write;
use std::net::SocketAddrV4;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestCluster;
use tern_client::{Client, ClientError, ClientOptions};

const SIZES: [usize; 4] = [1024, 64 << 10, 1 << 20, 16 << 20];

/// Bytes no two keys share (a mix-up between values shows).
fn value_of(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The default memory of a replica's table of large values.
fn tern_server_budget() -> u64 {
    1 << 30
}

/// A client that waits out failovers.
fn patient_client(cluster: &TestCluster) -> Client {
    let options = ClientOptions {
        deadline: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    Client::with_options(cluster.map.clone(), options).unwrap()
}

fn chain_of(cluster: &TestCluster) -> Vec<SocketAddrV4> {
    cluster.meta_map().shards[0].replicas.clone()
}

fn wait_for_chain(cluster: &TestCluster, what: &str, done: impl Fn(&[SocketAddrV4]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&chain_of(cluster)) {
        assert!(
            Instant::now() < deadline,
            "the chain never {what}: {:?}\n{}",
            chain_of(cluster),
            cluster.log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every value written so far, read back whole.
fn assert_all_read(client: &mut Client, written: &[(String, Vec<u8>)], when: &str) {
    for (key, value) in written {
        let found = client
            .get(key.as_bytes())
            .unwrap_or_else(|error| panic!("{key} {when}: {error}"))
            .unwrap_or_else(|| panic!("{key} {when}: not found"));
        assert!(
            found.value == *value,
            "{key} {when}: {} bytes back for {}",
            found.value.len(),
            value.len()
        );
    }
}

#[test]
fn large_values_survive_kills_reconfiguration_and_state_transfer() {
    let cluster =
        TestCluster::up_with_args(1, 3, &["--topology", "loopback", "--durability", "always"]);
    let mut client = patient_client(&cluster);
    let mut written = Vec::new();
    let files = tempfile::tempdir().unwrap();
    for (index, &size) in SIZES.iter().enumerate() {
        // Through the library.
        let key = format!("lib{size}");
        let value = value_of(size, index as u64);
        client.put(key.as_bytes(), &value).unwrap();
        written.push((key, value));
        // Through the CLI, from a file, read back into a file.
        let key = format!("cli{size}");
        let value = value_of(size, 100 + index as u64);
        let path = files.path().join(&key);
        std::fs::write(&path, &value).unwrap();
        let put = cluster.tern(&["put", &key, "--value-file", path.to_str().unwrap()]);
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
        let back = files.path().join(format!("{key}.back"));
        let get = cluster.tern(&["get", &key, "--value-file", back.to_str().unwrap()]);
        assert!(
            get.status.success(),
            "{}",
            String::from_utf8_lossy(&get.stderr)
        );
        assert!(
            std::fs::read(&back).unwrap() == value,
            "{key} through the CLI"
        );
        written.push((key, value));
    }
    // From standard input, out to standard output.
    let piped = value_of(300 << 10, 7);
    let mut put = common::tern()
        .arg("--cluster")
        .arg(cluster.map_path())
        .args(["put", "stdin", "--value-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    put.stdin.take().unwrap().write_all(&piped).unwrap();
    assert!(put.wait().unwrap().success());
    let get = cluster.tern(&["get", "stdin", "--value-file", "-"]);
    assert!(get.stdout == piped, "a value through stdin and stdout");
    written.push(("stdin".into(), piped));
    // Over the limit: refused, naming it, and the client goes on.
    let over = vec![0; tern_wire::LARGE_VALUE_LEN_DEFAULT + 1];
    match client.put(b"over", &over) {
        Err(error @ ClientError::ValueTooLarge { .. }) => {
            assert!(error.to_string().contains("16777216"), "{error}")
        }
        other => panic!("a value over the limit: {other:?}"),
    }
    assert_all_read(&mut client, &written, "as written");
    // The head accounts for the values it keeps for its successor (and
    // answers for readers), within its budget.
    let head = cluster.map.shards[0].replicas[0];
    let held = common::counter(&common::stats_of(&mut client, head), "large_values_bytes");
    assert!(held > 0 && held <= tern_server_budget(), "{held}");

    // Every replica SIGKILLed at once, then restarted from its log.
    cluster.kill(&["shard0-replica0", "shard0-replica1", "shard0-replica2"]);
    std::thread::sleep(Duration::from_millis(200));
    cluster.restart_stopped();
    assert_all_read(&mut client, &written, "after every replica was killed");

    // The head fails for good: meta takes it out while large writes go on.
    let first_head = chain_of(&cluster)[0];
    let head_name = cluster.process_at(first_head);
    cluster.kill(&[&head_name]);
    for round in 0..6 {
        let key = format!("during{round}");
        let value = value_of(200 << 10, 200 + round);
        client.put(key.as_bytes(), &value).unwrap();
        written.push((key, value));
        std::thread::sleep(Duration::from_millis(250));
    }
    wait_for_chain(&cluster, "lost its failed head", |chain| {
        !chain.contains(&first_head)
    });
    assert_all_read(&mut client, &written, "after the head's removal");

    // It comes back, joins by a state transfer, and is the only replica
    // left once the other two fail: it answers every value.
    cluster.restart_stopped();
    wait_for_chain(&cluster, "took the old head back", |chain| {
        chain.len() == 3 && chain.contains(&first_head)
    });
    let others: Vec<String> = chain_of(&cluster)
        .into_iter()
        .filter(|address| *address != first_head)
        .map(|address| cluster.process_at(address))
        .collect();
    let value = value_of(1 << 20, 300);
    client.put(b"after-join", &value).unwrap();
    written.push(("after-join".into(), value));
    for other in &others {
        cluster.kill(&[other]);
        let gone = cluster.meta_map().shards[0]
            .replicas
            .iter()
            .position(|address| cluster.process_at(*address) == *other);
        if gone.is_some() {
            wait_for_chain(&cluster, "lost a failed replica", |chain| {
                chain
                    .iter()
                    .all(|address| cluster.process_at(*address) != *other)
            });
        }
    }
    assert_eq!(chain_of(&cluster), vec![first_head]);
    assert_all_read(&mut client, &written, "from the replica that came back");
}

#[test]
fn large_values_move_with_their_slots_and_keep_their_versions() {
    let cluster =
        TestCluster::up_with_args(2, 2, &["--topology", "loopback", "--durability", "none"]);
    let mut client = patient_client(&cluster);
    let mut written = Vec::new();
    let mut versions = Vec::new();
    for index in 0..40u64 {
        let key = format!("moving{index}");
        // From just over a datagram to a MiB, and small ones between.
        let size = match index % 4 {
            0 => 1025,
            1 => 100 << 10,
            2 => 1 << 20,
            _ => 10,
        };
        let value = value_of(size, 400 + index);
        versions.push(client.put(key.as_bytes(), &value).unwrap());
        written.push((key, value));
    }
    let shard0 = cluster.meta_map().shards[0].slots.clone();
    let [start, end] = shard0[0];
    let range = format!("{start}-{}", end - 1);
    let output = cluster.tern(&["reshard", "--from", "0", "--to", "1", "--slots", &range]);
    assert!(
        output.status.success(),
        "reshard: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.log_tails(20)
    );
    assert!(cluster.meta_map().shards[0].slots.is_empty());
    assert_all_read(&mut client, &written, "after their slots moved");
    // Each kept its version: a CAS naming it still swaps.
    for ((key, _), version) in written.iter().zip(&versions).take(8) {
        let replaced = value_of(2000, 999);
        let outcome = client.cas(key.as_bytes(), *version, &replaced).unwrap();
        assert!(
            matches!(outcome, tern_client::CasOutcome::Swapped { .. }),
            "{key}: {outcome:?}"
        );
    }
}
