//! Key expiry with Redis's semantics, as the head decides it, and the
//! reaper with which a head removes expired keys.
//!
//! A deadline is decided once, by the head, from its clock: a relative one
//! (`EX`, `EXPIRE`) becomes a Unix time there and travels down the chain as
//! that time, so every replica, the log and snapshots hold the same
//! deadline. Each replica hides a value from its deadline on by its own
//! clock; with clocks within a skew `s` of each other, a read that starts
//! `s` after a deadline never returns the value (ARCHITECTURE.md, "Expiry").
//! Memory comes back through the reaper: the head sends an EXPIRE with
//! `expiry::REAP` for each due key to its coordinator, which sequences it
//! like any write; the head deletes the key only if it is still expired
//! when the delete's turn comes.

use std::net::SocketAddrV4;
use std::time::Duration;

use tern_store::Versioned;
use tern_wire::{Expiry, expiry};

use crate::Time;

/// Reap requests a head keeps outstanding at once: chosen once per tick,
/// so at most this many per 5 ms (51 200 keys/s), a sixteenth of the
/// coordinator's window, which client writes keep the rest of.
pub const REAP_IN_FLIGHT_MAX: usize = 256;
/// A reap request unanswered this long is sent again.
pub const REAP_RESEND: Duration = Duration::from_secs(1);

/// A deadline as asked, made absolute at `now_ms` (never 0: an absolute
/// deadline of 0 is a time in the past, not "none").
pub fn resolve(asked: Expiry, now_ms: u64) -> u64 {
    if asked.has(expiry::RELATIVE) {
        now_ms.saturating_add(asked.deadline_ms)
    } else {
        asked.deadline_ms.max(1)
    }
}

/// The deadline a write of a whole value (SET, CAS) gives its key, 0 for
/// none: the one asked, the key's own with `expiry::KEEP` (KEEPTTL), none
/// without an extension. `current` is the key's live value. None when the
/// extension asks for what only EXPIRE does.
pub fn deadline_of_write(
    asked: Option<Expiry>,
    current: Option<Versioned<'_>>,
    now_ms: u64,
) -> Option<u64> {
    match asked {
        None => Some(0),
        Some(asked) if asked.mode == expiry::KEEP => {
            Some(current.map_or(0, |found| found.deadline_ms))
        }
        Some(asked) if asked.mode & !expiry::RELATIVE != 0 => None,
        Some(asked) => Some(resolve(asked, now_ms)),
    }
}

/// What an EXPIRE does to a live key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireOutcome {
    /// The key gets this deadline (0: none, PERSIST).
    Set(u64),
    /// The new deadline has passed: the key goes (Redis deletes it).
    Delete,
    /// A condition failed, or PERSIST of a key without a deadline.
    Unchanged,
    /// A combination of options Redis refuses.
    Malformed,
}

/// Decides an EXPIRE (not a reap) of a live key whose deadline is
/// `current_ms` (0: none), at `now_ms`, as Redis's `EXPIRE` with `NX`,
/// `XX`, `GT`, `LT` and `PERSIST` do: a key without a deadline counts as
/// expiring infinitely late for GT and LT.
pub fn decide_expire(asked: Expiry, current_ms: u64, now_ms: u64) -> ExpireOutcome {
    if asked.has(expiry::KEEP | expiry::REAP) {
        return ExpireOutcome::Malformed;
    }
    if asked.has(expiry::PERSIST) {
        if asked.mode != expiry::PERSIST {
            return ExpireOutcome::Malformed;
        }
        return if current_ms == 0 {
            ExpireOutcome::Unchanged
        } else {
            ExpireOutcome::Set(0)
        };
    }
    let deadline = resolve(asked, now_ms);
    let has_deadline = current_ms != 0;
    let holds = match asked.mode & expiry::CONDITIONS {
        0 => true,
        expiry::IF_NONE => !has_deadline,
        expiry::IF_SOME => has_deadline,
        expiry::IF_LATER => has_deadline && deadline > current_ms,
        expiry::IF_EARLIER => !has_deadline || deadline < current_ms,
        conditions if conditions == expiry::IF_SOME | expiry::IF_LATER => {
            has_deadline && deadline > current_ms
        }
        conditions if conditions == expiry::IF_SOME | expiry::IF_EARLIER => {
            has_deadline && deadline < current_ms
        }
        _ => return ExpireOutcome::Malformed,
    };
    if !holds {
        ExpireOutcome::Unchanged
    } else if deadline <= now_ms {
        ExpireOutcome::Delete
    } else {
        ExpireOutcome::Set(deadline)
    }
}

