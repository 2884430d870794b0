/* Tern wire format for C (eBPF) programs.
 * GENERATED from crates/tern-wire by
 *   cargo run -p tern-wire --bin tern-wire-gen-header
 * Do not edit: a test fails when this file and the Rust definitions differ.
 * Integers are little-endian except the __be fields (network byte order). */
#ifndef TERN_WIRE_H
#define TERN_WIRE_H

#include <linux/types.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tern_wire.h reads little-endian fields natively"
#endif

#define TERN_MAGIC                   0x4e54
#define TERN_WIRE_VERSION            2
#define TERN_HEADER_LEN              72
#define TERN_KEY_LEN_MAX             256
#define TERN_VALUE_LEN_MAX           1024
#define TERN_EXTENSIONS_LEN_MAX      64
#define TERN_MESSAGE_LEN_MAX         1416
#define TERN_SLOT_COUNT              16384
#define TERN_DIRTY_SLOTS             65536
#define TERN_DIRTY_INDEX_MASK        0xffff
#define TERN_KEY_HASH_OFFSET_BASIS   0x811c9dc5u
#define TERN_KEY_HASH_PRIME          0x01000193u

#define TERN_OP_GET                  1
#define TERN_OP_PUT                  2
#define TERN_OP_DELETE               3
#define TERN_OP_CAS                  4
#define TERN_OP_NOOP                 5
#define TERN_OP_INCRBY               6
#define TERN_OP_APPEND               7
#define TERN_OP_PING                 8
#define TERN_OP_STATS                9
#define TERN_OP_INSTALL              10
#define TERN_OP_REBASE               11
#define TERN_OP_DROP_SLOTS           12
#define TERN_OP_FREEZE               13
#define TERN_OP_INSTALL_OUTCOME      14
#define TERN_OP_UNINSTALL            15
#define TERN_OP_REPLY                16
#define TERN_OP_REPLICATE            17
#define TERN_OP_ACK                  18
#define TERN_OP_RETRANSMIT           19
#define TERN_OP_SEQ_PROBE            20
#define TERN_OP_SEQ_REPORT           21
#define TERN_OP_INSTALL_KEYS         22
#define TERN_OP_EXPIRE               23
#define TERN_OP_EDIT                 24
#define TERN_OP_MULTI                25
#define TERN_OP_PREPARE              26
#define TERN_OP_COMMIT               27
#define TERN_OP_ABORT                28
#define TERN_OP_RESOLVE              29
#define TERN_OP_TXN_REPORT           30
#define TERN_OP_ACQUIRE              31

#define TERN_STATUS_OK               0
#define TERN_STATUS_NOT_FOUND        1
#define TERN_STATUS_CAS_MISMATCH     2
#define TERN_STATUS_STALE_EPOCH      3
#define TERN_STATUS_WRONG_SHARD      4
#define TERN_STATUS_TRY_AGAIN        5
#define TERN_STATUS_MALFORMED        6
#define TERN_STATUS_UNSUPPORTED_VERSION 7
#define TERN_STATUS_UNKNOWN_OP       8
#define TERN_STATUS_TOO_LARGE        9
#define TERN_STATUS_BAD_KEY_HASH     10
#define TERN_STATUS_NOT_INTEGER      11
#define TERN_STATUS_FORGOTTEN        12
#define TERN_STATUS_NOT_FINITE       13
#define TERN_STATUS_VALUE_MISSING    14
#define TERN_STATUS_LOCKED           15
#define TERN_STATUS_TXN_ABORTED      16
#define TERN_STATUS_TXN_COMMITTED    17
#define TERN_STATUS_TXN_PREPARED     18
#define TERN_STATUS_TXN_UNKNOWN      19

