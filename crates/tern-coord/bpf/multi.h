/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One-shot transactions (MULTI) in the kernel: the items of a datagram
 * decoded and checked as tern_wire::multi::decode_items checks them (and
 * the coordinator's multi_items: the first item's key is the header's,
 * every item's slot served here), each item's key hashed (key_hash, hash
 * tags included), so that the fast path counts every item's key dirty as
 * the user-space coordinator does (DESIGN rule 3, one count per item) and
 * lowers them again at the acknowledgement, from the datagram kept in the
 * window slot.
 *
 * The items are read from a per-CPU copy of the datagram, one item per
 * bpf_loop iteration (the verifier checks the callback once, not once per
 * item), every index masked into the copy.
 */
#ifndef TERN_MULTI_H
#define TERN_MULTI_H

#include "frame.h"
#include "route.h"

/* The copy's size: a power of two above TERN_MESSAGE_LEN_MAX, for masking. */
#define MULTI_COPY_LEN 2048
#define MULTI_COPY_MASK (MULTI_COPY_LEN - 1)

_Static_assert(TERN_MESSAGE_LEN_MAX <= MULTI_COPY_LEN, "a datagram fits the copy");

struct multi_scratch {
	__u8 data[MULTI_COPY_LEN];
	/* key_hash of each item's key. */
	__u32 hashes[TERN_MULTI_ITEMS_MAX];
	/* Bit i: item i wants its key exclusively (txn::mode::of). */
	__u64 exclusive;
	/* A transaction request's (txn.h): its id, lease and participant
	 * list (offset in the copy and length). */
	__u64 client_id;
	__u64 txn_seq;
	__u32 lease_ms;
	__u32 participants_at;
	__u32 participants_len;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct multi_scratch);
} multi_scratch SEC(".maps");

/* Where the scan is, shared with its callback. */
struct multi_scan {
	__u32 pos;     /* the next item's offset in the copy */
	__u32 end;     /* the items' end (the value's) */
	__u32 key_at;  /* the header key's offset */
	__u32 key_len; /* the header key's length */
	__u32 bad;     /* set when an item is malformed */
};

static __always_inline struct multi_scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&multi_scratch, &zero);
}

static __always_inline __u32 byte_at(const struct multi_scratch *s, __u32 at)
{
	return s->data[at & MULTI_COPY_MASK];
}

/* A key being hashed, a byte per call (key_hasher_step, as
 * key_hash_matches hashes the header's key). */
struct key_scan {
	__u32 at;        /* the key's offset in the copy */
	__u32 header_at; /* the header key's offset, compared when `first` */
	__u32 first;
	__u32 differs;
	struct key_hasher hasher;
};

static long hash_byte(__u32 i, void *context)
{
	struct key_scan *key = context;
	struct multi_scratch *s = scratch();
	__u32 byte;

	if (!s) {
		key->differs = 1;
		return 1;
	}
	byte = byte_at(s, key->at + i);
	key->differs |= (byte ^ byte_at(s, key->header_at + i)) & (0 - key->first);
	key_hasher_step(&key->hasher, byte);
	return 0;
}

/* Item `index`: its header checked as check_item does, its key hashed
 * and, for the first, compared with the header's key. 0 to go on, 1 to
 * stop (bad set). */
static long scan_item(__u32 index, void *context)
{
	struct multi_scan *scan = context;
	struct multi_scratch *s = scratch();
	struct key_scan key = { .hasher = KEY_HASHER_INIT };
	__u32 pos, kind, flags, key_len, value_len, allowed, hash;

	if (!s || index >= TERN_MULTI_ITEMS_MAX)
		goto bad;
	pos = scan->pos;
	if (pos > MULTI_COPY_LEN || pos + TERN_MULTI_ITEM_HEADER_LEN > scan->end)
		goto bad;
	kind = byte_at(s, pos);
	flags = byte_at(s, pos + 1);
	key_len = byte_at(s, pos + 2) | byte_at(s, pos + 3) << 8;
	value_len = byte_at(s, pos + 4) | byte_at(s, pos + 5) << 8;
	pos += TERN_MULTI_ITEM_HEADER_LEN;
	if (kind < TERN_MULTI_KIND_FIRST || kind > TERN_MULTI_KIND_LAST)
		goto bad;
	allowed = (TERN_MULTI_ITEM_FLAGS >> (8 * kind)) & 0xff;
	if (flags & ~allowed)
		goto bad;
	if (key_len == 0 || key_len > TERN_KEY_LEN_MAX)
		goto bad;
	if (value_len != 0 && !((TERN_MULTI_KINDS_WITH_VALUE >> kind) & 1))
		goto bad;
	if (pos + key_len + value_len > scan->end)
		goto bad;
	key.first = index == 0;
	if (key.first && key_len != scan->key_len)
		goto bad;
	key.at = pos;
	key.header_at = scan->key_at;
	if (bpf_loop(key_len, hash_byte, &key, 0) != key_len || key.differs)
		goto bad;
	hash = key_hasher_finish(&key.hasher);
	s->hashes[index & (TERN_MULTI_ITEMS_MAX - 1)] = hash;
	/* txn::mode::of: only a CHECK, and a GET not FOR_UPDATE, share. */
	if (!(kind == TERN_MULTI_KIND_CHECK ||
	      (kind == TERN_MULTI_KIND_GET && !(flags & TERN_MULTI_FLAG_FOR_UPDATE))))
		s->exclusive |= 1ull << (index & (TERN_MULTI_ITEMS_MAX - 1));
	scan->pos = pos + key_len + value_len;
	return 0;
bad:
	scan->bad = 1;
	return 1;
}

