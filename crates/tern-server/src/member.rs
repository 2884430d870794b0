//! A replica under meta's control: it heartbeats, follows the map (its place
//! in the chain, the epoch), fences itself without a lease, leaves its data
//! behind when taken out of the chain, and joins again by state transfer.
//!
//! - **Member**: in the chain, serving while the lease holds.
//! - **Spare**: not in the chain (taken out, or new). Fenced, no data. Meta
//!   appends a live spare to a chain shorter than its target.
//! - **Joining**: appended as the new tail; loads the predecessor's state
//!   (over TCP, same address as the replica's UDP), then asks it for every
//!   write after that state and becomes a member.
//!
//! A process that restarts in the chain resumes only from its own durable
//! state (or on a brand-new cluster); otherwise it asks meta to take it out
//! and comes back as a spare, so it can never serve state it does not have.

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

use tern_control::meta::{self, Heartbeats, MetaMap, NodeKind, Refusal, Reply, Request};
use tern_net::BatchSocket;
use tern_proto::replica::{Replica, ReplicaConfig};
use tern_store::log::LogWriter;

use crate::{Durability, Journal, Persistence, ServerError, recover};

/// Marks a data directory whose replica has served as a chain member.
const MEMBER_MARKER: &str = "member";
/// How long the state transfer may take per attempt.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Role {
    Member,
    Spare,
    Joining {
        cancel: Arc<AtomicBool>,
        loaded: Receiver<(u32, Vec<u8>)>,
    },
}

/// This replica's place in `map`, if it has one.
pub fn config_in(map: &MetaMap, shard: u32, addr: SocketAddrV4) -> Option<ReplicaConfig> {
    let entry = map.shards.iter().find(|entry| entry.id == shard)?;
    let position = entry.replicas.iter().position(|replica| *replica == addr)?;
    Some(ReplicaConfig {
        shard,
        epoch: entry.epoch,
        chain: entry.replicas.clone(),
        position,
        coordinator: entry.coordinator,
    })
}

/// A configuration for a replica outside every chain (fenced anyway).
fn outside(shard: u32, addr: SocketAddrV4) -> ReplicaConfig {
    ReplicaConfig {
        shard,
        epoch: 0,
        chain: vec![addr],
        position: 0,
        coordinator: addr,
    }
}

/// A snapshot request from the transfer listener, with where to answer.
type SnapshotRequest = SyncSender<(u32, Vec<u8>)>;

/// Serves one replica of `shard` at `addr` under meta at `nodes`.
pub fn run(
    addr: SocketAddrV4,
    shard: u32,
    nodes: Vec<SocketAddrV4>,
    persistence: Option<Persistence>,
    shutdown: &AtomicBool,
) -> Result<(), ServerError> {
    let heartbeats = Heartbeats::start(
        nodes.clone(),
        addr,
        NodeKind::Replica {
            shard,
            spare: false,
        },
    );
    let map = loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(map) = heartbeats.map() {
            break map;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let durable = persistence
        .clone()
        .filter(|persistence| persistence.durability != Durability::None);
    let data_dir = persistence.as_ref().map(|p| p.data_dir.clone());
    let marked = data_dir
        .as_ref()
        .is_some_and(|dir| dir.join(MEMBER_MARKER).exists());
    let start_config = config_in(&map, shard, addr);
    let (mut replica, journal) = match &durable {
        Some(persistence) => {
            let config = start_config.clone().unwrap_or_else(|| outside(shard, addr));
            let (replica, journal) = recover(config, persistence)?;
            (replica, Some(journal))
        }
        None => (
            Replica::new(start_config.clone().unwrap_or_else(|| outside(shard, addr))),
            None,
        ),
    };
    let has_state = replica.store().applied_seq() > 0;
    let journal = RefCell::new(journal);
    let mut role = match start_config {
        Some(_) if has_state || (!marked && map.version == 1) => {
            mark_member(data_dir.as_deref())?;
            tracing::info!(shard, %addr, version = map.version, applied = replica.store().applied_seq(), "resuming as a chain member");
            Role::Member
        }
        Some(_) => {
            tracing::warn!(shard, %addr, "in the chain without my data: asking meta to take me out");
            if leave(&nodes, shard, addr, &heartbeats, shutdown) {
                become_spare(data_dir.as_deref(), &journal)?;
                Role::Spare
            } else {
                // The only replica left: nobody holds the shard's data.
                tracing::error!(shard, %addr, "the last replica of the shard restarted without durable state: serving it empty, its data is lost");
                Role::Member
            }
        }
        None => {
            become_spare(data_dir.as_deref(), &journal)?;
            Role::Spare
        }
    };
    let mut seen_version = map.version;
    let (requests_tx, requests) = mpsc::channel::<SnapshotRequest>();
    std::thread::Builder::new()
        .name("state-transfer".into())
        .spawn(move || serve_transfers(addr, requests_tx))?;
    let mut socket = BatchSocket::bind(addr)?;
    tracing::info!(shard, %addr, role = ?role_name(&role), "replica serving under meta");
    let mut failure: Option<ServerError> = None;
    tern_net::serve_while(
        &mut socket,
        &mut replica,
        |replica| {
            if shutdown.load(Ordering::Relaxed) {
                return false;
            }
            let step = (|| -> Result<(), ServerError> {
                if heartbeats.version() != seen_version
                    && let Some(map) = heartbeats.map()
                {
                    seen_version = map.version;
                    role = follow(
                        replica,
                        role_take(&mut role),
                        &map,
                        shard,
                        addr,
                        &journal,
                        data_dir.as_deref(),
                    )?;
                }
                if let Role::Joining { loaded, .. } = &role
                    && let Ok((epoch, bytes)) = loaded.try_recv()
                {
                    if load(replica, epoch, &bytes, &journal, durable.as_ref())? {
                        mark_member(data_dir.as_deref())?;
                        role = Role::Member;
                    } else {
                        // Served before the predecessor had this epoch.
                        role = start_join(replica, replica.config().clone());
                    }
                }
                while let Ok(answer) = requests.try_recv() {
                    if matches!(role, Role::Member) && !replica.is_fenced() {
                        let (_, bytes) = replica.snapshot();
                        let _ = answer.try_send((replica.config().epoch, bytes));
                    }
                }
                replica.set_fenced(
                    !matches!(role, Role::Member) || !heartbeats.lease_valid(seen_version),
                );
                // Named in refusals that send a client to the map.
                replica.set_map_version(seen_version);
                heartbeats.set_spare(matches!(role, Role::Spare));
                Ok(())
            })();
            match step {
                Ok(()) => true,
                Err(error) => {
                    failure = Some(error);
                    false
                }
            }
        },
        |replica, outbox| match journal.borrow_mut().as_mut() {
            Some(journal) => journal.persist(replica, outbox),
            None => Ok(()),
        },
    )?;
    heartbeats.stop();
    if let Some(error) = failure {
        return Err(error);
    }
    if let Some(journal) = journal.borrow_mut().as_mut() {
        journal.writer.sync()?;
    }
    tracing::info!(stats = %replica.render_stats(), send_errors = socket.send_errors(), "replica stopped");
    Ok(())
}

fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Spare => "spare",
        Role::Joining { .. } => "joining",
    }
}

