//! Malformed datagrams sent to live processes are counted and dropped, or
//! answered with an error when the sender can be answered; the process keeps
//! serving. Both coordinator modes get the same corpus, sent as a client
//! would: the XDP program must refuse (hand up) everything the Rust decoder
//! refuses, or a sequenced write the head cannot apply wedges the shard.
//! Oversized keys and values are refused by the CLI with the limit.

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::Duration;

use common::{TestCluster, counter, stats_of};
use tern_client::Client;
use tern_wire::{Header, Message, Op, Status, encode, key_hash};
use zerocopy::IntoBytes;

/// A datagram and what the receiver must do with it.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// The error reply expected, or None when it must be dropped silently.
    reply: Option<Status>,
    /// The drop counter it must raise.
    counter: &'static str,
}

fn valid_get(shard: u32) -> Vec<u8> {
    let mut header = Header::new(Op::Get, shard, 1);
    header.key_hash.set(key_hash(b"k"));
    header.request_id.set(77);
    encode(&header, b"k", b"").unwrap()
}

fn cases() -> Vec<Case> {
    let good = valid_get(0);
    let mut unknown_op = good.clone();
    unknown_op[3] = 200;
    let mut wrong_version = good.clone();
    wrong_version[2] = 9;
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xFF;
    // A header announcing a value over the limit.
    let mut oversized_header = Header::new(Op::Put, 0, 1);
    oversized_header.value_len.set(5000);
    oversized_header.request_id.set(77);
    let mut oversized = oversized_header.as_bytes().to_vec();
    oversized.resize(3000, b'x');
    // A valid header followed by more bytes than it announces.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    // Writes and reads whose key hash does not match the key: three writes,
    // as many as once wedged a shard through the XDP path for good.
    let wrong_hash = |op: Op, key: &[u8], value: &[u8]| {
        let mut header = Header::new(op, 0, 1);
        header.key_hash.set(key_hash(key) ^ 0x5a5a);
        header.request_id.set(77);
        encode(&header, key, value).unwrap()
    };
    // A put whose header is valid but for one field.
    let put_with = |change: &dyn Fn(&mut Header)| {
        let mut header = Header::new(Op::Put, 0, 1);
        header.key_hash.set(key_hash(b"k"));
        header.request_id.set(77);
        change(&mut header);
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(b"kv");
        bytes
    };
    let mut get_with_value = Header::new(Op::Get, 0, 1);
    get_with_value.key_hash.set(key_hash(b"k"));
    get_with_value.request_id.set(77);
    let get_with_value = encode(&get_with_value, b"k", b"v").unwrap();
    let mut cases = vec![
        Case {
            name: "truncated",
            bytes: good[..10].to_vec(),
            reply: None,
            counter: "drop_truncated",
        },
        Case {
            name: "bad magic",
            bytes: bad_magic,
            reply: None,
            counter: "drop_bad_magic",
        },
        Case {
            name: "unknown op",
            bytes: unknown_op,
            reply: Some(Status::UnknownOp),
            counter: "drop_unknown_op",
        },
        Case {
            name: "wrong version",
            bytes: wrong_version,
            reply: Some(Status::UnsupportedVersion),
            counter: "drop_bad_version",
        },
        Case {
            name: "oversized",
            bytes: oversized,
            reply: Some(Status::TooLarge),
            counter: "drop_too_large",
        },
        Case {
            name: "bad length",
            bytes: trailing,
            reply: Some(Status::Malformed),
            counter: "drop_bad_length",
        },
        Case {
            name: "unknown status",
            bytes: put_with(&|header| header.status = 200),
            reply: Some(Status::Malformed),
            counter: "drop_bad_field",
        },
        Case {
            name: "unknown effect",
            bytes: put_with(&|header| header.effect = 200),
            reply: Some(Status::Malformed),
            counter: "drop_bad_field",
        },
        Case {
            name: "get with a value",
            bytes: get_with_value,
            reply: Some(Status::Malformed),
            counter: "drop_bad_field",
        },
        Case {
            name: "wrong key hash on a get",
            bytes: wrong_hash(Op::Get, b"k", b""),
            reply: Some(Status::BadKeyHash),
            counter: "drop_bad_key_hash",
        },
    ];
    for (index, op) in [Op::Put, Op::Cas, Op::IncrBy].into_iter().enumerate() {
        cases.push(Case {
            name: "wrong key hash on a write",
            bytes: wrong_hash(op, format!("key{index}").as_bytes(), b"1"),
            reply: Some(Status::BadKeyHash),
            counter: "drop_bad_key_hash",
        });
    }
    cases
}

