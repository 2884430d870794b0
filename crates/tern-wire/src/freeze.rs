//! The value of a FREEZE request: what a migration holds still at a slot
//! range's coordinator, and for how long; and the value of its answer.

/// Let the range go: served again as usual.
pub const RELEASE: u8 = 0;
/// Hold the range's writes (answered TRY_AGAIN, so clients retry); reads go
/// on, since the source still has every committed write.
pub const WRITES: u8 = 1;
/// Hold reads too: the destination is about to take the range over.
pub const ALL: u8 = 2;
/// The range was handed off (meta has committed it in the map of version
/// `map_version`): its requests are answered WRONG_SHARD naming that
/// version, so clients fetch the map and find the destination at once
/// instead of waiting for this coordinator to get it. Lasts as a hold does;
/// by then the coordinator's map says the same.
pub const MOVED: u8 = 3;
/// Hold reads and writes as [`ALL`] does, and remember which slots were
/// asked meanwhile: the ownership-first baseline of `tern bench migrate`
/// (Rocksteady) pulls those ahead of the others. Every FREEZE answer names
/// them ([`Answer::wanted`]), and they are forgotten once named.
pub const PULL: u8 = 4;
/// Holds one shard's coordinator keeps at once; a FREEZE of a new range
/// beyond them (or a RELEASE that would split one beyond them) is answered
/// TRY_AGAIN. A live migration holds one or two groups at a time; the
/// ownership-first baseline every group of its range, split further by its
/// priority pulls.
pub const HOLDS_MAX: usize = 1024;
/// Slots asked while held in [`PULL`] mode that a coordinator remembers
/// until its next answer names them (the fullest answer stays small).
pub const WANTED_MAX: usize = 64;
/// The longest hold one request may ask for; a migration renews it while
/// it works, so a migration that dies lets go by itself.
pub const HOLD_MAX_MS: u32 = 10_000;
/// Bytes of an encoded request.
pub const LEN: usize = 13;

/// A FREEZE request's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`RELEASE`] (of every hold over the range, whole or in part),
    /// [`WRITES`], [`ALL`], [`MOVED`] or [`PULL`].
    pub mode: u8,
    /// How long the hold lasts from its arrival, at most [`HOLD_MAX_MS`].
    pub hold_ms: u32,
    /// For [`MOVED`]: the version of meta's map with the hand-off (else 0).
    pub map_version: u64,
}

impl Request {
    pub fn encode(self) -> [u8; LEN] {
        let mut bytes = [0; LEN];
        bytes[0] = self.mode;
        bytes[1..5].copy_from_slice(&self.hold_ms.to_le_bytes());
        bytes[5..].copy_from_slice(&self.map_version.to_le_bytes());
        bytes
    }

    /// The request in `bytes`; None when they are not one.
    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let bytes: [u8; LEN] = bytes.try_into().ok()?;
        let request = Request {
            mode: bytes[0],
            hold_ms: u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes")),
            map_version: u64::from_le_bytes(bytes[5..].try_into().expect("8 bytes")),
        };
        (request.mode <= PULL && request.hold_ms <= HOLD_MAX_MS).then_some(request)
    }
}

/// A FREEZE answer's value: the incarnation of the shard's coordinator
/// (8 bytes), then the slots asked while held in [`PULL`] mode since the
/// last answer (2 bytes each), little-endian.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub incarnation: u64,
    pub wanted: Vec<u16>,
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + 2 * self.wanted.len());
        bytes.extend_from_slice(&self.incarnation.to_le_bytes());
        for slot in &self.wanted {
            bytes.extend_from_slice(&slot.to_le_bytes());
        }
        bytes
    }

    /// The answer in `bytes`; None when they are not one.
    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        let (incarnation, wanted) = bytes.split_at_checked(8)?;
        if wanted.len() % 2 != 0 {
            return None;
        }
        Some(Answer {
            incarnation: u64::from_le_bytes(incarnation.try_into().expect("8 bytes")),
            wanted: wanted
                .chunks_exact(2)
                .map(|slot| u16::from_le_bytes([slot[0], slot[1]]))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_bad_ones_are_refused() {
        let answer = Answer {
            incarnation: 7,
            wanted: vec![3, 16383],
        };
        assert_eq!(Answer::decode(&answer.encode()), Some(answer.clone()));
        let bytes = answer.encode();
        assert_eq!(Answer::decode(&bytes[..9]), None, "half a slot");
        assert_eq!(Answer::decode(&bytes[..7]), None, "no incarnation");
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let request = Request {
            mode: WRITES,
            hold_ms: 2000,
            map_version: 0,
        };
        assert_eq!(Request::decode(&request.encode()), Some(request));
        let too_long = Request {
            mode: ALL,
            hold_ms: HOLD_MAX_MS + 1,
            map_version: 0,
        };
        assert_eq!(Request::decode(&too_long.encode()), None);
        let moved = Request {
            mode: MOVED,
            hold_ms: 5000,
            map_version: 77,
        };
        assert_eq!(Request::decode(&moved.encode()), Some(moved));
        let mut unknown_mode = moved.encode();
        unknown_mode[0] = PULL + 1;
        assert_eq!(Request::decode(&unknown_mode), None);
        assert_eq!(Request::decode(&moved.encode()[..5]), None, "too short");
        assert_eq!(Request::decode(&[1, 0]), None);
    }
}
