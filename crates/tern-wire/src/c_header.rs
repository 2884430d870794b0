//! Generates `include/tern_wire.h`, the C view of this crate for the eBPF
//! programs. Regenerate with `cargo run -p tern-wire --bin tern-wire-gen-header`;
//! the test `committed_c_header_matches_rust_definitions` fails when the
//! committed file differs from what this module produces.

use std::fmt::Write;

use std::mem::size_of;

use crate::extension::{self, ExpiryExtension, LargeExtension, MapVersionExtension};
use crate::maps::{
    ALLOW_NETWORKS_MAX, CAS_ATTEMPTS_MAX, CHAIN_LEN_MAX, CLIENT_MACS_MAX, Endpoint, HOLD_BUCKETS,
    HOLD_KEYS_MAX, HOLD_LOCKED, HOLD_MIX, HOLD_PARTICIPANTS_LEN, HOLD_WAYS, HoldBucket, HoldSlot,
    INFLIGHT_WRITES_MAX, ROUTE_EARLY, ROUTE_FANOUT, ROUTE_QUORUM_SHIFT, SHARD_ID_MAX, SLOT_WORDS,
    ShardCell, ShardRoute, WINDOW_MULTI, WindowSlot, XDP_COUNTER_COUNT, XdpCounter, fanout_acks,
};
use crate::{
    CStruct, DIRTY_INDEX_MASK, DIRTY_SLOTS, EXTENSIONS_LEN_MAX, Effect, HEADER_LEN, Header,
    KEY_HASH_OFFSET_BASIS, KEY_HASH_PRIME, KEY_LEN_MAX, MAGIC, MESSAGE_LEN_MAX, Op, SLOT_COUNT,
    Status, VALUE_LEN_MAX, WIRE_VERSION, flags, op_class,
};

/// Path of the committed header, relative to this crate's root.
pub const COMMITTED_PATH: &str = "include/tern_wire.h";

