//! Expiry through the client: what a write does with a key's deadline, and
//! EXPIRE with Redis's options. Deadlines are decided by the chain head
//! (a duration counts from its clock), so a client's clock does not matter.

use std::time::Duration;

use tern_wire::{Expiry, expiry};

/// What a write of a whole value does with the key's deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifetime {
    /// No deadline (a plain Redis SET drops the key's).
    #[default]
    Forever,
    /// The key's deadline stays (SET KEEPTTL).
    Keep,
    /// Expires this long after the head decides the write (EX, PX).
    For(Duration),
    /// Expires at this Unix time in milliseconds (EXAT, PXAT).
    Until(u64),
}

impl Lifetime {
    /// The EXPIRY extension asking for it (none for `Forever`).
    pub(crate) fn asked(self) -> Option<Expiry> {
        match self {
            Lifetime::Forever => None,
            Lifetime::Keep => Some(Expiry {
                deadline_ms: 0,
                mode: expiry::KEEP,
            }),
            Lifetime::For(duration) => Some(Expiry::after(millis(duration))),
            Lifetime::Until(unix_ms) => Some(Expiry::at(unix_ms)),
        }
    }
}

/// When an EXPIRE applies (Redis NX, XX, GT, LT; XX combines with GT or LT).
/// A key without a deadline counts as expiring infinitely late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpireCondition {
    #[default]
    Always,
    /// Only if the key has no deadline (NX).
    IfNone,
    /// Only if it has one (XX).
    IfSome,
    /// Only if the new deadline is later (GT).
    IfLater,
    /// Only if the new deadline is earlier (LT).
    IfEarlier,
    /// XX GT.
    IfSomeAndLater,
    /// XX LT.
    IfSomeAndEarlier,
}

impl ExpireCondition {
    fn bits(self) -> u8 {
        match self {
            ExpireCondition::Always => 0,
            ExpireCondition::IfNone => expiry::IF_NONE,
            ExpireCondition::IfSome => expiry::IF_SOME,
            ExpireCondition::IfLater => expiry::IF_LATER,
            ExpireCondition::IfEarlier => expiry::IF_EARLIER,
            ExpireCondition::IfSomeAndLater => expiry::IF_SOME | expiry::IF_LATER,
            ExpireCondition::IfSomeAndEarlier => expiry::IF_SOME | expiry::IF_EARLIER,
        }
    }
}

/// A new deadline for a key (EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT), or
/// none (PERSIST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// This long after the head decides (zero or past: the key goes).
    In(Duration),
    /// At this Unix time in milliseconds (past: the key goes).
    At(u64),
    /// No deadline any more (PERSIST).
    Never,
}

impl Deadline {
    /// The EXPIRY extension of an EXPIRE asking for it under `condition`
    /// (which PERSIST does not take).
    pub(crate) fn asked(self, condition: ExpireCondition) -> Expiry {
        match self {
            Deadline::In(duration) => Expiry {
                deadline_ms: millis(duration),
                mode: expiry::RELATIVE | condition.bits(),
            },
            Deadline::At(unix_ms) => Expiry {
                deadline_ms: unix_ms,
                mode: condition.bits(),
            },
            Deadline::Never => Expiry {
                deadline_ms: 0,
                mode: expiry::PERSIST,
            },
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Unix time in milliseconds by this machine's clock (for TTL arithmetic
/// against a deadline a read returned).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}
