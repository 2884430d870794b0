//! A deterministic in-memory network that drives the real protocol cores:
//! one coordinator process, one shard, a chain of replicas and one client.
//! Tests choose which datagram is delivered, held back or lost.
#![allow(dead_code)] // Each test file uses a different part of the harness.

pub mod history;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator};
use tern_proto::replica::{Replica, ReplicaConfig};
use tern_proto::{Core, Outbox, SharedShard, Time};
use tern_wire::{Header, Message, Op, Status, encode, key_hash};

pub const SHARD: u32 = 0;
pub const EPOCH: u32 = 1;

pub fn addr(last_octet: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last_octet), port)
}

pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 200), 5000);

#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub bytes: Vec<u8>,
}

impl Datagram {
    pub fn header(&self) -> Header {
        Message::decode(&self.bytes)
            .expect("cores send valid datagrams")
            .header
    }

    pub fn op(&self) -> Op {
        self.header().op()
    }
}

/// An owned reply received by the client.
#[derive(Clone, Debug)]
pub struct Reply {
    pub header: Header,
    pub extensions: tern_wire::Extensions,
    pub value: Vec<u8>,
}

impl Reply {
    pub fn status(&self) -> Status {
        self.header.status()
    }
}

pub struct Sim {
    pub now: Time,
    pub coordinator_addr: SocketAddrV4,
    pub coordinator: Coordinator<SharedShard>,
    /// Where each replica process listens (`replicas[i]` at `chain[i]`): the
    /// shard's chain unless a test adds spares or changes the chain itself.
    pub chain: Vec<SocketAddrV4>,
    pub replicas: Vec<Replica>,
    pub network: VecDeque<Datagram>,
    pub client_inbox: Vec<Reply>,
    /// Each replica's log records, as its shell would have written them.
    pub disks: Vec<Vec<(u64, Vec<u8>)>>,
    /// The shard's early commit (0: at the tail), kept across failures.
    pub early_commit: u32,
    /// Fan-out replication, kept across failures.
    pub fanout: bool,
    outbox: Outbox,
}

impl Sim {
    /// A shard with `length` replicas whose coordinator has finished its
    /// start-up probe (DESIGN rule 8) against the empty chain.
    pub fn new(length: usize) -> Sim {
        let mut sim = Sim::unprobed(length);
        sim.tick();
        sim.deliver_all();
        assert!(sim.coordinator.is_ready());
        sim
    }

    /// As `new`, with early commit at the chain's `early_commit`-th
    /// replica.
    pub fn with_early_commit(length: usize, early_commit: u32) -> Sim {
        Sim::probed(Sim::unprobed_with(length, early_commit, false))
    }

    /// As `new`, with fan-out replication: the head sends each write to
    /// every other replica, and each acknowledges it to the coordinator.
    pub fn with_fanout(length: usize) -> Sim {
        Sim::with_fanout_early(length, 0)
    }

    /// As `with_fanout`, answering a write at its `early_commit`-th
    /// acknowledgement.
    pub fn with_fanout_early(length: usize, early_commit: u32) -> Sim {
        Sim::probed(Sim::unprobed_with(length, early_commit, true))
    }

    fn probed(mut sim: Sim) -> Sim {
        sim.tick();
        sim.deliver_all();
        assert!(sim.coordinator.is_ready());
        sim
    }

    /// As `new`, but the coordinator has not yet learnt the chain's progress.
    pub fn unprobed(length: usize) -> Sim {
        Sim::unprobed_with(length, 0, false)
    }

    /// As `unprobed`, with fan-out replication.
    pub fn unprobed_fanout(length: usize) -> Sim {
        Sim::unprobed_with(length, 0, true)
    }

    fn unprobed_with(length: usize, early_commit: u32, fanout: bool) -> Sim {
        let coordinator_addr = addr(1, 7000);
        let chain: Vec<_> = (0..length)
            .map(|index| addr(10 + index as u8, 7100))
            .collect();
        let replicas = (0..length)
            .map(|position| {
                Replica::new(ReplicaConfig {
                    shard: SHARD,
                    epoch: EPOCH,
                    chain: chain.clone(),
                    position,
                    coordinator: coordinator_addr,
                    early_commit,
                    fanout,
                })
            })
            .collect();
        Sim {
            now: Time::from_nanos(1_000_000_000),
            coordinator_addr,
            coordinator: Sim::fresh_coordinator_with(&chain, early_commit, fanout),
            chain,
            replicas,
            network: VecDeque::new(),
            client_inbox: Vec::new(),
            disks: vec![Vec::new(); length],
            early_commit,
            fanout,
            outbox: Outbox::new(),
        }
    }

