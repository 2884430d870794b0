//! What a request of each kind looks like and what its reply means: one
//! definition used by [`crate::Client`]'s methods and by callers that send
//! the same requests many at a time through a [`crate::Pipeline`] (the
//! gateway's pipelined commands).

use tern_wire::{Extensions, Op, Status, flags};

use crate::{ClientError, Lifetime, Reply, SetCondition, SetOutcome, Versioned};

/// A request as sent: op, value, expected version (CAS), write flags and
/// extensions; the key goes beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call<'a> {
    pub op: Op,
    pub value: &'a [u8],
    pub version: u64,
    pub flags: u8,
    pub extensions: Extensions,
}

impl<'a> Call<'a> {
    pub fn new(op: Op, value: &'a [u8]) -> Call<'a> {
        Call {
            op,
            value,
            version: 0,
            flags: 0,
            extensions: Extensions::default(),
        }
    }

    /// A read of the key.
    pub fn get() -> Call<'static> {
        Call::new(Op::Get, &[])
    }

    /// A delete of the key.
    pub fn delete() -> Call<'static> {
        Call::new(Op::Delete, &[])
    }

    /// A write of `value` under `condition`, answering the value before
    /// with `return_old`, with what it does to the key's deadline.
    pub fn set(
        value: &'a [u8],
        condition: SetCondition,
        return_old: bool,
        lifetime: Lifetime,
    ) -> Call<'a> {
        let mut write_flags = if return_old { flags::RETURN_OLD } else { 0 };
        let op = match condition {
            SetCondition::Always => Op::Put,
            // CAS against version 0 is "only if absent".
            SetCondition::IfAbsent => Op::Cas,
            SetCondition::IfExists => {
                write_flags |= flags::IF_EXISTS;
                Op::Put
            }
        };
        Call {
            flags: write_flags,
            extensions: Extensions {
                expiry: lifetime.asked(),
                ..Extensions::default()
            },
            ..Call::new(op, value)
        }
    }

    /// A change of the key's deadline alone (EXPIRE, PERSIST; GETEX with
    /// `flags::RETURN_OLD`).
    pub fn expire(asked: tern_wire::Expiry, write_flags: u8) -> Call<'static> {
        Call {
            flags: write_flags,
            extensions: Extensions {
                expiry: Some(asked),
                ..Extensions::default()
            },
            ..Call::new(Op::Expire, &[])
        }
    }

    /// An atomic add of `delta` (its decimal text) answering the sum.
    pub fn incr_by(delta: &'a [u8]) -> Call<'a> {
        Call {
            flags: flags::RETURN_NEW,
            ..Call::new(Op::IncrBy, delta)
        }
    }
}

/// A read's value, if any.
pub fn read(reply: Reply) -> Result<Option<Versioned>, ClientError> {
    match reply.status {
        Status::Ok => Ok(Some(Versioned {
            version: reply.header.version(),
            deadline_ms: reply.extensions.expiry.map(|decided| decided.deadline_ms),
            value: reply.value,
        })),
        Status::NotFound => Ok(None),
        status => Err(ClientError::Refused { status }),
    }
}

/// Whether a delete found the key.
pub fn deleted(reply: &Reply) -> Result<bool, ClientError> {
    match reply.status {
        Status::Ok => Ok(true),
        Status::NotFound => Ok(false),
        status => Err(ClientError::Refused { status }),
    }
}

/// What a [`Call::set`] did.
pub fn set(reply: Reply, return_old: bool) -> Result<SetOutcome, ClientError> {
    let written = match reply.status {
        Status::Ok => true,
        Status::CasMismatch | Status::NotFound => false,
        status => return Err(ClientError::Refused { status }),
    };
    let old = (return_old && !reply.header.has_flag(flags::ANSWER_ABSENT)).then_some(reply.value);
    Ok(SetOutcome {
        written,
        version: if written { reply.header.version() } else { 0 },
        old,
    })
}

/// The sum a [`Call::incr_by`] answered.
pub fn sum(reply: &Reply) -> Result<i64, ClientError> {
    match reply.status {
        Status::Ok => std::str::from_utf8(&reply.value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(ClientError::NotInteger),
        Status::NotInteger => Err(ClientError::NotInteger),
        status => Err(ClientError::Refused { status }),
    }
}
