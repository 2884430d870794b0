//! The extension area: typed, fixed-size records between the header and the
//! key, named by the bits of `Header::extensions` and laid out in bit order.
//!
//! Each kind says which ops may carry it (by op class); the decoder refuses
//! an unknown bit, a kind on an op that may not carry it, and lengths that
//! do not add up, and the XDP program checks the same through the generated
//! `tern_extensions_len()` and `tern_extensions_allowed()`. A kind is added
//! by one entry in [`KINDS`], a field in [`Extensions`] and its two lines in
//! `decode` and `encode_into`.

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
}
pub use records::MapVersionExtension;

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
pub const KINDS: &[ExtensionKind] = &[ExtensionKind {
    bit: ext::MAP_VERSION,
    name: "MAP_VERSION",
    len: size_of::<MapVersionExtension>(),
    carried_by: op_class::ANSWER,
}];

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

/// The extensions of one datagram, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `ext::MAP_VERSION`.
    pub map_version: Option<u64>,
}

impl Extensions {
    /// The `Header::extensions` bits of these extensions.
    pub fn mask(&self) -> u8 {
        let mut mask = 0;
        if self.map_version.is_some() {
            mask |= ext::MAP_VERSION;
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
    }
}
