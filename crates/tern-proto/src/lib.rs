//! Sans-I/O protocol cores of Tern: the replica's chain roles (head, middle,
//! tail) and the per-shard coordinator logic.
//!
//! Each core is a state machine driven as `core.step(now, from, bytes, &mut
//! outbox)`: it takes one received datagram and appends the datagrams to send
//! to an [`Outbox`]; `core.tick(now, &mut outbox)` drives timers. The same
//! code runs in unit tests, in simulations and under the UDP shells of
//! `tern-server` and `tern-coord`.
//!
//! No I/O here: this crate must not depend on sockets, tokio, aya or clocks
//! other than the `Instant` it is handed.

pub mod assignment;
pub mod coordinator;
mod counters;
pub mod edit;
pub mod expiry;
pub mod large;
pub mod membership;
pub mod metrics;
mod outbox;
pub mod replica;
mod shared;
mod time;

pub use outbox::{Outbox, Outgoing};
pub use shared::SharedShard;
pub use time::{Time, WallClock};

/// Answers `received` with `status` (an error or a refusal), unless it is
/// itself a reply or acknowledgement: two nodes must never trade errors.
/// `epoch` is the answerer's own, so that a sender with a stale map learns;
/// a refusal that sends the sender to the map (STALE_EPOCH, WRONG_SHARD)
/// also carries the version of the map the answerer acts on, when it has one
/// (`map_version` 0: a static map).
pub(crate) fn answer_status(
    to: std::net::SocketAddrV4,
    received: &tern_wire::Header,
    status: tern_wire::Status,
    epoch: u32,
    map_version: u64,
    outbox: &mut Outbox,
) {
    use tern_wire::{Op, Status};
    if matches!(
        Op::from_u8(received.op),
        Some(Op::Reply | Op::Ack | Op::SeqReport)
    ) {
        return;
    }
    let mut reply = tern_wire::Header::new(Op::Reply, received.shard.get(), epoch);
    reply.status = status as u8;
    reply.client_id = received.client_id;
    reply.request_id = received.request_id;
    reply.key_hash = received.key_hash;
    let names_the_map = matches!(status, Status::StaleEpoch | Status::WrongShard);
    let extensions = tern_wire::Extensions {
        map_version: (names_the_map && map_version != 0).then_some(map_version),
        ..tern_wire::Extensions::default()
    };
    outbox.push_with(to, &reply, &extensions, &[], &[]);
}

/// Decodes a received datagram. A datagram that fails goes to
/// [`refuse_undecodable`]; then `None` is returned and the caller drops it.
pub(crate) fn decode_or_refuse<'a>(
    from: std::net::SocketAddrV4,
    bytes: &'a [u8],
    drops: &mut counters::DecodeDrops,
    outbox: &mut Outbox,
) -> Option<tern_wire::Message<'a>> {
    match tern_wire::Message::decode(bytes) {
        Ok(message) => Some(message),
        Err(error) => {
            drops.record(&error);
            refuse_undecodable(from, bytes, &error, outbox);
            None
        }
    }
}

/// Answers a datagram that failed to decode with its error status, when its
/// header is readable and names a request (the caller has counted it).
pub(crate) fn refuse_undecodable(
    from: std::net::SocketAddrV4,
    bytes: &[u8],
    error: &tern_wire::DecodeError,
    outbox: &mut Outbox,
) {
    if let (Some(status), Some(received)) = (
        error.reply_status(),
        tern_wire::Message::readable_header(bytes),
    ) {
        answer_status(from, &received, status, received.epoch.get(), 0, outbox);
    }
}

/// A protocol core as its I/O shell drives it.
pub trait Core {
    /// Handles one datagram received from `from`.
    fn step(&mut self, now: Time, from: std::net::SocketAddrV4, bytes: &[u8], outbox: &mut Outbox);
    /// Drives timers; called at least every few milliseconds.
    fn tick(&mut self, now: Time, outbox: &mut Outbox);
}
