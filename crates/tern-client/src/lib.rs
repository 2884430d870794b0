//! The Tern client library: routes each key to its shard's coordinator by the
//! cluster map, retries on timeout with the same request id (so a retried
//! write is applied once, DESIGN rule 6) and turns replies into results.
//!
//! Blocking and single-threaded by design: one `Client` has at most one
//! request outstanding; run one per thread for concurrency.

pub mod answer;
pub mod expiry;
pub mod large;
pub mod pipeline;
pub mod plan;
pub mod reshard;
pub mod retry;
pub mod txn;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

pub use expiry::{Deadline, ExpireCondition, Lifetime};
pub use pipeline::{Completion, PIPELINE_DEPTH_MAX, Pipeline, Request};
use retry::{Retry, Verdict};
pub use tern_control::{
    ClientId, ClusterMap, Epoch, MapError, ShardId, ShardMap, Slot, commit_name, parse_commit,
    parse_replication, replication_name,
};
pub use tern_control::{meta, tls};
use tern_wire::{
    Extensions, Header, KEY_LEN_MAX, LARGE_VALUE_LEN_DEFAULT, Large, MESSAGE_LEN_MAX, Message, Op,
    Status, edit, encode_append_with, flags, key_hash,
};
use thiserror::Error;
pub use txn::{MultiOutcome, Transacted, Txn, TxnMode};

/// Why a request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("key of {len} bytes exceeds the limit of {KEY_LEN_MAX} bytes")]
    KeyTooLarge { len: usize },
    #[error("value of {len} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge { len: usize, limit: usize },
    /// No reply within the deadline: a write may or may not have happened.
    #[error("no reply after {attempts} attempts in {elapsed:?}")]
    Timeout { attempts: u32, elapsed: Duration },
    #[error("the cluster map is stale for shard {shard}: reload it")]
    StaleEpoch { shard: u32 },
    #[error("value is not an integer or out of range")]
    NotInteger,
    #[error("value is not a valid float")]
    NotFloat,
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    #[error("the result would exceed the longest value the replicas accept")]
    ResultTooLarge,
    #[error("request refused: {status:?}")]
    Refused { status: Status },
    /// A transaction refused before anything was sent (or by its head,
    /// for a record over the limit), naming the limit.
    #[error("{0}")]
    Transaction(tern_wire::multi::MultiError),
    #[error(
        "a one-shot transaction's keys span shards {first} and {second}: keep them in \
         one shard (a {{hash tag}}), or run it with `transact`, which commits across shards"
    )]
    CrossShard { first: u32, second: u32 },
    /// A transaction across shards whose outcome this client could not
    /// learn (a participant did not answer in time): its coordinators
    /// settle it after its lease, committed or aborted, all or nothing.
    #[error("transaction {id}: no answer from shard {shard}; it is settled by its lease")]
    InDoubt {
        id: tern_wire::txn::TxnId,
        shard: u32,
    },
    #[error("the transaction conflicted {attempts} times in a row; gave up")]
    Conflict { attempts: u32 },
    #[error("network error: {0}")]
    Io(#[from] io::Error),
}

/// A large write's attempt lasts longer by a microsecond per this many
/// bytes (20 MB/s: 16 MiB adds 0.8 s)...
const LARGE_ATTEMPT_BYTES_PER_US: u64 = 20;
/// ...and its deadline by a microsecond per this many (4 MB/s: 16 MiB adds
/// 4.2 s).
const LARGE_DEADLINE_BYTES_PER_US: u64 = 4;

/// Timeouts of a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Time to wait for a reply before sending the request again.
    pub attempt_timeout: Duration,
    /// Time after which a request gives up with [`ClientError::Timeout`].
    pub deadline: Duration,
    /// The longest value sent; longer ones are refused before anything
    /// is sent. The replicas have a limit of their own (by default the
    /// same), which they name when they refuse.
    pub value_limit: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(3),
            value_limit: LARGE_VALUE_LEN_DEFAULT,
        }
    }
}

/// A value with its version (the sequence number of the write that made it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub value: Vec<u8>,
    /// When the value expires (Unix milliseconds), if it does.
    pub deadline_ms: Option<u64>,
}

