//! The control cores on the simulated network: replica processes that
//! follow meta's map through their membership core
//! (`tern_proto::membership`) and a coordinator that follows it through its
//! assignment core (`tern_proto::assignment`), each carrying out the cores'
//! actions as its shell does (`tern-server`'s `member`, `tern-coord`'s serve
//! loop). Meta is a model: a map version, a chain, an epoch, and leases
//! handed out with heartbeats, which arrive at any point between the steps
//! of the data path.
//!
//! Checked on every run: every write is applied exactly once on every
//! replica of the final chain (INCRBY makes a double application visible),
//! every acknowledged write is seen by every later read, and the chain
//! members agree.

mod sim;

use std::net::SocketAddrV4;
use std::time::Duration;

use proptest::prelude::*;
use sim::*;
use tern_proto::assignment::{Assignment, Poll, Supervisor, carry_out};
use tern_proto::coordinator::ShardConfig;
use tern_proto::membership::{Action, Membership, Role};
use tern_proto::replica::{DEDUP_PER_CLIENT_MAX, Replica, ReplicaConfig};
use tern_wire::{Op, Status};

const KEY: &[u8] = b"counter";

/// Meta's map of the one shard.
struct Meta {
    version: u64,
    epoch: u32,
    chain: Vec<SocketAddrV4>,
    coordinator: SocketAddrV4,
}

struct Cluster {
    sim: Sim,
    meta: Meta,
    /// Each replica process's membership (`sim.replicas[i]`'s).
    members: Vec<Membership>,
    /// The map version each process's newest lease came with.
    leases: Vec<u64>,
    /// Whether each process has a state transfer under way.
    joining: Vec<bool>,
    supervisor: Supervisor,
    /// The map version the coordinator's newest lease came with.
    coordinator_lease: u64,
    /// The epoch the client's map has.
    client_epoch: u32,
    next_request: u64,
    writes: Vec<u64>,
    /// Each read's request id and how many writes were acknowledged when it
    /// was sent: its answer must count at least those.
    reads: Vec<(u64, u64)>,
}

impl Cluster {
    /// A brand-new cluster (map version 1) with a chain of `length`.
    fn new(length: usize) -> Cluster {
        let sim = Sim::new(length);
        let meta = Meta {
            version: 1,
            epoch: EPOCH,
            chain: sim.chain.clone(),
            coordinator: sim.coordinator_addr,
        };
        let shard = ShardConfig {
            incarnation: 0,
            shard: SHARD,
            epoch: EPOCH,
            chain: sim.chain.clone(),
            slots: vec![[0, tern_wire::SLOT_COUNT]],
            early_commit: 0,
            fanout: false,
        };
        let mut cluster = Cluster {
            members: Vec::new(),
            leases: vec![1; length],
            joining: vec![false; length],
            supervisor: Supervisor::new(vec![shard]),
            coordinator_lease: 1,
            client_epoch: EPOCH,
            next_request: 1,
            writes: Vec::new(),
            reads: Vec::new(),
            sim,
            meta,
        };
        for index in 0..length {
            let (member, _) = Membership::start(1, cluster.place(index), false, Some(false));
            assert!(member.is_member());
            cluster.members.push(member);
        }
        assert!(cluster.poll_coordinator());
        cluster
    }

    /// Starts a spare replica process (empty, in no chain).
    fn add_spare(&mut self, last_octet: u8) -> usize {
        let index = self.sim.add_spare(addr(last_octet, 7100));
        let (member, _) = Membership::start(self.meta.version, None, false, Some(false));
        assert!(member.is_spare());
        self.members.push(member);
        self.leases.push(self.meta.version);
        self.joining.push(false);
        index
    }

    /// Process `index`'s place in meta's current map.
    fn place(&self, index: usize) -> Option<ReplicaConfig> {
        let position = self
            .meta
            .chain
            .iter()
            .position(|replica| *replica == self.sim.chain[index])?;
        Some(ReplicaConfig {
            shard: SHARD,
            epoch: self.meta.epoch,
            chain: self.meta.chain.clone(),
            position,
            coordinator: self.meta.coordinator,
            early_commit: 0,
            fanout: false,
        })
    }

