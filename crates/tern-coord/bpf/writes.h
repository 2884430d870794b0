/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Writes and their acknowledgements: sequence_write follows
 * ShardCoordinator::sequence_write (DESIGN rules 1 and 3), acknowledge
 * follows tern_proto::coordinator::complete_write (rule 4).
 */
#ifndef TERN_WRITES_H
#define TERN_WRITES_H

#include "frame.h"
#include "multi.h"
#include "route.h"
#include "txn.h"

/* The counter under which a request whose hold tern_hold_way refused
 * goes up. */
static __always_inline __u32 hold_refusal_counter(int refusal)
{
	return refusal == HOLD_NOT_SERVED ? TERN_XDP_COUNTER_PASS_SLOT
					  : TERN_XDP_COUNTER_PASS_HOLD_FULL;
}

/* PUT, DELETE, CAS, INCRBY, APPEND, MULTI, PREPARE, ACQUIRE, COMMIT,
 * ABORT: sequence, mark dirty (a MULTI: every item's key, multi.h; a
 * PREPARE or ACQUIRE: its hold, txn.h), keep a copy, send to the head
 * (which decides the write). */
static __always_inline int sequence_write(struct xdp_md *ctx, struct frame *frame,
					  const struct route_view *view,
					  struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	__u32 dirty_index = tern->key_hash & TERN_DIRTY_INDEX_MASK;
	__u64 *dirty = dirty_count_of(view, dirty_index);
	struct tern_window_slot *slot = NULL;
	struct tern_endpoint head;
	__u32 length = frame->payload_len;
	struct multi_scratch *items = NULL;
	struct tern_hold_bucket *bucket = NULL;
	__u32 item_count = 0;
	__u32 op = tern->op;
	int way = 0;
	__u64 seq = 0;
	int won = 0;

	if (!dirty || !copy_replica(view, 0, &head))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	if (op == TERN_OP_MULTI || is_txn_op(op)) {
		/* Its items (its id) decoded from a copy, before anything
		 * changes. */
		items = scratch();
		asm volatile("" : "+r"(length));
		if (!items || length < TERN_HEADER_LEN || length > TERN_MESSAGE_LEN_MAX ||
		    bpf_xdp_load_bytes(ctx, PAYLOAD_OFFSET, items->data, length) != 0)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
		item_count = op == TERN_OP_MULTI ? tern_multi_scan(length) : tern_txn_scan(length);
		if (item_count == 0)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
		/* A PREPARE's (ACQUIRE's) slots are checked by tern_hold_way,
		 * under its bucket's lock. */
		if (op == TERN_OP_MULTI && !tern_multi_servable(view->local_index, item_count))
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_SLOT);
		dirty_index = TERN_WINDOW_MULTI;
	}
	if (takes_hold(op) && items) {
		/* The hold's bucket locked until the hold is taken; every
		 * refusal before that leaves it as it was. */
		bucket = hold_bucket_of(view->local_index, items);
		if (!bucket || !hold_try_lock(bucket))
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_HOLD_BUSY);
		way = tern_hold_way(view->local_index, item_count);
		if (way < 0) {
			hold_unlock(bucket);
			return hand_to_user_space(hold_refusal_counter(way));
		}
	}
	if (!route_unchanged(view)) {
		if (bucket)
			hold_unlock(bucket);
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_RECONFIGURING);
	}
	/* DESIGN rule 1: reserve the next sequence number whose window slot is
	 * free. Only the winner of seq can claim its slot, so a slot seen free
	 * before winning stays free until published (as SharedShard does). */
	for (int attempt = 0; attempt < TERN_CAS_ATTEMPTS_MAX; attempt++) {
		seq = READ_SHARED(cell->next_seq);
		slot = slot_of(view, seq);
		if (!slot || READ_SHARED(slot->seq) != 0) {
			if (bucket)
				hold_unlock(bucket);
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_WINDOW_FULL);
		}
		if (__sync_val_compare_and_swap(&cell->next_seq, seq, seq + 1) == seq) {
			won = 1;
			break;
		}
	}
	if (!won || !slot) {
		if (bucket)
			hold_unlock(bucket);
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_CONTENDED);
	}
	/* DESIGN rule 3: the key is dirty before the write can reach anyone
	 * (a COMMIT or ABORT marks nothing: its hold is its PREPARE's). */
	if (bucket) {
		tern_hold_apply(view->local_index, way, item_count, seq, op == TERN_OP_PREPARE);
		hold_unlock(bucket);
	} else if (op == TERN_OP_MULTI) {
		tern_multi_mark(view->local_index, item_count, 1);
	} else if (!items) {
		__sync_fetch_and_add(dirty, 1);
	}
	tern->seq = seq;
	tern->commit_seq = READ_SHARED(cell->commit_seq);
	/* Only the client's write options travel on with the write. */
	tern->flags &= TERN_FLAGS_WRITE_OPTIONS;
	tern->reply_ip = frame->ip->saddr;
	tern->reply_port = frame->udp->source;
	learn_client(frame);
	readdress(frame, head.ip, head.port, head.mac);
	/* Keep the datagram for resends, then publish the slot. parse() bounded
	 * the length; the clamps restate the bounds for the verifier, and the
	 * empty asm keeps clang from folding them away as redundant. */
	asm volatile("" : "+r"(length));
	if (length < TERN_HEADER_LEN)
		length = TERN_HEADER_LEN;
	if (length > TERN_MESSAGE_LEN_MAX)
		length = TERN_MESSAGE_LEN_MAX;
	if (bpf_xdp_load_bytes(ctx, PAYLOAD_OFFSET, slot->data, length) != 0)
		length = 0; /* Unreachable after parse(); a resend would send nothing. */
	slot->len = length;
	slot->dirty_index = dirty_index;
	slot->sent_ns = bpf_ktime_get_ns();
	slot->answered = 0;
	slot->acks = tern_fanout_pack(view->epoch, seq, 0);
	__sync_lock_test_and_set(&slot->seq, seq);
	count(is_txn_op(op) ? TERN_XDP_COUNTER_TXNS : TERN_XDP_COUNTER_WRITES);
	return XDP_TX;
}

