//! The replica's TCP listener, at its own address (`tern_control::transfer`):
//! state transfers, which the main loop answers (under meta only), and the
//! out-of-band values of `tern_proto::large`, which the connection's thread
//! serves from the shared table without the main loop. Plus the fetcher
//! that brings the values of records the core waits for from the
//! predecessor.

use std::io::{self, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::time::Duration;

use tern_control::tls::{self, Peer, Role};
use tern_control::transfer::{self, TRANSFER_TIMEOUT, TransferRequest, ValueLink, ValueRefusal};
use tern_net::Waker;
use tern_proto::large::{StageRefusal, Values};
use tern_wire::Large;

/// A request for the main loop, with where to answer it.
pub(crate) type TransferCall = (TransferRequest, SyncSender<(u32, Vec<u8>)>);

/// Connections served at once (each has a thread): clients keep one open
/// to each replica they stage at or fetch from, so this bounds the
/// clients of values (a gateway keeps one client per connection); one
/// more is closed at once.
pub(crate) const CONNECTIONS_MAX: usize = 512;
/// A value connection idle this long is closed (its client reconnects).
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Accepts connections on `addr` (TCP, the replica's UDP address) until
/// the process ends. `state` is where state-transfer requests go (the main
/// loop, woken by the waker); without it they are refused (a replica
/// outside meta). On loopback the port may be briefly taken by someone's
/// outgoing connection: binding is retried.
pub(crate) fn serve(
    addr: SocketAddrV4,
    values: Values,
    state: Option<(Sender<TransferCall>, Arc<Waker>)>,
) {
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(listener) => break listener,
            Err(error) => {
                tracing::warn!(%error, %addr, "cannot listen for transfers yet");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
            open.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                limit = CONNECTIONS_MAX,
                peer = ?stream.peer_addr().ok(),
                "too many transfer connections: one closed"
            );
            continue;
        }
        let (values, state, open) = (values.clone(), state.clone(), open.clone());
        std::thread::spawn(move || {
            if let Err(error) = answer(stream, &values, state.as_ref()) {
                tracing::debug!(%error, "transfer connection ended");
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Who may ask what of a replica: a state transfer takes the role that
/// needs it (a successor's snapshot, an operator's migration and load, the
/// gateway's slot copies for SCAN), a predecessor's record value a
/// replica; any certified peer may stage and fetch its large values.
fn permitted(request: TransferRequest) -> &'static [Role] {
    match request {
        TransferRequest::Snapshot => &[Role::Replica, Role::Operator],
        TransferRequest::Slots { .. } => &[Role::Operator, Role::Gateway],
        TransferRequest::Load => &[Role::Operator],
        TransferRequest::Record { .. } => &[Role::Replica],
        TransferRequest::Stage { .. } | TransferRequest::Answer { .. } => &Role::ALL,
    }
}

/// Serves one connection: value requests until the peer closes it or it
/// idles, or one state transfer.
fn answer(
    stream: TcpStream,
    values: &Values,
    state: Option<&(Sender<TransferCall>, Arc<Waker>)>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let address = stream.peer_addr().ok();
    let (stream, peer): (tls::Stream, Peer) = tls::accept(stream)?;
    stream.socket().set_read_timeout(Some(IDLE_FOR))?;
    stream.socket().set_write_timeout(Some(TRANSFER_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = transfer::read_request(&mut reader)? {
        if !peer.is(permitted(request)) {
            tls::refuse(
                address,
                &format!("{peer} may not ask a replica for {request:?}"),
            );
            return transfer::write_refusal(reader.get_mut(), ValueRefusal::NotPermitted);
        }
        match request {
            TransferRequest::Stage {
                client_id,
                request_id,
                length,
            } => {
                // Checked before a byte of the value is read; refused, the
                // connection closes (the value would follow).
                // Its room is taken first: values being read count against
                // the replica's budget too.
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                if let Err(refusal) = values.reserve(length) {
                    return transfer::write_refusal(reader.get_mut(), refusal_of(refusal));
                }
                let mut value = vec![0; length];
                if let Err(error) = reader.read_exact(&mut value) {
                    values.release(length);
                    return Err(error);
                }
                let now = tern_net::monotonic_now();
                values.stage_reserved(now, (client_id, request_id), value);
                transfer::write_answer(reader.get_mut(), 0, &[])?;
            }
            TransferRequest::Record {
                seq,
                length,
                checksum,
            } => {
                let large = Large {
                    length,
                    checksum,
                    holder: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                };
                match values.record(seq, &large) {
                    Some(value) => transfer::write_answer(reader.get_mut(), 0, &value)?,
                    None => transfer::write_refusal(reader.get_mut(), ValueRefusal::Missing)?,
                }
            }
            TransferRequest::Answer {
                client_id,
                request_id,
                checksum,
            } => match values.answer((client_id, request_id), checksum) {
                Some(value) => transfer::write_answer(reader.get_mut(), 0, &value)?,
                None => transfer::write_refusal(reader.get_mut(), ValueRefusal::Missing)?,
            },
            TransferRequest::Snapshot | TransferRequest::Slots { .. } | TransferRequest::Load => {
                let Some((requests, waker)) = state else {
                    return Err(io::Error::other("no state transfers outside meta"));
                };
                let (answer, served) = mpsc::sync_channel(1);
                requests.send((request, answer)).map_err(io::Error::other)?;
                waker.wake();
                let (epoch, bytes) = served
                    .recv_timeout(TRANSFER_TIMEOUT)
                    .map_err(|_| io::Error::other("nothing served: not a serving member"))?;
                return transfer::write_answer(reader.get_mut(), epoch, &bytes);
            }
        }
    }
    Ok(())
}

fn refusal_of(refusal: StageRefusal) -> ValueRefusal {
    match refusal {
        StageRefusal::TooLarge { limit } => ValueRefusal::TooLarge {
            limit: limit as u64,
        },
        StageRefusal::Full => ValueRefusal::Full,
    }
}

/// Fetches the values of the records the core waits for from the
/// predecessor it names, hands them in and wakes the main loop, until the
/// process ends.
pub(crate) fn fetch_records(values: Values, waker: Arc<Waker>) {
    let mut link: Option<(SocketAddrV4, ValueLink)> = None;
    loop {
        let Some(wanted) = values.wait_wanted(Duration::from_secs(1)) else {
            continue;
        };
        if link.as_ref().is_none_or(|(to, _)| *to != wanted.from) {
            link = ValueLink::connect(wanted.from)
                .map(|connected| (wanted.from, connected))
                .inspect_err(|error| tracing::debug!(%error, from = %wanted.from, "cannot reach the predecessor for a value"))
                .ok();
        }
        let fetched = link.as_mut().map(|(_, connected)| {
            connected.record(wanted.seq, wanted.large.length, wanted.large.checksum)
        });
        match fetched {
            Some(Ok(value)) => {
                if values.deliver(wanted.seq, value) {
                    waker.wake();
                }
            }
            Some(Err(error)) => {
                tracing::debug!(%error, seq = wanted.seq, "value of a record not fetched");
                link = None;
                std::thread::sleep(Duration::from_millis(20));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Starts the listener and the fetcher of record values for the replica
/// bound to `socket` at `addr`, with its table of values.
pub(crate) fn start(
    addr: SocketAddrV4,
    socket: &mut tern_net::BatchSocket,
    values: &Values,
    state: Option<(Sender<TransferCall>, Arc<Waker>)>,
) -> io::Result<()> {
    let waker = Arc::new(socket.waker()?);
    let served = values.clone();
    std::thread::Builder::new()
        .name("transfers".into())
        .spawn(move || serve(addr, served, state))?;
    let fetched = values.clone();
    std::thread::Builder::new()
        .name("record-values".into())
        .spawn(move || fetch_records(fetched, waker))?;
    Ok(())
}
