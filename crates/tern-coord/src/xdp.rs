//! The XDP fast path: loading `bpf/coordinator.bpf.c`, installing routes,
//! mapping its shared maps into this process, attaching it.
//!
//! The maps `shard_cells`, `dirty_counts`, `window`, `shard_slots` and `holds` are created with
//! `BPF_F_MMAPABLE`; mapped here they become the memory of one
//! [`SharedShard`] per shard, so the user-space rare path runs the same
//! coordinator logic on the same state as the kernel.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use tern_proto::metrics::{Group, Kind, Samples};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use tern_proto::SharedShard;
use tern_proto::coordinator::{ShardConfig, ShardState};
use tern_wire::DIRTY_SLOTS;
use tern_wire::maps::{
    ALLOW_NETWORKS_MAX, CHAIN_LEN_MAX, Endpoint, HOLD_BUCKETS, HoldBucket, INFLIGHT_WRITES_MAX,
    SHARD_ID_MAX, SLOT_WORDS, ShardCell, ShardRoute, WindowSlot, XdpCounter,
};
use thiserror::Error;
use zerocopy::IntoBytes;

#[cfg(tern_bpf)]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/coordinator.bpf.o"));
#[cfg(not(tern_bpf))]
static OBJECT: &[u8] = &[];

/// Name of the fast-path program in the object.
pub const COORDINATOR_PROGRAM: &str = "tern_coordinator";
/// Name of the XDP_PASS program for veth peers.
pub const PASS_PROGRAM: &str = "tern_pass";

#[derive(Debug, Error)]
pub enum XdpError {
    #[error(
        "this build has no XDP fast path: clang-19 was missing when it was compiled \
         (install clang-19 and libbpf-dev, e.g. with scripts/install-deps.sh, and rebuild)"
    )]
    NotBuilt,
    #[error("loading the XDP program needs CAP_BPF and CAP_NET_ADMIN (run as root): {0}")]
    Permission(String),
    #[error("the kernel refused the XDP program: {0}")]
    Load(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot attach XDP to {interface} in driver mode: {reason}")]
    Attach { interface: String, reason: String },
}

/// Whether this build carries the XDP program.
pub fn is_built() -> bool {
    !OBJECT.is_empty()
}

/// One mmap of a BPF map, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    address: NonNull<u8>,
    length: usize,
}

// SAFETY: shared memory accessed only through SharedShard's atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn of(map: &MapData, length: usize) -> Result<Mapping, XdpError> {
        let page = 4096;
        let length = length.div_ceil(page) * page;
        // SAFETY: maps a BPF map fd created with BPF_F_MMAPABLE; the kernel
        // checks the length against the map's size.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(XdpError::Setup(format!(
                "mmap of a BPF map: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Mapping {
            address: NonNull::new(address.cast()).expect("mmap succeeded"),
            length,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `of` mapped.
        unsafe { libc::munmap(self.address.as_ptr().cast(), self.length) };
    }
}

/// The mapped shared maps; kept alive by every SharedShard built on them.
#[derive(Debug)]
struct Mappings {
    /// `shard_routes`, written only by `write_route`.
    routes: Mapping,
    cells: Mapping,
    dirty: Mapping,
    window: Mapping,
    slots: Mapping,
    holds: Mapping,
}

/// One fast-path counter as read from the per-CPU map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterValues {
    pub counter: XdpCounter,
    pub name: &'static str,
    /// One value per possible CPU.
    pub per_cpu: Vec<u64>,
}

impl CounterValues {
    pub fn total(&self) -> u64 {
        self.per_cpu.iter().sum()
    }
}

/// Reads the fast path's per-CPU counters; cheap to clone.
#[derive(Clone)]
pub struct CounterReader {
    stats: Arc<PerCpuArray<MapData, u64>>,
    /// Kernel id of the fast-path program, for its run statistics.
    program_id: u32,
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterReader").finish_non_exhaustive()
    }
}