fn send_bad_datagrams_to(target: SocketAddrV4, cluster: &TestCluster) {
    let mut client = Client::new(cluster.map.clone()).unwrap();
    // Any address: the target may be on loopback or in a network namespace.
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for case in cases() {
        let before = counter(&stats_of(&mut client, target), case.counter);
        socket.send_to(&case.bytes, target).unwrap();
        let mut buffer = [0u8; 2048];
        match case.reply {
            Some(status) => {
                let (length, _) = socket
                    .recv_from(&mut buffer)
                    .unwrap_or_else(|_| panic!("{}: expected a {status:?} reply", case.name));
                let reply = Message::decode(&buffer[..length]).unwrap();
                assert_eq!(reply.header.status(), status, "{}", case.name);
                assert_eq!(
                    reply.header.request_id.get(),
                    77,
                    "{}: the reply names the request",
                    case.name
                );
            }
            None => assert!(
                socket.recv_from(&mut buffer).is_err(),
                "{}: expected silence",
                case.name
            ),
        }
        let after = counter(&stats_of(&mut client, target), case.counter);
        assert_eq!(
            after,
            before + 1,
            "{}: counter {} of {target}",
            case.name,
            case.counter
        );
    }
    // The process still serves, writes and reads, many times over (a
    // wedged shard would hold back every write behind an unfilled seq).
    for round in 0..20 {
        let key = format!("after-bad-input-{round}");
        client
            .put(key.as_bytes(), b"still here")
            .expect("cluster serves writes after bad input");
        assert_eq!(
            client.get(key.as_bytes()).unwrap().unwrap().value,
            b"still here"
        );
    }
}

#[test]
fn a_coordinator_counts_and_drops_malformed_datagrams_and_keeps_serving() {
    let cluster = TestCluster::up(1, 3);
    send_bad_datagrams_to(cluster.map.shards[0].coordinator, &cluster);
}

#[test]
fn an_xdp_coordinator_refuses_what_the_decoder_refuses_and_keeps_serving() {
    let cluster = TestCluster::up_with(1, 3, "xdp", "netns");
    let coordinator = cluster.map.shards[0].coordinator;
    send_bad_datagrams_to(coordinator, &cluster);
    // The kernel refused them itself: the wrong key hashes were handed up
    // by the XDP program, and the head never had to fill a refused seq.
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let stats = stats_of(&mut client, coordinator);
    assert_eq!(counter(&stats, "xdp.pass_bad_key_hash"), 4, "{stats}");
    assert!(counter(&stats, "xdp.writes") >= 20, "{stats}");
    let head = stats_of(&mut client, cluster.map.shards[0].replicas[0]);
    assert_eq!(counter(&head, "refused_sequenced"), 0, "{head}");
}

#[test]
fn a_replica_counts_and_drops_malformed_datagrams_and_keeps_serving() {
    let cluster = TestCluster::up(1, 3);
    // The middle replica: neither the coordinator's peer nor the client's.
    send_bad_datagrams_to(cluster.map.shards[0].replicas[1], &cluster);
}

