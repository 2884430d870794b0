//! The state-transfer protocol of replicas, over TCP at the replica's own
//! address: a joining replica fetches its predecessor's whole state, and a
//! migration fetches a slot range's copy from the source's tail, and a
//! rebalance by load fetches how much each slot was asked. One request
//! line, then one answer: `<epoch> <length>\n` and `length` bytes (a replica
//! snapshot, a `tern_wire::export::Export` or a `tern_wire::load::SlotLoad`).
//!
//! The same listener moves values too large for a datagram (`ext::LARGE`,
//! `tern_proto::large`), on connections that stay open for many requests:
//! a client stages a write's value at the head (`STAGE`, the value after
//! the line), a successor fetches a record's value from its predecessor
//! (`RECORD`), a client fetches a large answer from the replica its reply
//! names (`ANSWER`). A refusal is one line, `! <reason>`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddrV4;
use std::time::Duration;

use tern_wire::SLOT_COUNT;

use crate::tls::{self, Role};

/// How long one transfer may take to answer.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration waits for a slot range's copy: a group is small,
/// and a tail that cannot answer soon (cut off, or not serving) is better
/// asked again through meta's newest map than waited for while the group's
/// writes are held.
pub const SLOTS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to a replica (TLS handshake included) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest request line a replica reads.
pub const REQUEST_LINE_MAX: u64 = 96;
/// The largest answer a fetch accepts (a replica's whole state).
pub const ANSWER_LEN_MAX: usize = 16 << 30;

/// What is asked of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferRequest {
    /// Its whole state (a replica snapshot), for a joining successor.
    Snapshot,
    /// The copy of the slots `range` (`[start, end)`) for a migration:
    /// the keys whose version is at least `since` in full, the others by
    /// name only (0: every key in full, a first copy).
    Slots { range: [u32; 2], since: u64 },
    /// The reads it answered and the client writes it applied, by slot.
    Load,
    /// A client's value for its write (client, request): `length` bytes
    /// follow the line.
    Stage {
        client_id: u64,
        request_id: u64,
        length: u64,
    },
    /// The value of record `seq` as `length` and `checksum` name it.
    Record {
        seq: u64,
        length: u32,
        checksum: u32,
    },
    /// The large answer kept for a client's request, as its reply named it
    /// (a request asked again may have been answered another value).
    Answer {
        client_id: u64,
        request_id: u64,
        checksum: u32,
    },
}

impl TransferRequest {
    /// How long a fetch waits for the answer.
    pub fn timeout(self) -> Duration {
        match self {
            TransferRequest::Snapshot
            | TransferRequest::Stage { .. }
            | TransferRequest::Record { .. }
            | TransferRequest::Answer { .. } => TRANSFER_TIMEOUT,
            TransferRequest::Slots { .. } | TransferRequest::Load => SLOTS_TIMEOUT,
        }
    }

    /// Whether it asks for a value (served on a connection kept open).
    pub fn is_value(self) -> bool {
        matches!(
            self,
            TransferRequest::Stage { .. }
                | TransferRequest::Record { .. }
                | TransferRequest::Answer { .. }
        )
    }

    fn line(self) -> String {
        match self {
            TransferRequest::Snapshot => "SNAPSHOT\n".into(),
            TransferRequest::Slots {
                range: [start, end],
                since,
            } => format!("SLOTS {start} {end} {since}\n"),
            TransferRequest::Load => "LOAD\n".into(),
            TransferRequest::Stage {
                client_id,
                request_id,
                length,
            } => format!("STAGE {client_id} {request_id} {length}\n"),
            TransferRequest::Record {
                seq,
                length,
                checksum,
            } => format!("RECORD {seq} {length} {checksum}\n"),
            TransferRequest::Answer {
                client_id,
                request_id,
                checksum,
            } => format!("ANSWER {client_id} {request_id} {checksum}\n"),
        }
    }

