//! What a migration copies out of a source shard for a slot range: every
//! live key with its version and value, the dedup outcomes of writes to
//! those slots, and the version floor above which the destination's later
//! writes must lie. A later copy of the same range (the delta, taken while
//! the range's writes are held) carries in full only the keys written since
//! the first copy's floor, and the others by name, so that the destination
//! also learns which copied keys were deleted since. Sent by the source's tail over its state-transfer
//! connection; decoded by the migration, which installs it at the
//! destination (INSTALL, INSTALL_OUTCOME, REBASE).

use thiserror::Error;

use crate::{KEY_LEN_MAX, LARGE_VALUE_LEN_MOST, Status};

/// A key as copied: its newest committed version and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedKey {
    pub key: Vec<u8>,
    pub version: u64,
    pub value: Vec<u8>,
    /// When the key expires (Unix milliseconds), 0 when it does not: a
    /// moved key keeps its deadline.
    pub deadline_ms: u64,
}

/// A dedup outcome as copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportedOutcome {
    pub client_id: u64,
    pub request_id: u64,
    pub status: Status,
    pub version: u64,
    pub key_hash: u32,
}

/// The copy of one slot range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    /// Every version the range had at the source is below this.
    pub floor: u64,
    pub keys: Vec<ExportedKey>,
    pub outcomes: Vec<ExportedOutcome>,
    /// Live keys not in `keys`: their version is below the copy's `since`,
    /// so the destination has them already.
    pub unchanged: Vec<Named>,
}

/// A key named without its value, with its deadline (0: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Named {
    pub key: Vec<u8>,
    pub deadline_ms: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("export truncated")]
    Truncated,
    #[error("export record of kind {0} is unknown")]
    UnknownKind(u8),
    #[error("exported key of {0} bytes is over the limit")]
    KeyTooLarge(usize),
    #[error("exported value of {0} bytes is over the limit")]
    ValueTooLarge(usize),
    #[error("exported outcome has unknown status {0}")]
    UnknownStatus(u8),
}

const KEY: u8 = 1;
const OUTCOME: u8 = 2;
const UNCHANGED: u8 = 3;
/// A KEY record followed by its deadline.
const EXPIRING_KEY: u8 = 4;
/// An UNCHANGED record followed by its key's deadline.
const EXPIRING_UNCHANGED: u8 = 5;

impl ExportedKey {
    /// Bytes of its record.
    pub fn encoded_len(&self) -> usize {
        let deadline = if self.deadline_ms == 0 { 0 } else { 8 };
        1 + 2 + self.key.len() + 8 + deadline + 4 + self.value.len()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(if self.deadline_ms == 0 {
            KEY
        } else {
            EXPIRING_KEY
        });
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.version.to_le_bytes());
        if self.deadline_ms != 0 {
            out.extend_from_slice(&self.deadline_ms.to_le_bytes());
        }
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.value);
    }
}

/// Keys as one INSTALL_KEYS value: their records, as in an export.
pub fn encode_keys<'a>(keys: impl IntoIterator<Item = &'a ExportedKey>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        key.encode_into(&mut out);
    }
    out
}

/// The keys of an INSTALL_KEYS value; anything but key records is refused.
pub fn decode_keys(bytes: &[u8]) -> Result<Vec<ExportedKey>, ExportError> {
    let mut export = Export::default();
    export.decode_records(bytes)?;
    if !export.outcomes.is_empty() {
        return Err(ExportError::UnknownKind(OUTCOME));
    }
    if !export.unchanged.is_empty() {
        return Err(ExportError::UnknownKind(UNCHANGED));
    }
    Ok(export.keys)
}

