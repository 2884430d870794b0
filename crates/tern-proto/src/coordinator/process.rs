//! A coordinator process: the coordinators of one or more shards behind one
//! address, dispatching on the header's shard; PING, STATS, and the process
//! control calls (reconfigure, remove, map version).
// PERFORMANCE CRITICAL PATH: `step` runs once per received datagram.

use crate::metrics::{Group, Samples};
use std::collections::HashMap;
use std::net::SocketAddrV4;

use tern_wire::{Header, Message, Op, Status};

use super::settle::Settler;
use super::{ShardConfig, ShardCoordinator, ShardState};
use crate::allow::AllowList;
use crate::counters::{DecodeDrops, counters};
use crate::{Core, Outbox, Time};

counters! {
    /// Process-wide counters of a coordinator.
    pub struct CoordinatorCounters {
        unknown_shard,
        unexpected_op,
        /// Datagrams from sources the allow-list leaves out, dropped
        /// unanswered.
        refused_not_allowed,
    }
}

/// A coordinator process: the coordinators of one or more shards behind one
/// address, dispatching on the header's shard.
pub struct Coordinator<S> {
    shards: HashMap<u32, ShardCoordinator<S>>,
    counters: CoordinatorCounters,
    drops: DecodeDrops,
    /// More samples for STATS and metrics (the XDP fast path's counters).
    extra_stats: Option<ExtraStats>,
    /// Version of the cluster map this process acts on (0: static).
    map_version: u64,
    /// A request came for a shard not served here.
    map_doubted: bool,
    /// Settles the transactions whose lease ran out at a shard served here.
    settler: Settler,
    /// The sources served (`crate::allow`).
    allow: AllowList,
}

/// A source of extra samples.
pub type ExtraStats = Box<dyn Fn(&mut Samples) + Send>;

impl<S: std::fmt::Debug> std::fmt::Debug for Coordinator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("shards", &self.shards)
            .field("counters", &self.counters)
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl<S: ShardState> Coordinator<S> {
    pub fn new(shards: impl IntoIterator<Item = ShardCoordinator<S>>) -> Self {
        Coordinator {
            shards: shards
                .into_iter()
                .map(|shard| (shard.config.shard, shard))
                .collect(),
            counters: CoordinatorCounters::default(),
            drops: DecodeDrops::default(),
            extra_stats: None,
            map_version: 0,
            map_doubted: false,
            settler: Settler::new(),
            allow: AllowList::everyone(),
        }
    }

    /// Serves only sources of these networks (besides its chains' own
    /// messages); the XDP program is given the same list.
    pub fn with_allow_list(mut self, allow: AllowList) -> Self {
        self.allow = allow;
        self
    }

    /// Whether a datagram from `from` is to be dropped unanswered: a source
    /// the allow-list leaves out, unless it is a chain message (by op)
    /// from a replica of a shard served here, checked by role later.
    fn refused_source(&self, from: SocketAddrV4, bytes: &[u8]) -> bool {
        if self.allow.permits(*from.ip()) {
            return false;
        }
        let chain_op = Message::readable_header(bytes).is_some_and(|header| {
            [Op::Ack, Op::Retransmit, Op::SeqReport, Op::TxnReport]
                .iter()
                .any(|op| header.op == *op as u8)
        });
        !(chain_op
            && self
                .shards
                .values()
                .any(|shard| shard.config.chain.contains(&from)))
    }

    /// Lets the settler find each shard's coordinator by the newest map.
    pub fn with_directory(mut self, directory: super::settle::Directory) -> Self {
        self.settler.set_directory(directory);
        self
    }

    /// Adds samples to every STATS answer and metrics scrape.
    pub fn with_extra_stats(mut self, extra: ExtraStats) -> Self {
        self.extra_stats = Some(extra);
        self
    }

    pub fn shard(&self, shard: u32) -> Option<&ShardCoordinator<S>> {
        self.shards.get(&shard)
    }

    /// The ids of the shards served here.
    pub fn shard_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.shards.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Records the version of the cluster map this process now acts on; its
    /// STALE_EPOCH and WRONG_SHARD refusals name it.
    pub fn set_map_version(&mut self, version: u64) {
        self.map_version = version;
        for shard in self.shards.values_mut() {
            shard.acted_on_map(version);
        }
    }

    /// Whether a client was refused since the last call in a way that says
    /// its map may be newer than this process's: WRONG_SHARD (a shard or
    /// slot served elsewhere by this map) or an epoch above the shard's. A
    /// process under meta then fetches the map early
    /// (`tern_control::meta::Heartbeats::nudge`), so that a coordinator
    /// learns a hand-off or a new shard as soon as clients do.
    pub fn take_map_doubt(&mut self) -> bool {
        let mut doubted = std::mem::take(&mut self.map_doubted);
        for shard in self.shards.values_mut() {
            doubted |= std::mem::take(&mut shard.map_doubted);
        }
        doubted
    }

    /// Stops serving `shard` (the map moved it elsewhere); its requests are
    /// answered WRONG_SHARD from now on. False when it was not served here.
    pub fn remove(&mut self, shard: u32) -> bool {
        self.shards.remove(&shard).is_some()
    }

    /// Installs a new chain or epoch of a shard served here, in place
    /// ([`ShardCoordinator::reconfigure`]); false when the shard is not.
    pub fn reconfigure(&mut self, config: ShardConfig) -> bool {
        match self.shards.get_mut(&config.shard) {
            Some(shard) => {
                shard.reconfigure(config);
                true
            }
            None => false,
        }
    }

    pub fn drops(&self) -> &DecodeDrops {
        &self.drops
    }

    /// Whether every shard has finished recovering.
    pub fn is_ready(&self) -> bool {
        self.shards.values().all(ShardCoordinator::is_ready)
    }

    fn answer_ping(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let shard = self.shards.get(&received.shard.get());
        let mut reply = Header::new(Op::Reply, received.shard.get(), received.epoch.get());
        reply.request_id = received.request_id;
        reply.client_id = received.client_id;
        if let Some(shard) = shard {
            reply.epoch.set(shard.config.epoch);
            reply.seq.set(shard.state.next_seq());
            reply.commit_seq.set(shard.state.commit_seq());
            if !shard.is_ready() {
                reply.status = Status::TryAgain as u8;
            }
        }
        outbox.push(to, &reply, &[], b"coordinator");
    }

    /// Counters as `name value` lines: the process's and those of the shard
    /// named in the request (all shards when it names none it hosts).
    /// The process's counters and gauges, and those of `shard` (None:
    /// every shard's).
    pub fn samples(&self, shard: Option<u32>) -> Samples {
        let mut samples = Samples::new();
        self.counters.samples(Group::Plain, None, &mut samples);
        self.settler
            .counts()
            .samples(Group::Plain, None, &mut samples);
        samples.gauge("txn_settling", self.settler.settling() as u64);
        self.drops.samples(Group::Dropped, None, &mut samples);
        if let Some(extra) = &self.extra_stats {
            extra(&mut samples);
        }
        let mut shards: Vec<_> = self.shards.values().collect();
        shards.sort_by_key(|shard| shard.config.shard);
        for coordinator in shards {
            if shard.is_none_or(|wanted| wanted == coordinator.config.shard) {
                coordinator.samples(&mut samples);
            }
        }
        samples
    }

    /// [`Coordinator::samples`] as STATS text.
    pub fn render_stats(&self, shard: Option<u32>) -> String {
        self.samples(shard).text()
    }

    fn answer_stats(&self, to: SocketAddrV4, received: &Header, outbox: &mut Outbox) {
        let shard = Some(received.shard.get()).filter(|shard| self.shards.contains_key(shard));
        let text = self.render_stats(shard);
        let reply = Header::new(Op::Reply, received.shard.get(), received.epoch.get());
        crate::answer_stats_page(to, received, reply, &text, outbox);
    }
}

