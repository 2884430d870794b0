//! The gateway's I/O model: an accept thread hands each connection to one
//! of a few I/O threads (`io-threads`), each serving all of its
//! connections from one poller (mio, edge-triggered). A connection's
//! commands are taken in rounds (`batch::Round`); the planned calls of
//! every connection of a thread share that thread's pipelines (each with
//! its own client id and up to `PIPELINE_DEPTH_MAX` requests in flight),
//! and replies are routed back by tag. A command that needs a blocking
//! client (key walks, expiry, bits, large values) is handed with the
//! connection's session to a small pool of blocking threads; its connection
//! waits, the others go on. Commands that touch no data (PING, AUTH,
//! SELECT, CLIENT, CONFIG, ...) run in place.
//!
//! Bounds per connection: input is read only while no round is under way
//! and fewer than `OUTPUT_FLUSH` reply bytes wait (the rest stays in the
//! kernel's socket buffer); a reader that takes no reply bytes for
//! `WRITE_STALL_MAX` is disconnected; an idle connection holds no buffers.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::os::fd::AsRawFd;
use tern_client::answer::Call;
use tern_client::{Client, ClientError, Completion, Pipeline, Request};

use crate::batch::{self, Round, Sent};
use crate::resp::{Frame, Parser};
use crate::transport::Transport;
use crate::{BATCH_COMMANDS_MAX, Context, SHUTDOWN_POLL, Session, Shared, clients, commands};

/// Bytes read from a connection at once (into the thread's one buffer).
const READ_CHUNK: usize = 16 * 1024;
/// Reply bytes a connection may have waiting before it is read no more.
const OUTPUT_FLUSH: usize = 64 * 1024;
/// A client that takes none of its replies for this long is disconnected.
const WRITE_STALL_MAX: Duration = Duration::from_secs(30);
/// Reads one connection gets per turn before the others have theirs.
const READS_PER_TURN: usize = 16;
/// Pipelines one I/O thread may open (each `PIPELINE_DEPTH_MAX` deep).
const PIPELINES_MAX: usize = 8;
/// How often a thread looks at idle, killed and stalled connections.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// With requests in flight, the longest wait for an event: pipelines
/// resend what went unanswered when they are polled.
const RESEND_CHECK: Duration = Duration::from_millis(10);
/// Stack of a blocking thread.
const BLOCKING_STACK: usize = 1024 * 1024;
/// Buffers kept by an idle connection at most (a large value's are freed).
const BUFFER_KEPT: usize = 64 * 1024;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(0);
/// Tokens of a thread's pipelines: 1..=PIPELINES_MAX; connections after.
const CONNECTION_BASE: usize = 1 + PIPELINES_MAX;

/// The commands that touch no data: run in place by the I/O thread.
const IN_PLACE: &[&str] = &[
    "PING", "ECHO", "QUIT", "SELECT", "AUTH", "HELLO", "CLIENT", "COMMAND", "CONFIG", "TIME",
    "MULTI", "DISCARD", "UNWATCH", "ACL",
];

/// A command for a blocking thread, with its connection's session.
struct Job {
    thread: Arc<Mailbox>,
    connection: usize,
    generation: u64,
    slot: usize,
    arguments: Vec<Vec<u8>>,
    spec: Option<usize>,
    session: Session,
}

/// Where a blocking thread sends an I/O thread its answers.
struct Mailbox {
    done: Sender<Done>,
    waker: Waker,
}

/// A blocking thread's answer, with the session back.
struct Done {
    connection: usize,
    generation: u64,
    slot: usize,
    reply: Frame,
    session: Session,
}

