//! The state-transfer protocol of replicas, over TCP at the replica's own
//! address: a joining replica fetches its predecessor's whole state, and a
//! migration fetches a slot range's copy from the source's tail, and a
//! rebalance by load fetches how much each slot was asked. One request
//! line, then one answer: `<epoch> <length>\n` and `length` bytes (a replica
//! snapshot, a `tern_wire::export::Export` or a `tern_wire::load::SlotLoad`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use tern_wire::SLOT_COUNT;

/// How long one transfer may take to answer.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration waits for a slot range's copy: a group is small,
/// and a tail that cannot answer soon (cut off, or not serving) is better
/// asked again through meta's newest map than waited for while the group's
/// writes are held.
pub const SLOTS_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line a replica reads.
pub const REQUEST_LINE_MAX: u64 = 64;
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
}

impl TransferRequest {
    /// How long a fetch waits for the answer.
    pub fn timeout(self) -> Duration {
        match self {
            TransferRequest::Snapshot => TRANSFER_TIMEOUT,
            TransferRequest::Slots { .. } | TransferRequest::Load => SLOTS_TIMEOUT,
        }
    }

    fn line(self) -> String {
        match self {
            TransferRequest::Snapshot => "SNAPSHOT\n".into(),
            TransferRequest::Slots {
                range: [start, end],
                since,
            } => format!("SLOTS {start} {end} {since}\n"),
            TransferRequest::Load => "LOAD\n".into(),
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
            _ => return None,
        };
        words.next().is_none().then_some(request)
    }
}

/// Reads one request from a connection to a replica (at most
/// `REQUEST_LINE_MAX` bytes).
pub fn read_request(stream: &TcpStream) -> io::Result<TransferRequest> {
    stream.set_read_timeout(Some(TRANSFER_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(REQUEST_LINE_MAX)).read_line(&mut line)?;
    TransferRequest::parse(&line)
        .ok_or_else(|| io::Error::other(format!("unknown transfer request {line:?}")))
}

/// Answers a request with the bytes served at `epoch`.
pub fn write_answer(mut stream: &TcpStream, epoch: u32, bytes: &[u8]) -> io::Result<()> {
    // One write: the answer's line and bytes leave without waiting for an
    // acknowledgement of the line (Nagle's algorithm).
    stream.set_nodelay(true)?;
    let mut answer = format!("{epoch} {}\n", bytes.len()).into_bytes();
    answer.extend_from_slice(bytes);
    stream.write_all(&answer)
}

/// Asks the replica at `from`; its epoch and answer.
pub fn fetch(from: SocketAddrV4, request: TransferRequest) -> io::Result<(u32, Vec<u8>)> {
    let stream = TcpStream::connect_timeout(&from.into(), Duration::from_millis(500))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(request.timeout()))?;
    (&stream).write_all(request.line().as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    (&mut reader).take(REQUEST_LINE_MAX).read_line(&mut line)?;
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
        ] {
            assert_eq!(TransferRequest::parse(bad), None, "{bad:?}");
        }
    }
}
