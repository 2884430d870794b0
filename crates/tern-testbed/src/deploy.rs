//! `tern deploy`: a cluster on several machines from one description file
//! (hosts, their addresses, roles and data directories). `generate` places
//! every process, writes the cluster map, the certificates and, per host, a
//! directory to copy to it: its map, its own certificates, systemd units,
//! and `host.toml`, the command lines `tern deploy start` runs there
//! (what the units run, for a machine without systemd, and for tests that
//! play hosts with network namespaces).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use tern_client::{ClusterMap, Epoch, ShardId, ShardMap};

use crate::DurabilityArg;
use crate::cluster::{
    self, ClusterMode, ProcessRole, is_running, spawn_detached_in, stop_processes,
};

/// Ports every host uses: the first of each role (a host's second replica
/// takes the next one).
const COORDINATOR_PORT: u16 = 7000;
const REPLICA_PORT: u16 = 7100;
const META_PORT: u16 = 7400;
const METRICS_PORT: u16 = 9464;

/// `tern deploy`.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Place every process of a description file on its hosts and write
    /// OUT/cluster.toml and OUT/certs (the operator's: keep ca.key there),
    /// and OUT/hosts/HOST for each host: copy it to the host's config_dir.
    Generate {
        /// The description file (see docs/DEPLOY.md).
        #[arg(long)]
        hosts: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// On a host: start the processes of its directory (OUT/hosts/HOST), as
    /// its systemd units would, logs in DIR/logs.
    Start {
        #[arg(long)]
        dir: PathBuf,
    },
    /// On a host: stop what `deploy start` started there.
    Stop {
        #[arg(long)]
        dir: PathBuf,
        /// SIGKILL at once (a crash), not SIGTERM.
        #[arg(long)]
        kill: bool,
    },
}

pub fn run(command: DeployCommand) -> Result<()> {
    match command {
        DeployCommand::Generate { hosts, out } => {
            let description = Description::load(&hosts)?;
            let plan = plan(&description)?;
            write(&description, &plan, &out)?;
            println!(
                "{} processes on {} hosts; operator's map {}",
                plan.processes.len(),
                description.host.len(),
                out.join("cluster.toml").display()
            );
            for host in &description.host {
                let names: Vec<&str> = plan
                    .processes
                    .iter()
                    .filter(|process| process.host == host.name)
                    .map(|process| process.name.as_str())
                    .collect();
                println!(
                    "  {}: {} -> {}",
                    host.name,
                    names.join(", "),
                    out.join("hosts").join(&host.name).display()
                );
            }
            Ok(())
        }
        DeployCommand::Start { dir } => start(&dir),
        DeployCommand::Stop { dir, kill } => stop(&dir, kill),
    }
}

/// The description file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    #[serde(default = "one")]
    pub shards: u32,
    /// Replicas per shard, each on a different host.
    #[serde(default = "three")]
    pub replicas: usize,
    #[serde(default = "always")]
    pub durability: DurabilityArg,
    #[serde(default = "user")]
    pub mode: ClusterMode,
    #[serde(default = "second")]
    pub failure_timeout_ms: u64,
    /// Mutual TLS on the control plane.
    #[serde(default = "yes")]
    pub tls: bool,
    /// Where `tern` is on the hosts (the units' ExecStart).
    #[serde(default = "binary")]
    pub binary: PathBuf,
    /// Where a host's directory goes on it (the units' WorkingDirectory).
    #[serde(default = "config_dir")]
    pub config_dir: PathBuf,
    pub host: Vec<Host>,
}

fn one() -> u32 {
    1
}
fn three() -> usize {
    3
}
fn always() -> DurabilityArg {
    DurabilityArg::Always
}
fn user() -> ClusterMode {
    ClusterMode::User
}
fn second() -> u64 {
    1000
}
fn yes() -> bool {
    true
}
fn binary() -> PathBuf {
    PathBuf::from("/usr/local/bin/tern")
}
fn config_dir() -> PathBuf {
    PathBuf::from("/etc/tern")
}