#[test]
fn the_cli_refuses_oversized_keys_and_values_and_states_the_limit() {
    let cluster = TestCluster::up(1, 1);
    let long_key = "k".repeat(tern_wire::KEY_LEN_MAX + 1);
    let output = cluster.tern(&["get", &long_key]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("exceeds the limit of 256 bytes"),
        "{message}"
    );

    // Past a datagram's value: out of band, accepted and read back whole.
    let long_value = "v".repeat(tern_wire::VALUE_LEN_MAX + 1);
    assert!(cluster.tern(&["put", "k", &long_value]).status.success());
    let output = cluster.tern(&["get", "k"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        long_value
    );

    // Over the value limit, from a file: refused before anything is sent,
    // naming the limit.
    let file = cluster.dir().join("value");
    std::fs::write(&file, vec![b'w'; tern_wire::LARGE_VALUE_LEN_DEFAULT + 1]).unwrap();
    let output = cluster.tern(&["put", "k", "--value-file", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("exceeds the limit of 16777216 bytes"),
        "{message}"
    );
    let mut put = common::tern()
        .args(["--cluster", cluster.map_path().to_str().unwrap()])
        .args(["put", "piped", "--value-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    put.stdin.take().unwrap().write_all(b"from\nstdin").unwrap();
    assert!(put.wait_with_output().unwrap().status.success());
    let output = cluster.tern(&["get", "piped"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from\nstdin\n");
}

#[test]
fn cli_commands_round_trip_and_status_shows_every_process() {
    let cluster = TestCluster::up(2, 3);
    let stdout = |args: &[&str]| String::from_utf8(cluster.tern(args).stdout).unwrap();
    assert_eq!(stdout(&["put", "colour", "blue"]).trim(), "OK version 1");
    let read = stdout(&["get", "colour", "--with-version"]);
    assert_eq!(read.trim(), "1\tblue");
    let output = cluster.tern(&["cas", "colour", "7", "red"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "MISMATCH current version 1"
    );
    // Versions are the shard's sequence numbers: the refused CAS took seq 2
    // (and a resend of it, on a slow machine, one more: every datagram of
    // a write is sequenced, the head answers a resend from its dedup).
    let swapped = stdout(&["cas", "colour", "1", "red"]);
    let version: u64 = swapped
        .trim()
        .strip_prefix("OK version ")
        .and_then(|version| version.parse().ok())
        .unwrap_or_else(|| panic!("{swapped}"));
    assert!(version >= 3, "{swapped}");
    assert_eq!(stdout(&["del", "colour"]).trim(), "deleted");
    assert_eq!(cluster.tern(&["get", "colour"]).status.code(), Some(1));

    let dir = cluster.dir().to_str().unwrap().to_string();
    let status = common::run_tern(&["cluster", "status", "--dir", &dir]);
    assert!(status.status.success());
    let text = String::from_utf8(status.stdout).unwrap();
    // Six replicas, the coordinator (once per shard), the meta node and
    // the standby coordinator.
    assert_eq!(
        text.matches(" up ").count(),
        2 * 3 + 2 + 2,
        "every process up:\n{text}"
    );
    for role in ["coordinator", "head", "middle", "tail", "meta", "standby"] {
        assert!(text.contains(role), "{role} missing:\n{text}");
    }
}

#[test]
fn xdp_mode_without_its_own_interface_is_refused_and_auto_falls_back_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    assert_refused(
        &[
            "cluster",
            "up",
            "--dir",
            path,
            "--mode",
            "xdp",
            "--topology",
            "loopback",
        ],
        "--mode xdp needs --topology netns",
    );

    let auto = common::run_tern(&[
        "cluster",
        "up",
        "--dir",
        path,
        "--replicas",
        "1",
        "--mode",
        "auto",
        "--topology",
        "loopback",
    ]);
    let stdout = String::from_utf8_lossy(&auto.stdout);
    let _guard = scopeguard(path);
    assert!(
        auto.status.success(),
        "{}",
        String::from_utf8_lossy(&auto.stderr)
    );
    assert!(
        stdout.contains("--mode auto: using the user-space coordinator, because"),
        "{stdout}"
    );
    assert!(stdout.contains("user mode"), "{stdout}");
}

#[test]
fn impossible_replication_settings_are_refused_at_cluster_up_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let up = |extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["cluster", "up", "--dir", path, "--topology", "loopback"]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    };
    let refused = |extra: &[&'static str], says: &str| {
        let args = up(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, says);
    };
    refused(
        &["--commit", "early:0"],
        "K, the replicas that hold a write",
    );
    refused(
        &["--commit", "early:4", "--replicas", "3"],
        "a shard has only 3 (--replicas)",
    );
    refused(&["--commit", "fanout"], "unknown commit rule");
    refused(&["--replicas", "9"], "a chain has at most 8 replicas");
    refused(
        &["--replication", "fanout", "--replicas", "9"],
        "a fan-out acknowledges from at most 8",
    );
    refused(&["--replication", "star"], "unknown replication");
    refused(
        &[
            "--replication",
            "fanout",
            "--commit",
            "early:4",
            "--replicas",
            "3",
        ],
        "a shard has only 3 (--replicas)",
    );
    // Nothing was started by any of them.
    assert!(!dir.path().join("processes.toml").exists());
}

/// Runs `tern` with `args` and asserts that it fails saying `says`.
fn assert_refused(args: &[&str], says: &str) {
    let refused = common::run_tern(args);
    assert!(!refused.status.success(), "{args:?} succeeded");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains(says), "{message}");
}

/// Stops the cluster in `dir` when dropped.
fn scopeguard(dir: &str) -> impl Drop + '_ {
    struct Down<'a>(&'a str);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = common::run_tern(&["cluster", "down", "--dir", self.0]);
        }
    }
    Down(dir)
}

