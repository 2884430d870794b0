//! `tern`: one command for every role of a Tern cluster.

mod signals;

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tern_client::{CasOutcome, Client, ClusterMap};
use tern_proto::coordinator::ShardConfig;
use tern_proto::replica::ReplicaConfig;
use tern_testbed::{DurabilityArg, chaos, cluster, compare};
use tern_wire::Op;

#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: a replicated, sharded, in-memory key-value store"
)]
struct Cli {
    /// The cluster map written by `tern cluster up` (DIR/cluster.toml).
    #[arg(
        long,
        global = true,
        env = "TERN_CLUSTER",
        default_value = "cluster.toml"
    )]
    cluster: PathBuf,
    #[command(subcommand)]
    command: Command,
}

fn load_map(path: &Path) -> Result<ClusterMap> {
    ClusterMap::load(path).with_context(|| format!("loading {}", path.display()))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a key: prints its value (exit status 1 when absent).
    Get {
        key: String,
        /// Print `VERSION<TAB>VALUE` (the version is what `cas` expects).
        #[arg(long)]
        with_version: bool,
    },
    /// Write a key; prints its new version.
    Put { key: String, value: String },
    /// Delete a key (exit status 1 when it did not exist).
    Del { key: String },
    /// Write a key only if its version is EXPECTED_VERSION (0: the key is absent).
    Cas {
        key: String,
        expected_version: u64,
        value: String,
    },
    /// Print every process's counters.
    Stats,
    /// Run a replica of one shard (started for you by `tern cluster up`).
    Server {
        #[arg(long)]
        shard: u32,
        /// Position in the shard's chain in the cluster file: 0 is the head.
        #[arg(long, required_unless_present = "listen")]
        replica: Option<usize>,
        /// The replica's address, for one not in the cluster file (a spare
        /// that meta or `tern node add` puts into the chain).
        #[arg(long)]
        listen: Option<SocketAddrV4>,
        /// Directory of the replica's log and snapshots (omit: memory only).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DurabilityArg::Always)]
        durability: DurabilityArg,
        /// With `--durability interval`: milliseconds between syncs.
        #[arg(long, default_value_t = 10)]
        sync_interval_ms: u64,
        /// Log records between snapshots (a snapshot lets older log go).
        #[arg(long, default_value_t = 200_000)]
        snapshot_every: u64,
    },
    /// Run the coordinator of every shard whose coordinator address is LISTEN.
    Coordinator {
        #[arg(long)]
        listen: SocketAddrV4,
        /// user: all logic in this process; xdp: the XDP fast path on the
        /// interface holding LISTEN, this process for the rare cases.
        #[arg(long, value_enum, default_value_t = CoordinatorMode::User)]
        mode: CoordinatorMode,
    },
    /// Run one node of the control plane: the cluster map on openraft,
    /// failure detection and reconfiguration.
    Meta {
        /// This node's id in --peers.
        #[arg(long)]
        id: u64,
        /// Every meta node as ID=ADDR, comma separated (this one included).
        #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
        peers: Vec<(u64, SocketAddrV4)>,
        /// Directory of the Raft log, vote and snapshots.
        #[arg(long)]
        data_dir: PathBuf,
        /// Silence after which a replica or coordinator is declared failed;
        /// processes heartbeat every tenth of it and stop serving after half.
        #[arg(long, default_value_t = 1000)]
        failure_timeout_ms: u64,
    },
    /// Change or inspect the cluster's membership through meta.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run a recorded workload against a netns cluster while injecting faults,
    /// then check linearizability, lost writes and recovery time.
    Chaos(chaos::ChaosArgs),
    /// Serve the Redis protocol (RESP2/RESP3) in front of the cluster.
    Gateway {
        /// Where to listen; when taken, the same address on a free port (printed).
        #[arg(long, default_value = "127.0.0.1:6379")]
        listen: std::net::SocketAddr,
        /// Require AUTH with this password before other commands (requirepass).
        #[arg(long, env = "TERN_REQUIREPASS")]
        requirepass: Option<String>,
    },
    /// Start, stop and inspect a local cluster of real processes.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run a workload against a cluster and report throughput and latency.
    Bench {
        #[command(flatten)]
        args: Box<tern_bench::BenchArgs>,
        #[command(subcommand)]
        compare: Option<BenchCommand>,
    },
}

/// When an acknowledged write becomes durable (see tern_server::Durability).
#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Append a running spare replica to a shard's chain as its new tail (it
    /// joins by state transfer).
    Add {
        #[arg(long)]
        shard: u32,
        addr: SocketAddrV4,
    },
    /// Take a replica out of a shard's chain.
    Remove {
        #[arg(long)]
        shard: u32,
        addr: SocketAddrV4,
    },
    /// Move every shard coordinated at FROM to the coordinator at TO.
    MoveCoordinator {
        from: SocketAddrV4,
        to: SocketAddrV4,
    },
    /// Each meta node's view (role, leader, term) and the current map.
    Status,
}

