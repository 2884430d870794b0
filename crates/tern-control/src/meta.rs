//! Talking to the control plane (`tern meta`): the requests every Tern process
//! and operator sends it, and a blocking client for them.
//!
//! The protocol is one JSON object per line over TCP, request then reply. It
//! carries nothing on the data path: heartbeats, map fetches and operator
//! changes, a few per second per process.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::tls;
use crate::{ClusterMap, Epoch, MapError, Migration, Seq, ShardId, ShardMap, Slot, SlotRange};

/// What a process that heartbeats is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A replica process for one shard. `spare`: outside the chain with its
    /// data dropped, ready to join (meta appends only such replicas, so one
    /// that still believes itself a member can never be re-added with its
    /// outdated state).
    Replica { shard: ShardId, spare: bool },
    /// A coordinator process (active for some shards, or a standby).
    Coordinator,
}

/// A change an operator (or meta's own failure handling) makes to the map.
/// Every change of a chain or coordinator bumps the epoch of each shard it
/// touches (DESIGN rule 7); migration records and `Resequence` leave the
/// epochs as they are (no chain changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Appends a replica to the shard's chain as its new tail; it joins by
    /// state transfer from its predecessor.
    AddReplica { shard: ShardId, addr: SocketAddrV4 },
    /// Takes a replica out of the shard's chain.
    RemoveReplica { shard: ShardId, addr: SocketAddrV4 },
    /// Moves every shard coordinated at `from` to `to`.
    MoveCoordinator {
        from: SocketAddrV4,
        to: SocketAddrV4,
    },
    /// Starts moving `slots` (all owned by `from`) to `to`, in groups of
    /// `group_slots`. Chains and epochs stay as they are. Repeating the
    /// same request while it runs changes nothing.
    BeginMigration {
        from: ShardId,
        to: ShardId,
        slots: SlotRange,
        group_slots: u32,
    },
    /// Group `group` of `migration` is served by the destination from now
    /// on; its writes there get versions above `floor`. Refused when the
    /// source shard's epoch is no longer `source_epoch` or its incarnation
    /// no longer `source_incarnation` (its coordinator changed or restarted
    /// since it held the group still, so the hold may be gone).
    /// Idempotent.
    HandOff {
        migration: u64,
        group: u32,
        floor: Seq,
        source_epoch: Epoch,
        /// The source's incarnation as the hold saw it.
        #[serde(default)]
        source_incarnation: u64,
    },
    /// The coordinator at `coordinator` starts sequencing `shards` afresh
    /// (each with the incarnation it read in the map): each shard it still
    /// coordinates whose incarnation is still that one gets the next. The
    /// epoch stays (replicas and clients see no change); a hand-off fenced
    /// by the old incarnation is refused from then on. Idempotent.
    Resequence {
        coordinator: SocketAddrV4,
        shards: Vec<(ShardId, u64)>,
    },
    /// Every group is handed off: the slots become the destination's.
    /// Idempotent.
    CompleteMigration { migration: u64 },
    /// Stops a migration: the groups handed off stay at the destination,
    /// the others at the source. Idempotent.
    CancelMigration { migration: u64 },
    /// A new shard `shard`, owning no slots yet, with a chain of running
    /// spare replicas of it (`tern server --shard SHARD --listen ADDR`),
    /// coordinated at `coordinator`; its slots come by migration
    /// (`tern reshard rebalance`). Repeating it changes nothing.
    AddShard {
        shard: ShardId,
        coordinator: SocketAddrV4,
        replicas: Vec<SocketAddrV4>,
    },
    /// Retires shard `shard`, which must own no slots (move them away
    /// first) and be in no migration. Repeating it changes nothing.
    RemoveShard { shard: ShardId },
}

