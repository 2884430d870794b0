//! Expiry on a running cluster: no read that starts after a key's deadline
//! returns it, from whichever replica answers, while replicas are killed,
//! restarted and failed over; the deadlines survive all of it; and once the
//! keys have expired every replica's memory of them is gone (the head's
//! sequenced deletes). The CLI sets, shows and clears deadlines.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestCluster, counter, stats_of};
use tern_client::expiry::unix_now_ms;
use tern_client::{Client, ClientOptions, Lifetime, SetCondition};

const EXPIRING: usize = 300;
const LASTING: usize = 50;
/// Every process reads the same clock; a core reads it through an offset
/// taken in whole milliseconds, hence a millisecond either way.
const CLOCK_SLACK_MS: u64 = 2;

/// Sleeps until this machine's clock reads `unix_ms`.
fn wait_until(unix_ms: u64) {
    while unix_now_ms() < unix_ms {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn expired_keys_are_never_read_across_restarts_and_failover_and_their_memory_comes_back() {
    let cluster =
        TestCluster::up_with_args(1, 3, &["--topology", "loopback", "--durability", "always"]);
    let mut client = Client::new(cluster.map.clone()).unwrap();
    // Deadlines spread over two seconds from three seconds on (absolute, so
    // that a slow machine writing them still writes them all ahead of
    // their deadlines), each read back as the head has it.
    let mut deadlines = HashMap::new();
    let first = unix_now_ms() + 3000;
    for index in 0..EXPIRING {
        let key = format!("e{index}");
        let lifetime = Lifetime::Until(first + 6 * index as u64);
        client
            .set_for(key.as_bytes(), b"v", SetCondition::Always, false, lifetime)
            .unwrap();
        let found = client
            .get(key.as_bytes())
            .unwrap()
            .expect("not expired yet");
        deadlines.insert(key, found.deadline_ms.expect("a deadline"));
    }
    for index in 0..LASTING {
        client.put(format!("l{index}").as_bytes(), b"kept").unwrap();
    }
    let deadlines = Arc::new(deadlines);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, late) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (map, deadlines, stop) = (cluster.map.clone(), deadlines.clone(), stop.clone());
            let (seen, late) = (seen.clone(), late.clone());
            std::thread::spawn(move || {
                let options = ClientOptions {
                    attempt_timeout: Duration::from_millis(100),
                    deadline: Duration::from_millis(500),
                    ..ClientOptions::default()
                };
                let mut client = Client::with_options(map, options).unwrap();
                let mut index = reader;
                while !stop.load(Ordering::Relaxed) {
                    index = (index + 7) % EXPIRING;
                    let key = format!("e{index}");
                    let started = unix_now_ms();
                    // Failover makes some reads fail: only answers count.
                    let Ok(found) = client.get(key.as_bytes()) else {
                        continue;
                    };
                    let deadline = deadlines[&key];
                    if let Some(found) = found {
                        seen.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(
                            found.deadline_ms,
                            Some(deadline),
                            "{key}: its deadline kept"
                        );
                        if started >= deadline + CLOCK_SLACK_MS {
                            eprintln!("{key} read at {started}, after its deadline {deadline}");
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // Kills come while keys are live and while they expire: the tail
    // killed and restarted from its log; then the head, long enough
    // for meta to take it out of the chain, before it comes back.
    wait_until(first - 500);
    cluster.kill(&["shard0-replica2"]);
    std::thread::sleep(Duration::from_millis(100));
    cluster.restart_stopped();
    std::thread::sleep(Duration::from_millis(300));
    cluster.kill(&["shard0-replica0"]);
    std::thread::sleep(Duration::from_millis(1500));
    cluster.restart_stopped();
    // Until the last deadline has passed, and a while after.
    let last = *deadlines.values().max().unwrap();
    wait_until(last + 500);
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    assert!(
        seen.load(Ordering::Relaxed) > 50,
        "the readers saw keys live"
    );
    assert_eq!(late.load(Ordering::Relaxed), 0, "reads after a deadline");
    // Every replica of the chain forgets the expired keys; the others stay.
    let started = Instant::now();
    loop {
        let map = cluster
            .meta_map()
            .to_cluster_map(&cluster.map.meta)
            .unwrap();
        let mut admin = Client::new(map.clone()).unwrap();
        let counts: Vec<(u64, u64)> = map.shards[0]
            .replicas
            .iter()
            .map(|replica| {
                let stats = stats_of(&mut admin, *replica);
                (
                    counter(&stats, "live_keys"),
                    counter(&stats, "expiring_keys"),
                )
            })
            .collect();
        if counts.len() == 3 && counts.iter().all(|&count| count == (LASTING as u64, 0)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "(live, expiring) keys per replica: {counts:?}\n{}",
            cluster.log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = Client::new(
        cluster
            .meta_map()
            .to_cluster_map(&cluster.map.meta)
            .unwrap(),
    )
    .unwrap();
    for index in 0..LASTING {
        let found = client.get(format!("l{index}").as_bytes()).unwrap().unwrap();
        assert_eq!((found.value, found.deadline_ms), (b"kept".to_vec(), None));
    }
}

#[test]
fn the_cli_sets_shows_and_clears_deadlines() {
    let cluster = TestCluster::up_with_args(1, 3, &["--topology", "loopback"]);
    let run = |args: &[&str]| {
        let output = cluster.tern(args);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )
    };
    assert_eq!(run(&["put", "k", "v", "--expire-in", "60s"]).0, Some(0));
    let (_, left) = run(&["ttl", "k"]);
    let left: u64 = left.parse().unwrap_or_else(|_| panic!("{left}"));
    assert!((50_000..=60_000).contains(&left), "{left}");
    assert_eq!(run(&["expire", "k", "--persist"]), (Some(0), "OK".into()));
    assert_eq!(run(&["ttl", "k"]), (Some(0), "none".into()));
    assert_eq!(run(&["expire", "k", "300ms"]), (Some(0), "OK".into()));
    assert_eq!(run(&["expire", "absent", "1s"]).0, Some(1));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(run(&["get", "k"]).0, Some(1), "expired");
    assert_eq!(run(&["ttl", "k"]).0, Some(1));
}

/// The answer of the replica at `replica` to a read of `key` sent straight
/// to it (its newest value), as the map names the shard's epoch; None when
/// it does not answer, or only TRY_AGAIN (while it joins), for a while.
fn try_read_at(
    cluster: &TestCluster,
    replica: std::net::SocketAddrV4,
    key: &[u8],
) -> Option<tern_wire::Status> {
    use tern_wire::{Header, Message, Op, encode, flags, key_hash};
    let epoch = cluster.meta_map().shards[0].epoch.get();
    let mut header = Header::new(Op::Get, 0, epoch);
    header.key_hash.set(key_hash(key));
    header.request_id.set(1);
    header.flags = flags::TAIL_READ;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request = encode(&header, key, b"").unwrap();
    let mut buffer = [0u8; 2048];
    for _ in 0..10 {
        socket.send_to(&request, replica).unwrap();
        if let Ok((length, _)) = socket.recv_from(&mut buffer) {
            let status = Message::decode(&buffer[..length]).unwrap().header.status();
            if status != tern_wire::Status::TryAgain {
                return Some(status);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn read_at(
    cluster: &TestCluster,
    replica: std::net::SocketAddrV4,
    key: &[u8],
) -> tern_wire::Status {
    try_read_at(cluster, replica, key).unwrap_or_else(|| panic!("no answer from {replica}"))
}

#[test]
fn a_replica_whose_clock_runs_ahead_hides_a_value_early_by_at_most_its_skew() {
    const SKEW_MS: u64 = 400;
    let cluster =
        TestCluster::up_with_args(1, 3, &["--topology", "loopback", "--durability", "always"]);
    // One replica comes back with its clock SKEW_MS ahead of the others'.
    cluster.kill(&["shard0-replica2"]);
    let output = common::tern()
        .args([
            "cluster",
            "restart",
            "--dir",
            cluster.dir().to_str().unwrap(),
        ])
        .env(tern_server::CLOCK_SKEW_VARIABLE, SKEW_MS.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Wherever meta has put it back in the chain, once it serves there.
    let started = Instant::now();
    let (map, skewed, other) = loop {
        let map = cluster
            .meta_map()
            .to_cluster_map(&cluster.map.meta)
            .unwrap();
        let replicas = map.shards[0].replicas.clone();
        let skewed = replicas
            .iter()
            .find(|replica| cluster.process_at(**replica) == "shard0-replica2");
        if let Some(&skewed) = skewed
            && replicas.len() == 3
            // Joining (under a loaded machine, for a while), it answers
            // TRY_AGAIN or nothing.
            && try_read_at(&cluster, skewed, b"probe") == Some(tern_wire::Status::NotFound)
        {
            let other = *replicas.iter().find(|replica| **replica != skewed).unwrap();
            break (map, skewed, other);
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not back in the chain"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut client = Client::new(map).unwrap();
    // Long enough that a loaded machine is still well before the deadline
    // once the write and the read of its deadline are done.
    let lifetime = Lifetime::For(Duration::from_millis(5000));
    client
        .set_for(b"k", b"v", SetCondition::Always, false, lifetime)
        .unwrap();
    // Decided by the head's clock.
    let deadline = client.get(b"k").unwrap().unwrap().deadline_ms.unwrap();
    // Half the skew before the deadline: the skewed replica, whose clock
    // reads past the deadline, hides the value. Another still has it,
    // unless the skewed replica heads the chain (a loaded machine can make
    // meta reorder it): its head then has the key deleted by its own
    // clock, up to the skew early, which the stated bound allows.
    wait_until(deadline - SKEW_MS / 2);
    let chain = cluster.meta_map().shards[0].replicas.clone();
    if chain.first() != Some(&skewed) {
        assert_eq!(
            read_at(&cluster, other, b"k"),
            tern_wire::Status::Ok,
            "chain {chain:?}, skewed {skewed}, other {other}, deadline {deadline}, now {}",
            unix_now_ms()
        );
    }
    assert_eq!(read_at(&cluster, skewed, b"k"), tern_wire::Status::NotFound);
    // After the deadline: gone from both, and reaped from the skewed one.
    wait_until(deadline + CLOCK_SLACK_MS);
    assert_eq!(read_at(&cluster, other, b"k"), tern_wire::Status::NotFound);
    let started = Instant::now();
    let mut admin = Client::new(cluster.map.clone()).unwrap();
    while counter(&stats_of(&mut admin, skewed), "live_keys") != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the delete never came"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keys_moved_by_a_reshard_keep_their_deadlines_and_expire_at_their_new_shard() {
    let cluster = TestCluster::up_with_args(2, 1, &["--topology", "loopback"]);
    let mut client = Client::new(cluster.map.clone()).unwrap();
    // Keys of shard 0's first slots, each with a deadline, and one lasting.
    let moved = |key: &[u8]| tern_client::Slot::of_key(key).get() < 4096;
    let keys: Vec<Vec<u8>> = (0..)
        .map(|n| format!("moving-{n}").into_bytes())
        .filter(|key| moved(key))
        .take(40)
        .collect();
    let mut deadlines = HashMap::new();
    for (index, key) in keys.iter().enumerate() {
        let lifetime = Lifetime::For(Duration::from_millis(8000 + 10 * index as u64));
        client
            .set_for(key, b"v", SetCondition::Always, false, lifetime)
            .unwrap();
        deadlines.insert(key.clone(), client.get(key).unwrap().unwrap().deadline_ms);
    }
    client.put(&keys[0], b"lasting").unwrap();
    deadlines.insert(keys[0].clone(), None);
    let output = cluster.tern(&["reshard", "--from", "0", "--to", "1", "--slots", "0-4095"]);
    assert!(output.status.success(), "{output:?}");
    let soonest = deadlines.values().flatten().min().copied().unwrap();
    assert!(
        unix_now_ms() < soonest,
        "the reshard took longer than the keys live"
    );
    let map = cluster
        .meta_map()
        .to_cluster_map(&cluster.map.meta)
        .unwrap();
    let mut client = Client::new(map.clone()).unwrap();
    for key in &keys {
        assert_eq!(map.shard_of_key_hash(tern_wire::key_hash(key)).id.get(), 1);
        let found = client.get(key).unwrap().expect("moved, not expired yet");
        assert_eq!(
            found.deadline_ms,
            deadlines[key],
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    // They expire where they are now, and the new shard's head reaps them.
    let last = deadlines.values().flatten().max().copied().unwrap();
    wait_until(last + 50);
    for key in &keys[1..] {
        assert!(client.get(key).unwrap().is_none());
    }
    assert_eq!(client.get(&keys[0]).unwrap().unwrap().value, b"lasting");
    let destination = *map.shards[1].replicas.last().unwrap();
    let started = Instant::now();
    while counter(&stats_of(&mut client, destination), "expiring_keys") != 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "never reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
}
