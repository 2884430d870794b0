//! The extension area: typed, fixed-size records between the header and the
//! key, named by the bits of `Header::extensions` and laid out in bit order.
//!
//! Each kind says which ops may carry it (by op class); the decoder refuses
//! an unknown bit, a kind on an op that may not carry it, and lengths that
//! do not add up, and the XDP program checks the same through the generated
//! `tern_extensions_len()` and `tern_extensions_allowed()`. A kind is added
//! by one entry in [`KINDS`], a field in [`Extensions`] and its two lines in
//! `decode` and `encode_into`.

use zerocopy::big_endian as be;
use zerocopy::little_endian as le;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::layout::{FieldInfo, wire_struct};
use crate::{EXTENSIONS_LEN_MAX, Op, op_class};

/// Bits of `Header::extensions`.
pub mod ext {
    /// [`super::MapVersionExtension`]: the cluster-map version the sender
    /// acts on, on the refusals that tell the receiver to refresh its map
    /// (STALE_EPOCH, WRONG_SHARD). A client whose map is older knows it, and
    /// one whose map is as new knows a retry will do.
    pub const MAP_VERSION: u8 = 1;
    /// [`super::ExpiryExtension`]: a key's deadline. On a client write, the
    /// deadline it asks for (see [`super::expiry`]); on a REPLICATE, the
    /// deadline the head decided for the key's new version (absolute); on
    /// a read's REPLY, the deadline of the version read. Absent: no
    /// deadline (a SET without options makes a key last).
    pub const EXPIRY: u8 = 2;
    /// [`super::LargeExtension`]: the write's value, or the answer's, is
    /// too large for a datagram and travels out of band (over TCP, see
    /// `tern_control::transfer`): its length and checksum here, the
    /// datagram's own value empty. On a client write the value was staged
    /// at the head under the write's client and request ids; on a
    /// REPLICATE the successor fetches it from its predecessor by seq; on
    /// a REPLY (or the tail's ACK) the client fetches it from the replica
    /// named here, under its own ids.
    pub const LARGE: u8 = 4;
}

/// Bits of [`ExpiryExtension::mode`]. Every value of the byte is
/// well-formed on the wire; the head refuses (MALFORMED) a combination that
/// means nothing, as it decides the write.
pub mod expiry {
    /// `deadline_ms` is a duration from the head's clock when it decides
    /// (Redis EX/PX/EXPIRE), not a Unix time (EXAT/PXAT/EXPIREAT).
    pub const RELATIVE: u8 = 1;
    /// A write keeps the key's deadline (SET KEEPTTL).
    pub const KEEP: u8 = 2;
    /// EXPIRE only when the key has no deadline (NX).
    pub const IF_NONE: u8 = 4;
    /// EXPIRE only when the key has a deadline (XX).
    pub const IF_SOME: u8 = 8;
    /// EXPIRE only when the new deadline is later (GT; no deadline counts
    /// as infinitely late).
    pub const IF_LATER: u8 = 16;
    /// EXPIRE only when the new deadline is earlier (LT).
    pub const IF_EARLIER: u8 = 32;
    /// EXPIRE removes the key's deadline (PERSIST, GETEX PERSIST).
    pub const PERSIST: u8 = 64;
    /// EXPIRE deletes the key if its deadline has passed by the head's
    /// clock: the sequenced delete with which a head reclaims expired keys.
    pub const REAP: u8 = 128;
    /// The conditions of EXPIRE.
    pub const CONDITIONS: u8 = IF_NONE | IF_SOME | IF_LATER | IF_EARLIER;
}

// zerocopy's KnownLayout derive generates a helper type without Debug.
#[allow(missing_debug_implementations)]
mod records {
    use super::*;

