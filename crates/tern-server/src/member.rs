//! A replica under meta's control: the I/O shell around
//! `tern_proto::membership` (roles Member, Spare, Joining; see there). It
//! heartbeats, hands each new map and each finished state transfer to the
//! membership core, and carries out what the core decides: reconfigure the
//! replica, drop its data, fetch its predecessor's state over TCP (same
//! address as the replica's UDP, `tern_control::transfer`), load it. It
//! fences the replica whenever the core says so (not a member, or no lease
//! for the map acted on). On the same TCP address it serves its own state
//! to a joining successor, and a slot range's copy to a migration.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use tern_control::ShardId;
use tern_control::meta::{self, Heartbeats, MetaMap, NodeKind, Refusal, Reply, Request};
use tern_control::transfer::{self, TransferRequest};
use tern_net::BatchSocket;
use tern_proto::membership::{Action, Membership, Start};
use tern_proto::replica::{Replica, ReplicaConfig};
use tern_store::log::LogWriter;

use crate::listener::TransferCall;
use crate::{Durability, Journal, Persistence, ServerError, recover};

/// Marks a data directory whose replica has served as a chain member.
const MEMBER_MARKER: &str = "member";

/// A state transfer under way: its cancel flag and where its result comes.
#[derive(Debug)]
struct Transfer {
    cancel: Arc<AtomicBool>,
    loaded: Receiver<(u32, Vec<u8>)>,
}