/// One machine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// The address its processes serve at (and peers reach it by).
    pub address: Ipv4Addr,
    /// What it runs: `meta`, `coordinator`, `replica`.
    pub roles: Vec<HostRole>,
    /// Where its processes keep their data (a directory per process).
    pub data_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    Meta,
    Coordinator,
    Replica,
}

impl Description {
    /// Reads and checks a description file; errors name the file.
    pub fn load(path: &Path) -> Result<Description> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the description {}", path.display()))?;
        let mut description: Description =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        // Data directories relative to the file, as absolute paths.
        let base = std::path::absolute(path.parent().unwrap_or(Path::new(".")))?;
        for host in &mut description.host {
            host.data_dir = base.join(&host.data_dir);
        }
        description
            .check()
            .with_context(|| format!("{}", path.display()))?;
        Ok(description)
    }

    fn check(&self) -> Result<()> {
        ensure!(!self.host.is_empty(), "no [[host]]");
        ensure!(self.shards > 0, "shards must be at least 1");
        ensure!(self.replicas > 0, "replicas must be at least 1");
        for (index, host) in self.host.iter().enumerate() {
            let plain = !host.name.is_empty()
                && host
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            ensure!(
                plain,
                "host {:?}: a name of letters, digits, '-' and '_'",
                host.name
            );
            if let Some(other) = self.host[..index]
                .iter()
                .find(|other| other.name == host.name || other.address == host.address)
            {
                bail!(
                    "hosts {:?} and {:?} share a name or an address",
                    other.name,
                    host.name
                );
            }
            ensure!(
                !host.address.is_unspecified() && !host.address.is_broadcast(),
                "host {:?}: address {} is not one a peer can reach",
                host.name,
                host.address
            );
            ensure!(!host.roles.is_empty(), "host {:?} has no roles", host.name);
        }
        let count = |role| self.hosts_with(role).count();
        let metas = count(HostRole::Meta);
        ensure!(
            metas % 2 == 1,
            "{metas} hosts run meta: give meta to an odd number of hosts (1, 3 or 5; a majority must survive)"
        );
        ensure!(
            count(HostRole::Coordinator) > 0,
            "no host runs a coordinator"
        );
        let replica_hosts = count(HostRole::Replica);
        ensure!(
            replica_hosts >= self.replicas,
            "replicas = {} but only {replica_hosts} hosts run replicas: each of a shard's replicas needs its own host",
            self.replicas
        );
        for path in [&self.binary, &self.config_dir]
            .into_iter()
            .chain(self.host.iter().map(|host| &host.data_dir))
        {
            ensure!(
                path.is_absolute(),
                "{}: not an absolute path",
                path.display()
            );
            ensure!(
                !path.to_string_lossy().contains(char::is_whitespace),
                "{}: a path with spaces cannot go into a systemd unit",
                path.display()
            );
        }
        Ok(())
    }

    fn hosts_with(&self, role: HostRole) -> impl Iterator<Item = &Host> {
        self.host
            .iter()
            .filter(move |host| host.roles.contains(&role))
    }
}

/// One process and where it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Planned {
    pub host: String,
    pub name: String,
    pub address: SocketAddrV4,
    /// Its arguments after the `tern` binary, with paths relative to its
    /// host's directory (the working directory).
    pub args: Vec<String>,
}

/// Every process of a description, and the map they start from.
#[derive(Debug)]
pub struct Plan {
    pub map: ClusterMap,
    pub processes: Vec<Planned>,
}