    wire_struct! {
        /// The sender's cluster-map version (`ext::MAP_VERSION`).
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C)]
        pub struct MapVersionExtension {
            /// Version of the map the sender acts on.
            pub version: le::U64 => "__u64",
        }
    }

    wire_struct! {
        /// A key's deadline (`ext::EXPIRY`).
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C)]
        pub struct ExpiryExtension {
            /// Unix time in milliseconds, or a duration (`expiry::RELATIVE`).
            pub deadline_ms: le::U64 => "__u64",
            /// Bits of `expiry`.
            pub mode: u8 => "__u8",
        }
    }

    wire_struct! {
        /// A value carried out of band (`ext::LARGE`).
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C)]
        pub struct LargeExtension {
            /// The value's length in bytes.
            pub length: le::U32 => "__u32",
            /// CRC-32 (IEEE) of the value.
            pub checksum: le::U32 => "__u32",
            /// On answers, the IPv4 address of the replica holding the value (else 0).
            pub holder_ip: be::U32 => "__be32",
            /// On answers, that replica's port.
            pub holder_port: be::U16 => "__be16",
        }
    }
}
pub use records::{ExpiryExtension, LargeExtension, MapVersionExtension};

/// One kind of extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionKind {
    /// Its bit in `Header::extensions`.
    pub bit: u8,
    /// Its C name (`TERN_EXT_<name>`).
    pub name: &'static str,
    /// Its size in bytes.
    pub len: usize,
    /// The op classes that may carry it (bits of [`op_class`]).
    pub carried_by: u8,
}

/// Every kind, in bit order.
pub const KINDS: &[ExtensionKind] = &[
    ExtensionKind {
        bit: ext::MAP_VERSION,
        name: "MAP_VERSION",
        len: size_of::<MapVersionExtension>(),
        carried_by: op_class::ANSWER,
    },
    ExtensionKind {
        bit: ext::EXPIRY,
        name: "EXPIRY",
        len: size_of::<ExpiryExtension>(),
        // Client writes ask for one, REPLICATE carries the decided one,
        // REPLY the one of the version read.
        carried_by: op_class::CLIENT_WRITE | op_class::INTERNAL | op_class::ANSWER,
    },
    ExtensionKind {
        bit: ext::LARGE,
        name: "LARGE",
        len: size_of::<LargeExtension>(),
        // A client's write, the decided record, the answer.
        carried_by: op_class::CLIENT_WRITE | op_class::INTERNAL | op_class::ANSWER,
    },
];

/// Every bit a kind defines.
pub const KNOWN: u8 = {
    let mut known = 0;
    let mut index = 0;
    while index < KINDS.len() {
        known |= KINDS[index].bit;
        index += 1;
    }
    known
};

const _: () = {
    let mut total = 0;
    let mut index = 0;
    while index < KINDS.len() {
        assert!(KINDS[index].bit.is_power_of_two());
        if index > 0 {
            assert!(
                KINDS[index - 1].bit < KINDS[index].bit,
                "KINDS in bit order"
            );
        }
        total += KINDS[index].len;
        index += 1;
    }
    assert!(total <= EXTENSIONS_LEN_MAX);
};

/// Bytes of the extension area named by `mask` (unknown bits count nothing).
pub const fn extensions_len(mask: u8) -> usize {
    let mut total = 0;
    let mut index = 0;
    while index < KINDS.len() {
        if mask & KINDS[index].bit != 0 {
            total += KINDS[index].len;
        }
        index += 1;
    }
    total
}

/// Whether `op` may carry every extension of `mask` (all known).
pub const fn extensions_allowed(op: Op, mask: u8) -> bool {
    let mut index = 0;
    while index < KINDS.len() {
        if mask & KINDS[index].bit != 0 && op.classes() & KINDS[index].carried_by == 0 {
            return false;
        }
        index += 1;
    }
    true
}

/// A key's deadline as an extension carries it (`ext::EXPIRY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    pub deadline_ms: u64,
    /// Bits of [`expiry`].
    pub mode: u8,
}

impl Expiry {
    /// An absolute deadline, as the head decides it.
    pub fn at(deadline_ms: u64) -> Expiry {
        Expiry {
            deadline_ms,
            mode: 0,
        }
    }

    /// A deadline `duration_ms` after the head's clock when it decides.
    pub fn after(duration_ms: u64) -> Expiry {
        Expiry {
            deadline_ms: duration_ms,
            mode: expiry::RELATIVE,
        }
    }

