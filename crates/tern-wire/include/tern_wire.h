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
#define TERN_WIRE_VERSION            1
#define TERN_HEADER_LEN              72
#define TERN_KEY_LEN_MAX             256
#define TERN_VALUE_LEN_MAX           1024
#define TERN_MESSAGE_LEN_MAX         1352
#define TERN_SLOT_COUNT              16384
#define TERN_DIRTY_SLOTS             65536

#define TERN_OP_GET                  1
#define TERN_OP_PUT                  2
#define TERN_OP_DELETE               3
#define TERN_OP_CAS                  4
#define TERN_OP_NOOP                 5
#define TERN_OP_PING                 8
#define TERN_OP_STATS                9
#define TERN_OP_REPLY                16
#define TERN_OP_REPLICATE            17
#define TERN_OP_ACK                  18
#define TERN_OP_RETRANSMIT           19
#define TERN_OP_SEQ_PROBE            20
#define TERN_OP_SEQ_REPORT           21

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

#define TERN_EFFECT_NONE             0
#define TERN_EFFECT_PUT              1
#define TERN_EFFECT_DELETE           2

#define TERN_FLAG_TAIL_READ          1
#define TERN_FLAG_RESENT             2

struct tern_header {
	__u16 magic;           /* @0  Always MAGIC. */
	__u8 version;          /* @2  Always WIRE_VERSION. */
	__u8 op;               /* @3  An Op. */
	__u8 status;           /* @4  A Status (replies, acks, replication). */
	__u8 flags;            /* @5  Bits of flags::*. */
	__u8 effect;           /* @6  An Effect (replication and acks). */
	__u8 reserved0;        /* @7  Zero. */
	__u16 key_len;         /* @8  Length of the key that follows the header. */
	__u16 value_len;       /* @10 Length of the value that follows the key. */
	__be16 reply_port;     /* @12 UDP port of the client to answer, network byte order. */
	__u16 reserved1;       /* @14 Zero. */
	__be32 reply_ip;       /* @16 IPv4 address of the client to answer, network byte order. */
	__u32 shard;           /* @20 Shard the key belongs to. */
	__u32 epoch;           /* @24 Epoch of the sender's view of the shard (DESIGN rule 7). */
	__u32 key_hash;        /* @28 key_hash(key); indexes the dirty table (DESIGN rule 3). */
	__u64 client_id;       /* @32 Client identity for deduplication (DESIGN rule 6). */
	__u64 request_id;      /* @40 Per-client request number; retries reuse it. */
	__u64 seq;             /* @48 Write sequence number, or the read stamp of a forwarded read. */
	__u64 commit_seq;      /* @56 Highest sequence number acknowledged by the tail, as the sender knows it. */
	__u64 version_field;   /* @64 CAS: expected version. Replies: the version read or written. */
} __attribute__((packed));

_Static_assert(sizeof(struct tern_header) == 72, "tern_header size");
_Static_assert(__builtin_offsetof(struct tern_header, magic) == 0, "magic offset");
_Static_assert(__builtin_offsetof(struct tern_header, version) == 2, "version offset");
_Static_assert(__builtin_offsetof(struct tern_header, op) == 3, "op offset");
_Static_assert(__builtin_offsetof(struct tern_header, status) == 4, "status offset");
_Static_assert(__builtin_offsetof(struct tern_header, flags) == 5, "flags offset");
_Static_assert(__builtin_offsetof(struct tern_header, effect) == 6, "effect offset");
_Static_assert(__builtin_offsetof(struct tern_header, reserved0) == 7, "reserved0 offset");
_Static_assert(__builtin_offsetof(struct tern_header, key_len) == 8, "key_len offset");
_Static_assert(__builtin_offsetof(struct tern_header, value_len) == 10, "value_len offset");
_Static_assert(__builtin_offsetof(struct tern_header, reply_port) == 12, "reply_port offset");
_Static_assert(__builtin_offsetof(struct tern_header, reserved1) == 14, "reserved1 offset");
_Static_assert(__builtin_offsetof(struct tern_header, reply_ip) == 16, "reply_ip offset");
_Static_assert(__builtin_offsetof(struct tern_header, shard) == 20, "shard offset");
_Static_assert(__builtin_offsetof(struct tern_header, epoch) == 24, "epoch offset");
_Static_assert(__builtin_offsetof(struct tern_header, key_hash) == 28, "key_hash offset");
_Static_assert(__builtin_offsetof(struct tern_header, client_id) == 32, "client_id offset");
_Static_assert(__builtin_offsetof(struct tern_header, request_id) == 40, "request_id offset");
_Static_assert(__builtin_offsetof(struct tern_header, seq) == 48, "seq offset");
_Static_assert(__builtin_offsetof(struct tern_header, commit_seq) == 56, "commit_seq offset");
_Static_assert(__builtin_offsetof(struct tern_header, version_field) == 64, "version_field offset");

#endif /* TERN_WIRE_H */
