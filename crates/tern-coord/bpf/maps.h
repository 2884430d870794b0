/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The maps of the XDP coordinator and the shared-memory primitives. The
 * mmapable maps (shard_routes, shard_cells, dirty_counts, window,
 * shard_slots, holds) are laid
 * out by tern_wire::maps and mapped by the user-space coordinator, so both
 * paths work on the same memory (crates/tern-proto/src/shared.rs).
 */
#ifndef TERN_MAPS_H
#define TERN_MAPS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "tern_wire.h"

#define READ_SHARED(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_SHARED(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define BARRIER() asm volatile("" ::: "memory")

/* A window slot's fan-out acks word (tern_wire::maps::fanout_acks::pack). */
static __always_inline __u64 tern_fanout_pack(__u32 epoch, __u64 seq, __u64 mask)
{
	return (((__u64)epoch & TERN_FANOUT_EPOCH_MASK) << TERN_FANOUT_EPOCH_SHIFT) |
	       ((seq & TERN_FANOUT_SEQ_MASK) << TERN_FANOUT_MASK_BITS) | mask;
}


/* This coordinator's address (key 0); written by user space before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tern_endpoint);
} self_endpoint SEC(".maps");

/* Shards served here, by shard id; written by the control path only, in
 * place through its mapping, under the seqlock of route.h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TERN_SHARD_ID_MAX);
	__type(key, __u32);
	__type(value, struct tern_shard_route);
} shard_routes SEC(".maps");

/* Hot counters per local shard (max_entries set to the shard count at load). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tern_shard_cell);
} shard_cells SEC(".maps");

/* Dirty counts: TERN_DIRTY_SLOTS entries per local shard. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TERN_DIRTY_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} dirty_counts SEC(".maps");

/* The slots each local shard serves here: a bitmap of TERN_SLOT_WORDS words
 * per local shard (bit slot % 64 of word slot / 64), written by the control
 * path when the shard's slots change. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TERN_SLOT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} shard_slots SEC(".maps");

/* In-flight windows: TERN_INFLIGHT_WRITES_MAX slots per local shard. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TERN_INFLIGHT_WRITES_MAX);
	__type(key, __u32);
	__type(value, struct tern_window_slot);
} window SEC(".maps");

/* The client networks served (tern_proto::allow), when allow_filter[0]
 * is 1: longest-prefix match on the source address. */
struct allow_key {
	__u32 prefixlen;
	__be32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, TERN_ALLOW_NETWORKS_MAX);
	__type(key, struct allow_key);
	__type(value, __u8);
} allowed_clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} allow_filter SEC(".maps");

/* Hold tables: TERN_HOLD_BUCKETS buckets per local shard, each under its
 * own lock (txn.h, crates/tern-proto/src/holds.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TERN_HOLD_BUCKETS);
	__type(key, __u32);
	__type(value, struct tern_hold_bucket);
} holds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TERN_XDP_COUNTER_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} xdp_stats SEC(".maps");

struct client_mac {
	__u8 mac[ETH_ALEN];
	__u8 reserved[2];
};

/* Ethernet address of each client seen, learnt from its requests, so that
 * acknowledgements can be turned into replies in the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TERN_CLIENT_MACS_MAX);
	__type(key, __be32);
	__type(value, struct client_mac);
} client_macs SEC(".maps");


#endif /* TERN_MAPS_H */
