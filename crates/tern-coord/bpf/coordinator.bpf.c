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
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "tern_wire.h"

#define READ_SHARED(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_SHARED(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define BARRIER() asm volatile("" ::: "memory")

/* Offset of the Tern datagram in a frame: Ethernet, IPv4 without options, UDP. */
#define PAYLOAD_OFFSET (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

/* This coordinator's address (key 0); written by user space before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tern_endpoint);
} self_endpoint SEC(".maps");

/* Shards served here, by shard id; written by the control path only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
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

/* In-flight windows: TERN_INFLIGHT_WRITES_MAX slots per local shard. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TERN_INFLIGHT_WRITES_MAX);
	__type(key, __u32);
	__type(value, struct tern_window_slot);
} window SEC(".maps");

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

/* A parsed frame addressed to this coordinator. */
struct frame {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	struct tern_header *tern;
	__u32 payload_len;
};

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&xdp_stats, &counter);

	if (value)
		*value += 1;
}

static __always_inline int hand_to_user_space(__u32 counter)
{
	count(counter);
	return XDP_PASS;
}

static __always_inline __u16 ipv4_checksum(struct iphdr *ip)
{
	__u16 *words = (__u16 *)ip;
	__u32 sum = 0;

	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Rewrites the frame to go from this coordinator to (ip, port, mac). The
 * frame arrived addressed to us, so its destination becomes its source. The
 * UDP checksum is left at zero (valid for IPv4): the payload changed. */
static __always_inline void readdress(struct frame *frame, __be32 ip, __be16 port, const __u8 *mac)
{
	__builtin_memcpy(frame->eth->h_source, frame->eth->h_dest, ETH_ALEN);
	__builtin_memcpy(frame->eth->h_dest, mac, ETH_ALEN);
	frame->ip->saddr = frame->ip->daddr;
	frame->ip->daddr = ip;
	frame->ip->ttl = 64;
	frame->ip->check = ipv4_checksum(frame->ip);
	frame->udp->source = frame->udp->dest;
	frame->udp->dest = port;
	frame->udp->check = 0;
}

/* Remembers the client's Ethernet address for the reply to its writes. */
static __always_inline void learn_client(struct frame *frame)
{
	__be32 ip = frame->ip->saddr;
	struct client_mac *known = bpf_map_lookup_elem(&client_macs, &ip);
	struct client_mac fresh = {};

	if (known && __builtin_memcmp(known->mac, frame->eth->h_source, ETH_ALEN) == 0)
		return;
	__builtin_memcpy(fresh.mac, frame->eth->h_source, ETH_ALEN);
	bpf_map_update_elem(&client_macs, &ip, &fresh, BPF_ANY);
}

/* key_hash() of tern_wire over the key that follows the header: FNV-1a in a
 * loop bounded by the longest key, each byte checked against the frame end. */
static __always_inline int key_hash_matches(const struct tern_header *tern, const void *end)
{
	const __u8 *key = (const __u8 *)(tern + 1);
	__u32 length = tern->key_len;
	__u32 hash = TERN_KEY_HASH_OFFSET_BASIS;

	for (__u32 i = 0; i < TERN_KEY_LEN_MAX; i++) {
		if (i >= length)
			break;
		if ((const void *)(key + i + 1) > end)
			return 0;
		hash ^= key[i];
		hash *= TERN_KEY_HASH_PRIME;
	}
	return hash == tern->key_hash;
}

/* Everything Message::decode checks, in its order: 0 when the datagram is
 * valid, else the counter under which it goes to user space (which decodes
 * it again, counts the reason and answers the sender). No state changes
 * before this passes: a datagram the Rust decoder refuses is never
 * sequenced, forwarded or acknowledged here. */
static __always_inline __u32 validate(const struct frame *frame, const void *end)
{
	const struct tern_header *tern = frame->tern;
	__u8 classes = tern_op_classes(tern->op);

	if (tern->magic != TERN_MAGIC || tern->version != TERN_WIRE_VERSION)
		return TERN_XDP_COUNTER_PASS_MALFORMED;
	if (classes == 0)
		return TERN_XDP_COUNTER_PASS_OP;
	if (!tern_status_known(tern->status) || !tern_effect_known(tern->effect) ||
	    tern->key_len > TERN_KEY_LEN_MAX || tern->value_len > TERN_VALUE_LEN_MAX ||
	    frame->payload_len != TERN_HEADER_LEN + (__u32)tern->key_len + tern->value_len ||
	    (tern->value_len != 0 && !(classes & TERN_OP_CLASS_CARRIES_VALUE)))
		return TERN_XDP_COUNTER_PASS_MALFORMED;
	if ((classes & (TERN_OP_CLASS_CLIENT_READ | TERN_OP_CLASS_CLIENT_WRITE)) &&
	    !key_hash_matches(tern, end))
		return TERN_XDP_COUNTER_PASS_BAD_KEY_HASH;
	if (!(classes & TERN_OP_CLASS_FAST_PATH))
		return TERN_XDP_COUNTER_PASS_OP;
	return 0;
}

/* Parses Ethernet, IPv4, UDP and the Tern header and validates the datagram;
 * 0 when it is a valid datagram for this coordinator's fast path, else the
 * verdict to return. */
static __always_inline int parse(struct xdp_md *ctx, struct frame *frame)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 invalid;
	struct tern_endpoint *self = bpf_map_lookup_elem(&self_endpoint, &zero);

	frame->eth = data;
	if (!self || (void *)(frame->eth + 1) > end || frame->eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	frame->ip = (void *)(frame->eth + 1);
	if ((void *)(frame->ip + 1) > end || frame->ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	frame->udp = (void *)(frame->ip + 1);
	if ((void *)(frame->udp + 1) > end || frame->ip->daddr != self->ip ||
	    frame->udp->dest != self->port)
		return XDP_PASS; /* Not ours: the rest of the namespace's traffic. */
	if (frame->ip->ihl != 5 || (frame->ip->frag_off & bpf_htons(0x3fff)))
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	/* A datagram handed up may carry a partial checksum from a veth peer;
	 * zero (no checksum) is valid for IPv4 and always correct. */
	frame->udp->check = 0;
	frame->tern = (void *)(frame->udp + 1);
	if ((void *)(frame->tern + 1) > end)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	frame->payload_len = (__u32)((long)end - (long)frame->tern);
	if (bpf_ntohs(frame->udp->len) != sizeof(struct udphdr) + frame->payload_len)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	invalid = validate(frame, end);
	if (invalid)
		return hand_to_user_space(invalid);
	return 0;
}

/* The shard's route and cell, or NULL (the caller hands over to user space). */
static __always_inline struct tern_shard_route *route_of(struct tern_header *tern)
{
	__u32 shard = tern->shard;
	struct tern_shard_route *route;

	if (shard >= TERN_SHARD_ID_MAX)
		return NULL;
	route = bpf_map_lookup_elem(&shard_routes, &shard);
	if (!route || !route->present || route->replica_count == 0 ||
	    route->replica_count > TERN_CHAIN_LEN_MAX)
		return NULL;
	return route;
}

static __always_inline __u64 *dirty_count_of(struct tern_shard_route *route, __u32 dirty_index)
{
	__u32 key = route->local_index * TERN_DIRTY_SLOTS + dirty_index;

	return bpf_map_lookup_elem(&dirty_counts, &key);
}

static __always_inline struct tern_window_slot *slot_of(struct tern_shard_route *route, __u64 seq)
{
	__u32 key = route->local_index * TERN_INFLIGHT_WRITES_MAX +
		    (__u32)(seq & (TERN_INFLIGHT_WRITES_MAX - 1));

	return bpf_map_lookup_elem(&window, &key);
}

static __always_inline struct tern_endpoint *replica_at(struct tern_shard_route *route, __u32 index)
{
	if (index >= TERN_CHAIN_LEN_MAX)
		return NULL;
	return &route->replicas[index];
}

/* GET: dirty keys to the tail, clean ones round robin with a stamp. */
static __always_inline int forward_read(struct frame *frame, struct tern_shard_route *route,
					struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	__u32 dirty_index = tern->key_hash & TERN_DIRTY_INDEX_MASK;
	__u64 *dirty = dirty_count_of(route, dirty_index);
	struct tern_endpoint *replica;
	__u64 commit_seq;
	int dirty_key;

	if (!dirty)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	/* The dirty count before commit_seq (see the file comment). */
	dirty_key = READ_SHARED(cell->all_dirty) != 0 || READ_SHARED(*dirty) != 0;
	BARRIER();
	commit_seq = READ_SHARED(cell->commit_seq);
	if (dirty_key) {
		replica = replica_at(route, route->replica_count - 1);
		tern->flags |= TERN_FLAG_TAIL_READ;
		count(TERN_XDP_COUNTER_READS_TAIL);
	} else {
		__u64 turn = __sync_fetch_and_add(&cell->next_replica, 1);

		replica = replica_at(route, (__u32)(turn % route->replica_count));
		tern->flags &= ~TERN_FLAG_TAIL_READ;
		tern->seq = commit_seq;
		count(TERN_XDP_COUNTER_READS_ANY);
	}
	if (!replica)
		return XDP_ABORTED;
	tern->commit_seq = commit_seq;
	tern->reply_ip = frame->ip->saddr;
	tern->reply_port = frame->udp->source;
	learn_client(frame);
	readdress(frame, replica->ip, replica->port, replica->mac);
	return XDP_TX;
}

/* PUT, DELETE, CAS, INCRBY, APPEND: sequence, mark dirty, keep a copy, send
 * to the head (which decides the write). */
static __always_inline int sequence_write(struct xdp_md *ctx, struct frame *frame,
					  struct tern_shard_route *route,
					  struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	__u32 dirty_index = tern->key_hash & TERN_DIRTY_INDEX_MASK;
	__u64 *dirty = dirty_count_of(route, dirty_index);
	struct tern_endpoint *head = replica_at(route, 0);
	struct tern_window_slot *slot = NULL;
	__u32 length = frame->payload_len;
	__u64 seq = 0;
	int won = 0;

	if (!dirty || !head)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_MALFORMED);
	/* DESIGN rule 1: reserve the next sequence number whose window slot is
	 * free. Only the winner of seq can claim its slot, so a slot seen free
	 * before winning stays free until published (as SharedShard does). */
	for (int attempt = 0; attempt < TERN_CAS_ATTEMPTS_MAX; attempt++) {
		seq = READ_SHARED(cell->next_seq);
		slot = slot_of(route, seq);
		if (!slot || READ_SHARED(slot->seq) != 0)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_WINDOW_FULL);
		if (__sync_val_compare_and_swap(&cell->next_seq, seq, seq + 1) == seq) {
			won = 1;
			break;
		}
	}
	if (!won || !slot)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_CONTENDED);
	/* DESIGN rule 3: the key is dirty before the write can reach anyone. */
	__sync_fetch_and_add(dirty, 1);
	tern->seq = seq;
	tern->commit_seq = READ_SHARED(cell->commit_seq);
	/* Only the client's write options travel on with the write. */
	tern->flags &= TERN_FLAGS_WRITE_OPTIONS;
	tern->reply_ip = frame->ip->saddr;
	tern->reply_port = frame->udp->source;
	learn_client(frame);
	readdress(frame, head->ip, head->port, head->mac);
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
	__sync_lock_test_and_set(&slot->seq, seq);
	count(TERN_XDP_COUNTER_WRITES);
	return XDP_TX;
}

