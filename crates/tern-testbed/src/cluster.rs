//! `tern cluster up|down|status`: a local cluster of real processes, on
//! loopback or in network namespaces (`netns.rs`), described by
//! `DIR/cluster.toml` (the cluster map), `DIR/processes.toml` (what was
//! started) and `DIR/topology.toml` (the namespaces, for `down`).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use tern_client::tls::Role;
use tern_client::{Client, ClientOptions, ClusterMap, Epoch, ShardId, ShardMap};
use tern_wire::{Op, Status};

use crate::DurabilityArg;
use crate::certs;
use crate::netns::{self, Topology};

/// How long `cluster up` waits for every process to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `cluster down` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Ports in the netns topology, where every process has its own address.
const COORDINATOR_PORT: u16 = 7000;
const REPLICA_PORT: u16 = 7100;
/// Where every process of a netns cluster serves its Prometheus metrics
/// (each on its own address; OpenMetrics' registered exporter port).
const METRICS_PORT: u16 = 9464;
/// The flag that gives a process its metrics address.
const METRICS_FLAG: &str = "--metrics-listen";
/// The flag that gives a process its TLS identity.
const IDENTITY_FLAG: &str = "--identity";
/// The certificates directory of a cluster with TLS, in its DIR.
pub(crate) const CERTS: &str = "certs";
/// What a map file of such a cluster ends with.
pub(crate) const MAP_TLS_SECTION: &str = "\n[tls]\ndir = \"certs\"\n";
/// Identities `cluster up` issues besides its processes': the operator's
/// (the `tern` tools' default), a gateway's (`tern gateway`'s default) and
/// an application's.
const OPERATOR: &str = "operator";
const CLIENT: &str = "client";

/// Where the coordinators run their logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// User-space coordinator (the "vanilla Linux" mode).
    User,
    /// XDP fast path in the kernel, user space for the rare cases.
    Xdp,
    /// XDP when this machine and build allow it, else user (and say so).
    Auto,
}

