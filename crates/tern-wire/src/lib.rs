//! The one definition of every byte Tern puts on the data-plane wire.
//!
//! Every data-plane datagram (client request, forwarded request, replication,
//! acknowledgement, reply, error) is a fixed 72-byte [`Header`] followed by the
//! key bytes and then the value bytes. Integers are little-endian, except the
//! client's return address (`reply_ip`, `reply_port`), which is kept in network
//! byte order so that the kernel fast path can copy it into IP/UDP headers
//! verbatim. The C header used by the eBPF programs is generated from the
//! definitions here ([`c_header`]); a test fails when the committed copy drifts.
//!
//! No I/O here: this crate must not depend on sockets, tokio or aya.

pub mod export;
pub mod extension;
pub mod freeze;
mod header;
mod layout;
mod limits;
pub mod load;
pub mod maps;
mod message;
pub mod multi;
pub mod slots;
pub mod txn;

pub mod c_header;

pub use extension::{Expiry, Extensions, Large, expiry, ext};
pub use header::Header;
pub use layout::{CStruct, FieldInfo};
pub use limits::*;
pub use message::{
    DecodeError, EncodeError, Message, encode, encode_append, encode_append_with, encode_into,
};

/// Declares a `#[repr(u8)]` wire enum together with the list of its variants,
/// so that Rust and the generated C header share one definition.
#[macro_export]
#[doc(hidden)]
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $( $(#[doc = $doc:literal])* $variant:ident = $value:literal => $c_name:literal ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $( $(#[doc = $doc])* $variant = $value ),* }

        impl $name {
            /// Every variant with its C name, in declaration order.
            pub const ALL: &'static [($name, &'static str)] = &[ $( ($name::$variant, $c_name) ),* ];

            /// The variant whose wire value is `value`, if any.
            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// What a datagram asks for or carries.
    pub enum Op {
        /// Client read. Forwarded by the coordinator with `seq` = read stamp.
        Get = 1 => "GET",
        /// Client write of a value.
        Put = 2 => "PUT",
        /// Client removal of a key.
        Delete = 3 => "DELETE",
        /// Client compare-and-set: `version` holds the expected version (0: key absent).
        Cas = 4 => "CAS",
        /// A sequence number filled by the coordinator without a write (gap repair).
        Noop = 5 => "NOOP",
        /// Client atomic add: the value is a decimal delta; the head adds it to
        /// the key's decimal integer value (absent: 0).
        IncrBy = 6 => "INCRBY",
        /// Client atomic append of the value to the key's value (absent: empty).
        Append = 7 => "APPEND",
        /// Liveness probe; answered by the process itself.
        Ping = 8 => "PING",
        /// Counter request; the reply's value is `name value` lines.
        Stats = 9 => "STATS",
        /// A migration copies a key from another shard: the value, with the
        /// version it had there (`argument`). Sequenced like a write; it
        /// replaces only an older version of the key.
        Install = 10 => "INSTALL",
        /// Every later write of the shard gets a version of at least
        /// `argument` (a migration's destination, above the source's).
        Rebase = 11 => "REBASE",
        /// Forgets every key of the slots `argument` names (low 32 bits the
        /// first slot, high 32 bits the end): slots that moved away.
        DropSlots = 12 => "DROP_SLOTS",
        /// A migration holds the slots `argument` names (as DROP_SLOTS) still
        /// at their coordinator: the value is a [`freeze::Request`]. The reply
        /// is OK once no write of them is in flight (TRY_AGAIN before), with
        /// `seq` = the shard's next seq.
        Freeze = 13 => "FREEZE",
        /// A migration copies a dedup outcome from another shard: the
        /// header's `client_id`, `request_id`, `status` and `argument` (the
        /// version) are the outcome's; the value is its key's hash (4 bytes,
        /// little-endian). A retry of that request is then answered with it.
        InstallOutcome = 14 => "INSTALL_OUTCOME",
        /// A migration's destination forgets a key it copied that the
        /// source deleted since: the key is deleted unless it has a version
        /// of at least `argument` (a newer copy). Sequenced like a write.
        Uninstall = 15 => "UNINSTALL",
        /// Answer to a client (or to an administrative request).
        Reply = 16 => "REPLY",
        /// A sequenced write travelling down the chain; `effect` says what it does.
        Replicate = 17 => "REPLICATE",
        /// The tail's acknowledgement of `seq` to the coordinator.
        Ack = 18 => "ACK",
        /// Request to resend sequence numbers `seq..=version` to the sender.
        Retransmit = 19 => "RETRANSMIT",
        /// A new coordinator asks a replica how far it has got (DESIGN rule 8).
        SeqProbe = 20 => "SEQ_PROBE",
        /// Answer to `SeqProbe`: `seq` = highest applied, `version` = highest
        /// seen; the value, when not empty, the number of transactions
        /// prepared there (u64, little-endian), each reported by a
        /// TXN_REPORT.
        SeqReport = 21 => "SEQ_REPORT",
        /// A migration copies several keys from another shard at once: the
        /// value is their records (`export::encode_keys`: key, version,
        /// value each), the key empty. Each replaces only an older version
        /// of its key, as INSTALL does; one sequence number for all.
        InstallKeys = 22 => "INSTALL_KEYS",
        /// Client change of a key's deadline alone, named by the EXPIRY
        /// extension it must carry (EXPIRE and its options, PERSIST, and a
        /// head's reaping of an expired key). OK when it changed the key;
        /// NOT_FOUND without the key; CAS_MISMATCH when a condition failed.
        Expire = 23 => "EXPIRE",
        /// Client in-place change of the key's value, decided by the head
        /// like INCRBY: `Header::edit` names the kind (`edit::*`) and its
        /// offset, the value is the operand. The key keeps its deadline.
        Edit = 24 => "EDIT",
        /// Client one-shot transaction of one shard: the value is its items
        /// (`multi::encode_items`), the key the first item's key. Decided by
        /// the head all together at one seq; the reply's value is the
        /// answers (`multi::decode_answers`), or CAS_MISMATCH when a CHECK
        /// item failed (nothing written).
        Multi = 25 => "MULTI",
        /// Client's first phase of a transaction across shards (`txn`): the
        /// value is a [`txn::Prepare`], the key its first item's key. The
        /// head checks the versions read, locks the keys and decides the
        /// writes without applying them; OK is this shard's yes (the
        /// reply's value: the items' answers), anything else its no.
        Prepare = 26 => "PREPARE",
        /// Makes a prepared transaction's writes visible and releases its
        /// locks; the value is its [`txn::TxnId`], the key empty (sent to
        /// a shard). OK with its version (also when committed before), TXN_ABORTED,
        /// TXN_UNKNOWN.
        Commit = 27 => "COMMIT",
        /// Releases a transaction's locks without writing; for one never
        /// prepared here, a tombstone refuses its PREPARE from then on. OK,
        /// or TXN_COMMITTED.
        Abort = 28 => "ABORT",
        /// Where a transaction stands here: TXN_PREPARED, TXN_COMMITTED or
        /// TXN_ABORTED (one never prepared here is aborted for good, as by
        /// ABORT, and answered so).
        Resolve = 29 => "RESOLVE",
        /// A head's answer to a coordinator's SEQ_PROBE, one per transaction
        /// prepared there: the value its `txn::PrepareRecord`, so that a
        /// coordinator starting afresh holds its keys again (the SEQ_REPORT
        /// before says how many come).
        TxnReport = 30 => "TXN_REPORT",
        /// Client's lock-and-read of a locking (no-wait 2PL) transaction
        /// (`txn`): the value is a [`txn::Prepare`] of GET items (an
        /// exclusive lock for those flagged `FOR_UPDATE`), the key its
        /// first item's key. OK with the answers (values and versions, read
        /// under the locks now held); LOCKED when another transaction
        /// holds one of the keys, which aborts this one at the shard.
        Acquire = 31 => "ACQUIRE",
    }
}

