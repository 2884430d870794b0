//! Layouts of the BPF maps that the XDP coordinator and user space share.
//!
//! The hot state of a shard coordinator (sequence counter, `commit_seq`, the
//! dirty table and the in-flight window with a copy of each write in flight)
//! lives in memory that both sides update with atomic operations: in XDP mode
//! BPF array maps created with `BPF_F_MMAPABLE` and mapped into the user-space
//! coordinator, in user mode the same layout on the heap. Configuration
//! records are written by the control path and only read by the data path.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64};

use zerocopy::big_endian as be;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::MESSAGE_LEN_MAX;
use crate::layout::{FieldInfo, wire_struct};

/// Writes in flight per shard: the size of the in-flight window.
pub const INFLIGHT_WRITES_MAX: u64 = 4096;
/// Shard ids an XDP coordinator can serve (`shard_routes` is indexed by id).
pub const SHARD_ID_MAX: u32 = 64;
/// Longest chain the XDP coordinator can forward to.
pub const CHAIN_LEN_MAX: usize = 8;

/// Attempts at a contended compare-and-swap on a shard's counters (reserving
/// a sequence number, advancing `commit_seq`) before the XDP program hands
/// the datagram to user space and user space reports the window as full.
pub const CAS_ATTEMPTS_MAX: u32 = 8;
/// Words of the bitmap of slots a shard serves here (`shard_slots`: bit
/// `slot % 64` of word `slot / 64`, a block of these words per local shard).
pub const SLOT_WORDS: u32 = crate::SLOT_COUNT / 64;

/// Clients whose Ethernet address the XDP program remembers (an LRU table),
/// to turn acknowledgements into replies in the kernel.
pub const CLIENT_MACS_MAX: u32 = 65536;

/// A window slot's `dirty_index` with this bit is a MULTI's: its keys'
/// dirty entries are those of the items in the datagram kept, which user
/// space decodes to lower them (the kernel hands such an acknowledgement up).
pub const WINDOW_MULTI: u32 = 1 << 31;

/// `ShardRoute::replication` bits.
pub const ROUTE_EARLY: u8 = 1;
pub const ROUTE_FANOUT: u8 = 2;
pub const ROUTE_QUORUM_SHIFT: u8 = 4;
const _: () = assert!(CHAIN_LEN_MAX < 1 << (8 - ROUTE_QUORUM_SHIFT));

/// Fan-out replication: a window slot's `acks` word says which replicas of
/// the chain acknowledged its write, by position, under which epoch:
/// `epoch (low 16 bits) << 48 | seq (low 40 bits) << 8 | mask`. The seq
/// makes a late acknowledgement of the slot's previous write miss; the
/// epoch, one from before a chain change (whose positions meant other
/// replicas). The writer stores `pack(epoch, seq, 0)` before it publishes
/// the slot; an acknowledgement sets its bit with a compare-and-swap.
/// (`tern_fanout_*` in C.)
pub mod fanout_acks {
    pub const MASK_BITS: u32 = 8;
    pub const SEQ_BITS: u32 = 40;
    pub const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
    pub const EPOCH_MASK: u64 = 0xffff;

    pub const fn pack(epoch: u32, seq: u64, mask: u8) -> u64 {
        ((epoch as u64 & EPOCH_MASK) << (SEQ_BITS + MASK_BITS))
            | ((seq & SEQ_MASK) << MASK_BITS)
            | mask as u64
    }

    /// The word without its mask: which write, under which epoch.
    pub const fn identity(word: u64) -> u64 {
        word >> MASK_BITS
    }

    pub const fn mask(word: u64) -> u8 {
        word as u8
    }

    /// The mask of a chain of `replicas` that all acknowledged.
    pub const fn all(replicas: usize) -> u8 {
        ((1u16 << replicas) - 1) as u8
    }

    const _: () = assert!(super::CHAIN_LEN_MAX as u32 <= MASK_BITS);
}

/// Networks a coordinator's allow-list may name (`allowed_clients`, an
/// LPM trie).
pub const ALLOW_NETWORKS_MAX: u32 = 256;

