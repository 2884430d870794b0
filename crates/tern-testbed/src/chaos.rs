//! `tern chaos`: a workload of concurrent recording clients against a netns
//! cluster while faults are injected (replica and coordinator kills with
//! restarts, packet loss, partitions, and slot ranges moving between shards
//! while the other faults go on), then heal, read every key, and check:
//! (a) the history is linearizable, (b) no key reads older than its newest
//! acknowledged write, (c) how long the cluster took to serve again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_check::{Input, Operation, Output, Recorder, Verdict, check};
use tern_client::{CasOutcome, Client, ClientOptions, ClusterMap, ShardId};
use tern_wire::key_hash;

use crate::DurabilityArg;
use crate::cluster::{self, ClusterCommand, ClusterMode, ProcessEntry, ProcessRole, TopologyKind};
use crate::netns::Topology;
use crate::{bank, chaos_txn};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a replica, then restart it: it resumes from its log, or, if
    /// meta took it out of the chain meanwhile, rejoins by state transfer.
    KillReplica,
    /// SIGKILL the active coordinator, then restart it: a standby takes over
    /// if the kill outlasts the failure timeout, else it recovers (rule 8).
    KillCoordinator,
    /// SIGKILL the meta leader, then restart it (needs --meta 3).
    KillMeta,
    /// Drop a random 10-30% of the datagrams arriving at one process.
    Loss,
    /// Take a replica's link down, then up again.
    Partition,
    /// Drop everything between two processes (nftables in one's namespace).
    PartitionPair,
    /// Move a slot range holding contended keys from its shard to another
    /// (`tern reshard`), in the background: the next faults strike while it
    /// runs. Ranges move back and forth among the shards.
    Reshard,
    /// SIGKILL a client process (`tern txn`) at a random point of a
    /// transaction across shards: its shards settle it after its lease,
    /// both of its keys written or neither.
    KillClient,
}

/// What the recorded clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// GET, PUT and CAS of contended keys: checked linearizable, no
    /// acknowledged write lost.
    Registers,
    /// Transfers and audits of accounts across shards (transactions):
    /// checked strictly serializable, every audit and the end with the
    /// starting total.
    Bank,
}

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Directory for the cluster (default: a temporary one, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long the workload runs while faults are injected.
    #[arg(long, default_value = "20s", value_parser = tern_bench::parse_duration)]
    pub duration: Duration,
    /// Seed of every random choice (printed; rerun with it to replay the choices).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill-replica,kill-coordinator,kill-meta,loss,partition,partition-pair,reshard,kill-client"
    )]
    pub faults: Vec<FaultKind>,
    #[arg(long, value_enum, default_value_t = Workload::Registers)]
    pub workload: Workload,
    /// Inject nothing: only the recorded workload and the checks.
    #[arg(long)]
    pub no_faults: bool,
    /// Faults need the netns topology; without faults loopback works too.
    #[arg(long, value_enum, default_value_t = TopologyKind::Netns)]
    pub topology: TopologyKind,
    #[arg(long, value_enum, default_value_t = ClusterMode::User)]
    pub mode: ClusterMode,
    /// When a write is answered (`tern cluster up --commit`): the chaos
    /// then checks that rule's guarantees (`early:1` survives no failure
    /// of a head: leave kill-replica out).
    #[arg(long, value_parser = tern_client::parse_commit, default_value = "chain")]
    pub commit: u32,
    /// How writes reach the replicas (`tern cluster up --replication`).
    #[arg(long, action = clap::ArgAction::Set, value_parser = tern_client::parse_replication, default_value = "chain")]
    pub replication: bool,
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// Meta nodes (3 lets the meta-leader fault keep a majority).
    #[arg(long, default_value_t = 3)]
    pub meta: usize,
    /// Silence (ms) after which meta declares a process failed.
    #[arg(long, default_value_t = 1000)]
    pub failure_timeout_ms: u64,
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[arg(long, default_value_t = 3)]
    pub keys_per_shard: usize,
}

/// One injected fault.
#[derive(Debug)]
struct Fault {
    kind: FaultKind,
    target: String,
    started: Instant,
    healed: Instant,
}

