//! The control plane (`tern meta`): the cluster map in a replicated state
//! machine on openraft, failure detection by heartbeats, and the changes that
//! follow a failure.
//!
//! - **State**: [`state::MetaState`] (shards with their chains, coordinators
//!   and epochs; replication targets), changed only by Raft log entries. The
//!   log, vote and snapshots are persisted in the node's data directory.
//! - **Heartbeats**: every replica and coordinator process sends one to the
//!   leader every `failure_timeout / 10` and gets the map back. A process
//!   holds a lease of `failure_timeout / 2` from the moment it *sent* its last
//!   answered heartbeat; without it, it stops serving (see ARCHITECTURE.md).
//! - **Failure handling** (leader only, every tick): a chain replica silent
//!   for `failure_timeout` leaves its chain; a silent coordinator's shards move
//!   to a live standby coordinator; a chain shorter than its target takes a
//!   live spare replica of its shard as new tail. Each change bumps the epoch
//!   of the shards it touches. Its lease expired before meta acts, so the
//!   process taken out has stopped serving by then.

pub mod network;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::io::{self};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, Raft, ServerState};
use tern_control::meta::{Change, MetaStatus, NodeKind, Refusal, Reply, Request};
use tern_control::tls::{self, Peer, Role};
use tern_control::{ShardId, ShardMap};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::network::{Envelope, Network};
use crate::state::{Command, CommandResult, MetaState};
use crate::store::{LogStore, StateMachine};

openraft::declare_raft_types!(
    /// Meta's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The default silence after which a process is declared failed.
pub const FAILURE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(1000);

/// How long a leader waits to catch up (or to confirm it leads) before it
/// answers a map request as not the leader.
const CATCH_UP_PATIENCE: Duration = Duration::from_millis(500);

/// Connections a meta node serves at once (every process of the cluster
/// keeps one open for its heartbeats); one more is closed at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// The longest request line a meta node reads (a Raft snapshot of the map
/// travels as one); a longer one closes the connection.
pub const REQUEST_LINE_MAX: u64 = 64 << 20;
/// A connection silent this long is closed (heartbeats come every tenth
/// of the failure timeout; a client reconnects).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// How one meta node runs.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    pub id: u64,
    /// Every meta node, by id (this one included).
    pub peers: BTreeMap<u64, SocketAddrV4>,
    pub data_dir: PathBuf,
    /// The map installed when the cluster starts with none.
    pub initial: Vec<ShardMap>,
    pub failure_timeout: Duration,
    /// Where to serve Prometheus metrics (None: nowhere).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl MetaOptions {
    fn listen(&self) -> SocketAddrV4 {
        self.peers[&self.id]
    }
}

/// Heartbeat timing derived from the failure timeout, sent to every process
/// with the map.
pub fn heartbeat_interval(failure_timeout: Duration) -> Duration {
    failure_timeout / 10
}

/// How long a process may serve after sending its last answered heartbeat.
pub fn lease(failure_timeout: Duration) -> Duration {
    failure_timeout / 2
}

/// When each process was last heard from, as seen by this node while leader.
#[derive(Debug, Default)]
struct Detector {
    /// When this node last became leader; silence counts from there at most.
    leader_since: Option<Instant>,
    seen: HashMap<SocketAddrV4, (NodeKind, Instant)>,
}

impl Detector {
    fn silent_for(&self, addr: SocketAddrV4, now: Instant) -> Duration {
        let since = self
            .seen
            .get(&addr)
            .map(|(_, at)| *at)
            .or(self.leader_since)
            .unwrap_or(now);
        now.saturating_duration_since(since)
    }
}

struct Node {
    options: MetaOptions,
    raft: Raft<TypeConfig>,
    state: Arc<RwLock<MetaState>>,
    detector: std::sync::Mutex<Detector>,
}

/// Runs one meta node until `shutdown` is set.
pub fn run(options: MetaOptions, shutdown: &AtomicBool) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(options, shutdown))
}