/// A request to a meta node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// "I am alive" (sent every heartbeat interval); answered with the map.
    Heartbeat {
        addr: SocketAddrV4,
        kind: NodeKind,
    },
    /// The current map.
    GetMap,
    /// A replica that cannot resume its place in the chain (it restarted
    /// without its data) asks to be taken out, so it can rejoin by state
    /// transfer.
    Leave {
        shard: ShardId,
        addr: SocketAddrV4,
    },
    Change(Change),
    /// The meta node's view: role, leader, term, map version.
    Status,
}

/// The map as meta holds it: shards plus a version raised by every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaMap {
    pub version: u64,
    pub shards: Vec<ShardMap>,
    /// Slot ranges moving between shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
}

impl MetaMap {
    /// The validated cluster map, with the meta addresses it came from.
    pub fn to_cluster_map(&self, meta: &[SocketAddrV4]) -> Result<ClusterMap, MapError> {
        let mut map = ClusterMap::with_migrations(self.shards.clone(), self.migrations.clone())?;
        map.meta = meta.to_vec();
        map.version = self.version;
        Ok(map)
    }
}

/// A meta node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Map(MetaMap),
    /// The answer to a heartbeat: the map, and the lease it grants.
    Lease {
        map: MetaMap,
        /// The sender may serve for this long after it sent the heartbeat.
        lease_ms: u64,
        /// When to send the next heartbeat.
        heartbeat_ms: u64,
    },
    /// This node is not the leader; try `leader` (None: no leader known yet).
    NotLeader {
        leader: Option<SocketAddrV4>,
    },
    /// The request was refused, and why.
    Refused(Refusal),
    Status(MetaStatus),
}

/// Why meta refuses a request: callers match on the kind, people read the
/// message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("the cluster map is not initialised yet")]
    NotInitialised,
    #[error("invalid cluster map: {0}")]
    InvalidMap(String),
    #[error("there is no shard {shard}")]
    NoSuchShard { shard: ShardId },
    #[error("shard {shard} already has {limit} replicas, the limit")]
    ChainFull { shard: ShardId, limit: usize },
    #[error("{addr} is not a replica of shard {shard}")]
    NotAReplica { shard: ShardId, addr: SocketAddrV4 },
    #[error("{addr} is the last replica of shard {shard}; it stays until it returns")]
    LastReplica { shard: ShardId, addr: SocketAddrV4 },
    #[error("{addr} is already a replica of shard {shard}")]
    AlreadyAReplica { shard: ShardId, addr: SocketAddrV4 },
    #[error("{addr} is the coordinator of shard {shard}")]
    IsTheCoordinator { shard: ShardId, addr: SocketAddrV4 },
    #[error(
        "{addr} is not a live spare replica of shard {shard}: start `tern server --shard {shard} --listen {addr}` and wait for it to report as spare"
    )]
    NotASpare { shard: ShardId, addr: SocketAddrV4 },
    #[error("the coordinator would move to itself")]
    MoveToItself,
    #[error("{addr} is a replica")]
    CoordinatorIsAReplica { addr: SocketAddrV4 },
    #[error("no shard has its coordinator at {from}")]
    NoShardCoordinatedAt { from: SocketAddrV4 },
    #[error("shard {shard} does not own slot {slot}, so it cannot move it")]
    SlotNotOwned { shard: ShardId, slot: Slot },
    #[error("slot {slot} is already moving in migration {migration}")]
    SlotAlreadyMoving { slot: Slot, migration: u64 },
    #[error(
        "a migration moves slots [start, end) with start < end <= {limit} in groups of at least one slot"
    )]
    BadSlotRange { limit: u32 },
    #[error("the slots would move to the shard that owns them")]
    MigrateToItself,
    #[error("there is no migration {migration}")]
    NoSuchMigration { migration: u64 },
    #[error("migration {migration} has no group {group}")]
    NoSuchGroup { migration: u64, group: u32 },
    #[error("migration {migration} still has {left} groups to hand off")]
    MigrationUnfinished { migration: u64, left: u32 },
    #[error("migration {migration} was cancelled")]
    MigrationCancelled { migration: u64 },
    #[error("migration {migration} is complete")]
    MigrationCompleted { migration: u64 },
    #[error(
        "shard {shard} is at epoch {epoch}, not {expected}: its coordinator changed during the hand-off"
    )]
    SourceChanged {
        shard: ShardId,
        epoch: Epoch,
        expected: Epoch,
    },
    #[error(
        "shard {shard}'s coordinator started afresh during the hand-off (incarnation {incarnation}, not {expected}): its hold may be gone"
    )]
    SourceRestarted {
        shard: ShardId,
        incarnation: u64,
        expected: u64,
    },
    #[error("shard {shard} exists already, with other replicas or another coordinator")]
    ShardExists { shard: ShardId },
    #[error("a shard needs between 1 and {limit} replicas")]
    BadChainLength { limit: usize },
    #[error(
        "shard {shard} still owns {slots} slots: move them away first (`tern reshard --from {shard} ...`)"
    )]
    ShardOwnsSlots { shard: ShardId, slots: u32 },
    #[error("shard {shard} is in migration {migration}: finish or cancel it first")]
    ShardMigrating { shard: ShardId, migration: u64 },
    #[error("{addr} is not a live coordinator: start `tern coordinator --listen {addr}` first")]
    NotACoordinator { addr: SocketAddrV4 },
    #[error("undecodable request: {0}")]
    Undecodable(String),
    #[error("meta could not commit the change: {0}")]
    NotCommitted(String),
    #[error("{who} may not ask this ({what}): it takes another role's certificate")]
    NotPermitted { who: String, what: String },
}

