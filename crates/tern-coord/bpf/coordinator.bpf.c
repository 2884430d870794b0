// SPDX-License-Identifier: Apache-2.0
/*
 * Tern's shard coordinator in the kernel: the XDP fast path (Dalio).
 *
 * It sequences writes, counts writes in flight per dirty-table entry, stamps
 * and forwards reads, and turns the tail's acknowledgements into the client's
 * reply, rewriting each frame and sending it back out with XDP_TX. It shares
 * its state with the user-space coordinator through mmapable array maps laid
 * out by tern-wire (tern_wire.h), and hands everything else to user space
 * with XDP_PASS: other ops, malformed datagrams, unknown shards, other
 * epochs, a full in-flight window, clients whose MAC address it has not seen.
 *
 * The order of updates is the one of crates/tern-proto/src/coordinator.rs
 * (DESIGN rules 1-4): a write marks its key dirty before it leaves; an
 * acknowledgement advances commit_seq before it lowers the dirty count; a read
 * loads the dirty count before commit_seq. Loads and stores to shared fields
 * are volatile and separated by compiler barriers; on x86 (TSO) that keeps
 * their order. Atomic read-modify-writes are full barriers.
 *
 * Every exit path leaves the shared state consistent: a datagram handed to
 * user space has changed nothing but its UDP checksum.
 *
 * Layout, mirroring the Rust side: maps.h (the maps, tern_wire::maps),
 * frame.h (parsing and validation, tern_wire's decoder), route.h (a shard's
 * chain under its seqlock), reads.h and writes.h (the handlers, after
 * tern-proto's coordinator), multi.h (items of one-shot transactions),
 * txn.h (transactions' holds); this file is the entry point and dispatch.
 */
#include "frame.h"
#include "reads.h"
#include "route.h"
#include "txn.h"
#include "writes.h"

SEC("xdp")
int tern_coordinator(struct xdp_md *ctx)
{
	struct frame frame = {};
	struct route_view view = {};
	struct tern_shard_cell *cell;
	__u32 local_index;
	__u32 unusable;
	int verdict = parse(ctx, &frame);

	if (verdict != 0)
		return verdict;
	/* A client's request from a network not served: dropped, as user
	 * space drops it (the chain's acknowledgements are checked by
	 * address below). */
	if (frame.tern->op != TERN_OP_ACK && !client_allowed(frame.ip->saddr))
		return drop_counted(TERN_XDP_COUNTER_DROP_NOT_ALLOWED);
	unusable = read_route(frame.tern, &view);
	if (unusable)
		return hand_to_user_space(unusable);
	if (frame.tern->epoch != view.epoch)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_EPOCH);
	local_index = view.local_index;
	cell = bpf_map_lookup_elem(&shard_cells, &local_index);
	if (!cell)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD);
	/* Only acknowledgements come from the chain; every other op here is a
	 * client's request for a key, served only for the shard's own slots,
	 * or a transaction's COMMIT or ABORT, addressed to the shard. */
	if (frame.tern->op != TERN_OP_ACK &&
	    !(tern_op_classes(frame.tern->op) & TERN_OP_CLASS_ANY_SLOT) &&
	    !serves_slot(&view, frame.tern->key_hash))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_SLOT);
	switch (frame.tern->op) {
	case TERN_OP_GET:
		return forward_read(&frame, &view, cell);
	case TERN_OP_ACK:
		return acknowledge(&frame, &view, cell);
	default:
		return sequence_write(ctx, &frame, &view, cell);
	}
}

/* Attached to the peer of a veth that the coordinator transmits into:
 * XDP_TX frames reach a veth peer only when the peer runs an XDP program. */
SEC("xdp")
int tern_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