    pub fn has(&self, bits: u8) -> bool {
        self.mode & bits != 0
    }
}

/// A value carried out of band, as an extension names it (`ext::LARGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Large {
    pub length: u32,
    /// CRC-32 of the value ([`Large::checksum_of`]).
    pub checksum: u32,
    /// Who holds an answer's value (0.0.0.0:0 on writes).
    pub holder: std::net::SocketAddrV4,
}

impl Large {
    /// The extension for `value`, held by `holder` (unspecified on writes).
    pub fn of(value: &[u8], holder: std::net::SocketAddrV4) -> Large {
        Large {
            length: value.len() as u32,
            checksum: Large::checksum_of(value),
            holder,
        }
    }

    pub fn checksum_of(value: &[u8]) -> u32 {
        crc32fast::hash(value)
    }

    /// Whether `value` is the value this extension names.
    pub fn names(&self, value: &[u8]) -> bool {
        value.len() == self.length as usize && Large::checksum_of(value) == self.checksum
    }
}

/// The extensions of one datagram, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `ext::MAP_VERSION`.
    pub map_version: Option<u64>,
    /// `ext::EXPIRY`.
    pub expiry: Option<Expiry>,
    /// `ext::LARGE`.
    pub large: Option<Large>,
}

impl Extensions {
    /// Just an absolute deadline, or nothing for 0 (no deadline).
    pub fn deadline(deadline_ms: u64) -> Extensions {
        Extensions {
            expiry: (deadline_ms != 0).then(|| Expiry::at(deadline_ms)),
            ..Extensions::default()
        }
    }
}

impl Extensions {
    /// The `Header::extensions` bits of these extensions.
    pub fn mask(&self) -> u8 {
        let mut mask = 0;
        if self.map_version.is_some() {
            mask |= ext::MAP_VERSION;
        }
        if self.expiry.is_some() {
            mask |= ext::EXPIRY;
        }
        if self.large.is_some() {
            mask |= ext::LARGE;
        }
        mask
    }

    /// Decodes the area of `mask` (known bits, `bytes` of exactly
    /// `extensions_len(mask)`, both checked by the caller).
    pub(crate) fn decode(mask: u8, mut bytes: &[u8]) -> Extensions {
        let mut extensions = Extensions::default();
        if mask & ext::MAP_VERSION != 0 {
            let (record, rest) = MapVersionExtension::read_from_prefix(bytes)
                .expect("the caller checked the area's length");
            extensions.map_version = Some(record.version.get());
            bytes = rest;
        }
        if mask & ext::EXPIRY != 0 {
            let (record, rest) = ExpiryExtension::read_from_prefix(bytes)
                .expect("the caller checked the area's length");
            extensions.expiry = Some(Expiry {
                deadline_ms: record.deadline_ms.get(),
                mode: record.mode,
            });
            bytes = rest;
        }
        if mask & ext::LARGE != 0 {
            let (record, rest) = LargeExtension::read_from_prefix(bytes)
                .expect("the caller checked the area's length");
            extensions.large = Some(Large {
                length: record.length.get(),
                checksum: record.checksum.get(),
                holder: std::net::SocketAddrV4::new(
                    record.holder_ip.get().into(),
                    record.holder_port.get(),
                ),
            });
            bytes = rest;
        }
        debug_assert!(bytes.is_empty());
        extensions
    }

    /// Appends the area to `out`, in bit order.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        if let Some(version) = self.map_version {
            let record = MapVersionExtension {
                version: le::U64::new(version),
            };
            out.extend_from_slice(record.as_bytes());
        }
        if let Some(expiry) = self.expiry {
            let record = ExpiryExtension {
                deadline_ms: le::U64::new(expiry.deadline_ms),
                mode: expiry.mode,
            };
            out.extend_from_slice(record.as_bytes());
        }
        if let Some(large) = self.large {
            let record = LargeExtension {
                length: le::U32::new(large.length),
                checksum: le::U32::new(large.checksum),
                holder_ip: be::U32::new((*large.holder.ip()).into()),
                holder_port: be::U16::new(large.holder.port()),
            };
            out.extend_from_slice(record.as_bytes());
        }
    }
}