/* ACK from the tail: commit_seq, then the dirty count, then the reply. */
static __always_inline int acknowledge(struct frame *frame, struct tern_shard_route *route,
				       struct tern_shard_cell *cell)
{
	struct tern_header *tern = frame->tern;
	struct tern_endpoint *tail = replica_at(route, route->replica_count - 1);
	struct client_mac *client = NULL;
	struct tern_window_slot *slot;
	__u64 seq = tern->seq;
	__be32 client_ip = tern->reply_ip;
	int advanced = 0;

	if (!tail || frame->ip->saddr != tail->ip || frame->udp->source != tail->port)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_NOT_FROM_TAIL);
	/* Decide everything that could send this to user space before changing
	 * any state, so that user space can process it whole. */
	if (tern->reply_port != 0) {
		client = bpf_map_lookup_elem(&client_macs, &client_ip);
		if (!client)
			return hand_to_user_space(TERN_XDP_COUNTER_PASS_NO_CLIENT_MAC);
	}
	/* DESIGN rule 4: commit_seq = max(commit_seq, seq) first. */
	for (int attempt = 0; attempt < TERN_CAS_ATTEMPTS_MAX; attempt++) {
		__u64 current = READ_SHARED(cell->commit_seq);

		if (current >= seq ||
		    __sync_val_compare_and_swap(&cell->commit_seq, current, seq) == current) {
			advanced = 1;
			break;
		}
	}
	if (!advanced)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_CONTENDED);
	/* Then the dirty count, only if seq was still in flight, so that a
	 * duplicate acknowledgement never lowers another write's count. */
	slot = slot_of(route, seq);
	if (slot) {
		__u32 dirty_index = READ_SHARED(slot->dirty_index) & TERN_DIRTY_INDEX_MASK;

		BARRIER();
		if (__sync_val_compare_and_swap(&slot->seq, seq, 0) == seq) {
			__u64 *dirty = dirty_count_of(route, dirty_index);

			if (dirty)
				__sync_fetch_and_add(dirty, -1);
			count(TERN_XDP_COUNTER_ACKS);
		} else {
			count(TERN_XDP_COUNTER_ACKS_NOT_IN_FLIGHT);
		}
	}
	if (!client)
		return XDP_DROP; /* A gap fill: nobody to answer. */
	/* Then the reply. */
	tern->op = TERN_OP_REPLY;
	tern->flags &= TERN_FLAGS_REPLY_OPTIONS;
	readdress(frame, client_ip, tern->reply_port, client->mac);
	return XDP_TX;
}

SEC("xdp")
int tern_coordinator(struct xdp_md *ctx)
{
	struct frame frame = {};
	struct tern_shard_route *route;
	struct tern_shard_cell *cell;
	__u32 local_index;
	int verdict = parse(ctx, &frame);

	if (verdict != 0)
		return verdict;
	route = route_of(frame.tern);
	if (!route)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD);
	if (frame.tern->epoch != route->epoch)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_EPOCH);
	local_index = route->local_index;
	cell = bpf_map_lookup_elem(&shard_cells, &local_index);
	if (!cell)
		return hand_to_user_space(TERN_XDP_COUNTER_PASS_UNKNOWN_SHARD);
	switch (frame.tern->op) {
	case TERN_OP_GET:
		return forward_read(&frame, route, cell);
	case TERN_OP_ACK:
		return acknowledge(&frame, route, cell);
	default:
		return sequence_write(ctx, &frame, route, cell);
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