#define TERN_EFFECT_NONE             0
#define TERN_EFFECT_PUT              1
#define TERN_EFFECT_DELETE           2
#define TERN_EFFECT_INSTALL          3
#define TERN_EFFECT_REBASE           4
#define TERN_EFFECT_DROP_SLOTS       5
#define TERN_EFFECT_OUTCOME          6
#define TERN_EFFECT_INSTALL_KEYS     7
#define TERN_EFFECT_MULTI            8
#define TERN_EFFECT_PREPARE          9
#define TERN_EFFECT_COMMIT           10
#define TERN_EFFECT_ABORT            11
#define TERN_EFFECT_ACQUIRE          12

#define TERN_FLAG_TAIL_READ          1
#define TERN_FLAG_RESENT             2
#define TERN_FLAG_IF_EXISTS          4
#define TERN_FLAG_RETURN_OLD         8
#define TERN_FLAG_RETURN_NEW         16
#define TERN_FLAG_ANSWER_ABSENT      32
#define TERN_FLAG_OLD_EXPIRED        64
#define TERN_FLAG_CLIENT_VALUE       128
#define TERN_FLAGS_WRITE_OPTIONS     28
#define TERN_FLAGS_REPLY_OPTIONS     32

#define TERN_OP_CLASS_CLIENT_READ    1
#define TERN_OP_CLASS_CLIENT_WRITE   2
#define TERN_OP_CLASS_CARRIES_VALUE  4
#define TERN_OP_CLASS_FAST_PATH      8
#define TERN_OP_CLASS_ADMIN          16
#define TERN_OP_CLASS_INTERNAL       32
#define TERN_OP_CLASS_ANSWER         64
#define TERN_OP_CLASS_ANY_SLOT       128

#define TERN_EXT_MAP_VERSION         1
#define TERN_EXT_EXPIRY              2
#define TERN_EXT_LARGE               4
#define TERN_EXTENSIONS_KNOWN        7

#define TERN_INFLIGHT_WRITES_MAX     4096
#define TERN_SHARD_ID_MAX            64
#define TERN_CHAIN_LEN_MAX           8
#define TERN_CAS_ATTEMPTS_MAX        8
#define TERN_WINDOW_MULTI            0x80000000u
#define TERN_ROUTE_EARLY             1
#define TERN_ROUTE_FANOUT            2
#define TERN_ROUTE_QUORUM_SHIFT      4
#define TERN_FANOUT_MASK_BITS        8
#define TERN_FANOUT_SEQ_MASK         0xffffffffffull
#define TERN_FANOUT_EPOCH_MASK       0xffffull
#define TERN_FANOUT_EPOCH_SHIFT      48
#define TERN_CLIENT_MACS_MAX         65536
#define TERN_SLOT_WORDS              256
#define TERN_MULTI_ITEMS_MAX         64
#define TERN_MULTI_ITEM_HEADER_LEN   14
#define TERN_MULTI_KIND_FIRST        1
#define TERN_MULTI_KIND_LAST         6
#define TERN_MULTI_KIND_CHECK        1
#define TERN_MULTI_KIND_GET          6
#define TERN_MULTI_FLAG_FOR_UPDATE   4
#define TERN_MULTI_ITEM_FLAGS        0x4000000030000ull
#define TERN_MULTI_KINDS_WITH_VALUE  0x34u
#define TERN_ALLOW_NETWORKS_MAX      256
#define TERN_HOLD_BUCKETS            128
#define TERN_HOLD_WAYS               8
#define TERN_HOLD_KEYS_MAX           64
#define TERN_HOLD_PARTICIPANTS_LEN   168
#define TERN_HOLD_LOCKED             1
#define TERN_HOLD_MIX                0x9e3779b97f4a7c15ull
#define TERN_TXN_ID_LEN              16
#define TERN_TXN_LEASE_MS_MIN        50
#define TERN_TXN_LEASE_MS_MAX        60000
#define TERN_TXN_PARTICIPANTS_MAX    16
#define TERN_TXN_PARTICIPANT_LEN     10
#define TERN_TXN_PREPARE_FIXED_LEN   21
#define TERN_XDP_COUNTER_READS_ANY   0
#define TERN_XDP_COUNTER_READS_TAIL  1
#define TERN_XDP_COUNTER_WRITES      2
#define TERN_XDP_COUNTER_ACKS        3
#define TERN_XDP_COUNTER_ACKS_NOT_IN_FLIGHT 4
#define TERN_XDP_COUNTER_PASS_OP     5
#define TERN_XDP_COUNTER_PASS_MALFORMED 6
#define TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD 7
#define TERN_XDP_COUNTER_PASS_EPOCH  8
#define TERN_XDP_COUNTER_PASS_WINDOW_FULL 9
#define TERN_XDP_COUNTER_PASS_NO_CLIENT_MAC 10
#define TERN_XDP_COUNTER_PASS_NOT_FROM_TAIL 11
#define TERN_XDP_COUNTER_PASS_CONTENDED 12
#define TERN_XDP_COUNTER_PASS_BAD_KEY_HASH 13
#define TERN_XDP_COUNTER_PASS_RECONFIGURING 14
#define TERN_XDP_COUNTER_PASS_SLOT   15
#define TERN_XDP_COUNTER_TXNS        16
#define TERN_XDP_COUNTER_PASS_HOLD_BUSY 17
#define TERN_XDP_COUNTER_PASS_HOLD_FULL 18
#define TERN_XDP_COUNTER_DROP_NOT_ALLOWED 19
#define TERN_XDP_COUNTER_EARLY_ACKS  20
#define TERN_XDP_COUNTER_PASS_POINT_BEHIND 21
#define TERN_XDP_COUNTER_FANOUT_ACKS 22
#define TERN_XDP_COUNTER_PASS_FANOUT_EPOCH 23
#define TERN_XDP_COUNTER_COUNT       24

