//! Named event counters, as samples (`metrics`) for STATS replies and the
//! metrics exporter.

use tern_wire::DecodeError;

/// Declares a struct of `u64` counters and its text rendering.
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident { $( $(#[doc = $doc:literal])* $field:ident ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name { $( $(#[doc = $doc])* pub $field: u64 ),* }

        impl $name {
            /// Appends each counter to `out`, in `group` and for `shard`.
            pub fn samples(
                &self,
                group: $crate::metrics::Group,
                shard: Option<u32>,
                out: &mut $crate::metrics::Samples,
            ) {
                $( out.add($crate::metrics::Kind::Counter, group, shard, stringify!($field), self.$field); )*
            }
        }
    };
}
pub(crate) use counters;

counters! {
    /// Datagrams dropped because they failed to decode, by reason.
    pub struct DecodeDrops {
        truncated,
        bad_magic,
        bad_version,
        unknown_op,
        bad_field,
        too_large,
        bad_length,
        bad_key_hash,
    }
}

impl DecodeDrops {
    pub fn record(&mut self, error: &DecodeError) {
        let counter = match error {
            DecodeError::Truncated { .. } => &mut self.truncated,
            DecodeError::BadMagic { .. } => &mut self.bad_magic,
            DecodeError::UnsupportedVersion { .. } => &mut self.bad_version,
            DecodeError::UnknownOp(_) => &mut self.unknown_op,
            DecodeError::UnknownStatus(_)
            | DecodeError::UnknownEffect(_)
            | DecodeError::UnexpectedValue { .. }
            | DecodeError::ReservedNotZero(_)
            | DecodeError::UnknownExtension(_)
            | DecodeError::ExtensionNotAllowed { .. } => &mut self.bad_field,
            DecodeError::KeyTooLarge { .. } | DecodeError::ValueTooLarge { .. } => {
                &mut self.too_large
            }
            DecodeError::LengthMismatch { .. } => &mut self.bad_length,
            DecodeError::BadKeyHash => &mut self.bad_key_hash,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        self.truncated
            + self.bad_magic
            + self.bad_version
            + self.unknown_op
            + self.bad_field
            + self.too_large
            + self.bad_length
            + self.bad_key_hash
    }
}