impl<S: ShardState> Core for Coordinator<S> {
    /// Handles one received datagram.
    fn step(&mut self, now: Time, from: SocketAddrV4, bytes: &[u8], outbox: &mut Outbox) {
        if !self.allow.is_everyone() && self.refused_source(from, bytes) {
            self.counters.refused_not_allowed += 1;
            return;
        }
        let Some(message) = crate::decode_or_refuse(from, bytes, &mut self.drops, outbox) else {
            return;
        };
        let header = &message.header;
        let op = header.op();
        match op {
            Op::Ping => return self.answer_ping(from, header, outbox),
            Op::Stats => return self.answer_stats(from, header, outbox),
            // For a shard: clients' requests (by op class), a migration's
            // holds, and what its chain sends back.
            _ if op.is_client_request() => {}
            Op::Freeze | Op::Ack | Op::Retransmit | Op::SeqReport | Op::TxnReport => {}
            // The answers to the settler's requests.
            Op::Reply if header.client_id.get() == self.settler.client_id() => {
                return self.settler.on_reply(header);
            }
            _ => {
                self.counters.unexpected_op += 1;
                return;
            }
        }
        match self.shards.get_mut(&header.shard.get()) {
            Some(shard) => shard.step(now, from, &message, outbox),
            None => {
                self.counters.unknown_shard += 1;
                self.map_doubted = true;
                crate::answer_status(
                    from,
                    header,
                    Status::WrongShard,
                    header.epoch.get(),
                    self.map_version,
                    outbox,
                );
            }
        }
    }

    fn tick(&mut self, now: Time, outbox: &mut Outbox) {
        for shard in self.shards.values_mut() {
            shard.tick(now, outbox);
        }
        let to_settle: Vec<_> = self
            .shards
            .values_mut()
            .flat_map(|shard| shard.take_to_settle())
            .collect();
        for (id, participants) in to_settle {
            let epoch_of = |shard: u32| self.shards.get(&shard).map(|served| served.config.epoch);
            self.settler.start(now, id, &participants, epoch_of);
        }
        self.settler.tick(now, outbox);
    }
}