async fn serve(options: MetaOptions, shutdown: &AtomicBool) -> io::Result<()> {
    let config = Config {
        cluster_name: "tern-meta".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Default::default()
    }
    .validate()
    .map_err(io::Error::other)?;
    let log = LogStore::open(&options.data_dir)?;
    let machine = StateMachine::open(&options.data_dir)?;
    let state = machine.state();
    let raft = Raft::new(options.id, Arc::new(config), Network, log, machine)
        .await
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind(options.listen()).await?;
    let lowest = *options.peers.keys().next().expect("at least this node");
    if options.id == lowest && !raft.is_initialized().await.map_err(io::Error::other)? {
        let members: BTreeMap<u64, BasicNode> = options
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
            .collect();
        raft.initialize(members).await.map_err(io::Error::other)?;
    }
    tracing::info!(id = options.id, listen = %options.listen(), peers = ?options.peers, "meta node serving");
    let node = Arc::new(Node {
        options,
        raft,
        state,
        detector: std::sync::Mutex::new(Detector::default()),
    });
    if let Some(listen) = node.options.metrics_listen {
        let address = tern_metrics::serve(listen, "meta", metrics_source(&node))?;
        tracing::info!(%address, "meta metrics served");
    }
    tokio::spawn(control_loop(node.clone()));
    let open = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    while !shutdown.load(Ordering::Relaxed) {
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        if let Ok(accepted) = accepted {
            match accepted {
                Ok((stream, address)) => {
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        tracing::warn!(limit = CONNECTIONS_MAX, %address, "too many meta connections: one closed");
                        continue;
                    };
                    let node = node.clone();
                    tokio::spawn(async move {
                        accept(node, stream, address).await;
                        drop(permit);
                    });
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            }
        }
    }
    node.raft.shutdown().await.map_err(io::Error::other)?;
    tracing::info!("meta node stopped");
    Ok(())
}

/// The node's metrics at each scrape: Raft's term, role and indexes, the
/// map's version and size, the bytes of its data directory.
fn metrics_source(node: &Node) -> impl Fn() -> Option<tern_proto::metrics::Samples> + use<> {
    let raft = node.raft.metrics();
    let state = node.state.clone();
    let data_dir = node.options.data_dir.clone();
    move || {
        let mut samples = tern_proto::metrics::Samples::new();
        {
            let metrics = raft.borrow();
            samples.gauge("raft_term", metrics.current_term);
            let leader = metrics.state == ServerState::Leader;
            samples.gauge("raft_is_leader", u64::from(leader));
            samples.gauge("raft_last_log_index", metrics.last_log_index.unwrap_or(0));
            let applied = metrics.last_applied.map_or(0, |id| id.index);
            samples.gauge("raft_last_applied_index", applied);
            let snapshot = metrics.snapshot.map_or(0, |id| id.index);
            samples.gauge("raft_snapshot_index", snapshot);
        }
        {
            let state = state.read().expect("meta state");
            samples.gauge("map_version", state.version);
            samples.gauge("shards", state.shards.len() as u64);
            samples.gauge("migrations", state.migrations.len() as u64);
        }
        samples.counter("control_refused", tls::refused());
        let bytes: u64 = std::fs::read_dir(&data_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|entry| entry.metadata().ok())
                    .map(|metadata| metadata.len())
                    .sum()
            })
            .unwrap_or(0);
        samples.gauge("data_dir_bytes", bytes);
        Some(samples)
    }
}

/// Takes an accepted connection: under this process's TLS identity, the
/// handshake first (the client must present a certificate of the
/// cluster's authority).
async fn accept(node: Arc<Node>, stream: TcpStream, address: std::net::SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(identity) = tls::identity() else {
        return handle_connection(node, stream, Peer::Unchecked, address).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let stream = crate::network::Unvectored(stream);
    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let peer = Peer::of(stream.get_ref().1.peer_certificates());
            handle_connection(node, stream, peer, address).await;
        }
        Ok(Err(error)) => tls::refuse(Some(address), &format!("TLS handshake: {error}")),
        Err(_) => tls::refuse(Some(address), &"TLS handshake timed out"),
    }
}

