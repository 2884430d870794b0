//! A client with many requests in flight at once from one thread: requests
//! are sent as they are submitted, replies are matched by request id, and an
//! unanswered request is resent with the same request id (so a retried write
//! is still applied once). Used by the benchmark driver, where one blocking
//! request per thread would spend more CPU on context switches than the
//! servers spend on the request.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tern_wire::{MESSAGE_LEN_MAX, Message, Op, Status, encode_append_with};

use crate::retry::{Retry, Verdict};
use crate::{ClientError, ClientId, ClientOptions, ClusterMap, Reply};

/// Requests one pipeline may have in flight, and how many writes it may
/// send after its oldest unfinished write: the replicas remember the
/// outcomes of this many writes per client, and take a write below all of
/// them for a late copy (DESIGN rule 6), which holds only while fewer writes
/// than that follow a client's oldest outstanding write. Reads leave no
/// outcome, so they do not count: a write held up (by a migration's hold,
/// say) does not stop the reads behind it.
pub const PIPELINE_DEPTH_MAX: usize = 16;

/// The least time between two fetches of the map when a refusal named a
/// newer one than the pipeline's.
const MAP_REFRESH_SPACING_BEHIND: Duration = Duration::from_millis(2);

/// A request to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Get,
    Put(&'a [u8]),
    Delete,
    Cas {
        expected: u64,
        value: &'a [u8],
    },
    /// Any request, with its write flags and extensions.
    Call(crate::answer::Call<'a>),
}

impl Request<'_> {
    /// The op it is sent as.
    pub fn op(&self) -> Op {
        match self {
            Request::Get => Op::Get,
            Request::Put(_) => Op::Put,
            Request::Delete => Op::Delete,
            Request::Cas { .. } => Op::Cas,
            Request::Call(call) => call.op,
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// What the caller passed to `submit`.
    pub token: u64,
    /// When it was submitted.
    pub submitted: Instant,
    pub result: Result<Reply, ClientError>,
}

#[derive(Debug)]
struct InFlight {
    token: u64,
    to: SocketAddrV4,
    bytes: Vec<u8>,
    submitted: Instant,
    last_sent: Instant,
    /// When to send it again (the attempt timeout, or a shorter pause).
    next_send: Instant,
    retry: Retry,
    /// Waiting for the map to be refreshed before it is resent.
    reroute: bool,
    /// The newest map version a refusal of it named.
    wanted_map_version: u64,
    /// For a write: how many writes this pipeline had sent before it.
    write: Option<u64>,
}

/// Many requests in flight from one socket and one client id.
#[derive(Debug)]
pub struct Pipeline {
    socket: UdpSocket,
    map: ClusterMap,
    client_id: ClientId,
    next_request_id: u64,
    options: ClientOptions,
    in_flight: HashMap<u64, InFlight>,
    recv_buffer: Box<[u8]>,
    poll_timeout: Duration,
    /// The meta node that last answered as leader.
    meta_hint: Option<SocketAddrV4>,
    last_refresh: Option<Instant>,
    /// A reply said STALE_EPOCH: refresh the map before the next resends.
    stale: bool,
    /// Writes submitted so far.
    writes: u64,
    /// Connections to replicas for large answers.
    links: crate::large::Links,
}

impl Pipeline {
    pub fn new(map: ClusterMap, options: ClientOptions) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        // Set once: `poll` blocks at most this long for the first reply, so
        // that resends are checked several times per attempt.
        let poll_timeout = options.attempt_timeout / 4;
        socket.set_read_timeout(Some(poll_timeout))?;
        Ok(Pipeline {
            socket,
            map,
            client_id: ClientId::random(),
            next_request_id: 1,
            options,
            in_flight: HashMap::new(),
            recv_buffer: vec![0; 2048].into_boxed_slice(),
            poll_timeout,
            meta_hint: None,
            last_refresh: None,
            stale: false,
            writes: 0,
            links: crate::large::Links::default(),
        })
    }

    /// Requests sent and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How long `poll` waits for the first reply (default: a quarter of the
    /// attempt timeout). An open-loop sender shortens it to keep its pace.
    pub fn set_poll_timeout(&mut self, wait: Duration) -> io::Result<()> {
        let wait = wait.max(Duration::from_micros(50));
        if self.poll_timeout != wait {
            self.socket.set_read_timeout(Some(wait))?;
            self.poll_timeout = wait;
        }
        Ok(())
    }

    /// Whether `submit` would take another request of any kind now: room
    /// for a read ([`Pipeline::has_room_for_read`]), and fewer than
    /// `PIPELINE_DEPTH_MAX` writes sent since the oldest write in flight.
    pub fn has_room(&self) -> bool {
        self.has_room_for_read()
            && self
                .in_flight
                .values()
                .filter_map(|request| request.write)
                .min()
                .is_none_or(|oldest| self.writes - oldest < PIPELINE_DEPTH_MAX as u64)
    }

    /// Whether `submit` would take another read now: fewer than
    /// `PIPELINE_DEPTH_MAX` requests in flight.
    pub fn has_room_for_read(&self) -> bool {
        self.in_flight.len() < PIPELINE_DEPTH_MAX
    }

    /// Whether `submit` would take a request of `op` now: a read needs
    /// [`Pipeline::has_room_for_read`], anything else [`Pipeline::has_room`].
    pub fn has_room_for(&self, op: Op) -> bool {
        if op == Op::Get {
            self.has_room_for_read()
        } else {
            self.has_room()
        }
    }

    /// Sends a request. Fails when the key or value is over its limit or the
    /// pipeline has no room for it (`has_room`, `has_room_for_read`).
    pub fn submit(
        &mut self,
        request: Request<'_>,
        key: &[u8],
        token: u64,
    ) -> Result<(), ClientError> {
        let call = match request {
            Request::Get => crate::answer::Call::get(),
            Request::Put(value) => crate::answer::Call::new(Op::Put, value),
            Request::Delete => crate::answer::Call::delete(),
            Request::Cas { expected, value } => crate::answer::Call {
                version: expected,
                ..crate::answer::Call::new(Op::Cas, value)
            },
            Request::Call(call) => call,
        };
        let is_write = call.op != Op::Get;
        if !self.has_room_for(call.op) {
            return Err(ClientError::Refused {
                status: Status::TryAgain,
            });
        }
        // Values go in the datagram: a large one takes a `Client`'s way.
        let limit = tern_wire::VALUE_LEN_MAX;
        let (mut header, to) = crate::request_header(&self.map, self.client_id, key, &call, limit)?;
        header.request_id.set(self.next_request_id);
        let mut bytes = Vec::with_capacity(MESSAGE_LEN_MAX);
        encode_append_with(&header, &call.extensions, key, call.value, &mut bytes)
            .expect("sizes were checked");
        self.socket.send_to(&bytes, to)?;
        let now = Instant::now();
        let mut retry = Retry::new(now, &self.options, !self.map.meta.is_empty());
        retry.sent();
        self.in_flight.insert(
            self.next_request_id,
            InFlight {
                token,
                to,
                bytes,
                submitted: now,
                last_sent: now,
                next_send: now + self.options.attempt_timeout,
                retry,
                reroute: false,
                wanted_map_version: 0,
                write: is_write.then_some(self.writes),
            },
        );
        self.next_request_id += 1;
        self.writes += u64::from(is_write);
        Ok(())
    }

    /// Sends `request` for every key of `keys`, as many in flight as there
    /// is room for, and hands each reply to `each` with its key's index
    /// (in the order they come); stops at the first failure.
    pub fn for_each_key(
        &mut self,
        keys: &[Vec<u8>],
        request: Request<'_>,
        mut each: impl FnMut(usize, Reply) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let (mut next, mut done) = (0, 0);
        let mut completed = Vec::new();
        while done < keys.len() {
            while next < keys.len() && self.has_room_for(request.op()) {
                self.submit(request, &keys[next], next as u64)?;
                next += 1;
            }
            self.poll(&mut completed)?;
            for completion in completed.drain(..) {
                each(completion.token as usize, completion.result?)?;
                done += 1;
            }
        }
        Ok(())
    }

    /// Waits for replies (at most a quarter of the attempt timeout), takes
    /// every reply already queued, resends what timed out, and appends every
    /// finished request to `completed`.
    pub fn poll(&mut self, completed: &mut Vec<Completion>) -> Result<(), ClientError> {
        self.poll_with(0, completed)
    }

    /// As [`Pipeline::poll`], without waiting: takes the replies already
    /// queued and resends what timed out. For an event loop that learns
    /// from its own poller (the socket is [`AsRawFd`]) when replies came.
    pub fn poll_ready(&mut self, completed: &mut Vec<Completion>) -> Result<(), ClientError> {
        self.poll_with(libc::MSG_DONTWAIT, completed)
    }

    fn poll_with(
        &mut self,
        mut flags: libc::c_int,
        completed: &mut Vec<Completion>,
    ) -> Result<(), ClientError> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        loop {
            // SAFETY: receives into a live buffer of the given length.
            let length = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.recv_buffer.as_mut_ptr().cast(),
                    self.recv_buffer.len(),
                    flags,
                )
            };
            if length < 0 {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => break,
                    _ => return Err(error.into()),
                }
            }
            self.complete(length as usize, completed);
            // After the first datagram, take only what is already queued.
            flags = libc::MSG_DONTWAIT;
        }
        self.resend_or_expire(completed)
    }

    fn complete(&mut self, length: usize, completed: &mut Vec<Completion>) {
        let Ok(message) = Message::decode(&self.recv_buffer[..length]) else {
            return;
        };
        let header = message.header;
        if header.op() != Op::Reply
            || (header.client_id.get() != self.client_id.get() && header.client_id.get() != 0)
        {
            return;
        }
        let request_id = header.request_id.get();
        let Some(request) = self.in_flight.get_mut(&request_id) else {
            return;
        };
        let now = Instant::now();
        match request.retry.on_reply(now, header.status()) {
            Verdict::RetryAfter(pause) => {
                request.next_send = now + pause;
                return;
            }
            Verdict::Reroute => {
                let refuser = message.extensions.map_version;
                if let Some(pause) = request.retry.refuser_behind(now, refuser, self.map.version) {
                    request.next_send = now + pause;
                    return;
                }
                request.reroute = true;
                request.wanted_map_version = request
                    .wanted_map_version
                    .max(message.extensions.map_version.unwrap_or(0));
                self.stale = true;
                return;
            }
            Verdict::Resend => {
                request.next_send = now;
                return;
            }
            Verdict::Done | Verdict::Expired => {}
        }
        let request = self.in_flight.remove(&request_id).expect("found above");
        let result = if header.status() == Status::TryAgain {
            Err(ClientError::Timeout {
                attempts: request.retry.attempts(),
                elapsed: now - request.submitted,
            })
        } else if header.status() == Status::StaleEpoch {
            Err(ClientError::StaleEpoch {
                shard: header.shard.get(),
            })
        } else {
            let mut reply = Reply {
                status: header.status(),
                header,
                extensions: message.extensions,
                value: message.value.to_vec(),
            };
            // A large answer, fetched now from the replica that holds it.
            match self.links.complete(&mut reply) {
                Ok(true) => Ok(reply),
                Ok(false) => Err(ClientError::Refused {
                    status: Status::ValueMissing,
                }),
                Err(error) => Err(error),
            }
        };
        completed.push(Completion {
            token: request.token,
            submitted: request.submitted,
            result,
        });
    }

    /// With meta: fetches the map (at most twice per attempt timeout) and
    /// points every request in flight at its shard's coordinator and epoch
    /// as the map now has them (same request ids: still applied once); a
    /// request that waited for this is resent as `Retry::after_reroute` says.
    /// Whether the map was refreshed.
    fn refresh_routes(&mut self, now: Instant) -> bool {
        if self.map.meta.is_empty() {
            return true;
        }
        // A refusal that named a newer map than this one says for sure it
        // changed (a migration's hand-off, say): fetch it soon. Otherwise at
        // most twice per attempt timeout.
        let surely_behind = self
            .in_flight
            .values()
            .any(|request| request.reroute && request.wanted_map_version > self.map.version);
        let spacing = if surely_behind {
            MAP_REFRESH_SPACING_BEHIND
        } else {
            self.options.attempt_timeout / 2
        };
        if self
            .last_refresh
            .is_some_and(|last| last.elapsed() < spacing)
        {
            return false;
        }
        self.last_refresh = Some(now);
        let Ok(map) = crate::meta::fetch_map(&self.map.meta, &mut self.meta_hint) else {
            return false;
        };
        for request in self.in_flight.values_mut() {
            let message = Message::decode(&request.bytes).expect("encoded by submit");
            let mut header = message.header;
            let before = (request.to, header.shard.get(), header.epoch.get());
            let (key, value) = (message.key.to_vec(), message.value.to_vec());
            let extensions = message.extensions;
            request.to = crate::reroute(&map, &mut header);
            request.bytes.clear();
            encode_append_with(&header, &extensions, &key, &value, &mut request.bytes)
                .expect("sizes were checked");
            if std::mem::take(&mut request.reroute) {
                let rerouted = (request.to, header.shard.get(), header.epoch.get()) != before;
                let behind = map.version < request.wanted_map_version;
                request.next_send = match request.retry.after_reroute(now, rerouted, behind) {
                    None => now,
                    Some(pause) => now + pause,
                };
            }
        }
        self.map = map;
        true
    }

    fn resend_or_expire(&mut self, completed: &mut Vec<Completion>) -> Result<(), ClientError> {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, request)| request.retry.expired(now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let request = self.in_flight.remove(&id).expect("listed above");
            completed.push(Completion {
                token: request.token,
                submitted: request.submitted,
                result: Err(ClientError::Timeout {
                    attempts: request.retry.attempts(),
                    elapsed: now - request.submitted,
                }),
            });
        }
        let attempt_timeout = self.options.attempt_timeout;
        for request in self.in_flight.values_mut() {
            let silent = now.duration_since(request.last_sent) >= attempt_timeout;
            if silent
                && request.next_send <= now
                && request.retry.on_silence(now) == Verdict::Reroute
            {
                request.reroute = true;
                self.stale = true;
            }
        }
        if self.stale {
            // Until the map is refreshed (it is fetched at most twice per
            // attempt timeout), requests go on their old routes.
            self.stale = !self.refresh_routes(now);
        }
        for request in self.in_flight.values_mut() {
            if request.next_send <= now {
                self.socket.send_to(&request.bytes, request.to)?;
                request.last_sent = now;
                request.next_send = now + attempt_timeout;
                request.retry.sent();
            }
        }
        Ok(())
    }
}

