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

pub mod allow;
pub mod assignment;
pub mod coordinator;
mod counters;
pub mod edit;
pub mod expiry;
mod fanout;
pub mod holds;
pub mod large;
pub mod membership;
pub mod metrics;
mod outbox;
pub mod replica;
mod shared;
mod time;
pub mod txn;

/// Where a shard's writes commit in its chain (`early_commit`: Whale's
/// early commit): the index of the replica whose acknowledgement answers a
/// write. `early_commit` = K > 0 commits a write once the chain's first K
/// replicas hold it, so the K-th answers; 0 (or a K the chain is not longer
/// than: a chain shrunk by failures) commits at the tail, synchronously.
pub fn commit_point_index(early_commit: u32, chain_len: usize) -> usize {
    let last = chain_len.saturating_sub(1);
    match usize::try_from(early_commit) {
        Ok(k) if k > 0 => (k - 1).min(last),
        _ => last,
    }
}

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

/// Answers a STATS request with one page of `text`: whole lines from the
/// byte offset the request's argument names, as many as fit a datagram.
/// The reply's argument is where the next page starts (0: this was the
/// last), so a reader asks again until it is 0.
pub(crate) fn answer_stats_page(
    to: std::net::SocketAddrV4,
    received: &tern_wire::Header,
    mut reply: tern_wire::Header,
    text: &str,
    outbox: &mut Outbox,
) {
    let start = usize::try_from(received.argument.get())
        .unwrap_or(usize::MAX)
        .min(text.len());
    let rest = &text.as_bytes()[start..];
    let mut end = rest.len();
    if end > tern_wire::VALUE_LEN_MAX {
        // Up to the last line end that fits; a single longer line is cut.
        end = rest[..tern_wire::VALUE_LEN_MAX]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(tern_wire::VALUE_LEN_MAX, |at| at + 1);
    }
    let next = start + end;
    reply
        .argument
        .set(if next < text.len() { next as u64 } else { 0 });
    reply.request_id = received.request_id;
    reply.client_id = received.client_id;
    outbox.push(to, &reply, &[], &rest[..end]);
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