struct tern_header {
	__u16 magic;                     /* @0  Always MAGIC. */
	__u8 version;                    /* @2  Always WIRE_VERSION. */
	__u8 op;                         /* @3  An Op. */
	__u8 status;                     /* @4  A Status (replies, acks, replication). */
	__u8 flags;                      /* @5  Bits of flags::*. */
	__u8 effect;                     /* @6  An Effect (replication and acks). */
	__u8 extensions;                 /* @7  Bits of ext::*: the extensions between the header and the key. */
	__u16 key_len;                   /* @8  Length of the key that follows the header. */
	__u16 value_len;                 /* @10 Length of the value that follows the key. */
	__be16 reply_port;               /* @12 UDP port of the client to answer, network byte order. */
	__u16 reserved;                  /* @14 Zero; a receiver refuses anything else (room for later versions). */
	__be32 reply_ip;                 /* @16 IPv4 address of the client to answer, network byte order. */
	__u32 shard;                     /* @20 Shard the key belongs to. */
	__u32 epoch;                     /* @24 Epoch of the sender's view of the shard (DESIGN rule 7). */
	__u32 key_hash;                  /* @28 key_hash(key); indexes the dirty table (DESIGN rule 3). */
	__u64 client_id;                 /* @32 Client identity for deduplication (DESIGN rule 6). */
	__u64 request_id;                /* @40 Per-client request number; retries reuse it. */
	__u64 seq;                       /* @48 Write sequence number, or the read stamp of a forwarded read. */
	__u64 commit_seq;                /* @56 Highest sequence number acknowledged by the tail, as the sender knows it. */
	__u64 argument;                  /* @64 The op's argument, read and written by the accessor named for the op. */
} __attribute__((packed));

