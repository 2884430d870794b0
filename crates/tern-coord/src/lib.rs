//! The shard coordinator process (`tern coordinator`): one address serving the
//! coordinators of one or more shards, in one of two modes.
//!
//! - `user`: the coordinator logic runs in this process over UDP (the
//!   "vanilla Linux" mode), its state on the heap.
//! - `xdp`: the XDP program of `bpf/coordinator.bpf.c` serves GET, PUT,
//!   DELETE, CAS and ACK in the kernel; this process runs the same logic for
//!   everything the program hands over (XDP_PASS), on the same state: the
//!   program's maps, mapped into this process.

pub mod assignment;
mod neighbours;
pub mod xdp;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assignment::assignment_of;
pub use assignment::shards_of;
use tern_control::ShardId;
use tern_control::meta::{Change, Heartbeats, MetaClient, NodeKind, Reply, Request};
use tern_net::BatchSocket;
use tern_proto::SharedShard;
pub use tern_proto::assignment::Poll;
use tern_proto::assignment::{Install, Supervisor, carry_out};
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator};
use thiserror::Error;

pub use neighbours::interface_of;
pub use tern_proto::allow::AllowList;

/// How long the XDP mode waits for the replicas' Ethernet addresses.
const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the coordinator logic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    User,
    Xdp,
}

#[derive(Debug, Error)]
pub enum CoordError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Xdp(#[from] xdp::XdpError),
    #[error("{0}")]
    Network(String),
}

/// Serves the coordinators of `shards` on `listen` until `shutdown` is set.
pub fn run(
    listen: SocketAddrV4,
    shards: Vec<ShardConfig>,
    mode: Mode,
    allow: &AllowList,
    shutdown: &AtomicBool,
) -> Result<(), CoordError> {
    // A static map cannot be fetched again: a doubt changes nothing.
    let mut poll = |_map_doubted| {
        if shutdown.load(Ordering::Relaxed) {
            Poll::Stop
        } else {
            Poll::Serve
        }
    };
    serve_shards(listen, shards, mode, allow, None, &mut poll)
}