/// What `Request::Status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStatus {
    pub id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub map_version: Option<u64>,
}

/// The envelope every meta node reads: API requests from outside, or Raft
/// messages between meta nodes (which `tern-meta` adds as other variants).
#[derive(Serialize)]
enum Envelope<'a> {
    Api(&'a Request),
}

/// How long a single exchange with one meta node may take.
pub const META_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Sends one request to one meta node and reads its reply.
pub fn call(addr: SocketAddrV4, request: &Request, timeout: Duration) -> io::Result<Reply> {
    exchange(&mut connect(addr, timeout)?, request)
}

/// Sends one request to one meta node as `identity` (None: plain TCP),
/// whatever this process's own identity is.
pub fn call_as(
    identity: Option<&tls::Identity>,
    addr: SocketAddrV4,
    request: &Request,
    timeout: Duration,
) -> io::Result<Reply> {
    let stream = tls::connect_as(identity, addr, timeout, tls::Role::Meta)?;
    exchange(&mut BufReader::new(stream), request)
}

fn connect(addr: SocketAddrV4, timeout: Duration) -> io::Result<BufReader<tls::Stream>> {
    Ok(BufReader::new(tls::connect(
        addr,
        timeout,
        tls::Role::Meta,
    )?))
}

fn exchange(connection: &mut BufReader<tls::Stream>, request: &Request) -> io::Result<Reply> {
    let mut line = serde_json::to_vec(&Envelope::Api(request)).map_err(io::Error::other)?;
    line.push(b'\n');
    connection.get_mut().write_all(&line)?;
    connection.get_mut().flush()?;
    let mut answer = String::new();
    if connection.read_line(&mut answer)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "meta closed the connection",
        ));
    }
    serde_json::from_str(&answer).map_err(io::Error::other)
}

/// A client of the meta nodes that finds the leader, follows `NotLeader`
/// hints, and keeps its connection to the leader open between requests.
#[derive(Debug)]
pub struct MetaClient {
    nodes: Vec<SocketAddrV4>,
    /// Where the leader was last seen.
    leader: Option<SocketAddrV4>,
    connection: Option<(SocketAddrV4, BufReader<tls::Stream>)>,
}

impl MetaClient {
    pub fn new(nodes: Vec<SocketAddrV4>) -> MetaClient {
        MetaClient {
            nodes,
            leader: None,
            connection: None,
        }
    }

