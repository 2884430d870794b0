/* SPDX-License-Identifier: Apache-2.0 */
/*
 * GET: the read decision of tern_proto::coordinator::route_read. Dirty keys
 * go to the commit point (TAIL_READ: the tail, or under early commit the
 * K-th replica once it has caught up to the point barrier, as
 * coordinator::early::point_ready), clean ones round robin, stamped with
 * commit_seq (DESIGN rules 3-5). Under fan-out every read is stamped
 * (coordinator::fanout: no replica holds only committed writes); committing
 * early too, a dirty key's goes to the head (commit_index 0) stamped with
 * max(commit_seq, point_applied).
 */
#ifndef TERN_READS_H
#define TERN_READS_H

#include "frame.h"
#include "route.h"

static __always_inline int forward_read(struct frame *frame, const struct route_view *view,
					struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	__u32 dirty_index = tern->key_hash & TERN_DIRTY_INDEX_MASK;
	__u64 *dirty = dirty_count_of(view, dirty_index);
	struct tern_endpoint replica;
	__u32 index = view->commit_index;
	__u64 commit_seq;
	int dirty_key;

	if (!dirty)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	/* The dirty count before commit_seq (see the file comment). */
	dirty_key = !(view->fanout && !view->early) &&
		    (READ_SHARED(cell->all_dirty) != 0 || READ_SHARED(*dirty) != 0);
	BARRIER();
	commit_seq = READ_SHARED(cell->commit_seq);
	if (dirty_key && view->early) {
		__u64 applied = READ_SHARED(cell->point_applied);

		if (applied < commit_seq)
			applied = commit_seq;
		/* User space answers TRY_AGAIN while the commit point may lack a
		 * write answered before it was one. */
		if (applied < READ_SHARED(cell->point_barrier))
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_POINT_BEHIND);
	}
	if (!dirty_key)
		index = (__u32)(__sync_fetch_and_add(&cell->next_replica, 1) % view->replica_count);
	if (!copy_replica(view, index, &replica))
		return XDP_ABORTED;
	if (!route_unchanged(view))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_RECONFIGURING);
	if (dirty_key && view->fanout) {
		__u64 stamp = READ_SHARED(cell->point_applied);

		if (stamp < commit_seq)
			stamp = commit_seq;
		tern->flags &= ~TERN_FLAG_TAIL_READ;
		tern->seq = stamp;
		commit_seq = stamp;
		count(TERN_XDP_COUNTER_READS_TAIL);
	} else if (dirty_key) {
		tern->flags |= TERN_FLAG_TAIL_READ;
		count(TERN_XDP_COUNTER_READS_TAIL);
	} else {
		tern->flags &= ~TERN_FLAG_TAIL_READ;
		tern->seq = commit_seq;
		count(TERN_XDP_COUNTER_READS_ANY);
	}
	tern->commit_seq = commit_seq;
	tern->reply_ip = frame->ip->saddr;
	tern->reply_port = frame->udp->source;
	learn_client(frame);
	readdress(frame, replica.ip, replica.port, replica.mac);
	return XDP_TX;
}

#endif /* TERN_READS_H */