/// Accepts connections on `listener` and serves them until shutdown.
pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    let mut blocking = Vec::new();
    for _ in 0..shared.config.blocking_threads.max(1) {
        let (shared, queue) = (shared.clone(), queue.clone());
        blocking.push(
            std::thread::Builder::new()
                .name("gateway-blocking".into())
                .stack_size(BLOCKING_STACK)
                .spawn(move || run_blocking(&shared, &queue))?,
        );
    }
    let mut threads = Vec::new();
    for _ in 0..shared.config.io_threads.max(1) {
        let (incoming, streams) = mpsc::channel();
        let worker = Worker::new(shared.clone(), jobs.clone(), streams)?;
        let mailbox = worker.mailbox.clone();
        let handle = std::thread::Builder::new()
            .name("gateway-io".into())
            .spawn(move || worker.run())?;
        threads.push((incoming, mailbox, handle));
    }
    drop(jobs);
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut next = 0;
    while !shared.shutdown.load(Ordering::Relaxed) {
        if let Err(error) = poll.poll(&mut events, Some(SHUTDOWN_POLL))
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let max_clients = shared.max_clients.load(Ordering::Relaxed) as u64;
                    if shared.connected.load(Ordering::Relaxed) >= max_clients {
                        // Best effort, as Redis does: the client may not read it.
                        let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
                        shared
                            .stats
                            .rejected_connections
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    shared
                        .stats
                        .connections_received
                        .fetch_add(1, Ordering::Relaxed);
                    let (incoming, mailbox, _) = &threads[next % threads.len()];
                    next += 1;
                    if incoming.send(stream).is_err() {
                        shared.connected.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!("an I/O thread is gone; connection dropped");
                    } else {
                        let _ = mailbox.waker.wake();
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // A connection that vanished before accept, or no descriptors
                // left for a moment: keep serving the others.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
    for (incoming, mailbox, handle) in threads {
        drop(incoming);
        let _ = mailbox.waker.wake();
        let _ = handle.join();
    }
    for handle in blocking {
        let _ = handle.join();
    }
    Ok(())
}

/// A blocking thread: runs the commands handed to it with its own client,
/// until every I/O thread is gone.
fn run_blocking(shared: &Shared, queue: &Mutex<Receiver<Job>>) {
    let mut client: Option<Client> = None;
    loop {
        let job = match queue.lock().expect("job queue").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let Job {
            thread,
            connection,
            generation,
            slot,
            arguments,
            spec,
            mut session,
        } = job;
        if client.is_none() {
            match Client::new(shared.config.map.clone()) {
                Ok(made) => client = Some(made),
                Err(error) => tracing::warn!(%error, "no client for a blocking thread"),
            }
        }
        let reply = match client.as_mut() {
            Some(client) => Context {
                shared,
                client,
                session: &mut session,
            }
            .execute(&arguments, spec.map(|index| &commands::COMMANDS[index])),
            None => Frame::error("TRYAGAIN the gateway has no client socket for now"),
        };
        let done = Done {
            connection,
            generation,
            slot,
            reply,
            session,
        };
        if thread.done.send(done).is_ok() {
            let _ = thread.waker.wake();
        }
    }
}

/// Where a call's reply goes.
struct Route {
    connection: usize,
    generation: u64,
    pipeline: usize,
    command: usize,
    call: usize,
}

/// An I/O thread's pipelines, opened as they are needed, and the routes of
/// the calls in flight on them.
struct Pipes {
    map: tern_client::ClusterMap,
    registry: Registry,
    pipelines: Vec<Option<Pipeline>>,
    routes: HashMap<u64, Route>,
    next_tag: u64,
}

impl Pipes {
    /// Sends `call` on a pipeline with room for it, opening one if all are
    /// full and fewer than `PIPELINES_MAX` are open.
    fn send(&mut self, key: &[u8], call: Call<'_>, route: Route) -> Sent {
        let found = self.pipelines.iter().position(|pipeline| {
            pipeline
                .as_ref()
                .is_some_and(|pipeline| pipeline.has_room_for(call.op))
        });
        let index = match found {
            Some(index) => index,
            None => match self.open() {
                Ok(Some(index)) => index,
                Ok(None) => return Sent::NoRoom,
                Err(error) => return Sent::Failed(ClientError::Io(error)),
            },
        };
        let pipeline = self.pipelines[index].as_mut().expect("open");
        let tag = self.next_tag;
        match pipeline.submit(Request::Call(call), key, tag) {
            Ok(()) => {
                self.next_tag += 1;
                self.routes.insert(
                    tag,
                    Route {
                        pipeline: index,
                        ..route
                    },
                );
                Sent::InFlight(tag)
            }
            Err(error) => Sent::Failed(error),
        }
    }

    /// Opens a pipeline in a free place; None when all are taken.
    fn open(&mut self) -> io::Result<Option<usize>> {
        let index = match self.pipelines.iter().position(Option::is_none) {
            Some(index) => index,
            None if self.pipelines.len() < PIPELINES_MAX => {
                self.pipelines.push(None);
                self.pipelines.len() - 1
            }
            None => return Ok(None),
        };
        let pipeline = Pipeline::new(self.map.clone(), Default::default())?;
        self.registry.register(
            &mut SourceFd(&pipeline.as_raw_fd()),
            Token(1 + index),
            Interest::READABLE,
        )?;
        self.pipelines[index] = Some(pipeline);
        Ok(Some(index))
    }

    fn in_flight(&self) -> usize {
        self.pipelines
            .iter()
            .flatten()
            .map(Pipeline::in_flight)
            .sum()
    }

    /// Takes every reply that came and resends what timed out; hands each
    /// finished call with its route to `deliver`. A pipeline whose socket
    /// failed fails every call in flight on it and is closed.
    fn poll(
        &mut self,
        deliver: &mut impl FnMut(Route, u64, Result<tern_client::Reply, ClientError>),
    ) {
        let mut completed: Vec<Completion> = Vec::new();
        for index in 0..self.pipelines.len() {
            let Some(pipeline) = self.pipelines[index].as_mut() else {
                continue;
            };
            if pipeline.in_flight() == 0 {
                continue;
            }
            if let Err(error) = pipeline.poll_ready(&mut completed) {
                let text = error.to_string();
                tracing::warn!(%text, "a gateway pipeline failed");
                let _ = self
                    .registry
                    .deregister(&mut SourceFd(&pipeline.as_raw_fd()));
                self.pipelines[index] = None;
                let failed: Vec<u64> = self
                    .routes
                    .iter()
                    .filter(|(_, route)| route.pipeline == index)
                    .map(|(tag, _)| *tag)
                    .collect();
                for tag in failed {
                    let route = self.routes.remove(&tag).expect("listed above");
                    let error = ClientError::Io(io::Error::other(text.clone()));
                    deliver(route, tag, Err(error));
                }
            }
            for completion in completed.drain(..) {
                if let Some(route) = self.routes.remove(&completion.token) {
                    deliver(route, completion.token, completion.result);
                }
            }
        }
    }
}

/// One client connection of an I/O thread.
struct Connection {
    stream: Transport,
    /// Tells a reused place's connections apart (late replies go nowhere).
    generation: u64,
    entry: Arc<clients::ClientEntry>,
    /// None while a blocking thread runs one of its commands.
    session: Option<Session>,
    parser: Parser,
    /// Input not taken by the parser yet (at most one incomplete argument
    /// or inline line, within `resp::QUERY_BUFFER_MAX`).
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of `output` already written.
    written: usize,
    round: Option<Round>,
    /// A protocol error, answered (and the connection closed) after the
    /// commands before it.
    refused: Option<String>,
    /// The socket may have more to read (edge-triggered: until a read
    /// would block).
    readable: bool,
    /// The client closed its side: served what it sent, then closed.
    eof: bool,
    closing: bool,
    last_heard: Instant,
    /// Since when replies wait for a client that does not read them.
    stalled_since: Option<Instant>,
    queued: bool,
}

impl Connection {
    fn pending_output(&self) -> usize {
        self.output.len() - self.written + usize::from(self.stream.has_pending())
    }

    /// Writes what it can of the replies; Err when the connection failed.
    fn flush(&mut self, shared: &Shared) -> io::Result<()> {
        // TLS records an earlier write left (the socket was full).
        self.stream.push_pending()?;
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(wrote) => {
                    self.written += wrote;
                    self.stalled_since = None;
                    shared
                        .stats
                        .net_output_bytes
                        .fetch_add(wrote as u64, Ordering::Relaxed);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        // TLS records the socket did not take yet: a client that does not
        // read them is stalled as one that does not read plain replies.
        if self.stream.has_pending() {
            self.stalled_since.get_or_insert_with(Instant::now);
        } else {
            self.stalled_since = None;
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > BUFFER_KEPT {
            self.output = Vec::new();
        }
        Ok(())
    }

    /// The next round of complete commands in the input, if there is one:
    /// planned commands together, ended by any other command (which may
    /// change how the next ones are read: AUTH, SELECT, QUIT).
    fn next_round(&mut self) -> Option<Round> {
        let session = self.session.as_ref().expect("not lent");
        let mut used = 0;
        let mut round: Vec<Vec<Vec<u8>>> = Vec::new();
        loop {
            match self
                .parser
                .next(&self.input[used..], session.authenticated())
            {
                Ok((taken, command)) => {
                    used += taken;
                    let Some(arguments) = command else { break };
                    if arguments.is_empty() {
                        continue;
                    }
                    // A command that runs alone (a large value, a multi-key
                    // transaction) ends the round: it runs after the
                    // commands before it, and those after it wait for it.
                    // Inside MULTI every command is queued by `execute`.
                    let planned = session.authenticated()
                        && session.queue.is_none()
                        && may_run_all(session)
                        && batch::is_pipelined(&arguments);
                    round.push(arguments);
                    if !planned || round.len() == BATCH_COMMANDS_MAX {
                        break;
                    }
                }
                Err(error) => {
                    self.refused = Some(format!("ERR {error}"));
                    break;
                }
            }
        }
        self.input.drain(..used);
        if self.input.is_empty() && self.input.capacity() > BUFFER_KEPT {
            self.input = Vec::new();
        }
        // A user with limited rights has each command checked by `execute`.
        let planning = session.authenticated() && session.queue.is_none() && may_run_all(session);
        (!round.is_empty()).then(|| Round::new(round, session.db, planning))
    }

    /// Writes a finished round's replies, each counted.
    fn answer(&mut self, round: Round, shared: &Shared) {
        let session = self.session.as_ref().expect("not lent");
        for (spec, reply, took) in round.into_answers() {
            shared.stats.record(spec, took, &reply);
            let name = spec.map_or("unknown", |index| commands::COMMANDS[index].name);
            self.entry.ran(name, session.db, session.protocol);
            reply.encode(session.protocol, &mut self.output);
        }
        if session.closing {
            self.closing = true;
        }
    }
}

/// Whether the session's user may run every command.
fn may_run_all(session: &Session) -> bool {
    session
        .user
        .as_ref()
        .is_some_and(crate::acl::User::may_run_all)
}

/// Whether a command runs in place on the I/O thread: it touches no data,
/// or it is refused before it would (not authenticated, not served).
fn runs_in_place(arguments: &[Vec<u8>], spec: Option<usize>, session: &Session) -> bool {
    let name = String::from_utf8_lossy(&arguments[0]);
    !session.authenticated()
        || spec.is_none()
        // Queued by MULTI, touching no data until EXEC.
        || (session.queue.is_some() && !name.eq_ignore_ascii_case("EXEC"))
        || IN_PLACE
            .iter()
            .any(|place| place.eq_ignore_ascii_case(&name))
}

/// One I/O thread.
struct Worker {
    shared: Arc<Shared>,
    poll: Poll,
    mailbox: Arc<Mailbox>,
    done: Receiver<Done>,
    streams: Receiver<TcpStream>,
    jobs: Sender<Job>,
    connections: Vec<Option<Connection>>,
    generations: Vec<u64>,
    free: Vec<usize>,
    pipes: Pipes,
    /// For the commands run in place (which use none of it).
    client: Client,
    ready: VecDeque<usize>,
    /// Connections whose rounds wait for room in the pipelines.
    waiting_room: Vec<usize>,
    scratch: Box<[u8]>,
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        jobs: Sender<Job>,
        streams: Receiver<TcpStream>,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (done_sender, done) = mpsc::channel();
        let pipes = Pipes {
            map: shared.config.map.clone(),
            registry: poll.registry().try_clone()?,
            pipelines: Vec::new(),
            routes: HashMap::new(),
            next_tag: 0,
        };
        let client = Client::new(shared.config.map.clone())?;
        Ok(Worker {
            shared,
            poll,
            mailbox: Arc::new(Mailbox {
                done: done_sender,
                waker,
            }),
            done,
            streams,
            jobs,
            connections: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            pipes,
            client,
            ready: VecDeque::new(),
            waiting_room: Vec::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_housekeeping = Instant::now();
        let mut accepting = true;
        loop {
            let timeout = if !self.ready.is_empty() {
                Duration::ZERO
            } else if self.pipes.in_flight() > 0 {
                RESEND_CHECK
            } else {
                HOUSEKEEPING
            };
            if let Err(error) = self.poll.poll(&mut events, Some(timeout))
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "gateway poller failed");
                return;
            }
            for event in events.iter() {
                let Some(index) = event.token().0.checked_sub(CONNECTION_BASE) else {
                    // The waker, or a pipeline: looked at below.
                    continue;
                };
                if let Some(connection) = self.connections.get_mut(index).and_then(Option::as_mut) {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        connection.readable = true;
                    }
                    Self::queue(&mut self.ready, connection, index);
                }
            }
            accepting &= self.admit();
            self.take_done();
            self.poll_pipes();
            for _ in 0..self.ready.len() {
                let Some(index) = self.ready.pop_front() else {
                    break;
                };
                if let Some(connection) = self.connections[index].as_mut() {
                    connection.queued = false;
                    self.advance(index);
                }
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                self.housekeeping();
                if !accepting && self.connections.iter().all(Option::is_none) {
                    return;
                }
            }
        }
    }

    fn queue(ready: &mut VecDeque<usize>, connection: &mut Connection, index: usize) {
        if !connection.queued {
            connection.queued = true;
            ready.push_back(index);
        }
    }

    /// Takes the connections the accept thread handed over; false once it
    /// is gone (shutdown).
    fn admit(&mut self) -> bool {
        loop {
            let stream = match self.streams.try_recv() {
                Ok(stream) => stream,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            let _ = stream.set_nodelay(true);
            let mut stream = match Transport::new(stream, self.shared.config.tls.as_ref()) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "a connection could not start TLS");
                    self.shared.connected.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            let index = self.free.pop().unwrap_or_else(|| {
                self.connections.push(None);
                self.generations.push(0);
                self.connections.len() - 1
            });
            if let Err(error) = self.poll.registry().register(
                stream.socket(),
                Token(CONNECTION_BASE + index),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%error, "a connection could not be watched");
                self.free.push(index);
                self.shared.connected.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            self.generations[index] += 1;
            let socket = stream.socket();
            let session = Session::new(
                &self.shared,
                socket.peer_addr().ok(),
                socket.local_addr().ok(),
            );
            let mut connection = Connection {
                stream,
                generation: self.generations[index],
                entry: session.entry.clone(),
                session: Some(session),
                parser: Parser::new(),
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                round: None,
                refused: None,
                readable: true,
                eof: false,
                closing: false,
                last_heard: Instant::now(),
                stalled_since: None,
                queued: false,
            };
            Self::queue(&mut self.ready, &mut connection, index);
            self.connections[index] = Some(connection);
        }
    }

    /// The answers of the blocking threads, with their sessions back.
    fn take_done(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            let Some(connection) = self.connections[done.connection]
                .as_mut()
                .filter(|connection| connection.generation == done.generation)
            else {
                continue;
            };
            connection.session = Some(done.session);
            if let Some(round) = connection.round.as_mut() {
                round.answer(done.slot, done.reply);
            }
            Self::queue(&mut self.ready, connection, done.connection);
        }
    }

    /// Replies from the pipelines, each to its connection's round.
    fn poll_pipes(&mut self) {
        let Worker {
            pipes,
            connections,
            ready,
            waiting_room,
            ..
        } = self;
        let mut any = false;
        pipes.poll(&mut |route, tag, result| {
            any = true;
            let Some(connection) = connections[route.connection]
                .as_mut()
                .filter(|connection| connection.generation == route.generation)
            else {
                return;
            };
            if let Some(round) = connection.round.as_mut() {
                round.deliver(route.command, route.call, tag, result);
                Self::queue(ready, connection, route.connection);
            }
        });
        if any {
            for index in waiting_room.drain(..) {
                if let Some(connection) = connections[index].as_mut() {
                    Self::queue(ready, connection, index);
                }
            }
        }
    }

    /// Serves connection `index` as far as it can go now: writes its
    /// replies, moves its round on, starts the next one, reads more input.
    fn advance(&mut self, index: usize) {
        let mut reads = READS_PER_TURN;
        loop {
            let Worker {
                shared,
                connections,
                pipes,
                client,
                jobs,
                mailbox,
                ready,
                waiting_room,
                scratch,
                ..
            } = self;
            let Some(connection) = connections[index].as_mut() else {
                return;
            };
            if connection.flush(shared).is_err() {
                self.close(index);
                return;
            }
            if let Some(round) = connection.round.as_mut() {
                let Some(session) = connection.session.as_mut() else {
                    // A blocking thread has it.
                    return;
                };
                let generation = connection.generation;
                let waits = round.pump(&mut |key, call, command, call_index| {
                    let route = Route {
                        connection: index,
                        generation,
                        pipeline: 0,
                        command,
                        call: call_index,
                    };
                    pipes.send(key, call, route)
                });
                if waits {
                    waiting_room.push(index);
                }
                if !round.planned_done() {
                    return;
                }
                if let Some(batch::Alone {
                    slot,
                    spec,
                    arguments,
                }) = round.next_alone()
                {
                    if runs_in_place(arguments, spec, session) {
                        let answer = Context {
                            shared: shared.as_ref(),
                            client,
                            session,
                        }
                        .execute(arguments, spec.map(|index| &commands::COMMANDS[index]));
                        round.answer(slot, answer);
                        continue;
                    }
                    let job = Job {
                        thread: mailbox.clone(),
                        connection: index,
                        generation,
                        slot,
                        arguments: std::mem::take(arguments),
                        spec,
                        session: connection.session.take().expect("present above"),
                    };
                    if let Err(mpsc::SendError(job)) = jobs.send(job) {
                        connection.session = Some(job.session);
                        round.answer(slot, Frame::error("ERR the gateway is shutting down"));
                        continue;
                    }
                    return;
                }
                if !round.answered() {
                    return;
                }
                let round = connection.round.take().expect("present above");
                connection.answer(round, shared);
                continue;
            }
            if connection.closing || connection.entry.is_killed() {
                if connection.pending_output() == 0 {
                    self.close(index);
                }
                return;
            }
            if let Some(refused) = connection.refused.take() {
                let protocol = connection.session.as_ref().map_or(2, |s| s.protocol);
                Frame::error(refused).encode(protocol, &mut connection.output);
                connection.closing = true;
                continue;
            }
            if connection.pending_output() >= OUTPUT_FLUSH {
                return;
            }
            if shared.shutdown.load(Ordering::Relaxed) {
                connection.closing = true;
                continue;
            }
            if let Some(round) = connection.next_round() {
                connection.round = Some(round);
                continue;
            }
            if connection.refused.is_some() {
                continue;
            }
            if connection.eof {
                connection.closing = true;
                continue;
            }
            if !connection.readable {
                return;
            }
            if reads == 0 {
                Self::queue(ready, connection, index);
                return;
            }
            reads -= 1;
            match connection.stream.read(scratch) {
                Ok(0) => {
                    connection.eof = true;
                    connection.readable = false;
                }
                Ok(read) => {
                    connection.last_heard = Instant::now();
                    shared
                        .stats
                        .net_input_bytes
                        .fetch_add(read as u64, Ordering::Relaxed);
                    connection.input.extend_from_slice(&scratch[..read]);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    connection.readable = false;
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "connection ended");
                    self.close(index);
                    return;
                }
            }
        }
    }

    /// Closes connections killed, idle past `timeout`, stalled on a client
    /// that does not read, or kept at shutdown.
    fn housekeeping(&mut self) {
        let timeout = self.shared.idle_timeout_s.load(Ordering::Relaxed);
        let shutdown = self.shared.shutdown.load(Ordering::Relaxed);
        for index in 0..self.connections.len() {
            let Some(connection) = self.connections[index].as_mut() else {
                continue;
            };
            let quiet = connection.round.is_none() && connection.session.is_some();
            let idle = timeout > 0 && quiet && connection.last_heard.elapsed().as_secs() >= timeout;
            let stalled = connection
                .stalled_since
                .is_some_and(|since| since.elapsed() >= WRITE_STALL_MAX);
            if connection.entry.is_killed() || idle || stalled || (shutdown && quiet) {
                let _ = connection.flush(&self.shared);
                self.close(index);
            }
        }
    }

    fn close(&mut self, index: usize) {
        let Some(mut connection) = self.connections[index].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(connection.stream.socket());
        self.shared.clients.leave(connection.entry.id);
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        self.free.push(index);
    }
}