/// Outcome of a compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The expected version matched; the new value has `version`.
    Swapped { version: u64 },
    /// It did not; the key's version is `current` (0: absent).
    Mismatch { current: u64 },
}

/// When a SET writes (Redis NX / XX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetCondition {
    #[default]
    Always,
    /// Only if the key is absent (NX).
    IfAbsent,
    /// Only if the key exists (XX).
    IfExists,
}

/// What a conditional SET did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetOutcome {
    pub written: bool,
    /// The version written (when `written`).
    pub version: u64,
    /// With `return_old`: the value before (None: the key was absent).
    pub old: Option<Vec<u8>>,
}

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub header: Header,
    pub extensions: Extensions,
    pub value: Vec<u8>,
}

/// Counters of one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    pub requests: u64,
    pub resends: u64,
    pub try_again: u64,
    pub timeouts: u64,
    /// Maps fetched from meta after a stale epoch or a silent coordinator.
    pub map_refreshes: u64,
    /// Transaction commits refused because a version read had changed
    /// (`transact` then runs the body again).
    pub txn_changed: u64,
    /// Transaction commits refused because another transaction held a key.
    pub txn_locked: u64,
}

/// The header of `call` for `key` (request id left 0) and the address of
/// its shard's coordinator; refuses keys over the limit and values over
/// `value_limit`.
pub(crate) fn request_header(
    map: &ClusterMap,
    client_id: ClientId,
    key: &[u8],
    call: &answer::Call<'_>,
    value_limit: usize,
) -> Result<(Header, SocketAddrV4), ClientError> {
    if key.len() > KEY_LEN_MAX {
        return Err(ClientError::KeyTooLarge { len: key.len() });
    }
    if call.value.len() > value_limit {
        return Err(ClientError::ValueTooLarge {
            len: call.value.len(),
            limit: value_limit,
        });
    }
    let hash = key_hash(key);
    let shard = map.shard_of_key_hash(hash);
    let mut header = Header::new(call.op, shard.id.get(), shard.epoch.get());
    header.key_hash.set(hash);
    header.client_id.set(client_id.get());
    header.set_expected_version(call.version);
    header.flags = call.flags;
    Ok((header, shard.coordinator))
}

/// Bit `offset` of `value` (0: the high bit of the first byte; past the
/// end: 0), as Redis's GETBIT reads it.
pub fn bit_of(value: &[u8], offset: u64) -> bool {
    usize::try_from(offset / 8)
        .ok()
        .and_then(|byte| value.get(byte))
        .is_some_and(|byte| byte & (0x80 >> (offset % 8)) != 0)
}

/// Whether a request is pinned to the shard it names: a PREPARE is one
/// shard's part of a transaction, so it is never rerouted (a slot that
/// moved, a stale epoch: the transaction starts again on the new map), and
/// LOCKED, STALE_EPOCH and WRONG_SHARD are its answers.
fn is_pinned(op: Op) -> bool {
    matches!(op, Op::Prepare | Op::Acquire)
}

impl Client {
    /// Takes the newest map from meta (when the cluster has meta), for a
    /// caller that plans by shard (a transaction starting again after a
    /// slot moved).
    pub(crate) fn refresh_map(&mut self) {
        if self.map.meta.is_empty() {
            return;
        }
        if let Ok(map) = meta::fetch_map(&self.map.meta, &mut self.meta_hint) {
            self.counters.map_refreshes += 1;
            self.map = map;
        }
    }
}

/// Points `header` at its key's shard as `map` has it (shard id, epoch);
/// returns that shard's coordinator. A transaction's COMMIT, ABORT and
/// RESOLVE go to the shard they name, wherever its keys are now.
pub(crate) fn reroute(map: &ClusterMap, header: &mut Header) -> SocketAddrV4 {
    let named = matches!(header.op(), Op::Commit | Op::Abort | Op::Resolve)
        .then(|| map.shard(ShardId(header.shard.get())))
        .flatten();
    let shard = named.unwrap_or_else(|| map.shard_of_key_hash(header.key_hash.get()));
    header.shard.set(shard.id.get());
    header.epoch.set(shard.epoch.get());
    shard.coordinator
}

