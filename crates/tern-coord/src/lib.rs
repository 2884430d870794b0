//! The shard coordinator process (`tern coordinator`): one address serving the
//! coordinators of one or more shards. This is the user-space loop (the
//! "vanilla Linux" mode); the XDP fast path will share its state through
//! `tern_proto::coordinator::ShardState`.

pub mod xdp;

use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;

use tern_net::BatchSocket;
use tern_proto::SharedShard;
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator};

/// Serves the coordinators of `shards` on `listen` until `shutdown` is set.
pub fn run(
    listen: SocketAddrV4,
    shards: Vec<ShardConfig>,
    shutdown: &AtomicBool,
) -> io::Result<()> {
    let mut socket = BatchSocket::bind(listen)?;
    let ids: Vec<u32> = shards.iter().map(|shard| shard.shard).collect();
    tracing::info!(%listen, shards = ?ids, mode = "user", "coordinator serving");
    let mut coordinator = Coordinator::new(
        shards
            .into_iter()
            .map(|config| ShardCoordinator::new(config, SharedShard::in_process())),
    );
    tern_net::serve(&mut socket, &mut coordinator, shutdown)?;
    tracing::info!(stats = %coordinator.render_stats(None), "coordinator stopped");
    Ok(())
}