/// Buckets of the hold table of one shard (`holds`, a block of buckets per
/// local shard): a transaction's hold lives in bucket
/// [`hold_bucket`]`(id)`, in one of its [`HOLD_WAYS`] slots.
pub const HOLD_BUCKETS: u32 = 128;
/// Slots of a hold bucket: transactions held at once whose ids fall in one
/// bucket (a ninth is refused TRY_AGAIN until one finishes).
pub const HOLD_WAYS: usize = 8;
/// Keys one hold names: as many as a transaction may lock at one shard.
pub const HOLD_KEYS_MAX: usize = crate::multi::ITEMS_MAX;
/// Bytes of a hold's participant list as PREPARE carries it (a count,
/// then `txn::PARTICIPANT_LEN` bytes each), rounded up to words.
pub const HOLD_PARTICIPANTS_LEN: usize =
    (1 + crate::txn::PARTICIPANTS_MAX * crate::txn::PARTICIPANT_LEN).next_multiple_of(8);
/// A hold bucket's `lock` while someone changes the bucket.
pub const HOLD_LOCKED: u64 = 1;
/// Multiplier of [`hold_bucket`]'s mixing (the 64-bit golden ratio).
pub const HOLD_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// The bucket of a transaction's hold: its id mixed, the high bits kept
/// (`tern_hold_bucket` in C).
pub const fn hold_bucket(client_id: u64, txn_seq: u64) -> u32 {
    let mixed = (client_id ^ txn_seq.wrapping_mul(HOLD_MIX)).wrapping_mul(HOLD_MIX);
    ((mixed >> 32) as u32) % HOLD_BUCKETS
}

const _: () = assert!(INFLIGHT_WRITES_MAX.is_power_of_two());
const _: () = assert!(HOLD_BUCKETS.is_power_of_two());
const _: () = assert!(HOLD_KEYS_MAX <= 64, "a hold's dirty_mask has a bit per key");
const _: () = assert!(crate::DIRTY_INDEX_MASK & WINDOW_MULTI == 0);

// zerocopy's KnownLayout derive generates a helper type without Debug.
#[allow(missing_debug_implementations)]
mod records {
    use super::*;

    wire_struct! {
        /// Where a process listens: IPv4 address, UDP port and MAC address.
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C)]
        pub struct Endpoint {
            /// IPv4 address, network byte order.
            pub ip: be::U32 => "__be32",
            /// UDP port, network byte order.
            pub port: be::U16 => "__be16",
            /// Ethernet address of its interface.
            pub mac: [u8; 6] => "__u8[6]",
        }
    }

    wire_struct! {
        /// One shard as the XDP program routes it (`shard_routes[shard id]`),
        /// rewritten in place by the control path under a seqlock.
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C)]
        pub struct ShardRoute {
            /// Seqlock: odd while the control path rewrites the route.
            pub generation: zerocopy::little_endian::U32 => "__u32",
            /// 1 when this coordinator serves the shard.
            pub present: u8 => "__u8",
            /// Number of replicas in `replicas`, head first.
            pub replica_count: u8 => "__u8",
            /// Index in `replicas` of the commit point (the K-th replica under early commit, else the tail).
            pub commit_index: u8 => "__u8",
            /// ROUTE_EARLY when the shard commits early (dirty reads wait for the cell's point barrier), ROUTE_FANOUT under fan-out replication (every replica acknowledges; reads are stamped); under fan-out, K in the bits from ROUTE_QUORUM_SHIFT (a write answered at its K-th acknowledgement; 0: at the last).
            pub replication: u8 => "__u8",
            /// Index of the shard's cell, dirty table and window in the shared maps.
            pub local_index: zerocopy::little_endian::U32 => "__u32",
            /// The shard's epoch; requests of another epoch go to user space.
            pub epoch: zerocopy::little_endian::U32 => "__u32",
            /// The chain, head first.
            pub replicas: [Endpoint; CHAIN_LEN_MAX] => "struct tern_endpoint[8]",
        }
    }
}
pub use records::{Endpoint, ShardRoute};

