//! The fixed header that starts every datagram.

use std::net::{Ipv4Addr, SocketAddrV4};

use zerocopy::big_endian as be;
use zerocopy::little_endian as le;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::layout::{FieldInfo, wire_struct};
use crate::{Effect, HEADER_LEN, MAGIC, Op, Status, WIRE_VERSION};

// zerocopy's KnownLayout derive generates a helper type without Debug.
#[allow(missing_debug_implementations)]
mod layout {
    use super::*;
    wire_struct! {
        /// The 72-byte header of every Tern datagram, followed by the
        /// extensions its `extensions` bits name, `key_len` key bytes and
        /// `value_len` value bytes.
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(C)]
        pub struct Header {
            /// Always MAGIC.
            pub magic: le::U16 => "__u16",
            /// Always WIRE_VERSION.
            pub version: u8 => "__u8",
            /// An Op.
            pub op: u8 => "__u8",
            /// A Status (replies, acks, replication).
            pub status: u8 => "__u8",
            /// Bits of flags::*.
            pub flags: u8 => "__u8",
            /// An Effect (replication and acks).
            pub effect: u8 => "__u8",
            /// Bits of ext::*: the extensions between the header and the key.
            pub extensions: u8 => "__u8",
            /// Length of the key that follows the header.
            pub key_len: le::U16 => "__u16",
            /// Length of the value that follows the key.
            pub value_len: le::U16 => "__u16",
            /// UDP port of the client to answer, network byte order.
            pub reply_port: be::U16 => "__be16",
            /// Zero; a receiver refuses anything else (room for later versions).
            pub reserved: le::U16 => "__u16",
            /// IPv4 address of the client to answer, network byte order.
            pub reply_ip: be::U32 => "__be32",
            /// Shard the key belongs to.
            pub shard: le::U32 => "__u32",
            /// Epoch of the sender's view of the shard (DESIGN rule 7).
            pub epoch: le::U32 => "__u32",
            /// key_hash(key); indexes the dirty table (DESIGN rule 3).
            pub key_hash: le::U32 => "__u32",
            /// Client identity for deduplication (DESIGN rule 6).
            pub client_id: le::U64 => "__u64",
            /// Per-client request number; retries reuse it.
            pub request_id: le::U64 => "__u64",
            /// Write sequence number, or the read stamp of a forwarded read.
            pub seq: le::U64 => "__u64",
            /// Highest sequence number acknowledged by the tail, as the sender knows it.
            pub commit_seq: le::U64 => "__u64",
            /// The op's argument, read and written by the accessor named for the op.
            pub argument: le::U64 => "__u64",
        }
    }
}
pub use layout::Header;

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_LEN);
const _: () = assert!(core::mem::align_of::<Header>() == 1);
const _: () = assert!(core::mem::offset_of!(Header, seq) == 48);

impl Header {
    /// A zeroed header with magic, version, op, shard and epoch set.
    pub fn new(op: Op, shard: u32, epoch: u32) -> Self {
        let mut header = Header::new_zeroed();
        header.magic.set(MAGIC);
        header.version = WIRE_VERSION;
        header.op = op as u8;
        header.shard.set(shard);
        header.epoch.set(epoch);
        header
    }

    /// The op; only call on a header that passed [`crate::Message::decode`].
    pub fn op(&self) -> Op {
        Op::from_u8(self.op).expect("decoded headers carry a known op")
    }

    /// The status; only call on a header that passed [`crate::Message::decode`].
    pub fn status(&self) -> Status {
        Status::from_u8(self.status).expect("decoded headers carry a known status")
    }

    /// The effect; only call on a header that passed [`crate::Message::decode`].
    pub fn effect(&self) -> Effect {
        Effect::from_u8(self.effect).expect("decoded headers carry a known effect")
    }

    /// The client's return address.
    pub fn reply_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.reply_ip.get()), self.reply_port.get())
    }

    pub fn set_reply_addr(&mut self, addr: SocketAddrV4) {
        self.reply_ip.set(u32::from(*addr.ip()));
        self.reply_port.set(addr.port());
    }

    pub fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// CAS: the version the key must have (0: absent) for the write to apply.
    pub fn expected_version(&self) -> u64 {
        self.argument.get()
    }

    pub fn set_expected_version(&mut self, version: u64) {
        self.argument.set(version);
    }

    /// REPLY, ACK, REPLICATE: the version read or written, or the key's
    /// current version when a write was refused.
    pub fn version(&self) -> u64 {
        self.argument.get()
    }

    pub fn set_version(&mut self, version: u64) {
        self.argument.set(version);
    }

    /// DROP_SLOTS: the slot range `[start, end)` whose keys go.
    pub fn slot_range(&self) -> [u32; 2] {
        let packed = self.argument.get();
        [packed as u32, (packed >> 32) as u32]
    }

    pub fn set_slot_range(&mut self, [start, end]: [u32; 2]) {
        self.argument.set(u64::from(start) | (u64::from(end) << 32));
    }

    /// RETRANSMIT: the last sequence number of the range `seq..=last`.
    pub fn retransmit_last(&self) -> u64 {
        self.argument.get()
    }

    pub fn set_retransmit_last(&mut self, last: u64) {
        self.argument.set(last);
    }

    /// EDIT: its kind (`edit::*`, the top byte) and offset (the rest).
    pub fn edit(&self) -> (u8, u64) {
        let packed = self.argument.get();
        ((packed >> 56) as u8, packed & crate::edit::OFFSET_MAX)
    }

    /// Sets EDIT's kind and offset (`edit::pack`).
    pub fn set_edit(&mut self, kind: u8, offset: u64) {
        self.argument.set(crate::edit::pack(kind, offset));
    }

    /// SEQ_REPORT, and a replica's answer to PING: the highest sequence
    /// number it has seen.
    pub fn highest_seen(&self) -> u64 {
        self.argument.get()
    }

    pub fn set_highest_seen(&mut self, seq: u64) {
        self.argument.set(seq);
    }
}