impl CounterReader {
    /// Per-CPU values of every fast-path counter.
    pub fn read(&self) -> Result<Vec<CounterValues>, XdpError> {
        XdpCounter::ALL
            .iter()
            .map(|(counter, name)| {
                let values = self
                    .stats
                    .get(&(*counter as u32), 0)
                    .map_err(|error| XdpError::Setup(format!("xdp_stats: {error}")))?;
                Ok(CounterValues {
                    counter: *counter,
                    name,
                    per_cpu: values.iter().copied().collect(),
                })
            })
            .collect()
    }

    /// Appends each counter (its total, and per CPU), and the program's
    /// run count and time.
    pub fn samples(&self, out: &mut Samples) {
        match self.read() {
            Ok(counters) => {
                for values in counters {
                    let name = values.name.to_lowercase();
                    out.add(Kind::Counter, Group::Xdp, None, name, values.total())
                        .per_cpu = values.per_cpu.clone();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the XDP counters could not be read");
                out.add(Kind::Counter, Group::Xdp, None, "read_errors", 1);
            }
        }
        // Counted by the kernel only while kernel.bpf_stats_enabled is 1.
        let program = aya::programs::loaded_programs()
            .flatten()
            .find(|info| info.id() == self.program_id);
        if let Some(info) = program {
            out.add(
                Kind::Counter,
                Group::Xdp,
                None,
                "program_runs",
                info.run_count(),
            );
            let nanos = info.run_time().as_nanos() as u64;
            out.add(Kind::Counter, Group::Xdp, None, "program_run_ns", nanos);
        }
    }
}

/// A loaded fast path and the shared state of each shard it serves.
#[derive(Debug)]
pub struct XdpCoordinator {
    ebpf: Ebpf,
    counters: CounterReader,
    mappings: Arc<Mappings>,
    /// Shard id to local index in the shared maps.
    local_index: HashMap<u32, u32>,
}

/// Maps `map` from `ebpf` as an Array's data.
fn array_data<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData, XdpError> {
    match ebpf.map(name) {
        Some(Map::Array(data)) => Ok(data),
        _ => Err(XdpError::Setup(format!(
            "the object has no array map {name}"
        ))),
    }
}

impl XdpCoordinator {
    /// Loads the program with room for `shards` and installs their routes.
    /// `listen` is this coordinator's address; `macs` gives the Ethernet
    /// address of every replica.
    pub fn load(
        listen: SocketAddrV4,
        shards: &[ShardConfig],
        macs: &HashMap<SocketAddrV4, [u8; 6]>,
    ) -> Result<XdpCoordinator, XdpError> {
        let count = shards.len() as u32;
        if count == 0 {
            return Err(XdpError::Setup("no shards to serve".into()));
        }
        let mut ebpf = load_object(count)?;
        for name in [COORDINATOR_PROGRAM, PASS_PROGRAM] {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|error| XdpError::Load(format!("{name}: {error:#}")))?;
        }

        let mut self_endpoint: Array<_, [u8; 12]> = Array::try_from(
            ebpf.map_mut("self_endpoint")
                .ok_or_else(|| XdpError::Setup("no map self_endpoint".into()))?,
        )
        .map_err(|error| XdpError::Setup(error.to_string()))?;
        let own = endpoint(listen, [0; 6]);
        self_endpoint
            .set(
                0,
                <[u8; 12]>::try_from(own.as_bytes()).expect("12 bytes"),
                0,
            )
            .map_err(|error| XdpError::Setup(format!("self_endpoint: {error}")))?;

        let mut local_index = HashMap::new();
        for (index, shard) in shards.iter().enumerate() {
            if shard.shard >= SHARD_ID_MAX {
                return Err(XdpError::Setup(format!(
                    "shard id {} is beyond the fast path's limit of {SHARD_ID_MAX}",
                    shard.shard
                )));
            }
            local_index.insert(shard.shard, index as u32);
        }