/* *value = max(*value, seq) by compare-and-swap, in a bounded number of
 * attempts; 0 when contended beyond them (the caller hands up). */
static __always_inline int raise_to(__u64 *value, __u64 seq)
{
	for (int attempt = 0; attempt < TERN_CAS_ATTEMPTS_MAX; attempt++) {
		__u64 current = READ_SHARED(*value);

		if (current >= seq || __sync_val_compare_and_swap(value, current, seq) == current)
			return 1;
	}
	return 0;
}

/* Turns the acknowledgement in `frame` into its client's reply. */
static __always_inline int reply_to_client(struct frame *frame, __be32 client_ip,
					   const struct client_mac *client)
{
	struct tern_header *tern = frame->tern;

	tern->op = TERN_OP_REPLY;
	tern->flags &= TERN_FLAGS_REPLY_OPTIONS;
	readdress(frame, client_ip, tern->reply_port, client->mac);
	return XDP_TX;
}

/* The commit point's ACK under early commit (coordinator::early's
 * acknowledge_early): point_applied raised, the write marked answered, the
 * reply; nothing else changes (the tail's ACK completes the write). */
static __always_inline int acknowledge_early(struct frame *frame, const struct route_view *view,
					     struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	__be32 client_ip = tern->reply_ip;
	struct client_mac *client = NULL;
	struct tern_window_slot *slot;
	__u64 seq = tern->seq;

	if (tern->reply_port != 0) {
		client = bpf_map_lookup_elem(&client_macs, &client_ip);
		if (!client)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_NO_CLIENT_MAC);
	}
	if (!raise_to(&cell->point_applied, seq))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_CONTENDED);
	slot = slot_of(view, seq);
	/* Seqs start at 1: a free slot holds 0, which must not match. Answered
	 * once: a duplicate, or a write the tail completed, is dropped. */
	if (!slot || seq == 0 || READ_SHARED(slot->seq) != seq ||
	    __sync_lock_test_and_set(&slot->answered, seq) == seq || !client) {
		count(TERN_XDP_COUNTER_ACKS_NOT_IN_FLIGHT);
		return XDP_DROP;
	}
	count(TERN_XDP_COUNTER_EARLY_ACKS);
	return reply_to_client(frame, client_ip, client);
}