    fn exchange_with(&mut self, node: SocketAddrV4, request: &Request) -> io::Result<Reply> {
        let reused = matches!(&self.connection, Some((open, _)) if *open == node);
        if !reused {
            self.connection = Some((node, connect(node, META_CALL_TIMEOUT)?));
        }
        let (_, connection) = self.connection.as_mut().expect("just connected");
        match exchange(connection, request) {
            Ok(reply) => Ok(reply),
            Err(error) => {
                self.connection = None;
                if reused {
                    // The node may have restarted since: one fresh attempt.
                    self.exchange_with(node, request)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Sends `request` to the leader and returns its answer.
    pub fn call_leader(&mut self, request: &Request) -> io::Result<Reply> {
        if self.nodes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no meta node configured",
            ));
        }
        let mut last_error = io::Error::other("no meta node answered");
        let mut next = 0;
        // Times a leader said it was not ready yet (just elected and not
        // caught up, or confirming that a quorum still follows it).
        let mut settling = 0;
        let mut tries = 0;
        while tries < self.nodes.len() * 2 {
            tries += 1;
            let node = self.leader.take().unwrap_or_else(|| {
                next += 1;
                self.nodes[(next - 1) % self.nodes.len()]
            });
            match self.exchange_with(node, request) {
                Ok(Reply::NotLeader { leader })
                    if leader == Some(node) && settling < LEADER_SETTLING_TRIES =>
                {
                    // The leader itself, not ready to answer: ask it again
                    // shortly rather than the followers, which point to it.
                    last_error = io::Error::other(format!("{node} leads but is not ready yet"));
                    settling += 1;
                    tries -= 1;
                    self.leader = Some(node);
                    std::thread::sleep(LEADER_SETTLING_PAUSE);
                }
                Ok(Reply::NotLeader { leader }) => {
                    last_error = io::Error::other(format!("{node} is not the meta leader"));
                    self.leader = leader.filter(|leader| *leader != node);
                }
                Ok(reply) => {
                    self.leader = Some(node);
                    return Ok(reply);
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }
}

/// How often, and after what pause, a leader that is not ready to answer
/// yet is asked again (about a second in all: a new leader catches up, or
/// confirms its quorum, within one heartbeat round unless it is cut off).
const LEADER_SETTLING_TRIES: u32 = 20;
const LEADER_SETTLING_PAUSE: Duration = Duration::from_millis(50);

/// One request to the leader over a fresh connection; `hint` is where the
/// leader was last seen, and is updated.
pub fn call_leader(
    nodes: &[SocketAddrV4],
    hint: &mut Option<SocketAddrV4>,
    request: &Request,
) -> io::Result<Reply> {
    let mut client = MetaClient::new(nodes.to_vec());
    client.leader = *hint;
    let reply = client.call_leader(request);
    *hint = client.leader;
    reply
}

/// The current map from the meta leader.
pub fn fetch_map(
    nodes: &[SocketAddrV4],
    hint: &mut Option<SocketAddrV4>,
) -> io::Result<ClusterMap> {
    match call_leader(nodes, hint, &Request::GetMap)? {
        Reply::Map(map) => map.to_cluster_map(nodes).map_err(io::Error::other),
        other => Err(io::Error::other(format!("unexpected meta reply {other:?}"))),
    }
}

/// What the heartbeat thread last learnt.
#[derive(Debug, Default)]
struct Learnt {
    map: Option<MetaMap>,
    /// Serving is allowed until then...
    lease_until: Option<Instant>,
    /// ...by a process that has acted on the map of this version, which
    /// came with the lease (it may say the process is out).
    lease_version: u64,
}

/// A thread that heartbeats to the meta leader for one process and keeps
/// the newest map and the lease it was granted.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    learnt: Arc<Mutex<Learnt>>,
    /// The newest map version seen, readable without the lock.
    version: Arc<AtomicU64>,
    /// What a replica reports as `spare`.
    spare: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Asks the thread for a heartbeat now ([`Heartbeats::nudge`]).
    nudges: mpsc::SyncSender<()>,
}

/// The least time between two heartbeats, however often nudged.
pub const NUDGE_SPACING: Duration = Duration::from_millis(10);

impl Heartbeats {
    /// Starts heartbeating as `addr` of kind `kind` to `nodes`.
    pub fn start(nodes: Vec<SocketAddrV4>, addr: SocketAddrV4, kind: NodeKind) -> Heartbeats {
        let (nudges, nudged) = mpsc::sync_channel(1);
        let heartbeats = Heartbeats {
            learnt: Arc::default(),
            version: Arc::default(),
            spare: Arc::default(),
            stop: Arc::default(),
            nudges,
        };
        let this = heartbeats.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || this.run(&nodes, addr, kind, &nudged))
            .expect("spawning the heartbeat thread");
        heartbeats
    }

    /// Heartbeats as soon as `NUDGE_SPACING` after the last one allows
    /// instead of at the next interval: the map may have changed (a client
    /// was refused for a slot or shard the process's map says is elsewhere,
    /// so the client's map may be the newer one).
    pub fn nudge(&self) {
        // A nudge already waiting is enough.
        let _ = self.nudges.try_send(());
    }

    fn run(
        &self,
        nodes: &[SocketAddrV4],
        addr: SocketAddrV4,
        kind: NodeKind,
        nudged: &mpsc::Receiver<()>,
    ) {
        let mut meta = MetaClient::new(nodes.to_vec());
        let mut interval = Duration::from_millis(100);
        while !self.stop.load(Ordering::Relaxed) {
            let kind = match kind {
                NodeKind::Replica { shard, .. } => NodeKind::Replica {
                    shard,
                    spare: self.spare.load(Ordering::Relaxed),
                },
                other => other,
            };
            let request = Request::Heartbeat { addr, kind };
            // The lease runs from the moment the heartbeat leaves, so it ends
            // before meta can count this process as silent.
            let sent = Instant::now();
            match meta.call_leader(&request) {
                Ok(Reply::Lease {
                    map,
                    lease_ms,
                    heartbeat_ms,
                }) => {
                    interval = Duration::from_millis(heartbeat_ms.max(1));
                    let mut learnt = self.learnt.lock().expect("heartbeat lock");
                    learnt.lease_until = Some(sent + Duration::from_millis(lease_ms));
                    learnt.lease_version = map.version;
                    if learnt
                        .map
                        .as_ref()
                        .is_none_or(|known| known.version < map.version)
                    {
                        self.version.store(map.version, Ordering::Release);
                        learnt.map = Some(map);
                    }
                }
                Ok(other) => tracing::debug!(?other, "meta did not grant a lease"),
                Err(error) => tracing::debug!(%error, "heartbeat failed"),
            }
            std::thread::sleep(NUDGE_SPACING.min(interval).saturating_sub(sent.elapsed()));
            // Until the interval is up, or a nudge.
            let _ = nudged.recv_timeout(interval.saturating_sub(sent.elapsed()));
        }
    }

    /// Sets what the next heartbeats report as `spare` (replicas only).
    pub fn set_spare(&self, spare: bool) {
        self.spare.store(spare, Ordering::Relaxed);
    }

    /// Whether the lease still holds for a process that has acted on the
    /// map up to version `acted_on`: a lease renewed together with a newer
    /// map (one that may take the process out) counts only once the process
    /// has seen that map.
    pub fn lease_valid(&self, acted_on: u64) -> bool {
        let learnt = self.learnt.lock().expect("heartbeat lock");
        acted_on >= learnt.lease_version
            && learnt
                .lease_until
                .is_some_and(|until| Instant::now() < until)
    }

    /// The newest map version learnt (0: none yet).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The newest map learnt.
    pub fn map(&self) -> Option<MetaMap> {
        self.learnt.lock().expect("heartbeat lock").map.clone()
    }

    /// Stops the thread after its current heartbeat.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