wire_enum! {
    /// Outcome of a request, carried by replies, acknowledgements and replication.
    pub enum Status {
        Ok = 0 => "OK",
        NotFound = 1 => "NOT_FOUND",
        CasMismatch = 2 => "CAS_MISMATCH",
        /// The message's epoch is not the receiver's; refresh the cluster map.
        StaleEpoch = 3 => "STALE_EPOCH",
        /// The receiver does not serve this shard.
        WrongShard = 4 => "WRONG_SHARD",
        /// Temporarily unable (full in-flight window, coordinator recovering): retry.
        TryAgain = 5 => "TRY_AGAIN",
        Malformed = 6 => "MALFORMED",
        UnsupportedVersion = 7 => "UNSUPPORTED_VERSION",
        UnknownOp = 8 => "UNKNOWN_OP",
        TooLarge = 9 => "TOO_LARGE",
        /// The header's `key_hash` does not match the key.
        BadKeyHash = 10 => "BAD_KEY_HASH",
        /// INCRBY on a value that is not a decimal 64-bit integer, or overflow.
        NotInteger = 11 => "NOT_INTEGER",
        /// A copy of a write older than every outcome the replicas remember
        /// for its client (the client had more writes decided since than a
        /// client may keep outstanding): it may have been applied before,
        /// so it is not applied now.
        Forgotten = 12 => "FORGOTTEN",
        /// INCRBYFLOAT whose result would be NaN or infinite.
        NotFinite = 13 => "NOT_FINITE",
        /// A write whose value travels out of band (`ext::LARGE`) reached a
        /// head that does not hold it (staged elsewhere, lost with a
        /// restart, or not matching its checksum): nothing applied, and
        /// not remembered, so the client stages it again and resends the
        /// same request.
        ValueMissing = 14 => "VALUE_MISSING",
        /// A key a transaction across shards holds (`txn`): asked again
        /// later, the request finds it free (a PREPARE so refused has
        /// voted no).
        Locked = 15 => "LOCKED",
        /// The transaction was aborted at this shard.
        TxnAborted = 16 => "TXN_ABORTED",
        /// The transaction was committed at this shard.
        TxnCommitted = 17 => "TXN_COMMITTED",
        /// The transaction is prepared here, neither committed nor aborted.
        TxnPrepared = 18 => "TXN_PREPARED",
        /// This shard knows nothing of the transaction (a COMMIT of one it
        /// never prepared, or has forgotten).
        TxnUnknown = 19 => "TXN_UNKNOWN",
    }
}