        let count = count as usize;
        let mappings = Arc::new(Mappings {
            routes: Mapping::of(
                array_data(&ebpf, "shard_routes")?,
                SHARD_ID_MAX as usize * size_of::<ShardRoute>(),
            )?,
            cells: Mapping::of(
                array_data(&ebpf, "shard_cells")?,
                count * size_of::<ShardCell>(),
            )?,
            dirty: Mapping::of(
                array_data(&ebpf, "dirty_counts")?,
                count * DIRTY_SLOTS as usize * 8,
            )?,
            window: Mapping::of(
                array_data(&ebpf, "window")?,
                count * INFLIGHT_WRITES_MAX as usize * size_of::<WindowSlot>(),
            )?,
            slots: Mapping::of(
                array_data(&ebpf, "shard_slots")?,
                count * SLOT_WORDS as usize * 8,
            )?,
            holds: Mapping::of(
                array_data(&ebpf, "holds")?,
                count * HOLD_BUCKETS as usize * size_of::<HoldBucket>(),
            )?,
        });
        let stats = PerCpuArray::try_from(
            ebpf.take_map("xdp_stats")
                .ok_or_else(|| XdpError::Setup("no map xdp_stats".into()))?,
        )
        .map_err(|error| XdpError::Setup(error.to_string()))?;
        let program = program(&ebpf, COORDINATOR_PROGRAM)?;
        let program_id = program
            .info()
            .map_err(|error| XdpError::Setup(format!("{error}")))?
            .id();
        let counters = CounterReader {
            stats: Arc::new(stats),
            program_id,
        };
        let coordinator = XdpCoordinator {
            ebpf,
            counters,
            mappings,
            local_index,
        };
        for shard in shards {
            let state = coordinator.shared_shard(shard.shard)?;
            // Sequence numbers start at 1, as in user mode.
            state.set_next_seq(1);
            // The slots served, before the route appears. From here on the
            // shard's coordinator core owns them (it leaves out the slots a
            // migration holds), so `install_route` never writes them.
            state.set_slots(&shard.slots);
            let missing = coordinator.install_route(shard, macs)?;
            if let Some(replica) = missing.first() {
                return Err(XdpError::Setup(format!(
                    "no MAC address known for replica {replica}"
                )));
            }
        }
        Ok(coordinator)
    }

    /// Installs the route of `shard` (a new chain or epoch of a shard loaded
    /// here) in place, under the route's seqlock (see bpf/route.h): the
    /// shard's state stays as it is. Returns the replicas whose Ethernet
    /// address `macs` lacks; while any is missing, the route is marked
    /// absent, so the kernel hands every datagram of the shard to user
    /// space, which serves it on the same state without needing MACs.
    pub fn install_route(
        &self,
        shard: &ShardConfig,
        macs: &HashMap<SocketAddrV4, [u8; 6]>,
    ) -> Result<Vec<SocketAddrV4>, XdpError> {
        check_chain(shard)?;
        let index = *self
            .local_index
            .get(&shard.shard)
            .ok_or_else(|| XdpError::Setup(format!("shard {} is not loaded", shard.shard)))?;
        let missing: Vec<SocketAddrV4> = shard
            .chain
            .iter()
            .filter(|replica| !macs.contains_key(replica))
            .copied()
            .collect();
        let mut route = ShardRoute {
            present: u8::from(missing.is_empty()),
            replica_count: shard.chain.len() as u8,
            // check_chain bounded the chain to CHAIN_LEN_MAX.
            commit_index: shard
                .chain
                .iter()
                .position(|&replica| replica == shard.commit_point())
                .expect("the commit point is in the chain") as u8,
            replication: route_replication(shard),
            ..ShardRoute::default()
        };
        route.local_index.set(index);
        route.epoch.set(shard.epoch);
        for (slot, replica) in route.replicas.iter_mut().zip(&shard.chain) {
            *slot = endpoint(*replica, macs.get(replica).copied().unwrap_or_default());
        }
        self.write_route(shard.shard, &route);
        Ok(missing)
    }