fn parse_peer(text: &str) -> Result<(u64, SocketAddrV4), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ID=ADDR"))?;
    let id = id.parse().map_err(|_| format!("{id:?} is not a node id"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not IP:PORT"))?;
    Ok((id, addr))
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Run one workload against fresh clusters in several coordinator modes,
    /// alternating, and report medians and ratios.
    Compare(compare::CompareArgs),
    /// Append throughput of the replica log, one fdatasync per write against
    /// group commit.
    Log(tern_bench::persistence::LogBenchArgs),
    /// Time to recover a replica of N keys from its log, and from a snapshot.
    Recovery(tern_bench::persistence::RecoveryBenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CoordinatorMode {
    User,
    Xdp,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Server { .. } | Command::Coordinator { .. } | Command::Gateway { .. }
    ) {
        // A command whose output is cut short (`| head`) ends quietly, as
        // Unix tools do. Long-running processes keep ignoring SIGPIPE: a
        // client hanging up must not kill the gateway.
        // SAFETY: resets a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(&cli.cluster, cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn run(cluster: &Path, command: Command) -> Result<ExitCode> {
    match command {
        Command::Get { key, with_version } => {
            let mut client = Client::new(load_map(cluster)?)?;
            match client.get(key.as_bytes())? {
                Some(found) => {
                    let value = String::from_utf8_lossy(&found.value);
                    if with_version {
                        println!("{}\t{value}", found.version);
                    } else {
                        println!("{value}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("(not found)");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Put { key, value } => {
            let mut client = Client::new(load_map(cluster)?)?;
            let version = client.put(key.as_bytes(), value.as_bytes())?;
            println!("OK version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Del { key } => {
            let mut client = Client::new(load_map(cluster)?)?;
            if client.delete(key.as_bytes())? {
                println!("deleted");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("(not found)");
                Ok(ExitCode::from(1))
            }
        }
        Command::Cas {
            key,
            expected_version,
            value,
        } => {
            let mut client = Client::new(load_map(cluster)?)?;
            match client.cas(key.as_bytes(), expected_version, value.as_bytes())? {
                CasOutcome::Swapped { version } => {
                    println!("OK version {version}");
                    Ok(ExitCode::SUCCESS)
                }
                CasOutcome::Mismatch { current } => {
                    println!("MISMATCH current version {current}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Stats => {
            let map = load_map(cluster)?;
            let mut client = Client::new(map.clone())?;
            for (name, address, shard) in cluster::processes_of(&map) {
                let reply = client.admin(address, Op::Stats, shard)?;
                println!("== {name} {address}");
                print!("{}", String::from_utf8_lossy(&reply.value));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Server {
            shard,
            replica,
            listen,
            data_dir,
            durability,
            sync_interval_ms,
            snapshot_every,
        } => {
            init_logging();
            let map = load_map(cluster)?;
            let shutdown = signals::shutdown_flag();
            let durability = match durability {
                DurabilityArg::Always => tern_server::Durability::Always,
                DurabilityArg::Interval => tern_server::Durability::Interval(
                    std::time::Duration::from_millis(sync_interval_ms),
                ),
                DurabilityArg::None => tern_server::Durability::None,
            };
            let persistence = data_dir.map(|data_dir| tern_server::Persistence {
                data_dir,
                durability,
                snapshot_every,
            });
            if map.meta.is_empty() {
                let Some(replica) = replica else {
                    bail!("a cluster without meta has a static chain: give --replica");
                };
                let config = replica_config(&map, shard, replica)?;
                tern_server::run(config, persistence, shutdown)?;
            } else {
                let addr = match (listen, replica) {
                    (Some(listen), _) => listen,
                    (None, Some(replica)) => replica_config(&map, shard, replica)?.chain[replica],
                    (None, None) => unreachable!("clap requires one"),
                };
                tern_server::run_under_meta(addr, shard, map.meta.clone(), persistence, shutdown)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Coordinator { listen, mode } => {
            init_logging();
            let map = load_map(cluster)?;
            let shutdown = signals::shutdown_flag();
            let mode = match mode {
                CoordinatorMode::User => tern_coord::Mode::User,
                CoordinatorMode::Xdp => tern_coord::Mode::Xdp,
            };
            if map.meta.is_empty() {
                let shards = coordinator_shards(&map, listen)?;
                tern_coord::run(listen, shards, mode, shutdown)?;
            } else {
                tern_coord::run_under_meta(listen, map.meta.clone(), mode, shutdown)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Meta {
            id,
            peers,
            data_dir,
            failure_timeout_ms,
        } => {
            init_logging();
            let map = load_map(cluster)?;
            let peers: std::collections::BTreeMap<u64, SocketAddrV4> = peers.into_iter().collect();
            if !peers.contains_key(&id) {
                bail!("--peers does not name this node's id {id}");
            }
            let options = tern_meta::MetaOptions {
                id,
                peers,
                data_dir,
                initial: map.shards,
                failure_timeout: std::time::Duration::from_millis(failure_timeout_ms),
            };
            tern_meta::run(options, signals::shutdown_flag())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(command) => node_command(&load_map(cluster)?, command),
        Command::Cluster(command) => cluster::run(command),
        Command::Chaos(args) => chaos::run(&args),
        Command::Gateway {
            listen,
            requirepass,
        } => {
            init_logging();
            let map = load_map(cluster)?;
            let (listener, address) = tern_gateway::bind(listen)?;
            if listen.port() != 0 && address != listen {
                println!("{listen} is taken: listening on {address}");
            }
            println!("gateway listening on {address}");
            tracing::info!(%address, auth = requirepass.is_some(), "gateway serving");
            // The signal handler sets a static flag; connections share an Arc.
            let signal = signals::shutdown_flag();
            let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watched = shutdown.clone();
            std::thread::spawn(move || {
                while !signal.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                watched.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let config = tern_gateway::GatewayConfig {
                map,
                password: requirepass,
            };
            tern_gateway::serve(listener, config, shutdown)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::Compare(args)),
            ..
        } => {
            compare::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::Log(args)),
            ..
        } => {
            tern_bench::persistence::run_log(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::Recovery(args)),
            ..
        } => {
            tern_bench::persistence::run_recovery(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            args,
            compare: None,
        } => {
            let map = match args.driver {
                tern_bench::Driver::Tern => Some(load_map(cluster)?),
                tern_bench::Driver::Resp => None,
            };
            let report = tern_bench::run(map.as_ref(), &args)?;
            report.print();
            Ok(if report.failures() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

fn node_command(map: &ClusterMap, command: NodeCommand) -> Result<ExitCode> {
    use tern_client::meta::{self, Change, Reply, Request};
    if map.meta.is_empty() {
        bail!("this cluster map names no meta nodes: its membership is static");
    }
    let change = match command {
        NodeCommand::Add { shard, addr } => Change::AddReplica { shard, addr },
        NodeCommand::Remove { shard, addr } => Change::RemoveReplica { shard, addr },
        NodeCommand::MoveCoordinator { from, to } => Change::MoveCoordinator { from, to },
        NodeCommand::Status => {
            for node in &map.meta {
                match meta::call(*node, &Request::Status, meta::META_CALL_TIMEOUT) {
                    Ok(Reply::Status(status)) => println!(
                        "meta {node}: id {} {} term {} leader {:?} applied {:?} map version {:?}",
                        status.id,
                        status.state,
                        status.term,
                        status.leader,
                        status.last_applied,
                        status.map_version
                    ),
                    Ok(other) => println!("meta {node}: unexpected answer {other:?}"),
                    Err(error) => println!("meta {node}: unreachable ({error})"),
                }
            }
            let current = meta::fetch_map(&map.meta, &mut None)?;
            print!("{}", current.to_toml());
            return Ok(ExitCode::SUCCESS);
        }
    };
    match meta::call_leader(&map.meta, &mut None, &Request::Change(change))? {
        Reply::Map(current) => {
            println!("map version {}", current.version);
            print!("{}", current.to_cluster_map(&map.meta)?.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Reply::Refused(why) => {
            eprintln!("refused: {why}");
            Ok(ExitCode::from(2))
        }
        other => bail!("unexpected answer from meta: {other:?}"),
    }
}

fn replica_config(map: &ClusterMap, shard: u32, position: usize) -> Result<ReplicaConfig> {
    let Some(entry) = map.shard(shard) else {
        bail!("shard {shard} is not in the cluster map")
    };
    if position >= entry.replicas.len() {
        bail!(
            "shard {shard} has {} replicas; there is no replica {position}",
            entry.replicas.len()
        );
    }
    Ok(ReplicaConfig {
        shard,
        epoch: entry.epoch,
        chain: entry.replicas.clone(),
        position,
        coordinator: entry.coordinator,
    })
}

fn coordinator_shards(map: &ClusterMap, listen: SocketAddrV4) -> Result<Vec<ShardConfig>> {
    let shards = tern_coord::shards_of(&map.shards, listen);
    if shards.is_empty() {
        bail!("no shard in the cluster map has its coordinator at {listen}");
    }
    Ok(shards)
}
