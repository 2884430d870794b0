//! The replica process (`tern server`): binds the replica's chain address and
//! drives a [`Replica`] with batched UDP I/O. All protocol logic lives in
//! `tern-proto`; persistence will live in `tern-store`.

use std::io;
use std::sync::atomic::AtomicBool;

use tern_net::BatchSocket;
use tern_proto::replica::{Replica, ReplicaConfig};

/// Serves one replica until `shutdown` is set.
pub fn run(config: ReplicaConfig, shutdown: &AtomicBool) -> io::Result<()> {
    let address = config.chain[config.position];
    let mut socket = BatchSocket::bind(address)?;
    tracing::info!(
        shard = config.shard,
        role = config.role_name(),
        %address,
        "replica serving"
    );
    let mut replica = Replica::new(config);
    tern_net::serve(&mut socket, &mut replica, shutdown)?;
    tracing::info!(stats = %replica.render_stats(), "replica stopped");
    Ok(())
}