    /// Marks the route of `shard` absent: the kernel hands its datagrams to
    /// user space, which no longer serves it either (WRONG_SHARD).
    pub fn remove_route(&self, shard: u32) -> Result<(), XdpError> {
        if !self.local_index.contains_key(&shard) {
            return Err(XdpError::Setup(format!("shard {shard} is not loaded")));
        }
        self.write_route(shard, &ShardRoute::default());
        Ok(())
    }

    /// The route of `shard` as the kernel reads it.
    pub fn route(&self, shard: u32) -> Option<ShardRoute> {
        if shard >= SHARD_ID_MAX {
            return None;
        }
        let offset = shard as usize * size_of::<ShardRoute>();
        let mut bytes = [0u8; size_of::<ShardRoute>()];
        for (at, byte) in bytes.iter_mut().enumerate() {
            // SAFETY: inside the mapping of SHARD_ID_MAX routes.
            *byte = unsafe {
                std::ptr::read_volatile(self.mappings.routes.address.as_ptr().add(offset + at))
            };
        }
        zerocopy::FromBytes::read_from_bytes(&bytes[..]).ok()
    }

    /// Writes `route` over the route of `shard` in the mapped map, as the
    /// writer of a seqlock: generation odd, the fields, generation even.
    /// Only this process writes routes, from one thread.
    fn write_route(&self, shard: u32, route: &ShardRoute) {
        assert!(shard < SHARD_ID_MAX, "shard ids are checked at load");
        let base = self.mappings.routes.address.as_ptr();
        let offset = shard as usize * size_of::<ShardRoute>();
        // SAFETY: the route lies inside the mapping; `generation` is its
        // first field, and routes are 8-byte multiples in a page-aligned
        // mapping, so it is an aligned u32 that the kernel also accesses
        // whole.
        let generation = unsafe { AtomicU32::from_ptr(base.add(offset).cast::<u32>()) };
        let current = generation.load(Ordering::Relaxed);
        let odd = current.wrapping_add(if current & 1 == 0 { 1 } else { 2 });
        generation.store(odd, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let bytes = route.as_bytes();
        let field_start = std::mem::size_of::<u32>();
        for (at, byte) in bytes.iter().enumerate().skip(field_start) {
            // SAFETY: inside the route; volatile, because the kernel reads
            // these bytes concurrently (it discards what it read while the
            // generation was odd or moved).
            unsafe { std::ptr::write_volatile(base.add(offset + at), *byte) };
        }
        fence(Ordering::SeqCst);
        generation.store(odd.wrapping_add(1), Ordering::Release);
    }

    /// The shared state of `shard`, backed by the mapped maps.
    pub fn shared_shard(&self, shard: u32) -> Result<SharedShard, XdpError> {
        let index = *self
            .local_index
            .get(&shard)
            .ok_or_else(|| XdpError::Setup(format!("shard {shard} is not loaded")))?
            as usize;
        let base = |mapping: &Mapping, offset: usize| {
            // SAFETY: offsets stay inside the mapping: index < shard count and
            // each map was mapped for every shard.
            unsafe { NonNull::new_unchecked(mapping.address.as_ptr().add(offset)) }
        };
        let cell = base(&self.mappings.cells, index * size_of::<ShardCell>()).cast();
        let dirty = base(&self.mappings.dirty, index * DIRTY_SLOTS as usize * 8).cast();
        let window = base(
            &self.mappings.window,
            index * INFLIGHT_WRITES_MAX as usize * size_of::<WindowSlot>(),
        )
        .cast();
        let slots = base(&self.mappings.slots, index * SLOT_WORDS as usize * 8).cast();
        let holds = base(
            &self.mappings.holds,
            index * HOLD_BUCKETS as usize * size_of::<HoldBucket>(),
        )
        .cast();
        // SAFETY: the pointers address this shard's part of the mapped maps,
        // whose layouts are those of tern_wire::maps (the C program uses the
        // generated header); the Arc keeps the mappings alive.
        Ok(unsafe {
            SharedShard::from_raw_parts(
                cell,
                dirty,
                window,
                slots,
                holds,
                Box::new(self.mappings.clone()),
            )
        })
    }

    /// Serves only clients of `allow`'s networks in the kernel too
    /// (`allowed_clients`, `allow_filter`); call before attaching.
    pub fn set_allow_list(&mut self, allow: &tern_proto::allow::AllowList) -> Result<(), XdpError> {
        if allow.networks().len() > ALLOW_NETWORKS_MAX as usize {
            return Err(XdpError::Setup(format!(
                "--allow-clients names {} networks; the fast path takes at most {ALLOW_NETWORKS_MAX}",
                allow.networks().len()
            )));
        }
        let setup =
            |what: &str, error: &dyn std::fmt::Display| XdpError::Setup(format!("{what}: {error}"));
        let mut trie: LpmTrie<_, u32, u8> = LpmTrie::try_from(
            self.ebpf
                .map_mut("allowed_clients")
                .ok_or_else(|| XdpError::Setup("no map allowed_clients".into()))?,
        )
        .map_err(|error| setup("allowed_clients", &error))?;
        for (network, prefix) in allow.networks() {
            // The trie matches bytes in memory order: the address's octets.
            let key = Key::new(u32::from(*prefix), u32::from_ne_bytes(network.octets()));
            trie.insert(&key, 1, 0)
                .map_err(|error| setup("allowed_clients", &error))?;
        }
        let mut filter: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut("allow_filter")
                .ok_or_else(|| XdpError::Setup("no map allow_filter".into()))?,
        )
        .map_err(|error| setup("allow_filter", &error))?;
        filter
            .set(0, u32::from(!allow.is_everyone()), 0)
            .map_err(|error| setup("allow_filter", &error))
    }