wire_struct! {
    /// The hot counters of one shard (`shard_cells[local index]`).
    #[repr(C)]
    pub struct ShardCell {
        /// Next sequence number to assign (DESIGN rule 1).
        pub next_seq: AtomicU64 => "__u64",
        /// Highest sequence number acknowledged by the tail (rule 4).
        pub commit_seq: AtomicU64 => "__u64",
        /// Non-zero while every key counts as dirty (rule 8).
        pub all_dirty: AtomicU64 => "__u64",
        /// Round-robin counter for clean reads.
        pub next_replica: AtomicU64 => "__u64",
        /// Early commit: the highest seq the commit point acknowledged (it holds every seq up to it).
        pub point_applied: AtomicU64 => "__u64",
        /// Early commit: dirty reads go to the commit point once max(point_applied, commit_seq) reaches this.
        pub point_barrier: AtomicU64 => "__u64",
    }
}

wire_struct! {
    /// One entry of a shard's in-flight window, `seq % INFLIGHT_WRITES_MAX`.
    /// A writer fills `data`, `len`, `dirty_index` and `sent_ns`, then
    /// publishes `seq`; the acknowledgement swaps `seq` back to 0.
    #[repr(C)]
    pub struct WindowSlot {
        /// The write in flight here, 0 when free.
        pub seq: AtomicU64 => "__u64",
        /// CLOCK_MONOTONIC time of the last send, in nanoseconds.
        pub sent_ns: AtomicU64 => "__u64",
        /// Early commit: `seq` once the commit point's acknowledgement answered the write (0: not yet).
        pub answered: AtomicU64 => "__u64",
        /// Fan-out: the replicas that acknowledged the write (`fanout_acks`), set by the writer before it publishes `seq`.
        pub acks: AtomicU64 => "__u64",
        /// dirty_index(key_hash) of the write.
        pub dirty_index: AtomicU32 => "__u32",
        /// Bytes used in `data`.
        pub len: AtomicU32 => "__u32",
        /// The datagram as sent to the head, kept for resending.
        pub data: UnsafeCell<[u8; MESSAGE_LEN_MAX]> => "__u8[TERN_MESSAGE_LEN_MAX]",
    }
}

wire_struct! {
    /// A transaction held at its coordinator (one way of a
    /// [`HoldBucket`]): the keys it locks here, which of them it counts
    /// dirty, its lease and participants. Read and written only under its
    /// bucket's lock.
    #[repr(C)]
    pub struct HoldSlot {
        /// 1 when the slot holds a transaction, 0 when free.
        pub used: AtomicU32 => "__u32",
        /// Keys in `hashes`.
        pub count: AtomicU32 => "__u32",
        /// The transaction's id: its client,
        pub client_id: AtomicU64 => "__u64",
        /// and its number.
        pub txn_seq: AtomicU64 => "__u64",
        /// The seq of the request that took it (0: taken from the head's report).
        pub taken_at: AtomicU64 => "__u64",
        /// CLOCK_MONOTONIC ns of its latest yes, the lease's start (0: none yet).
        pub prepared_ns: AtomicU64 => "__u64",
        /// Bit i: the dirty entry of `hashes[i]` is counted (a key it writes).
        pub dirty_mask: AtomicU64 => "__u64",
        /// The lease its latest request asked for.
        pub lease_ms: AtomicU32 => "__u32",
        /// Bytes used in `participants`.
        pub participants_len: AtomicU32 => "__u32",
        /// key_hash of every key it locks here, each once.
        pub hashes: [AtomicU32; HOLD_KEYS_MAX] => "__u32[TERN_HOLD_KEYS_MAX]",
        /// Its participants, as its PREPARE (or ACQUIRE) listed them.
        pub participants: UnsafeCell<[u8; HOLD_PARTICIPANTS_LEN]> => "__u8[TERN_HOLD_PARTICIPANTS_LEN]",
    }
}

wire_struct! {
    /// One bucket of a shard's hold table (`holds[local index *
    /// HOLD_BUCKETS + hold_bucket(id)]`): a lock taken by compare-and-swap
    /// (0 to [`HOLD_LOCKED`]) around every look and change, by the kernel
    /// (which hands the datagram up when it finds it taken) and by user
    /// space (which waits).
    #[repr(C)]
    pub struct HoldBucket {
        /// 0, or HOLD_LOCKED while someone looks or changes.
        pub lock: AtomicU64 => "__u64",
        /// The holds, found by comparing ids.
        pub slots: [HoldSlot; HOLD_WAYS] => "struct tern_hold_slot[8]",
    }
}