    /// Meta commits a new chain: a new epoch and a new map version.
    fn change_chain(&mut self, chain: Vec<SocketAddrV4>) {
        self.meta.version += 1;
        self.meta.epoch += 1;
        self.meta.chain = chain;
    }

    /// Process `index`'s heartbeat is answered: a lease that comes with the
    /// current map, which its serve loop has not acted on yet.
    fn heartbeat(&mut self, index: usize) {
        self.leases[index] = self.meta.version;
        self.fence(index);
    }

    /// Process `index`'s serve loop acts on the newest map it learnt: the
    /// one its newest lease came with (the model keeps only the current
    /// map, so a process that has not heartbeated since has nothing new).
    fn act(&mut self, index: usize) {
        if self.leases[index] == self.meta.version {
            let place = self.place(index);
            for action in self.members[index].on_map(self.meta.version, place) {
                self.carry_out(index, action, None);
            }
        }
        self.fence(index);
    }

    /// As the serve loop does before every batch: fenced unless a member
    /// holding a lease for the map it has acted on.
    fn fence(&mut self, index: usize) {
        let lease = self.leases[index];
        let fenced = self.members[index].fenced(|acted_on| acted_on >= lease);
        self.sim.replicas[index].set_fenced(fenced);
    }

    fn carry_out(&mut self, index: usize, action: Action, snapshot: Option<&[u8]>) {
        let replica = &mut self.sim.replicas[index];
        match action {
            Action::Reconfigure(config) => replica.reconfigure(config),
            Action::StartJoin(config) => {
                replica.reconfigure(config);
                self.joining[index] = true;
            }
            Action::CancelJoin => self.joining[index] = false,
            Action::DropData => {
                let address = self.sim.chain[index];
                *replica = Replica::new(ReplicaConfig {
                    shard: SHARD,
                    epoch: 0,
                    chain: vec![address],
                    position: 0,
                    coordinator: address,
                    early_commit: 0,
                    fanout: false,
                });
                self.joining[index] = false;
            }
            Action::LoadSnapshot(config) => {
                let bytes = snapshot.expect("a snapshot comes with LoadSnapshot");
                let mut loaded = Replica::restore(config, Some(bytes)).expect("a valid snapshot");
                loaded.catch_up();
                *replica = loaded;
                self.joining[index] = false;
            }
            Action::StartEmpty(config) => *replica = Replica::new(config),
        }
    }

    /// Process `index`'s state transfer gets its predecessor's answer: the
    /// predecessor's state and the epoch it serves, whatever map it is on.
    fn transfer(&mut self, index: usize) {
        if !self.joining[index] {
            return;
        }
        let Role::Joining { config } = self.members[index].role() else {
            unreachable!("a transfer runs only while joining");
        };
        let predecessor = config.predecessor();
        let Some(from) = self.sim.chain.iter().position(|a| *a == predecessor) else {
            return;
        };
        let lease = self.leases[from];
        if !self.members[from].may_serve_state(|acted_on| acted_on >= lease) {
            // The predecessor's shell does not answer; the joiner asks again.
            return;
        }
        let served = self.sim.replicas[from].config().epoch;
        let (_, bytes) = self.sim.replicas[from].snapshot();
        for action in self.members[index].on_snapshot(served) {
            self.carry_out(index, action, Some(&bytes));
        }
        self.fence(index);
    }

