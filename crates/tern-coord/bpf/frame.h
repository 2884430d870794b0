/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Frames: parsing Ethernet/IPv4/UDP and the Tern header once, validating the
 * datagram exactly as tern_wire's Message::decode does, rewriting a frame to
 * its next hop, counters and the hand-off to user space.
 */
#ifndef TERN_FRAME_H
#define TERN_FRAME_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

/* Offset of the Tern datagram in a frame: Ethernet, IPv4 without options, UDP. */
#define PAYLOAD_OFFSET (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

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

static __always_inline int drop_counted(__u32 counter)
{
	count(counter);
	return XDP_DROP;
}

/* Whether the allow-list (when there is one) serves this source. */
static __always_inline int client_allowed(__be32 source)
{
	__u32 zero = 0;
	__u32 *filtering = bpf_map_lookup_elem(&allow_filter, &zero);
	struct allow_key key = { .prefixlen = 32, .addr = source };

	return !filtering || !*filtering || bpf_map_lookup_elem(&allowed_clients, &key);
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

/* key_hash() of tern_wire, a byte at a time: FNV-1a of the whole key and
 * of its hash tag (the bytes between the first '{' and the first '}'
 * after it) together; the tag's when it is closed and not empty. Flags of
 * 0 or 1, computed without branches: a branch per byte would multiply the
 * verifier's states past its limit. The empty asm statements keep clang
 * from turning the arithmetic back into comparisons (which compile to
 * branches in BPF). */
struct key_hasher {
	__u32 hash, tag_hash, opened, closed, tag_len;
};

#define KEY_HASHER_INIT                                                                    \
	{ .hash = TERN_KEY_HASH_OFFSET_BASIS, .tag_hash = TERN_KEY_HASH_OFFSET_BASIS }

static __always_inline void key_hasher_step(struct key_hasher *h, __u32 byte)
{
	__u32 is_open, is_close, inside, mask, updated;

	h->hash ^= byte;
	h->hash *= TERN_KEY_HASH_PRIME;
	/* (x - 1) >> 31 is 1 for x == 0 and 0 for x in 1..255. */
	is_open = byte ^ '{';
	is_close = byte ^ '}';
	asm volatile("" : "+r"(is_open), "+r"(is_close));
	is_open = (is_open - 1) >> 31;
	is_close = (is_close - 1) >> 31;
	/* A byte is the tag's after its '{' and before its '}'. */
	inside = h->opened & (h->closed ^ 1) & (is_close ^ 1);
	h->closed |= h->opened & is_close;
	h->opened |= is_open;
	asm volatile("" : "+r"(inside));
	mask = 0 - inside;
	updated = (h->tag_hash ^ byte) * TERN_KEY_HASH_PRIME;
	h->tag_hash = (updated & mask) | (h->tag_hash & ~mask);
	h->tag_len += inside;
}

static __always_inline __u32 key_hasher_finish(const struct key_hasher *h)
{
	return h->closed && h->tag_len > 0 ? h->tag_hash : h->hash;
}

/* key_hash() of tern_wire over the key, which follows the header and its
 * extensions (extensions_len bytes, at most TERN_EXTENSIONS_LEN_MAX):
 * FNV-1a in a loop bounded by the longest key, each byte checked against
 * the frame end, of the whole key and of its hash tag (the bytes between
 * the first '{' and the first '}' after it) together; the tag's when it
 * is closed and not empty. */
static __always_inline int key_hash_matches(const struct tern_header *tern, __u32 extensions_len,
					    const void *end)
{
	const __u8 *key;
	/* The empty asm keeps the bound below for the verifier. */
	asm volatile("" : "+r"(extensions_len));
	if (extensions_len > TERN_EXTENSIONS_LEN_MAX)
		return 0;
	key = (const __u8 *)(tern + 1) + extensions_len;
	__u32 length = tern->key_len;
	struct key_hasher hasher = KEY_HASHER_INIT;

	for (__u32 i = 0; i < TERN_KEY_LEN_MAX; i++) {
		if (i >= length)
			break;
		if ((const void *)(key + i + 1) > end)
			return 0;
		key_hasher_step(&hasher, key[i]);
	}
	return key_hasher_finish(&hasher) == tern->key_hash;
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
	__u32 extensions_len = tern_extensions_len(tern->extensions);

	if (tern->magic != TERN_MAGIC || tern->version != TERN_WIRE_VERSION)
		return TERN_XDP_COUNTER_PASS_MALFORMED;
	if (classes == 0)
		return TERN_XDP_COUNTER_PASS_OP;
	if (!tern_status_known(tern->status) || !tern_effect_known(tern->effect) ||
	    tern->reserved != 0 || (tern->extensions & ~TERN_EXTENSIONS_KNOWN) ||
	    tern->key_len > TERN_KEY_LEN_MAX || tern->value_len > TERN_VALUE_LEN_MAX ||
	    frame->payload_len !=
		    TERN_HEADER_LEN + extensions_len + (__u32)tern->key_len + tern->value_len ||
	    !tern_extensions_allowed(classes, tern->extensions) ||
	    (tern->value_len != 0 && !(classes & TERN_OP_CLASS_CARRIES_VALUE)))
		return TERN_XDP_COUNTER_PASS_MALFORMED;
	if ((classes & (TERN_OP_CLASS_CLIENT_READ | TERN_OP_CLASS_CLIENT_WRITE)) &&
	    !key_hash_matches(tern, extensions_len, end))
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

#endif /* TERN_FRAME_H */
