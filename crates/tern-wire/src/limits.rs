//! Limits of the wire format, each with its unit in the name where it has one.

/// First two bytes of every datagram ("TN" on the wire).
pub const MAGIC: u16 = 0x4E54;
/// Version of this wire format; a receiver refuses any other. Version 2
/// added the extension area, the zero-checked `reserved` field and named
/// the overloaded `argument`.
pub const WIRE_VERSION: u8 = 2;
/// Size of [`crate::Header`] in bytes.
pub const HEADER_LEN: usize = 72;
/// Longest key, in bytes.
pub const KEY_LEN_MAX: usize = 256;
/// Longest value, in bytes. Chosen so that the largest message fits one
/// Ethernet frame (MTU 1500 minus 28 bytes of IPv4 and UDP headers), which the
/// kernel fast path needs: it cannot reassemble fragments.
pub const VALUE_LEN_MAX: usize = 1024;
/// Longest value a replica accepts out of band (`ext::LARGE`) unless
/// configured otherwise, in bytes: 16 MiB.
pub const LARGE_VALUE_LEN_DEFAULT: usize = 16 << 20;
/// Longest value a replica may be configured to accept out of band, in
/// bytes: 256 MiB (its log record must fit one log frame).
pub const LARGE_VALUE_LEN_MOST: usize = 256 << 20;
/// Longest extension area, in bytes (every extension at once fits).
pub const EXTENSIONS_LEN_MAX: usize = 64;
/// Largest datagram Tern sends or accepts, in bytes.
pub const MESSAGE_LEN_MAX: usize = HEADER_LEN + EXTENSIONS_LEN_MAX + KEY_LEN_MAX + VALUE_LEN_MAX;
/// Number of hash slots; the cluster map assigns slot ranges to shards.
pub const SLOT_COUNT: u32 = 16384;
/// Entries of a coordinator's dirty table (a power of two).
pub const DIRTY_SLOTS: u32 = 65536;

const _: () = assert!(MESSAGE_LEN_MAX <= 1500 - 28);
const _: () = assert!(DIRTY_SLOTS.is_power_of_two());
const _: () = assert!(DIRTY_SLOTS.is_multiple_of(SLOT_COUNT));

/// 32-bit FNV-1a hash of a key, or of its hash tag when it has one: as
/// in Redis Cluster, the bytes between the first `{` and the first `}`
/// after it, when there are any (`{user1}.name` and `{user1}.mail` hash
/// alike, so they share a slot and one-shard transactions can take both).
/// Routing (slot), the dirty table and the kernel path all use this one
/// function (keys of one tag share a dirty entry: a read of one is only
/// conservative while another is written); it is computed in eBPF in one
/// pass with a bounded loop, the whole key's hash and the tag's together.
pub fn key_hash(key: &[u8]) -> u32 {
    let fnv = |bytes: &[u8]| {
        let mut hash: u32 = KEY_HASH_OFFSET_BASIS;
        for &byte in bytes {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(KEY_HASH_PRIME);
        }
        hash
    };
    fnv(hash_tag(key).unwrap_or(key))
}

/// The hash tag of a key (Redis Cluster's rule), if it has a non-empty one.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&byte| byte == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&byte| byte == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// FNV-1a's 32-bit offset basis (the hash of the empty key).
pub const KEY_HASH_OFFSET_BASIS: u32 = 0x811C_9DC5;
/// FNV-1a's 32-bit prime.
pub const KEY_HASH_PRIME: u32 = 0x0100_0193;

/// The hash slot of a key hash (which shard owns the key).
pub fn slot_of(key_hash: u32) -> u32 {
    key_hash % SLOT_COUNT
}

/// The dirty-table entry of a key hash (DESIGN rule 3).
pub fn dirty_index(key_hash: u32) -> u32 {
    key_hash & DIRTY_INDEX_MASK
}

/// `dirty_index(hash) == hash & DIRTY_INDEX_MASK`.
pub const DIRTY_INDEX_MASK: u32 = DIRTY_SLOTS - 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_cluster() {
        assert_eq!(key_hash(b"{user1}.name"), key_hash(b"{user1}.mail"));
        assert_eq!(key_hash(b"{user1}.name"), key_hash(b"user1"));
        assert_eq!(key_hash(b"x{user1}y"), key_hash(b"user1"));
        // No tag: the whole key.
        for key in [&b"{}.empty"[..], b"{open", b"plain", b""] {
            assert_eq!(hash_tag(key), None, "{key:?}");
        }
        assert_ne!(key_hash(b"{}.a"), key_hash(b"{}.b"));
        // The first '{' and the first '}' after it.
        assert_eq!(hash_tag(b"}{closed}"), Some(&b"closed"[..]));
        assert_eq!(hash_tag(b"{a}{b}"), Some(&b"a"[..]));
        assert_eq!(hash_tag(b"{{nested}}"), Some(&b"{nested"[..]));
        // FNV-1a of the whole key otherwise (the empty key: the basis).
        assert_eq!(key_hash(b""), KEY_HASH_OFFSET_BASIS);
    }
}