    /// The coordinator heartbeats and, between two batches, asks its
    /// supervisor what to do; false when it must stop.
    fn poll_coordinator(&mut self) -> bool {
        self.coordinator_lease = self.meta.version;
        let shards = if self.meta.coordinator == self.sim.coordinator_addr {
            vec![ShardConfig {
                incarnation: 0,
                shard: SHARD,
                epoch: self.meta.epoch,
                chain: self.meta.chain.clone(),
                slots: vec![[0, tern_wire::SLOT_COUNT]],
                early_commit: 0,
                fanout: false,
            }]
        } else {
            Vec::new()
        };
        let newest = (self.meta.version != self.supervisor.acted_on()).then_some(Assignment {
            version: self.meta.version,
            shards,
        });
        let lease = self.coordinator_lease;
        let next = self.supervisor.poll(newest, |acted_on| acted_on >= lease);
        if let Poll::Change { reconfigure, .. } = &next {
            for config in reconfigure {
                assert!(
                    self.sim.coordinator.shard(config.shard).is_some(),
                    "reconfigured in place"
                );
            }
        }
        // As the serve loop does; nothing beyond the core in user mode.
        carry_out(next, &mut self.sim.coordinator, &mut |_| {})
    }

    /// A new write, unless it would take the client's outstanding request
    /// ids further apart than a client keeps them (`DEDUP_PER_CLIENT_MAX`,
    /// the pipeline's depth).
    fn write(&mut self) {
        let oldest = self.writes.iter().copied().find(|id| !self.answered(*id));
        if oldest
            .is_some_and(|oldest| self.next_request + 1 - oldest >= DEDUP_PER_CLIENT_MAX as u64)
        {
            return;
        }
        let id = self.request_id();
        self.writes.push(id);
        let bytes = request_at(self.client_epoch, Op::IncrBy, KEY, b"1", 0, id);
        self.sim.send(bytes);
    }