#[test]
fn a_coordinator_drops_sources_its_allow_list_leaves_out_and_serves_the_rest() {
    // Everything of the cluster (and this test's client) is on 127.0.0.1;
    // 127.0.0.3 is another host of the same machine.
    let cluster = TestCluster::up_with_args(
        1,
        3,
        &["--topology", "loopback", "--allow-clients", "127.0.0.1/32"],
    );
    let coordinator = cluster.map.shards[0].coordinator;
    let outsider = UdpSocket::bind("127.0.0.3:0").unwrap();
    outsider
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut ping = Header::new(Op::Ping, 0, 1);
    ping.request_id.set(5);
    for datagram in [encode(&ping, b"", b"").unwrap(), valid_get(0)] {
        outsider.send_to(&datagram, coordinator).unwrap();
        let mut reply = [0u8; 2048];
        assert!(
            outsider.recv_from(&mut reply).is_err(),
            "no answer to an outsider"
        );
    }
    // The cluster serves its own network as before.
    let mut client = Client::new(cluster.map.clone()).unwrap();
    client.put(b"k", b"v").unwrap();
    assert_eq!(client.get(b"k").unwrap().unwrap().value, b"v");
    let stats = stats_of(&mut client, coordinator);
    assert_eq!(counter(&stats, "refused_not_allowed"), 2, "{stats}");
    // A list that does not parse is refused at start, naming the problem.
    assert_refused(
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:1",
            "--allow-clients",
            "10.0.0.1/8",
        ],
        "host bits set; the network is 10.0.0.0/8",
    );
}

#[test]
fn an_xdp_coordinator_with_an_allow_list_serves_its_networks_in_the_kernel() {
    // The netns topology's addresses (and the host's) are in 10.0.0.0/8.
    let cluster = TestCluster::up_with_args(
        1,
        3,
        &[
            "--mode",
            "xdp",
            "--topology",
            "netns",
            "--allow-clients",
            "10.0.0.0/8",
        ],
    );
    let mut client = Client::new(cluster.map.clone()).unwrap();
    for round in 0..20u32 {
        let key = format!("k{round}");
        client.put(key.as_bytes(), b"v").unwrap();
        assert!(client.get(key.as_bytes()).unwrap().is_some());
    }
    let stats = stats_of(&mut client, cluster.map.shards[0].coordinator);
    assert!(counter(&stats, "xdp.writes") >= 20, "{stats}");
    assert_eq!(counter(&stats, "xdp.drop_not_allowed"), 0, "{stats}");
    assert_eq!(counter(&stats, "refused_not_allowed"), 0, "{stats}");
}

#[test]
fn a_cluster_up_where_a_cluster_was_stopped_needs_fresh_and_then_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let map = dir.path().join("cluster.toml");
    let map = map.to_str().unwrap();
    let up_args = [
        "cluster",
        "up",
        "--dir",
        path,
        "--replicas",
        "1",
        "--topology",
        "loopback",
    ];
    let up = |extra: &[&str]| {
        let mut args = up_args.to_vec();
        args.extend_from_slice(extra);
        common::run_tern(&args)
    };
    assert!(up(&[]).status.success());
    let put = common::run_tern(&["--cluster", map, "put", "k", "v"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert!(
        common::run_tern(&["cluster", "down", "--dir", path])
            .status
            .success()
    );
    // The stopped cluster's data names addresses the next one will not
    // have: refused with the way out, nothing started.
    assert_refused(&up_args, "give --fresh to remove it");
    let again = up(&["--fresh"]);
    let _guard = scopeguard(path);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("removed the data of the cluster stopped")
    );
    let put = common::run_tern(&["--cluster", map, "put", "k", "w"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
}
