/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Transactions in the kernel: PREPARE, ACQUIRE, COMMIT and ABORT
 * sequenced here, their holds taken and released in the shared hold table
 * (`holds`, laid out as tern_wire::maps::HoldBucket), by the rules of
 * crates/tern-proto/src/holds.rs and coordinator/txn.rs:
 * - a request's value is checked as txn_plan checks it (Prepare::decode
 *   and its first key, or TxnId::decode and an empty key); what fails
 *   goes up untouched;
 * - a PREPARE or ACQUIRE takes its transaction's hold, or adds to it, all
 *   or nothing, under its bucket's lock, before its seq leaves: every key
 *   entered once, the dirty entry of each key a PREPARE writes counted
 *   once (DESIGN rule 3), its slots checked under the lock (a
 *   FREEZE clears slots before it looks for holds, bucket by bucket under
 *   the same locks);
 * - the acknowledgement of one of them, completing its seq, renews the
 *   lease or releases the hold as hold_ack decides (the head's answer);
 *   a hold is only ever released by its own transaction's requests;
 * - whatever the kernel cannot finish (the bucket locked by someone
 *   else, full, more keys than a hold names) goes up before anything
 *   changed: no hold is ever half taken, nor held across a trip to user
 *   space. RESOLVE (the settlers') always goes up.
 */
#ifndef TERN_TXN_H
#define TERN_TXN_H

#include "multi.h"
#include "route.h"

/* tern_hold_way's refusals. */
#define HOLD_NOT_SERVED (-1)
#define HOLD_FULL (-2)
#define HOLD_TOO_MANY (-3)
/* tern_hold_way's flag: the way holds the transaction already. */
#define HOLD_FOUND 8

/* What an acknowledgement does to its hold (holds::HoldAck). */
#define HOLD_RELEASE 0
#define HOLD_RENEW 1
#define HOLD_START 2

static __always_inline int is_txn_op(__u32 op)
{
	return op == TERN_OP_PREPARE || op == TERN_OP_ACQUIRE || op == TERN_OP_COMMIT ||
	       op == TERN_OP_ABORT;
}

static __always_inline int takes_hold(__u32 op)
{
	return op == TERN_OP_PREPARE || op == TERN_OP_ACQUIRE;
}

/* Little-endian integers of the copy. */
static __always_inline __u64 u64_at(const struct multi_scratch *s, __u32 at)
{
	__u64 value = 0;

	for (int i = 7; i >= 0; i--)
		value = value << 8 | byte_at(s, at + i);
	return value;
}

static __always_inline __u32 u32_at(const struct multi_scratch *s, __u32 at)
{
	return byte_at(s, at) | byte_at(s, at + 1) << 8 | byte_at(s, at + 2) << 16 |
	       byte_at(s, at + 3) << 24;
}

/* The id of the transaction request copied into the scratch: the first
 * bytes of a PREPARE's (ACQUIRE's) value, the whole value of a COMMIT or
 * ABORT (and its key empty). 0 when it is not one. */
static __always_inline int read_id(struct multi_scratch *s, const struct multi_scan *scan,
				   __u32 value_at, __u32 op)
{
	if (op == TERN_OP_COMMIT || op == TERN_OP_ABORT) {
		if (scan->key_len != 0 || value_at + TERN_TXN_ID_LEN != scan->end)
			return 0;
	} else if (!takes_hold(op) || value_at + TERN_TXN_PREPARE_FIXED_LEN > scan->end) {
		return 0;
	}
	s->client_id = u64_at(s, value_at);
	s->txn_seq = u64_at(s, value_at + 8);
	return 1;
}

/* The global functions below are verified once each, on their own (see
 * multi.h). */

/* Checks the transaction request copied into the scratch (`len` bytes) as
 * txn_plan does and reads its id; for a PREPARE or ACQUIRE also its
 * lease, participants and items (hashes and modes). The item count (1 for
 * a COMMIT or ABORT), 0 when it is malformed. */
__attribute__((noinline)) int tern_txn_scan(__u32 len)
{
	struct multi_scratch *s = scratch();
	struct multi_scan scan = {};
	__u32 value_at, op, count, lease;

	if (!s || !locate_value(s, len, &scan, &value_at))
		return 0;
	op = ((const struct tern_header *)s->data)->op;
	if (!read_id(s, &scan, value_at, op))
		return 0;
	if (!takes_hold(op))
		return 1;
	/* Prepare::decode: the lease within its bounds, 1 to
	 * TERN_TXN_PARTICIPANTS_MAX participants, then the items. */
	lease = u32_at(s, value_at + TERN_TXN_ID_LEN);
	if (lease < TERN_TXN_LEASE_MS_MIN || lease > TERN_TXN_LEASE_MS_MAX)
		return 0;
	count = byte_at(s, value_at + TERN_TXN_ID_LEN + 4);
	if (count == 0 || count > TERN_TXN_PARTICIPANTS_MAX)
		return 0;
	s->lease_ms = lease;
	s->participants_at = value_at + TERN_TXN_ID_LEN + 4;
	s->participants_len = 1 + count * TERN_TXN_PARTICIPANT_LEN;
	return scan_items(s, &scan, s->participants_at + s->participants_len);
}

/* The id of the transaction request copied into the scratch, for its
 * acknowledgement (checked whole when it was sequenced). 1 when read. */
__attribute__((noinline)) int tern_txn_id(__u32 len)
{
	struct multi_scratch *s = scratch();
	struct multi_scan scan = {};
	__u32 value_at;

	if (!s || !locate_value(s, len, &scan, &value_at))
		return 0;
	return read_id(s, &scan, value_at, ((const struct tern_header *)s->data)->op);
}

/* The bucket of the scratch's transaction (tern_wire::maps::hold_bucket). */
static __always_inline struct tern_hold_bucket *hold_bucket_of(__u32 local_index,
							       const struct multi_scratch *s)
{
	__u64 mixed = (s->client_id ^ (s->txn_seq * TERN_HOLD_MIX)) * TERN_HOLD_MIX;
	__u32 key = local_index * TERN_HOLD_BUCKETS +
		    ((__u32)(mixed >> 32) & (TERN_HOLD_BUCKETS - 1));

	return bpf_map_lookup_elem(&holds, &key);
}

/* The scratch (in `*s`) and the bucket of its transaction at local shard
 * `local_index`; NULL when either is missing. */
static __always_inline struct tern_hold_bucket *scratch_bucket(__u32 local_index,
							       struct multi_scratch **s)
{
	*s = scratch();
	return *s ? hold_bucket_of(local_index, *s) : NULL;
}

static __always_inline int hold_try_lock(struct tern_hold_bucket *bucket)
{
	return __sync_val_compare_and_swap(&bucket->lock, 0, TERN_HOLD_LOCKED) == 0;
}

static __always_inline void hold_unlock(struct tern_hold_bucket *bucket)
{
	__sync_lock_test_and_set(&bucket->lock, 0);
}

/* The way of `bucket` holding the scratch's transaction, or -1. */
static __always_inline int way_of(const struct tern_hold_bucket *bucket,
				  const struct multi_scratch *s)
{
	for (int way = 0; way < TERN_HOLD_WAYS; way++) {
		const struct tern_hold_slot *slot = &bucket->slots[way];

		if (slot->used && slot->client_id == s->client_id && slot->txn_seq == s->txn_seq)
			return way;
	}
	return -1;
}

/* Looking for a key among a hold's: one bpf_loop step per key held. */
struct key_search {
	__u32 local_index;
	__u32 way;
	__u32 hash;
	__s32 found; /* its index, or -1 */
};

static long match_key(__u32 at, void *context)
{
	struct key_search *search = context;
	struct multi_scratch *s;
	struct tern_hold_bucket *bucket = scratch_bucket(search->local_index, &s);

	if (!bucket || at >= TERN_HOLD_KEYS_MAX)
		return 1;
	if (bucket->slots[search->way & (TERN_HOLD_WAYS - 1)].hashes[at] != search->hash)
		return 0;
	search->found = at;
	return 1;
}

/* With the scratch's transaction's bucket locked: the way its hold is to
 * go in (HOLD_FOUND set when it holds already) for its `count` items, or
 * why none can: a slot no longer served, no free way, or perhaps more keys
 * than a hold names (counted here as if every item's key were new; user
 * space counts exactly). Changes nothing. */
__attribute__((noinline)) int tern_hold_way(__u32 local_index, __u32 count)
{
	struct multi_scratch *s;
	struct tern_hold_bucket *bucket = scratch_bucket(local_index, &s);
	__u32 held = 0;
	int found;

	if (!bucket)
		return HOLD_FULL;
	for (__u32 i = 0; i < TERN_MULTI_ITEMS_MAX; i++) {
		if (i >= count)
			break;
		if (!local_serves_slot(local_index, s->hashes[i]))
			return HOLD_NOT_SERVED;
	}
	found = way_of(bucket, s);
	if (found >= 0)
		held = bucket->slots[found & (TERN_HOLD_WAYS - 1)].count;
	if (held + count > TERN_HOLD_KEYS_MAX)
		return HOLD_TOO_MANY;
	if (found >= 0)
		return found | HOLD_FOUND;
	for (int way = 0; way < TERN_HOLD_WAYS; way++) {
		if (!bucket->slots[way].used)
			return way;
	}
	return HOLD_FULL;
}

/* With the bucket still locked: takes (or adds to) the hold in the way
 * tern_hold_way chose, for the request sequenced at `seq`: each item's
 * key entered once, and its dirty entry counted once when the request
 * (`decided`: a PREPARE) writes it. */
__attribute__((noinline)) int tern_hold_apply(__u32 local_index, __u32 way_found, __u32 count,
					      __u64 seq, __u32 decided)
{
	struct key_search search = {
		.local_index = local_index,
		.way = way_found & (TERN_HOLD_WAYS - 1),
	};
	struct multi_scratch *s;
	struct tern_hold_bucket *bucket = scratch_bucket(local_index, &s);
	struct tern_hold_slot *slot;
	__u32 len;

	if (!bucket)
		return 0;
	slot = &bucket->slots[search.way];
	if (!(way_found & HOLD_FOUND)) {
		slot->client_id = s->client_id;
		slot->txn_seq = s->txn_seq;
		slot->taken_at = seq;
		slot->prepared_ns = 0;
		slot->dirty_mask = 0;
		slot->participants_len = 0;
		slot->count = 0;
		slot->used = 1;
	}
	for (__u32 i = 0; i < TERN_MULTI_ITEMS_MAX; i++) {
		__u32 held = slot->count;
		__u64 bit;
		__s32 at;

		if (i >= count || held > TERN_HOLD_KEYS_MAX)
			break;
		search.hash = s->hashes[i];
		search.found = -1;
		bpf_loop(held, match_key, &search, 0);
		at = search.found;
		if (at < 0) {
			/* tern_hold_way made room for every item. */
			if (held >= TERN_HOLD_KEYS_MAX)
				break;
			slot->hashes[held] = search.hash;
			slot->count = held + 1;
			at = held;
		}
		bit = 1ull << (at & (TERN_HOLD_KEYS_MAX - 1));
		if (decided && ((s->exclusive >> i) & 1) && !(slot->dirty_mask & bit)) {
			__u64 *dirty =
				local_dirty_count(local_index, search.hash & TERN_DIRTY_INDEX_MASK);

			/* DESIGN rule 3: dirty before the request can reach anyone. */
			if (dirty)
				__sync_fetch_and_add(dirty, 1);
			slot->dirty_mask |= bit;
		}
	}
	slot->lease_ms = s->lease_ms;
	/* The newest list, unless it is shorter than the one held. */
	len = s->participants_len;
	if (len > TERN_HOLD_PARTICIPANTS_LEN || len < slot->participants_len)
		return 1;
	for (__u32 i = 0; i < TERN_HOLD_PARTICIPANTS_LEN; i++) {
		if (i >= len)
			break;
		slot->participants[i] = byte_at(s, s->participants_at + i);
	}
	slot->participants_len = len;
	return 1;
}

/* holds::HoldAck for an acknowledgement: tern_proto's hold_ack, rule for
 * rule. */
static __always_inline int hold_ack_action(__u32 op, __u32 status, int taken_here)
{
	if (takes_hold(op) && status == TERN_STATUS_OK)
		return HOLD_RENEW;
	if (op == TERN_OP_RESOLVE && status == TERN_STATUS_TXN_PREPARED)
		return HOLD_START;
	if (takes_hold(op) && status == TERN_STATUS_MALFORMED && !taken_here)
		return HOLD_START;
	if (op == TERN_OP_COMMIT && status == TERN_STATUS_MALFORMED)
		return HOLD_START;
	return HOLD_RELEASE;
}

/* With the scratch's transaction's bucket locked: the acknowledgement of
 * its request `seq` (op, the head's status) renews the lease or releases
 * the hold. Nothing when the transaction holds nothing here. */
__attribute__((noinline)) int tern_hold_ack(__u32 local_index, __u32 op, __u32 status, __u64 seq,
					    __u64 now)
{
	struct multi_scratch *s;
	struct tern_hold_bucket *bucket = scratch_bucket(local_index, &s);
	struct tern_hold_slot *slot;
	__u32 count;
	__u64 mask;
	int way;

	if (!bucket)
		return 0;
	way = way_of(bucket, s);
	if (way < 0)
		return 0;
	slot = &bucket->slots[way & (TERN_HOLD_WAYS - 1)];
	if (now == 0)
		now = 1; /* prepared_ns 0 means none */
	switch (hold_ack_action(op, status, slot->taken_at == seq)) {
	case HOLD_RENEW:
		slot->prepared_ns = now;
		return 1;
	case HOLD_START:
		if (slot->prepared_ns == 0)
			slot->prepared_ns = now;
		return 1;
	default:
		break;
	}
	count = slot->count;
	mask = slot->dirty_mask;
	for (__u32 at = 0; at < TERN_HOLD_KEYS_MAX; at++) {
		__u64 *dirty;

		if (at >= count)
			break;
		if (!((mask >> at) & 1))
			continue;
		dirty = local_dirty_count(local_index, slot->hashes[at] & TERN_DIRTY_INDEX_MASK);
		if (dirty)
			__sync_fetch_and_add(dirty, -1);
	}
	slot->used = 0;
	return 1;
}

#endif /* TERN_TXN_H */