    fn parse(line: &str) -> Option<TransferRequest> {
        let mut words = line.split_whitespace();
        let request = match words.next()? {
            "SNAPSHOT" => TransferRequest::Snapshot,
            "LOAD" => TransferRequest::Load,
            "SLOTS" => {
                let start: u32 = words.next()?.parse().ok()?;
                let end: u32 = words.next()?.parse().ok()?;
                // Optional: a first copy asks without it.
                let since: u64 = match words.next() {
                    Some(word) => word.parse().ok()?,
                    None => 0,
                };
                if start >= end || end > SLOT_COUNT {
                    return None;
                }
                TransferRequest::Slots {
                    range: [start, end],
                    since,
                }
            }
            "STAGE" => TransferRequest::Stage {
                client_id: words.next()?.parse().ok()?,
                request_id: words.next()?.parse().ok()?,
                length: words.next()?.parse().ok()?,
            },
            "RECORD" => TransferRequest::Record {
                seq: words.next()?.parse().ok()?,
                length: words.next()?.parse().ok()?,
                checksum: words.next()?.parse().ok()?,
            },
            "ANSWER" => TransferRequest::Answer {
                client_id: words.next()?.parse().ok()?,
                request_id: words.next()?.parse().ok()?,
                checksum: words.next()?.parse().ok()?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(request)
    }
}

/// Reads the next request from a connection to a replica (at most
/// `REQUEST_LINE_MAX` bytes); None when the peer closed it. The reader
/// keeps what follows the line (a staged value).
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<TransferRequest>> {
    let mut line = String::new();
    reader.take(REQUEST_LINE_MAX).read_line(&mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    TransferRequest::parse(&line)
        .map(Some)
        .ok_or_else(|| io::Error::other(format!("unknown transfer request {line:?}")))
}

/// Why a replica did not serve a value request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueRefusal {
    /// It does not hold the value (any more).
    Missing,
    /// Its table of values is full: try again shortly.
    Full,
    /// Longer than the replica accepts.
    TooLarge { limit: u64 },
    /// The asker's certificate does not permit it.
    NotPermitted,
}

impl ValueRefusal {
    fn line(self) -> String {
        match self {
            ValueRefusal::Missing => "! MISSING\n".into(),
            ValueRefusal::Full => "! FULL\n".into(),
            ValueRefusal::TooLarge { limit } => format!("! TOO_LARGE {limit}\n"),
            ValueRefusal::NotPermitted => "! NOT_PERMITTED\n".into(),
        }
    }

    fn parse(line: &str) -> Option<ValueRefusal> {
        let mut words = line.strip_prefix("! ")?.split_whitespace();
        let refusal = match words.next()? {
            "MISSING" => ValueRefusal::Missing,
            "FULL" => ValueRefusal::Full,
            "NOT_PERMITTED" => ValueRefusal::NotPermitted,
            "TOO_LARGE" => ValueRefusal::TooLarge {
                limit: words.next()?.parse().ok()?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(refusal)
    }
}

/// A value request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?}")]
    Refused(ValueRefusal),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Answers a value request with a refusal.
pub fn write_refusal(stream: &mut impl Write, refusal: ValueRefusal) -> io::Result<()> {
    stream.write_all(refusal.line().as_bytes())?;
    stream.flush()
}

/// A connection to one replica for value requests, kept open.
#[derive(Debug)]
pub struct ValueLink {
    reader: BufReader<tls::Stream>,
}

impl ValueLink {
    pub fn connect(to: SocketAddrV4) -> io::Result<ValueLink> {
        let stream = tls::connect(to, CONNECT_TIMEOUT, Role::Replica)?;
        stream.socket().set_read_timeout(Some(TRANSFER_TIMEOUT))?;
        stream.socket().set_write_timeout(Some(TRANSFER_TIMEOUT))?;
        Ok(ValueLink {
            reader: BufReader::new(stream),
        })
    }

    /// Stages `value` for the write (client, request) at the replica.
    pub fn stage(
        &mut self,
        client_id: u64,
        request_id: u64,
        value: &[u8],
    ) -> Result<(), ValueError> {
        self.send_stage(client_id, request_id, value)?;
        self.staged()
    }

    /// Sends a stage request without waiting for its answer, which
    /// `staged` reads (so that a client stages at several replicas at once).
    pub fn send_stage(
        &mut self,
        client_id: u64,
        request_id: u64,
        value: &[u8],
    ) -> Result<(), ValueError> {
        let request = TransferRequest::Stage {
            client_id,
            request_id,
            length: value.len() as u64,
        };
        // One write, as an answer is.
        let mut staged = request.line().into_bytes();
        staged.extend_from_slice(value);
        let stream = self.reader.get_mut();
        stream.write_all(&staged)?;
        stream.flush()?;
        Ok(())
    }

    /// The answer to the stage request sent last.
    pub fn staged(&mut self) -> Result<(), ValueError> {
        self.answer_of(0).map(drop)
    }

    /// The value of record `seq`, as `length` and `checksum` name it.
    pub fn record(&mut self, seq: u64, length: u32, checksum: u32) -> Result<Vec<u8>, ValueError> {
        let request = TransferRequest::Record {
            seq,
            length,
            checksum,
        };
        self.send(request)?;
        self.answer_of(length as usize)
    }

    /// The large answer kept for the request (client, request) that its
    /// reply named by `length` and `checksum`.
    pub fn answer(
        &mut self,
        (client_id, request_id): (u64, u64),
        length: u32,
        checksum: u32,
    ) -> Result<Vec<u8>, ValueError> {
        let request = TransferRequest::Answer {
            client_id,
            request_id,
            checksum,
        };
        self.send(request)?;
        self.answer_of(length as usize)
    }

    fn send(&mut self, request: TransferRequest) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(request.line().as_bytes())?;
        stream.flush()
    }

    /// Reads an answer of at most `length_max` bytes, or a refusal.
    fn answer_of(&mut self, length_max: usize) -> Result<Vec<u8>, ValueError> {
        let mut line = String::new();
        (&mut self.reader)
            .take(REQUEST_LINE_MAX)
            .read_line(&mut line)?;
        if let Some(refusal) = ValueRefusal::parse(&line) {
            return Err(ValueError::Refused(refusal));
        }
        let bad = || io::Error::other(format!("bad value answer {line:?}"));
        let mut fields = line.split_whitespace();
        let _epoch: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let length: usize = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        if length > length_max {
            return Err(bad().into());
        }
        let mut bytes = vec![0; length];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

/// Answers a request with the bytes served at `epoch`.
pub fn write_answer(stream: &mut impl Write, epoch: u32, bytes: &[u8]) -> io::Result<()> {
    // One write: one segment (one TLS record) for the line and the bytes.
    let mut answer = format!("{epoch} {}\n", bytes.len()).into_bytes();
    answer.extend_from_slice(bytes);
    stream.write_all(&answer)?;
    stream.flush()
}

/// Asks the replica at `from`; its epoch and answer.
pub fn fetch(from: SocketAddrV4, request: TransferRequest) -> io::Result<(u32, Vec<u8>)> {
    let mut stream = tls::connect(from, CONNECT_TIMEOUT, Role::Replica)?;
    stream.socket().set_read_timeout(Some(request.timeout()))?;
    stream.write_all(request.line().as_bytes())?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    (&mut reader).take(REQUEST_LINE_MAX).read_line(&mut line)?;
    if let Some(refusal) = ValueRefusal::parse(&line) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{from} refused {request:?}: {refusal:?}"),
        ));
    }
    let mut fields = line.split_whitespace();
    let bad = || io::Error::other(format!("bad transfer answer {line:?}"));
    let epoch: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let length: usize = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    if length > ANSWER_LEN_MAX {
        return Err(bad());
    }
    let mut bytes = vec![0; length];
    reader.read_exact(&mut bytes)?;
    Ok((epoch, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_back_and_bad_ones_are_refused() {
        for request in [
            TransferRequest::Snapshot,
            TransferRequest::Load,
            TransferRequest::Slots {
                range: [3, 90],
                since: 0,
            },
            TransferRequest::Slots {
                range: [16383, 16384],
                since: u64::MAX,
            },
            TransferRequest::Stage {
                client_id: u64::MAX,
                request_id: u64::MAX,
                length: u64::MAX,
            },
            TransferRequest::Record {
                seq: u64::MAX,
                length: u32::MAX,
                checksum: u32::MAX,
            },
            TransferRequest::Answer {
                client_id: u64::MAX,
                request_id: u64::MAX,
                checksum: u32::MAX,
            },
        ] {
            assert_eq!(TransferRequest::parse(&request.line()), Some(request));
            assert!(request.line().len() as u64 <= REQUEST_LINE_MAX);
        }
        assert_eq!(
            TransferRequest::parse("SLOTS 3 90"),
            Some(TransferRequest::Slots {
                range: [3, 90],
                since: 0
            })
        );
        for bad in [
            "",
            "SLOTS 5 5",
            "SLOTS 1 99999",
            "SLOTS 1",
            "SLOTS 1 2 x",
            "SLOTS 1 2 3 4",
            "SNAPSHOT now",
            "LOAD 1",
            "HELLO",
            "STAGE 1 2",
            "STAGE 1 2 -3",
            "RECORD 1 2",
            "ANSWER 1",
            "ANSWER 1 2",
        ] {
            assert_eq!(TransferRequest::parse(bad), None, "{bad:?}");
        }
        for refusal in [
            ValueRefusal::Missing,
            ValueRefusal::Full,
            ValueRefusal::TooLarge { limit: 16 << 20 },
        ] {
            assert_eq!(ValueRefusal::parse(&refusal.line()), Some(refusal));
        }
        assert_eq!(ValueRefusal::parse("0 12\n"), None);
    }
}