/// A few keys per shard, so that clients collide on every key.
fn contended_keys(map: &ClusterMap, per_shard: usize) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    for shard in &map.shards {
        keys.extend(
            (0..)
                .map(|index| format!("chaos-{index}").into_bytes())
                .filter(|key| map.shard_of_key_hash(key_hash(key)).id == shard.id)
                .take(per_shard),
        );
    }
    keys
}

fn run_command(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// What one client saw, to show that the workload really contended.
#[derive(Debug, Default)]
struct Tally {
    successes: Vec<Instant>,
    cas_swapped: u64,
    cas_mismatched: u64,
    values_read: std::collections::HashSet<Vec<u8>>,
}

/// A client of the recorded workload: it gives up on a request after 2 s
/// (its outcome is then unknown), so that faults show in the history.
pub(crate) fn recording_client(map: &ClusterMap) -> Result<Client> {
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(200),
        deadline: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    Ok(Client::with_options(map.clone(), options)?)
}

/// Recording clients: GET 50%, PUT 30%, CAS 20%; a failed request is an
/// operation with an unknown outcome.
fn start_clients(
    map: &ClusterMap,
    keys: &Arc<Vec<Vec<u8>>>,
    recorder: &Recorder,
    running: &Arc<AtomicBool>,
    clients: usize,
    seed: u64,
) -> Result<Vec<std::thread::JoinHandle<Tally>>> {
    let start_line = Arc::new(Barrier::new(clients));
    (0..clients)
        .map(|worker| {
            let mut client = recording_client(map)?;
            let (keys, recorder, running, start_line) = (
                keys.clone(),
                recorder.clone(),
                running.clone(),
                start_line.clone(),
            );
            Ok(std::thread::spawn(move || {
                let mut random = SmallRng::seed_from_u64(seed.wrapping_mul(7919) + worker as u64);
                let mut last_version = vec![0u64; keys.len()];
                let mut tally = Tally::default();
                start_line.wait();
                let mut sequence = 0u64;
                while running.load(Ordering::Relaxed) {
                    let index = random.random_range(0..keys.len());
                    let key = &keys[index];
                    sequence += 1;
                    let value = format!("c{worker}-{sequence}").into_bytes();
                    let choice = random.random_range(0..100);
                    let call = Instant::now();
                    let (input, result) = if choice < 50 {
                        let result = client.get(key).map(|found| {
                            if let Some(found) = &found {
                                last_version[index] = found.version;
                                tally.values_read.insert(found.value.clone());
                            }
                            Output::Get(found.map(|f| (f.version, f.value)))
                        });
                        (Input::Get, result)
                    } else if choice < 80 {
                        let result = client.put(key, &value).map(|version| {
                            last_version[index] = version;
                            Output::Put { version }
                        });
                        (Input::Put { value }, result)
                    } else {
                        let expected = last_version[index];
                        let result =
                            client
                                .cas(key, expected, &value)
                                .map(|outcome| match outcome {
                                    CasOutcome::Swapped { version } => {
                                        tally.cas_swapped += 1;
                                        last_version[index] = version;
                                        Output::CasSwapped { version }
                                    }
                                    CasOutcome::Mismatch { current } => {
                                        tally.cas_mismatched += 1;
                                        last_version[index] = current;
                                        Output::CasMismatch { current }
                                    }
                                });
                        (Input::Cas { expected, value }, result)
                    };
                    match result {
                        Ok(output) => {
                            let done = Instant::now();
                            recorder.record(worker as u64, key, input, call, output, Some(done));
                            tally.successes.push(done);
                        }
                        // Timed out, or refused while the cluster was broken:
                        // it may or may not have taken effect.
                        Err(_) => {
                            recorder.record(worker as u64, key, input, call, Output::Unknown, None)
                        }
                    }
                }
                tally
            }))
        })
        .collect()
}

/// The entry of processes.toml that `wanted` picks.
fn process(dir: &Path, wanted: impl Fn(&ProcessEntry) -> bool) -> Result<ProcessEntry> {
    cluster::read_table(dir)?
        .process
        .into_iter()
        .find(|entry| wanted(entry))
        .context("no such process in processes.toml")
}

fn pid_of(dir: &Path, name: &str) -> Result<u32> {
    Ok(process(dir, |entry| entry.name == name)
        .with_context(|| format!("no process {name}"))?
        .pid)
}

/// The name (in processes.toml) of the process listening at `address`.
fn name_at(dir: &Path, address: std::net::SocketAddrV4) -> Result<String> {
    Ok(process(dir, |entry| entry.address == address)
        .with_context(|| format!("no process at {address}"))?
        .name)
}

/// Meta's map, asked again for up to 10 s: right after a fault meta may be
/// electing, or its leader settling (a chaos run failed on one such answer,
/// "not the meta leader", just after a partition between two meta nodes
/// healed).
fn current_map(map: &ClusterMap) -> Result<ClusterMap> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tern_client::meta::fetch_map(&map.meta, &mut None) {
            Ok(current) => return Ok(current),
            Err(error) if Instant::now() >= deadline => return Err(error.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The meta node that leads now.
fn meta_leader(map: &ClusterMap) -> Result<std::net::SocketAddrV4> {
    use tern_client::meta::{self, Reply, Request};
    for _ in 0..100 {
        for node in &map.meta {
            if let Ok(Reply::Status(status)) =
                meta::call(*node, &Request::Status, meta::META_CALL_TIMEOUT)
                && status.leader == Some(status.id)
            {
                return Ok(*node);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no meta leader")
}

fn kill(dir: &Path, name: &str) -> Result<()> {
    // SAFETY: a plain system call on a pid this cluster started.
    unsafe { libc::kill(pid_of(dir, name)? as i32, libc::SIGKILL) };
    Ok(())
}

fn nft_in(namespace: &str, args: &[&str]) -> Result<()> {
    let mut command = vec!["netns", "exec", namespace, "nft"];
    command.extend_from_slice(args);
    run_command("ip", &command)
}

fn restart(dir: &Path, name: &str) -> Result<()> {
    cluster::run(ClusterCommand::Restart {
        dir: dir.to_path_buf(),
        names: vec![name.to_string()],
    })?;
    Ok(())
}

const LOSS_TABLE: &str = "tern_chaos";
const PAIR_TABLE: &str = "tern_chaos_pair";

/// Injects one fault, holds it, heals it.
fn inject(
    kind: FaultKind,
    dir: &Path,
    map: &ClusterMap,
    topology: &Topology,
    random: &mut SmallRng,
) -> Result<Fault> {
    let replicas: Vec<(String, ShardId, usize)> = map
        .shards
        .iter()
        .flat_map(|shard| (0..shard.replicas.len()).map(move |position| (shard.id, position)))
        .map(|(shard, position)| {
            (
                ProcessRole::Replica { shard, position }.name(),
                shard,
                position,
            )
        })
        .collect();
    // Some faults heal before the failure timeout (1 s by default), others
    // outlast it and make meta reconfigure.
    let hold = Duration::from_millis(random.random_range(200..2500));
    let started = Instant::now();
    let (replica, shard, position) = replicas[random.random_range(0..replicas.len())].clone();
    let replica_role = ProcessRole::Replica { shard, position };
    let target = match kind {
        FaultKind::KillReplica => {
            kill(dir, &replica)?;
            std::thread::sleep(hold);
            restart(dir, &replica)?;
            replica
        }
        FaultKind::KillCoordinator => {
            let active = match map.meta.is_empty() {
                true => ProcessRole::Coordinator.name(),
                false => {
                    let current = current_map(map)?;
                    name_at(dir, current.shards[0].coordinator)?
                }
            };
            kill(dir, &active)?;
            std::thread::sleep(hold);
            restart(dir, &active)?;
            active
        }
        FaultKind::KillMeta => {
            let leader = name_at(dir, meta_leader(map)?)?;
            kill(dir, &leader)?;
            std::thread::sleep(hold);
            restart(dir, &leader)?;
            format!("{leader} (the leader)")
        }
        FaultKind::PartitionPair => {
            let nodes = &topology.nodes;
            let first = &nodes[random.random_range(0..nodes.len())];
            let others: Vec<_> = nodes.iter().filter(|n| n.name != first.name).collect();
            let second = others[random.random_range(0..others.len())];
            let ns = first.namespace.as_str();
            let peer = second.address.to_string();
            nft_in(ns, &["add", "table", "inet", PAIR_TABLE])?;
            for (hook, field) in [("input", "saddr"), ("output", "daddr")] {
                let chain = format!("{{ type filter hook {hook} priority 0 ; }}");
                nft_in(ns, &["add", "chain", "inet", PAIR_TABLE, hook, &chain])?;
                nft_in(
                    ns,
                    &[
                        "add", "rule", "inet", PAIR_TABLE, hook, "ip", field, &peer, "drop",
                    ],
                )?;
            }
            std::thread::sleep(hold);
            nft_in(ns, &["delete", "table", "inet", PAIR_TABLE])?;
            format!("{} <-> {}", first.name, second.name)
        }
        FaultKind::Loss => {
            let role = if random.random_bool(0.25) {
                ProcessRole::Coordinator
            } else {
                replica_role
            };
            let name = role.name();
            let node = topology.node(&role.node_name()).clone();
            let port = role.port().to_string();
            let port = port.as_str();
            let percent = random.random_range(10..=30).to_string();
            let ns = node.namespace.as_str();
            run_command(
                "ip",
                &[
                    "netns", "exec", ns, "nft", "add", "table", "inet", LOSS_TABLE,
                ],
            )?;
            run_command(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    LOSS_TABLE,
                    "input",
                    "{ type filter hook input priority 0 ; }",
                ],
            )?;
            run_command(
                "ip",
                &[
                    "netns", "exec", ns, "nft", "add", "rule", "inet", LOSS_TABLE, "input", "udp",
                    "dport", port, "numgen", "random", "mod", "100", "<", &percent, "drop",
                ],
            )?;
            std::thread::sleep(hold);
            run_command(
                "ip",
                &[
                    "netns", "exec", ns, "nft", "delete", "table", "inet", LOSS_TABLE,
                ],
            )?;
            format!("{name} ({percent}% loss)")
        }
        FaultKind::Reshard => bail!("reshards run in the background (`Reshards`)"),
        FaultKind::KillClient => bail!("clients are killed by `chaos_txn::ClientKiller`"),
        FaultKind::Partition => {
            let veth = topology.node(&replica_role.node_name()).veth.clone();
            run_command("ip", &["link", "set", &veth, "down"])?;
            std::thread::sleep(hold);
            run_command("ip", &["link", "set", &veth, "up"])?;
            replica
        }
    };
    Ok(Fault {
        kind,
        target: format!("{target} for {hold:?}"),
        started,
        healed: Instant::now(),
    })
}

/// A migration under way in the background (`FaultKind::Reshard`).
struct Moving {
    what: String,
    started: Instant,
    thread: std::thread::JoinHandle<Result<tern_client::reshard::ReshardReport, String>>,
}

/// The reshard faults of a run: one migration at a time, in the background.
struct Reshards {
    meta: Vec<std::net::SocketAddrV4>,
    moving: Option<Moving>,
    done: usize,
    failed: Vec<String>,
}

impl Reshards {
    fn new(map: &ClusterMap) -> Reshards {
        Reshards {
            meta: map.meta.clone(),
            moving: None,
            done: 0,
            failed: Vec::new(),
        }
    }

    /// Starts moving a range with a contended key from its shard (as meta
    /// has it now) to another; none when one is still under way.
    fn start(&mut self, map: &ClusterMap, keys: &[Vec<u8>], random: &mut SmallRng) -> Result<()> {
        if self.moving.is_some() || map.shards.len() < 2 {
            return Ok(());
        }
        let current = current_map(map)?;
        let key = &keys[random.random_range(0..keys.len())];
        let slot = tern_wire::slot_of(key_hash(key));
        let Some((source, owned)) = current.shards.iter().find_map(|shard| {
            shard
                .slots
                .iter()
                .find(|range| (range[0]..range[1]).contains(&slot))
                .map(|range| (shard, *range))
        }) else {
            // The slot is moving already (a migration left unfinished).
            return Ok(());
        };
        let others: Vec<_> = current
            .shards
            .iter()
            .filter(|shard| shard.id != source.id)
            .collect();
        let destination = others[random.random_range(0..others.len())].id;
        let length = random.random_range(1..=48);
        let first = slot
            .saturating_sub(random.random_range(0..length))
            .max(owned[0]);
        let slots = [first, (first + length).min(owned[1])];
        let (from, meta) = (source.id, map.meta.clone());
        let what = format!(
            "slots {}-{} from shard {from} to shard {destination}",
            slots[0],
            slots[1] - 1
        );
        let options = tern_client::reshard::ReshardOptions {
            group_slots: random.random_range(1..=16),
            // As fast as it goes: more hand-offs inside the faults.
            max_keys_per_s: None,
            ..Default::default()
        };
        let thread = std::thread::spawn(move || {
            tern_client::reshard::reshard(&meta, from, destination, slots, options, &mut |_| {})
                .map_err(|error| error.to_string())
        });
        self.moving = Some(Moving {
            what,
            started: Instant::now(),
            thread,
        });
        Ok(())
    }

    /// The fault of the migration under way once it has finished.
    fn finish_if_done(&mut self, run_start: Instant) -> Option<Fault> {
        if self.moving.as_ref()?.thread.is_finished() {
            self.finish(run_start)
        } else {
            None
        }
    }

    /// Waits for the migration under way; its fault.
    fn finish(&mut self, run_start: Instant) -> Option<Fault> {
        let moving = self.moving.take()?;
        let result = moving
            .thread
            .join()
            .unwrap_or_else(|_| Err("the reshard panicked".into()));
        let healed = Instant::now();
        let outcome = match &result {
            Ok(report) => format!(
                "{} groups, {} keys, longest write hold {:?}",
                report.groups,
                report.keys,
                report.longest_hold()
            ),
            Err(error) => format!("FAILED: {error}"),
        };
        println!(
            "{:>6.1}s Reshard {} ({outcome}), took {:?}",
            moving.started.duration_since(run_start).as_secs_f64(),
            moving.what,
            healed - moving.started
        );
        match result {
            Ok(_) => self.done += 1,
            Err(error) => {
                // Cancelled, so that later reshards of its slots can begin;
                // its groups handed off stay where they went.
                if let Ok(unfinished) = tern_client::reshard::status(&self.meta) {
                    for migration in unfinished {
                        let _ = tern_client::reshard::cancel(&self.meta, migration.id);
                    }
                }
                self.failed.push(format!("{}: {error}", moving.what));
            }
        }
        Some(Fault {
            kind: FaultKind::Reshard,
            target: moving.what,
            started: moving.started,
            healed,
        })
    }
}

/// Reads every key until the cluster answers; records the reads.
fn final_reads(
    map: &ClusterMap,
    keys: &[Vec<u8>],
    recorder: &Recorder,
) -> Result<Vec<(Vec<u8>, Option<u64>)>> {
    let mut client = Client::new(map.clone())?;
    let mut versions = Vec::new();
    for key in keys {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let call = Instant::now();
            match client.get(key) {
                Ok(found) => {
                    versions.push((key.clone(), found.as_ref().map(|f| f.version)));
                    let output = Output::Get(found.map(|f| (f.version, f.value)));
                    recorder.record(
                        u64::MAX,
                        key,
                        Input::Get,
                        call,
                        output,
                        Some(Instant::now()),
                    );
                    break;
                }
                Err(error) if Instant::now() > deadline => {
                    bail!("the cluster does not serve {key:?} after healing: {error}")
                }
                Err(_) => {}
            }
        }
    }
    Ok(versions)
}

/// Keys whose final read is older than a write acknowledged for them.
fn lost_writes(history: &[Operation], finals: &[(Vec<u8>, Option<u64>)]) -> Vec<String> {
    let mut newest: HashMap<&[u8], u64> = HashMap::new();
    for operation in history {
        if let Output::Put { version } | Output::CasSwapped { version } = operation.output {
            let entry = newest.entry(&operation.key).or_default();
            *entry = (*entry).max(version);
        }
    }
    finals
        .iter()
        .filter_map(|(key, version)| {
            let acknowledged = *newest.get(&key[..])?;
            (version.unwrap_or(0) < acknowledged).then(|| {
                format!(
                    "{}: reads version {version:?}, but {acknowledged} was acknowledged",
                    String::from_utf8_lossy(key)
                )
            })
        })
        .collect()
}

fn median_and_max(mut values: Vec<Duration>) -> (Duration, Duration) {
    if values.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    values.sort();
    (values[values.len() / 2], values[values.len() - 1])
}

pub fn run(args: &ChaosArgs) -> Result<ExitCode> {
    if (args.faults.is_empty() && !args.no_faults) || args.clients == 0 || args.keys_per_shard == 0
    {
        bail!("need at least one fault kind (or --no-faults), one client and one key per shard");
    }
    if !args.no_faults && args.topology != TopologyKind::Netns {
        bail!("faults need --topology netns (loss and partitions act on namespaces)");
    }
    let seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u16>()));
    println!("chaos seed {seed} (replay the choices with --seed {seed})");
    let scratch = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("cluster"));
    cluster::run(ClusterCommand::Up {
        dir: dir.clone(),
        shards: args.shards,
        replicas: 3,
        commit: args.commit,
        replication: args.replication,
        mode: args.mode,
        topology: Some(args.topology),
        durability: DurabilityArg::Always,
        snapshot_every: 200_000,
        gateway: false,
        gateway_listen: "127.0.0.1:6379".parse().expect("an address"),
        requirepass: None,
        meta: args.meta,
        standby: 1,
        failure_timeout_ms: args.failure_timeout_ms,
        allow_clients: None,
        fresh: false,
        no_tls: false,
    })?;
    let dir = dir.canonicalize()?;
    let result = chaos(&dir, args, seed);
    cluster::run(ClusterCommand::Down { dir: dir.clone() })?;
    if !matches!(result, Ok(ExitCode::SUCCESS)) && args.dir.is_none() {
        // Keep what the processes logged, to find out why.
        let kept = scratch.keep();
        println!(
            "process logs kept in {}",
            kept.join("cluster/logs").display()
        );
    }
    result
}

fn chaos(dir: &Path, args: &ChaosArgs, seed: u64) -> Result<ExitCode> {
    let map = ClusterMap::load(&dir.join("cluster.toml"))?;
    let topology = Topology::load(&dir.join("topology.toml"))?;
    let recorder = Recorder::new();
    let running = Arc::new(AtomicBool::new(true));
    let history = bank::History::default();
    // The keys the clients contend on (and reshards move).
    let (keys, clients, bank_clients) = match args.workload {
        Workload::Registers => {
            let keys = Arc::new(contended_keys(&map, args.keys_per_shard));
            let clients = start_clients(&map, &keys, &recorder, &running, args.clients, seed)?;
            (keys, clients, Vec::new())
        }
        Workload::Bank => {
            let accounts = Arc::new(bank::accounts_across_shards(&map, chaos_txn::ACCOUNTS));
            bank::open(&mut Client::new(map.clone())?, &history, &accounts);
            let clients =
                chaos_txn::start_bank(&map, &accounts, &history, &running, args.clients, seed)?;
            (accounts, Vec::new(), clients)
        }
    };
    let mut killer = match args.faults.contains(&FaultKind::KillClient) && !args.no_faults {
        true => Some(chaos_txn::ClientKiller::new(dir, &map)?),
        false => None,
    };
    let mut random = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut faults = Vec::new();
    let mut injection_error = None;
    let mut reshards = Reshards::new(&map);
    let mut turn = 0;
    while started.elapsed() < args.duration {
        std::thread::sleep(Duration::from_millis(random.random_range(200..600)));
        let Some(topology) = topology.as_ref().filter(|_| !args.no_faults) else {
            continue;
        };
        let kind = args.faults[turn % args.faults.len()];
        turn += 1;
        if let (FaultKind::KillClient, Some(killer)) = (kind, killer.as_mut()) {
            let at = Instant::now();
            match killer.strike(&mut random) {
                Ok(target) => {
                    println!(
                        "{:>6.1}s {kind:?} {target}",
                        started.elapsed().as_secs_f64()
                    );
                    faults.push(Fault {
                        kind,
                        target,
                        started: at,
                        healed: Instant::now(),
                    });
                }
                Err(error) => {
                    injection_error = Some(error.context("killing a client"));
                    break;
                }
            }
            continue;
        }
        if kind == FaultKind::Reshard {
            faults.extend(reshards.finish_if_done(started));
            if let Err(error) = reshards.start(&map, &keys, &mut random) {
                injection_error = Some(error.context("starting a reshard"));
                break;
            }
            continue;
        }
        match inject(kind, dir, &map, topology, &mut random) {
            Ok(fault) => {
                println!(
                    "{:>6.1}s {:?} {}",
                    started.elapsed().as_secs_f64(),
                    fault.kind,
                    fault.target
                );
                faults.push(fault);
            }
            Err(error) => {
                injection_error = Some(error.context(format!("{kind:?}")));
                break;
            }
        }
    }
    faults.extend(reshards.finish(started));
    std::thread::sleep(Duration::from_millis(500));
    running.store(false, Ordering::Relaxed);
    let mut successes: Vec<Instant> = Vec::new();
    let (mut swapped, mut mismatched, mut distinct) = (0, 0, 0);
    for client in clients {
        let tally = client
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        successes.extend(tally.successes);
        swapped += tally.cas_swapped;
        mismatched += tally.cas_mismatched;
        distinct += tally.values_read.len();
    }
    let mut banked = chaos_txn::BankTally::default();
    for client in bank_clients {
        let tally = client
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        successes.extend(tally.successes);
        banked.transfers += tally.transfers;
        banked.in_doubt += tally.in_doubt;
        banked.conflicted += tally.conflicted;
        banked.audits += tally.audits;
        banked.wrong_totals.extend(tally.wrong_totals);
    }
    if let Some(error) = injection_error {
        return Err(error.context("injecting a fault"));
    }
    successes.sort();
    // Every transaction settled (the killed clients' by their lease) within
    // a lease and 2 s of the last fault's end.
    let last_healed = faults
        .iter()
        .map(|fault| fault.healed)
        .max()
        .unwrap_or_else(Instant::now);
    let settled = chaos_txn::settled_within(&map, last_healed);
    let torn = match &killer {
        Some(_) => chaos_txn::torn_pairs(&map)?,
        None => Vec::new(),
    };
    let finals = match args.workload {
        Workload::Registers => final_reads(&map, &keys, &recorder)?,
        Workload::Bank => Vec::new(),
    };
    let operations = recorder.operations();
    let unknown = operations
        .iter()
        .filter(|operation| operation.ret.is_none())
        .count();

    // Unavailability per fault: the longest time without any successful
    // operation from the fault's start until the first success after it
    // healed.
    let recoveries: Vec<(FaultKind, Duration)> = faults
        .iter()
        .filter_map(|fault| {
            let after = successes.iter().position(|at| *at >= fault.healed)?;
            let from = successes.partition_point(|at| *at < fault.started);
            let mut last = fault.started;
            let mut longest = Duration::ZERO;
            for at in &successes[from..=after] {
                longest = longest.max(at.duration_since(last));
                last = *at;
            }
            Some((fault.kind, longest))
        })
        .collect();
    let (median, max) = median_and_max(recoveries.iter().map(|(_, took)| *took).collect());
    let recoveries_by_kind: Vec<String> = args
        .faults
        .iter()
        .filter_map(|kind| {
            let took: Vec<Duration> = recoveries
                .iter()
                .filter(|(of, _)| of == kind)
                .map(|(_, took)| *took)
                .collect();
            let count = took.len();
            let (median, max) = median_and_max(took);
            (count > 0).then(|| format!("{kind:?} {median:?}/{max:?}"))
        })
        .collect();
    let mut by_kind: HashMap<FaultKind, usize> = HashMap::new();
    for fault in &faults {
        *by_kind.entry(fault.kind).or_default() += 1;
    }
    let lost = lost_writes(&operations, &finals);
    let checked = Instant::now();
    let verdict = check(&operations);
    println!(
        "faults: {} ({}); operations: {} ({} with unknown outcome); longest time without a successful operation per fault: median {median:?}, max {max:?}",
        faults.len(),
        args.faults
            .iter()
            .map(|kind| format!("{kind:?} {}", by_kind.get(kind).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", "),
        operations.len() + history.lock().unwrap().len(),
        unknown as u64 + banked.in_doubt
    );
    println!(
        "longest time without a successful operation by fault kind (median/max): {}",
        recoveries_by_kind.join(", ")
    );
    if args.workload == Workload::Registers {
        println!(
            "contention: {swapped} CAS swapped, {mismatched} CAS mismatched, {distinct} distinct values read"
        );
    }
    println!(
        "reshards: {} done, {} failed",
        reshards.done,
        reshards.failed.len()
    );
    for failure in &reshards.failed {
        println!("  {failure}");
    }
    let mut bank_ok = true;
    match args.workload {
        Workload::Registers => {
            println!("acknowledged writes lost: {}", lost.len());
            for line in &lost {
                println!("  {line}");
            }
            match &verdict {
                Verdict::Linearizable => {
                    println!("linearizable: yes (checked in {:?})", checked.elapsed())
                }
                Verdict::Violation(error) => println!("linearizable: NO\n{error}"),
            }
        }
        Workload::Bank => {
            let expected = bank::START * keys.len() as i64;
            let total = chaos_txn::final_total(&map, &keys)?;
            println!(
                "bank: {} transfers committed, {} in doubt, {} gave up conflicting; {} audits; \
                 audits with another total: {}; total at the end {total} (of {expected})",
                banked.transfers,
                banked.in_doubt,
                banked.conflicted,
                banked.audits,
                banked.wrong_totals.len()
            );
            let history = history.lock().unwrap();
            match bank::check(&history, false) {
                Ok(checked_bank) => println!(
                    "strictly serializable: yes ({} committed, {} in doubt found committed by \
                     reads, {} in doubt left out; checked in {:?})",
                    checked_bank.committed,
                    checked_bank.settled_committed,
                    checked_bank.left_out,
                    checked.elapsed()
                ),
                Err(error) => {
                    println!("strictly serializable: NO\n{error}");
                    let dump = dir.join("logs").join("bank-history.txt");
                    let mut text = String::new();
                    for (index, recorded) in history.iter().enumerate() {
                        let show = |list: &[(Vec<u8>, Vec<u8>, u64)]| {
                            list.iter()
                                .map(|(key, value, version)| {
                                    format!(
                                        "{}={}@{version}",
                                        String::from_utf8_lossy(key),
                                        String::from_utf8_lossy(value)
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        };
                        text.push_str(&format!(
                            "T{index} doubt={} call={:?} reads[{}] writes[{}]\n",
                            recorded.in_doubt,
                            recorded.call.duration_since(started),
                            show(&recorded.reads),
                            show(&recorded.writes)
                        ));
                    }
                    if std::fs::write(&dump, text).is_ok() {
                        println!("history written to {}", dump.display());
                    }
                    bank_ok = false;
                }
            }
            bank_ok &= banked.wrong_totals.is_empty() && total == expected;
        }
    }
    if let Some(killer) = &killer {
        let (committed, aborted) = chaos_txn::settled_by_lease(&map).unwrap_or_default();
        println!(
            "pairs torn: {} ({} clients killed mid-run, {} finished first; settled by their \
             lease: {committed} committed, {aborted} aborted)",
            torn.len(),
            killer.killed,
            killer.finished
        );
        for line in &torn {
            println!("  {line}");
        }
    }
    match &settled {
        Ok(took) => println!("transactions settled: {took:?} after the last fault"),
        Err(error) => println!("transactions settled: NO ({error})"),
    }
    if !args.no_faults && faults.len() < args.faults.len() {
        bail!(
            "only {} faults fit in {:?}; run longer",
            faults.len(),
            args.duration
        );
    }
    let registers_ok = verdict == Verdict::Linearizable && lost.is_empty();
    Ok(
        if registers_ok && bank_ok && torn.is_empty() && settled.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(4)
        },
    )
}
