//! `tern`: one command for every role of a Tern cluster.

mod commands;
mod signals;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use commands::{data, node, reshard, roles};
use tern_client::ClusterMap;
use tern_testbed::{certs, chaos, cluster, compare, deploy, migrate, replication};

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
    /// The TLS identity this process takes from the certificates directory
    /// the map names (`[tls] dir`): files NAME.pem and NAME.key there.
    /// `tern cluster up` gives each process its own. Default: `gateway`
    /// for `tern gateway`, else `operator` (the tools').
    #[arg(long, global = true, env = "TERN_IDENTITY")]
    identity: Option<String>,
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
        /// Write the value's bytes as they are to this file (`-`: standard
        /// output) instead of printing it as text.
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Write a key; prints its new version.
    Put {
        key: String,
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input), as bytes.
        #[arg(long, conflicts_with = "value")]
        value_file: Option<PathBuf>,
        /// The key expires this long after the write (e.g. 30s, 500ms);
        /// without it, the key keeps no deadline.
        #[arg(long, value_parser = tern_bench::parse_duration)]
        expire_in: Option<std::time::Duration>,
    },
    /// Give a key a deadline this long from now (e.g. 30s), or none with
    /// `--persist`; exit status 1 when the key is absent.
    Expire {
        key: String,
        #[arg(value_parser = tern_bench::parse_duration, required_unless_present = "persist")]
        after: Option<std::time::Duration>,
        #[arg(long, conflicts_with = "after")]
        persist: bool,
    },
    /// Print how long a key has left in milliseconds, `none` without a
    /// deadline (exit status 1 when absent).
    Ttl { key: String },
    /// Delete a key (exit status 1 when it did not exist).
    Del { key: String },
    /// Write a key only if its version is EXPECTED_VERSION (0: the key is absent).
    Cas {
        key: String,
        expected_version: u64,
        value: String,
    },
    /// Run items as one transaction, every item or none, over keys of any
    /// shards: `get K`, `put K V`, `del K`, `incr K DELTA`, `append K V`,
    /// `check K VERSION` (0: absent; a mismatch writes nothing, exit
    /// status 2). Items as words, or a script (`--script`), or JSON
    /// (`--json`).
    Txn(data::TxnArgs),
    /// Print every process's counters.
    Stats,
    /// Run a replica of one shard (started for you by `tern cluster up`).
    Server(roles::ServerArgs),
    /// Run the coordinator of every shard whose coordinator address is LISTEN.
    Coordinator(roles::CoordinatorArgs),
    /// Run one node of the control plane: the cluster map on openraft,
    /// failure detection and reconfiguration.
    Meta(roles::MetaArgs),
    /// Change or inspect the cluster's membership through meta.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Move slots from one shard to another while both serve (or: the
    /// migrations under way, `status`; stop one, `cancel ID`).
    Reshard(reshard::ReshardArgs),
    /// Run a recorded workload against a netns cluster while injecting faults,
    /// then check linearizability, lost writes and recovery time.
    Chaos(chaos::ChaosArgs),
    /// Serve the Redis protocol (RESP2/RESP3) in front of the cluster.
    Gateway(roles::GatewayArgs),
    /// Start, stop and inspect a local cluster of real processes.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Make the certificates of a cluster's control plane (mutual TLS): an
    /// authority, and one certificate per process.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run a cluster on several machines from one description file: place
    /// its processes, generate each host's configuration, certificates and
    /// systemd units (`generate`), start or stop a host's share.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Run a workload against a cluster and report throughput and latency.
    Bench {
        #[command(flatten)]
        args: Box<tern_bench::BenchArgs>,
        #[command(subcommand)]
        compare: Option<BenchCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Run one workload against fresh clusters in several coordinator modes,
    /// alternating, and report medians and ratios.
    Compare(compare::CompareArgs),
    /// Write latency and throughput against the number of replicas, for
    /// each commit rule (chain, early commit), YCSB A and B, beside Redis
    /// with two asynchronous replicas; alternating rounds, medians, plot.
    Replication(replication::ReplicationArgs),
    /// Append throughput of the replica log, one fdatasync per write against
    /// group commit.
    Log(tern_bench::persistence::LogBenchArgs),
    /// Time to recover a replica of N keys from its log, and from a snapshot.
    Recovery(tern_bench::persistence::RecoveryBenchArgs),
    /// Move slots between shards under a workload (NetMigrate's experiment),
    /// by Tern's live migration, stop-and-copy and ownership-first,
    /// alternating; time series and plots of every run, medians against the
    /// steady state.
    Migrate(migrate::MigrateArgs),
    /// DINT's SmallBank mix of transactions against the cluster (optimistic,
    /// across shards when the accounts are): committed and attempted per
    /// second, conflicts by cause, p50/p99 per type.
    Smallbank(tern_bench::smallbank::SmallbankArgs),
    /// SmallBank against fresh clusters in each coordinator mode,
    /// alternating: medians and per-round ratios of committed per second.
    SmallbankCompare(compare::SmallbankCompareArgs),
    /// The TATP mix against the cluster (DINT's: mostly one-key reads, one
    /// shard per subscriber): committed and attempted per second, p50/p99
    /// per type.
    Tatp(tern_bench::tatp::TatpArgs),
    /// TATP against fresh clusters in each coordinator mode, alternating.
    TatpCompare(compare::TatpCompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Server(_) | Command::Coordinator(_) | Command::Meta(_) | Command::Gateway(_)
    ) {
        // A command whose output is cut short (`| head`) ends quietly, as
        // Unix tools do. Long-running processes keep ignoring SIGPIPE: a
        // client hanging up must not kill the gateway, nor a peer's reset
        // a meta node.
        // SAFETY: resets a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let identity = cli.identity.as_deref().unwrap_or(match cli.command {
        Command::Gateway(_) => "gateway",
        _ => "operator",
    });
    tern_client::tls::set_identity_name(identity);
    match run(&cli.cluster, cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cluster: &Path, command: Command) -> Result<ExitCode> {
    match command {
        Command::Get {
            key,
            with_version,
            value_file,
        } => data::get(
            &load_map(cluster)?,
            &key,
            with_version,
            value_file.as_deref(),
        ),
        Command::Put {
            key,
            value,
            value_file,
            expire_in,
        } => {
            let value = match (value, value_file) {
                (Some(value), _) => value.into_bytes(),
                (None, Some(path)) => data::read_value(&path)?,
                (None, None) => unreachable!("clap requires one"),
            };
            data::put(&load_map(cluster)?, &key, &value, expire_in)
        }
        Command::Expire {
            key,
            after,
            persist,
        } => data::expire(&load_map(cluster)?, &key, after.filter(|_| !persist)),
        Command::Ttl { key } => data::ttl(&load_map(cluster)?, &key),
        Command::Del { key } => data::del(&load_map(cluster)?, &key),
        Command::Cas {
            key,
            expected_version,
            value,
        } => data::cas(&load_map(cluster)?, &key, expected_version, &value),
        Command::Txn(args) => data::txn(&load_map(cluster)?, &args),
        Command::Stats => data::stats(&load_map(cluster)?),
        Command::Server(args) => roles::server(&load_map(cluster)?, args),
        Command::Coordinator(args) => roles::coordinator(&load_map(cluster)?, args),
        Command::Meta(args) => roles::meta(load_map(cluster)?, args),
        Command::Node(command) => node::run(&load_map(cluster)?, command),
        Command::Reshard(args) => reshard::run(&load_map(cluster)?, args),
        Command::Cluster(command) => cluster::run(command),
        Command::Certs(command) => certs::run(command).map(|()| ExitCode::SUCCESS),
        Command::Deploy(command) => deploy::run(command).map(|()| ExitCode::SUCCESS),
        Command::Chaos(args) => chaos::run(&args),
        Command::Gateway(args) => roles::gateway(load_map(cluster)?, args),
        Command::Bench {
            compare: Some(BenchCommand::Compare(args)),
            ..
        } => {
            compare::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::Replication(args)),
            ..
        } => {
            replication::run(&args)?;
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
            compare: Some(BenchCommand::Migrate(args)),
            ..
        } => {
            migrate::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::SmallbankCompare(args)),
            ..
        } => {
            compare::run_smallbank(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::TatpCompare(args)),
            ..
        } => {
            compare::run_tatp(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::Tatp(args)),
            ..
        } => {
            tern_bench::tatp::run(&load_map(cluster)?, &args)?.print();
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            compare: Some(BenchCommand::Smallbank(args)),
            ..
        } => {
            let report = tern_bench::smallbank::run(&load_map(cluster)?, &args)?;
            report.print();
            Ok(match report.ledger_ok {
                Some(false) => ExitCode::from(3),
                _ => ExitCode::SUCCESS,
            })
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
