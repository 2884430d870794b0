/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Routes: how the fast path reads the chain of a shard that the control path
 * may rewrite at any moment (a reconfiguration in place).
 *
 * A route is a seqlock. User space (tern-coord/src/xdp.rs, `write_route`)
 * makes `generation` odd, rewrites the route in place through its mapping,
 * then makes it even again. The fast path reads the generation first (odd:
 * hand over to user space), copies what it needs of the route onto its
 * stack, and checks the generation again before it changes any state; if it
 * moved, the datagram goes to user space, which serves it with the
 * configuration it already has. So a torn route (the head's address with
 * another replica's MAC) is never used. A route read whole but stale is
 * harmless: a write sent to a replica that has left is resent to the new
 * head from the window, an acknowledgement from a departed tail is true of
 * every survivor before it (chain replication's prefix property).
 */
#ifndef TERN_ROUTE_H
#define TERN_ROUTE_H

#include "maps.h"

/* What a handler may use of a route, read under its seqlock. */
struct route_view {
	const struct tern_shard_route *route;
	__u32 generation;
	__u32 local_index;
	__u32 epoch;
	__u32 replica_count;
	/* The commit point (the tail, or the K-th replica under early commit). */
	__u32 commit_index;
	/* Non-zero when the shard commits early (the point barrier applies). */
	__u32 early;
	/* Non-zero under fan-out replication (every replica acknowledges,
	 * reads are stamped). */
	__u32 fanout;
	/* Under fan-out, the acknowledgement that answers a write early (K;
	 * 0: none, the last one answers). */
	__u32 quorum;
};

/* Reads the scalar fields of the shard's route; 0, or the counter under
 * which to hand the datagram to user space. */
static __always_inline __u32 read_route(const struct tern_header *tern, struct route_view *view)
{
	__u32 shard = tern->shard;
	const struct tern_shard_route *route;

	if (shard >= TERN_SHARD_ID_MAX)
		return TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD;
	route = bpf_map_lookup_elem(&shard_routes, &shard);
	if (!route)
		return TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD;
	view->route = route;
	view->generation = READ_SHARED(route->generation);
	if (view->generation & 1)
		return TERN_XDP_COUNTER_PASS_RECONFIGURING;
	BARRIER();
	view->local_index = READ_SHARED(route->local_index);
	view->epoch = READ_SHARED(route->epoch);
	view->replica_count = READ_SHARED(route->replica_count);
	view->commit_index = READ_SHARED(route->commit_index);
	view->early = READ_SHARED(route->replication) & TERN_ROUTE_EARLY;
	view->fanout = READ_SHARED(route->replication) & TERN_ROUTE_FANOUT;
	view->quorum = READ_SHARED(route->replication) >> TERN_ROUTE_QUORUM_SHIFT;
	if (!READ_SHARED(route->present) || view->replica_count == 0 ||
	    view->replica_count > TERN_CHAIN_LEN_MAX || view->commit_index >= view->replica_count)
		return TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD;
	return 0;
}

/* Copies replica `index` of the route; 0 when the index is out of range. */
static __always_inline int copy_replica(const struct route_view *view, __u32 index,
					struct tern_endpoint *out)
{
	/* read_route bounded the count; the empty asm keeps clang from folding
	 * this check away, which the verifier needs to see. */
	asm volatile("" : "+r"(index));
	if (index >= TERN_CHAIN_LEN_MAX)
		return 0;
	__builtin_memcpy(out, &view->route->replicas[index], sizeof(*out));
	return 1;
}

/* Whether the route is the one read by read_route: every copy taken since
 * is consistent. Call after the last copy and before changing any state. */
static __always_inline int route_unchanged(const struct route_view *view)
{
	BARRIER();
	return READ_SHARED(view->route->generation) == view->generation;
}

/* Whether local shard `local_index` serves keys of this hash here (its bit
 * in shard_slots). */
static __always_inline int local_serves_slot(__u32 local_index, __u32 key_hash)
{
	__u32 slot = key_hash % TERN_SLOT_COUNT;
	__u32 key = local_index * TERN_SLOT_WORDS + slot / 64;
	__u64 *word = bpf_map_lookup_elem(&shard_slots, &key);

	return word && (READ_SHARED(*word) >> (slot % 64)) & 1;
}

static __always_inline int serves_slot(const struct route_view *view, __u32 key_hash)
{
	return local_serves_slot(view->local_index, key_hash);
}

static __always_inline __u64 *local_dirty_count(__u32 local_index, __u32 dirty_index)
{
	__u32 key = local_index * TERN_DIRTY_SLOTS + dirty_index;

	return bpf_map_lookup_elem(&dirty_counts, &key);
}

static __always_inline __u64 *dirty_count_of(const struct route_view *view, __u32 dirty_index)
{
	return local_dirty_count(view->local_index, dirty_index);
}

static __always_inline struct tern_window_slot *slot_of(const struct route_view *view, __u64 seq)
{
	__u32 key = view->local_index * TERN_INFLIGHT_WRITES_MAX +
		    (__u32)(seq & (TERN_INFLIGHT_WRITES_MAX - 1));

	return bpf_map_lookup_elem(&window, &key);
}

#endif /* TERN_ROUTE_H */
