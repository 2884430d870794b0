//! Decoding and encoding of whole datagrams.

use thiserror::Error;
use zerocopy::{FromBytes, IntoBytes};

use crate::extension::{self, Extensions, extensions_allowed, extensions_len};
use crate::{
    Effect, HEADER_LEN, Header, KEY_LEN_MAX, MAGIC, MESSAGE_LEN_MAX, Op, Status, VALUE_LEN_MAX,
    WIRE_VERSION, key_hash,
};

/// Why a byte string is not a valid datagram. Every variant after `BadMagic`
/// has a readable header, so the receiver can answer the sender.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    #[error("datagram of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("bad magic {found:#06x}")]
    BadMagic { found: u16 },
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unknown op {0}")]
    UnknownOp(u8),
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    #[error("unknown effect {0}")]
    UnknownEffect(u8),
    #[error("key of {len} bytes exceeds the limit of {KEY_LEN_MAX} bytes")]
    KeyTooLarge { len: usize },
    #[error("value of {len} bytes exceeds the limit of {VALUE_LEN_MAX} bytes")]
    ValueTooLarge { len: usize },
    #[error("header announces {announced} bytes but the datagram has {actual}")]
    LengthMismatch { announced: usize, actual: usize },
    #[error("key_hash does not match the key")]
    BadKeyHash,
    #[error("op {op:?} carries no value, but the datagram has {len} value bytes")]
    UnexpectedValue { op: Op, len: usize },
    #[error("the reserved header field is {0}, not zero")]
    ReservedNotZero(u16),
    #[error("unknown extension bits {0:#04x}")]
    UnknownExtension(u8),
    #[error("op {op:?} cannot carry the extensions {mask:#04x}")]
    ExtensionNotAllowed { op: Op, mask: u8 },
}

impl DecodeError {
    /// The status to answer with, when the sender can be answered at all.
    pub fn reply_status(&self) -> Option<Status> {
        match self {
            DecodeError::Truncated { .. } | DecodeError::BadMagic { .. } => None,
            DecodeError::UnsupportedVersion { .. } => Some(Status::UnsupportedVersion),
            DecodeError::UnknownOp(_) => Some(Status::UnknownOp),
            DecodeError::KeyTooLarge { .. } | DecodeError::ValueTooLarge { .. } => {
                Some(Status::TooLarge)
            }
            DecodeError::BadKeyHash => Some(Status::BadKeyHash),
            DecodeError::UnknownStatus(_)
            | DecodeError::UnknownEffect(_)
            | DecodeError::LengthMismatch { .. }
            | DecodeError::UnexpectedValue { .. }
            | DecodeError::ReservedNotZero(_)
            | DecodeError::UnknownExtension(_)
            | DecodeError::ExtensionNotAllowed { .. } => Some(Status::Malformed),
        }
    }
}

/// Why a message cannot be encoded.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    #[error("key of {len} bytes exceeds the limit of {KEY_LEN_MAX} bytes")]
    KeyTooLarge { len: usize },
    #[error("value of {len} bytes exceeds the limit of {VALUE_LEN_MAX} bytes")]
    ValueTooLarge { len: usize },
}