    pub fn fresh_coordinator(chain: &[SocketAddrV4]) -> Coordinator<SharedShard> {
        Sim::fresh_coordinator_with(chain, 0, false)
    }

    pub fn fresh_coordinator_with(
        chain: &[SocketAddrV4],
        early_commit: u32,
        fanout: bool,
    ) -> Coordinator<SharedShard> {
        let config = ShardConfig {
            incarnation: 0,
            shard: SHARD,
            epoch: EPOCH,
            chain: chain.to_vec(),
            slots: vec![[0, tern_wire::SLOT_COUNT]],
            early_commit,
            fanout,
        };
        Coordinator::new([ShardCoordinator::new(config, SharedShard::in_process())])
    }

    pub fn shard(&self) -> &ShardCoordinator<SharedShard> {
        self.coordinator.shard(SHARD).unwrap()
    }

    pub fn head(&self) -> &Replica {
        &self.replicas[0]
    }

    pub fn tail(&self) -> &Replica {
        self.replicas.last().unwrap()
    }

    /// Sends a client request to the coordinator.
    pub fn send(&mut self, bytes: Vec<u8>) {
        self.network.push_back(Datagram {
            from: CLIENT,
            to: self.coordinator_addr,
            bytes,
        });
    }

    pub fn put(&mut self, key: &[u8], value: &[u8], request_id: u64) {
        self.send(request(Op::Put, key, value, 0, request_id));
    }

    pub fn get(&mut self, key: &[u8], request_id: u64) {
        self.send(request(Op::Get, key, b"", 0, request_id));
    }

    /// Delivers the datagram at `index` of the network queue.
    pub fn deliver_at(&mut self, index: usize) {
        let datagram = self.network.remove(index).expect("index inside the queue");
        self.receive(datagram);
    }

    /// Delivers the first queued datagram matching `wanted`; false if none.
    pub fn deliver_first(&mut self, wanted: impl Fn(&Datagram) -> bool) -> bool {
        match self.network.iter().position(wanted) {
            Some(index) => {
                self.deliver_at(index);
                true
            }
            None => false,
        }
    }

    /// Removes (loses) every queued datagram matching `lost`; returns them.
    pub fn lose(&mut self, lost: impl Fn(&Datagram) -> bool) -> Vec<Datagram> {
        let (gone, kept): (Vec<_>, Vec<_>) = self.network.drain(..).partition(|d| lost(d));
        self.network = kept.into();
        gone
    }