impl Transfer {
    fn cancel(self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// This replica's place in `map`, if it has one.
pub fn config_in(map: &MetaMap, shard: ShardId, addr: SocketAddrV4) -> Option<ReplicaConfig> {
    let entry = map.shards.iter().find(|entry| entry.id == shard)?;
    let position = entry.replicas.iter().position(|replica| *replica == addr)?;
    Some(ReplicaConfig {
        shard: shard.get(),
        epoch: entry.epoch.get(),
        chain: entry.replicas.clone(),
        position,
        coordinator: entry.coordinator,
        early_commit: entry.early_commit,
        fanout: entry.fanout,
    })
}

/// A configuration for a replica outside every chain (fenced anyway).
fn outside(shard: ShardId, addr: SocketAddrV4) -> ReplicaConfig {
    ReplicaConfig {
        shard: shard.get(),
        epoch: 0,
        chain: vec![addr],
        position: 0,
        coordinator: addr,
        early_commit: 0,
        fanout: false,
    }
}

/// Serves one replica of `shard` at `addr` under meta at `nodes`.
pub fn run(
    addr: SocketAddrV4,
    shard: ShardId,
    nodes: Vec<SocketAddrV4>,
    persistence: Option<Persistence>,
    values: tern_proto::large::Values,
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
        .map(|dir| dir.join(MEMBER_MARKER).exists());
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
    replica.set_values(values);
    let has_state = replica.store().applied_seq() > 0;
    let journal = RefCell::new(journal);
    let (mut membership, start) = Membership::start(map.version, start_config, has_state, marked);
    let shell = Shell {
        shard,
        addr,
        data_dir: data_dir.as_deref(),
        durable: durable.as_ref(),
        journal: &journal,
    };
    let mut transfer: Option<Transfer> = None;
    match start {
        Start::Resume => {
            mark_member(data_dir.as_deref())?;
            tracing::info!(%shard, %addr, version = map.version, applied = replica.store().applied_seq(), "resuming as a chain member");
        }
        Start::AskToLeave => {
            tracing::warn!(%shard, %addr, "in the chain without my data: asking meta to take me out");
            let taken_out = leave(&nodes, shard, addr, &heartbeats, shutdown);
            if !taken_out {
                // The only replica left: nobody holds the shard's data.
                tracing::error!(%shard, %addr, "the last replica of the shard restarted without durable state: serving it empty, its data is lost");
            }
            for action in membership.left(taken_out) {
                shell.carry_out(action, &mut replica, &mut transfer, None)?;
            }
        }
        Start::Spare => become_spare(data_dir.as_deref(), &journal)?,
    }
    let mut socket = BatchSocket::bind(addr)?;
    // The main loop looks for transfer requests between batches; the waker
    // gets it there at once instead of after its next datagram or tick (a
    // migration holds a group's writes while the source's tail exports it).
    let waker = Arc::new(socket.waker()?);
    let (requests_tx, requests) = mpsc::channel::<TransferCall>();
    crate::listener::start(
        addr,
        &mut socket,
        replica.values(),
        Some((requests_tx, waker)),
    )?;
    tracing::info!(%shard, %addr, role = ?membership.role(), "replica serving under meta");
    let mut failure: Option<ServerError> = None;
    let mut upkeep = crate::Upkeep::new();
    upkeep.after_batch(&mut replica);
    tern_net::serve_while(
        &mut socket,
        &mut replica,
        |replica| {
            if shutdown.load(Ordering::Relaxed) {
                return false;
            }
            let step = (|| -> Result<(), ServerError> {
                if heartbeats.version() != membership.acted_on()
                    && let Some(map) = heartbeats.map()
                {
                    for action in membership.on_map(map.version, config_in(&map, shard, addr)) {
                        shell.carry_out(action, replica, &mut transfer, None)?;
                    }
                }
                if let Some(under_way) = &transfer
                    && let Ok((epoch, bytes)) = under_way.loaded.try_recv()
                {
                    transfer = None;
                    for action in membership.on_snapshot(epoch) {
                        shell.carry_out(action, replica, &mut transfer, Some(&bytes))?;
                    }
                }
                while let Ok((request, answer)) = requests.try_recv() {
                    if membership.may_serve_state(|version| heartbeats.lease_valid(version)) {
                        let bytes = match request {
                            TransferRequest::Snapshot => replica.snapshot().1,
                            TransferRequest::Slots { range, since } => {
                                replica.export_slots(range, since).encode()
                            }
                            TransferRequest::Load => replica.slot_load().encode(),
                            // Served by the listener itself, never sent here.
                            TransferRequest::Stage { .. }
                            | TransferRequest::Record { .. }
                            | TransferRequest::Answer { .. } => continue,
                        };
                        let _ = answer.try_send((replica.config().epoch, bytes));
                    }
                }
                replica.set_fenced(membership.fenced(|version| heartbeats.lease_valid(version)));
                // After any replacement of the replica above, too.
                upkeep.after_batch(replica);
                heartbeats.set_spare(membership.is_spare());
                // Named in refusals that send a client to the map.
                replica.set_map_version(membership.acted_on());
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

/// What carrying out the membership core's actions needs.
struct Shell<'a> {
    shard: ShardId,
    addr: SocketAddrV4,
    data_dir: Option<&'a Path>,
    durable: Option<&'a Persistence>,
    journal: &'a RefCell<Option<Journal>>,
}

impl Shell<'_> {
    /// Carries out one action of the membership core. `snapshot` holds the
    /// state a transfer brought, for `LoadSnapshot`.
    fn carry_out(
        &self,
        action: Action,
        replica: &mut Replica,
        transfer: &mut Option<Transfer>,
        snapshot: Option<&[u8]>,
    ) -> Result<(), ServerError> {
        match action {
            Action::Reconfigure(config) => {
                tracing::info!(epoch = config.epoch, role = config.role_name(), chain = ?config.chain, "reconfigured");
                replica.reconfigure(config);
            }
            Action::StartJoin(config) => {
                if let Some(previous) = transfer.take() {
                    previous.cancel();
                }
                tracing::info!(epoch = config.epoch, position = config.position, from = %config.predecessor(), "joining the chain: fetching state");
                let cancel = Arc::new(AtomicBool::new(false));
                let (done, loaded) = mpsc::channel();
                let (from, epoch) = (config.predecessor(), config.epoch);
                let stop = cancel.clone();
                std::thread::spawn(move || fetch_until_loaded(from, epoch, &stop, &done));
                replica.reconfigure(config);
                *transfer = Some(Transfer { cancel, loaded });
            }
            Action::CancelJoin => {
                if let Some(previous) = transfer.take() {
                    previous.cancel();
                }
            }
            Action::DropData => {
                tracing::warn!(shard = %self.shard, addr = %self.addr, "taken out of the chain: dropping my data, waiting as a spare");
                let mut emptied = Replica::new(outside(self.shard, self.addr));
                emptied.keep_counters_of(replica);
                *replica = emptied;
                replica.set_fenced(true);
                become_spare(self.data_dir, self.journal)?;
            }
            Action::LoadSnapshot(config) => {
                let bytes = snapshot.expect("a snapshot comes with LoadSnapshot");
                self.load(replica, config, bytes)?;
                mark_member(self.data_dir)?;
            }
            Action::StartEmpty(config) => {
                tracing::info!(epoch = config.epoch, position = config.position, chain = ?config.chain, "in a new shard's chain: serving from empty");
                // The empty state, loaded as a joiner's (a fresh log when durable).
                let (_, empty) = Replica::new(config.clone()).snapshot();
                self.load(replica, config, &empty)?;
                mark_member(self.data_dir)?;
            }
        }
        Ok(())
    }

    /// Replaces the replica's state with the predecessor's snapshot, starts
    /// a fresh log from it when durable, and asks for every later write.
    fn load(
        &self,
        replica: &mut Replica,
        config: ReplicaConfig,
        bytes: &[u8],
    ) -> Result<(), ServerError> {
        let mut loaded = Replica::restore(config, Some(bytes))?;
        let applied = loaded.store().applied_seq();
        if let Some(persistence) = self.durable {
            let mut writer = LogWriter::open(&persistence.data_dir, applied + 1)?;
            let (seq, state) = loaded.snapshot();
            writer.snapshot(seq, &state)?;
            *self.journal.borrow_mut() = Some(Journal::new(writer, persistence, 0));
            loaded = loaded.with_journal();
        }
        loaded.catch_up();
        loaded.keep_counters_of(replica);
        *replica = loaded;
        tracing::info!(
            applied,
            bytes = bytes.len(),
            "joined: state loaded, catching up"
        );
        Ok(())
    }
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
    shard: ShardId,
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

/// Fetches the predecessor's state; retries until it serves `epoch` (it may
/// not have the new map yet) or the join is cancelled.
fn fetch_until_loaded(
    from: SocketAddrV4,
    epoch: u32,
    cancel: &AtomicBool,
    done: &Sender<(u32, Vec<u8>)>,
) {
    while !cancel.load(Ordering::Relaxed) {
        match transfer::fetch(from, TransferRequest::Snapshot) {
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