/// The full text of the C header.
pub fn generate() -> String {
    let mut text = String::new();
    let out = &mut text;
    // Writing to a String cannot fail.
    let _ = writeln!(out, "/* Tern wire format for C (eBPF) programs.");
    let _ = writeln!(out, " * GENERATED from crates/tern-wire by");
    let _ = writeln!(
        out,
        " *   cargo run -p tern-wire --bin tern-wire-gen-header"
    );
    let _ = writeln!(
        out,
        " * Do not edit: a test fails when this file and the Rust definitions differ."
    );
    let _ = writeln!(
        out,
        " * Integers are little-endian except the __be fields (network byte order). */"
    );
    let _ = writeln!(out, "#ifndef TERN_WIRE_H\n#define TERN_WIRE_H\n");
    let _ = writeln!(out, "#include <linux/types.h>\n");
    let _ = writeln!(out, "#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__");
    let _ = writeln!(
        out,
        "#error \"tern_wire.h reads little-endian fields natively\""
    );
    let _ = writeln!(out, "#endif\n");
    define(out, "TERN_MAGIC", &format!("{MAGIC:#06x}"));
    define(out, "TERN_WIRE_VERSION", &WIRE_VERSION.to_string());
    define(out, "TERN_HEADER_LEN", &HEADER_LEN.to_string());
    define(out, "TERN_KEY_LEN_MAX", &KEY_LEN_MAX.to_string());
    define(out, "TERN_VALUE_LEN_MAX", &VALUE_LEN_MAX.to_string());
    define(
        out,
        "TERN_EXTENSIONS_LEN_MAX",
        &EXTENSIONS_LEN_MAX.to_string(),
    );
    define(out, "TERN_MESSAGE_LEN_MAX", &MESSAGE_LEN_MAX.to_string());
    define(out, "TERN_SLOT_COUNT", &SLOT_COUNT.to_string());
    define(out, "TERN_DIRTY_SLOTS", &DIRTY_SLOTS.to_string());
    define(
        out,
        "TERN_DIRTY_INDEX_MASK",
        &format!("{DIRTY_INDEX_MASK:#x}"),
    );
    define(
        out,
        "TERN_KEY_HASH_OFFSET_BASIS",
        &format!("{KEY_HASH_OFFSET_BASIS:#010x}u"),
    );
    define(
        out,
        "TERN_KEY_HASH_PRIME",
        &format!("{KEY_HASH_PRIME:#010x}u"),
    );
    out.push('\n');
    for (op, name) in Op::ALL {
        define(out, &format!("TERN_OP_{name}"), &(*op as u8).to_string());
    }
    out.push('\n');
    for (status, name) in Status::ALL {
        define(
            out,
            &format!("TERN_STATUS_{name}"),
            &(*status as u8).to_string(),
        );
    }
    out.push('\n');
    for (effect, name) in Effect::ALL {
        define(
            out,
            &format!("TERN_EFFECT_{name}"),
            &(*effect as u8).to_string(),
        );
    }
    out.push('\n');
    for (flag, name) in flags::ALL {
        define(out, &format!("TERN_FLAG_{name}"), &flag.to_string());
    }
    define(
        out,
        "TERN_FLAGS_WRITE_OPTIONS",
        &flags::WRITE_OPTIONS.to_string(),
    );
    define(
        out,
        "TERN_FLAGS_REPLY_OPTIONS",
        &flags::REPLY_OPTIONS.to_string(),
    );
    out.push('\n');
    for (class, name) in op_class::ALL {
        define(out, &format!("TERN_OP_CLASS_{name}"), &class.to_string());
    }
    out.push('\n');
    for kind in extension::KINDS {
        define(
            out,
            &format!("TERN_EXT_{}", kind.name),
            &kind.bit.to_string(),
        );
    }
    define(out, "TERN_EXTENSIONS_KNOWN", &extension::KNOWN.to_string());
    out.push('\n');
    define(
        out,
        "TERN_INFLIGHT_WRITES_MAX",
        &INFLIGHT_WRITES_MAX.to_string(),
    );
    define(out, "TERN_SHARD_ID_MAX", &SHARD_ID_MAX.to_string());
    define(out, "TERN_CHAIN_LEN_MAX", &CHAIN_LEN_MAX.to_string());
    define(out, "TERN_CAS_ATTEMPTS_MAX", &CAS_ATTEMPTS_MAX.to_string());
    define(out, "TERN_WINDOW_MULTI", &format!("{WINDOW_MULTI:#x}u"));
    define(out, "TERN_ROUTE_EARLY", &ROUTE_EARLY.to_string());
    define(out, "TERN_ROUTE_FANOUT", &ROUTE_FANOUT.to_string());
    define(
        out,
        "TERN_ROUTE_QUORUM_SHIFT",
        &ROUTE_QUORUM_SHIFT.to_string(),
    );
    define(
        out,
        "TERN_FANOUT_MASK_BITS",
        &fanout_acks::MASK_BITS.to_string(),
    );
    define(
        out,
        "TERN_FANOUT_SEQ_MASK",
        &format!("{:#x}ull", fanout_acks::SEQ_MASK),
    );
    define(
        out,
        "TERN_FANOUT_EPOCH_MASK",
        &format!("{:#x}ull", fanout_acks::EPOCH_MASK),
    );
    define(
        out,
        "TERN_FANOUT_EPOCH_SHIFT",
        &(fanout_acks::SEQ_BITS + fanout_acks::MASK_BITS).to_string(),
    );
    define(out, "TERN_CLIENT_MACS_MAX", &CLIENT_MACS_MAX.to_string());
    define(out, "TERN_SLOT_WORDS", &SLOT_WORDS.to_string());
    describe_items(out);
    define(
        out,
        "TERN_ALLOW_NETWORKS_MAX",
        &ALLOW_NETWORKS_MAX.to_string(),
    );
    define(out, "TERN_HOLD_BUCKETS", &HOLD_BUCKETS.to_string());
    define(out, "TERN_HOLD_WAYS", &HOLD_WAYS.to_string());
    define(out, "TERN_HOLD_KEYS_MAX", &HOLD_KEYS_MAX.to_string());
    define(
        out,
        "TERN_HOLD_PARTICIPANTS_LEN",
        &HOLD_PARTICIPANTS_LEN.to_string(),
    );
    define(out, "TERN_HOLD_LOCKED", &HOLD_LOCKED.to_string());
    define(out, "TERN_HOLD_MIX", &format!("{HOLD_MIX:#x}ull"));
    describe_transactions(out);
    for (counter, name) in XdpCounter::ALL {
        define(
            out,
            &format!("TERN_XDP_COUNTER_{name}"),
            &(*counter as u8).to_string(),
        );
    }
    define(
        out,
        "TERN_XDP_COUNTER_COUNT",
        &XDP_COUNTER_COUNT.to_string(),
    );
    for shared in STRUCTS {
        declare(out, shared);
    }
    classify_ops(out);
    describe_extensions(out);
    known_values(
        out,
        "status",
        Status::ALL.iter().map(|(value, _)| *value as u8),
    );
    known_values(
        out,
        "effect",
        Effect::ALL.iter().map(|(value, _)| *value as u8),
    );
    let _ = writeln!(out, "\n#endif /* TERN_WIRE_H */");
    text
}