/// Places the processes: meta on every meta host, the active coordinator on
/// the first coordinator host and standbys on the others, and each shard's
/// replicas on distinct replica hosts, turn by turn so that shards spread.
pub fn plan(description: &Description) -> Result<Plan> {
    let mut next_port: BTreeMap<(String, u16), u16> = BTreeMap::new();
    let mut port = |host: &Host, base: u16| {
        let next = next_port.entry((host.name.clone(), base)).or_insert(base);
        let port = *next;
        *next += 1;
        SocketAddrV4::new(host.address, port)
    };
    let coordinators: Vec<&Host> = description.hosts_with(HostRole::Coordinator).collect();
    let replica_hosts: Vec<&Host> = description.hosts_with(HostRole::Replica).collect();
    let metas: Vec<&Host> = description.hosts_with(HostRole::Meta).collect();
    let coordinator = port(coordinators[0], COORDINATOR_PORT);
    let mut placed: Vec<(ProcessRole, &Host, SocketAddrV4)> = Vec::new();
    let mut shards = Vec::new();
    for (index, slots) in ClusterMap::even_slot_ranges(description.shards)
        .into_iter()
        .enumerate()
    {
        let shard = ShardId(index as u32);
        let mut replicas = Vec::new();
        for position in 0..description.replicas {
            let host = replica_hosts[(index + position) % replica_hosts.len()];
            let address = port(host, REPLICA_PORT);
            placed.push((ProcessRole::Replica { shard, position }, host, address));
            replicas.push(address);
        }
        shards.push(ShardMap {
            id: shard,
            epoch: Epoch(1),
            slots: vec![slots],
            coordinator,
            replicas,
            incarnation: 0,
            early_commit: 0,
            fanout: false,
        });
    }
    let mut map = ClusterMap::new(shards)?;
    let meta: Vec<(ProcessRole, &Host, SocketAddrV4)> = metas
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let address = port(host, META_PORT);
            (ProcessRole::Meta(index as u64 + 1), *host, address)
        })
        .collect();
    map.meta = meta.iter().map(|(_, _, address)| *address).collect();
    let mut processes: Vec<(ProcessRole, &Host, SocketAddrV4)> = meta;
    processes.extend(placed);
    processes.push((ProcessRole::Coordinator, coordinators[0], coordinator));
    for (number, host) in coordinators.iter().enumerate().skip(1) {
        let address = port(host, COORDINATOR_PORT);
        processes.push((ProcessRole::Standby(number as u32), *host, address));
    }
    let peers = cluster::meta_peers(&map.meta);
    let planned = processes
        .into_iter()
        .map(|(role, host, address)| {
            let name = role.name();
            let metrics = port(host, METRICS_PORT);
            let data = host.data_dir.join(&name).display().to_string();
            let mut args = vec!["--cluster".to_string(), "cluster.toml".to_string()];
            if description.tls {
                args.extend(["--identity".to_string(), name.clone()]);
            }
            let role_args: Vec<String> = match role {
                ProcessRole::Meta(id) => vec![
                    "meta".into(),
                    "--id".into(),
                    id.to_string(),
                    "--peers".into(),
                    peers.clone(),
                    "--data-dir".into(),
                    data,
                    "--failure-timeout-ms".into(),
                    description.failure_timeout_ms.to_string(),
                ],
                ProcessRole::Replica { shard, .. } => vec![
                    "server".into(),
                    "--shard".into(),
                    shard.to_string(),
                    "--listen".into(),
                    address.to_string(),
                    "--data-dir".into(),
                    data,
                    "--durability".into(),
                    format!("{:?}", description.durability).to_lowercase(),
                ],
                _ => vec![
                    "coordinator".into(),
                    "--listen".into(),
                    address.to_string(),
                    "--mode".into(),
                    match description.mode {
                        ClusterMode::Xdp => "xdp",
                        _ => "user",
                    }
                    .into(),
                ],
            };
            args.extend(role_args);
            args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
            Planned {
                host: host.name.clone(),
                name,
                address,
                args,
            }
        })
        .collect();
    Ok(Plan {
        map,
        processes: planned,
    })
}

/// What a host's directory tells `deploy start`.
#[derive(Debug, Serialize, Deserialize)]
struct HostFile {
    host: String,
    process: Vec<Planned>,
}

/// What `deploy start` started on a host.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Running {
    pid: BTreeMap<String, u32>,
}

const HOST_FILE: &str = "host.toml";
const RUNNING_FILE: &str = "running.toml";