/* Fan-out (coordinator::fanout, SharedShard::fanout_ack): the sender's bit,
 * by its position in the chain, set in the slot's acks word. FANOUT_COMPLETE
 * once every replica has acknowledged (the caller completes the write as a
 * tail's ACK), FANOUT_EARLY at the K-th under early commit (the caller
 * answers it as the commit point's ACK), else the action taken. A word
 * counted under an earlier epoch goes up: user space counts it afresh. */
#define FANOUT_COMPLETE (-1)
#define FANOUT_EARLY (-2)

static __always_inline int count_fanout_ack(struct frame *frame, const struct route_view *view)
{
	struct tern_header *tern = frame->tern;
	struct tern_window_slot *slot;
	struct tern_endpoint replica;
	__u64 seq = tern->seq;
	__u32 position = TERN_CHAIN_LEN_MAX;
	__u64 identity = tern_fanout_pack(view->epoch, seq, 0) >> TERN_FANOUT_MASK_BITS;
	__u64 all = (1ull << view->replica_count) - 1;
	__u64 bit;

	for (__u32 index = 0; index < TERN_CHAIN_LEN_MAX; index++) {
		if (index >= view->replica_count || !copy_replica(view, index, &replica))
			break;
		if (frame->ip->saddr == replica.ip && frame->udp->source == replica.port) {
			position = index;
			break;
		}
	}
	if (position >= TERN_CHAIN_LEN_MAX)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_NOT_FROM_TAIL);
	if (!route_unchanged(view))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_RECONFIGURING);
	bit = 1ull << position;
	slot = slot_of(view, seq);
	/* Seqs start at 1: a free slot holds 0, which must not match. */
	if (!slot || seq == 0 || READ_SHARED(slot->seq) != seq) {
		count(TERN_XDP_COUNTER_ACKS_NOT_IN_FLIGHT);
		return XDP_DROP;
	}
	for (int attempt = 0; attempt < TERN_CAS_ATTEMPTS_MAX; attempt++) {
		__u64 word = READ_SHARED(slot->acks);

		if (word >> TERN_FANOUT_MASK_BITS != identity) {
			if (((word >> TERN_FANOUT_MASK_BITS) & TERN_FANOUT_SEQ_MASK) ==
			    (seq & TERN_FANOUT_SEQ_MASK))
				return hand_to_user_space(TERN_XDP_COUNTER_PASS_FANOUT_EPOCH);
			/* The slot moved on to another write. */
			count(TERN_XDP_COUNTER_ACKS_NOT_IN_FLIGHT);
			return XDP_DROP;
		}
		if (word & bit) {
			/* Sent again: complete (again) only once all have. */
			if ((word & all) == all)
				return FANOUT_COMPLETE;
			count(TERN_XDP_COUNTER_FANOUT_ACKS);
			return XDP_DROP;
		}
		if (__sync_val_compare_and_swap(&slot->acks, word, word | bit) == word) {
			if (((word | bit) & all) == all)
				return FANOUT_COMPLETE;
			count(TERN_XDP_COUNTER_FANOUT_ACKS);
			if (view->quorum != 0 &&
			    (__u32)__builtin_popcountll((word | bit) & all) == view->quorum)
				return FANOUT_EARLY;
			return XDP_DROP;
		}
	}
	return hand_to_user_space(TERN_XDP_COUNTER_PASS_CONTENDED);
}

/* ACK from the tail: commit_seq, then the dirty count, then the reply
 * (none when the commit point's ACK answered the write already); an ACK
 * from the commit point under early commit goes to acknowledge_early. */