_Static_assert(sizeof(struct tern_header) == 72, "tern_header size");
_Static_assert(__builtin_offsetof(struct tern_header, magic) == 0, "tern_header.magic offset");
_Static_assert(__builtin_offsetof(struct tern_header, version) == 2, "tern_header.version offset");
_Static_assert(__builtin_offsetof(struct tern_header, op) == 3, "tern_header.op offset");
_Static_assert(__builtin_offsetof(struct tern_header, status) == 4, "tern_header.status offset");
_Static_assert(__builtin_offsetof(struct tern_header, flags) == 5, "tern_header.flags offset");
_Static_assert(__builtin_offsetof(struct tern_header, effect) == 6, "tern_header.effect offset");
_Static_assert(__builtin_offsetof(struct tern_header, extensions) == 7, "tern_header.extensions offset");
_Static_assert(__builtin_offsetof(struct tern_header, key_len) == 8, "tern_header.key_len offset");
_Static_assert(__builtin_offsetof(struct tern_header, value_len) == 10, "tern_header.value_len offset");
_Static_assert(__builtin_offsetof(struct tern_header, reply_port) == 12, "tern_header.reply_port offset");
_Static_assert(__builtin_offsetof(struct tern_header, reserved) == 14, "tern_header.reserved offset");
_Static_assert(__builtin_offsetof(struct tern_header, reply_ip) == 16, "tern_header.reply_ip offset");
_Static_assert(__builtin_offsetof(struct tern_header, shard) == 20, "tern_header.shard offset");
_Static_assert(__builtin_offsetof(struct tern_header, epoch) == 24, "tern_header.epoch offset");
_Static_assert(__builtin_offsetof(struct tern_header, key_hash) == 28, "tern_header.key_hash offset");
_Static_assert(__builtin_offsetof(struct tern_header, client_id) == 32, "tern_header.client_id offset");
_Static_assert(__builtin_offsetof(struct tern_header, request_id) == 40, "tern_header.request_id offset");
_Static_assert(__builtin_offsetof(struct tern_header, seq) == 48, "tern_header.seq offset");
_Static_assert(__builtin_offsetof(struct tern_header, commit_seq) == 56, "tern_header.commit_seq offset");
_Static_assert(__builtin_offsetof(struct tern_header, argument) == 64, "tern_header.argument offset");

struct tern_ext_map_version {
	__u64 version;                   /* @0  Version of the map the sender acts on. */
} __attribute__((packed));

_Static_assert(sizeof(struct tern_ext_map_version) == 8, "tern_ext_map_version size");
_Static_assert(__builtin_offsetof(struct tern_ext_map_version, version) == 0, "tern_ext_map_version.version offset");

struct tern_ext_expiry {
	__u64 deadline_ms;               /* @0  Unix time in milliseconds, or a duration (`expiry::RELATIVE`). */
	__u8 mode;                       /* @8  Bits of `expiry`. */
} __attribute__((packed));

_Static_assert(sizeof(struct tern_ext_expiry) == 9, "tern_ext_expiry size");
_Static_assert(__builtin_offsetof(struct tern_ext_expiry, deadline_ms) == 0, "tern_ext_expiry.deadline_ms offset");
_Static_assert(__builtin_offsetof(struct tern_ext_expiry, mode) == 8, "tern_ext_expiry.mode offset");

struct tern_ext_large {
	__u32 length;                    /* @0  The value's length in bytes. */
	__u32 checksum;                  /* @4  CRC-32 (IEEE) of the value. */
	__be32 holder_ip;                /* @8  On answers, the IPv4 address of the replica holding the value (else 0). */
	__be16 holder_port;              /* @12 On answers, that replica's port. */
} __attribute__((packed));

_Static_assert(sizeof(struct tern_ext_large) == 14, "tern_ext_large size");
_Static_assert(__builtin_offsetof(struct tern_ext_large, length) == 0, "tern_ext_large.length offset");
_Static_assert(__builtin_offsetof(struct tern_ext_large, checksum) == 4, "tern_ext_large.checksum offset");
_Static_assert(__builtin_offsetof(struct tern_ext_large, holder_ip) == 8, "tern_ext_large.holder_ip offset");
_Static_assert(__builtin_offsetof(struct tern_ext_large, holder_port) == 12, "tern_ext_large.holder_port offset");

struct tern_endpoint {
	__be32 ip;                       /* @0  IPv4 address, network byte order. */
	__be16 port;                     /* @4  UDP port, network byte order. */
	__u8 mac[6];                     /* @6  Ethernet address of its interface. */
} __attribute__((packed));