/// How the processes are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// Every process on 127.0.0.1 (no privileges needed).
    Loopback,
    /// A network namespace per process, veth pairs and a bridge (needs root).
    Netns,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a cluster and return once every process answers.
    Up {
        /// Directory for cluster.toml, processes.toml, topology.toml and logs/.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Replicas per shard (the chain length).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// When a write is answered: `chain` once every replica holds it
        /// (the tail acknowledged it); `early:K` (Whale's early commit;
        /// `early` is K = 2) once the first K replicas hold it, the rest
        /// following. K of 1 loses the writes only the head had when it
        /// fails; K replicas survive K - 1 failures.
        #[arg(long, value_parser = tern_client::parse_commit, default_value = "chain")]
        commit: u32,
        /// How a write reaches the replicas: `chain` (replica after
        /// replica, the tail acknowledges) or `fanout` (the head sends it
        /// to every other replica at once, each acknowledges it to the
        /// coordinator, and the write is answered once all have).
        #[arg(long, action = clap::ArgAction::Set, value_parser = tern_client::parse_replication, default_value = "chain")]
        replication: bool,
        #[arg(long, value_enum, default_value_t = ClusterMode::User)]
        mode: ClusterMode,
        /// Default: netns when running as root, else loopback.
        #[arg(long, value_enum)]
        topology: Option<TopologyKind>,
        /// Replicas keep a log in DIR/data/<replica> unless this is none.
        #[arg(long, value_enum, default_value_t = DurabilityArg::Always)]
        durability: DurabilityArg,
        /// Log records between a replica's snapshots.
        #[arg(long, default_value_t = 200_000)]
        snapshot_every: u64,
        /// Meta nodes (the control plane on Raft): 1 is the default, 3
        /// survives the loss of one; 0 gives a static map (no failover).
        #[arg(long, default_value_t = 1)]
        meta: usize,
        /// Standby coordinators (with meta), ready to take over the shards of
        /// a failed coordinator.
        #[arg(long, default_value_t = 1)]
        standby: usize,
        /// Silence (ms) after which meta declares a process failed.
        #[arg(long, default_value_t = 1000)]
        failure_timeout_ms: u64,
        /// Also start a Redis-protocol gateway (in the root namespace).
        #[arg(long)]
        gateway: bool,
        /// Where the gateway listens (when taken: a free port, printed).
        #[arg(long, default_value = "127.0.0.1:6379")]
        gateway_listen: SocketAddrV4,
        /// The gateway's password (requirepass).
        #[arg(long)]
        requirepass: Option<String>,
        /// The coordinators serve only clients of these IPv4 networks
        /// (`tern coordinator --allow-clients`): include the cluster's own
        /// network and wherever the CLI runs.
        #[arg(long, value_parser = parse_allow_list)]
        allow_clients: Option<tern_coord::AllowList>,
        /// Remove the data a cluster stopped in DIR left (DIR/data): a new
        /// cluster gets new addresses and cannot use it.
        #[arg(long)]
        fresh: bool,
        /// Run the control plane over plain TCP instead of mutual TLS:
        /// anyone who reaches meta or a replica's TCP port could then change
        /// the map or read a shard.
        #[arg(long)]
        no_tls: bool,
    },
    /// Stop every process of the cluster in DIR and remove its namespaces.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Show each shard's chain and whether each process is up.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Add a shard: start its replicas (in new namespaces on netns), add it
    /// through meta under the coordinator of shard 0, then move slots until
    /// every shard owns an even share (`tern reshard rebalance`).
    AddShard {
        #[arg(long)]
        dir: PathBuf,
        /// Replicas of the new shard (the chain length).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Log records between a replica's snapshots.
        #[arg(long, default_value_t = 200_000)]
        snapshot_every: u64,
    },
    /// Retire a shard: move its slots to the other shards (each range to the
    /// shard that owns the fewest), remove it through meta, stop its
    /// replicas.
    RemoveShard {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        shard: ShardId,
    },
    /// Start again processes of the cluster that are not running (or the
    /// named ones, which must be stopped), with their original command lines.
    Restart {
        #[arg(long)]
        dir: PathBuf,
        /// Process names as in processes.toml (e.g. shard0-replica1).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

/// How many shards, and replicas per shard.
#[derive(Clone, Copy, Debug)]
struct Shape {
    shard_count: u32,
    replicas: usize,
    /// Early commit's K (0: at the tail).
    early_commit: u32,
    /// Fan-out replication (false: the chain).
    fanout: bool,
}

fn parse_allow_list(text: &str) -> Result<tern_coord::AllowList, String> {
    tern_coord::AllowList::parse(text)
}

/// The control plane of a cluster.
#[derive(Clone, Debug)]
struct Control {
    meta: usize,
    standby: usize,
    failure_timeout_ms: u64,
    /// The coordinators' allow-list (None: every source).
    allow_clients: Option<tern_coord::AllowList>,
    /// Remove a stopped cluster's data first.
    fresh: bool,
    /// Mutual TLS on the control plane (DIR/certs).
    tls: bool,
}

/// How the replicas of a cluster persist.
#[derive(Clone, Copy, Debug)]
struct Persistence {
    durability: DurabilityArg,
    snapshot_every: u64,
}

/// The gateway `cluster up --gateway` starts.
#[derive(Clone, Debug)]
struct GatewayOptions {
    listen: SocketAddrV4,
    password: Option<String>,
}

/// Starts `tern gateway` for the cluster in `dir` and records it.
fn start_gateway(dir: &Path, options: &GatewayOptions) -> Result<()> {
    let map_path = dir.join("cluster.toml");
    let mut command = vec![
        std::env::current_exe()?.display().to_string(),
        "--cluster".into(),
        map_path.display().to_string(),
    ];
    if ClusterMap::tls_dir(&map_path)?.is_some() {
        command.extend([IDENTITY_FLAG.to_string(), GATEWAY.to_string()]);
    }
    command.extend([
        "gateway".into(),
        "--listen".into(),
        options.listen.to_string(),
    ]);
    if let Some(password) = &options.password {
        command.extend(["--requirepass".to_string(), password.clone()]);
    }
    let metrics = SocketAddrV4::new(*options.listen.ip(), 0);
    command.extend([METRICS_FLAG.to_string(), metrics.to_string()]);
    let log = dir.join("logs").join("gateway.log");
    let mut child = spawn_detached(&command, &log, false)?;
    // The gateway prints where it listens first (another port if taken).
    let started = Instant::now();
    let address = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(address) = text
            .lines()
            .find_map(|line| line.strip_prefix("gateway listening on "))
        {
            break address.trim().parse::<SocketAddrV4>()?;
        }
        if let Some(exit) = child.try_wait()? {
            bail!("the gateway exited with {exit}: {text}");
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("the gateway did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut table = read_table(dir)?;
    table.process.push(ProcessEntry {
        name: GATEWAY.into(),
        pid: child.id(),
        address,
        shard: ShardId(0),
        log,
        command,
        metrics: None,
    });
    learn_metrics_addresses(&mut table.process)?;
    write_table(dir, &table)?;
    println!(
        "  gateway:     redis-cli -p {} (logs in {})",
        address.port(),
        dir.join("logs").display()
    );
    Ok(())
}

/// Where a process at `address` serves its metrics: port 9464 on its own
/// address in netns (each node has one), a port the kernel chooses on
/// loopback (learnt from its log: no port chosen here can be taken by
/// another cluster starting side by side).
fn metrics_listen(netns: bool, address: SocketAddrV4) -> SocketAddrV4 {
    let port = if netns { METRICS_PORT } else { 0 };
    SocketAddrV4::new(*address.ip(), port)
}

/// Fills in the metrics address of each entry that has none from its
/// log, where the process printed it.
fn learn_metrics_addresses(entries: &mut [ProcessEntry]) -> Result<()> {
    let started = Instant::now();
    for entry in entries.iter_mut().filter(|entry| entry.metrics.is_none()) {
        if !entry.command.iter().any(|arg| arg == METRICS_FLAG) {
            continue;
        }
        entry.metrics = loop {
            let text = std::fs::read_to_string(&entry.log).unwrap_or_default();
            let found = text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix(tern_metrics::LISTENING_LINE))
                .and_then(|address| address.trim().parse::<SocketAddrV4>().ok());
            if found.is_some() {
                break found;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("{} never said where its metrics are: {text}", entry.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
    }
    Ok(())
}

/// Name of the gateway in the process table.
const GATEWAY: &str = "gateway";

/// Whether a gateway at `address` answers a RESP PING.
fn gateway_answers(address: SocketAddrV4) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) =
        std::net::TcpStream::connect_timeout(&address.into(), Duration::from_millis(300))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let mut reply = [0u8; 64];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read(&mut reply).is_ok_and(|read| {
            reply[..read].starts_with(b"+PONG") || reply[..read].starts_with(b"-NOAUTH")
        })
}

/// One started process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub name: String,
    pub pid: u32,
    pub address: SocketAddrV4,
    shard: ShardId,
    log: PathBuf,
    /// The full command line, for `cluster restart`.
    #[serde(default)]
    command: Vec<String>,
    /// Where it serves Prometheus metrics.
    #[serde(default)]
    pub metrics: Option<SocketAddrV4>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProcessTable {
    /// The coordinators' mode, `auto` resolved.
    mode: Option<ClusterMode>,
    topology: Option<TopologyKind>,
    durability: Option<DurabilityArg>,
    pub process: Vec<ProcessEntry>,
}

/// What a process of a local cluster is. Its name in `processes.toml` (and
/// in logs) is [`ProcessRole::name`]; code matches on the role, never on the
/// text of the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessRole {
    /// The first coordinator, which `cluster up` makes active.
    Coordinator,
    /// A standby coordinator (number N of `--standby`).
    Standby(u32),
    Replica {
        shard: ShardId,
        position: usize,
    },
    Meta(u64),
    Gateway,
}

impl ProcessRole {
    pub fn name(self) -> String {
        match self {
            ProcessRole::Coordinator => "coordinator".into(),
            ProcessRole::Standby(number) => format!("{STANDBY}{number}"),
            ProcessRole::Replica { shard, position } => format!("shard{shard}-replica{position}"),
            ProcessRole::Meta(id) => format!("{META}{id}"),
            ProcessRole::Gateway => GATEWAY.into(),
        }
    }

    /// The role a process name stands for.
    pub fn of(name: &str) -> Option<ProcessRole> {
        if name == "coordinator" {
            return Some(ProcessRole::Coordinator);
        }
        if name == GATEWAY {
            return Some(ProcessRole::Gateway);
        }
        if let Some((shard, position)) = name
            .strip_prefix("shard")
            .and_then(|rest| rest.split_once("-replica"))
        {
            return Some(ProcessRole::Replica {
                shard: shard.parse().ok()?,
                position: position.parse().ok()?,
            });
        }
        if let Some(id) = name.strip_prefix(META) {
            return id.parse().ok().map(ProcessRole::Meta);
        }
        name.strip_prefix(STANDBY)?
            .parse()
            .ok()
            .map(ProcessRole::Standby)
    }

    /// Coordinators, active or standing by: any may take over a shard.
    pub fn is_coordinator(self) -> bool {
        matches!(self, ProcessRole::Coordinator | ProcessRole::Standby(_))
    }

    /// The short node name inside the netns topology (it becomes part of
    /// interface names, which are short).
    pub fn node_name(self) -> String {
        match self {
            ProcessRole::Coordinator => "c".into(),
            ProcessRole::Standby(number) => format!("c{number}"),
            ProcessRole::Replica { shard, position } => format!("s{shard}r{position}"),
            ProcessRole::Meta(id) => format!("m{id}"),
            ProcessRole::Gateway => "g".into(),
        }
    }

    /// What its certificate lets it do.
    pub fn tls_role(self) -> Role {
        match self {
            ProcessRole::Coordinator | ProcessRole::Standby(_) => Role::Coordinator,
            ProcessRole::Replica { .. } => Role::Replica,
            ProcessRole::Meta(_) => Role::Meta,
            ProcessRole::Gateway => Role::Gateway,
        }
    }

    /// The UDP (and TCP) port of the role inside the netns topology.
    pub fn port(self) -> u16 {
        match self {
            ProcessRole::Meta(_) => META_PORT,
            ProcessRole::Replica { .. } => REPLICA_PORT,
            _ => COORDINATOR_PORT,
        }
    }
}

impl ProcessEntry {
    /// The entry's role; every entry `cluster up` writes has one.
    pub fn role(&self) -> Option<ProcessRole> {
        ProcessRole::of(&self.name)
    }
}

pub fn run(command: ClusterCommand) -> Result<ExitCode> {
    match command {
        ClusterCommand::Up {
            dir,
            shards,
            replicas,
            commit,
            replication,
            mode,
            topology,
            durability,
            snapshot_every,
            gateway,
            gateway_listen,
            requirepass,
            meta,
            standby,
            failure_timeout_ms,
            allow_clients,
            fresh,
            no_tls,
        } => {
            let topology = topology.unwrap_or(if netns::is_root() {
                TopologyKind::Netns
            } else {
                TopologyKind::Loopback
            });
            let persistence = Persistence {
                durability,
                snapshot_every,
            };
            let control = Control {
                meta,
                standby: if meta == 0 { 0 } else { standby },
                failure_timeout_ms,
                allow_clients,
                fresh,
                tls: !no_tls,
            };
            let gateway = gateway.then_some(GatewayOptions {
                listen: gateway_listen,
                password: requirepass,
            });
            up(
                &dir,
                Shape {
                    shard_count: shards,
                    replicas,
                    early_commit: commit,
                    fanout: replication,
                },
                mode,
                topology,
                persistence,
                control,
                gateway,
            )
        }
        ClusterCommand::Restart { dir, names } => restart(&dir, &names),
        ClusterCommand::AddShard {
            dir,
            replicas,
            snapshot_every,
        } => add_shard(&dir, replicas, snapshot_every),
        ClusterCommand::RemoveShard { dir, shard } => remove_shard(&dir, shard),
        ClusterCommand::Down { dir } => down(&dir),
        ClusterCommand::Status { dir } => status(&dir),
    }
}

/// Every process of a map: (name, address, a shard it serves).
pub fn processes_of(map: &ClusterMap) -> Vec<(String, SocketAddrV4, ShardId)> {
    let mut processes: Vec<(String, SocketAddrV4, ShardId)> = Vec::new();
    for shard in &map.shards {
        if !processes
            .iter()
            .any(|(_, address, _)| *address == shard.coordinator)
        {
            processes.push((ProcessRole::Coordinator.name(), shard.coordinator, shard.id));
        }
    }
    for shard in &map.shards {
        for (position, address) in shard.replicas.iter().enumerate() {
            processes.push((replica_name(shard.id, position), *address, shard.id));
        }
    }
    processes
}

fn replica_name(shard: ShardId, position: usize) -> String {
    ProcessRole::Replica { shard, position }.name()
}

fn table_path(dir: &Path) -> PathBuf {
    dir.join("processes.toml")
}

fn topology_path(dir: &Path) -> PathBuf {
    dir.join("topology.toml")
}

pub fn read_table(dir: &Path) -> Result<ProcessTable> {
    let path = table_path(dir);
    if !path.exists() {
        return Ok(ProcessTable::default());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_table(dir: &Path, table: &ProcessTable) -> Result<()> {
    let text = toml::to_string(table).context("serializing the process table")?;
    std::fs::write(table_path(dir), text).context("writing processes.toml")
}

/// Reserves `count` distinct loopback ports free for both UDP and TCP (a
/// replica serves state transfers, a meta node everything, over TCP on its
/// port), below the kernel's range of ephemeral ports: a process's port
/// stays its own while it is down (a client's outgoing connection may take
/// any free ephemeral port, and a restart would find its address in use).
fn free_addresses(count: usize) -> Result<Vec<SocketAddrV4>> {
    const LOWEST: u16 = 10_000;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_from.saturating_sub(LOWEST);
    // Clusters started side by side (tests) begin at different places.
    let mut next = LOWEST + rand::random_range(0..span.max(1));
    // Holding every socket until all are chosen keeps the ports distinct.
    let mut held = Vec::new();
    let mut addresses = Vec::new();
    let mut tried = 0u32;
    while addresses.len() < count {
        tried += 1;
        if tried > u32::from(span) {
            bail!("no {count} free loopback ports between {LOWEST} and {ephemeral_from}");
        }
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, next);
        next = if next + 1 >= ephemeral_from {
            LOWEST
        } else {
            next + 1
        };
        let (Ok(udp), Ok(tcp)) = (
            UdpSocket::bind(address),
            std::net::TcpListener::bind(address),
        ) else {
            continue;
        };
        addresses.push(address);
        held.push((udp, tcp));
    }
    Ok(addresses)
}

/// Short node names inside the netns topology (they become interface names).
fn node_name(process: &str) -> String {
    ProcessRole::of(process)
        .expect("cluster up names every process by its role")
        .node_name()
}

/// Process name prefixes of meta nodes and standby coordinators.
const META: &str = "meta";
const STANDBY: &str = "standby";
const META_PORT: u16 = 7400;

fn up(
    dir: &Path,
    shape: Shape,
    mode: ClusterMode,
    topology_kind: TopologyKind,
    persistence: Persistence,
    control: Control,
    gateway: Option<GatewayOptions>,
) -> Result<ExitCode> {
    let Shape {
        shard_count,
        replicas,
        early_commit,
        fanout,
    } = shape;
    if shard_count == 0 || replicas == 0 {
        bail!("a cluster needs at least one shard and one replica per shard");
    }
    if fanout && replicas > tern_wire::maps::CHAIN_LEN_MAX {
        bail!(
            "--replication fanout --replicas {replicas}: a fan-out acknowledges from at most {} \
             replicas (the coordinator counts each write's acknowledgements, one bit per replica \
             of an 8-bit mask, in the kernel as in user space)",
            tern_wire::maps::CHAIN_LEN_MAX
        );
    }
    if replicas > tern_wire::maps::CHAIN_LEN_MAX {
        bail!(
            "--replicas {replicas}: a chain has at most {} replicas (the XDP program forwards \
             to that many, and meta repairs no longer chain)",
            tern_wire::maps::CHAIN_LEN_MAX
        );
    }
    if early_commit as usize > replicas {
        bail!(
            "--commit early:{early_commit} answers a write once {early_commit} replicas hold it, \
             but a shard has only {replicas} (--replicas): use K of at most {replicas}"
        );
    }

    if mode == ClusterMode::Xdp && !netns::is_root() {
        bail!(
            "--mode xdp needs root: CAP_NET_ADMIN to create the namespaces and attach XDP, \
             CAP_BPF to load the program (or use --mode user, or --mode auto to fall back)"
        );
    }
    if mode == ClusterMode::Xdp && topology_kind == TopologyKind::Loopback {
        bail!(
            "--mode xdp needs --topology netns: the fast path runs on the coordinator's own interface"
        );
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let running = read_table(&dir)?
        .process
        .into_iter()
        .filter(|p| is_running(p.pid))
        .count();
    if running > 0 || topology_path(&dir).exists() {
        bail!(
            "a cluster is still up in {}: run `tern cluster down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    // A stopped cluster's logs and Raft state name the addresses it had;
    // this one gets new ones, and its meta and replicas would take the
    // old map for theirs (and wait for replicas that are gone).
    let old_data = dir.join("data");
    if old_data.exists() {
        if !control.fresh {
            bail!(
                "{} holds the data of a cluster that was stopped there; a new cluster gets new \
                 addresses and cannot use it: give --fresh to remove it, or use another --dir",
                old_data.display()
            );
        }
        std::fs::remove_dir_all(&old_data)
            .with_context(|| format!("removing {}", old_data.display()))?;
        println!(
            "removed the data of the cluster stopped in {}",
            dir.display()
        );
    }

    // Names and addresses: one coordinator process, then every replica,
    // then meta nodes and standby coordinators.
    let mut names = vec![ProcessRole::Coordinator.name()];
    for shard in 0..shard_count {
        names.extend((0..replicas).map(|position| replica_name(ShardId(shard), position)));
    }
    names.extend((1..=control.meta as u64).map(|id| ProcessRole::Meta(id).name()));
    names.extend((1..=control.standby as u32).map(|number| ProcessRole::Standby(number).name()));
    let mut topology = match topology_kind {
        TopologyKind::Loopback => None,
        TopologyKind::Netns => {
            let nodes: Vec<String> = names.iter().map(|name| node_name(name)).collect();
            let topology = Topology::create(&nodes)?;
            topology.save(&topology_path(&dir))?;
            Some(topology)
        }
    };
    let result = start(
        &dir,
        shape,
        mode,
        persistence,
        control,
        &names,
        topology.as_mut(),
    )
    .and_then(|code| match gateway {
        Some(gateway) => start_gateway(&dir, &gateway).map(|()| code),
        None => Ok(code),
    });
    if result.is_err() {
        let _ = down(&dir);
    }
    result
}

/// Everything of `up` after the topology exists; the caller cleans up on error.
fn start(
    dir: &Path,
    shape: Shape,
    mode: ClusterMode,
    persistence: Persistence,
    control: Control,
    names: &[String],
    mut topology: Option<&mut Topology>,
) -> Result<ExitCode> {
    let Shape {
        shard_count,
        replicas,
        early_commit,
        fanout,
    } = shape;
    let addresses: Vec<SocketAddrV4> = match &topology {
        None => free_addresses(names.len())?,
        Some(topology) => names
            .iter()
            .map(|name| {
                let role =
                    ProcessRole::of(name).expect("cluster up names every process by its role");
                SocketAddrV4::new(topology.node(&role.node_name()).address, role.port())
            })
            .collect(),
    };
    let mut remaining = addresses.iter().copied();
    let coordinator = remaining.next().expect("the coordinator's address");
    let shards = ClusterMap::even_slot_ranges(shard_count)
        .into_iter()
        .enumerate()
        .map(|(id, slots)| ShardMap {
            id: ShardId(id as u32),
            epoch: Epoch(1),
            slots: vec![slots],
            coordinator,
            replicas: remaining.by_ref().take(replicas).collect(),
            incarnation: 0,
            early_commit,
            fanout,
        })
        .collect();
    let mut map = ClusterMap::new(shards)?;
    map.meta = remaining.by_ref().take(control.meta).collect();
    let standbys: Vec<SocketAddrV4> = remaining.collect();
    let map_path = dir.join("cluster.toml");
    let mut map_text = map.to_toml();
    if control.tls {
        let processes: Vec<(&str, Ipv4Addr)> = names
            .iter()
            .zip(&addresses)
            .map(|(name, address)| (name.as_str(), *address.ip()))
            .collect();
        issue_certificates(dir, &processes, true)?;
        map_text.push_str(MAP_TLS_SECTION);
    }
    std::fs::write(&map_path, map_text).context("writing cluster.toml")?;

    let mode = resolve_mode(mode, topology.as_deref_mut(), dir, names)?;
    let topology = topology.as_deref();
    let executable = std::env::current_exe().context("locating the tern executable")?;
    let mut table = ProcessTable {
        mode: Some(mode),
        topology: Some(if addresses[0].ip().is_loopback() {
            TopologyKind::Loopback
        } else {
            TopologyKind::Netns
        }),
        durability: Some(persistence.durability),
        process: Vec::new(),
    };
    let mut children: Vec<(Child, ProcessEntry)> = Vec::new();
    // Meta first (everyone asks it for the map), then replicas (a
    // coordinator in XDP mode learns their MAC addresses), then coordinators.
    let mut processes: Vec<(String, SocketAddrV4, ShardId)> = map
        .meta
        .iter()
        .enumerate()
        .map(|(index, address)| (format!("{META}{}", index + 1), *address, ShardId(0)))
        .collect();
    let mut data_processes = processes_of(&map);
    data_processes.rotate_left(1);
    processes.extend(data_processes);
    processes.extend(
        standbys
            .iter()
            .enumerate()
            .map(|(index, address)| (format!("{STANDBY}{}", index + 1), *address, ShardId(0))),
    );
    let peers = meta_peers(&map.meta);
    for (name, address, shard) in processes {
        let log = dir.join("logs").join(format!("{name}.log"));
        let metrics = metrics_listen(topology.is_some(), address);
        let mut command: Vec<String> = Vec::new();
        if let Some(topology) = topology {
            let namespace = &topology.node(&node_name(&name)).namespace;
            command.extend(["ip", "netns", "exec", namespace].map(String::from));
        }
        command.push(executable.display().to_string());
        command.extend(["--cluster".to_string(), map_path.display().to_string()]);
        if control.tls {
            command.extend([IDENTITY_FLAG.to_string(), name.clone()]);
        }
        let role = ProcessRole::of(&name).expect("cluster up names every process by its role");
        if let ProcessRole::Meta(id) = role {
            let data = dir.join("data").join(&name).display().to_string();
            let timeout = control.failure_timeout_ms.to_string();
            let id = id.to_string();
            command.extend(
                [
                    "meta",
                    "--id",
                    &id,
                    "--peers",
                    &peers,
                    "--data-dir",
                    &data,
                    "--failure-timeout-ms",
                    &timeout,
                ]
                .map(String::from),
            );
        } else if role.is_coordinator() {
            let mode = if mode == ClusterMode::Xdp {
                "xdp"
            } else {
                "user"
            };
            command.extend(
                [
                    "coordinator",
                    "--listen",
                    &address.to_string(),
                    "--mode",
                    mode,
                ]
                .map(String::from),
            );
            if let Some(allow) = &control.allow_clients {
                command.extend(["--allow-clients".to_string(), allow.to_string()]);
            }
        } else {
            let position = map
                .shard(shard)
                .expect("own shard")
                .replicas
                .iter()
                .position(|a| *a == address);
            let position = position.expect("own address").to_string();
            command.extend(
                [
                    "server",
                    "--shard",
                    &shard.to_string(),
                    "--replica",
                    &position,
                ]
                .map(String::from),
            );
            if persistence.durability != DurabilityArg::None || control.meta > 0 {
                command.extend(storage_args(dir, &name, persistence));
            }
        }
        command.extend([METRICS_FLAG.to_string(), metrics.to_string()]);
        let child = spawn_detached(&command, &log, false)?;
        let entry = ProcessEntry {
            name,
            pid: child.id(),
            address,
            shard,
            log,
            command,
            metrics: None,
        };
        table.process.push(entry.clone());
        children.push((child, entry));
    }
    write_table(dir, &table)?;
    wait_ready(&map, &mut children)?;
    learn_metrics_addresses(&mut table.process)?;
    write_table(dir, &table)?;

    let shown_mode = if mode == ClusterMode::Xdp {
        "xdp"
    } else {
        "user"
    };
    let shown_durability = format!("{:?}", persistence.durability).to_lowercase();
    let shown_topology = match &topology {
        Some(topology) => format!(
            "netns, bridge {} (host {})",
            topology.bridge, topology.host_address
        ),
        None => "loopback".to_string(),
    };
    println!(
        "cluster up in {}: {shard_count} shards x {replicas} replicas, {shown_mode} mode, durability {shown_durability}, {shown_topology}",
        dir.display()
    );
    println!("  cluster map: {}", map_path.display());
    println!(
        "  try:         tern --cluster {} put hello world",
        map_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tern meta --peers`: `ID=ADDRESS,...`, meta node N (from 1) at the
/// map's Nth meta address.
pub(crate) fn meta_peers(meta: &[SocketAddrV4]) -> String {
    meta.iter()
        .enumerate()
        .map(|(index, address)| format!("{}={address}", index + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Issues the certificates of `processes` (name, the IP it serves at) in
/// DIR/certs, replacing any it holds (a new cluster has new addresses),
/// under the authority there or, if there is none, a new one. With
/// `tools`, also the operator's, a gateway's and an application's. This process then
/// acts as the operator.
pub(crate) fn issue_certificates(
    dir: &Path,
    processes: &[(&str, Ipv4Addr)],
    tools: bool,
) -> Result<()> {
    let certs = dir.join(CERTS);
    if !certs.join("ca.pem").exists() {
        certs::create_authority(&certs)?;
    }
    let mut issued: Vec<(&str, Role, Vec<Ipv4Addr>)> = processes
        .iter()
        .map(|&(name, ip)| {
            let role = ProcessRole::of(name).expect("cluster up names every process by its role");
            (name, role.tls_role(), vec![ip])
        })
        .collect();
    if tools {
        issued.push((OPERATOR, Role::Operator, Vec::new()));
        issued.push((GATEWAY, Role::Gateway, Vec::new()));
        issued.push((CLIENT, Role::Client, Vec::new()));
    }
    for (name, role, ips) in issued {
        for file in [format!("{name}.pem"), format!("{name}.key")] {
            let _ = std::fs::remove_file(certs.join(file));
        }
        certs::issue(&certs, name, role, &ips, certs::CERTIFICATE_DAYS)?;
    }
    tern_client::tls::use_identity(&certs, OPERATOR).map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The arguments that give replica `name` its log in DIR/data/<name>.
fn storage_args(dir: &Path, name: &str, persistence: Persistence) -> Vec<String> {
    let data = dir.join("data").join(name).display().to_string();
    let policy = format!("{:?}", persistence.durability).to_lowercase();
    let every = persistence.snapshot_every.to_string();
    [
        "--data-dir",
        &data,
        "--durability",
        &policy,
        "--snapshot-every",
        &every,
    ]
    .map(String::from)
    .to_vec()
}

/// Resolves `auto`, and prepares the XDP mode: the coordinator's veth peer
/// needs an XDP program for XDP_TX frames to come out of it.
fn resolve_mode(
    mode: ClusterMode,
    topology: Option<&mut Topology>,
    dir: &Path,
    names: &[String],
) -> Result<ClusterMode> {
    if mode == ClusterMode::User {
        return Ok(ClusterMode::User);
    }
    let prepared = match topology {
        None if !netns::is_root() => {
            Err("this is not root (XDP needs CAP_NET_ADMIN and CAP_BPF)".to_string())
        }
        None => Err("the loopback topology has no interface of its own to attach to".to_string()),
        Some(topology) => prepare_xdp(topology, names)
            .map_err(|error| format!("{error:#}"))
            .and_then(|()| {
                topology
                    .save(&topology_path(dir))
                    .map_err(|error| format!("{error:#}"))
            }),
    };
    match (mode, prepared) {
        (_, Ok(())) => Ok(ClusterMode::Xdp),
        (ClusterMode::Xdp, Err(reason)) => bail!("--mode xdp is not possible here: {reason}"),
        (_, Err(reason)) => {
            println!("--mode auto: using the user-space coordinator, because {reason}");
            Ok(ClusterMode::User)
        }
    }
}

fn prepare_xdp(topology: &mut Topology, names: &[String]) -> Result<()> {
    if !tern_coord::xdp::is_built() {
        return Err(tern_coord::xdp::XdpError::NotBuilt.into());
    }
    netns::ensure_bpffs()?;
    // Every coordinator's, standbys' too: any of them may take over.
    let coordinators: Vec<String> = names
        .iter()
        .filter_map(|name| ProcessRole::of(name))
        .filter(|role| role.is_coordinator())
        .map(|role| topology.node(&role.node_name()).veth.clone())
        .collect();
    for veth in coordinators {
        let pin = PathBuf::from(format!("/sys/fs/bpf/tern{}-{veth}-pass", topology.index));
        let _ = std::fs::remove_file(&pin);
        tern_coord::xdp::attach_pass_pinned(&veth, &pin)?;
        topology.pins.push(pin);
    }
    Ok(())
}

fn spawn_detached(command: &[String], log: &Path, append: bool) -> Result<Child> {
    spawn_detached_in(command, log, append, None)
}

/// Starts `command` in its own process group with its output in `log`
/// (and its working directory `dir`, when given).
pub(crate) fn spawn_detached_in(
    command: &[String],
    log: &Path,
    append: bool,
    dir: Option<&Path>,
) -> Result<Child> {
    let output = File::options()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut process = Command::new(&command[0]);
    process
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        // Its own process group: a Ctrl-C in the shell that ran `cluster up`
        // does not reach the cluster; `cluster down` stops it.
        .process_group(0);
    if let Some(dir) = dir {
        process.current_dir(dir);
    }
    process
        .spawn()
        .with_context(|| format!("starting {}", command.join(" ")))
}

fn restart(dir: &Path, names: &[String]) -> Result<ExitCode> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no cluster directory {}", dir.display()))?;
    let map = ClusterMap::load(&dir.join("cluster.toml"))?;
    let mut table = read_table(&dir)?;
    for name in names {
        let Some(entry) = table.process.iter().find(|p| &p.name == name) else {
            bail!("no process {name} in {}", table_path(&dir).display());
        };
        if is_running(entry.pid) {
            bail!("{name} is running (pid {}); stop it first", entry.pid);
        }
    }
    let mut children = Vec::new();
    for entry in table.process.iter_mut() {
        let wanted = if names.is_empty() {
            !is_running(entry.pid)
        } else {
            names.contains(&entry.name)
        };
        if !wanted {
            continue;
        }
        // The metrics address it had (on loopback the kernel chose it).
        if let Some(metrics) = entry.metrics
            && let Some(at) = entry.command.iter().position(|arg| arg == METRICS_FLAG)
            && at + 1 < entry.command.len()
        {
            entry.command[at + 1] = metrics.to_string();
        }
        let child = spawn_detached(&entry.command, &entry.log, true)?;
        entry.pid = child.id();
        children.push((child, entry.clone()));
    }
    write_table(&dir, &table)?;
    wait_ready(&map, &mut children)?;
    let restarted: Vec<&str> = children
        .iter()
        .map(|(_, entry)| entry.name.as_str())
        .collect();
    println!("restarted {}: {}", restarted.len(), restarted.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// A cluster as the benchmarks start it in `dir`: one meta node, no standby
/// or gateway, a failure timeout of 1 s.
pub fn up_for_benchmark(
    dir: &Path,
    shards: u32,
    replicas: usize,
    mode: ClusterMode,
    topology: TopologyKind,
    durability: DurabilityArg,
) -> Result<ExitCode> {
    up_committing(
        dir,
        shards,
        replicas,
        (false, 0),
        mode,
        topology,
        durability,
    )
}

/// `up_for_benchmark` with fan-out replication or not, and early commit
/// at K = `early_commit` (0: at the tail).
pub fn up_committing(
    dir: &Path,
    shards: u32,
    replicas: usize,
    (fanout, early_commit): (bool, u32),
    mode: ClusterMode,
    topology: TopologyKind,
    durability: DurabilityArg,
) -> Result<ExitCode> {
    run(ClusterCommand::Up {
        dir: dir.to_path_buf(),
        shards,
        replicas,
        commit: early_commit,
        replication: fanout,
        mode,
        topology: Some(topology),
        durability,
        snapshot_every: 200_000,
        gateway: false,
        gateway_listen: "127.0.0.1:6379".parse().expect("an address"),
        requirepass: None,
        meta: 1,
        standby: 0,
        failure_timeout_ms: 1000,
        allow_clients: None,
        fresh: false,
        no_tls: false,
    })
}

/// The map meta has now, for a cluster of `dir` that runs meta.
fn current_map(dir: &Path) -> Result<(ClusterMap, ClusterMap)> {
    let map = ClusterMap::load(&dir.join("cluster.toml"))?;
    if map.meta.is_empty() {
        bail!("this cluster has no meta nodes (`--meta 0`): its shards are fixed");
    }
    let current = tern_client::meta::fetch_map(&map.meta, &mut None)?;
    Ok((map, current))
}

fn add_shard(dir: &Path, replicas: usize, snapshot_every: u64) -> Result<ExitCode> {
    use tern_client::meta::{self, Change, Refusal, Reply, Request};
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no cluster directory {}", dir.display()))?;
    let (map, current) = current_map(&dir)?;
    if replicas == 0 {
        bail!("a shard needs at least one replica");
    }
    let shard = ShardId(
        current
            .shards
            .iter()
            .map(|s| s.id.get() + 1)
            .max()
            .unwrap_or(0),
    );
    let coordinator = current.shards[0].coordinator;
    let names: Vec<String> = (0..replicas)
        .map(|position| replica_name(shard, position))
        .collect();
    let mut topology = Topology::load(&topology_path(&dir))?;
    let addresses: Vec<SocketAddrV4> = match &mut topology {
        None => free_addresses(replicas)?,
        Some(topology) => {
            let nodes: Vec<String> = names.iter().map(|name| node_name(name)).collect();
            topology.extend(&nodes)?;
            topology.save(&topology_path(&dir))?;
            names
                .iter()
                .map(|name| {
                    let role = ProcessRole::of(name).expect("a replica's name");
                    SocketAddrV4::new(topology.node(&role.node_name()).address, role.port())
                })
                .collect()
        }
    };
    let mut table = read_table(&dir)?;
    let persistence = Persistence {
        durability: table.durability.unwrap_or(DurabilityArg::Always),
        snapshot_every,
    };
    let executable = std::env::current_exe().context("locating the tern executable")?;
    let map_path = dir.join("cluster.toml");
    let tls = ClusterMap::tls_dir(&map_path)?.is_some();
    if tls {
        let processes: Vec<(&str, Ipv4Addr)> = names
            .iter()
            .zip(&addresses)
            .map(|(name, address)| (name.as_str(), *address.ip()))
            .collect();
        issue_certificates(&dir, &processes, false)?;
    }
    for (name, address) in names.iter().zip(&addresses) {
        let metrics = metrics_listen(topology.is_some(), *address);
        let mut command: Vec<String> = Vec::new();
        if let Some(topology) = &topology {
            let namespace = &topology.node(&node_name(name)).namespace;
            command.extend(["ip", "netns", "exec", namespace].map(String::from));
        }
        command.push(executable.display().to_string());
        command.extend(["--cluster".to_string(), map_path.display().to_string()]);
        if tls {
            command.extend([IDENTITY_FLAG.to_string(), name.clone()]);
        }
        command.extend(
            [
                "server",
                "--shard",
                &shard.to_string(),
                "--listen",
                &address.to_string(),
            ]
            .map(String::from),
        );
        command.extend(storage_args(&dir, name, persistence));
        command.extend([METRICS_FLAG.to_string(), metrics.to_string()]);
        let log = dir.join("logs").join(format!("{name}.log"));
        let child = spawn_detached(&command, &log, false)?;
        table.process.push(ProcessEntry {
            name: name.clone(),
            pid: child.id(),
            address: *address,
            shard,
            log,
            command,
            metrics: None,
        });
    }
    learn_metrics_addresses(&mut table.process)?;
    write_table(&dir, &table)?;
    // Meta takes the chain once every replica reports as a spare.
    let add = Request::Change(Change::AddShard {
        shard,
        coordinator,
        replicas: addresses.clone(),
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match meta::call_leader(&map.meta, &mut None, &add) {
            Ok(Reply::Map(_)) => break,
            Ok(Reply::Refused(Refusal::NotASpare { .. })) if Instant::now() < deadline => {}
            Ok(Reply::Refused(why)) => bail!("meta refused the new shard {shard}: {why}"),
            Ok(other) => bail!("unexpected answer from meta: {other:?}"),
            // No leader yet (an election): asked again.
            Err(_) if Instant::now() < deadline => {}
            Err(error) => return Err(error).context("adding the shard through meta"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "shard {shard} added: {} under the coordinator at {coordinator}",
        addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let moves = tern_client::reshard::rebalance(
        &map.meta,
        tern_client::reshard::ReshardOptions::default(),
        tern_client::reshard::Balance::Slots,
        &mut |_, _| {},
    )
    .context("rebalancing the slots onto the new shard")?
    .moves;
    for (step, report) in &moves {
        println!(
            "  slots {}-{} from shard {} to shard {}: {} keys, longest write hold {:.1} ms",
            step.slots[0],
            step.slots[1] - 1,
            step.from,
            step.to,
            report.keys,
            report.longest_hold().as_secs_f64() * 1e3
        );
    }
    println!("rebalanced: {} moves", moves.len());
    Ok(ExitCode::SUCCESS)
}

fn remove_shard(dir: &Path, shard: ShardId) -> Result<ExitCode> {
    use tern_client::meta::{self, Change, Reply, Request};
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no cluster directory {}", dir.display()))?;
    let (map, current) = current_map(&dir)?;
    let Some(leaving) = current.shards.iter().find(|s| s.id == shard) else {
        bail!("there is no shard {shard}");
    };
    if current.shards.len() < 2 {
        bail!("shard {shard} is the only shard: its slots have nowhere to go");
    }
    // Each of its ranges to the shard that owns the fewest slots then.
    let mut owned: Vec<(ShardId, u32)> = current
        .shards
        .iter()
        .filter(|s| s.id != shard)
        .map(|s| (s.id, s.slots.iter().map(|[a, b]| b - a).sum()))
        .collect();
    for &[start, end] in &leaving.slots {
        let (to, count) = owned
            .iter_mut()
            .min_by_key(|(id, count)| (*count, *id))
            .expect("another shard");
        let report = tern_client::reshard::reshard(
            &map.meta,
            shard,
            *to,
            [start, end],
            tern_client::reshard::ReshardOptions::default(),
            &mut |_| {},
        )
        .with_context(|| format!("moving slots {start}-{} to shard {to}", end - 1))?;
        println!(
            "  slots {start}-{} to shard {to}: {} keys, longest write hold {:.1} ms",
            end - 1,
            report.keys,
            report.longest_hold().as_secs_f64() * 1e3
        );
        *count += end - start;
    }
    match meta::call_leader(
        &map.meta,
        &mut None,
        &Request::Change(Change::RemoveShard { shard }),
    )? {
        Reply::Map(_) => {}
        Reply::Refused(why) => bail!("meta refused to retire shard {shard}: {why}"),
        other => bail!("unexpected answer from meta: {other:?}"),
    }
    // Its replicas serve nothing now: stopped, and out of the table.
    let mut table = read_table(&dir)?;
    let (gone, kept): (Vec<ProcessEntry>, Vec<ProcessEntry>) = table.process.into_iter().partition(
        |entry| matches!(entry.role(), Some(ProcessRole::Replica { shard: of, .. }) if of == shard),
    );
    for entry in &gone {
        if is_running(entry.pid) {
            // SAFETY: a plain system call on a pid this cluster started.
            unsafe { libc::kill(entry.pid as i32, libc::SIGTERM) };
        }
    }
    table.process = kept;
    write_table(&dir, &table)?;
    println!(
        "shard {shard} retired: its slots moved, {} replicas stopped",
        gone.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn wait_ready(map: &ClusterMap, children: &mut [(Child, ProcessEntry)]) -> Result<()> {
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(100),
        deadline: Duration::from_millis(100),
        ..ClientOptions::default()
    };
    let mut client = Client::with_options(map.clone(), options)?;
    let start = Instant::now();
    let mut waiting: Vec<usize> = (0..children.len()).collect();
    while !waiting.is_empty() {
        if start.elapsed() > READY_TIMEOUT {
            let names: Vec<&str> = waiting
                .iter()
                .map(|&i| children[i].1.name.as_str())
                .collect();
            bail!("not ready after {READY_TIMEOUT:?}: {}", names.join(", "));
        }
        let mut still = Vec::new();
        for index in waiting {
            let (child, entry) = &mut children[index];
            if let Some(exit) = child.try_wait()? {
                let log = std::fs::read_to_string(&entry.log).unwrap_or_default();
                bail!(
                    "{} exited with {exit} during start-up; its log:\n{log}",
                    entry.name
                );
            }
            let ready = match entry.role() {
                Some(ProcessRole::Gateway) => gateway_answers(entry.address),
                Some(ProcessRole::Meta(_)) => meta_has_map(entry.address),
                Some(ProcessRole::Standby(_)) => {
                    // A standby serves nothing until it takes over: running is all.
                    true
                }
                _ => {
                    matches!(client.admin(entry.address, Op::Ping, entry.shard), Ok(reply) if reply.status == Status::Ok)
                    // A coordinator restarted after a takeover is a standby.
                    || is_standby(map, entry.address)
                }
            };
            if !ready {
                still.push(index);
            }
        }
        waiting = still;
    }
    Ok(())
}

/// Whether meta gives the coordinator at `address` no shard (a coordinator
/// restarted after a takeover waits as a standby).
fn is_standby(map: &ClusterMap, address: SocketAddrV4) -> bool {
    !map.meta.is_empty()
        && tern_client::meta::fetch_map(&map.meta, &mut None).is_ok_and(|current| {
            current
                .shards
                .iter()
                .all(|shard| shard.coordinator != address)
                && map.shards.iter().any(|shard| shard.coordinator == address)
        })
}

/// Whether the meta node at `address` answers and holds the map.
fn meta_has_map(address: SocketAddrV4) -> bool {
    let request = tern_client::meta::Request::Status;
    matches!(
        tern_client::meta::call(address, &request, Duration::from_millis(200)),
        Ok(tern_client::meta::Reply::Status(status)) if status.map_version.is_some()
    )
}

/// Stops `pids` (checked to be the caller's): SIGTERM, and SIGKILL for
/// those still running after `STOP_TIMEOUT`. How many needed SIGKILL.
pub(crate) fn stop_processes(pids: &[u32]) -> usize {
    for &pid in pids {
        // SAFETY: plain system call; the caller checked the pid is its own.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let start = Instant::now();
    while pids.iter().any(|&pid| is_running(pid)) && start.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = 0;
    for &pid in pids.iter().filter(|&&pid| is_running(pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        killed += 1;
    }
    killed
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub(crate) fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesized command name, which may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state != 'Z')
}

/// Whether `pid` is a process of the cluster whose map is `map_path`, so that
/// a recycled pid is never signalled.
fn belongs_to(pid: u32, map_path: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let needle = map_path.as_os_str().as_encoded_bytes();
            cmdline.windows(needle.len()).any(|window| window == needle)
        })
        .unwrap_or(false)
}

fn down(dir: &Path) -> Result<ExitCode> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no cluster directory {}", dir.display()))?;
    let map_path = dir.join("cluster.toml");
    let table = read_table(&dir)?;
    let ours: Vec<&ProcessEntry> = table
        .process
        .iter()
        .filter(|p| is_running(p.pid) && belongs_to(p.pid, &map_path))
        .collect();
    let pids: Vec<u32> = ours.iter().map(|p| p.pid).collect();
    let killed = stop_processes(&pids);
    let _ = std::fs::remove_file(table_path(&dir));
    let mut removed = String::new();
    if let Some(topology) = Topology::load(&topology_path(&dir))? {
        topology.destroy();
        let _ = std::fs::remove_file(topology_path(&dir));
        removed = format!(
            ", removed {} namespaces and bridge {}",
            topology.nodes.len(),
            topology.bridge
        );
    }
    println!(
        "cluster down in {}: stopped {} processes{}{removed}",
        dir.display(),
        ours.len(),
        if killed > 0 {
            format!(" ({killed} needed SIGKILL)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn status(dir: &Path) -> Result<ExitCode> {
    let file_map = ClusterMap::load(&dir.join("cluster.toml"))?;
    // The map meta holds now (chains and coordinators change on failures).
    let map = match file_map.meta.is_empty() {
        true => file_map.clone(),
        false => tern_client::meta::fetch_map(&file_map.meta, &mut None)
            .map_err(|error| {
                println!("meta does not answer ({error}): showing the initial map");
            })
            .unwrap_or_else(|()| file_map.clone()),
    };
    let table = read_table(dir)?;
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(200),
        deadline: Duration::from_millis(400),
        ..ClientOptions::default()
    };
    let mut client = Client::with_options(map.clone(), options)?;
    // The status line of the process at `address`, and whether it is up.
    let mut describe = |address: SocketAddrV4, shard: ShardId| -> (String, bool) {
        let pid = table
            .process
            .iter()
            .find(|p| p.address == address)
            .map(|p| p.pid);
        let process = match pid {
            Some(pid) if is_running(pid) => format!("pid {pid:<7}"),
            Some(pid) => format!("pid {pid:<7} (exited)"),
            None => "pid ?      ".to_string(),
        };
        match client.admin(address, Op::Ping, shard) {
            Ok(reply) => (
                format!(
                    "{process} up    {} seq {} commit_seq {}",
                    String::from_utf8_lossy(&reply.value),
                    reply.header.seq.get(),
                    reply.header.commit_seq.get()
                ),
                true,
            ),
            Err(_) => (format!("{process} DOWN"), false),
        }
    };
    let mut all_up = true;
    let mode = match table.mode {
        Some(ClusterMode::Xdp) => "xdp",
        Some(_) => "user",
        None => "unknown",
    };
    let topology = match table.topology {
        Some(TopologyKind::Netns) => "netns",
        Some(TopologyKind::Loopback) => "loopback",
        None => "unknown",
    };
    println!("mode {mode}, topology {topology}");
    let mut metrics: Vec<String> = table
        .process
        .iter()
        .filter_map(|entry| {
            let address = entry.metrics?;
            Some(format!("  {:<12} http://{address}/metrics", entry.name))
        })
        .collect();
    metrics.sort();
    if let Some(gateway) = table
        .process
        .iter()
        .find(|p| p.role() == Some(ProcessRole::Gateway))
    {
        let up = if gateway_answers(gateway.address) {
            "up"
        } else {
            "DOWN"
        };
        all_up &= up == "up";
        println!(
            "gateway {:<21} pid {:<7} {up} (RESP)",
            gateway.address, gateway.pid
        );
    }
    for shard in &map.shards {
        let slots: Vec<String> = shard
            .slots
            .iter()
            .map(|[start, end]| format!("[{start}, {end})"))
            .collect();
        println!(
            "shard {} slots {} epoch {} replication {} commit {}",
            shard.id,
            slots.join(" "),
            shard.epoch,
            tern_client::replication_name(shard.fanout),
            tern_client::commit_name(shard.early_commit)
        );
        let (line, up) = describe(shard.coordinator, shard.id);
        all_up &= up;
        println!("  coordinator {:<21} {line}", shard.coordinator);
        for (position, address) in shard.replicas.iter().enumerate() {
            let role = match position {
                0 if shard.replicas.len() == 1 => "head+tail",
                0 => "head",
                _ if shard.fanout => "leaf",
                p if p + 1 == shard.replicas.len() => "tail",
                _ => "middle",
            };
            let (line, up) = describe(*address, shard.id);
            all_up &= up;
            println!("  {role:<11} {address:<21} {line}");
        }
    }
    for entry in &table.process {
        let role = entry.role();
        let spare_replica = matches!(role, Some(ProcessRole::Replica { .. }))
            && map
                .shards
                .iter()
                .all(|shard| !shard.replicas.contains(&entry.address));
        let standby = role.is_some_and(ProcessRole::is_coordinator)
            && map
                .shards
                .iter()
                .all(|shard| shard.coordinator != entry.address);
        let line = if matches!(role, Some(ProcessRole::Meta(_))) {
            let (state, up) = match tern_client::meta::call(
                entry.address,
                &tern_client::meta::Request::Status,
                Duration::from_millis(300),
            ) {
                Ok(tern_client::meta::Reply::Status(status)) => (
                    format!("up    {} term {}", status.state.to_lowercase(), status.term),
                    true,
                ),
                _ => ("DOWN".to_string(), false),
            };
            all_up &= up;
            format!(
                "meta        {:<21} pid {:<7} {state}",
                entry.address, entry.pid
            )
        } else if standby || spare_replica {
            let what = if standby { "standby" } else { "spare" };
            let up = if is_running(entry.pid) { "up" } else { "DOWN" };
            format!(
                "{what:<11} {:<21} pid {:<7} {up} ({})",
                entry.address, entry.pid, entry.name
            )
        } else {
            continue;
        };
        println!("{line}");
    }
    if !metrics.is_empty() {
        println!("metrics (Prometheus):");
        for line in metrics {
            println!("{line}");
        }
    }
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::{ProcessRole, ShardId};

    #[test]
    fn every_role_round_trips_through_its_name_and_has_a_distinct_node() {
        let roles = [
            ProcessRole::Coordinator,
            ProcessRole::Standby(1),
            ProcessRole::Standby(12),
            ProcessRole::Replica {
                shard: ShardId(0),
                position: 2,
            },
            ProcessRole::Replica {
                shard: ShardId(11),
                position: 0,
            },
            ProcessRole::Meta(3),
            ProcessRole::Gateway,
        ];
        let mut nodes = std::collections::BTreeSet::new();
        for role in roles {
            assert_eq!(ProcessRole::of(&role.name()), Some(role), "{role:?}");
            assert!(
                nodes.insert(role.node_name()),
                "{role:?} shares a node name"
            );
        }
        assert_eq!(ProcessRole::of("shard1-replicaX"), None);
        assert_eq!(ProcessRole::of("somebody"), None);
    }
}