impl AsRawFd for Pipeline {
    /// The socket replies arrive on.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_control::{Epoch, ShardId, ShardMap};
    use tern_wire::Header;

    /// A coordinator that never answers requests for the key `stuck`.
    fn server() -> (UdpSocket, ClusterMap) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else {
            unreachable!("bound to IPv4")
        };
        let shard = ShardMap {
            id: ShardId(0),
            epoch: Epoch(1),
            slots: vec![[0, tern_wire::SLOT_COUNT]],
            coordinator: addr,
            replicas: vec![addr],
            incarnation: 0,
            early_commit: 0,
            fanout: false,
        };
        (server, ClusterMap::new(vec![shard]).unwrap())
    }

    /// Answers the next request that is not for `stuck`.
    fn answer_one(server: &UdpSocket) {
        let mut buffer = [0; 2048];
        loop {
            let (length, from) = server.recv_from(&mut buffer).unwrap();
            let message = Message::decode(&buffer[..length]).unwrap();
            if message.key == b"stuck" {
                continue;
            }
            let mut reply = Header::new(Op::Reply, 0, 1);
            reply.client_id = message.header.client_id;
            reply.request_id = message.header.request_id;
            reply.status = Status::Ok as u8;
            let reply = tern_wire::encode(&reply, b"", b"").unwrap();
            server.send_to(&reply, from).unwrap();
            return;
        }
    }

    fn submit_and_complete(
        pipeline: &mut Pipeline,
        server: &UdpSocket,
        request: Request<'_>,
        token: u64,
    ) {
        pipeline.submit(request, b"k", token).unwrap();
        answer_one(server);
        let mut completed = Vec::new();
        while completed.is_empty() {
            pipeline.poll(&mut completed).unwrap();
        }
        assert_eq!(completed[0].token, token);
    }

    #[test]
    fn a_write_held_up_bounds_the_writes_after_it_but_not_the_reads() {
        let (server, map) = server();
        let options = ClientOptions {
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let mut pipeline = Pipeline::new(map, options).unwrap();
        // One write that is never answered...
        pipeline.submit(Request::Put(b"v"), b"stuck", 0).unwrap();
        // ...does not stop reads, however many...
        for token in 1..=(3 * PIPELINE_DEPTH_MAX as u64) {
            assert!(pipeline.has_room_for_read());
            submit_and_complete(&mut pipeline, &server, Request::Get, token);
        }
        // ...but only so many writes may follow it, each finished at once:
        // one more and the replicas could have forgotten the first.
        for token in 1..PIPELINE_DEPTH_MAX as u64 {
            assert!(pipeline.has_room(), "write {token}");
            submit_and_complete(&mut pipeline, &server, Request::Put(b"v"), 100 + token);
        }
        assert_eq!(pipeline.in_flight(), 1, "only the stuck write is left");
        assert!(!pipeline.has_room());
        assert!(
            pipeline.submit(Request::Put(b"v"), b"w", 200).is_err(),
            "one write too many after the stuck one"
        );
        assert!(pipeline.has_room_for_read());
    }
}
