//! The Redis-protocol gateway (`tern gateway`): RESP2, and RESP3 after
//! `HELLO 3`, so that Redis clients and tools work with Tern unchanged.
//!
//! Event-driven (`worker`): a few I/O threads each serve many connections
//! from one poller, and send the planned commands of all of them (GET,
//! SET, INCR, ...) through a few shared pipelines, many in flight at once;
//! the commands that need a blocking client (key walks, expiry, bits, large
//! values) run on a small pool of threads. Commands of a pipelined batch
//! run in order and their replies leave together. Every command maps onto
//! Tern operations that are linearizable per key; the read-modify-write
//! commands (INCR and its kin, APPEND, SET NX/XX/GET, GETSET, SETNX) are
//! single Tern writes decided at the chain head, never read-then-write in
//! the gateway. MSET and multi-key MGET/DEL/EXISTS are transactions
//! (`transaction::atomically`): atomic across keys and shards, up to a
//! transaction's limits (larger ones run key by key).

pub mod acl;
mod batch;
pub mod clients;
pub mod commands;
mod expire;
pub mod keyspace;
pub mod resp;
pub mod stats;
mod strings;
mod transaction;
pub mod transport;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use resp::Frame;
use tern_client::expiry::unix_now_ms;
use tern_client::{Client, ClientError, ClusterMap};

/// How often blocked calls look at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// Connections served at once unless configured otherwise (Redis:
/// `maxclients` 10000).
pub const MAX_CLIENTS_DEFAULT: usize = 10_000;
/// Threads running the commands that need a blocking client, unless
/// configured otherwise: as many such commands run at once, the others
/// wait (their connections only).
pub const BLOCKING_THREADS_DEFAULT: usize = 8;
/// Connections waiting to be accepted at most (Redis's `tcp-backlog`; the
/// kernel caps it at `net.core.somaxconn`).
const TCP_BACKLOG: libc::c_int = 511;
/// The most I/O threads a gateway starts by default.
pub const IO_THREADS_MOST: usize = 4;

/// What a gateway serves.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub map: ClusterMap,
    /// `requirepass`: commands before AUTH are refused with NOAUTH.
    pub password: Option<String>,
    /// Users with their rights (`--users FILE`, `acl`); None: the default
    /// user alone, with `password`.
    pub users: Option<acl::Users>,
    /// `maxclients`: a connection beyond it is answered `ERR max number of
    /// clients reached` and closed.
    pub max_clients: usize,
    /// `timeout`: a connection idle this long is closed (None: never).
    pub idle_timeout: Option<Duration>,
    /// `io-threads`: threads serving connections, each with its own poller
    /// and pipelines.
    pub io_threads: usize,
    /// Threads for the commands that need a blocking client.
    pub blocking_threads: usize,
    /// Where to serve Prometheus metrics (None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
    /// TLS for every connection (`transport::server_config`; None: plain).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl GatewayConfig {
    /// Redis's defaults (no password, 10 000 clients, no idle timeout), an
    /// I/O thread per core (at most `IO_THREADS_MOST`; two measured a
    /// little faster than one on two cores, docs/BENCHMARKS.md) and
    /// `BLOCKING_THREADS_DEFAULT` blocking threads.
    pub fn new(map: ClusterMap) -> GatewayConfig {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        GatewayConfig {
            map,
            password: None,
            users: None,
            max_clients: MAX_CLIENTS_DEFAULT,
            idle_timeout: None,
            io_threads: cores.min(IO_THREADS_MOST),
            blocking_threads: BLOCKING_THREADS_DEFAULT,
            metrics_listen: None,
            tls: None,
        }
    }
}

/// State shared by all connections.
#[derive(Debug)]
struct Shared {
    config: GatewayConfig,
    /// Who may connect, and what each may run.
    users: acl::Users,
    connected: AtomicU64,
    /// `INFO`'s counters.
    stats: stats::Stats,
    /// The connections, for `CLIENT LIST` and `KILL`.
    clients: clients::Registry,
    /// `maxclients` and `timeout` (seconds, 0: never) as `CONFIG SET` last
    /// set them.
    max_clients: AtomicUsize,
    idle_timeout_s: AtomicU64,
    next_client_id: AtomicU64,
    shutdown: Arc<AtomicBool>,
}