fn write(description: &Description, plan: &Plan, out: &Path) -> Result<()> {
    if out.join("cluster.toml").exists() {
        bail!(
            "{} holds a generated cluster already: use another --out",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut map_text = plan.map.to_toml();
    if description.tls {
        let processes: Vec<(&str, Ipv4Addr)> = plan
            .processes
            .iter()
            .map(|process| (process.name.as_str(), *process.address.ip()))
            .collect();
        cluster::issue_certificates(out, &processes, true)?;
        map_text.push_str(cluster::MAP_TLS_SECTION);
    }
    std::fs::write(out.join("cluster.toml"), &map_text)?;
    for host in &description.host {
        let dir = out.join("hosts").join(&host.name);
        std::fs::create_dir_all(dir.join("systemd"))?;
        std::fs::write(dir.join("cluster.toml"), &map_text)?;
        let processes: Vec<Planned> = plan
            .processes
            .iter()
            .filter(|process| process.host == host.name)
            .cloned()
            .collect();
        if description.tls {
            let certs_dir = dir.join(cluster::CERTS);
            std::fs::create_dir_all(&certs_dir)?;
            let mut files = vec!["ca.pem".to_string()];
            for process in &processes {
                files.push(format!("{}.pem", process.name));
                files.push(format!("{}.key", process.name));
            }
            for file in files {
                // Keys stay readable by their owner only (copy keeps the mode).
                let (from, to) = (out.join(cluster::CERTS).join(&file), certs_dir.join(&file));
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        for process in &processes {
            std::fs::write(
                dir.join("systemd")
                    .join(format!("tern-{}.service", process.name)),
                unit(description, process),
            )?;
        }
        let file = HostFile {
            host: host.name.clone(),
            process: processes,
        };
        std::fs::write(dir.join(HOST_FILE), toml::to_string(&file)?)?;
    }
    Ok(())
}

/// The systemd unit of `process`: run from the host's directory, restarted
/// when it fails (a replica that comes back rejoins as a spare).
fn unit(description: &Description, process: &Planned) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "[Unit]\nDescription=Tern {} on {}\nAfter=network-online.target\nWants=network-online.target\n",
        process.name, process.host
    );
    let _ = writeln!(
        text,
        "[Service]\nWorkingDirectory={}\nExecStart={} {}\nRestart=on-failure\nRestartSec=1\nLimitNOFILE=65536\n",
        description.config_dir.display(),
        description.binary.display(),
        process.args.join(" ")
    );
    let _ = writeln!(text, "[Install]\nWantedBy=multi-user.target");
    text
}

fn read_running(dir: &Path) -> Result<Running> {
    let path = dir.join(RUNNING_FILE);
    if !path.exists() {
        return Ok(Running::default());
    }
    let text = std::fs::read_to_string(&path)?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// Whether `pid` runs in `dir` (its working directory), so that a
/// recycled pid is never signalled.
fn runs_in(pid: u32, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
}

fn start(dir: &Path) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no host directory {}", dir.display()))?;
    let path = dir.join(HOST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (made by `tern deploy generate`)",
            path.display()
        )
    })?;
    let file: HostFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let mut running = read_running(&dir)?;
    if let Some((name, pid)) = running
        .pid
        .iter()
        .find(|(_, pid)| is_running(**pid) && runs_in(**pid, &dir))
    {
        bail!(
            "{name} runs already (pid {pid}): `tern deploy stop --dir {}` first",
            dir.display()
        );
    }
    let executable = std::env::current_exe().context("locating the tern executable")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    running.pid.clear();
    for process in &file.process {
        let mut command = vec![executable.display().to_string()];
        command.extend(process.args.iter().cloned());
        let log = dir.join("logs").join(format!("{}.log", process.name));
        let child = spawn_detached_in(&command, &log, true, Some(&dir))?;
        running.pid.insert(process.name.clone(), child.id());
        // Written as it goes: a failure part way leaves what started known.
        std::fs::write(dir.join(RUNNING_FILE), toml::to_string(&running)?)?;
    }
    println!(
        "host {}: started {}",
        file.host,
        running.pid.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn stop(dir: &Path, kill: bool) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no host directory {}", dir.display()))?;
    let running = read_running(&dir)?;
    let ours: Vec<u32> = running
        .pid
        .values()
        .copied()
        .filter(|&pid| is_running(pid) && runs_in(pid, &dir))
        .collect();
    if kill {
        for &pid in &ours {
            // SAFETY: plain system call; the pid runs in this directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    } else {
        stop_processes(&ours);
    }
    let _ = std::fs::remove_file(dir.join(RUNNING_FILE));
    println!("stopped {} processes in {}", ours.len(), dir.display());
    Ok(())
}
