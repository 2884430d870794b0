//! The shard coordinator process (`tern coordinator`): one address serving the
//! coordinators of one or more shards, in one of two modes.
//!
//! - `user`: the coordinator logic runs in this process over UDP (the
//!   "vanilla Linux" mode), its state on the heap.
//! - `xdp`: the XDP program of `bpf/coordinator.bpf.c` serves GET, PUT,
//!   DELETE, CAS and ACK in the kernel; this process runs the same logic for
//!   everything the program hands over (XDP_PASS), on the same state: the
//!   program's maps, mapped into this process.

mod neighbours;
pub mod xdp;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tern_client::ShardMap;
use tern_client::meta::{Heartbeats, NodeKind};
use tern_net::BatchSocket;
use tern_proto::SharedShard;
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator};
use thiserror::Error;

pub use neighbours::interface_of;

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
    shutdown: &AtomicBool,
) -> Result<(), CoordError> {
    serve_shards(listen, shards, mode, &|| !shutdown.load(Ordering::Relaxed))
}

/// The shards of `shards` whose coordinator is at `listen`.
pub fn shards_of(shards: &[ShardMap], listen: SocketAddrV4) -> Vec<ShardConfig> {
    shards
        .iter()
        .filter(|shard| shard.coordinator == listen)
        .map(|shard| ShardConfig {
            shard: shard.id,
            epoch: shard.epoch,
            chain: shard.replicas.clone(),
        })
        .collect()
}

/// A coordinator under meta: it heartbeats, and serves the shards the map
/// gives it while its lease holds. Any change to them (a new chain, a new
/// epoch), a lost lease or a takeover from a failed coordinator starts the
/// shards afresh: every key dirty and sequencing above the chain (DESIGN
/// rule 8), with the XDP program and maps loaded anew in XDP mode. With no
/// shard it is a standby.
pub fn run_under_meta(
    listen: SocketAddrV4,
    nodes: Vec<SocketAddrV4>,
    mode: Mode,
    shutdown: &AtomicBool,
) -> Result<(), CoordError> {
    let heartbeats = Heartbeats::start(nodes, listen, NodeKind::Coordinator);
    // The shards of the newest map, with its version; none without a lease.
    let assigned = || match heartbeats.map() {
        Some(map) if heartbeats.lease_valid(map.version) => {
            (map.version, shards_of(&map.shards, listen))
        }
        Some(map) => (map.version, Vec::new()),
        None => (0, Vec::new()),
    };
    let mut standing_by = false;
    while !shutdown.load(Ordering::Relaxed) {
        let (version, shards) = assigned();
        if shards.is_empty() {
            if !standing_by {
                tracing::info!(%listen, "coordinator standing by");
                standing_by = true;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        standing_by = false;
        // The map version these shards were last found unchanged at.
        let checked = std::cell::Cell::new(version);
        let keep_serving = || {
            if shutdown.load(Ordering::Relaxed) {
                return false;
            }
            if heartbeats.version() != checked.get() {
                let (now, current) = assigned();
                if current != shards {
                    return false;
                }
                checked.set(now);
            }
            heartbeats.lease_valid(checked.get())
        };
        if let Err(error) = serve_shards(listen, shards.clone(), mode, &keep_serving) {
            // Say why and try again: the map, the lease or the replicas
            // (their addresses for XDP) may be different in a moment.
            tracing::error!(%error, %listen, "cannot serve the assigned shards; retrying");
            std::thread::sleep(Duration::from_millis(200));
        }
        tracing::info!(%listen, version = heartbeats.version(), "coordinator shards changed or lease lost: restarting them");
    }
    heartbeats.stop();
    Ok(())
}

/// Serves until `keep_serving()` turns false, then logs the counters.
fn serve_and_report(
    socket: &mut BatchSocket,
    coordinator: &mut Coordinator<SharedShard>,
    keep_serving: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    tern_net::serve_while(socket, coordinator, |_| keep_serving(), |_, _| Ok(()))?;
    tracing::info!(stats = %coordinator.render_stats(None), send_errors = socket.send_errors(), "coordinator stopped");
    Ok(())
}

/// Serves the coordinators of `shards` on `listen` while `keep_serving()`.
fn serve_shards(
    listen: SocketAddrV4,
    shards: Vec<ShardConfig>,
    mode: Mode,
    keep_serving: &dyn Fn() -> bool,
) -> Result<(), CoordError> {
    let ids: Vec<u32> = shards.iter().map(|shard| shard.shard).collect();
    match mode {
        Mode::User => {
            let mut socket = BatchSocket::bind(listen)?;
            tracing::info!(%listen, shards = ?ids, mode = "user", "coordinator serving");
            let mut coordinator = Coordinator::new(
                shards
                    .into_iter()
                    .map(|config| ShardCoordinator::new(config, SharedShard::in_process())),
            );
            serve_and_report(&mut socket, &mut coordinator, keep_serving)?;
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
            let mut coordinator = Coordinator::new(cores).with_extra_stats(Box::new(move |out| {
                counters.render(out);
            }));
            // DESIGN rule 8: the kernel knows nothing of recovery, so the
            // program is attached only once this process has learnt where the
            // chain stands and sequencing can resume above it.
            tern_net::serve_while(
                &mut socket,
                &mut coordinator,
                |core| keep_serving() && !core.is_ready(),
                |_, _| Ok(()),
            )?;
            if !keep_serving() {
                return Ok(());
            }
            fast_path.attach(&interface)?;
            tracing::info!(%listen, %interface, shards = ?ids, mode = "xdp", "coordinator serving, fast path attached");
            serve_and_report(&mut socket, &mut coordinator, keep_serving)?;
        }
    }
    Ok(())
}