const _: () = assert!(
    HOLD_WAYS == 8,
    "the C declaration of HoldBucket names 8 ways"
);
const _: () = assert!(core::mem::size_of::<HoldSlot>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<ShardCell>() == 48);
const _: () = assert!(core::mem::size_of::<WindowSlot>() == 40 + MESSAGE_LEN_MAX);
const _: () = assert!(core::mem::size_of::<WindowSlot>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<Endpoint>() == 12);
const _: () = assert!(core::mem::size_of::<ShardRoute>() == 16 + 12 * CHAIN_LEN_MAX);
// The generation is read and written as one aligned 32-bit word.
const _: () = assert!(core::mem::size_of::<ShardRoute>().is_multiple_of(8));

impl std::fmt::Debug for ShardCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCell")
            .field("next_seq", &self.next_seq)
            .field("commit_seq", &self.commit_seq)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HoldSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldSlot")
            .field("used", &self.used)
            .field("client_id", &self.client_id)
            .field("txn_seq", &self.txn_seq)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HoldBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldBucket")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WindowSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowSlot")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

crate::wire_enum! {
    /// Per-CPU counters of the XDP coordinator (`xdp_stats[counter]`).
    pub enum XdpCounter {
        ReadsAny = 0 => "READS_ANY",
        ReadsTail = 1 => "READS_TAIL",
        Writes = 2 => "WRITES",
        Acks = 3 => "ACKS",
        AcksNotInFlight = 4 => "ACKS_NOT_IN_FLIGHT",
        /// Handed to user space: an op the fast path does not handle.
        PassOp = 5 => "PASS_OP",
        /// Handed to user space: a datagram that failed the fast path's checks.
        PassMalformed = 6 => "PASS_MALFORMED",
        /// Handed to user space: a shard this coordinator does not serve.
        PassUnknownShard = 7 => "PASS_UNKNOWN_SHARD",
        /// Handed to user space: a request of another epoch.
        PassEpoch = 8 => "PASS_EPOCH",
        /// Handed to user space: the in-flight window was full.
        PassWindowFull = 9 => "PASS_WINDOW_FULL",
        /// Handed to user space: no learnt MAC address for the client.
        PassNoClientMac = 10 => "PASS_NO_CLIENT_MAC",
        /// Handed to user space: an acknowledgement not from the tail.
        PassNotFromTail = 11 => "PASS_NOT_FROM_TAIL",
        /// Handed to user space: a compare-and-swap lost to other CPUs too often.
        PassContended = 12 => "PASS_CONTENDED",
        /// Handed to user space: a request whose key_hash does not match its key.
        PassBadKeyHash = 13 => "PASS_BAD_KEY_HASH",
        /// Handed to user space: the shard's route was being rewritten.
        PassReconfiguring = 14 => "PASS_RECONFIGURING",
        /// Handed to user space: a key of a slot the shard does not serve here.
        PassSlot = 15 => "PASS_SLOT",
        /// Transaction requests (PREPARE, ACQUIRE, COMMIT, ABORT)
        /// sequenced in the kernel.
        Txns = 16 => "TXNS",
        /// Handed to user space: a transaction's hold bucket was locked by
        /// someone else.
        PassHoldBusy = 17 => "PASS_HOLD_BUSY",
        /// Handed to user space: no room for a transaction's hold (its
        /// bucket full, or more keys than a hold names).
        PassHoldFull = 18 => "PASS_HOLD_FULL",
        /// Dropped: a client request from a source the allow-list leaves out.
        DropNotAllowed = 19 => "DROP_NOT_ALLOWED",
        /// Writes answered at the commit point's acknowledgement (early
        /// commit).
        EarlyAcks = 20 => "EARLY_ACKS",
        /// Handed to user space: a dirty read while the commit point may
        /// still lack writes answered before it was one (early commit).
        PassPointBehind = 21 => "PASS_POINT_BEHIND",
        /// Fan-out: acknowledgements counted that did not complete their
        /// write (other replicas still to acknowledge), and duplicates.
        FanoutAcks = 22 => "FANOUT_ACKS",
        /// Handed to user space: a fan-out acknowledgement of a write whose
        /// acknowledgements were counted under an earlier epoch.
        PassFanoutEpoch = 23 => "PASS_FANOUT_EPOCH",
    }
}

/// Number of [`XdpCounter`]s.
pub const XDP_COUNTER_COUNT: u32 = XdpCounter::ALL.len() as u32;