/// Every struct shared with C, in dependency order.
pub const STRUCTS: &[CStruct] = &[
    CStruct {
        name: "tern_header",
        fields: Header::FIELDS,
        size: size_of::<Header>(),
        packed: true,
    },
    CStruct {
        name: "tern_ext_map_version",
        fields: MapVersionExtension::FIELDS,
        size: size_of::<MapVersionExtension>(),
        packed: true,
    },
    CStruct {
        name: "tern_ext_expiry",
        fields: ExpiryExtension::FIELDS,
        size: size_of::<ExpiryExtension>(),
        packed: true,
    },
    CStruct {
        name: "tern_ext_large",
        fields: LargeExtension::FIELDS,
        size: size_of::<LargeExtension>(),
        packed: true,
    },
    CStruct {
        name: "tern_endpoint",
        fields: Endpoint::FIELDS,
        size: size_of::<Endpoint>(),
        packed: true,
    },
    CStruct {
        name: "tern_shard_route",
        fields: ShardRoute::FIELDS,
        size: size_of::<ShardRoute>(),
        // Not packed, so that `generation` is one aligned load in C.
        packed: false,
    },
    CStruct {
        name: "tern_shard_cell",
        fields: ShardCell::FIELDS,
        size: size_of::<ShardCell>(),
        packed: false,
    },
    CStruct {
        name: "tern_hold_slot",
        fields: HoldSlot::FIELDS,
        size: size_of::<HoldSlot>(),
        packed: false,
    },
    CStruct {
        name: "tern_hold_bucket",
        fields: HoldBucket::FIELDS,
        size: size_of::<HoldBucket>(),
        packed: false,
    },
    CStruct {
        name: "tern_window_slot",
        fields: WindowSlot::FIELDS,
        size: size_of::<WindowSlot>(),
        packed: false,
    },
];

/// Declares one struct and asserts its size and every offset.
fn declare(out: &mut String, shared: &CStruct) {
    let name = shared.name;
    let _ = writeln!(out, "\nstruct {name} {{");
    for field in shared.fields {
        // `T[N]` in the field table becomes `T name[N]` in C.
        let declaration = match field.c_type.split_once('[') {
            Some((element, count)) => format!("{element} {}[{count};", field.name),
            None => format!("{} {};", field.c_type, field.name),
        };
        let _ = writeln!(
            out,
            "\t{declaration:<32} /* @{:<2} {} */",
            field.offset,
            field.doc.trim()
        );
    }
    let attribute = if shared.packed {
        " __attribute__((packed))"
    } else {
        ""
    };
    let _ = writeln!(out, "}}{attribute};\n");
    let _ = writeln!(
        out,
        "_Static_assert(sizeof(struct {name}) == {}, \"{name} size\");",
        shared.size
    );
    for field in shared.fields {
        let _ = writeln!(
            out,
            "_Static_assert(__builtin_offsetof(struct {name}, {field}) == {offset}, \"{name}.{field} offset\");",
            field = field.name,
            offset = field.offset
        );
    }
}

/// `tern_op_classes(op)`: the classes of `op` (0 for an unknown op), the C
/// twin of [`Op::classes`].
fn classify_ops(out: &mut String) {
    let _ = writeln!(
        out,
        "\n/* The TERN_OP_CLASS_* bits of op; 0 when op is unknown. */"
    );
    let _ = writeln!(
        out,
        "static inline __attribute__((always_inline)) __u8 tern_op_classes(__u8 op)\n{{"
    );
    let _ = writeln!(out, "\tswitch (op) {{");
    for (op, name) in Op::ALL {
        let _ = writeln!(
            out,
            "\tcase TERN_OP_{name}:\n\t\treturn {};",
            class_names(op.classes())
        );
    }
    let _ = writeln!(out, "\tdefault:\n\t\treturn 0;\n\t}}\n}}");
}

