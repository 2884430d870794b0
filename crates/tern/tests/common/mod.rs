//! Real clusters of real processes for system tests, torn down on drop.
#![allow(dead_code)] // Each test file uses a different part of the kit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tern_client::ClusterMap;
use tern_client::meta::{self, MetaMap, Reply, Request};

pub fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// Runs `tern` with `args` and returns its output.
pub fn run_tern(args: &[&str]) -> Output {
    tern().args(args).output().expect("the tern binary runs")
}

/// A local cluster started with `tern cluster up`, stopped when dropped (also
/// when the test fails).
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub map: ClusterMap,
}

impl TestCluster {
    /// A cluster on loopback with user-space coordinators.
    pub fn up(shards: u32, replicas: usize) -> TestCluster {
        Self::up_with(shards, replicas, "user", "loopback")
    }

    /// A cluster in `mode` (user, xdp, auto) on `topology` (loopback, netns).
    pub fn up_with(shards: u32, replicas: usize, mode: &str, topology: &str) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_str().unwrap().to_string();
        let output = run_tern(&[
            "cluster",
            "up",
            "--dir",
            &path,
            "--shards",
            &shards.to_string(),
            "--replicas",
            &replicas.to_string(),
            "--mode",
            mode,
            "--topology",
            topology,
        ]);
        let cluster = TestCluster {
            map: ClusterMap::load(&dir.path().join("cluster.toml")).unwrap_or_else(|error| {
                panic!(
                    "cluster up failed ({error}): {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            }),
            dir,
        };
        assert!(
            output.status.success(),
            "cluster up: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        cluster
    }

    pub fn map_path(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a cluster with extra `cluster up` arguments (e.g. durability).
    pub fn up_with_args(shards: u32, replicas: usize, extra: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_str().unwrap().to_string();
        let (shards, replicas) = (shards.to_string(), replicas.to_string());
        let mut args = vec![
            "cluster",
            "up",
            "--dir",
            &path,
            "--shards",
            &shards,
            "--replicas",
            &replicas,
        ];
        args.extend_from_slice(extra);
        let output = run_tern(&args);
        assert!(
            output.status.success(),
            "cluster up: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let map = ClusterMap::load(&dir.path().join("cluster.toml")).unwrap();
        TestCluster { dir, map }
    }

    /// (name, pid) of every process, from processes.toml.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.process_entries()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["pid"].as_integer().unwrap() as u32,
                )
            })
            .collect()
    }

    /// The name in processes.toml of the process listening on `address`.
    pub fn process_at(&self, address: std::net::SocketAddrV4) -> String {
        self.process_entries()
            .iter()
            .find(|p| p["address"].as_str() == Some(&address.to_string()))
            .and_then(|p| p["name"].as_str())
            .unwrap_or_else(|| panic!("no process at {address}"))
            .to_string()
    }

    /// Where the named process serves its metrics.
    pub fn metrics_of(&self, name: &str) -> std::net::SocketAddrV4 {
        self.process_entries()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p.get("metrics")?.as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address of {name}"))
    }

    /// The entries of processes.toml.
    fn process_entries(&self) -> Vec<toml::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("processes.toml")).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        table["process"].as_array().unwrap().clone()
    }

    /// SIGKILLs the named processes.
    pub fn kill(&self, names: &[&str]) {
        for (name, pid) in self.processes() {
            if names.contains(&name.as_str()) {
                // SAFETY: a plain system call on a pid this cluster started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }

    /// `tern cluster restart` for every stopped process.
    pub fn restart_stopped(&self) {
        let dir = self.dir.path().to_str().unwrap();
        let output = run_tern(&["cluster", "restart", "--dir", dir]);
        assert!(
            output.status.success(),
            "cluster restart: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs a `tern` client command against this cluster.
    pub fn tern(&self, args: &[&str]) -> Output {
        tern()
            .arg("--cluster")
            .arg(self.map_path())
            .args(args)
            .output()
            .expect("tern runs")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = run_tern(&[
            "cluster",
            "down",
            "--dir",
            self.dir.path().to_str().unwrap(),
        ]);
    }
}

/// The first number after `name ` in STATS text: `name value`, or
/// `name total cpu0 cpu1 ...` for XDP counters.
pub fn counter(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|line| {
            let values = line.strip_prefix(name)?.strip_prefix(' ')?;
            values.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{stats}"))
}

/// The STATS text of the process at `address`.
pub fn stats_of(client: &mut tern_client::Client, address: std::net::SocketAddrV4) -> String {
    client
        .stats(address, tern_client::ShardId(0))
        .expect("STATS answered")
}

impl TestCluster {
    /// The last `lines` lines of every process's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut tails = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir().join("logs")) else {
            return tails;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            tails.push_str(&format!("== {}\n", path.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                tails.push_str(line);
                tails.push('\n');
            }
        }
        tails
    }

    /// The map as meta's leader has it (asked again for a while during an
    /// election).
    pub fn meta_map(&self) -> MetaMap {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match meta::call_leader(&self.map.meta, &mut None, &Request::GetMap) {
                Ok(Reply::Map(map)) => return map,
                other if Instant::now() > deadline => panic!("no map from meta: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// `tern certs issue`: certificate NAME of ROLE for IP in `dir`.
pub fn issue_certificate(dir: &Path, name: &str, role: &str, ip: &str) {
    let output = run_tern(&[
        "certs",
        "issue",
        "--dir",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--role",
        role,
        "--ip",
        ip,
    ]);
    assert!(output.status.success(), "{output:?}");
}

/// Clears the flag when dropped: workers that loop while it is set stop
/// however the test thread leaves a scope (a failed assertion included),
/// or the scope would wait for them forever.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A free loopback TCP port (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
