//! `tern cluster up|down|status`: a local cluster of real processes on
//! loopback, described by `DIR/cluster.toml` (the cluster map) and
//! `DIR/processes.toml` (what was started, for `down` and `status`).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use tern_client::{Client, ClientOptions, ClusterMap, ShardMap};
use tern_wire::Op;

/// How long `cluster up` waits for every process to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `cluster down` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a cluster and return once every process answers.
    Up {
        /// Directory for cluster.toml, processes.toml and logs/.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Replicas per shard (the chain length).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Stop every process of the cluster in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Show each shard's chain and whether each process is up.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// One started process.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProcessEntry {
    name: String,
    pid: u32,
    address: SocketAddrV4,
    shard: u32,
    log: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProcessTable {
    process: Vec<ProcessEntry>,
}

pub fn run(command: ClusterCommand) -> Result<ExitCode> {
    match command {
        ClusterCommand::Up {
            dir,
            shards,
            replicas,
        } => up(&dir, shards, replicas),
        ClusterCommand::Down { dir } => down(&dir),
        ClusterCommand::Status { dir } => status(&dir),
    }
}

/// Every process of a map: (name, address, a shard it serves).
pub fn processes_of(map: &ClusterMap) -> Vec<(String, SocketAddrV4, u32)> {
    let mut processes: Vec<(String, SocketAddrV4, u32)> = Vec::new();
    for shard in &map.shards {
        if !processes
            .iter()
            .any(|(_, address, _)| *address == shard.coordinator)
        {
            processes.push(("coordinator".into(), shard.coordinator, shard.id));
        }
    }
    for shard in &map.shards {
        for (position, address) in shard.replicas.iter().enumerate() {
            processes.push((
                format!("shard{}-replica{position}", shard.id),
                *address,
                shard.id,
            ));
        }
    }
    processes
}

fn table_path(dir: &Path) -> PathBuf {
    dir.join("processes.toml")
}

fn read_table(dir: &Path) -> Result<ProcessTable> {
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

/// Reserves `count` distinct free UDP ports on loopback.
fn free_addresses(count: usize) -> Result<Vec<SocketAddrV4>> {
    // Holding every socket until all are chosen keeps the ports distinct.
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<_>>()
        .context("reserving loopback ports")?;
    sockets
        .iter()
        .map(|socket| match socket.local_addr()? {
            std::net::SocketAddr::V4(address) => Ok(address),
            std::net::SocketAddr::V6(_) => bail!("loopback socket is not IPv4"),
        })
        .collect()
}

fn up(dir: &Path, shard_count: u32, replicas: usize) -> Result<ExitCode> {
    if shard_count == 0 || replicas == 0 {
        bail!("a cluster needs at least one shard and one replica per shard");
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let running = read_table(&dir)?
        .process
        .into_iter()
        .filter(|p| is_running(p.pid))
        .count();
    if running > 0 {
        bail!(
            "{running} processes of a cluster are still running in {}: run `tern cluster down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }

    let mut addresses = free_addresses(1 + shard_count as usize * replicas)?.into_iter();
    let coordinator = addresses.next().expect("reserved");
    let shards = ClusterMap::even_slot_ranges(shard_count)
        .into_iter()
        .enumerate()
        .map(|(id, slots)| ShardMap {
            id: id as u32,
            epoch: 1,
            slots,
            coordinator,
            replicas: addresses.by_ref().take(replicas).collect(),
        })
        .collect();
    let map = ClusterMap::new(shards)?;
    let map_path = dir.join("cluster.toml");
    std::fs::write(&map_path, map.to_toml()).context("writing cluster.toml")?;

    let executable = std::env::current_exe().context("locating the tern executable")?;
    let mut table = ProcessTable::default();
    let mut children: Vec<(Child, ProcessEntry)> = Vec::new();
    for (name, address, shard) in processes_of(&map) {
        let log = dir.join("logs").join(format!("{name}.log"));
        let mut command = Command::new(&executable);
        command.arg("--cluster").arg(&map_path);
        if name == "coordinator" {
            command
                .arg("coordinator")
                .arg("--listen")
                .arg(address.to_string());
        } else {
            let position = map
                .shard(shard)
                .expect("own shard")
                .replicas
                .iter()
                .position(|a| *a == address);
            command
                .args(["server", "--shard", &shard.to_string(), "--replica"])
                .arg(position.expect("own address").to_string());
        }
        let child = spawn_detached(command, &log)?;
        let entry = ProcessEntry {
            name,
            pid: child.id(),
            address,
            shard,
            log,
        };
        table.process.push(entry.clone());
        children.push((child, entry));
    }
    write_table(&dir, &table)?;

    if let Err(error) = wait_ready(&map, &mut children) {
        let _ = down(&dir);
        return Err(error);
    }
    println!(
        "cluster up in {}: {} shards x {} replicas",
        dir.display(),
        shard_count,
        replicas
    );
    println!("  cluster map: {}", map_path.display());
    println!(
        "  try:         tern --cluster {} put hello world",
        map_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn spawn_detached(mut command: Command, log: &Path) -> Result<Child> {
    let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        // Its own process group: a Ctrl-C in the shell that ran `cluster up`
        // does not reach the cluster; `cluster down` stops it.
        .process_group(0);
    command
        .spawn()
        .with_context(|| format!("starting {command:?}"))
}

fn wait_ready(map: &ClusterMap, children: &mut [(Child, ProcessEntry)]) -> Result<()> {
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(100),
        deadline: Duration::from_millis(100),
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
            match client.admin(entry.address, Op::Ping, entry.shard) {
                Ok(reply) if reply.status == tern_wire::Status::Ok => {}
                _ => still.push(index),
            }
        }
        waiting = still;
    }
    Ok(())
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn is_running(pid: u32) -> bool {
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
    for process in &ours {
        // SAFETY: plain system call; the pid was checked to be ours.
        unsafe { libc::kill(process.pid as i32, libc::SIGTERM) };
    }
    let start = Instant::now();
    while ours.iter().any(|p| is_running(p.pid)) && start.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = 0;
    for process in ours.iter().filter(|p| is_running(p.pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(process.pid as i32, libc::SIGKILL) };
        killed += 1;
    }
    let _ = std::fs::remove_file(table_path(&dir));
    println!(
        "cluster down in {}: stopped {} processes{}",
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
    let map = ClusterMap::load(&dir.join("cluster.toml"))?;
    let table = read_table(dir)?;
    let options = ClientOptions {
        attempt_timeout: Duration::from_millis(200),
        deadline: Duration::from_millis(400),
    };
    let mut client = Client::with_options(map.clone(), options)?;
    let mut describe = |address: SocketAddrV4, shard: u32| -> String {
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
            Ok(reply) => format!(
                "{process} up    {} seq {} commit_seq {}",
                String::from_utf8_lossy(&reply.value),
                reply.header.seq.get(),
                reply.header.commit_seq.get()
            ),
            Err(_) => format!("{process} DOWN"),
        }
    };
    let mut all_up = true;
    for shard in &map.shards {
        println!(
            "shard {} slots [{}, {}) epoch {}",
            shard.id, shard.slots[0], shard.slots[1], shard.epoch
        );
        let line = describe(shard.coordinator, shard.id);
        all_up &= !line.ends_with("DOWN");
        println!("  coordinator {:<21} {line}", shard.coordinator);
        for (position, address) in shard.replicas.iter().enumerate() {
            let role = match position {
                0 if shard.replicas.len() == 1 => "head+tail",
                0 => "head",
                p if p + 1 == shard.replicas.len() => "tail",
                _ => "middle",
            };
            let line = describe(*address, shard.id);
            all_up &= !line.ends_with("DOWN");
            println!("  {role:<11} {address:<21} {line}");
        }
    }
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