/// Binds `listen`; if it is taken, binds the same address on a free port.
/// Returns the listener and the address it has.
pub fn bind(listen: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = match TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
            TcpListener::bind(SocketAddr::new(listen.ip(), 0))?
        }
        Err(error) => return Err(error),
    };
    // Redis's `tcp-backlog`: std listens with 128, which a burst of
    // connections overflows (each overflow costs its client a second).
    // SAFETY: listen(2) on a socket this function owns.
    if unsafe { libc::listen(listener.as_raw_fd(), TCP_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// Serves connections on `listener` until `shutdown` is set, then waits for
/// the connections to finish their current batch.
pub fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
    let max_clients = AtomicUsize::new(config.max_clients);
    let idle_timeout_s = AtomicU64::new(config.idle_timeout.map_or(0, |t| t.as_secs().max(1)));
    let users = match &config.users {
        Some(users) => users.clone(),
        None => acl::Users::only_default(config.password.as_deref()),
    };
    let shared = Arc::new(Shared {
        users,
        config,
        connected: AtomicU64::new(0),
        stats: stats::Stats::default(),
        clients: clients::Registry::default(),
        max_clients,
        idle_timeout_s,
        next_client_id: AtomicU64::new(1),
        shutdown,
    });
    if let Some(listen) = shared.config.metrics_listen {
        let source = shared.clone();
        let address = tern_metrics::serve(listen, "gateway", move || {
            let connected = source.connected.load(Ordering::Relaxed);
            Some(source.stats.samples(connected))
        })?;
        tracing::info!(%address, "gateway metrics served");
    }
    worker::serve(listener, shared)
}

/// What a connection's commands may change about it (AUTH, SELECT,
/// HELLO, QUIT): kept by its worker, lent to a blocking thread with a
/// command that runs there.
#[derive(Debug)]
pub(crate) struct Session {
    id: u64,
    /// Its entry in the registry (its name, what it last ran).
    entry: Arc<clients::ClientEntry>,
    protocol: u8,
    /// The user it authenticated as, or is without AUTH (an open
    /// default); None: not authenticated.
    user: Option<acl::User>,
    /// QUIT, a protocol error or CLIENT KILL of itself: closes once its
    /// replies are written.
    closing: bool,
    /// The database `SELECT` chose (`keyspace`).
    db: u32,
    /// The commands queued since MULTI (None: not in a transaction).
    queue: Option<transaction::Queue>,
    /// The keys WATCH watches, with their versions then.
    watched: transaction::Watched,
}

impl Session {
    /// Whether it passed AUTH (or needs none).
    pub(crate) fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    fn new(shared: &Shared, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Session {
        let open = shared
            .users
            .default_user()
            .filter(|user| user.is_open())
            .cloned();
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(clients::ClientEntry::new(id, peer, local));
        shared.clients.join(entry.clone());
        Session {
            id,
            entry,
            protocol: 2,
            user: open,
            closing: false,
            db: 0,
            queue: None,
            watched: Vec::new(),
        }
    }
}

/// One command being run: the connection's session and a blocking client
/// to run it with.
struct Context<'a> {
    shared: &'a Shared,
    client: &'a mut Client,
    session: &'a mut Session,
}

/// Commands of one connection run together at most (more wait for the
/// next round, after their replies are written).
const BATCH_COMMANDS_MAX: usize = 64;

fn arity_error(name: &str) -> Frame {
    Frame::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_lowercase()
    ))
}

fn integer_error() -> Frame {
    Frame::error("ERR value is not an integer or out of range")
}

/// A Tern error as a Redis error reply.
fn tern_error(error: ClientError) -> Frame {
    match error {
        ClientError::NotInteger => integer_error(),
        ClientError::NotFloat => Frame::error("ERR value is not a valid float"),
        ClientError::NotFinite => Frame::error("ERR increment would produce NaN or Infinity"),
        ClientError::ResultTooLarge => Frame::error(
            "ERR string exceeds maximum allowed size (the longest value the Tern replicas take)",
        ),
        ClientError::KeyTooLarge { .. } | ClientError::ValueTooLarge { .. } => {
            Frame::error(format!("ERR {error}"))
        }
        ClientError::Timeout { .. } => {
            Frame::error(format!("TRYAGAIN the Tern cluster did not answer: {error}"))
        }
        other => Frame::error(format!("ERR {other}")),
    }
}

