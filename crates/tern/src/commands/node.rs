//! `tern node`: changes and inspection of the cluster's membership through meta.

use std::net::SocketAddrV4;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use tern_client::ClusterMap;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Append a running spare replica to a shard's chain as its new tail (it
    /// joins by state transfer).
    Add {
        #[arg(long)]
        shard: tern_client::ShardId,
        addr: SocketAddrV4,
    },
    /// Take a replica out of a shard's chain.
    Remove {
        #[arg(long)]
        shard: tern_client::ShardId,
        addr: SocketAddrV4,
    },
    /// Move every shard coordinated at FROM to the coordinator at TO.
    MoveCoordinator {
        from: SocketAddrV4,
        to: SocketAddrV4,
    },
    /// Add shard SHARD, owning no slots yet: a chain of running spares
    /// (`tern server --shard SHARD --listen ADDR` each, head first) under the
    /// running coordinator at COORDINATOR. Then `tern reshard rebalance`
    /// gives it its share.
    AddShard {
        #[arg(long)]
        shard: tern_client::ShardId,
        #[arg(long)]
        coordinator: SocketAddrV4,
        #[arg(required = true)]
        replicas: Vec<SocketAddrV4>,
    },
    /// Retire shard SHARD, which must own no slots any more (move them away
    /// with `tern reshard --from SHARD ...` first); its processes can stop.
    RemoveShard { shard: tern_client::ShardId },
    /// Each meta node's view (role, leader, term) and the current map.
    Status,
}

pub fn run(map: &ClusterMap, command: NodeCommand) -> Result<ExitCode> {
    use tern_client::meta::{self, Change, Reply, Request};
    if map.meta.is_empty() {
        bail!("this cluster map names no meta nodes: its membership is static");
    }
    let change = match command {
        NodeCommand::Add { shard, addr } => Change::AddReplica { shard, addr },
        NodeCommand::Remove { shard, addr } => Change::RemoveReplica { shard, addr },
        NodeCommand::MoveCoordinator { from, to } => Change::MoveCoordinator { from, to },
        NodeCommand::AddShard {
            shard,
            coordinator,
            replicas,
        } => Change::AddShard {
            shard,
            coordinator,
            replicas,
        },
        NodeCommand::RemoveShard { shard } => Change::RemoveShard { shard },
        NodeCommand::Status => {
            for node in &map.meta {
                match meta::call(*node, &Request::Status, meta::META_CALL_TIMEOUT) {
                    Ok(Reply::Status(status)) => println!(
                        "meta {node}: id {} {} term {} leader {:?} applied {:?} map version {:?}",
                        status.id,
                        status.state,
                        status.term,
                        status.leader,
                        status.last_applied,
                        status.map_version
                    ),
                    Ok(other) => println!("meta {node}: unexpected answer {other:?}"),
                    Err(error) => println!("meta {node}: unreachable ({error})"),
                }
            }
            let current = meta::fetch_map(&map.meta, &mut None)?;
            print!("{}", current.to_toml());
            return Ok(ExitCode::SUCCESS);
        }
    };
    match meta::call_leader(&map.meta, &mut None, &Request::Change(change))? {
        Reply::Map(current) => {
            println!("map version {}", current.version);
            print!("{}", current.to_cluster_map(&map.meta)?.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Reply::Refused(why) => {
            eprintln!("refused: {why}");
            Ok(ExitCode::from(2))
        }
        other => bail!("unexpected answer from meta: {other:?}"),
    }
}
