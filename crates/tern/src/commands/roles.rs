//! The long-running roles: a replica, a coordinator, a meta node, the
//! Redis-protocol gateway.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use tern_client::{ClusterMap, tls};
use tern_proto::coordinator::ShardConfig;
use tern_proto::replica::ReplicaConfig;
use tern_testbed::DurabilityArg;

use crate::signals;

/// Run a replica of one shard (started for you by `tern cluster up`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long)]
    pub shard: tern_client::ShardId,
    /// Position in the shard's chain in the cluster file: 0 is the head.
    #[arg(long, required_unless_present = "listen")]
    pub replica: Option<usize>,
    /// The replica's address, for one not in the cluster file (a spare
    /// that meta or `tern node add` puts into the chain).
    #[arg(long)]
    pub listen: Option<SocketAddrV4>,
    /// Directory of the replica's log and snapshots (omit: memory only).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DurabilityArg::Always)]
    pub durability: DurabilityArg,
    /// With `--durability interval`: milliseconds between syncs.
    #[arg(long, default_value_t = 10)]
    pub sync_interval_ms: u64,
    /// Log records between snapshots (a snapshot lets older log go).
    #[arg(long, default_value_t = 200_000)]
    pub snapshot_every: u64,
    /// Longest value accepted, in bytes (at most 256 MiB); values over
    /// 1024 bytes travel out of band over TCP.
    #[arg(long, default_value_t = tern_wire::LARGE_VALUE_LEN_DEFAULT)]
    pub value_limit: usize,
    /// Memory for large values in flight (staged, kept for the successor,
    /// answers waiting for their client), in bytes; staging waits while
    /// it is used up.
    #[arg(long, default_value_t = tern_server::large_budget_default())]
    pub value_memory: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Run the coordinator of every shard whose coordinator address is LISTEN.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[arg(long)]
    pub listen: SocketAddrV4,
    /// user: all logic in this process; xdp: the XDP fast path on the
    /// interface holding LISTEN, this process for the rare cases.
    #[arg(long, value_enum, default_value_t = CoordinatorMode::User)]
    pub mode: CoordinatorMode,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve only clients of these IPv4 networks (a.b.c.d/len or one
    /// address, comma separated); anything else that asks is dropped
    /// unanswered and counted (`refused_not_allowed`, and
    /// `xdp.drop_not_allowed` in the kernel). Include the cluster's own
    /// addresses: coordinators settle each other's transactions, and the
    /// CLI's reshard and stats come from wherever it runs. Default: every
    /// source.
    #[arg(long, value_parser = parse_allow_list, default_value = "")]
    pub allow_clients: tern_coord::AllowList,
}

fn parse_allow_list(text: &str) -> Result<tern_coord::AllowList, String> {
    tern_coord::AllowList::parse(text)
}