fn parse_i64(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Deletes every key of `stored` (as Tern stores them), many in flight.
fn delete_all(map: &ClusterMap, stored: &[Vec<u8>]) -> Result<(), ClientError> {
    let mut pipeline = tern_client::Pipeline::new(map.clone(), Default::default())?;
    pipeline.for_each_key(stored, tern_client::Request::Delete, |_, _| Ok(()))
}

/// `args` with the keys of command `spec` moved into database `db`.
fn keys_in_db(spec: Option<&commands::Spec>, args: &[Vec<u8>], db: u32) -> Vec<Vec<u8>> {
    args.iter()
        .enumerate()
        .map(|(index, arg)| {
            if spec.is_some_and(|spec| spec.is_key(index, args.len())) {
                keyspace::key_in(db, arg)
            } else {
                arg.clone()
            }
        })
        .collect()
}

/// A walk of the keys that failed (a tail that does not answer).
fn walk_error(error: io::Error) -> Frame {
    Frame::error(format!("TRYAGAIN the keys could not be listed: {error}"))
}

/// `GETRANGE`'s slice of `value`, `start` and `end` inclusive, negative
/// ones counted from the end, as Redis computes it.
fn string_range(value: &[u8], start: i64, end: i64) -> &[u8] {
    let length = value.len() as i64;
    if start < 0 && end < 0 && start > end {
        return &[];
    }
    let start = if start < 0 { length + start } else { start }.max(0);
    let end = if end < 0 { length + end } else { end }
        .max(0)
        .min(length - 1);
    if length == 0 || start > end {
        return &[];
    }
    &value[start as usize..=end as usize]
}

/// Redis's answer to a command it does not know.
fn unknown_command(arguments: &[Vec<u8>]) -> Frame {
    let beginning: Vec<String> = arguments[1..]
        .iter()
        .take(3)
        // Redis quotes at most 128 bytes of each.
        .map(|arg| format!("'{}'", String::from_utf8_lossy(&arg[..arg.len().min(128)])))
        .collect();
    Frame::error(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(&arguments[0]),
        beginning.join(" ")
    ))
}

/// The lower-case name of a served command.
fn spec_name(spec: Option<&commands::Spec>) -> &'static str {
    spec.map_or("", |spec| spec.name)
}

fn upper(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_uppercase()
}