    /// Delivers until the network is empty (bounded, to catch livelock),
    /// moving out-of-band values as the shells' fetchers would.
    pub fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            let Some(datagram) = self.network.pop_front() else {
                if self.move_values() {
                    continue;
                }
                return;
            };
            self.receive(datagram);
        }
        panic!("the network never went quiet");
    }

    /// Writes `k` = "old" (request 1), delivered everywhere, then `k` =
    /// "new" (request 2), delivered everywhere but what `held` matches.
    pub fn overwrite_holding(&mut self, held: impl Fn(&Datagram) -> bool) {
        self.put(b"k", b"old", 1);
        self.deliver_all();
        self.put(b"k", b"new", 2);
        self.deliver_all_except(held);
    }

    /// Delivers until the network is empty, moving no out-of-band value.
    pub fn deliver_datagrams(&mut self) {
        for _ in 0..100_000 {
            let Some(datagram) = self.network.pop_front() else {
                return;
            };
            self.receive(datagram);
        }
        panic!("the network never went quiet");
    }

    /// What a replica shell's fetcher does: hands each replica the value
    /// of the record it waits for, from the replica it names, and runs its
    /// timers (the wake-up). Whether anything moved.
    pub fn move_values(&mut self) -> bool {
        let mut moved = false;
        for index in 0..self.replicas.len() {
            let Some(wanted) = self.replicas[index].values().wait_wanted(Duration::ZERO) else {
                continue;
            };
            let Some(source) = self.chain.iter().position(|a| *a == wanted.from) else {
                continue;
            };
            let Some(value) = self.replicas[source]
                .values()
                .record(wanted.seq, &wanted.large)
            else {
                continue;
            };
            if self.replicas[index]
                .values()
                .deliver(wanted.seq, value.to_vec())
            {
                moved = true;
                let now = self.now;
                self.replicas[index].tick(now, &mut self.outbox);
                self.flush(self.chain[index]);
            }
        }
        moved
    }

    /// Gives every replica a table of out-of-band values of its own with
    /// these limits.
    pub fn with_value_limits(mut self, limit: usize, budget: usize) -> Sim {
        for replica in &mut self.replicas {
            replica.set_values(tern_proto::large::Values::new(limit, budget));
        }
        self
    }

    /// Stages a client's value at every replica, as the client does over
    /// TCP.
    pub fn stage_everywhere(&mut self, request_id: u64, value: &[u8]) {
        for replica in &self.replicas {
            replica
                .values()
                .stage(self.now, (42, request_id), value.to_vec())
                .unwrap();
        }
    }

    /// Stages a client's value at the head, as the client does over TCP.
    pub fn stage(&mut self, request_id: u64, value: &[u8]) {
        self.replicas[0]
            .values()
            .stage(self.now, (42, request_id), value.to_vec())
            .unwrap();
    }

    /// Delivers everything except datagrams matching `held`, which stay queued.
    pub fn deliver_all_except(&mut self, held: impl Fn(&Datagram) -> bool) {
        for _ in 0..100_000 {
            let Some(index) = self.network.iter().position(|d| !held(d)) else {
                return;
            };
            self.deliver_at(index);
        }
        panic!("the network never went quiet");
    }

    /// Moves the clock and runs every core's timers.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.tick();
    }

    pub fn tick(&mut self) {
        let now = self.now;
        self.coordinator.tick(now, &mut self.outbox);
        self.flush(self.coordinator_addr);
        for index in 0..self.replicas.len() {
            self.replicas[index].tick(now, &mut self.outbox);
            self.flush(self.chain[index]);
        }
    }

    pub fn receive(&mut self, datagram: Datagram) {
        let now = self.now;
        if datagram.to == CLIENT {
            let message = Message::decode(&datagram.bytes).expect("valid reply");
            self.client_inbox.push(Reply {
                header: message.header,
                extensions: message.extensions,
                value: message.value.to_vec(),
            });
        } else if datagram.to == self.coordinator_addr {
            self.coordinator
                .step(now, datagram.from, &datagram.bytes, &mut self.outbox);
            self.flush(self.coordinator_addr);
        } else if let Some(index) = self.chain.iter().position(|a| *a == datagram.to) {
            self.replicas[index].step(now, datagram.from, &datagram.bytes, &mut self.outbox);
            self.flush(datagram.to);
        } else {
            panic!("datagram to unknown address {}", datagram.to);
        }
    }

    /// Makes every replica journal its writes (durable mode).
    pub fn with_journals(mut self) -> Sim {
        self.replicas = std::mem::take(&mut self.replicas)
            .into_iter()
            .map(Replica::with_journal)
            .collect();
        self
    }

    pub fn replica_config(&self, index: usize) -> ReplicaConfig {
        self.replicas[index].config().clone()
    }

    /// Crashes replica `index` and restarts it from its disk (an optional
    /// snapshot and the records after it), as its shell would.
    pub fn restart_replica(&mut self, index: usize, snapshot: Option<(u64, Vec<u8>)>) {
        let config = self.replica_config(index);
        let mut replica = Replica::restore(config, snapshot.as_ref().map(|(_, bytes)| &bytes[..]))
            .unwrap()
            .with_journal();
        let after = snapshot.map_or(0, |(seq, _)| seq);
        let mut scratch = Outbox::new();
        for (seq, record) in &self.disks[index] {
            if *seq > after {
                replica.replay_record(record, &mut scratch).unwrap();
                scratch.clear();
            }
        }
        self.replicas[index] = replica;
    }

    fn flush(&mut self, from: SocketAddrV4) {
        if let Some(index) = self.chain.iter().position(|a| *a == from) {
            let records: Vec<(u64, Vec<u8>)> = self
                .outbox
                .journal()
                .map(|(seq, bytes)| (seq, bytes.to_vec()))
                .collect();
            self.disks[index].extend(records);
        }
        for (to, bytes) in self.outbox.iter() {
            self.network.push_back(Datagram {
                from,
                to,
                bytes: bytes.to_vec(),
            });
        }
        self.outbox.clear();
    }

    /// What meta does when replica `index` fails, with a coordinator that
    /// starts the shard afresh (rule 8) at the new epoch: the coordinator of
    /// a takeover.
    pub fn fail_replica(&mut self, index: usize) {
        let config = self.take_out(index);
        self.coordinator =
            Coordinator::new([ShardCoordinator::new(config, SharedShard::in_process())]);
    }

    /// What meta does when replica `index` fails, with the coordinator that
    /// keeps the shard reconfiguring it in place (its window, dirty table and
    /// `commit_seq` kept).
    pub fn fail_replica_in_place(&mut self, index: usize) {
        let config = self.take_out(index);
        assert!(self.coordinator.reconfigure(config));
    }

    /// Replica `index` leaves the chain, the epoch goes up and every survivor
    /// gets its new place; datagrams to or from the failed replica vanish
    /// with it. Returns the shard's new configuration.
    fn take_out(&mut self, index: usize) -> ShardConfig {
        let gone = self.chain.remove(index);
        self.replicas.remove(index);
        self.disks.remove(index);
        self.network.retain(|d| d.to != gone && d.from != gone);
        let epoch = self.replicas[0].config().epoch + 1;
        for (position, replica) in self.replicas.iter_mut().enumerate() {
            replica.reconfigure(ReplicaConfig {
                shard: SHARD,
                epoch,
                chain: self.chain.clone(),
                position,
                coordinator: self.coordinator_addr,
                early_commit: self.early_commit,
                fanout: self.fanout,
            });
        }
        ShardConfig {
            incarnation: 0,
            shard: SHARD,
            epoch,
            chain: self.chain.clone(),
            slots: vec![[0, tern_wire::SLOT_COUNT]],
            early_commit: self.early_commit,
            fanout: self.fanout,
        }
    }

    /// Starts a replica process at `address` outside every chain (a spare,
    /// fenced and empty); it gets datagrams sent to `address` from now on.
    pub fn add_spare(&mut self, address: SocketAddrV4) -> usize {
        let mut spare = Replica::new(ReplicaConfig {
            shard: SHARD,
            epoch: 0,
            chain: vec![address],
            position: 0,
            coordinator: address,
            early_commit: 0,
            fanout: false,
        });
        spare.set_fenced(true);
        self.chain.push(address);
        self.replicas.push(spare);
        self.disks.push(Vec::new());
        self.chain.len() - 1
    }

    /// The client's replies to `request_id`.
    pub fn replies_to(&self, request_id: u64) -> Vec<Reply> {
        self.client_inbox
            .iter()
            .filter(|reply| reply.header.request_id.get() == request_id)
            .cloned()
            .collect()
    }

    /// The single reply to `request_id`.
    pub fn reply_to(&self, request_id: u64) -> Reply {
        let replies = self.replies_to(request_id);
        assert!(!replies.is_empty(), "no reply to request {request_id}");
        replies[0].clone()
    }
}