static __always_inline int acknowledge(struct frame *frame, const struct route_view *view,
				       struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	struct client_mac *client = NULL;
	struct tern_window_slot *slot;
	struct tern_endpoint tail;
	struct tern_endpoint point;
	__u64 seq = tern->seq;
	__be32 client_ip = tern->reply_ip;
	int answered = 0;
	int completed = 0;
	struct multi_scratch *items = NULL;
	struct tern_hold_bucket *bucket = NULL;
	__u32 item_count = 0;
	__u32 kept_op = 0;

	if (!copy_replica(view, view->replica_count - 1, &tail) ||
	    !copy_replica(view, view->commit_index, &point))
		return XDP_ABORTED;
	if (!route_unchanged(view))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_RECONFIGURING);
	if (view->fanout) {
		int counted;

		/* Its client known before anything is counted. */
		if (tern->reply_port != 0 && !bpf_map_lookup_elem(&client_macs, &client_ip))
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_NO_CLIENT_MAC);
		counted = count_fanout_ack(frame, view);
		if (counted == FANOUT_EARLY)
			return acknowledge_early(frame, view, cell);
		if (counted != FANOUT_COMPLETE)
			return counted;
	} else if (frame->ip->saddr != tail.ip || frame->udp->source != tail.port) {
		if (view->commit_index + 1 < view->replica_count &&
		    frame->ip->saddr == point.ip && frame->udp->source == point.port)
			return acknowledge_early(frame, view, cell);
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_NOT_FROM_TAIL);
	}
	/* Decide everything that could send this to user space before changing
	 * any state, so that user space can process it whole. */
	if (tern->reply_port != 0) {
		client = bpf_map_lookup_elem(&client_macs, &client_ip);
		if (!client)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_NO_CLIENT_MAC);
	}
	/* A MULTI's keys are in the datagram kept, decoded here again, and so
	 * is a transaction request's id, whose hold is locked here; RESOLVE's
	 * acknowledgement, the other request the window marks so, is user
	 * space's. */
	slot = slot_of(view, seq);
	if (slot && seq != 0 && READ_SHARED(slot->seq) == seq &&
	    (READ_SHARED(slot->dirty_index) & TERN_WINDOW_MULTI)) {
		items = scratch();
		if (!items)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_OP);
		copy_kept(items, slot);
		kept_op = ((const struct tern_header *)items->data)->op;
		if (kept_op == TERN_OP_MULTI)
			item_count = tern_multi_scan(READ_SHARED(slot->len));
		else if (is_txn_op(kept_op))
			item_count = tern_txn_id(READ_SHARED(slot->len));
		/* Still the same write's copy, read whole. */
		if (item_count == 0 || READ_SHARED(slot->seq) != seq)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_OP);
		if (is_txn_op(kept_op)) {
			bucket = hold_bucket_of(view->local_index, items);
			if (!bucket || !hold_try_lock(bucket))
				return hand_to_user_space(TERN_XDP_COUNTER_PASS_HOLD_BUSY);
		}
	}
	/* Read while seq still holds its window slot. */
	if (slot && seq != 0 && READ_SHARED(slot->seq) == seq)
		answered = READ_SHARED(slot->answered) == seq;
	/* DESIGN rule 4: commit_seq = max(commit_seq, seq) first. */
	if (!raise_to(&cell->commit_seq, seq)) {
		if (bucket)
			hold_unlock(bucket);
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_CONTENDED);
	}
	/* Then the dirty count, only if seq was still in flight, so that a
	 * duplicate acknowledgement never lowers another write's count. */
	if (slot) {
		__u32 dirty_index = READ_SHARED(slot->dirty_index) & TERN_DIRTY_INDEX_MASK;

		BARRIER();
		/* Seqs start at 1: a free slot holds 0, which must not match. */
		if (seq != 0 && __sync_val_compare_and_swap(&slot->seq, seq, 0) == seq) {
			__u64 *dirty = dirty_count_of(view, dirty_index);

			completed = 1;
			if (bucket)
				tern_hold_ack(view->local_index, kept_op, tern->status, seq,
					      bpf_ktime_get_ns());
			else if (items)
				tern_multi_mark(view->local_index, item_count, -1);
			else if (dirty)
				__sync_fetch_and_add(dirty, -1);
			count(TERN_XDP_COUNTER_ACKS);
		} else {
			count(TERN_XDP_COUNTER_ACKS_NOT_IN_FLIGHT);
		}
	}
	if (bucket)
		hold_unlock(bucket);
	if (!client)
		return XDP_DROP; /* A gap fill: nobody to answer. */
	if (answered && completed)
		return XDP_DROP; /* Answered at the commit point's ACK. */
	/* Then the reply. */
	return reply_to_client(frame, client_ip, client);
}

#endif /* TERN_WRITES_H */
