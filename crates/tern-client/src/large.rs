//! Values too large for a datagram, on the client's side: a write's value is
//! staged at its shard's head over TCP before the write is sent (the write
//! then names it by `ext::LARGE`), and a reply that names a large answer is
//! completed by fetching it from the replica the reply names
//! (`tern_control::transfer`, `tern_proto::large` on the replica's side).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use tern_control::transfer::{ValueError, ValueLink, ValueRefusal};
use tern_wire::VALUE_LEN_MAX;

use crate::{ClientError, Reply};

/// How long a client waits for room at a head whose table is full before
/// it gives up on a write (it was not sent).
const FULL_FOR: Duration = Duration::from_secs(3);

/// Values up to this size are staged at every replica of the chain at
/// once, which saves the chain's fetches on a write's path (4 KiB: about
/// 1.2x the writes per second); larger ones at the head only, and fetched
/// down the chain, where the fetches of one write overlap with the next
/// writes instead of queueing on the client's path one after the other
/// and tripling what one client sends. At 64 KiB and 1 MiB the two did not
/// differ beyond this machine's noise (docs/BENCHMARKS.md, large values).
pub const STAGE_EVERYWHERE_MAX: usize = 32 << 10;

/// Whether a value travels out of band.
pub fn is_large(value: &[u8]) -> bool {
    value.len() > VALUE_LEN_MAX
}

/// A client's connections to replicas for large values, kept open.
#[derive(Debug, Default)]
pub struct Links {
    links: HashMap<SocketAddrV4, ValueLink>,
}

impl Links {
    /// The connection to `to`, opened when there is none.
    fn link(&mut self, to: SocketAddrV4) -> std::io::Result<&mut ValueLink> {
        Ok(match self.links.entry(to) {
            std::collections::hash_map::Entry::Occupied(link) => link.into_mut(),
            std::collections::hash_map::Entry::Vacant(room) => room.insert(ValueLink::connect(to)?),
        })
    }

    /// Runs `request` on the connection to `to`, connecting (again) when
    /// there is none or it failed; one reconnection per call.
    fn with_link<T>(
        &mut self,
        to: SocketAddrV4,
        mut request: impl FnMut(&mut ValueLink) -> Result<T, ValueError>,
    ) -> Result<T, ValueError> {
        for attempt in 0..2 {
            match request(self.link(to)?) {
                Err(ValueError::Io(error)) => {
                    self.links.remove(&to);
                    if attempt == 1 {
                        return Err(ValueError::Io(error));
                    }
                }
                // A refused stage closes the connection (its value unread).
                Err(refused @ ValueError::Refused(_)) => {
                    self.links.remove(&to);
                    return Err(refused);
                }
                done => return done,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Stages `value` for the write (client, request) at the head `head`,
    /// waiting while its table is full.
    pub fn stage(
        &mut self,
        head: SocketAddrV4,
        ids: (u64, u64),
        value: &[u8],
    ) -> Result<(), ClientError> {
        let start = Instant::now();
        loop {
            match self.with_link(head, |link| link.stage(ids.0, ids.1, value)) {
                Ok(()) => return Ok(()),
                Err(ValueError::Refused(ValueRefusal::Full)) if start.elapsed() < FULL_FOR => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(ValueError::Refused(ValueRefusal::TooLarge { limit })) => {
                    return Err(ClientError::ValueTooLarge {
                        len: value.len(),
                        limit: limit as usize,
                    });
                }
                Err(ValueError::Refused(refusal)) => {
                    return Err(ClientError::Io(std::io::Error::other(format!(
                        "value not staged at {head}: {refusal:?}"
                    ))));
                }
                Err(ValueError::Io(error)) => return Err(ClientError::Io(error)),
            }
        }
    }

    /// Stages `value` for the write (client, request) at every replica of
    /// `chain` (a value over `STAGE_EVERYWHERE_MAX` at the head only): at
    /// the head as `stage` does (it must take it), at the
    /// others as well as they can, so that they need not fetch it down the
    /// chain (one that did not take it fetches it from its predecessor).
    pub fn stage_everywhere(
        &mut self,
        chain: &[SocketAddrV4],
        ids: (u64, u64),
        value: &[u8],
    ) -> Result<(), ClientError> {
        let Some((&head, others)) = chain.split_first() else {
            return Err(ClientError::Io(std::io::Error::other(
                "a chain of no replica",
            )));
        };
        let others = if value.len() <= STAGE_EVERYWHERE_MAX {
            others
        } else {
            &[]
        };
        // Their requests go first and their answers are read after the
        // head's, so the copies travel at once.
        let mut sent = Vec::new();
        for &replica in others {
            let Ok(link) = self.link(replica) else {
                continue;
            };
            if link.send_stage(ids.0, ids.1, value).is_ok() {
                sent.push(replica);
            } else {
                self.links.remove(&replica);
            }
        }
        let at_head = self.stage(head, ids, value);
        for replica in sent {
            let answered = self.links.get_mut(&replica).map(ValueLink::staged);
            if !matches!(answered, Some(Ok(()))) {
                // Refused or broken: it fetches the value instead.
                self.links.remove(&replica);
            }
        }
        at_head
    }

    /// Completes a reply that names a large answer with its value, fetched
    /// from the replica holding it. False when that replica no longer
    /// holds it (the caller asks again).
    pub fn complete(&mut self, reply: &mut Reply) -> Result<bool, ClientError> {
        let Some(large) = reply.extensions.large else {
            return Ok(true);
        };
        let ids = (reply.header.client_id.get(), reply.header.request_id.get());
        let fetched = self.with_link(large.holder, |link| {
            link.answer(ids, large.length, large.checksum)
        });
        match fetched {
            Ok(value) if large.names(&value) => {
                reply.value = value;
                reply.extensions.large = None;
                Ok(true)
            }
            Ok(_) | Err(ValueError::Refused(_)) => Ok(false),
            Err(ValueError::Io(error)) => Err(ClientError::Io(error)),
        }
    }
}