/// A coordinator under meta: it heartbeats, and serves the shards the map
/// gives it while its lease holds. A new chain or epoch of a shard it
/// serves is installed in place, and a shard moved away is dropped
/// ([`tern_proto::assignment::decide`], carried out by
/// [`tern_proto::assignment::carry_out`]); a takeover of a shard or a lost lease starts
/// the shards afresh: every key dirty and sequencing above the chain (DESIGN
/// rule 8), with the XDP program and maps loaded anew in XDP mode, at a new
/// incarnation taken from meta first ([`resequence`]). With no shard it is
/// a standby.
pub fn run_under_meta(
    listen: SocketAddrV4,
    nodes: Vec<SocketAddrV4>,
    mode: Mode,
    allow: &AllowList,
    shutdown: &AtomicBool,
) -> Result<(), CoordError> {
    let mut meta = MetaClient::new(nodes.clone());
    let heartbeats = Heartbeats::start(nodes, listen, NodeKind::Coordinator);
    // The shards of the newest map, with its version; none without a lease.
    let assigned = || match heartbeats.map() {
        Some(map) if heartbeats.lease_valid(map.version) => {
            (map.version, shards_of(&map.shards, &map.migrations, listen))
        }
        Some(map) => (map.version, Vec::new()),
        None => (0, Vec::new()),
    };
    let mut standing_by = false;
    // Every shard's coordinator by the newest map, for the settler.
    let directory = tern_proto::coordinator::Directory::default();
    while !shutdown.load(Ordering::Relaxed) {
        let (_, shards) = assigned();
        if shards.is_empty() {
            if !standing_by {
                tracing::info!(%listen, "coordinator standing by");
                standing_by = true;
            }
            // No shard, no loop: a scrape sees a standby serving nothing.
            tern_metrics::offer(|| {
                let mut samples = tern_proto::metrics::Samples::new();
                samples.gauge("standing_by", 1);
                samples
            });
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        standing_by = false;
        let Some(shards) = resequence(&mut meta, &heartbeats, listen, &shards, &assigned) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut supervisor = Supervisor::new(shards.clone());
        let mut poll = |map_doubted: bool| {
            if shutdown.load(Ordering::Relaxed) {
                return Poll::Stop;
            }
            if map_doubted {
                heartbeats.nudge();
            }
            // The map is copied out only when it is newer than the one acted
            // on; its version and shards then come from that one copy.
            let newest = (heartbeats.version() != supervisor.acted_on())
                .then(|| heartbeats.map())
                .flatten()
                .map(|map| {
                    if let Ok(mut known) = directory.lock() {
                        known.clear();
                        known.extend(
                            map.shards
                                .iter()
                                .map(|shard| (shard.id.get(), shard.coordinator)),
                        );
                    }
                    assignment_of(&map, listen)
                });
            let next = supervisor.poll(newest, |version| heartbeats.lease_valid(version));
            if let Poll::Change {
                reconfigure,
                remove,
                map_version,
            } = &next
                && !(reconfigure.is_empty() && remove.is_empty())
            {
                tracing::info!(%listen, version = map_version, changed = ?reconfigure, removed = ?remove, "coordinator shards reconfigured in place");
            }
            next
        };
        let served = serve_shards(
            listen,
            shards,
            mode,
            allow,
            Some(directory.clone()),
            &mut poll,
        );
        if let Err(error) = served {
            // Say why and try again: the map, the lease or the replicas
            // (their addresses for XDP) may be different in a moment.
            tracing::error!(%error, %listen, "cannot serve the assigned shards; retrying");
            std::thread::sleep(Duration::from_millis(200));
        }
        tracing::info!(%listen, version = heartbeats.version(), "coordinator took over a shard or lost its lease: restarting its shards");
    }
    heartbeats.stop();
    Ok(())
}

/// Starts `shards` afresh: takes the next incarnation of each from meta
/// (`Change::Resequence`) and waits until the heartbeats bring the map
/// with it, under a lease. A migration's hold lives in the memory of the
/// coordinator that took it; one that starts afresh at the same epoch (its
/// process restarted, or it lost its lease and got it back) holds nothing,
/// and a hand-off fenced by the old incarnation is refused from then on.
/// The shards to serve (those at the incarnation taken), or None to look
/// at the map again.
fn resequence(
    meta: &mut MetaClient,
    heartbeats: &Heartbeats,
    listen: SocketAddrV4,
    shards: &[ShardConfig],
    assigned: &dyn Fn() -> (u64, Vec<ShardConfig>),
) -> Option<Vec<ShardConfig>> {
    let request = Request::Change(Change::Resequence {
        coordinator: listen,
        shards: shards
            .iter()
            .map(|shard| (ShardId(shard.shard), shard.incarnation))
            .collect(),
    });
    let map = match meta.call_leader(&request) {
        Ok(Reply::Map(map)) => map,
        other => {
            tracing::debug!(?other, "meta did not give the shards a new incarnation");
            return None;
        }
    };
    let taken: HashMap<u32, u64> = map
        .shards
        .iter()
        .filter(|shard| shard.coordinator == listen)
        .map(|shard| (shard.id.get(), shard.incarnation))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(1);
    while heartbeats.version() < map.version {
        if Instant::now() > deadline {
            return None;
        }
        heartbeats.nudge();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (_, now) = assigned();
    let fresh: Vec<ShardConfig> = now
        .into_iter()
        .filter(|shard| taken.get(&shard.shard) == Some(&shard.incarnation))
        .collect();
    (!fresh.is_empty()).then_some(fresh)
}

/// Serves until `poll` says stop, installing the changes it hands over,
/// then logs the counters.
fn serve_and_report(
    socket: &mut BatchSocket,
    coordinator: &mut Coordinator<SharedShard>,
    poll: &mut dyn FnMut(bool) -> Poll,
    install: &mut dyn FnMut(Install<'_>),
) -> std::io::Result<()> {
    tern_net::serve_while(
        socket,
        coordinator,
        |core| {
            tern_metrics::offer(|| core.samples(None));
            carry_out(poll(core.take_map_doubt()), core, install)
        },
        |_, _| Ok(()),
    )?;
    tracing::info!(stats = %coordinator.render_stats(None), send_errors = socket.send_errors(), "coordinator stopped");
    Ok(())
}

/// The Ethernet address of each replica.
type Macs = HashMap<SocketAddrV4, [u8; 6]>;

/// The kernel's routes of an XDP coordinator as the map changes: a route is
/// installed at once when every replica's Ethernet address is known, and
/// otherwise marked absent (user space serves the shard on the same state)
/// while a background thread resolves the addresses, so that the serve loop
/// never waits on the network.
#[derive(Debug)]
struct Routes {
    from: std::net::Ipv4Addr,
    macs: Macs,
    /// Shards whose route waits for Ethernet addresses.
    waiting: HashMap<u32, ShardConfig>,
    resolving: Option<mpsc::Receiver<Result<Macs, String>>>,
}

impl Routes {
    fn new(from: std::net::Ipv4Addr, macs: Macs) -> Routes {
        Routes {
            from,
            macs,
            waiting: HashMap::new(),
            resolving: None,
        }
    }

    fn install(&mut self, fast_path: &xdp::XdpCoordinator, change: Install<'_>) {
        let config = match change {
            Install::Gone(shard) => {
                self.waiting.remove(&shard);
                if let Err(error) = fast_path.remove_route(shard) {
                    tracing::error!(%error, shard, "cannot remove the shard's route");
                }
                return;
            }
            Install::Route(config) => config,
        };
        match fast_path.install_route(config, &self.macs) {
            Ok(missing) if missing.is_empty() => {
                self.waiting.remove(&config.shard);
            }
            Ok(missing) => {
                tracing::info!(
                    shard = config.shard,
                    ?missing,
                    "resolving new replicas' Ethernet addresses; user space serves the shard meanwhile"
                );
                self.waiting.insert(config.shard, config.clone());
                self.resolve(missing);
            }
            Err(error) => {
                // The chain does not fit the fast path: user space serves it.
                tracing::error!(%error, shard = config.shard, "the fast path cannot serve this chain");
                let _ = fast_path.remove_route(config.shard);
            }
        }
    }

    fn resolve(&mut self, missing: Vec<SocketAddrV4>) {
        if self.resolving.is_some() {
            // One resolution at a time; the next round asks again.
            return;
        }
        let (done, resolved) = mpsc::channel();
        let from = self.from;
        std::thread::spawn(move || {
            let _ = done.send(neighbours::resolve_macs(from, &missing, NEIGHBOUR_TIMEOUT));
        });
        self.resolving = Some(resolved);
    }

    /// Installs the routes that waited for addresses once they are resolved.
    fn finish_resolving(&mut self, fast_path: &xdp::XdpCoordinator) {
        let Some(resolving) = &self.resolving else {
            return;
        };
        let result = match resolving.try_recv() {
            Ok(result) => result,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err("the resolver stopped".to_string()),
        };
        self.resolving = None;
        match result {
            Ok(found) => self.macs.extend(found),
            Err(error) => {
                tracing::warn!(%error, "resolving replicas' Ethernet addresses; trying again")
            }
        }
        let waiting: Vec<ShardConfig> = self.waiting.values().cloned().collect();
        for config in &waiting {
            self.install(fast_path, Install::Route(config));
        }
    }
}

/// Serves the coordinators of `shards` on `listen` while `poll` says so;
/// `poll` is told whether a client's request said the map may have changed
/// ([`Coordinator::take_map_doubt`]).
fn serve_shards(
    listen: SocketAddrV4,
    shards: Vec<ShardConfig>,
    mode: Mode,
    allow: &AllowList,
    directory: Option<tern_proto::coordinator::Directory>,
    poll: &mut dyn FnMut(bool) -> Poll,
) -> Result<(), CoordError> {
    let with_directory = |coordinator: Coordinator<SharedShard>| {
        let coordinator = coordinator.with_allow_list(allow.clone());
        match &directory {
            Some(directory) => coordinator.with_directory(directory.clone()),
            None => coordinator,
        }
    };
    let ids: Vec<u32> = shards.iter().map(|shard| shard.shard).collect();
    match mode {
        Mode::User => {
            let mut socket = BatchSocket::bind(listen)?;
            tracing::info!(%listen, shards = ?ids, mode = "user", "coordinator serving");
            let mut coordinator =
                with_directory(Coordinator::new(shards.into_iter().map(|config| {
                    ShardCoordinator::new(config, SharedShard::in_process())
                })));
            serve_and_report(&mut socket, &mut coordinator, poll, &mut |_| {})?;
        }
        Mode::Xdp => {
            let interface = interface_of(*listen.ip()).map_err(CoordError::Network)?;
            let replicas: Vec<SocketAddrV4> = shards
                .iter()
                .flat_map(|shard| shard.chain.iter().copied())
                .collect();
            let macs = neighbours::resolve_macs(*listen.ip(), &replicas, NEIGHBOUR_TIMEOUT)
                .map_err(CoordError::Network)?;
            let mut fast_path = xdp::XdpCoordinator::load(listen, &shards, &macs)?;
            fast_path.set_allow_list(allow)?;
            let mut socket = BatchSocket::bind(listen)?;
            let cores = shards
                .iter()
                .map(|config| {
                    Ok(ShardCoordinator::new(
                        config.clone(),
                        fast_path.shared_shard(config.shard)?,
                    ))
                })
                .collect::<Result<Vec<_>, xdp::XdpError>>()?;
            let counters = fast_path.counter_reader();
            let mut coordinator =
                with_directory(Coordinator::new(cores)).with_extra_stats(Box::new(move |out| {
                    counters.samples(out);
                }));
            // DESIGN rule 8: the kernel knows nothing of recovery, so the
            // program is attached only once this process has learnt where the
            // chain stands and sequencing can resume above it. Changes that
            // arrive meanwhile are installed like any other.
            let routes = std::cell::RefCell::new(Routes::new(*listen.ip(), macs));
            let mut install = |change: Install<'_>| routes.borrow_mut().install(&fast_path, change);
            let mut stopped = false;
            tern_net::serve_while(
                &mut socket,
                &mut coordinator,
                |core| {
                    if core.is_ready() {
                        return false;
                    }
                    routes.borrow_mut().finish_resolving(&fast_path);
                    tern_metrics::offer(|| core.samples(None));
                    let going_on = carry_out(poll(core.take_map_doubt()), core, &mut install);
                    stopped = !going_on;
                    going_on
                },
                |_, _| Ok(()),
            )?;
            if stopped {
                return Ok(());
            }
            fast_path.attach(&interface)?;
            tracing::info!(%listen, %interface, shards = ?ids, mode = "xdp", "coordinator serving, fast path attached");
            let fast_path = &fast_path;
            let mut poll_and_resolve = |map_doubted| {
                routes.borrow_mut().finish_resolving(fast_path);
                poll(map_doubted)
            };
            serve_and_report(
                &mut socket,
                &mut coordinator,
                &mut poll_and_resolve,
                &mut |change| routes.borrow_mut().install(fast_path, change),
            )?;
        }
    }
    Ok(())
}