_Static_assert(sizeof(struct tern_endpoint) == 12, "tern_endpoint size");
_Static_assert(__builtin_offsetof(struct tern_endpoint, ip) == 0, "tern_endpoint.ip offset");
_Static_assert(__builtin_offsetof(struct tern_endpoint, port) == 4, "tern_endpoint.port offset");
_Static_assert(__builtin_offsetof(struct tern_endpoint, mac) == 6, "tern_endpoint.mac offset");

struct tern_shard_route {
	__u32 generation;                /* @0  Seqlock: odd while the control path rewrites the route. */
	__u8 present;                    /* @4  1 when this coordinator serves the shard. */
	__u8 replica_count;              /* @5  Number of replicas in `replicas`, head first. */
	__u8 commit_index;               /* @6  Index in `replicas` of the commit point (the K-th replica under early commit, else the tail). */
	__u8 replication;                /* @7  ROUTE_EARLY when the shard commits early (dirty reads wait for the cell's point barrier), ROUTE_FANOUT under fan-out replication (every replica acknowledges; reads are stamped); under fan-out, K in the bits from ROUTE_QUORUM_SHIFT (a write answered at its K-th acknowledgement; 0: at the last). */
	__u32 local_index;               /* @8  Index of the shard's cell, dirty table and window in the shared maps. */
	__u32 epoch;                     /* @12 The shard's epoch; requests of another epoch go to user space. */
	struct tern_endpoint replicas[8]; /* @16 The chain, head first. */
};

_Static_assert(sizeof(struct tern_shard_route) == 112, "tern_shard_route size");
_Static_assert(__builtin_offsetof(struct tern_shard_route, generation) == 0, "tern_shard_route.generation offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, present) == 4, "tern_shard_route.present offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, replica_count) == 5, "tern_shard_route.replica_count offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, commit_index) == 6, "tern_shard_route.commit_index offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, replication) == 7, "tern_shard_route.replication offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, local_index) == 8, "tern_shard_route.local_index offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, epoch) == 12, "tern_shard_route.epoch offset");
_Static_assert(__builtin_offsetof(struct tern_shard_route, replicas) == 16, "tern_shard_route.replicas offset");

struct tern_shard_cell {
	__u64 next_seq;                  /* @0  Next sequence number to assign (DESIGN rule 1). */
	__u64 commit_seq;                /* @8  Highest sequence number acknowledged by the tail (rule 4). */
	__u64 all_dirty;                 /* @16 Non-zero while every key counts as dirty (rule 8). */
	__u64 next_replica;              /* @24 Round-robin counter for clean reads. */
	__u64 point_applied;             /* @32 Early commit: the highest seq the commit point acknowledged (it holds every seq up to it). */
	__u64 point_barrier;             /* @40 Early commit: dirty reads go to the commit point once max(point_applied, commit_seq) reaches this. */
};

_Static_assert(sizeof(struct tern_shard_cell) == 48, "tern_shard_cell size");
_Static_assert(__builtin_offsetof(struct tern_shard_cell, next_seq) == 0, "tern_shard_cell.next_seq offset");
_Static_assert(__builtin_offsetof(struct tern_shard_cell, commit_seq) == 8, "tern_shard_cell.commit_seq offset");
_Static_assert(__builtin_offsetof(struct tern_shard_cell, all_dirty) == 16, "tern_shard_cell.all_dirty offset");
_Static_assert(__builtin_offsetof(struct tern_shard_cell, next_replica) == 24, "tern_shard_cell.next_replica offset");
_Static_assert(__builtin_offsetof(struct tern_shard_cell, point_applied) == 32, "tern_shard_cell.point_applied offset");
_Static_assert(__builtin_offsetof(struct tern_shard_cell, point_barrier) == 40, "tern_shard_cell.point_barrier offset");