async fn handle_connection(
    node: Arc<Node>,
    stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: Peer,
    address: std::net::SocketAddr,
) {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(REQUEST_LINE_MAX);
        match tokio::time::timeout(IDLE_FOR, limited.read_line(&mut line)).await {
            Ok(Ok(read)) if read > 0 && line.ends_with('\n') => {}
            Ok(Ok(read)) if read > 0 => {
                tracing::warn!(%address, limit = REQUEST_LINE_MAX, "meta request too long: connection closed");
                return;
            }
            _ => return,
        }
        let answer = match serde_json::from_str::<Envelope>(&line) {
            Ok(envelope) => match permission(&peer, &envelope) {
                Ok(()) => answer(&node, envelope).await,
                Err(_) if !matches!(envelope, Envelope::Api(_)) => {
                    tls::refuse(Some(address), &format!("{peer} sent a Raft message"));
                    return;
                }
                Err(what) => {
                    tls::refuse(Some(address), &format!("{peer} may not ask {what}"));
                    let who = peer.to_string();
                    serde_json::to_string(&Reply::Refused(Refusal::NotPermitted { who, what }))
                }
            },
            Err(error) => {
                tracing::debug!(%error, "undecodable meta request");
                serde_json::to_string(&Reply::Refused(Refusal::Undecodable(error.to_string())))
            }
        };
        let Ok(mut answer) = answer else {
            return;
        };
        answer.push('\n');
        if writer.write_all(answer.as_bytes()).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}

/// Whether `peer` may send `envelope` (Err: what it asked, for the
/// refusal). Raft messages come from meta nodes only; a process heartbeats
/// (or leaves its chain) only as the role it is and at an address its
/// certificate names; a coordinator may resequence its own shards, and
/// every other change of the map takes an operator. Anyone certified may
/// read the map and the node's status.
fn permission(peer: &Peer, envelope: &Envelope) -> Result<(), String> {
    let request = match envelope {
        Envelope::Append(_) | Envelope::Vote(_) | Envelope::Snapshot(_) => {
            return if peer.is(&[Role::Meta]) {
                Ok(())
            } else {
                Err("a Raft message".into())
            };
        }
        Envelope::Api(request) => request,
    };
    let (roles, speaks_for): (&[Role], Option<SocketAddrV4>) = match request {
        Request::Status | Request::GetMap => (&Role::ALL, None),
        Request::Heartbeat {
            addr,
            kind: NodeKind::Replica { .. },
        }
        | Request::Leave { addr, .. } => (&[Role::Replica], Some(*addr)),
        Request::Heartbeat {
            addr,
            kind: NodeKind::Coordinator,
        } => (&[Role::Coordinator], Some(*addr)),
        Request::Change(Change::Resequence { coordinator, .. })
            if peer.is(&[Role::Coordinator]) =>
        {
            (&[Role::Coordinator], Some(*coordinator))
        }
        Request::Change(_) => (&[Role::Operator], None),
    };
    let allowed = peer.is(roles) && speaks_for.is_none_or(|addr| peer.speaks_for(addr));
    if allowed {
        return Ok(());
    }
    let what = match request {
        Request::Change(change) => format!("{change:?}"),
        other => format!("{other:?}"),
    };
    let what = match speaks_for {
        Some(addr) if peer.is(roles) => {
            format!("{what}, for {addr}: not an address of its certificate")
        }
        _ => what,
    };
    Err(what)
}

async fn answer(node: &Node, envelope: Envelope) -> serde_json::Result<String> {
    match envelope {
        Envelope::Append(rpc) => serde_json::to_string(&node.raft.append_entries(rpc).await),
        Envelope::Vote(rpc) => serde_json::to_string(&node.raft.vote(rpc).await),
        Envelope::Snapshot(rpc) => serde_json::to_string(&node.raft.install_snapshot(rpc).await),
        Envelope::Api(request) => serde_json::to_string(&node.api(request).await),
    }
}