wire_enum! {
    /// What a sequenced write does to the store once the head has decided it.
    pub enum Effect {
        /// Nothing (a failed CAS, a deduplicated retry, a gap fill).
        None = 0 => "NONE",
        Put = 1 => "PUT",
        Delete = 2 => "DELETE",
        /// A value with the version in `argument` (INSTALL).
        Install = 3 => "INSTALL",
        /// Later versions at least `argument` (REBASE).
        Rebase = 4 => "REBASE",
        /// The keys of the slot range in `argument` are gone (DROP_SLOTS).
        DropSlots = 5 => "DROP_SLOTS",
        /// Nothing written; the outcome is remembered with the key hash in
        /// the value (INSTALL_OUTCOME).
        Outcome = 6 => "OUTCOME",
        /// The keys in the value, each with its version (INSTALL_KEYS; the
        /// head leaves out those it has newer).
        InstallKeys = 7 => "INSTALL_KEYS",
        /// A transaction's writes and answers (`multi::Decided`), all at
        /// this seq.
        Multi = 8 => "MULTI",
        /// A transaction prepared (`txn::PrepareRecord`): its locks taken,
        /// its writes decided, nothing visible yet.
        Prepare = 9 => "PREPARE",
        /// A prepared transaction's writes (`txn::CommitRecord`), visible
        /// at this seq; its locks released.
        Commit = 10 => "COMMIT",
        /// A transaction aborted (the value its `txn::TxnId`): its locks
        /// released, or a tombstone that refuses its PREPARE.
        Abort = 11 => "ABORT",
        /// Locks a locking transaction took (`txn::PrepareRecord` with
        /// `acquired`): all it holds here so far; nothing written.
        Acquire = 12 => "ACQUIRE",
    }
}