struct tern_hold_slot {
	__u32 used;                      /* @0  1 when the slot holds a transaction, 0 when free. */
	__u32 count;                     /* @4  Keys in `hashes`. */
	__u64 client_id;                 /* @8  The transaction's id: its client, */
	__u64 txn_seq;                   /* @16 and its number. */
	__u64 taken_at;                  /* @24 The seq of the request that took it (0: taken from the head's report). */
	__u64 prepared_ns;               /* @32 CLOCK_MONOTONIC ns of its latest yes, the lease's start (0: none yet). */
	__u64 dirty_mask;                /* @40 Bit i: the dirty entry of `hashes[i]` is counted (a key it writes). */
	__u32 lease_ms;                  /* @48 The lease its latest request asked for. */
	__u32 participants_len;          /* @52 Bytes used in `participants`. */
	__u32 hashes[TERN_HOLD_KEYS_MAX]; /* @56 key_hash of every key it locks here, each once. */
	__u8 participants[TERN_HOLD_PARTICIPANTS_LEN]; /* @312 Its participants, as its PREPARE (or ACQUIRE) listed them. */
};

_Static_assert(sizeof(struct tern_hold_slot) == 480, "tern_hold_slot size");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, used) == 0, "tern_hold_slot.used offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, count) == 4, "tern_hold_slot.count offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, client_id) == 8, "tern_hold_slot.client_id offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, txn_seq) == 16, "tern_hold_slot.txn_seq offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, taken_at) == 24, "tern_hold_slot.taken_at offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, prepared_ns) == 32, "tern_hold_slot.prepared_ns offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, dirty_mask) == 40, "tern_hold_slot.dirty_mask offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, lease_ms) == 48, "tern_hold_slot.lease_ms offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, participants_len) == 52, "tern_hold_slot.participants_len offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, hashes) == 56, "tern_hold_slot.hashes offset");
_Static_assert(__builtin_offsetof(struct tern_hold_slot, participants) == 312, "tern_hold_slot.participants offset");

struct tern_hold_bucket {
	__u64 lock;                      /* @0  0, or HOLD_LOCKED while someone looks or changes. */
	struct tern_hold_slot slots[8];  /* @8  The holds, found by comparing ids. */
};

_Static_assert(sizeof(struct tern_hold_bucket) == 3848, "tern_hold_bucket size");
_Static_assert(__builtin_offsetof(struct tern_hold_bucket, lock) == 0, "tern_hold_bucket.lock offset");
_Static_assert(__builtin_offsetof(struct tern_hold_bucket, slots) == 8, "tern_hold_bucket.slots offset");

struct tern_window_slot {
	__u64 seq;                       /* @0  The write in flight here, 0 when free. */
	__u64 sent_ns;                   /* @8  CLOCK_MONOTONIC time of the last send, in nanoseconds. */
	__u64 answered;                  /* @16 Early commit: `seq` once the commit point's acknowledgement answered the write (0: not yet). */
	__u64 acks;                      /* @24 Fan-out: the replicas that acknowledged the write (`fanout_acks`), set by the writer before it publishes `seq`. */
	__u32 dirty_index;               /* @32 dirty_index(key_hash) of the write. */
	__u32 len;                       /* @36 Bytes used in `data`. */
	__u8 data[TERN_MESSAGE_LEN_MAX]; /* @40 The datagram as sent to the head, kept for resending. */
};

_Static_assert(sizeof(struct tern_window_slot) == 1456, "tern_window_slot size");
_Static_assert(__builtin_offsetof(struct tern_window_slot, seq) == 0, "tern_window_slot.seq offset");
_Static_assert(__builtin_offsetof(struct tern_window_slot, sent_ns) == 8, "tern_window_slot.sent_ns offset");
_Static_assert(__builtin_offsetof(struct tern_window_slot, answered) == 16, "tern_window_slot.answered offset");
_Static_assert(__builtin_offsetof(struct tern_window_slot, acks) == 24, "tern_window_slot.acks offset");
_Static_assert(__builtin_offsetof(struct tern_window_slot, dirty_index) == 32, "tern_window_slot.dirty_index offset");
_Static_assert(__builtin_offsetof(struct tern_window_slot, len) == 36, "tern_window_slot.len offset");
_Static_assert(__builtin_offsetof(struct tern_window_slot, data) == 40, "tern_window_slot.data offset");

