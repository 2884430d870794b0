//! Generates `include/tern_wire.h`, the C view of this crate for the eBPF
//! programs. Regenerate with `cargo run -p tern-wire --bin tern-wire-gen-header`;
//! the test `committed_c_header_matches_rust_definitions` fails when the
//! committed file differs from what this module produces.

use std::fmt::Write;

use crate::{
    DIRTY_SLOTS, Effect, HEADER_LEN, Header, KEY_LEN_MAX, MAGIC, MESSAGE_LEN_MAX, Op, SLOT_COUNT,
    Status, VALUE_LEN_MAX, WIRE_VERSION, flags,
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
    define(out, "TERN_MESSAGE_LEN_MAX", &MESSAGE_LEN_MAX.to_string());
    define(out, "TERN_SLOT_COUNT", &SLOT_COUNT.to_string());
    define(out, "TERN_DIRTY_SLOTS", &DIRTY_SLOTS.to_string());
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
    let _ = writeln!(out, "\nstruct tern_header {{");
    for field in Header::FIELDS {
        let declaration = format!("{} {};", field.c_type, field.name);
        let _ = writeln!(
            out,
            "\t{declaration:<22} /* @{:<2} {} */",
            field.offset,
            field.doc.trim()
        );
    }
    let _ = writeln!(out, "}} __attribute__((packed));\n");
    let _ = writeln!(
        out,
        "_Static_assert(sizeof(struct tern_header) == {HEADER_LEN}, \"tern_header size\");"
    );
    for field in Header::FIELDS {
        let _ = writeln!(
            out,
            "_Static_assert(__builtin_offsetof(struct tern_header, {name}) == {offset}, \"{name} offset\");",
            name = field.name,
            offset = field.offset
        );
    }
    let _ = writeln!(out, "\n#endif /* TERN_WIRE_H */");
    text
}

fn define(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "#define {name:<28} {value}");
}