    fn read(&mut self) {
        let id = self.request_id();
        self.reads.push((id, self.acknowledged()));
        let bytes = request_at(self.client_epoch, Op::Get, KEY, b"", 0, id);
        self.sim.send(bytes);
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn answered(&self, request_id: u64) -> bool {
        self.sim
            .replies_to(request_id)
            .iter()
            .any(|reply| reply.status() == Status::Ok)
    }

    fn acknowledged(&self) -> u64 {
        self.writes.iter().filter(|id| self.answered(**id)).count() as u64
    }

    /// The client refreshes its map and resends every unanswered write
    /// with the same request id, as the retry core does.
    fn resend(&mut self) {
        self.client_epoch = self.meta.epoch;
        for id in self.writes.clone() {
            if !self.answered(id) {
                let bytes = request_at(self.client_epoch, Op::IncrBy, KEY, b"1", 0, id);
                self.sim.send(bytes);
            }
        }
    }

    /// Every process and the coordinator act on the current map, joins
    /// complete, and the client resends until every write is answered.
    fn settle(&mut self) {
        for _ in 0..50 {
            assert!(self.poll_coordinator(), "the coordinator keeps the shard");
            for index in 0..self.members.len() {
                self.heartbeat(index);
                self.act(index);
                self.transfer(index);
            }
            self.resend();
            self.sim.deliver_all();
            self.sim.advance(Duration::from_millis(300));
            self.sim.deliver_all();
            if self.writes.iter().all(|id| self.answered(*id)) && !self.joining.contains(&true) {
                return;
            }
        }
        let unanswered: Vec<(u64, Vec<Status>)> = self
            .writes
            .iter()
            .filter(|id| !self.answered(**id))
            .map(|id| {
                (
                    *id,
                    self.sim
                        .replies_to(*id)
                        .iter()
                        .map(|r| r.status())
                        .collect(),
                )
            })
            .collect();
        let roles: Vec<_> = self.members.iter().map(|m| m.role().clone()).collect();
        panic!(
            "the cluster never settled: joining {:?}, unanswered {unanswered:?}, roles {roles:?}, chain {:?}, coordinator {:?}",
            self.joining,
            self.meta.chain,
            self.sim.coordinator.render_stats(None)
        );
    }

    /// The checks every run must pass once settled.
    fn check(&self) {
        let total = self.writes.len() as u64;
        for (id, acknowledged) in &self.reads {
            for reply in self.sim.replies_to(*id) {
                if reply.status() != Status::Ok {
                    continue;
                }
                let value = if reply.value.is_empty() {
                    0
                } else {
                    std::str::from_utf8(&reply.value).unwrap().parse().unwrap()
                };
                assert!(
                    *acknowledged <= value && value <= total,
                    "read {id} saw {value} after {acknowledged} acknowledged writes (of {total})"
                );
            }
        }
        let mut applied = Vec::new();
        for replica in &self.meta.chain {
            let index = self.sim.chain.iter().position(|a| a == replica).unwrap();
            assert!(self.members[index].is_member(), "{replica} is in the chain");
            let store = self.sim.replicas[index].store();
            let counter = store.latest(KEY).map_or(0, |found| {
                std::str::from_utf8(found.value).unwrap().parse().unwrap()
            });
            assert_eq!(
                counter, total,
                "a write was lost or applied twice at {replica}"
            );
            applied.push(store.applied_seq());
        }
        assert!(
            applied.windows(2).all(|pair| pair[0] == pair[1]),
            "{applied:?}"
        );
    }
}

/// One run: load, with the middle replica taken out at step `remove_at`,
/// a fresh spare appended at `add_at`, and the removed replica appended
/// back (once its membership has made it a spare) at `readd_at`. Between
/// them, `choices` picks each step: a delivery, a write, a read, a
/// heartbeat, a serve loop acting on its map, the coordinator's poll, a
/// state transfer's answer, or time passing.
fn run(remove_at: usize, add_at: usize, readd_at: usize, choices: &[u8]) {
    let mut cluster = Cluster::new(3);
    let removed = 1;
    let spare = cluster.add_spare(40);
    let processes = cluster.members.len();
    let mut picks = choices.iter().copied().cycle().skip(1);
    for (step, &choice) in choices.iter().enumerate() {
        if step == remove_at {
            let mut chain = cluster.meta.chain.clone();
            chain.remove(removed);
            cluster.change_chain(chain);
        }
        if step == add_at {
            let mut chain = cluster.meta.chain.clone();
            chain.push(cluster.sim.chain[spare]);
            cluster.change_chain(chain);
        }
        let back = cluster.sim.chain[removed];
        if step == readd_at
            && cluster.members[removed].is_spare()
            && !cluster.meta.chain.contains(&back)
        {
            // Meta appends only a live spare.
            let mut chain = cluster.meta.chain.clone();
            chain.push(back);
            cluster.change_chain(chain);
        }
        let process = picks.next().unwrap() as usize % processes;
        match choice % 12 {
            0..=3 => {
                if !cluster.sim.network.is_empty() {
                    let index = picks.next().unwrap() as usize % cluster.sim.network.len();
                    cluster.sim.deliver_at(index);
                }
            }
            4 => cluster.write(),
            5 => cluster.read(),
            6 => cluster.heartbeat(process),
            7 => cluster.act(process),
            8 => assert!(cluster.poll_coordinator()),
            9 => cluster.transfer(process),
            10 => cluster.sim.advance(Duration::from_millis(20)),
            _ => cluster.resend(),
        }
    }
    cluster.settle();
    cluster.check();
}

#[test]
fn a_replica_taken_out_and_a_spare_appended_under_load_lose_and_repeat_nothing() {
    let choices: Vec<u8> = (0..400u32).map(|n| (n * 7 + n / 5) as u8).collect();
    run(60, 140, 260, &choices);
}

#[test]
fn a_spare_whose_first_transfer_comes_from_before_its_epoch_fetches_again() {
    let mut cluster = Cluster::new(2);
    let spare = cluster.add_spare(40);
    for _ in 0..4 {
        cluster.write();
    }
    cluster.sim.deliver_all();
    let mut chain = cluster.meta.chain.clone();
    chain.push(cluster.sim.chain[spare]);
    cluster.change_chain(chain);
    // The spare acts on the map first; its predecessor (the old tail) has
    // not, so it serves the state of the old epoch: not enough.
    cluster.heartbeat(spare);
    cluster.act(spare);
    assert!(cluster.joining[spare]);
    cluster.transfer(spare);
    assert!(
        cluster.joining[spare],
        "a state from before the epoch is fetched again"
    );
    cluster.write();
    cluster.settle();
    cluster.check();
    assert_eq!(cluster.acknowledged(), 5);
}

#[test]
fn a_removed_replica_with_a_lease_for_the_map_that_removes_it_serves_no_read() {
    let mut cluster = Cluster::new(3);
    for _ in 0..3 {
        cluster.write();
    }
    cluster.sim.deliver_all();
    // A read reaches the coordinator and is forwarded to a replica...
    cluster.read();
    let (read, _) = *cluster.reads.last().unwrap();
    cluster.sim.deliver_first(from_client);
    let target = cluster
        .sim
        .network
        .iter()
        .find(|datagram| datagram.op() == Op::Get)
        .expect("the read is forwarded")
        .to;
    let removed = cluster.sim.chain.iter().position(|a| *a == target).unwrap();
    // ...then meta takes that replica out; its heartbeat brings the lease
    // of that map before its serve loop has acted on it.
    let mut chain = cluster.meta.chain.clone();
    chain.retain(|replica| *replica != target);
    cluster.change_chain(chain);
    cluster.heartbeat(removed);
    assert!(
        cluster.sim.replicas[removed].is_fenced(),
        "a lease for map 2 does not cover map 1"
    );
    cluster.sim.deliver_first(to(target));
    assert_eq!(cluster.sim.replicas[removed].counters().fenced, 1);
    let refusal = cluster
        .sim
        .network
        .iter()
        .find(|datagram| datagram.from == target)
        .expect("the read is refused, not dropped")
        .header();
    assert_eq!(
        (refusal.request_id.get(), refusal.status()),
        (read, Status::TryAgain)
    );
    // Acting on the map, it drops its data and waits as a spare.
    cluster.act(removed);
    assert!(cluster.members[removed].is_spare());
    assert!(cluster.sim.replicas[removed].store().latest(KEY).is_none());
    cluster.write();
    cluster.read();
    cluster.settle();
    cluster.check();
    assert_eq!(cluster.acknowledged(), 4);
}

#[test]
fn a_coordinator_whose_lease_came_with_a_map_that_moves_its_shard_stops_before_sequencing() {
    let mut cluster = Cluster::new(2);
    cluster.write();
    cluster.sim.deliver_all();
    assert_eq!(cluster.acknowledged(), 1);
    // Meta moves the shard to another coordinator. The heartbeat that
    // brings the lease also brings the map, but the serve loop polls after
    // a batch: whichever it sees first, it never serves map 1 again.
    cluster.meta.version += 1;
    cluster.meta.epoch += 1;
    cluster.meta.coordinator = addr(2, 7000);
    let lease = cluster.meta.version;
    assert_eq!(
        cluster.supervisor.poll(None, |acted_on| acted_on >= lease),
        Poll::Stop,
        "the lease of map 2 does not cover map 1"
    );
    assert!(!cluster.poll_coordinator(), "map 2 gives it no shard");
    // The replicas follow map 2, so a write the old coordinator sequenced
    // anyway (at epoch 1) would be refused by the head, never applied.
    for index in 0..2 {
        cluster.heartbeat(index);
        cluster.act(index);
    }
    cluster
        .sim
        .send(request_at(EPOCH, Op::IncrBy, KEY, b"1", 0, 99));
    cluster.sim.deliver_all();
    for replica in &cluster.sim.replicas {
        let found = replica.store().latest(KEY).unwrap();
        assert_eq!(found.value, b"1", "nothing sequenced at epoch 1 is applied");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn membership_and_assignment_hold_under_any_interleaving(
        remove_at in 0usize..80,
        add_after in 0usize..80,
        readd_after in 0usize..120,
        choices in proptest::collection::vec(any::<u8>(), 120..300),
    ) {
        let add_at = remove_at + add_after;
        run(remove_at, add_at, add_at + readd_after, &choices);
    }
}