/* The TERN_OP_CLASS_* bits of op; 0 when op is unknown. */
static inline __attribute__((always_inline)) __u8 tern_op_classes(__u8 op)
{
	switch (op) {
	case TERN_OP_GET:
		return TERN_OP_CLASS_CLIENT_READ | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_PUT:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_DELETE:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_CAS:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_NOOP:
		return TERN_OP_CLASS_INTERNAL;
	case TERN_OP_INCRBY:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_APPEND:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_PING:
		return TERN_OP_CLASS_ADMIN;
	case TERN_OP_STATS:
		return TERN_OP_CLASS_ADMIN;
	case TERN_OP_INSTALL:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_REBASE:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_DROP_SLOTS:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_FREEZE:
		return TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_INTERNAL;
	case TERN_OP_INSTALL_OUTCOME:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_UNINSTALL:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_REPLY:
		return TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_INTERNAL | TERN_OP_CLASS_ANSWER;
	case TERN_OP_REPLICATE:
		return TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_INTERNAL;
	case TERN_OP_ACK:
		return TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH | TERN_OP_CLASS_INTERNAL;
	case TERN_OP_RETRANSMIT:
		return TERN_OP_CLASS_INTERNAL;
	case TERN_OP_SEQ_PROBE:
		return TERN_OP_CLASS_INTERNAL;
	case TERN_OP_SEQ_REPORT:
		return TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_INTERNAL;
	case TERN_OP_INSTALL_KEYS:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_EXPIRE:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_EDIT:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_MULTI:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_PREPARE:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	case TERN_OP_COMMIT:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_ABORT:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_RESOLVE:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_ANY_SLOT;
	case TERN_OP_TXN_REPORT:
		return TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_INTERNAL;
	case TERN_OP_ACQUIRE:
		return TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_CARRIES_VALUE | TERN_OP_CLASS_FAST_PATH;
	default:
		return 0;
	}
}

/* Bytes of the extension area that mask names (known bits only). */
static inline __attribute__((always_inline)) __u32 tern_extensions_len(__u8 mask)
{
	__u32 len = 0;

	if (mask & TERN_EXT_MAP_VERSION)
		len += 8;
	if (mask & TERN_EXT_EXPIRY)
		len += 9;
	if (mask & TERN_EXT_LARGE)
		len += 14;
	return len;
}

/* Whether an op of these TERN_OP_CLASS_* bits may carry every extension of mask. */
static inline __attribute__((always_inline)) int tern_extensions_allowed(__u8 classes, __u8 mask)
{
	if ((mask & TERN_EXT_MAP_VERSION) && !(classes & (TERN_OP_CLASS_ANSWER)))
		return 0;
	if ((mask & TERN_EXT_EXPIRY) && !(classes & (TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_INTERNAL | TERN_OP_CLASS_ANSWER)))
		return 0;
	if ((mask & TERN_EXT_LARGE) && !(classes & (TERN_OP_CLASS_CLIENT_WRITE | TERN_OP_CLASS_INTERNAL | TERN_OP_CLASS_ANSWER)))
		return 0;
	return 1;
}

/* Whether value is a known status: one this version of the wire defines. */
static inline __attribute__((always_inline)) int tern_status_known(__u8 value)
{
	switch (value) {
	case 0:
	case 1:
	case 2:
	case 3:
	case 4:
	case 5:
	case 6:
	case 7:
	case 8:
	case 9:
	case 10:
	case 11:
	case 12:
	case 13:
	case 14:
	case 15:
	case 16:
	case 17:
	case 18:
	case 19:
		return 1;
	default:
		return 0;
	}
}

/* Whether value is a known effect: one this version of the wire defines. */
static inline __attribute__((always_inline)) int tern_effect_known(__u8 value)
{
	switch (value) {
	case 0:
	case 1:
	case 2:
	case 3:
	case 4:
	case 5:
	case 6:
	case 7:
	case 8:
	case 9:
	case 10:
	case 11:
	case 12:
		return 1;
	default:
		return 0;
	}
}

#endif /* TERN_WIRE_H */