/// What an op is, as bits: every receiver (the Rust cores and the XDP program,
/// through the generated `tern_op_classes()`) dispatches on these classes,
/// so adding an op means adding one line to [`Op::classes`].
pub mod op_class {
    /// A client's read of a key (forwarded by the coordinator).
    pub const CLIENT_READ: u8 = 1;
    /// A client's write of a key, sequenced by the coordinator.
    pub const CLIENT_WRITE: u8 = 2;
    /// May carry value bytes; any other op with a value is malformed.
    pub const CARRIES_VALUE: u8 = 4;
    /// Handled by the coordinator's kernel fast path (the rest goes up).
    pub const FAST_PATH: u8 = 8;
    /// Answered by the receiving process itself, whatever its role.
    pub const ADMIN: u8 = 16;
    /// A message between Tern's own processes (chain, recovery, answers).
    pub const INTERNAL: u8 = 32;
    /// An answer to a request (REPLY).
    pub const ANSWER: u8 = 64;
    /// A sequenced write not bound to its key's slot: a migration's copy,
    /// rebase and drop, sequenced whatever slots the shard serves.
    pub const ANY_SLOT: u8 = 128;
    /// Every class with its C name.
    pub const ALL: &[(u8, &str)] = &[
        (CLIENT_READ, "CLIENT_READ"),
        (CLIENT_WRITE, "CLIENT_WRITE"),
        (CARRIES_VALUE, "CARRIES_VALUE"),
        (FAST_PATH, "FAST_PATH"),
        (ADMIN, "ADMIN"),
        (INTERNAL, "INTERNAL"),
        (ANSWER, "ANSWER"),
        (ANY_SLOT, "ANY_SLOT"),
    ];
}

impl Op {
    /// The classes of this op (bits of [`op_class`]): the one definition
    /// that the Rust cores and the generated C function share.
    pub const fn classes(self) -> u8 {
        use op_class::*;
        match self {
            Op::Get => CLIENT_READ | FAST_PATH,
            Op::Put | Op::Cas | Op::IncrBy | Op::Append | Op::Edit => {
                CLIENT_WRITE | CARRIES_VALUE | FAST_PATH
            }
            Op::Delete | Op::Expire => CLIENT_WRITE | FAST_PATH,
            // Its items decoded by the kernel too (each key counted dirty).
            Op::Multi => CLIENT_WRITE | CARRIES_VALUE | FAST_PATH,
            // Their items decoded by the kernel too, which takes their
            // holds in the shared hold table.
            Op::Prepare | Op::Acquire => CLIENT_WRITE | CARRIES_VALUE | FAST_PATH,
            // Addressed to a shard by the transaction's id alone; COMMIT and
            // ABORT release their holds at the acknowledgement, in the
            // kernel too; RESOLVE (a settler's, rare) goes up.
            Op::Commit | Op::Abort => CLIENT_WRITE | CARRIES_VALUE | ANY_SLOT | FAST_PATH,
            Op::Resolve => CLIENT_WRITE | CARRIES_VALUE | ANY_SLOT,
            Op::Install | Op::InstallOutcome | Op::InstallKeys => {
                CLIENT_WRITE | CARRIES_VALUE | ANY_SLOT
            }
            Op::Rebase | Op::DropSlots | Op::Uninstall => CLIENT_WRITE | ANY_SLOT,
            Op::Freeze => INTERNAL | CARRIES_VALUE,
            Op::Noop | Op::Retransmit | Op::SeqProbe => INTERNAL,
            Op::SeqReport | Op::TxnReport => INTERNAL | CARRIES_VALUE,
            Op::Ping | Op::Stats => ADMIN,
            Op::Reply => INTERNAL | CARRIES_VALUE | ANSWER,
            Op::Replicate => INTERNAL | CARRIES_VALUE,
            Op::Ack => INTERNAL | CARRIES_VALUE | FAST_PATH,
        }
    }

    const fn is(self, class: u8) -> bool {
        self.classes() & class != 0
    }

    /// A client's request for a key (sequenced writes and reads).
    pub const fn is_client_request(self) -> bool {
        self.is(op_class::CLIENT_READ | op_class::CLIENT_WRITE)
    }

    /// A client's write, which the coordinator sequences.
    pub const fn is_client_write(self) -> bool {
        self.is(op_class::CLIENT_WRITE)
    }