    /// Attaches the fast path to `interface` in driver (native) mode.
    pub fn attach(&mut self, interface: &str) -> Result<(), XdpError> {
        attach_program(&mut self.ebpf, COORDINATOR_PROGRAM, interface)
    }

    /// Runs the fast path once on `frame` (BPF_PROG_TEST_RUN); returns the
    /// verdict and the frame as the program left it.
    pub fn test_run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), XdpError> {
        let program = program(&self.ebpf, COORDINATOR_PROGRAM)?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(|error| XdpError::Setup(format!("BPF_PROG_TEST_RUN: {error:#}")))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Per-CPU values of every fast-path counter.
    pub fn counters(&self) -> Result<Vec<CounterValues>, XdpError> {
        self.counters.read()
    }

    /// A handle that reads the counters without borrowing the program.
    pub fn counter_reader(&self) -> CounterReader {
        self.counters.clone()
    }
}

/// Keeps the kernel counting the run time of BPF programs while it lives
/// (BPF_ENABLE_STATS), for [`program_run_ns`].
#[derive(Debug)]
pub struct RunTimeStats(#[allow(dead_code)] std::os::fd::OwnedFd);

/// Asks the kernel to count BPF programs' run time until the guard drops.
pub fn count_run_time() -> Result<RunTimeStats, XdpError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(RunTimeStats)
        .map_err(|error| XdpError::Setup(format!("BPF_ENABLE_STATS: {error}")))
}

/// The run time of every loaded fast-path program of this machine, in
/// nanoseconds (counted only while run-time statistics are on).
pub fn program_run_ns() -> u64 {
    // The kernel keeps the first 15 bytes of a program's name.
    let name = &COORDINATOR_PROGRAM.as_bytes()[..COORDINATOR_PROGRAM.len().min(15)];
    aya::programs::loaded_programs()
        .flatten()
        .filter(|info| info.name() == name)
        .map(|info| info.run_time().as_nanos() as u64)
        .sum()
}

/// Refuses a chain the fast path cannot forward to.
fn check_chain(shard: &ShardConfig) -> Result<(), XdpError> {
    if shard.chain.is_empty() || shard.chain.len() > CHAIN_LEN_MAX {
        return Err(XdpError::Setup(format!(
            "shard {} has {} replicas; the fast path forwards to 1..={CHAIN_LEN_MAX}",
            shard.shard,
            shard.chain.len()
        )));
    }
    Ok(())
}