/// A decoded datagram borrowing its key and value from the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: Header,
    pub extensions: Extensions,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Message<'a> {
    /// Decodes and validates a datagram. Never panics, whatever the bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (header, rest) = Header::read_from_prefix(bytes)
            .map_err(|_| DecodeError::Truncated { len: bytes.len() })?;
        if header.magic.get() != MAGIC {
            return Err(DecodeError::BadMagic {
                found: header.magic.get(),
            });
        }
        if header.version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: header.version,
            });
        }
        let op = Op::from_u8(header.op).ok_or(DecodeError::UnknownOp(header.op))?;
        Status::from_u8(header.status).ok_or(DecodeError::UnknownStatus(header.status))?;
        Effect::from_u8(header.effect).ok_or(DecodeError::UnknownEffect(header.effect))?;
        if header.reserved.get() != 0 {
            return Err(DecodeError::ReservedNotZero(header.reserved.get()));
        }
        let mask = header.extensions;
        if mask & !extension::KNOWN != 0 {
            return Err(DecodeError::UnknownExtension(mask));
        }
        let extensions_len = extensions_len(mask);
        let key_len = usize::from(header.key_len.get());
        let value_len = usize::from(header.value_len.get());
        if key_len > KEY_LEN_MAX {
            return Err(DecodeError::KeyTooLarge { len: key_len });
        }
        if value_len > VALUE_LEN_MAX {
            return Err(DecodeError::ValueTooLarge { len: value_len });
        }
        if rest.len() != extensions_len + key_len + value_len {
            return Err(DecodeError::LengthMismatch {
                announced: HEADER_LEN + extensions_len + key_len + value_len,
                actual: bytes.len(),
            });
        }
        if !extensions_allowed(op, mask) {
            return Err(DecodeError::ExtensionNotAllowed { op, mask });
        }
        if value_len != 0 && !op.carries_value() {
            return Err(DecodeError::UnexpectedValue { op, len: value_len });
        }
        let (area, rest) = rest.split_at(extensions_len);
        let extensions = Extensions::decode(mask, area);
        let (key, value) = rest.split_at(key_len);
        // Requests name their key; the hash is checked so that a wrong hash
        // can never make a coordinator mark or test the wrong dirty entry.
        if op.is_client_request() && key_hash(key) != header.key_hash.get() {
            return Err(DecodeError::BadKeyHash);
        }
        Ok(Message {
            header,
            extensions,
            key,
            value,
        })
    }

    /// Decodes a datagram at the start of `bytes` (its length from its
    /// header) and returns it with the bytes after it: a log record of a
    /// large value is its datagram followed by the value.
    pub fn decode_with_trailer(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        let Ok((header, _)) = Header::read_from_prefix(bytes) else {
            return Err(DecodeError::Truncated { len: bytes.len() });
        };
        let announced = HEADER_LEN
            + extensions_len(header.extensions)
            + usize::from(header.key_len.get())
            + usize::from(header.value_len.get());
        let (datagram, trailer) = bytes.split_at(announced.min(bytes.len()));
        Ok((Message::decode(datagram)?, trailer))
    }

    /// The header of a datagram that failed to decode, when one can be read,
    /// so that the receiver can answer the sender with an error.
    pub fn readable_header(bytes: &[u8]) -> Option<Header> {
        let (header, _) = Header::read_from_prefix(bytes).ok()?;
        (header.magic.get() == MAGIC).then_some(header)
    }
}

/// Writes one datagram into `out` (which is cleared first). Sets `key_len`
/// and `value_len` from the slices; the caller sets every other field.
pub fn encode_into(
    header: &Header,
    key: &[u8],
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.clear();
    encode_append(header, key, value, out)?;
    debug_assert!(out.len() <= MESSAGE_LEN_MAX);
    Ok(())
}

/// Appends one datagram without extensions to the end of `out`, as
/// `encode_into` does.
pub fn encode_append(
    header: &Header,
    key: &[u8],
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_append_with(header, &Extensions::default(), key, value, out)
}

/// Appends one datagram with `extensions` to the end of `out`. Sets
/// `extensions`, `key_len` and `value_len`; the caller sets every other
/// field.
pub fn encode_append_with(
    header: &Header,
    extensions: &Extensions,
    key: &[u8],
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if key.len() > KEY_LEN_MAX {
        return Err(EncodeError::KeyTooLarge { len: key.len() });
    }
    if value.len() > VALUE_LEN_MAX {
        return Err(EncodeError::ValueTooLarge { len: value.len() });
    }
    let mut header = *header;
    // The limits above make both lengths fit in u16.
    header.key_len.set(key.len() as u16);
    header.value_len.set(value.len() as u16);
    header.extensions = extensions.mask();
    out.extend_from_slice(header.as_bytes());
    extensions.encode_into(out);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    Ok(())
}

/// Encodes one datagram into a new buffer.
pub fn encode(header: &Header, key: &[u8], value: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    encode_into(header, key, value, &mut out)?;
    Ok(out)
}