/// A head's outstanding reap requests: it sends them as a client of its
/// coordinator would, under its own client id.
#[derive(Debug)]
pub struct Reaper {
    client_id: u64,
    next_request_id: u64,
    /// (request id, key, when sent).
    in_flight: Vec<(u64, Box<[u8]>, Time)>,
}

impl Reaper {
    /// A reaper for the replica at `address`. Its request ids start from
    /// the wall clock in microseconds when it first sends, so that a
    /// restarted head does not reuse ids its replicas remember.
    pub fn new(address: SocketAddrV4) -> Reaper {
        let port = u64::from(address.port());
        let ip = u64::from(u32::from(*address.ip()));
        Reaper {
            // A range random client ids are vanishingly unlikely to hit.
            client_id: 0x7E4E_0000_0000_0000 | ip << 16 | port,
            next_request_id: 0,
            in_flight: Vec::new(),
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Chooses, among the `due` keys (soonest first), those to send a reap
    /// request for now: not in flight, or unanswered for `REAP_RESEND`;
    /// never more than `REAP_IN_FLIGHT_MAX` outstanding. Returns each with
    /// its request id. `unix_ms` is the wall clock at `now`.
    pub fn choose<'a>(
        &mut self,
        now: Time,
        unix_ms: u64,
        due: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<(u64, Box<[u8]>)> {
        if self.next_request_id == 0 {
            self.next_request_id = unix_ms.saturating_mul(1000).max(1);
        }
        self.in_flight
            .retain(|(_, _, sent)| now.since(*sent) < REAP_RESEND);
        let mut chosen = Vec::new();
        for key in due {
            if self.in_flight.len() >= REAP_IN_FLIGHT_MAX {
                break;
            }
            if self.in_flight.iter().any(|(_, sent, _)| &sent[..] == key) {
                continue;
            }
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            self.in_flight.push((request_id, Box::from(key), now));
            chosen.push((request_id, Box::from(key)));
        }
        chosen
    }

    /// A reply to one of this reaper's requests arrived: it is no longer
    /// outstanding (whatever it says: a key still due is chosen again).
    pub fn answered(&mut self, request_id: u64) -> bool {
        let before = self.in_flight.len();
        self.in_flight.retain(|(id, _, _)| *id != request_id);
        self.in_flight.len() != before
    }

    /// Forgets every outstanding request (the replica is no longer head).
    pub fn clear(&mut self) {
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::expiry::*;

    const NOW: u64 = 1_000_000;

    fn asked(deadline_ms: u64, mode: u8) -> Expiry {
        Expiry { deadline_ms, mode }
    }

    #[test]
    fn expire_follows_redis_for_each_option() {
        use ExpireOutcome::*;
        let later = NOW + 5000;
        // Plain: set, or delete when the deadline has passed.
        assert_eq!(decide_expire(asked(100, RELATIVE), 0, NOW), Set(NOW + 100));
        assert_eq!(decide_expire(asked(0, RELATIVE), 0, NOW), Delete);
        assert_eq!(decide_expire(asked(NOW - 1, 0), 0, NOW), Delete);
        assert_eq!(decide_expire(asked(0, 0), later, NOW), Delete);
        // NX / XX.
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_NONE), 0, NOW),
            Set(NOW + 100)
        );
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_NONE), later, NOW),
            Unchanged
        );
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_SOME), 0, NOW),
            Unchanged
        );
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_SOME), later, NOW),
            Set(NOW + 100)
        );
        // GT / LT: no deadline is infinitely late.
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_LATER), 0, NOW),
            Unchanged
        );
        assert_eq!(
            decide_expire(asked(9000, RELATIVE | IF_LATER), later, NOW),
            Set(NOW + 9000)
        );
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_LATER), later, NOW),
            Unchanged
        );
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_EARLIER), 0, NOW),
            Set(NOW + 100)
        );
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_EARLIER), later, NOW),
            Set(NOW + 100)
        );
        assert_eq!(
            decide_expire(asked(9000, RELATIVE | IF_EARLIER), later, NOW),
            Unchanged
        );
        // XX with GT or LT; a deadline in the past still deletes when the
        // condition holds.
        assert_eq!(
            decide_expire(asked(100, RELATIVE | IF_SOME | IF_EARLIER), 0, NOW),
            Unchanged
        );
        assert_eq!(
            decide_expire(asked(0, RELATIVE | IF_SOME | IF_EARLIER), later, NOW),
            Delete
        );
        // PERSIST.
        assert_eq!(decide_expire(asked(0, PERSIST), later, NOW), Set(0));
        assert_eq!(decide_expire(asked(0, PERSIST), 0, NOW), Unchanged);
        // What Redis refuses.
        for mode in [
            IF_NONE | IF_SOME,
            IF_NONE | IF_LATER,
            IF_LATER | IF_EARLIER,
            PERSIST | IF_SOME,
            PERSIST | RELATIVE,
            KEEP,
            REAP,
        ] {
            assert_eq!(
                decide_expire(asked(100, mode), later, NOW),
                Malformed,
                "{mode:#x}"
            );
        }
    }

    #[test]
    fn a_write_gets_the_deadline_asked_keeps_it_only_when_told_and_refuses_expire_options() {
        let current = Versioned {
            version: 3,
            value: b"v",
            deadline_ms: NOW + 50,
        };
        assert_eq!(deadline_of_write(None, Some(current), NOW), Some(0));
        assert_eq!(
            deadline_of_write(Some(asked(10, RELATIVE)), None, NOW),
            Some(NOW + 10)
        );
        assert_eq!(deadline_of_write(Some(asked(77, 0)), None, NOW), Some(77));
        assert_eq!(deadline_of_write(Some(asked(0, 0)), None, NOW), Some(1));
        assert_eq!(
            deadline_of_write(Some(asked(0, KEEP)), Some(current), NOW),
            Some(NOW + 50)
        );
        assert_eq!(deadline_of_write(Some(asked(0, KEEP)), None, NOW), Some(0));
        assert_eq!(
            deadline_of_write(Some(asked(10, KEEP | RELATIVE)), None, NOW),
            None
        );
        assert_eq!(deadline_of_write(Some(asked(10, IF_NONE)), None, NOW), None);
        assert_eq!(deadline_of_write(Some(asked(10, PERSIST)), None, NOW), None);
    }

    #[test]
    fn the_reaper_bounds_what_it_has_outstanding_and_resends_what_goes_unanswered() {
        let mut reaper = Reaper::new("10.0.0.1:7100".parse().unwrap());
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
        let due = || keys.iter().map(|key| &key[..]);
        let first = reaper.choose(Time::ZERO, 500, due());
        assert_eq!(first.len(), REAP_IN_FLIGHT_MAX);
        assert_eq!(first[0], (500_000, Box::from(&b"k0"[..])));
        // Nothing new while all are outstanding; an answer makes room.
        assert!(reaper.choose(Time::ZERO, 500, due()).is_empty());
        assert!(reaper.answered(500_000));
        assert!(!reaper.answered(500_000), "answered once");
        let next = reaper.choose(Time::ZERO, 500, due());
        assert_eq!(next.len(), 1);
        assert_eq!(&next[0].1[..], b"k0", "still due: chosen again");
        // Unanswered for REAP_RESEND: sent again under new ids.
        let later = reaper.choose(Time::ZERO + REAP_RESEND, 1500, due());
        assert_eq!(later.len(), REAP_IN_FLIGHT_MAX);
        assert!(
            later
                .iter()
                .all(|(id, _)| *id > 500_000 + REAP_IN_FLIGHT_MAX as u64)
        );
    }
}