impl Export {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.floor.to_le_bytes());
        for key in &self.keys {
            key.encode_into(&mut out);
        }
        for outcome in &self.outcomes {
            out.push(OUTCOME);
            out.extend_from_slice(&outcome.client_id.to_le_bytes());
            out.extend_from_slice(&outcome.request_id.to_le_bytes());
            out.push(outcome.status as u8);
            out.extend_from_slice(&outcome.version.to_le_bytes());
            out.extend_from_slice(&outcome.key_hash.to_le_bytes());
        }
        for named in &self.unchanged {
            let expiring = named.deadline_ms != 0;
            out.push(if expiring {
                EXPIRING_UNCHANGED
            } else {
                UNCHANGED
            });
            out.extend_from_slice(&(named.key.len() as u16).to_le_bytes());
            out.extend_from_slice(&named.key);
            if expiring {
                out.extend_from_slice(&named.deadline_ms.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Export, ExportError> {
        let (floor, records) = bytes.split_at_checked(8).ok_or(ExportError::Truncated)?;
        let mut export = Export {
            floor: u64::from_le_bytes(floor.try_into().expect("8 bytes")),
            ..Export::default()
        };
        export.decode_records(records)?;
        Ok(export)
    }

    /// Appends the records in `bytes` to this export.
    fn decode_records(&mut self, mut bytes: &[u8]) -> Result<(), ExportError> {
        let export = self;
        let mut take = |length: usize| -> Result<&[u8], ExportError> {
            let (taken, rest) = bytes
                .split_at_checked(length)
                .ok_or(ExportError::Truncated)?;
            bytes = rest;
            Ok(taken)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        loop {
            let kind = match take(1) {
                Ok(kind) => kind[0],
                Err(_) => return Ok(()),
            };
            let mut take_key = || -> Result<Vec<u8>, ExportError> {
                let length = usize::from(u16::from_le_bytes(take(2)?.try_into().expect("2")));
                if length > KEY_LEN_MAX {
                    return Err(ExportError::KeyTooLarge(length));
                }
                Ok(take(length)?.to_vec())
            };
            match kind {
                KEY | EXPIRING_KEY => {
                    let key = take_key()?;
                    let version = u64_of(take(8)?);
                    let deadline_ms = if kind == EXPIRING_KEY {
                        u64_of(take(8)?)
                    } else {
                        0
                    };
                    let length = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
                    if length > LARGE_VALUE_LEN_MOST {
                        return Err(ExportError::ValueTooLarge(length));
                    }
                    let value = take(length)?.to_vec();
                    export.keys.push(ExportedKey {
                        key,
                        version,
                        value,
                        deadline_ms,
                    });
                }
                OUTCOME => {
                    let client_id = u64_of(take(8)?);
                    let request_id = u64_of(take(8)?);
                    let status = take(1)?[0];
                    let status =
                        Status::from_u8(status).ok_or(ExportError::UnknownStatus(status))?;
                    let version = u64_of(take(8)?);
                    let key_hash = u32::from_le_bytes(take(4)?.try_into().expect("4"));
                    export.outcomes.push(ExportedOutcome {
                        client_id,
                        request_id,
                        status,
                        version,
                        key_hash,
                    });
                }
                UNCHANGED | EXPIRING_UNCHANGED => {
                    let key = take_key()?;
                    let deadline_ms = if kind == EXPIRING_UNCHANGED {
                        u64_of(take(8)?)
                    } else {
                        0
                    };
                    export.unchanged.push(Named { key, deadline_ms });
                }
                other => return Err(ExportError::UnknownKind(other)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_round_trips_and_damage_is_refused() {
        let export = Export {
            floor: 9000,
            keys: vec![ExportedKey {
                key: b"k".to_vec(),
                version: 7000,
                value: b"v".to_vec(),
                deadline_ms: 0,
            }],
            outcomes: vec![ExportedOutcome {
                client_id: 42,
                request_id: 9,
                status: Status::Ok,
                version: 7000,
                key_hash: 5,
            }],
            unchanged: vec![
                Named {
                    key: b"old".to_vec(),
                    deadline_ms: 0,
                },
                Named {
                    key: b"brief".to_vec(),
                    deadline_ms: 1_800_000_000_000,
                },
            ],
        };
        let bytes = export.encode();
        assert_eq!(Export::decode(&bytes), Ok(export.clone()));
        // Cuts between records decode as a shorter export.
        let key_end = 8 + 1 + 2 + 1 + 8 + 4 + 1;
        let outcome_end = key_end + 1 + 8 + 8 + 1 + 8 + 4;
        let old_end = outcome_end + 1 + 2 + 3;
        assert_eq!(
            bytes.len(),
            old_end + 1 + 2 + 5 + 8,
            "a deadline after the name"
        );
        for cut in 1..bytes.len() {
            if ![8, key_end, outcome_end, old_end].contains(&cut) {
                assert!(Export::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert_eq!(
            Export::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9]),
            Err(ExportError::UnknownKind(9))
        );
        // The keys alone, as INSTALL_KEYS carries them.
        let keys = encode_keys(&export.keys);
        assert_eq!(keys.len(), export.keys[0].encoded_len());
        assert_eq!(decode_keys(&keys), Ok(export.keys.clone()));
        assert_eq!(decode_keys(&[]), Ok(Vec::new()));
        assert!(decode_keys(&keys[..keys.len() - 1]).is_err());
        assert_eq!(
            decode_keys(&bytes[8..]),
            Err(ExportError::UnknownKind(OUTCOME)),
            "only keys"
        );
    }

    #[test]
    fn a_key_with_a_deadline_keeps_it_and_one_without_is_written_as_before() {
        let expiring = ExportedKey {
            key: b"session".to_vec(),
            version: 12,
            value: b"v".to_vec(),
            deadline_ms: 1_800_000_000_000,
        };
        let lasting = ExportedKey {
            deadline_ms: 0,
            ..expiring.clone()
        };
        let bytes = encode_keys([&expiring, &lasting]);
        assert_eq!(bytes.len(), expiring.encoded_len() + lasting.encoded_len());
        assert_eq!(bytes[0], EXPIRING_KEY);
        assert_eq!(bytes[expiring.encoded_len()], KEY);
        assert_eq!(decode_keys(&bytes), Ok(vec![expiring.clone(), lasting]));
        let one = encode_keys([&expiring]);
        for cut in 1..one.len() {
            assert!(decode_keys(&one[..cut]).is_err(), "cut at {cut}");
        }
    }
}