/// The route's `replication` byte: early commit, fan-out, and under
/// fan-out the acknowledgement that answers (K; 0: the last).
fn route_replication(shard: &ShardConfig) -> u8 {
    use tern_wire::maps::{ROUTE_EARLY, ROUTE_FANOUT, ROUTE_QUORUM_SHIFT};
    let early = if shard.early_commit > 0 {
        ROUTE_EARLY
    } else {
        0
    };
    if !shard.fanout {
        return early;
    }
    // check_chain bounded the chain, so K < chain length fits.
    let quorum = shard.fanout_quorum().map_or(0, |k| k as u8);
    early | ROUTE_FANOUT | quorum << ROUTE_QUORUM_SHIFT
}

fn endpoint(address: SocketAddrV4, mac: [u8; 6]) -> Endpoint {
    let mut endpoint = Endpoint {
        mac,
        ..Endpoint::default()
    };
    endpoint.ip.set(u32::from(*address.ip()));
    endpoint.port.set(address.port());
    endpoint
}

fn attach_program(ebpf: &mut Ebpf, name: &str, interface: &str) -> Result<(), XdpError> {
    program_mut(ebpf, name)?
        .attach(interface, XdpMode::Driver)
        .map_err(|error| XdpError::Attach {
            interface: interface.to_string(),
            reason: format!("{error:#}"),
        })?;
    Ok(())
}

/// Loads the object with maps sized for `shard_count` shards.
fn load_object(shard_count: u32) -> Result<Ebpf, XdpError> {
    if !is_built() {
        return Err(XdpError::NotBuilt);
    }
    EbpfLoader::new()
        .map_max_entries("shard_cells", shard_count)
        .map_max_entries("dirty_counts", shard_count * DIRTY_SLOTS)
        .map_max_entries("window", shard_count * INFLIGHT_WRITES_MAX as u32)
        .map_max_entries("shard_slots", shard_count * SLOT_WORDS)
        .map_max_entries("holds", shard_count * HOLD_BUCKETS)
        .load(OBJECT)
        .map_err(|error| {
            let text = format!("{error:#}");
            if text.contains("Operation not permitted") || text.contains("EPERM") {
                XdpError::Permission(text)
            } else {
                XdpError::Load(text)
            }
        })
}

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp, XdpError> {
    ebpf.program(name)
        .ok_or_else(|| XdpError::Setup(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|error| XdpError::Setup(format!("{name}: {error}")))
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, XdpError> {
    ebpf.program_mut(name)
        .ok_or_else(|| XdpError::Setup(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|error| XdpError::Setup(format!("{name}: {error}")))
}

/// Loads the XDP_PASS program, attaches it to `interface` (a veth peer the
/// coordinator transmits into) and pins the link at `pin`, so that it stays
/// after this process exits; removing the pin (or the interface) detaches it.
pub fn attach_pass_pinned(interface: &str, pin: &std::path::Path) -> Result<(), XdpError> {
    let mut ebpf = load_object(1)?;
    let program = program_mut(&mut ebpf, PASS_PROGRAM)?;
    program
        .load()
        .map_err(|error| XdpError::Load(format!("{PASS_PROGRAM}: {error:#}")))?;
    let link_id = program
        .attach(interface, XdpMode::Driver)
        .map_err(|error| XdpError::Attach {
            interface: interface.into(),
            reason: format!("{error:#}"),
        })?;
    let link = program
        .take_link(link_id)
        .map_err(|error| XdpError::Setup(format!("{error}")))?;
    let link: aya::programs::links::FdLink = link
        .try_into()
        .map_err(|error| XdpError::Setup(format!("link is not a bpf_link: {error}")))?;
    link.pin(pin)
        .map_err(|error| XdpError::Setup(format!("pinning {}: {error}", pin.display())))?;
    Ok(())
}
