//! The control plane on its own: three meta nodes keep the map through the
//! loss of their leader, a new leader commits changes, and the old one
//! catches up from its persisted log when it returns.

mod common;

use std::net::{SocketAddrV4, TcpListener};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tern_client::meta::{self, Change, MetaStatus, Refusal, Reply, Request};

struct Node {
    id: u64,
    addr: SocketAddrV4,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(addr) => addr,
        other => panic!("not IPv4: {other}"),
    }
}

fn start(dir: &std::path::Path, node: &mut Node, peers: &str) {
    let data = dir.join(format!("meta{}", node.id));
    let log = std::fs::File::create(dir.join(format!("meta{}.log", node.id))).unwrap();
    let child = common::tern()
        .args(["--cluster", dir.join("cluster.toml").to_str().unwrap()])
        .args(["meta", "--id", &node.id.to_string(), "--peers", peers])
        .args(["--data-dir", data.to_str().unwrap()])
        // No replica heartbeats here: keep the failure handling out of it.
        .args(["--failure-timeout-ms", "600000"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    node.child = Some(child);
}

fn status(addr: SocketAddrV4) -> Option<MetaStatus> {
    match meta::call(addr, &Request::Status, Duration::from_millis(300)) {
        Ok(Reply::Status(status)) => Some(status),
        _ => None,
    }
}

/// Waits until some live node leads with the map at least at `version`.
fn leader(nodes: &[Node], version: u64) -> SocketAddrV4 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        for node in nodes.iter().filter(|node| node.child.is_some()) {
            if let Some(status) = status(node.addr)
                && status.leader == Some(status.id)
                && status.map_version.is_some_and(|v| v >= version)
            {
                return node.addr;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no meta leader with map version {version} within 20 s");
}

fn current(nodes: &[SocketAddrV4]) -> meta::MetaMap {
    match meta::call_leader(nodes, &mut None, &Request::GetMap).unwrap() {
        Reply::Map(map) => map,
        other => panic!("no map: {other:?}"),
    }
}

fn change(nodes: &[SocketAddrV4], change: Change) -> meta::MetaMap {
    match meta::call_leader(nodes, &mut None, &Request::Change(change)).unwrap() {
        Reply::Map(map) => map,
        other => panic!("change not committed: {other:?}"),
    }
}

#[test]
fn meta_keeps_the_map_through_the_loss_of_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node {
            id,
            addr: free_port(),
            child: None,
        })
        .collect();
    let addrs: Vec<SocketAddrV4> = nodes.iter().map(|node| node.addr).collect();
    let coordinator = free_port();
    let standby = free_port();
    let replicas: Vec<String> = (0..3).map(|_| format!("\"{}\"", free_port())).collect();
    let meta_list: Vec<String> = addrs.iter().map(|addr| format!("\"{addr}\"")).collect();
    std::fs::write(
        dir.path().join("cluster.toml"),
        format!(
            "meta = [{}]\n[[shards]]\nid = 0\nepoch = 1\nslots = [[0, 16384]]\ncoordinator = \"{coordinator}\"\nreplicas = [{}]\n",
            meta_list.join(", "),
            replicas.join(", ")
        ),
    )
    .unwrap();
    let peers: Vec<String> = nodes
        .iter()
        .map(|node| format!("{}={}", node.id, node.addr))
        .collect();
    let peers = peers.join(",");
    for node in nodes.iter_mut() {
        start(dir.path(), node, &peers);
    }
    let first = leader(&nodes, 1);
    let moved = change(
        &addrs,
        Change::MoveCoordinator {
            from: coordinator,
            to: standby,
        },
    );
    assert_eq!(moved.shards[0].coordinator, standby);
    assert_eq!(moved.shards[0].epoch, tern_client::Epoch(2));

    // Kill the leader: the other two elect a new one that holds the map.
    let index = nodes.iter().position(|node| node.addr == first).unwrap();
    let mut old = nodes[index].child.take().unwrap();
    old.kill().unwrap();
    old.wait().unwrap();
    let second = leader(&nodes, moved.version);
    assert_ne!(second, first);
    assert_eq!(current(&addrs), moved, "the map survived the leader");

    // The new leader commits; the old one returns and catches up from its
    // own log plus what the leader sends it.
    let back = change(
        &addrs,
        Change::MoveCoordinator {
            from: standby,
            to: coordinator,
        },
    );
    assert_eq!(back.version, moved.version + 1);
    start(dir.path(), &mut nodes[index], &peers);
    let start_time = Instant::now();
    loop {
        let caught_up = status(first).is_some_and(|s| s.map_version == Some(back.version));
        if caught_up {
            break;
        }
        assert!(
            start_time.elapsed() < Duration::from_secs(20),
            "the old leader did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A refused change leaves the map alone.
    let refused = meta::call_leader(
        &addrs,
        &mut None,
        &Request::Change(Change::MoveCoordinator {
            from: standby,
            to: coordinator,
        }),
    )
    .unwrap();
    assert!(matches!(
        refused,
        Reply::Refused(Refusal::NoShardCoordinatedAt { from }) if from == standby
    ));
    assert_eq!(current(&addrs), back);
}
