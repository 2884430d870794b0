//! Mutual TLS on the control plane, as `tern cluster up` sets it up by
//! default: connections without a certificate of the cluster's authority,
//! and requests a certificate's role may not make, are refused and change
//! nothing; the operator's certificate changes the map.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, SystemTime};

use common::TestCluster;
use tern_client::meta::{self, Change, NodeKind, Refusal, Reply, Request};
use tern_client::tls::{self, Identity, Role};
use tern_client::{Client, ShardId};
use tern_testbed::certs;

const TIMEOUT: Duration = Duration::from_secs(2);

/// The meta node's status: its term and map version (a refusal changes
/// neither).
fn status(cluster: &TestCluster) -> (u64, Option<u64>) {
    match meta::call(cluster.map.meta[0], &Request::Status, TIMEOUT) {
        Ok(Reply::Status(status)) => (status.term, status.map_version),
        other => panic!("no status from meta: {other:?}"),
    }
}

/// Sends `line` over plain TCP and returns what came back before the
/// server closed the connection.
fn plain_exchange(address: SocketAddrV4, line: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(line.as_bytes());
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    answer
}

/// Sends `line` as `identity` to the server of `role` at `address`: the
/// answer line ("" when the server closed the connection instead).
fn exchange_as(identity: &Identity, address: SocketAddrV4, role: Role, line: &str) -> String {
    let mut stream = tls::connect_as(Some(identity), address, TIMEOUT, role).unwrap();
    stream.write_all(line.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    answer
}

fn refused_total(cluster: &TestCluster, process: &str) -> f64 {
    let address = cluster.metrics_of(process);
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    response
        .lines()
        .find_map(|line| {
            let value = line
                .strip_prefix("tern_")?
                .split_once("control_refused_total ")?
                .1;
            value.parse().ok()
        })
        .unwrap_or_else(|| panic!("no control_refused_total in {response}"))
}

#[test]
fn the_control_plane_refuses_the_uncertified_and_the_unentitled_and_changes_nothing() {
    let cluster = TestCluster::up(1, 3);
    let certs = cluster.dir().join("certs");
    let meta_at = cluster.map.meta[0];
    let shard = &cluster.map.shards[0];
    let (victim, source) = (shard.replicas[2], shard.replicas[0]);
    let mut client = Client::new(cluster.map.clone()).unwrap();
    client.put(b"kept", b"value").unwrap();
    let before = status(&cluster);
    let meta_refused = refused_total(&cluster, "meta1");

    // Plain TCP, the attack of anyone on the network: a forged heartbeat,
    // a RemoveReplica and a snapshot request get no answer.
    let remove = Request::Change(Change::RemoveReplica {
        shard: ShardId(0),
        addr: victim,
    });
    let heartbeat = Request::Heartbeat {
        addr: "127.0.0.1:9".parse().unwrap(),
        kind: NodeKind::Replica {
            shard: ShardId(0),
            spare: true,
        },
    };
    for request in [&remove, &heartbeat] {
        let answer = meta::call_as(None, meta_at, request, TIMEOUT);
        assert!(answer.is_err(), "plain {request:?} answered: {answer:?}");
    }
    // What comes back is at most a TLS alert record (content type 21),
    // never an answer (`EPOCH LENGTH`, then the shard's state).
    let answer = plain_exchange(source, "SNAPSHOT\n");
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.len() < 16),
        "a plain SNAPSHOT request got {answer:?}"
    );
    let answer = plain_exchange(meta_at, "{\"Api\":\"Status\"}\n");
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.len() < 16),
        "a plain Status request got {answer:?}"
    );

    // A replica's certificate may not change the map, nor speak for an
    // address its certificate does not name, nor send Raft messages.
    let replica = Identity::load(&certs, "shard0-replica1").unwrap();
    match meta::call_as(Some(&replica), meta_at, &remove, TIMEOUT) {
        Ok(Reply::Refused(Refusal::NotPermitted { who, .. })) => assert_eq!(who, "a replica"),
        other => panic!("a replica's RemoveReplica: {other:?}"),
    }
    common::issue_certificate(&certs, "elsewhere", "replica", "10.9.9.9");
    let elsewhere = Identity::load(&certs, "elsewhere").unwrap();
    let own_heartbeat = Request::Heartbeat {
        addr: victim,
        kind: NodeKind::Replica {
            shard: ShardId(0),
            spare: true,
        },
    };
    match meta::call_as(Some(&elsewhere), meta_at, &own_heartbeat, TIMEOUT) {
        Ok(Reply::Refused(Refusal::NotPermitted { what, .. })) => {
            assert!(what.contains("not an address of its certificate"), "{what}")
        }
        other => panic!("a heartbeat for another's address: {other:?}"),
    }
    let vote = format!(
        "{}\n",
        serde_json::json!({"Vote": {"vote": {"leader_id": {"term": before.0 + 5, "node_id": 9}, "committed": false}, "last_log_id": null}})
    );
    assert_eq!(
        exchange_as(&replica, meta_at, Role::Meta, &vote),
        "",
        "a replica's Raft vote must close the connection"
    );
    // A client's certificate may not take a shard's state.
    let application = Identity::load(&certs, "client").unwrap();
    assert_eq!(
        exchange_as(&application, source, Role::Replica, "SNAPSHOT\n"),
        "! NOT_PERMITTED\n"
    );

    // Another authority's certificate, of the right name and role, is
    // refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    certs::create_authority(other.path()).unwrap();
    common::issue_certificate(other.path(), "operator", "operator", "127.0.0.1");
    let stranger = Identity::load(other.path(), "operator").unwrap();
    let answer = meta::call_as(Some(&stranger), meta_at, &remove, TIMEOUT);
    assert!(answer.is_err(), "another authority's operator: {answer:?}");

    // None of it changed anything; meta counted every refusal.
    assert_eq!(status(&cluster), before);
    assert_eq!(cluster.meta_map().shards[0].replicas, shard.replicas);
    assert_eq!(client.get(b"kept").unwrap().unwrap().value, b"value");
    let counted = refused_total(&cluster, "meta1") - meta_refused;
    assert!(counted >= 6.0, "meta counted {counted} refusals");
    assert!(refused_total(&cluster, "shard0-replica0") >= 2.0);

    // The operator's certificate (the tools' default) changes the map.
    let output = cluster.tern(&["node", "remove", "--shard", "0", &victim.to_string()]);
    assert!(output.status.success(), "{output:?}");
    assert!(!cluster.meta_map().shards[0].replicas.contains(&victim));
}

#[test]
fn a_process_without_a_valid_certificate_says_which_file_and_why() {
    let cluster = TestCluster::up(1, 1);
    let certs = cluster.dir().join("certs");
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    certs::issue_valid(
        &certs,
        "stale",
        Role::Operator,
        &[],
        now - 3 * day,
        now - day,
    )
    .unwrap();
    let output = cluster.tern(&["--identity", "stale", "get", "kept"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("stale.pem") && stderr.to_lowercase().contains("expired"),
        "{stderr}"
    );
    let output = cluster.tern(&["--identity", "nobody", "get", "kept"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nobody.pem: no such file") && stderr.contains("tern certs issue"),
        "{stderr}"
    );
    // A replica started with the operator's certificate would be refused by
    // its peers: it does not start.
    let output = cluster.tern(&["server", "--shard", "0", "--listen", "127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("a replica needs one of role replica"),
        "{stderr}"
    );
    // The default tools still work.
    let output = cluster.tern(&["put", "kept", "yes"]);
    assert!(output.status.success(), "{output:?}");
}