impl Context<'_> {
    /// Runs one command; `spec` is its entry in `commands::COMMANDS` (None:
    /// not one the gateway serves).
    fn execute(&mut self, arguments: &[Vec<u8>], spec: Option<&commands::Spec>) -> Frame {
        let name = upper(&arguments[0]);
        let args = &arguments[1..];
        if !self.session.authenticated() && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
            return Frame::error("NOAUTH Authentication required.");
        }
        if let (Some(user), Some(spec)) = (&self.session.user, spec)
            && !user.may_run(spec)
        {
            return Frame::error(format!(
                "NOPERM this user has no permissions to run the '{}' command",
                spec.name
            ));
        }
        // Keys of the selected database, as Tern stores them.
        let in_db;
        let args = if self.session.db == 0 {
            args
        } else {
            in_db = keys_in_db(spec, args, self.session.db);
            &in_db[..]
        };
        if let Some(queue) = self.session.queue.as_mut()
            && !matches!(
                name.as_str(),
                "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "QUIT"
            )
        {
            return match spec {
                Some(_) => transaction::queue(queue, &name, args),
                None => queue.refuse(unknown_command(arguments)),
            };
        }
        match name.as_str() {
            "MULTI" => match (args, &self.session.queue) {
                ([], None) => {
                    self.session.queue = Some(transaction::Queue::default());
                    Frame::ok()
                }
                ([], Some(_)) => Frame::error("ERR MULTI calls can not be nested"),
                _ => arity_error(&name),
            },
            "EXEC" => match (args, self.session.queue.take()) {
                ([], Some(queue)) => {
                    let reply = transaction::exec(self.client, queue, &self.session.watched);
                    self.session.watched.clear();
                    reply
                }
                ([], None) => Frame::error("ERR EXEC without MULTI"),
                (_, queue) => {
                    self.session.queue = queue;
                    arity_error(&name)
                }
            },
            "DISCARD" => match (args, self.session.queue.take()) {
                ([], Some(_)) => {
                    self.session.watched.clear();
                    Frame::ok()
                }
                ([], None) => Frame::error("ERR DISCARD without MULTI"),
                (_, queue) => {
                    self.session.queue = queue;
                    arity_error(&name)
                }
            },
            "WATCH" if self.session.queue.is_some() => {
                Frame::error("ERR WATCH inside MULTI is not allowed")
            }
            "WATCH" => transaction::watch(self.client, &mut self.session.watched, args),
            "UNWATCH" => match args {
                [] => {
                    self.session.watched.clear();
                    Frame::ok()
                }
                _ => arity_error(&name),
            },
            "MSETNX" => transaction::mset_nx(self.client, args),
            "PING" => match args {
                [] => Frame::Simple("PONG".into()),
                [message] => Frame::bulk(message.clone()),
                _ => arity_error(&name),
            },
            "ECHO" => match args {
                [message] => Frame::bulk(message.clone()),
                _ => arity_error(&name),
            },
            "QUIT" => {
                self.session.closing = true;
                Frame::ok()
            }
            "SELECT" => match args {
                [index] => match parse_i64(index) {
                    Some(db) if (0..i64::from(keyspace::DATABASES)).contains(&db) => {
                        self.session.db = db as u32;
                        Frame::ok()
                    }
                    Some(_) => Frame::error("ERR DB index is out of range"),
                    None => integer_error(),
                },
                _ => arity_error(&name),
            },
            "FLUSHDB" | "FLUSHALL" => match args {
                [] => self.flush(name == "FLUSHALL"),
                [mode] if matches!(upper(mode).as_str(), "SYNC" | "ASYNC") => {
                    self.flush(name == "FLUSHALL")
                }
                [_] => Frame::error("ERR syntax error"),
                _ => arity_error(&name),
            },
            "KEYS" => match args {
                [pattern] => match self
                    .walk_map()
                    .and_then(|map| keyspace::all_keys(&map, self.session.db))
                {
                    Ok(keys) => Frame::Array(
                        keys.into_iter()
                            .filter(|key| keyspace::glob_match(pattern, key))
                            .map(Frame::bulk)
                            .collect(),
                    ),
                    Err(error) => walk_error(error),
                },
                _ => arity_error(&name),
            },
            "SCAN" => self.scan(args),
            "RANDOMKEY" => match args {
                [] => self.random_key(),
                _ => arity_error(&name),
            },
            "AUTH" => match args {
                [password] => self.authenticate(b"default", password),
                [user, password] => self.authenticate(user, password),
                _ => arity_error(&name),
            },
            "ACL" => self.acl(args),
            "HELLO" => self.hello(args),
            "CLIENT" => self.client_command(args),
            "COMMAND" => self.command_command(args),
            "INFO" => Frame::bulk(self.info(args)),
            "CONFIG" => self.config_command(args),
            "DBSIZE" => match self
                .walk_map()
                .and_then(|map| keyspace::counts(&map, unix_now_ms()))
            {
                Ok(counts) => Frame::Integer(counts[self.session.db as usize].keys as i64),
                Err(error) => walk_error(error),
            },
            "SETEX" | "PSETEX" => expire::set_ex(self.client, spec_name(spec), args),
            "GETEX" => expire::get_ex(self.client, args),
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                expire::expire(self.client, spec_name(spec), args)
            }
            "PERSIST" => expire::persist(self.client, args),
            "SETRANGE" => strings::set_range(self.client, args),
            "INCRBYFLOAT" => strings::incr_by_float(self.client, args),
            "SETBIT" => strings::set_bit(self.client, args),
            "GETBIT" => strings::get_bit(self.client, args),
            "BITCOUNT" => strings::bit_count(self.client, args),
            "BITPOS" => strings::bit_pos(self.client, args),
            "LCS" => strings::lcs(self.client, args),
            "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
                expire::ttl(self.client, spec_name(spec), args)
            }
            "GETDEL" => match args {
                [key] => match self.client.get_del(key) {
                    Ok(old) => old.map_or(Frame::Nil, Frame::bulk),
                    Err(error) => tern_error(error),
                },
                _ => arity_error(&name),
            },
            "GETRANGE" | "SUBSTR" => match args {
                [key, start, end] => match (parse_i64(start), parse_i64(end)) {
                    (Some(start), Some(end)) => match self.client.get(key) {
                        Ok(found) => {
                            let value = found.map(|found| found.value).unwrap_or_default();
                            Frame::bulk(string_range(&value, start, end).to_vec())
                        }
                        Err(error) => tern_error(error),
                    },
                    _ => integer_error(),
                },
                _ => arity_error(&name),
            },
            "TYPE" => match args {
                [key] => match self.client.get(key) {
                    Ok(found) => {
                        Frame::Simple(if found.is_some() { "string" } else { "none" }.into())
                    }
                    Err(error) => tern_error(error),
                },
                _ => arity_error(&name),
            },
            "TIME" => match args {
                [] => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    Frame::Array(vec![
                        Frame::bulk(now.as_secs().to_string()),
                        Frame::bulk(now.subsec_micros().to_string()),
                    ])
                }
                _ => arity_error(&name),
            },
            "APPEND" => match args {
                [key, value] => match self.client.append(key, value) {
                    Ok(length) => Frame::Integer(length as i64),
                    Err(error) => tern_error(error),
                },
                _ => arity_error(&name),
            },
            _ if batch::is_planned(&name) => {
                let mut delta = None;
                match batch::plan_calls(&name, args, &mut delta) {
                    Some(Ok(plan)) => batch::run_alone(self.client, plan),
                    Some(Err(refusal)) => refusal,
                    None => {
                        transaction::atomically(self.client, &name, args).unwrap_or_else(|| {
                            // Too large for one transaction: key by key.
                            let mut delta = None;
                            match batch::plan_keywise(&name, args, &mut delta) {
                                Some(Ok(plan)) => batch::run_alone(self.client, plan),
                                Some(Err(refusal)) => refusal,
                                None => unknown_command(arguments),
                            }
                        })
                    }
                }
            }
            _ => unknown_command(arguments),
        }
    }

    /// The map to walk the keys by: meta's newest when there is a meta (a
    /// migration may have moved slots since the client's), else the given.
    fn walk_map(&mut self) -> io::Result<ClusterMap> {
        let map = self.client.map();
        if map.meta.is_empty() {
            return Ok(map.clone());
        }
        let nodes = map.meta.clone();
        tern_client::meta::fetch_map(&nodes, &mut None)
    }

    /// FLUSHDB (this database) or FLUSHALL (every one): deletes each key,
    /// many in flight. Not atomic: a key written while the flush runs may
    /// stay (Redis's is atomic; Tern has no multi-key transactions yet).
    fn flush(&mut self, all: bool) -> Frame {
        let map = match self.walk_map() {
            Ok(map) => map,
            Err(error) => return walk_error(error),
        };
        let stored: Vec<Vec<u8>> = match keyspace::all_stored(&map) {
            Ok(stored) => stored
                .into_iter()
                .filter(|name| all || keyspace::split(name).0 == self.session.db)
                .collect(),
            Err(error) => return walk_error(error),
        };
        match delete_all(&map, &stored) {
            Ok(()) => Frame::ok(),
            Err(error) => tern_error(error),
        }
    }

    /// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]: the cursor is
    /// the next slot to walk, so it stays valid whichever shard serves the
    /// slot by the next call.
    fn scan(&mut self, args: &[Vec<u8>]) -> Frame {
        let [cursor, options @ ..] = args else {
            return arity_error("scan");
        };
        let Some(cursor) = std::str::from_utf8(cursor)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
        else {
            return Frame::error("ERR invalid cursor");
        };
        let (mut pattern, mut count, mut only_strings) = (None, 10usize, true);
        let mut options = options.iter();
        while let Some(option) = options.next() {
            let Some(value) = options.next() else {
                return Frame::error("ERR syntax error");
            };
            match upper(option).as_str() {
                "MATCH" => pattern = Some(value.clone()),
                "COUNT" => match parse_i64(value) {
                    Some(wanted) if wanted >= 1 => count = wanted as usize,
                    Some(_) => return Frame::error("ERR syntax error"),
                    None => return integer_error(),
                },
                // Every Tern value is a string.
                "TYPE" => only_strings = upper(value) == "STRING",
                _ => return Frame::error("ERR syntax error"),
            }
        }
        let map = match self.walk_map() {
            Ok(map) => map,
            Err(error) => return walk_error(error),
        };
        let (mut slot, mut span) = (cursor.min(u64::from(tern_wire::SLOT_COUNT)) as u32, 16);
        let mut found = Vec::new();
        while slot < tern_wire::SLOT_COUNT && found.len() < count {
            let end = (slot + span).min(tern_wire::SLOT_COUNT);
            match keyspace::keys_of_slots(&map, slot, end) {
                Ok((names, next)) => {
                    found.extend(names.iter().filter_map(|stored| {
                        let (db, key) = keyspace::split(stored);
                        (db == self.session.db
                            && only_strings
                            && pattern
                                .as_ref()
                                .is_none_or(|pattern| keyspace::glob_match(pattern, key)))
                        .then(|| Frame::bulk(key.to_vec()))
                    }));
                    slot = next;
                    span = (span * 2).min(tern_wire::SLOT_COUNT);
                }
                Err(error) => return walk_error(error),
            }
        }
        let next = if slot >= tern_wire::SLOT_COUNT {
            0
        } else {
            slot
        };
        Frame::Array(vec![Frame::bulk(next.to_string()), Frame::Array(found)])
    }

    /// RANDOMKEY: a key of this database from a slot chosen at random (the
    /// next slot with one, round the ring), or nil when it has none.
    fn random_key(&mut self) -> Frame {
        let map = match self.walk_map() {
            Ok(map) => map,
            Err(error) => return walk_error(error),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let start = nanos % tern_wire::SLOT_COUNT;
        let (mut slot, mut walked) = (start, 0);
        while walked < tern_wire::SLOT_COUNT {
            let end = (slot + 64).min(tern_wire::SLOT_COUNT);
            match keyspace::keys_of_slots(&map, slot, end) {
                Ok((names, next)) => {
                    let keys: Vec<&[u8]> = names
                        .iter()
                        .filter_map(|stored| {
                            let (db, key) = keyspace::split(stored);
                            (db == self.session.db).then_some(key)
                        })
                        .collect();
                    if !keys.is_empty() {
                        return Frame::bulk(keys[nanos as usize % keys.len()].to_vec());
                    }
                    walked += next - slot;
                    slot = if next >= tern_wire::SLOT_COUNT {
                        0
                    } else {
                        next
                    };
                }
                Err(error) => return walk_error(error),
            }
        }
        Frame::Nil
    }

    fn authenticate(&mut self, user: &[u8], password: &[u8]) -> Frame {
        if user == b"default"
            && self.shared.config.users.is_none()
            && self.shared.config.password.is_none()
        {
            return Frame::error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        }
        match self.shared.users.find(user) {
            Some(found) if found.accepts(password) => {
                self.session.user = Some(found.clone());
                Frame::ok()
            }
            _ => Frame::error("WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    /// ACL WHOAMI, ACL LIST, ACL USERS.
    fn acl(&mut self, args: &[Vec<u8>]) -> Frame {
        match (args.first().map(|word| upper(word)).as_deref(), args.len()) {
            (Some("WHOAMI"), 1) => match &self.session.user {
                Some(user) => Frame::bulk(user.name.as_bytes()),
                None => Frame::bulk("default"),
            },
            (Some("LIST"), 1) => Frame::Array(
                self.shared
                    .users
                    .iter()
                    .map(|user| Frame::bulk(user.rules().as_bytes()))
                    .collect(),
            ),
            (Some("USERS"), 1) => Frame::Array(
                self.shared
                    .users
                    .iter()
                    .map(|user| Frame::bulk(user.name.as_bytes()))
                    .collect(),
            ),
            (Some(sub @ ("WHOAMI" | "LIST" | "USERS")), _) => Frame::error(format!(
                "ERR wrong number of arguments for 'acl|{}' command",
                sub.to_lowercase()
            )),
            _ => Frame::error(
                "ERR unknown subcommand or wrong number of arguments for 'ACL'. \
                 Tern serves ACL WHOAMI, LIST and USERS",
            ),
        }
    }

    /// HELLO [protover [AUTH username password] [SETNAME clientname]]
    fn hello(&mut self, args: &[Vec<u8>]) -> Frame {
        let mut protocol = self.session.protocol;
        let mut rest = args;
        if let [version, tail @ ..] = rest {
            match parse_i64(version) {
                Some(version @ 2..=3) => protocol = version as u8,
                _ => return Frame::error("NOPROTO unsupported protocol version"),
            }
            rest = tail;
        }
        while let [option, tail @ ..] = rest {
            match (upper(option).as_str(), tail) {
                ("AUTH", [user, password, more @ ..]) => {
                    if let Frame::Error(message) = self.authenticate(user, password) {
                        return Frame::Error(message);
                    }
                    rest = more;
                }
                ("SETNAME", [name, more @ ..]) => {
                    self.session.entry.set_name(Some(name.clone()));
                    rest = more;
                }
                _ => return Frame::error("ERR syntax error in HELLO option"),
            }
        }
        if !self.session.authenticated() {
            return Frame::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        self.session.protocol = protocol;
        Frame::Map(vec![
            (Frame::bulk("server"), Frame::bulk("tern")),
            (
                Frame::bulk("version"),
                Frame::bulk(env!("CARGO_PKG_VERSION")),
            ),
            (Frame::bulk("proto"), Frame::Integer(i64::from(protocol))),
            (Frame::bulk("id"), Frame::Integer(self.session.id as i64)),
            (Frame::bulk("mode"), Frame::bulk("standalone")),
            (Frame::bulk("role"), Frame::bulk("master")),
            (Frame::bulk("modules"), Frame::Array(Vec::new())),
        ])
    }

    fn client_command(&mut self, args: &[Vec<u8>]) -> Frame {
        match (
            args.first().map(|sub| upper(sub)).as_deref(),
            args.get(1..).unwrap_or_default(),
        ) {
            (Some("SETNAME"), [name]) => {
                if name.iter().any(|byte| !(b'!'..=b'~').contains(byte)) {
                    return Frame::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.session
                    .entry
                    .set_name((!name.is_empty()).then(|| name.clone()));
                Frame::ok()
            }
            (Some("GETNAME"), []) => self.session.entry.name().map_or(Frame::Nil, Frame::bulk),
            (Some("ID"), []) => Frame::Integer(self.session.id as i64),
            (Some("SETINFO"), [_, _]) => Frame::ok(),
            (Some("INFO"), []) => Frame::bulk(self.session.entry.line()),
            (Some("LIST"), rest) => {
                let ids: Option<Vec<u64>> = match rest {
                    [] => None,
                    [by, ids @ ..] if upper(by) == "ID" && !ids.is_empty() => {
                        match ids
                            .iter()
                            .map(|id| parse_i64(id).map(|id| id as u64))
                            .collect()
                        {
                            Some(ids) => Some(ids),
                            None => return Frame::error("ERR Invalid client ID"),
                        }
                    }
                    [by, kind] if upper(by) == "TYPE" && upper(kind) == "NORMAL" => None,
                    _ => return Frame::error("ERR syntax error"),
                };
                let lines: String = self
                    .shared
                    .clients
                    .entries()
                    .iter()
                    .filter(|entry| ids.as_ref().is_none_or(|ids| ids.contains(&entry.id)))
                    .map(|entry| entry.line())
                    .collect();
                Frame::bulk(lines)
            }
            (Some("KILL"), rest) => self.client_kill(rest),
            (Some(sub @ ("SETNAME" | "GETNAME" | "ID" | "SETINFO" | "INFO")), _) => {
                arity_error(&format!("client|{}", sub.to_lowercase()))
            }
            (Some(sub), _) => Frame::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                sub.to_lowercase()
            )),
            (None, _) => arity_error("client"),
        }
    }

    /// CLIENT KILL ip:port (the old form: OK, or an error when none is
    /// there) or CLIENT KILL [ID id] [ADDR ip:port] [LADDR ip:port]
    /// [SKIPME yes|no] (the number killed).
    fn client_kill(&mut self, args: &[Vec<u8>]) -> Frame {
        let entries = self.shared.clients.entries();
        if let [addr] = args {
            let addr = String::from_utf8_lossy(addr);
            let filter = clients::KillFilter {
                addr: Some(addr.into_owned()),
                ..clients::KillFilter::default()
            };
            let picked: Vec<_> = entries
                .iter()
                .filter(|e| filter.picks(e, self.session.id))
                .collect();
            if picked.is_empty() {
                return Frame::error("ERR No such client");
            }
            picked.iter().for_each(|entry| entry.kill());
            return Frame::ok();
        }
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Frame::error("ERR syntax error");
        }
        let mut filter = clients::KillFilter {
            skip_me: true,
            ..clients::KillFilter::default()
        };
        for pair in args.chunks(2) {
            let value = String::from_utf8_lossy(&pair[1]).into_owned();
            match upper(&pair[0]).as_str() {
                "ID" => match value.parse() {
                    Ok(id) => filter.id = Some(id),
                    Err(_) => return Frame::error("ERR client-id should be greater than 0"),
                },
                "ADDR" => filter.addr = Some(value),
                "LADDR" => filter.laddr = Some(value),
                "SKIPME" => match value.to_lowercase().as_str() {
                    "yes" => filter.skip_me = true,
                    "no" => filter.skip_me = false,
                    _ => return Frame::error("ERR syntax error"),
                },
                _ => return Frame::error("ERR syntax error"),
            }
        }
        let picked: Vec<_> = entries
            .iter()
            .filter(|e| filter.picks(e, self.session.id))
            .collect();
        picked.iter().for_each(|entry| entry.kill());
        Frame::Integer(picked.len() as i64)
    }

    /// COMMAND, COMMAND COUNT, COMMAND INFO name..., COMMAND DOCS (empty:
    /// no documentation is kept), from the one table of commands.
    fn command_command(&mut self, args: &[Vec<u8>]) -> Frame {
        match (
            args.first().map(|sub| upper(sub)).as_deref(),
            args.get(1..).unwrap_or_default(),
        ) {
            (None, _) => Frame::Array(
                commands::COMMANDS
                    .iter()
                    .map(commands::Spec::info)
                    .collect(),
            ),
            (Some("COUNT"), []) => Frame::Integer(commands::COMMANDS.len() as i64),
            (Some("INFO"), []) => Frame::Array(
                commands::COMMANDS
                    .iter()
                    .map(commands::Spec::info)
                    .collect(),
            ),
            (Some("INFO"), names) => Frame::Array(
                names
                    .iter()
                    .map(|name| {
                        commands::find(&String::from_utf8_lossy(name))
                            .map_or(Frame::Nil, commands::Spec::info)
                    })
                    .collect(),
            ),
            (Some("DOCS"), _) => Frame::Map(Vec::new()),
            (Some(sub), _) => Frame::error(format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                sub.to_lowercase()
            )),
        }
    }

    /// CONFIG GET pattern... (the gateway's own settings, and those tools
    /// read: persistence is not the gateway's and reads as off), CONFIG SET
    /// for `maxclients` and `timeout`, CONFIG RESETSTAT.
    fn config_command(&mut self, args: &[Vec<u8>]) -> Frame {
        let settings = [
            (
                "maxclients",
                self.shared.max_clients.load(Ordering::Relaxed).to_string(),
            ),
            (
                "timeout",
                self.shared
                    .idle_timeout_s
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            ("databases", keyspace::DATABASES.to_string()),
            (
                "requirepass",
                self.shared.config.password.clone().unwrap_or_default(),
            ),
            ("proto-max-bulk-len", resp::BULK_LEN_MAX.to_string()),
            (
                "client-query-buffer-limit",
                resp::QUERY_BUFFER_MAX.to_string(),
            ),
            ("save", String::new()),
            ("appendonly", "no".into()),
        ];
        match (
            args.first().map(|sub| upper(sub)).as_deref(),
            args.get(1..).unwrap_or_default(),
        ) {
            (Some("GET"), []) => arity_error("config|get"),
            (Some("GET"), patterns) => Frame::Map(
                settings
                    .iter()
                    .filter(|(name, _)| {
                        patterns.iter().any(|pattern| {
                            keyspace::glob_match(&pattern.to_ascii_lowercase(), name.as_bytes())
                        })
                    })
                    .map(|(name, value)| (Frame::bulk(*name), Frame::bulk(value.clone())))
                    .collect(),
            ),
            (Some("SET"), pairs) if pairs.is_empty() || !pairs.len().is_multiple_of(2) => {
                arity_error("config|set")
            }
            (Some("SET"), pairs) => {
                // All or nothing, as in Redis: every pair checked first.
                let mut changes = Vec::new();
                for pair in pairs.chunks(2) {
                    let name = String::from_utf8_lossy(&pair[0]).to_lowercase();
                    let value = parse_i64(&pair[1]);
                    match (name.as_str(), value) {
                        ("maxclients", Some(value)) if value >= 1 => {
                            changes.push((0, value as u64))
                        }
                        ("timeout", Some(value)) if value >= 0 => changes.push((1, value as u64)),
                        ("maxclients" | "timeout", _) => {
                            return Frame::error(format!(
                                "ERR CONFIG SET failed (possibly related to argument '{name}') - argument couldn't be parsed into an integer"
                            ));
                        }
                        _ if settings.iter().any(|(known, _)| *known == name) => {
                            return Frame::error(format!(
                                "ERR CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config"
                            ));
                        }
                        _ => {
                            return Frame::error(format!(
                                "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                            ));
                        }
                    }
                }
                for (which, value) in changes {
                    if which == 0 {
                        self.shared
                            .max_clients
                            .store(value as usize, Ordering::Relaxed);
                    } else {
                        self.shared.idle_timeout_s.store(value, Ordering::Relaxed);
                    }
                }
                Frame::ok()
            }
            (Some("RESETSTAT"), []) => {
                self.shared.stats.reset();
                Frame::ok()
            }
            (Some(sub), _) => Frame::error(format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                sub.to_lowercase()
            )),
            (None, _) => arity_error("config"),
        }
    }

    /// INFO [section ...]: the server, clients, keyspace and tern sections.
    fn info(&mut self, sections: &[Vec<u8>]) -> String {
        let wanted: Vec<String> = sections
            .iter()
            .map(|section| String::from_utf8_lossy(section).to_lowercase())
            .collect();
        // As in Redis: `commandstats` only when asked for, or with `all`.
        let everything = wanted
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "everything"));
        let default = wanted.is_empty() || wanted.iter().any(|w| w == "default");
        // Counting the keys walks every shard's tail: only when shown.
        let keyspace = everything || default || wanted.iter().any(|w| w == "keyspace");
        self.full_info(keyspace)
            .split("\r\n\r\n")
            .filter(|section| {
                let title = section
                    .trim_start_matches("# ")
                    .split("\r\n")
                    .next()
                    .unwrap_or_default()
                    .to_lowercase();
                everything || (default && title != "commandstats") || wanted.contains(&title)
            })
            .collect::<Vec<_>>()
            .join("\r\n\r\n")
    }

    fn full_info(&mut self, with_keyspace: bool) -> String {
        let map = &self.shared.config.map;
        // The databases that have keys, as Redis lists them (none: none).
        let walked = if with_keyspace {
            self.walk_map()
        } else {
            Err(io::Error::other("not asked for"))
        };
        let keys: String = walked
            .and_then(|map| keyspace::counts(&map, unix_now_ms()))
            .map(|counts| {
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, count)| count.keys > 0)
                    .map(|(db, count)| {
                        format!(
                            "db{db}:keys={},expires={},avg_ttl={}\r\n",
                            count.keys, count.expires, count.avg_ttl_ms
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut text = format!(
            "# Server\r\nredis_version:7.0.0\r\ntern_version:{}\r\nredis_mode:standalone\r\n\r\n\
             # Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n\
             {}\r\n{}\r\n{}\r\n{}\r\n\
             # Keyspace\r\n{keys}\r\n\
             # Tern\r\nshards:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.connected.load(Ordering::Relaxed),
            self.shared.config.max_clients,
            stats::memory_section(),
            stats::cpu_section(),
            self.shared.stats.stats_section(),
            self.shared.stats.commandstats_section(),
            map.shards.len()
        );
        for shard in &map.shards {
            let chain: Vec<String> = shard
                .replicas
                .iter()
                .map(|replica| replica.to_string())
                .collect();
            let slots: Vec<String> = shard
                .slots
                .iter()
                .map(|[start, end]| format!("{start}-{}", end - 1))
                .collect();
            text.push_str(&format!(
                "shard{}:slots={},epoch={},coordinator={},chain={}\r\n",
                shard.id,
                slots.join("|"),
                shard.epoch,
                shard.coordinator,
                chain.join("|")
            ));
        }
        text
    }
}