fn role_take(role: &mut Role) -> Role {
    std::mem::replace(role, Role::Spare)
}

/// Moves to the role `map` gives this replica.
fn follow(
    replica: &mut Replica,
    role: Role,
    map: &MetaMap,
    shard: u32,
    addr: SocketAddrV4,
    journal: &RefCell<Option<Journal>>,
    data_dir: Option<&Path>,
) -> Result<Role, ServerError> {
    let config = config_in(map, shard, addr);
    let role = match (role, config) {
        (Role::Member, Some(config)) => {
            if *replica.config() != config {
                tracing::info!(epoch = config.epoch, role = config.role_name(), chain = ?config.chain, "reconfigured");
                replica.reconfigure(config);
            }
            Role::Member
        }
        (Role::Joining { cancel, loaded }, Some(config)) => {
            if replica.config().chain == config.chain {
                replica.reconfigure(config);
                Role::Joining { cancel, loaded }
            } else {
                // The chain changed under the transfer: start it again.
                cancel.store(true, Ordering::Relaxed);
                start_join(replica, config)
            }
        }
        (Role::Spare, Some(config)) => start_join(replica, config),
        (role, None) => {
            if let Role::Joining { cancel, .. } = &role {
                cancel.store(true, Ordering::Relaxed);
            }
            if !matches!(role, Role::Spare) {
                tracing::warn!(shard, %addr, version = map.version, "taken out of the chain: dropping my data, waiting as a spare");
                *replica = Replica::new(outside(shard, addr));
                replica.set_fenced(true);
                become_spare(data_dir, journal)?;
            }
            Role::Spare
        }
    };
    Ok(role)
}

fn start_join(replica: &mut Replica, config: ReplicaConfig) -> Role {
    tracing::info!(epoch = config.epoch, position = config.position, from = %config.predecessor(), "joining the chain: fetching state");
    let cancel = Arc::new(AtomicBool::new(false));
    let (done, loaded) = mpsc::channel();
    let from = config.predecessor();
    let epoch = config.epoch;
    let stop = cancel.clone();
    std::thread::spawn(move || fetch_until_loaded(from, epoch, &stop, &done));
    replica.reconfigure(config);
    Role::Joining { cancel, loaded }
}