/// Run one node of the control plane: the cluster map on openraft,
/// failure detection and reconfiguration.
#[derive(Debug, clap::Args)]
pub struct MetaArgs {
    /// This node's id in --peers.
    #[arg(long)]
    pub id: u64,
    /// Every meta node as ID=ADDR, comma separated (this one included).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(u64, SocketAddrV4)>,
    /// Directory of the Raft log, vote and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Silence after which a replica or coordinator is declared failed;
    /// processes heartbeat every tenth of it and stop serving after half.
    #[arg(long, default_value_t = 1000)]
    pub failure_timeout_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Serve the Redis protocol (RESP2/RESP3) in front of the cluster.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Where to listen; when taken, the same address on a free port (printed).
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub listen: std::net::SocketAddr,
    /// Require AUTH with this password before other commands (requirepass).
    #[arg(long, env = "TERN_REQUIREPASS")]
    pub requirepass: Option<String>,
    /// Users and their rights, in Redis's ACL file syntax (a subset: `user
    /// NAME on|off >PASSWORD|nopass ~* +@all|+@read|+@write|+@connection|
    /// +@transaction`, one per line). The default user is off unless the
    /// file names it. Not with --requirepass.
    #[arg(long, conflicts_with = "requirepass")]
    pub users: Option<std::path::PathBuf>,
    /// Serve every connection over TLS with this certificate chain (PEM;
    /// with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by these authorities (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_ca_cert: Option<std::path::PathBuf>,
    /// Most connections served at once; one more is answered `ERR max
    /// number of clients reached` and closed (Redis's maxclients).
    #[arg(long, default_value_t = tern_gateway::MAX_CLIENTS_DEFAULT)]
    pub maxclients: usize,
    /// Close a connection idle this many seconds (0: never; Redis's
    /// timeout).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Threads serving connections, each with its own poller and
    /// pipelines (Redis's io-threads; default: the cores, at most 4).
    #[arg(long)]
    pub io_threads: Option<usize>,
    /// Threads running the commands that need a blocking client (key
    /// walks, expiry, bits, large values): as many run at once.
    #[arg(long, default_value_t = tern_gateway::BLOCKING_THREADS_DEFAULT)]
    pub blocking_threads: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CoordinatorMode {
    User,
    Xdp,
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

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub fn server(map: &ClusterMap, args: ServerArgs) -> Result<ExitCode> {
    tls::require_role(tls::Role::Replica).map_err(anyhow::Error::msg)?;
    let ServerArgs {
        shard,
        replica,
        listen,
        data_dir,
        durability,
        sync_interval_ms,
        snapshot_every,
        value_limit,
        value_memory,
        metrics_listen,
    } = args;
    init_logging();
    serve_snapshots(metrics_listen, "replica")?;
    let most = tern_server::LARGE_VALUE_LEN_MOST;
    if value_limit > most {
        bail!("--value-limit {value_limit} exceeds the most a replica takes, {most} bytes");
    }
    let values = tern_server::Values::new(value_limit, value_memory);
    let shutdown = signals::shutdown_flag();
    let durability = match durability {
        DurabilityArg::Always => tern_server::Durability::Always,
        DurabilityArg::Interval => {
            tern_server::Durability::Interval(std::time::Duration::from_millis(sync_interval_ms))
        }
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
        let config = replica_config(map, shard, replica)?;
        tern_server::run(config, persistence, values, shutdown)?;
    } else {
        let addr = match (listen, replica) {
            (Some(listen), _) => listen,
            (None, Some(replica)) => replica_config(map, shard, replica)?.chain[replica],
            (None, None) => unreachable!("clap requires one"),
        };
        let meta = map.meta.clone();
        tern_server::run_under_meta(addr, shard, meta, persistence, values, shutdown)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// With `--metrics-listen`: serves the main loop's samples (handed over
/// through `tern_metrics::process_snapshots`) as `tern_<role>_...`.
fn serve_snapshots(listen: Option<std::net::SocketAddr>, role: &'static str) -> Result<()> {
    let Some(listen) = listen else {
        return Ok(());
    };
    let address = tern_metrics::serve(listen, role, || tern_metrics::process_snapshots().take())
        .map_err(|error| anyhow::anyhow!("--metrics-listen {listen}: {error}"))?;
    tracing::info!(%address, role, "metrics served");
    Ok(())
}

pub fn coordinator(map: &ClusterMap, args: CoordinatorArgs) -> Result<ExitCode> {
    tls::require_role(tls::Role::Coordinator).map_err(anyhow::Error::msg)?;
    let CoordinatorArgs {
        listen,
        mode,
        metrics_listen,
        allow_clients,
    } = args;
    init_logging();
    serve_snapshots(metrics_listen, "coordinator")?;
    let shutdown = signals::shutdown_flag();
    let mode = match mode {
        CoordinatorMode::User => tern_coord::Mode::User,
        CoordinatorMode::Xdp => tern_coord::Mode::Xdp,
    };
    if map.meta.is_empty() {
        let shards = coordinator_shards(map, listen)?;
        tern_coord::run(listen, shards, mode, &allow_clients, shutdown)?;
    } else {
        tern_coord::run_under_meta(listen, map.meta.clone(), mode, &allow_clients, shutdown)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn meta(map: ClusterMap, args: MetaArgs) -> Result<ExitCode> {
    tls::require_role(tls::Role::Meta).map_err(anyhow::Error::msg)?;
    let MetaArgs {
        id,
        peers,
        data_dir,
        failure_timeout_ms,
        metrics_listen,
    } = args;
    init_logging();
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
        metrics_listen,
    };
    tern_meta::run(options, signals::shutdown_flag())?;
    Ok(ExitCode::SUCCESS)
}

pub fn gateway(map: ClusterMap, args: GatewayArgs) -> Result<ExitCode> {
    tls::require_role(tls::Role::Gateway).map_err(anyhow::Error::msg)?;
    let GatewayArgs {
        listen,
        requirepass,
        users,
        tls_cert,
        tls_key,
        tls_ca_cert,
        maxclients,
        timeout,
        io_threads,
        blocking_threads,
        metrics_listen,
    } = args;
    if maxclients == 0 {
        bail!("--maxclients must be at least 1");
    }
    if io_threads == Some(0) || blocking_threads == 0 {
        bail!("--io-threads and --blocking-threads must be at least 1");
    }
    let users = match &users {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("--users {}: {error}", path.display()))?;
            let users = tern_gateway::acl::Users::parse(&text)
                .map_err(|error| anyhow::anyhow!("--users {}: {error}", path.display()))?;
            Some(users)
        }
        None => None,
    };
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(
            tern_gateway::transport::server_config(cert, key, tls_ca_cert.as_deref())
                .map_err(|error| anyhow::anyhow!("TLS: {error}"))?,
        ),
        _ => None,
    };
    init_logging();
    raise_open_file_limit(maxclients);
    let (listener, address) = tern_gateway::bind(listen)?;
    if listen.port() != 0 && address != listen {
        println!("{listen} is taken: listening on {address}");
    }
    println!("gateway listening on {address}");
    tracing::info!(%address, auth = requirepass.is_some() || users.is_some(), "gateway serving");
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
    let mut config = tern_gateway::GatewayConfig {
        password: requirepass,
        users,
        tls,
        max_clients: maxclients,
        idle_timeout: (timeout > 0).then(|| std::time::Duration::from_secs(timeout)),
        blocking_threads,
        metrics_listen,
        ..tern_gateway::GatewayConfig::new(map)
    };
    if let Some(io_threads) = io_threads {
        config.io_threads = io_threads;
    }
    tern_gateway::serve(listener, config, shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// Each connection takes one descriptor (its TCP stream); the I/O and
/// blocking threads a few hundred more at most (their pipelines' and
/// clients' sockets, and one per replica they staged a large value at or
/// fetched one from): raises the soft limit towards `maxclients` and that
/// many, as far as the hard limit allows, and says so when that is not
/// enough.
fn raise_open_file_limit(max_clients: usize) {
    let wanted = (max_clients as u64).saturating_add(512);
    // SAFETY: passes a pointer to a live rlimit struct.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < wanted {
        limit.rlim_cur = wanted.min(limit.rlim_max);
        // SAFETY: passes a pointer to a live rlimit struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_clients,
            "the open-file limit is below what maxclients needs (one per client, 512 besides): connections beyond it fail"
        );
    }
}

fn replica_config(
    map: &ClusterMap,
    shard: tern_client::ShardId,
    position: usize,
) -> Result<ReplicaConfig> {
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
        shard: shard.get(),
        epoch: entry.epoch.get(),
        chain: entry.replicas.clone(),
        position,
        coordinator: entry.coordinator,
        early_commit: entry.early_commit,
        fanout: entry.fanout,
    })
}

fn coordinator_shards(map: &ClusterMap, listen: SocketAddrV4) -> Result<Vec<ShardConfig>> {
    let shards = tern_coord::shards_of(&map.shards, &map.migrations, listen);
    if shards.is_empty() {
        bail!("no shard in the cluster map has its coordinator at {listen}");
    }
    Ok(shards)
}