    /// A migration's write, sequenced whatever slots the shard serves.
    pub const fn is_any_slot(self) -> bool {
        self.is(op_class::ANY_SLOT)
    }

    /// Whether a datagram of this op may carry value bytes.
    pub const fn carries_value(self) -> bool {
        self.is(op_class::CARRIES_VALUE)
    }

    /// Whether the XDP coordinator handles this op in the kernel.
    pub const fn is_fast_path(self) -> bool {
        self.is(op_class::FAST_PATH)
    }

    /// Ping and Stats: answered by whichever process receives them.
    pub const fn is_admin(self) -> bool {
        self.is(op_class::ADMIN)
    }
}

/// The kinds of EDIT, each decided by the head against the key's value
/// (absent: empty), as Redis's command of the same name.
pub mod edit {
    /// SETRANGE: the operand written at byte `offset`, the value padded
    /// with zero bytes up to it. An empty operand changes nothing.
    pub const SET_RANGE: u8 = 1;
    /// INCRBYFLOAT: the decimal operand added to the decimal value.
    pub const INCR_BY_FLOAT: u8 = 2;
    /// SETBIT: bit `offset` (0: the high bit of byte 0) set to the operand,
    /// `0` or `1`; the value padded with zero bytes up to it.
    pub const SET_BIT: u8 = 3;
    /// Largest offset `Header::set_edit` packs.
    pub const OFFSET_MAX: u64 = (1 << 56) - 1;

    /// EDIT's `argument`: the kind in the top byte, the offset (cut to
    /// `OFFSET_MAX`: every value limit is far below) in the rest.
    pub const fn pack(kind: u8, offset: u64) -> u64 {
        let offset = if offset > OFFSET_MAX {
            OFFSET_MAX
        } else {
            offset
        };
        (kind as u64) << 56 | offset
    }
}

/// Bits of [`Header::flags`].
pub mod flags {
    /// A read of a dirty key: the replica (the tail) returns its newest applied
    /// version instead of the newest version at or below the stamp.
    pub const TAIL_READ: u8 = 1;
    /// The datagram is a resend; receivers treat it like the original.
    pub const RESENT: u8 = 2;
    /// PUT only if the key exists (Redis `SET XX`).
    pub const IF_EXISTS: u8 = 4;
    /// The reply to a write carries the key's value before it (`SET GET`).
    pub const RETURN_OLD: u8 = 8;
    /// The reply to a write carries the key's value after it (INCRBY, APPEND).
    pub const RETURN_NEW: u8 = 16;
    /// On a reply to RETURN_OLD: the key had no value (Redis nil).
    pub const ANSWER_ABSENT: u8 = 32;
    /// On a REPLICATE: the key's value before this write had expired by
    /// the head's clock when it decided, so the tail answers RETURN_OLD
    /// with nil as the head's decision assumed. Set by heads only.
    pub const OLD_EXPIRED: u8 = 64;
    /// On a REPLICATE whose value is out of band (`ext::LARGE`): the value
    /// is the one its client staged, unchanged (a SET's, not one the head
    /// computed), so a replica the client staged it at too may take it
    /// from there instead of fetching it from its predecessor. Set by
    /// heads only.
    pub const CLIENT_VALUE: u8 = 128;
    /// Flags a client sets on a write, which travel with it down the chain.
    pub const WRITE_OPTIONS: u8 = IF_EXISTS | RETURN_OLD | RETURN_NEW;
    /// Flags a reply keeps from the acknowledgement it is made from.
    pub const REPLY_OPTIONS: u8 = ANSWER_ABSENT;
    /// Every flag this version of the wire defines.
    pub const ALL: &[(u8, &str)] = &[
        (TAIL_READ, "TAIL_READ"),
        (RESENT, "RESENT"),
        (IF_EXISTS, "IF_EXISTS"),
        (RETURN_OLD, "RETURN_OLD"),
        (RETURN_NEW, "RETURN_NEW"),
        (ANSWER_ABSENT, "ANSWER_ABSENT"),
        (OLD_EXPIRED, "OLD_EXPIRED"),
        (CLIENT_VALUE, "CLIENT_VALUE"),
    ];
}
