//! Describing `#[repr(C)]` structs field by field, so that the generated C
//! header repeats exactly the Rust layout.

/// Layout of one struct field, for the C header generator and layout tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
    /// The C type of the field; `T[N]` declares an array of N.
    pub c_type: &'static str,
    pub doc: &'static str,
}

/// A struct shared with C: its C name, fields and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CStruct {
    pub name: &'static str,
    pub fields: &'static [FieldInfo],
    pub size: usize,
    /// Packed in C (wire and configuration records); atomically updated
    /// structs are not, so that every field keeps its natural alignment.
    pub packed: bool,
}

/// Declares a struct and its field table from one list, so that the Rust
/// layout and the generated C layout cannot drift apart.
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident {
        $( #[doc = $doc:literal] pub $field:ident : $ty:ty => $c_type:literal ),* $(,)?
    }) => {
        $(#[$meta])*
        pub struct $name { $( #[doc = $doc] pub $field: $ty ),* }

        impl $name {
            /// Every field in declaration order.
            pub const FIELDS: &'static [FieldInfo] = &[ $( FieldInfo {
                name: stringify!($field),
                offset: core::mem::offset_of!($name, $field),
                size: core::mem::size_of::<$ty>(),
                c_type: $c_type,
                doc: $doc,
            } ),* ];
        }
    };
}

pub(crate) use wire_struct;