/// Replaces the replica's state with the predecessor's snapshot, if the
/// predecessor served it at this replica's epoch or later (it then already
/// forwarded every later write here).
fn load(
    replica: &mut Replica,
    epoch: u32,
    bytes: &[u8],
    journal: &RefCell<Option<Journal>>,
    durable: Option<&Persistence>,
) -> Result<bool, ServerError> {
    let config = replica.config().clone();
    if epoch < config.epoch {
        return Ok(false);
    }
    let mut loaded = Replica::restore(config, Some(bytes))?;
    let applied = loaded.store().applied_seq();
    if let Some(persistence) = durable {
        let mut writer = LogWriter::open(&persistence.data_dir, applied + 1)?;
        let (seq, state) = loaded.snapshot();
        writer.snapshot(seq, &state)?;
        *journal.borrow_mut() = Some(Journal::new(writer, persistence, 0));
        loaded = loaded.with_journal();
    }
    loaded.catch_up();
    *replica = loaded;
    tracing::info!(
        applied,
        bytes = bytes.len(),
        "joined: state loaded, catching up"
    );
    Ok(true)
}

fn mark_member(data_dir: Option<&Path>) -> io::Result<()> {
    if let Some(dir) = data_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(MEMBER_MARKER), b"")?;
    }
    Ok(())
}

/// Drops the log and snapshots: a spare's data is outdated by definition.
fn become_spare(data_dir: Option<&Path>, journal: &RefCell<Option<Journal>>) -> io::Result<()> {
    *journal.borrow_mut() = None;
    if let Some(dir) = data_dir
        && dir.exists()
    {
        for entry in std::fs::read_dir(dir)? {
            let path: PathBuf = entry?.path();
            if path.is_file() {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Asks meta to take this replica out of its chain, until the map says so
/// (true), or meta refuses because it is the chain's last replica (false).
fn leave(
    nodes: &[SocketAddrV4],
    shard: u32,
    addr: SocketAddrV4,
    heartbeats: &Heartbeats,
    shutdown: &AtomicBool,
) -> bool {
    let mut hint = None;
    while !shutdown.load(Ordering::Relaxed) {
        if heartbeats
            .map()
            .is_some_and(|map| config_in(&map, shard, addr).is_none())
        {
            return true;
        }
        let request = Request::Leave { shard, addr };
        match meta::call_leader(nodes, &mut hint, &request) {
            Ok(Reply::Refused(Refusal::LastReplica { .. })) => return false,
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "leave request failed"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Accepts state-transfer connections on `addr` (TCP, the replica's UDP
/// address) and hands each to the main loop. On loopback the port may be
/// briefly taken by someone's outgoing connection: binding is retried.
fn serve_transfers(addr: SocketAddrV4, requests: Sender<SnapshotRequest>) {
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(listener) => break listener,
            Err(error) => {
                tracing::warn!(%error, %addr, "cannot listen for state transfers yet");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let requests = requests.clone();
        std::thread::spawn(move || {
            if let Err(error) = answer_transfer(stream, &requests) {
                tracing::debug!(%error, "state transfer not served");
            }
        });
    }
}

fn answer_transfer(stream: TcpStream, requests: &Sender<SnapshotRequest>) -> io::Result<()> {
    stream.set_read_timeout(Some(TRANSFER_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "SNAPSHOT" {
        return Err(io::Error::other(format!("unknown request {line:?}")));
    }
    let (answer, snapshot) = mpsc::sync_channel(1);
    requests.send(answer).map_err(io::Error::other)?;
    let (epoch, bytes) = snapshot
        .recv_timeout(TRANSFER_TIMEOUT)
        .map_err(|_| io::Error::other("no snapshot: not a serving member"))?;
    let mut stream = stream;
    stream.write_all(format!("{epoch} {}\n", bytes.len()).as_bytes())?;
    stream.write_all(&bytes)
}

/// Fetches the predecessor's state; retries until it serves `epoch` (it may
/// not have the new map yet) or the join is cancelled.
fn fetch_until_loaded(
    from: SocketAddrV4,
    epoch: u32,
    cancel: &AtomicBool,
    done: &Sender<(u32, Vec<u8>)>,
) {
    while !cancel.load(Ordering::Relaxed) {
        match fetch(from) {
            Ok((served, bytes)) if served >= epoch => {
                let _ = done.send((served, bytes));
                return;
            }
            Ok((served, _)) => tracing::debug!(served, epoch, "predecessor not at my epoch yet"),
            Err(error) => tracing::debug!(%error, %from, "state transfer failed"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fetch(from: SocketAddrV4) -> io::Result<(u32, Vec<u8>)> {
    let stream = TcpStream::connect_timeout(&from.into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(TRANSFER_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(b"SNAPSHOT\n")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut fields = line.split_whitespace();
    let parse = |field: Option<&str>| -> io::Result<u64> {
        field
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad transfer header {line:?}")))
    };
    let epoch = parse(fields.next())? as u32;
    let length = parse(fields.next())? as usize;
    let mut bytes = vec![0; length];
    reader.read_exact(&mut bytes)?;
    Ok((epoch, bytes))
}