impl Node {
    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn not_leader(&self) -> Reply {
        Reply::NotLeader {
            leader: self
                .leader()
                .and_then(|id| self.options.peers.get(&id).copied()),
        }
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.options.id)
    }

    /// Waits (briefly) until this leader has applied an entry of its own
    /// term, the blank one it appends when elected: every entry committed
    /// under earlier leaders is applied then. A leader just elected may
    /// not have applied the last ones yet; its map would be older than one
    /// already given out (a hand-off recorded, then forgotten by a map
    /// that grants a lease). Cheap: no message, once caught up.
    async fn caught_up(&self) -> bool {
        let own_term_applied = |metrics: &openraft::RaftMetrics<u64, BasicNode>| {
            metrics
                .last_applied
                .is_some_and(|applied| applied.leader_id.term == metrics.current_term)
        };
        // The metrics' guard goes before the wait: held across it, it would
        // keep Raft from publishing the very change waited for.
        let applied = own_term_applied(&self.raft.metrics().borrow());
        applied
            || self
                .raft
                .wait(Some(CATCH_UP_PATIENCE))
                .metrics(own_term_applied, "the leader's blank entry applied")
                .await
                .is_ok()
    }

    /// Waits until a read of the map is linearizable: a quorum still
    /// follows this leader and it has applied everything committed when
    /// asked (a deposed leader that does not know it yet would answer with
    /// an old map). One round of heartbeats: for reads, not for leases.
    async fn linearizable(&self) -> bool {
        matches!(
            tokio::time::timeout(CATCH_UP_PATIENCE, self.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }

    fn map_reply(&self) -> Reply {
        let state = self.state.read().expect("state lock");
        if state.version == 0 {
            return Reply::Refused(Refusal::NotInitialised);
        }
        Reply::Map(state.map())
    }

    async fn api(&self, request: Request) -> Reply {
        if let Request::Status = request {
            let metrics = self.raft.metrics().borrow().clone();
            let version = self.state.read().expect("state lock").version;
            return Reply::Status(MetaStatus {
                id: self.options.id,
                state: format!("{:?}", metrics.state),
                leader: metrics.current_leader,
                term: metrics.current_term,
                last_applied: metrics.last_applied.map(|id| id.index),
                map_version: (version > 0).then_some(version),
            });
        }
        if !self.is_leader() {
            return self.not_leader();
        }
        match request {
            Request::Heartbeat { .. } if !self.caught_up().await => self.not_leader(),
            Request::GetMap if !self.linearizable().await => self.not_leader(),
            Request::Heartbeat { addr, kind } => {
                self.detector
                    .lock()
                    .expect("detector lock")
                    .seen
                    .insert(addr, (kind, Instant::now()));
                match self.map_reply() {
                    Reply::Map(map) => Reply::Lease {
                        map,
                        lease_ms: lease(self.options.failure_timeout).as_millis() as u64,
                        heartbeat_ms: heartbeat_interval(self.options.failure_timeout).as_millis()
                            as u64,
                    },
                    other => other,
                }
            }
            Request::Leave { shard, addr } => self.propose(Command::Fail { shard, addr }).await,
            Request::GetMap => self.map_reply(),
            Request::Change(Change::AddReplica { shard, addr }) if !self.is_spare(shard, addr) => {
                Reply::Refused(Refusal::NotASpare { shard, addr })
            }
            Request::Change(Change::AddShard {
                shard,
                coordinator,
                ref replicas,
            }) if self.state.read().expect("state lock").shard_is_new(shard) => {
                // A new shard's replicas and coordinator must be running: a
                // chain of processes that are not would be dead on arrival.
                if let Some(&addr) = replicas.iter().find(|addr| !self.is_spare(shard, **addr)) {
                    return Reply::Refused(Refusal::NotASpare { shard, addr });
                }
                if !self.heartbeats_as(coordinator, NodeKind::Coordinator) {
                    return Reply::Refused(Refusal::NotACoordinator { addr: coordinator });
                }
                let change = Change::AddShard {
                    shard,
                    coordinator,
                    replicas: replicas.clone(),
                };
                self.propose(Command::Operator(change)).await
            }
            Request::Change(change) => self.propose(Command::Operator(change)).await,
            Request::Status => unreachable!("answered above"),
        }
    }

    /// Whether `addr` heartbeats, recently, as a spare of `shard`.
    fn is_spare(&self, shard: ShardId, addr: SocketAddrV4) -> bool {
        self.heartbeats_as(addr, NodeKind::Replica { shard, spare: true })
    }

    /// Whether `addr` heartbeats, recently, as `kind`.
    fn heartbeats_as(&self, addr: SocketAddrV4, kind: NodeKind) -> bool {
        let detector = self.detector.lock().expect("detector lock");
        detector
            .seen
            .get(&addr)
            .is_some_and(|(seen, _)| *seen == kind)
            && detector.silent_for(addr, Instant::now()) < self.options.failure_timeout
    }

    async fn propose(&self, command: Command) -> Reply {
        match self.raft.client_write(command).await {
            Ok(response) => match response.data.0 {
                Ok(map) => Reply::Map(map),
                Err(why) => Reply::Refused(why),
            },
            Err(error) => match error.forward_to_leader::<BasicNode>() {
                Some(_) => self.not_leader(),
                None => Reply::Refused(Refusal::NotCommitted(error.to_string())),
            },
        }
    }

    /// The failure-handling decisions for this tick: at most one per shard.
    fn decide(&self, now: Instant) -> Vec<Command> {
        let state = self.state.read().expect("state lock").clone();
        let detector = self.detector.lock().expect("detector lock");
        let timeout = self.options.failure_timeout;
        let alive = |addr: SocketAddrV4| detector.silent_for(addr, now) < timeout;
        let mut commands = Vec::new();
        if state.version == 0 {
            return commands;
        }
        let coordinators: Vec<SocketAddrV4> =
            state.shards.iter().map(|shard| shard.coordinator).collect();
        let mut moved = Vec::new();
        for shard in &state.shards {
            if !alive(shard.coordinator) && !moved.contains(&shard.coordinator) {
                let standby = detector.seen.iter().find(|(addr, (kind, _))| {
                    *kind == NodeKind::Coordinator && !coordinators.contains(addr) && alive(**addr)
                });
                if let Some((standby, _)) = standby {
                    moved.push(shard.coordinator);
                    commands.push(Command::Operator(Change::MoveCoordinator {
                        from: shard.coordinator,
                        to: *standby,
                    }));
                }
            }
            if let Some(dead) = shard.replicas.iter().find(|addr| !alive(**addr))
                && shard.replicas.len() > 1
            {
                commands.push(Command::Fail {
                    shard: shard.id,
                    addr: *dead,
                });
                continue;
            }
            let target = state.replication.get(&shard.id).copied().unwrap_or(0);
            if shard.replicas.len() < target {
                let in_chain = |addr: &SocketAddrV4| {
                    state
                        .shards
                        .iter()
                        .any(|other| other.replicas.contains(addr))
                };
                let spare = detector.seen.iter().find(|(addr, (kind, _))| {
                    *kind
                        == (NodeKind::Replica {
                            shard: shard.id,
                            spare: true,
                        })
                        && !in_chain(addr)
                        && alive(**addr)
                });
                if let Some((spare, _)) = spare {
                    commands.push(Command::Operator(Change::AddReplica {
                        shard: shard.id,
                        addr: *spare,
                    }));
                }
            }
        }
        commands
    }

    /// Runs on every node; acts only while this node leads.
    async fn tick(&self, was_leader: &mut bool) {
        let leader = self.is_leader();
        if leader && !*was_leader {
            // A new leader has heard from nobody yet: silence counts from now.
            let mut detector = self.detector.lock().expect("detector lock");
            detector.leader_since = Some(Instant::now());
            detector.seen.clear();
            tracing::info!(id = self.options.id, "this meta node leads");
        }
        *was_leader = leader;
        if !leader {
            return;
        }
        if self.state.read().expect("state lock").version == 0 {
            let shards = self.options.initial.clone();
            if let Reply::Refused(why) = self.propose(Command::Init { shards }).await {
                tracing::warn!(%why, "cannot install the initial map");
            }
            return;
        }
        for command in self.decide(Instant::now()) {
            tracing::warn!(?command, "failure detected, reconfiguring");
            if let Reply::Refused(why) = self.propose(command).await {
                tracing::warn!(%why, "reconfiguration refused");
            }
        }
    }
}

async fn control_loop(node: Arc<Node>) {
    let mut was_leader = false;
    let period =
        (heartbeat_interval(node.options.failure_timeout) / 2).min(Duration::from_millis(50));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        node.tick(&mut was_leader).await;
    }
}