/// A one-shot transaction's items (`multi`) as the kernel checks them,
/// the C view of `multi::check_count` and `check_item`: the kinds, the
/// flags each kind may carry (8 bits per kind, by kind), and the kinds
/// that carry a value (a bit per kind).
fn describe_items(out: &mut String) {
    use crate::multi::{ITEM_HEADER_LEN, ITEMS_MAX, Item, item_flags, kind};
    define(out, "TERN_MULTI_ITEMS_MAX", &ITEMS_MAX.to_string());
    define(
        out,
        "TERN_MULTI_ITEM_HEADER_LEN",
        &ITEM_HEADER_LEN.to_string(),
    );
    define(out, "TERN_MULTI_KIND_FIRST", &kind::CHECK.to_string());
    define(out, "TERN_MULTI_KIND_LAST", &kind::GET.to_string());
    // The kinds and flag that decide a lock's mode (`txn::mode::of`).
    define(out, "TERN_MULTI_KIND_CHECK", &kind::CHECK.to_string());
    define(out, "TERN_MULTI_KIND_GET", &kind::GET.to_string());
    define(
        out,
        "TERN_MULTI_FLAG_FOR_UPDATE",
        &item_flags::FOR_UPDATE.to_string(),
    );
    let (mut flags, mut with_value) = (0u64, 0u64);
    for kind in kind::CHECK..=kind::GET {
        flags |= u64::from(item_flags::allowed(kind)) << (8 * kind);
        if Item::carries_value(kind) {
            with_value |= 1 << kind;
        }
    }
    define(out, "TERN_MULTI_ITEM_FLAGS", &format!("{flags:#x}ull"));
    define(
        out,
        "TERN_MULTI_KINDS_WITH_VALUE",
        &format!("{with_value:#x}u"),
    );
}

/// A transaction request's value as the kernel checks it, the C view of
/// `txn::Prepare::decode`'s head and of `TxnId::decode`.
fn describe_transactions(out: &mut String) {
    use crate::txn::{
        LEASE_MS_MAX, LEASE_MS_MIN, PARTICIPANT_LEN, PARTICIPANTS_MAX, PREPARE_FIXED_LEN,
        TXN_ID_LEN,
    };
    define(out, "TERN_TXN_ID_LEN", &TXN_ID_LEN.to_string());
    define(out, "TERN_TXN_LEASE_MS_MIN", &LEASE_MS_MIN.to_string());
    define(out, "TERN_TXN_LEASE_MS_MAX", &LEASE_MS_MAX.to_string());
    define(
        out,
        "TERN_TXN_PARTICIPANTS_MAX",
        &PARTICIPANTS_MAX.to_string(),
    );
    define(
        out,
        "TERN_TXN_PARTICIPANT_LEN",
        &PARTICIPANT_LEN.to_string(),
    );
    define(
        out,
        "TERN_TXN_PREPARE_FIXED_LEN",
        &PREPARE_FIXED_LEN.to_string(),
    );
}

/// `tern_extensions_len(mask)` and `tern_extensions_allowed(classes, mask)`,
/// the C twins of `extension::extensions_len` and `extensions_allowed`.
fn describe_extensions(out: &mut String) {
    let _ = writeln!(
        out,
        "\n/* Bytes of the extension area that mask names (known bits only). */"
    );
    let _ = writeln!(
        out,
        "static inline __attribute__((always_inline)) __u32 tern_extensions_len(__u8 mask)\n{{"
    );
    let _ = writeln!(out, "\t__u32 len = 0;\n");
    for kind in extension::KINDS {
        let _ = writeln!(
            out,
            "\tif (mask & TERN_EXT_{})\n\t\tlen += {};",
            kind.name, kind.len
        );
    }
    let _ = writeln!(out, "\treturn len;\n}}");
    let _ = writeln!(
        out,
        "\n/* Whether an op of these TERN_OP_CLASS_* bits may carry every extension of mask. */"
    );
    let _ = writeln!(
        out,
        "static inline __attribute__((always_inline)) int tern_extensions_allowed(__u8 classes, __u8 mask)\n{{"
    );
    for kind in extension::KINDS {
        let _ = writeln!(
            out,
            "\tif ((mask & TERN_EXT_{}) && !(classes & ({})))\n\t\treturn 0;",
            kind.name,
            class_names(kind.carried_by)
        );
    }
    let _ = writeln!(out, "\treturn 1;\n}}");
}

/// The op classes of `mask` as C: `TERN_OP_CLASS_A | TERN_OP_CLASS_B`.
fn class_names(mask: u8) -> String {
    op_class::ALL
        .iter()
        .filter(|(class, _)| mask & class != 0)
        .map(|(_, name)| format!("TERN_OP_CLASS_{name}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `tern_<what>_known(value)`: whether `value` is one of `values`.
fn known_values(out: &mut String, what: &str, values: impl Iterator<Item = u8>) {
    let _ = writeln!(
        out,
        "\n/* Whether value is a known {what}: one this version of the wire defines. */"
    );
    let _ = writeln!(
        out,
        "static inline __attribute__((always_inline)) int tern_{what}_known(__u8 value)\n{{"
    );
    let _ = writeln!(out, "\tswitch (value) {{");
    for value in values {
        let _ = writeln!(out, "\tcase {value}:");
    }
    let _ = writeln!(out, "\t\treturn 1;\n\tdefault:\n\t\treturn 0;\n\t}}\n}}");
}

fn define(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "#define {name:<28} {value}");
}
