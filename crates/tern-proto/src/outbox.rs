//! What a core wants done after a step: datagrams to send and records to
//! append to its log, in buffers reused from one step to the next. The shell
//! appends (and, by its durability policy, syncs) the records before it sends
//! the datagrams, so nothing leaves a replica before it is persisted.
// PERFORMANCE CRITICAL PATH: no allocation once the buffers have grown.

use std::net::SocketAddrV4;

use tern_wire::{Extensions, Header, encode_append_with};

/// One datagram to send.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub to: Option<SocketAddrV4>,
    pub bytes: Vec<u8>,
}

/// The datagrams and log records produced by one or more steps, handled and
/// cleared by the shell.
#[derive(Debug, Default)]
pub struct Outbox {
    items: Vec<Outgoing>,
    len: usize,
    /// Encoded records, back to back.
    journal: Vec<u8>,
    /// (seq, start, end) of each record in `journal`.
    journal_index: Vec<(u64, usize, usize)>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes a datagram to `to`. Key and value must be within the wire
    /// limits: cores only echo decoded (hence bounded) keys and values.
    pub fn push(&mut self, to: SocketAddrV4, header: &Header, key: &[u8], value: &[u8]) {
        self.push_with(to, header, &Extensions::default(), key, value);
    }

    /// Encodes a datagram with extensions to `to`, as `push` does.
    pub fn push_with(
        &mut self,
        to: SocketAddrV4,
        header: &Header,
        extensions: &Extensions,
        key: &[u8],
        value: &[u8],
    ) {
        let slot = self.next_slot(to);
        slot.bytes.clear();
        encode_append_with(header, extensions, key, value, &mut slot.bytes)
            .expect("cores only send keys and values within the wire limits");
    }

    /// Queues bytes that were already encoded (a resend of a logged datagram).
    pub fn push_encoded(&mut self, to: SocketAddrV4, bytes: &[u8]) {
        let slot = self.next_slot(to);
        slot.bytes.clear();
        slot.bytes.extend_from_slice(bytes);
    }

    fn next_slot(&mut self, to: SocketAddrV4) -> &mut Outgoing {
        if self.len == self.items.len() {
            self.items.push(Outgoing::default());
        }
        let slot = &mut self.items[self.len];
        self.len += 1;
        slot.to = Some(to);
        slot
    }

    /// The queued datagrams, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddrV4, &[u8])> {
        self.items[..self.len].iter().map(|item| {
            (
                item.to.expect("queued items have a destination"),
                &item.bytes[..],
            )
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a log record: the datagram `header`, `extensions`, `key`,
    /// `value` encoded; a value out of band (`extensions.large`) follows
    /// the datagram, which carries none.
    pub fn journal_push(
        &mut self,
        seq: u64,
        header: &Header,
        extensions: &Extensions,
        key: &[u8],
        value: &[u8],
    ) {
        let start = self.journal.len();
        let inline = if extensions.large.is_some() {
            &[][..]
        } else {
            value
        };
        encode_append_with(header, extensions, key, inline, &mut self.journal)
            .expect("cores only journal keys and values within the wire limits");
        if extensions.large.is_some() {
            self.journal.extend_from_slice(value);
        }
        self.journal_index.push((seq, start, self.journal.len()));
    }

    /// The queued log records, oldest first.
    pub fn journal(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.journal_index
            .iter()
            .map(|&(seq, start, end)| (seq, &self.journal[start..end]))
    }

    /// Forgets the queued datagrams and records but keeps their buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.journal.clear();
        self.journal_index.clear();
    }
}