/// A connection-less client of one Tern cluster.
#[derive(Debug)]
pub struct Client {
    socket: UdpSocket,
    map: ClusterMap,
    client_id: ClientId,
    next_request_id: u64,
    options: ClientOptions,
    send_buffer: Vec<u8>,
    /// The meta node that last answered as leader.
    meta_hint: Option<SocketAddrV4>,
    recv_buffer: Box<[u8]>,
    counters: ClientCounters,
    /// Connections to replicas for large values.
    links: large::Links,
}

impl Client {
    pub fn new(map: ClusterMap) -> io::Result<Self> {
        Self::with_options(map, ClientOptions::default())
    }

    pub fn with_options(map: ClusterMap, options: ClientOptions) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        // Set once: a receive waits at most one attempt, and `wait_for`
        // checks the clock after every stray datagram: no per-request syscall.
        socket.set_read_timeout(Some(options.attempt_timeout))?;
        Ok(Client {
            socket,
            map,
            client_id: ClientId::random(),
            next_request_id: 1,
            options,
            send_buffer: Vec::with_capacity(MESSAGE_LEN_MAX),
            recv_buffer: vec![0; 2048].into_boxed_slice(),
            counters: ClientCounters::default(),
            meta_hint: None,
            links: large::Links::default(),
        })
    }

    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    pub fn counters(&self) -> ClientCounters {
        self.counters
    }

    /// The value of `key`, if any.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>, ClientError> {
        let reply = self.send(key, answer::Call::get())?;
        answer::read(reply)
    }

    /// Writes `value`; returns its version.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        let reply = self.send(key, answer::Call::new(Op::Put, value))?;
        match reply.status {
            Status::Ok => Ok(reply.header.version()),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        let reply = self.send(key, answer::Call::delete())?;
        answer::deleted(&reply)
    }

    /// Removes `key` and answers the value it had (None: it was absent), in
    /// one write decided at the chain head.
    pub fn get_del(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let call = answer::Call {
            flags: flags::RETURN_OLD,
            ..answer::Call::delete()
        };
        let reply = self.send(key, call)?;
        match reply.status {
            Status::Ok | Status::NotFound => {
                Ok((!reply.header.has_flag(flags::ANSWER_ABSENT)).then_some(reply.value))
            }
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Writes `value` if the key's version is `expected` (0: the key is absent).
    pub fn cas(
        &mut self,
        key: &[u8],
        expected: u64,
        value: &[u8],
    ) -> Result<CasOutcome, ClientError> {
        let call = answer::Call {
            version: expected,
            ..answer::Call::new(Op::Cas, value)
        };
        let reply = self.send(key, call)?;
        match reply.status {
            Status::Ok => Ok(CasOutcome::Swapped {
                version: reply.header.version(),
            }),
            Status::CasMismatch => Ok(CasOutcome::Mismatch {
                current: reply.header.version(),
            }),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Adds `delta` to the key's decimal integer value (an absent key counts
    /// as 0), atomically at the chain head; returns the new value.
    pub fn incr_by(&mut self, key: &[u8], delta: i64) -> Result<i64, ClientError> {
        let delta = delta.to_string();
        let reply = self.send(key, answer::Call::incr_by(delta.as_bytes()))?;
        answer::sum(&reply)
    }

    /// Appends `value` to the key's value atomically at the chain head;
    /// returns the new length.
    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<usize, ClientError> {
        let call = answer::Call {
            flags: flags::RETURN_NEW,
            ..answer::Call::new(Op::Append, value)
        };
        let reply = self.send(key, call)?;
        match reply.status {
            Status::Ok => Ok(reply.value.len()),
            Status::TooLarge => Err(ClientError::ResultTooLarge),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Writes `value` under `condition`, atomically at the chain head; with
    /// `return_old`, also answers the value the key had just before. The
    /// key keeps no deadline (Redis SET); see [`Client::set_for`].
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        condition: SetCondition,
        return_old: bool,
    ) -> Result<SetOutcome, ClientError> {
        self.set_for(key, value, condition, return_old, Lifetime::Forever)
    }

    /// As [`Client::set`], with what the write does to the key's deadline
    /// (SET EX/PX/EXAT/PXAT/KEEPTTL).
    pub fn set_for(
        &mut self,
        key: &[u8],
        value: &[u8],
        condition: SetCondition,
        return_old: bool,
        lifetime: Lifetime,
    ) -> Result<SetOutcome, ClientError> {
        let reply = self.send(
            key,
            answer::Call::set(value, condition, return_old, lifetime),
        )?;
        answer::set(reply, return_old)
    }

    /// Writes `bytes` into the key's value at byte `offset`, padding with
    /// zero bytes (Redis SETRANGE), at the chain head; returns the new
    /// length. Empty `bytes` change nothing.
    pub fn set_range(
        &mut self,
        key: &[u8],
        offset: u64,
        bytes: &[u8],
    ) -> Result<usize, ClientError> {
        let reply = self.edit(key, edit::SET_RANGE, offset, bytes, flags::RETURN_NEW)?;
        Ok(reply.value.len())
    }

    /// Adds the decimal `delta` to the key's decimal value (Redis
    /// INCRBYFLOAT), at the chain head; returns the new value as stored.
    pub fn incr_by_float(&mut self, key: &[u8], delta: &str) -> Result<Vec<u8>, ClientError> {
        let reply = self.edit(
            key,
            edit::INCR_BY_FLOAT,
            0,
            delta.as_bytes(),
            flags::RETURN_NEW,
        )?;
        Ok(reply.value)
    }

    /// Sets bit `offset` of the key's value (0: the high bit of the first
    /// byte) to `on`, padding with zero bytes (Redis SETBIT), at the chain
    /// head; returns the bit's value before.
    pub fn set_bit(&mut self, key: &[u8], offset: u64, on: bool) -> Result<bool, ClientError> {
        let operand: &[u8] = if on { b"1" } else { b"0" };
        let reply = self.edit(key, edit::SET_BIT, offset, operand, flags::RETURN_OLD)?;
        let before = if reply.header.has_flag(flags::ANSWER_ABSENT) {
            &[][..]
        } else {
            &reply.value[..]
        };
        Ok(bit_of(before, offset))
    }

    fn edit(
        &mut self,
        key: &[u8],
        kind: u8,
        offset: u64,
        operand: &[u8],
        answer: u8,
    ) -> Result<Reply, ClientError> {
        let call = answer::Call {
            version: edit::pack(kind, offset),
            flags: answer,
            ..answer::Call::new(Op::Edit, operand)
        };
        let reply = self.send(key, call)?;
        match reply.status {
            Status::Ok => Ok(reply),
            Status::TooLarge => Err(ClientError::ResultTooLarge),
            Status::NotInteger => Err(ClientError::NotFloat),
            Status::NotFinite => Err(ClientError::NotFinite),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Gives `key` a new deadline, or none (`Deadline::Never`, PERSIST),
    /// under `condition`, decided at the chain head. Whether the key
    /// changed: false when it is absent, the condition failed, or PERSIST
    /// found no deadline (Redis's 0). A deadline already passed deletes
    /// the key (true).
    pub fn expire(
        &mut self,
        key: &[u8],
        deadline: Deadline,
        condition: ExpireCondition,
    ) -> Result<bool, ClientError> {
        let reply = self.send(key, answer::Call::expire(deadline.asked(condition), 0))?;
        match reply.status {
            Status::Ok => Ok(true),
            Status::NotFound | Status::CasMismatch => Ok(false),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// The value of `key` (None: absent), giving it `deadline` in the same
    /// write when one is named (Redis GETEX).
    pub fn get_ex(
        &mut self,
        key: &[u8],
        deadline: Option<Deadline>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let Some(deadline) = deadline else {
            return Ok(self.get(key)?.map(|found| found.value));
        };
        let asked = deadline.asked(ExpireCondition::Always);
        let reply = self.send(key, answer::Call::expire(asked, flags::RETURN_OLD))?;
        match reply.status {
            Status::Ok | Status::CasMismatch => {
                Ok((!reply.header.has_flag(flags::ANSWER_ABSENT)).then_some(reply.value))
            }
            Status::NotFound => Ok(None),
            status => Err(ClientError::Refused { status }),
        }
    }

    /// Sends `call` for `key` and waits for its reply: the requests of
    /// [`answer`], one at a time (a [`Pipeline`] sends many).
    pub fn call(&mut self, key: &[u8], call: answer::Call<'_>) -> Result<Reply, ClientError> {
        self.send(key, call)
    }

    /// Sends an administrative request (PING, STATS) to one process.
    pub fn admin(
        &mut self,
        to: SocketAddrV4,
        op: Op,
        shard: ShardId,
    ) -> Result<Reply, ClientError> {
        self.admin_from(to, op, shard, 0)
    }

    /// `admin` with the request's argument (a STATS page's offset).
    fn admin_from(
        &mut self,
        to: SocketAddrV4,
        op: Op,
        shard: ShardId,
        argument: u64,
    ) -> Result<Reply, ClientError> {
        let epoch = self
            .map
            .shards
            .iter()
            .find(|s| s.id == shard)
            .map_or(0, |s| s.epoch.get());
        let mut header = Header::new(op, shard.get(), epoch);
        header.client_id.set(self.client_id.get());
        header.argument.set(argument);
        let request_id = self.take_request_id();
        self.exchange(
            to,
            header,
            request_id,
            &Extensions::default(),
            &[],
            &[],
            false,
        )
    }

    /// The STATS text of one process, every page of it (a process answers
    /// one datagram's worth of whole lines at a time).
    pub fn stats(&mut self, to: SocketAddrV4, shard: ShardId) -> Result<String, ClientError> {
        let mut text = Vec::new();
        let mut offset = 0;
        // Bounded: a process's text is a few kilobytes.
        for _ in 0..64 {
            let reply = self.admin_from(to, Op::Stats, shard, offset)?;
            text.extend_from_slice(&reply.value);
            offset = reply.header.argument.get();
            if offset == 0 || reply.value.is_empty() {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    fn take_request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id - 1
    }

    /// Sends `call` for `key` and waits for its reply, a large answer
    /// fetched (a request whose large answer is gone before it is fetched
    /// is sent again under the same id: a read is read again, a write is
    /// answered from dedup, as any retry, with the key's value now).
    fn send(&mut self, key: &[u8], call: answer::Call<'_>) -> Result<Reply, ClientError> {
        // Every attempt under one request id: a write asked again is
        // answered from dedup, never applied twice.
        let request_id = self.take_request_id();
        for _ in 0..3 {
            let mut reply = if large::is_large(call.value) {
                self.send_large(key, call, request_id)?
            } else {
                let limit = self.options.value_limit;
                let (header, coordinator) =
                    request_header(&self.map, self.client_id, key, &call, limit)?;
                let (extensions, value) = (&call.extensions, call.value);
                self.exchange(
                    coordinator,
                    header,
                    request_id,
                    extensions,
                    key,
                    value,
                    true,
                )?
            };
            if reply.status == Status::StaleEpoch {
                return Err(ClientError::StaleEpoch {
                    shard: reply.header.shard.get(),
                });
            }
            if self.links.complete(&mut reply)? {
                return Ok(reply);
            }
        }
        Err(ClientError::Refused {
            status: Status::ValueMissing,
        })
    }

    /// Sends a write whose value is too large for a datagram: the value
    /// staged at the shard's head first, then the write naming it. A head
    /// that does not hold it (VALUE_MISSING: the chain changed, or it
    /// restarted) gets it again, and the same request (dedup keeps it
    /// applied once).
    fn send_large(
        &mut self,
        key: &[u8],
        call: answer::Call<'_>,
        request_id: u64,
    ) -> Result<Reply, ClientError> {
        // A large write takes longer to go down the chain (a fetch per
        // hop): its attempts and deadline stretch with its size, so that a
        // slow one is not sent again and again (each copy is sequenced, and
        // answered from dedup with the key's value by then, which a GETSET
        // must not see).
        let normal = self.options;
        let bytes = call.value.len() as u64;
        self.options.attempt_timeout += Duration::from_micros(bytes / LARGE_ATTEMPT_BYTES_PER_US);
        self.options.deadline += Duration::from_micros(bytes / LARGE_DEADLINE_BYTES_PER_US);
        self.socket
            .set_read_timeout(Some(self.options.attempt_timeout))?;
        let sent = self.send_large_within(key, call, request_id);
        self.options = normal;
        self.socket.set_read_timeout(Some(normal.attempt_timeout))?;
        sent
    }

    fn send_large_within(
        &mut self,
        key: &[u8],
        call: answer::Call<'_>,
        request_id: u64,
    ) -> Result<Reply, ClientError> {
        let limit = self.options.value_limit;
        let nowhere = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let extensions = Extensions {
            large: Some(Large::of(call.value, nowhere)),
            ..call.extensions
        };
        let start = Instant::now();
        loop {
            // The map may have changed since the last attempt.
            let (header, coordinator) =
                request_header(&self.map, self.client_id, key, &call, limit)?;
            let chain = self.map.shard_of_key_hash(key_hash(key)).replicas.clone();
            let ids = (self.client_id.get(), request_id);
            match self.links.stage_everywhere(&chain, ids, call.value) {
                // A head that failed, or left the chain: the map names the
                // next one.
                Err(ClientError::Io(_)) if start.elapsed() < self.options.deadline => {}
                Err(error) => return Err(error),
                Ok(()) => {
                    let reply = self.exchange(
                        coordinator,
                        header,
                        request_id,
                        &extensions,
                        key,
                        &[],
                        true,
                    )?;
                    if reply.status != Status::ValueMissing
                        || start.elapsed() >= self.options.deadline
                    {
                        return Ok(reply);
                    }
                }
            }
            let (mut refreshed, mut to) = (header, coordinator);
            self.refresh_route(&mut refreshed, &mut to, (&extensions, key, &[]));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reloads the map from meta (when the cluster has meta) and points
    /// `header` at the key's shard as the new map has it, encoding the
    /// request again if its route changed. Whether it changed.
    fn refresh_route(
        &mut self,
        header: &mut Header,
        to: &mut SocketAddrV4,
        (extensions, key, value): (&Extensions, &[u8], &[u8]),
    ) -> bool {
        if self.map.meta.is_empty() {
            return false;
        }
        let map = match meta::fetch_map(&self.map.meta, &mut self.meta_hint) {
            Ok(map) => map,
            Err(_) => return false,
        };
        // A route is a coordinator, a shard and its epoch: a slot that moved
        // to another shard of the same coordinator is a new route too.
        let before = (*to, header.shard.get(), header.epoch.get());
        *to = reroute(&map, header);
        let changed = (*to, header.shard.get(), header.epoch.get()) != before;
        self.counters.map_refreshes += 1;
        self.map = map;
        if changed {
            self.encode(header, extensions, key, value);
        }
        changed
    }

    fn encode(&mut self, header: &Header, extensions: &Extensions, key: &[u8], value: &[u8]) {
        self.send_buffer.clear();
        encode_append_with(header, extensions, key, value, &mut self.send_buffer)
            .expect("key and value sizes were checked");
    }

    /// Sends the request until a final reply arrives or the deadline passes.
    /// Every resend carries the same request id. A routed request (not one
    /// to a named process) follows the map from meta when its shard's epoch
    /// is stale or its coordinator does not answer.
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        mut to: SocketAddrV4,
        mut header: Header,
        request_id: u64,
        extensions: &Extensions,
        key: &[u8],
        value: &[u8],
        routed: bool,
    ) -> Result<Reply, ClientError> {
        header.request_id.set(request_id);
        self.encode(&header, extensions, key, value);
        self.counters.requests += 1;
        let start = Instant::now();
        let deadline = start + self.options.deadline;
        let pinned = is_pinned(header.op());
        let follows_map = routed && !self.map.meta.is_empty() && !pinned;
        let mut retry = Retry::new(start, &self.options, follows_map).locked_is_answer(pinned);
        loop {
            retry.sent();
            self.socket.send_to(&self.send_buffer, to)?;
            let attempt_end = (Instant::now() + self.options.attempt_timeout).min(deadline);
            match self.wait_for(&[request_id], attempt_end)? {
                Some(reply) => match retry.on_reply(Instant::now(), reply.status) {
                    Verdict::Done => return Ok(reply),
                    Verdict::RetryAfter(pause) => {
                        self.counters.try_again += 1;
                        std::thread::sleep(pause);
                    }
                    Verdict::Reroute => {
                        let refuser = reply.extensions.map_version;
                        let pause =
                            match retry.refuser_behind(Instant::now(), refuser, self.map.version) {
                                Some(pause) => Some(pause),
                                None => {
                                    let rerouted = self.refresh_route(
                                        &mut header,
                                        &mut to,
                                        (extensions, key, value),
                                    );
                                    let behind =
                                        refuser.is_some_and(|version| self.map.version < version);
                                    retry.after_reroute(Instant::now(), rerouted, behind)
                                }
                            };
                        if let Some(pause) = pause {
                            std::thread::sleep(pause);
                        }
                    }
                    Verdict::Resend | Verdict::Expired => {}
                },
                None => {
                    if retry.on_silence(Instant::now()) == Verdict::Reroute {
                        self.refresh_route(&mut header, &mut to, (extensions, key, value));
                    }
                }
            }
            if retry.expired(Instant::now()) {
                self.counters.timeouts += 1;
                return Err(ClientError::Timeout {
                    attempts: retry.attempts(),
                    elapsed: start.elapsed(),
                });
            }
            self.counters.resends += 1;
        }
    }

    /// Sends several requests at once (each to its coordinator, each under
    /// its own request id) and waits for their replies together for one
    /// attempt; a request that got no final answer in that time (silence,
    /// a refusal to wait out, a stale route) is then finished on its own by
    /// `exchange`, under the same request id (so a write is applied once).
    /// The replies in the requests' order.
    pub(crate) fn exchange_all(
        &mut self,
        requests: Vec<(SocketAddrV4, Header, Vec<u8>, Vec<u8>)>,
    ) -> Vec<Result<Reply, ClientError>> {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(requests.len());
        for (to, mut header, key, value) in requests {
            let request_id = self.take_request_id();
            header.request_id.set(request_id);
            self.encode(&header, &Extensions::default(), &key, &value);
            self.counters.requests += 1;
            let outcome = self.socket.send_to(&self.send_buffer, to).map(|_| ());
            sent.push((to, header, key, value, outcome.err()));
        }
        let mut replies: Vec<Option<Reply>> = (0..sent.len()).map(|_| None).collect();
        let until = start + self.options.attempt_timeout;
        let pinned = sent.first().is_some_and(|s| is_pinned(s.1.op()));
        let mut retry = Retry::new(start, &self.options, false).locked_is_answer(pinned);
        while replies.iter().any(Option::is_none) && Instant::now() < until {
            let wanted: Vec<u64> = sent
                .iter()
                .zip(&replies)
                .filter(|(_, reply)| reply.is_none())
                .map(|(request, _)| request.1.request_id.get())
                .collect();
            let Ok(Some(reply)) = self.wait_for(&wanted, until) else {
                break;
            };
            if let Some(index) = sent
                .iter()
                .position(|request| request.1.request_id == reply.header.request_id)
                && retry.on_reply(Instant::now(), reply.status) == Verdict::Done
                && (pinned || !matches!(reply.status, Status::StaleEpoch | Status::WrongShard))
            {
                replies[index] = Some(reply);
            }
        }
        sent.into_iter()
            .zip(replies)
            .map(
                |((to, header, key, value, failed), reply)| match (reply, failed) {
                    (Some(reply), None) => Ok(reply),
                    _ => {
                        let request_id = header.request_id.get();
                        let extensions = Extensions::default();
                        self.exchange(to, header, request_id, &extensions, &key, &value, true)
                    }
                },
            )
            .collect()
    }

    /// Waits for the reply to one of `request_ids`: until `until`, or one
    /// receive timeout without any datagram. Ignores late replies to
    /// earlier requests.
    fn wait_for(
        &mut self,
        request_ids: &[u64],
        until: Instant,
    ) -> Result<Option<Reply>, ClientError> {
        loop {
            let length = match self.socket.recv_from(&mut self.recv_buffer) {
                Ok((length, _)) => length,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(error) => return Err(error.into()),
            };
            if let Ok(message) = Message::decode(&self.recv_buffer[..length]) {
                let header = message.header;
                if header.op() == Op::Reply
                    && request_ids.contains(&header.request_id.get())
                    && (header.client_id.get() == self.client_id.get()
                        || header.client_id.get() == 0)
                {
                    return Ok(Some(Reply {
                        status: header.status(),
                        header,
                        extensions: message.extensions,
                        value: message.value.to_vec(),
                    }));
                }
            }
            // Something else arrived: keep waiting only while time is left.
            if Instant::now() >= until {
                return Ok(None);
            }
        }
    }
}