/// A client request datagram for the simulated shard.
pub fn request(op: Op, key: &[u8], value: &[u8], version: u64, request_id: u64) -> Vec<u8> {
    request_at(EPOCH, op, key, value, version, request_id)
}

/// A one-shot transaction (MULTI) of `items`.
pub fn multi_request(items: &[tern_wire::multi::Item<'_>], request_id: u64) -> Vec<u8> {
    let value = tern_wire::multi::encode_items(items).unwrap();
    request(Op::Multi, items[0].key, &value, 0, request_id)
}

/// A client request datagram stamped with `epoch`.
pub fn request_at(
    epoch: u32,
    op: Op,
    key: &[u8],
    value: &[u8],
    version: u64,
    request_id: u64,
) -> Vec<u8> {
    let mut header = Header::new(op, SHARD, epoch);
    header.key_hash.set(key_hash(key));
    header.client_id.set(42);
    header.request_id.set(request_id);
    header.set_expected_version(version);
    encode(&header, key, value).unwrap()
}

pub fn to(address: SocketAddrV4) -> impl Fn(&Datagram) -> bool {
    move |datagram| datagram.to == address
}

pub fn op(op: Op) -> impl Fn(&Datagram) -> bool {
    move |datagram| datagram.op() == op
}

pub fn from_client(datagram: &Datagram) -> bool {
    datagram.from == CLIENT
}