/* Where the key and value of the datagram copied into `s` (`len`
 * bytes) are; 0 when the lengths do not add up. */
static __always_inline int locate_value(const struct multi_scratch *s, __u32 len,
					struct multi_scan *scan, __u32 *value_at)
{
	const struct tern_header *tern = (const struct tern_header *)s->data;
	__u32 extensions_len, value_len;

	if (len < TERN_HEADER_LEN || len > TERN_MESSAGE_LEN_MAX)
		return 0;
	extensions_len = tern_extensions_len(tern->extensions);
	if (extensions_len > TERN_EXTENSIONS_LEN_MAX)
		return 0;
	scan->key_at = TERN_HEADER_LEN + extensions_len;
	scan->key_len = tern->key_len;
	value_len = tern->value_len;
	if (scan->key_len > TERN_KEY_LEN_MAX || value_len > TERN_VALUE_LEN_MAX)
		return 0;
	*value_at = scan->key_at + scan->key_len;
	if (*value_at + value_len != len)
		return 0;
	scan->end = len;
	return 1;
}

/* Scans the items starting at `items_at` (a count, then each) up to the
 * value's end: their count, or 0 when they are malformed (the
 * user-space decoder refuses them: the datagram goes up). Their hashes
 * and modes are in the scratch. */
static __always_inline __u32 scan_items(struct multi_scratch *s, struct multi_scan *scan,
					__u32 items_at)
{
	__u32 count;
	long done;

	if (items_at >= scan->end)
		return 0;
	count = byte_at(s, items_at);
	if (count == 0 || count > TERN_MULTI_ITEMS_MAX)
		return 0;
	s->exclusive = 0;
	scan->pos = items_at + 1;
	done = bpf_loop(count, scan_item, scan, 0);
	if (done != count || scan->bad || scan->pos != scan->end)
		return 0;
	return count;
}

/* Scans the datagram copied into `s` (a MULTI, `len` bytes): its item
 * count, or 0 when it is malformed. */
static __always_inline __u32 scan_multi(struct multi_scratch *s, __u32 len)
{
	struct multi_scan scan = {};
	__u32 value_at;

	if (!locate_value(s, len, &scan, &value_at))
		return 0;
	return scan_items(s, &scan, value_at);
}

/* Copies the datagram a window slot keeps, word by word (a memcpy this
 * long is no BPF instruction). */
static __always_inline void copy_kept(struct multi_scratch *s, const struct tern_window_slot *slot)
{
	_Static_assert(TERN_MESSAGE_LEN_MAX % 8 == 0, "the copy is in words");
	__u64 *to = (__u64 *)s->data;
	const __u64 *from = (const __u64 *)slot->data;

	for (__u32 i = 0; i < TERN_MESSAGE_LEN_MAX / 8; i++)
		to[i] = READ_SHARED(from[i]);
	BARRIER();
}

/* The three entry points below are global functions: the verifier checks
 * each once, on its own, rather than on every path of the program that
 * calls it (the item loops would otherwise multiply its states past the
 * verifier's limit). */

/* The items of the MULTI copied into the scratch (`len` bytes): their
 * count, 0 when it is malformed. Their hashes are in the scratch. */
__attribute__((noinline)) int tern_multi_scan(__u32 len)
{
	struct multi_scratch *s = scratch();

	return s ? scan_multi(s, len) : 0;
}

/* Whether every one of the `count` items' slots is served here by local
 * shard `local_index` (serves_slot) and has a dirty entry: checked before
 * anything changes. */
__attribute__((noinline)) int tern_multi_servable(__u32 local_index, __u32 count)
{
	struct multi_scratch *s = scratch();

	if (!s)
		return 0;
	for (__u32 i = 0; i < TERN_MULTI_ITEMS_MAX; i++) {
		__u32 hash;

		if (i >= count)
			break;
		hash = s->hashes[i];
		if (!local_serves_slot(local_index, hash) ||
		    !local_dirty_count(local_index, hash & TERN_DIRTY_INDEX_MASK))
			return 0;
	}
	return 1;
}

/* Adds `delta` to the dirty count of every one of the `count` items. */
__attribute__((noinline)) int tern_multi_mark(__u32 local_index, __u32 count, int delta)
{
	struct multi_scratch *s = scratch();

	if (!s)
		return 0;
	for (__u32 i = 0; i < TERN_MULTI_ITEMS_MAX; i++) {
		__u64 *dirty;

		if (i >= count)
			break;
		dirty = local_dirty_count(local_index, s->hashes[i] & TERN_DIRTY_INDEX_MASK);
		if (dirty)
			__sync_fetch_and_add(dirty, (__s64)delta);
	}
	return 0;
}

#endif /* TERN_MULTI_H */
