//! Typed identifiers of the control plane. Each wraps the integer the wire
//! header carries (`Header::shard`, `epoch`, `client_id`, `seq`; the slot is
//! derived from `key_hash`), so that a shard id is never passed where an
//! epoch is meant. Serialized as the bare integer: map files and meta's JSON
//! keep their shape.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The integer as the wire header carries it.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map($name)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                $name(value)
            }
        }
    };
}

id!(
    /// A shard: the unit of replication, one chain and one coordinator.
    ShardId(u32)
);
id!(
    /// A shard's configuration epoch, raised by every change of its chain
    /// or coordinator (DESIGN rule 7).
    Epoch(u32)
);
id!(
    /// A position in a shard's write order (the coordinator's sequence
    /// number; also the version a write gives its key).
    Seq(u64)
);
id!(
    /// A client session, the key of the replicas' deduplication table.
    ClientId(u64)
);
id!(
    /// A hash slot, `0..SLOT_COUNT`: the unit that the map assigns to shards.
    Slot(u32)
);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl Slot {
    /// The slot owning a key of this hash.
    pub fn of_key_hash(key_hash: u32) -> Slot {
        Slot(tern_wire::slot_of(key_hash))
    }

    /// The slot owning `key`.
    pub fn of_key(key: &[u8]) -> Slot {
        Slot::of_key_hash(tern_wire::key_hash(key))
    }
}

impl ClientId {
    /// A fresh random id for a client session (never 0, which replies to
    /// messages that carry no client use).
    pub fn random() -> ClientId {
        ClientId(rand::random::<u64>() | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_bare_integers() {
        assert_eq!(serde_json::to_string(&ShardId(7)).unwrap(), "7");
        assert_eq!(serde_json::from_str::<Epoch>("3").unwrap(), Epoch(3));
        assert_eq!(Epoch(3).next(), Epoch(4));
        assert_eq!(
            Slot::of_key(b"k"),
            Slot(tern_wire::slot_of(tern_wire::key_hash(b"k")))
        );
        assert_ne!(ClientId::random().get() & 1, 0);
    }
}
