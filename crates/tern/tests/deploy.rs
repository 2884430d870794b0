//! `tern deploy`: a cluster on three "hosts" (network namespaces joined by
//! a bridge) from one description file, each host starting only its own
//! processes from its generated directory; it serves, and survives one
//! host's processes being killed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use tern_client::meta::{Reply, Request};
use tern_client::{Client, ClientOptions, ClusterMap};
use tern_testbed::netns::Topology;

/// The namespaces, removed when dropped.
struct Hosts(Topology);

impl Drop for Hosts {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

/// Stops every host's processes when dropped.
struct Started<'a>(&'a Path, Vec<String>);

impl Drop for Started<'_> {
    fn drop(&mut self) {
        for host in &self.1 {
            let dir = self.0.join("hosts").join(host);
            let _ = common::run_tern(&["deploy", "stop", "--dir", dir.to_str().unwrap()]);
        }
    }
}

fn deploy(args: &[&str]) -> String {
    let output = common::run_tern(args);
    assert!(
        output.status.success(),
        "tern {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// `tern deploy generate --hosts FILE --out OUT`.
fn generate(file: &Path, out: &Path) -> std::process::Output {
    common::run_tern(&[
        "deploy",
        "generate",
        "--hosts",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn description(topology: &Topology, data: &Path) -> String {
    let mut text = String::from("shards = 2\nreplicas = 3\nfailure_timeout_ms = 1000\n");
    for (index, node) in topology.nodes.iter().enumerate() {
        // Coordinators on the first two hosts: one active, one standby.
        let roles = if index < 2 {
            r#"["meta", "coordinator", "replica"]"#
        } else {
            r#"["meta", "replica"]"#
        };
        text.push_str(&format!(
            "\n[[host]]\nname = \"{}\"\naddress = \"{}\"\nroles = {roles}\ndata_dir = \"{}\"\n",
            node.name,
            node.address,
            data.join(&node.name).display()
        ));
    }
    text
}

#[test]
fn three_hosts_from_one_description_serve_and_survive_a_host_killed() {
    let names: Vec<String> = ["h1", "h2", "h3"].map(String::from).to_vec();
    let hosts = Hosts(Topology::create(&names).expect("network namespaces (root)"));
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("hosts.toml");
    std::fs::write(&file, description(&hosts.0, &scratch.path().join("data"))).unwrap();
    let out = scratch.path().join("out");
    let generated = generate(&file, &out);
    assert!(generated.status.success(), "{generated:?}");
    let generated = String::from_utf8_lossy(&generated.stdout).to_string();
    // Each host's directory holds its share only: its certificates and a
    // unit per process.
    let h3 = out.join("hosts/h3");
    assert!(h3.join("certs/ca.pem").exists());
    assert!(
        !h3.join("certs/ca.key").exists(),
        "the authority's key stays with the operator"
    );
    let units: Vec<String> = std::fs::read_dir(h3.join("systemd"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        units.contains(&"tern-meta3.service".to_string()),
        "{units:?}"
    );
    assert!(
        !units.iter().any(|unit| unit.contains("coordinator")),
        "{units:?}"
    );
    let unit = std::fs::read_to_string(h3.join("systemd/tern-meta3.service")).unwrap();
    assert!(
        unit.contains("WorkingDirectory=/etc/tern")
            && unit.contains(
                "ExecStart=/usr/local/bin/tern --cluster cluster.toml --identity meta3 meta --id 3"
            ),
        "{unit}"
    );

    // Each host starts its own share, inside its namespace.
    let mut started = Started(&out, Vec::new());
    for node in &hosts.0.nodes {
        let dir = out.join("hosts").join(&node.name);
        started.1.push(node.name.clone());
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &node.namespace])
            .arg(env!("CARGO_BIN_EXE_tern"))
            .args(["deploy", "start", "--dir", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    assert!(generated.contains("h1: meta1"), "{generated}");

    let map = ClusterMap::load(&out.join("cluster.toml")).unwrap();
    let options = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut client = Client::with_options(map.clone(), options).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.put(b"probe", b"1").is_err() {
        assert!(Instant::now() < deadline, "the cluster never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    let keys: Vec<Vec<u8>> = (0..200).map(|n| format!("key-{n}").into_bytes()).collect();
    for key in &keys {
        client.put(key, key).unwrap();
    }

    // h1 dies: the active coordinator, a meta node and a replica of each
    // shard. The standby on h2 takes over, the chains shrink.
    let h1 = out.join("hosts/h1");
    deploy(&["deploy", "stop", "--kill", "--dir", h1.to_str().unwrap()]);
    for key in &keys {
        let read = client.get(key).unwrap().expect("an acknowledged write");
        assert_eq!(read.value, *key);
    }
    for key in &keys {
        client.put(key, b"after").unwrap();
    }
    let h1_address = hosts.0.node("h1").address;
    let current = loop {
        let reply = tern_client::meta::call_leader(&map.meta, &mut None, &Request::GetMap);
        if let Ok(Reply::Map(current)) = &reply
            && current
                .shards
                .iter()
                .all(|shard| shard.coordinator.ip() != &h1_address && shard.replicas.len() == 2)
        {
            break current.clone();
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "{reply:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for shard in &current.shards {
        assert!(
            shard
                .replicas
                .iter()
                .all(|replica| replica.ip() != &h1_address)
        );
    }
    assert_eq!(client.get(b"key-7").unwrap().unwrap().value, b"after");
}

#[test]
fn a_bad_description_is_refused_with_the_file_and_the_problem() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("hosts.toml");
    let out = scratch.path().join("out");
    let refused = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let output = generate(&file, &out);
        assert!(!output.status.success(), "accepted:\n{text}");
        assert!(!out.join("cluster.toml").exists());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let host = |name: &str, address: &str, roles: &str| {
        format!(
            "\n[[host]]\nname = \"{name}\"\naddress = \"{address}\"\nroles = {roles}\ndata_dir = \"/var/lib/tern\"\n"
        )
    };
    let all = r#"["meta", "coordinator", "replica"]"#;
    let two = |first: &str, second: &str| {
        format!(
            "{}{}",
            host("a", "10.0.0.1", first),
            host("b", "10.0.0.2", second)
        )
    };
    let cases = [
        ("shards = 2\n[[host]\nname = \"h1\"\n".to_string(), "line 2"),
        (
            format!("replicas = 3\n{}", two(all, r#"["replica"]"#)),
            "only 2 hosts run replicas",
        ),
        (
            format!(
                "replicas = 1\n{}{}",
                host("a", "10.0.0.1", all),
                host("a", "10.0.0.2", all)
            ),
            "share a name or an address",
        ),
        (
            format!(
                "replicas = 1\n{}",
                host("a", "10.0.0.1", r#"["meta", "cook"]"#)
            ),
            "unknown variant `cook`",
        ),
        (
            format!("replicas = 1\nshard = 2\n{}", host("a", "10.0.0.1", all)),
            "unknown field `shard`",
        ),
        (
            format!("replicas = 1\n{}", two(all, r#"["meta"]"#)),
            "odd number",
        ),
        (
            format!(
                "replicas = 1\n{}",
                host("a", "10.0.0.1", r#"["meta", "replica"]"#)
            ),
            "no host runs a coordinator",
        ),
    ];
    for (text, problem) in cases {
        let error = refused(&text);
        assert!(
            error.contains("hosts.toml") && error.contains(problem),
            "{text}\ngave: {error}"
        );
    }
}
