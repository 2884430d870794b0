//! Running a workload: load phase, workers, progress, report.
// PERFORMANCE CRITICAL PATH: the worker loops (the client side of a benchmark).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tern_client::{
    Client, ClientError, ClientOptions, ClusterMap, PIPELINE_DEPTH_MAX, Pipeline, Request,
};
use tern_wire::Status;

use crate::report::{BenchReport, Recorder};
use crate::workload::{Keys, Mix, OpKind};
use crate::{BenchArgs, Driver, write_key_name};

/// How a worker talks to the servers.
enum Connection {
    Tern(Client),
    Pipelined(Pipeline),
    Resp {
        connection: redis::Connection,
        wait: Option<u32>,
    },
}

fn resp_error(error: redis::RedisError) -> ClientError {
    ClientError::Io(std::io::Error::other(error.to_string()))
}

fn connect(args: &BenchArgs, map: Option<&ClusterMap>, pipelined: bool) -> Result<Connection> {
    Ok(match args.driver {
        Driver::Tern => {
            let map = map
                .context("the Tern driver needs a cluster map (--cluster)")?
                .clone();
            if pipelined {
                Connection::Pipelined(Pipeline::new(map, ClientOptions::default())?)
            } else {
                Connection::Tern(Client::new(map)?)
            }
        }
        Driver::Resp => {
            let client = redis::Client::open(format!("redis://{}/", args.resp_address))?;
            Connection::Resp {
                connection: client.get_connection()?,
                wait: args.resp_wait,
            }
        }
    })
}

/// One blocking operation on `key`.
fn blocking_op(
    connection: &mut Connection,
    kind: OpKind,
    key: &[u8],
    value: &[u8],
) -> Result<(), ClientError> {
    match connection {
        Connection::Tern(client) => match kind {
            OpKind::Read => client.get(key).map(drop),
            OpKind::Update | OpKind::Insert => client.put(key, value).map(drop),
            OpKind::ReadModifyWrite => {
                client.get(key)?;
                client.put(key, value).map(drop)
            }
        },
        Connection::Resp { connection, wait } => {
            let wait = *wait;
            let read = |connection: &mut redis::Connection| {
                redis::cmd("GET")
                    .arg(key)
                    .query::<Option<Vec<u8>>>(connection)
                    .map(drop)
                    .map_err(resp_error)
            };
            let write = |connection: &mut redis::Connection| -> Result<(), ClientError> {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query::<()>(connection)
                    .map_err(resp_error)?;
                if let Some(replicas) = wait {
                    let acknowledged: u32 = redis::cmd("WAIT")
                        .arg(replicas)
                        .arg(0)
                        .query(connection)
                        .map_err(resp_error)?;
                    if acknowledged < replicas {
                        return Err(ClientError::Refused {
                            status: Status::TryAgain,
                        });
                    }
                }
                Ok(())
            };
            match kind {
                OpKind::Read => read(connection),
                OpKind::Update | OpKind::Insert => write(connection),
                OpKind::ReadModifyWrite => {
                    read(connection)?;
                    write(connection)
                }
            }
        }
        Connection::Pipelined(_) => unreachable!("pipelines run in `pipelined`"),
    }
}

/// A worker's choices and measurements.
struct Worker {
    random: SmallRng,
    mix: Mix,
    keys: Arc<Keys>,
    key_size: usize,
    value: Vec<u8>,
    key: Vec<u8>,
    recorder: Recorder,
    completed: Arc<AtomicU64>,
}

impl Worker {
    /// The next operation and its key index.
    fn next(&mut self) -> (OpKind, u64) {
        let kind = self.mix.choose(&mut self.random);
        let index = if kind == OpKind::Insert {
            self.keys.insert()
        } else {
            self.keys.existing(&mut self.random)
        };
        (kind, index)
    }

    fn record(&mut self, kind: OpKind, started: Instant, result: Result<(), ClientError>) {
        self.recorder.record(kind, started, result);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

fn closed_loop(mut connection: Connection, worker: &mut Worker, running: &AtomicBool) {
    while running.load(Ordering::Relaxed) {
        let (kind, index) = worker.next();
        write_key_name(index, worker.key_size, &mut worker.key);
        let started = Instant::now();
        let result = blocking_op(&mut connection, kind, &worker.key, &worker.value);
        worker.record(kind, started, result);
    }
}

/// A pipelined Tern client: closed loop (`pace` None) or open loop, where
/// each request has an intended send time `pace` after the previous one and
/// its latency counts from then, however late it actually left.
fn pipelined(
    mut pipeline: Pipeline,
    depth: usize,
    worker: &mut Worker,
    running: &AtomicBool,
    pace: Option<Duration>,
) {
    // token -> (kind, key index, start, whether the read of an RMW is done)
    let mut pending: HashMap<u64, (OpKind, u64, Instant, bool)> = HashMap::new();
    let mut next_token = 0u64;
    let mut next_intended = Instant::now();
    let mut completed = Vec::with_capacity(depth);
    // Writes waiting for room: those of read-modify-writes whose read is
    // done, and writes behind a write held up.
    let mut writes_due: Vec<(OpKind, u64, Instant)> = Vec::new();
    let submit =
        |pipeline: &mut Pipeline, worker: &mut Worker, token: u64, index: u64, write: bool| {
            write_key_name(index, worker.key_size, &mut worker.key);
            let request = if write {
                Request::Put(&worker.value)
            } else {
                Request::Get
            };
            pipeline.submit(request, &worker.key, token)
        };
    while running.load(Ordering::Relaxed) {
        while pipeline.has_room()
            && let Some((kind, index, started)) = writes_due.pop()
        {
            next_token += 1;
            match submit(&mut pipeline, worker, next_token, index, true) {
                Ok(()) => {
                    pending.insert(next_token, (kind, index, started, true));
                }
                Err(error) => worker.record(kind, started, Err(error)),
            }
        }
        while pipeline.in_flight() < depth
            && pipeline.has_room_for_read()
            && writes_due.len() < depth
        {
            let started = match pace {
                None => Instant::now(),
                Some(_) if next_intended > Instant::now() => break,
                Some(interval) => {
                    let intended = next_intended;
                    next_intended += interval;
                    intended
                }
            };
            let (kind, index) = worker.next();
            let write = matches!(kind, OpKind::Update | OpKind::Insert);
            if write && !pipeline.has_room() {
                // Behind a write held up (its group held by a migration,
                // say): it waits for room, and reads go on meanwhile.
                writes_due.push((kind, index, started));
                continue;
            }
            next_token += 1;
            match submit(&mut pipeline, worker, next_token, index, write) {
                Ok(()) => {
                    pending.insert(next_token, (kind, index, started, false));
                }
                Err(error) => worker.record(kind, started, Err(error)),
            }
        }
        if let Some(_interval) = pace {
            let until_next = next_intended.saturating_duration_since(Instant::now());
            let _ = pipeline.set_poll_timeout(until_next.min(Duration::from_millis(50)));
        }
        if let Err(error) = pipeline.poll(&mut completed) {
            worker.record(OpKind::Read, Instant::now(), Err(error));
        }
        for completion in completed.drain(..) {
            let Some((kind, index, started, read_done)) = pending.remove(&completion.token) else {
                continue;
            };
            let result = completion.result.and_then(|reply| match reply.status {
                Status::Ok | Status::NotFound => Ok(()),
                status => Err(ClientError::Refused { status }),
            });
            if kind == OpKind::ReadModifyWrite && !read_done && result.is_ok() {
                writes_due.push((kind, index, started));
            } else {
                worker.record(kind, started, result);
            }
        }
    }
}

/// Writes records 0..keys once, spread over the clients.
fn load(args: &BenchArgs, map: Option<&ClusterMap>) -> Result<()> {
    let value = vec![b'v'; args.value_size];
    let loaders: Vec<_> = (0..args.clients as u64)
        .map(|worker| {
            let mut connection = connect(args, map, false)?;
            let (value, keys, clients, key_size) =
                (value.clone(), args.keys, args.clients as u64, args.key_size);
            Ok(std::thread::spawn(move || -> Result<(), ClientError> {
                let mut key = Vec::new();
                for index in (worker..keys).step_by(clients as usize) {
                    write_key_name(index, key_size, &mut key);
                    blocking_op(&mut connection, OpKind::Insert, &key, &value)?;
                }
                Ok(())
            }))
        })
        .collect::<Result<_>>()?;
    for loader in loaders {
        loader
            .join()
            .map_err(|_| anyhow::anyhow!("a loader thread panicked"))?
            .context("load phase")?;
    }
    Ok(())
}

/// Runs the workload of `args` (against the cluster `map` for the Tern driver).
pub fn run(map: Option<&ClusterMap>, args: &BenchArgs) -> Result<BenchReport> {
    if args.clients == 0 || args.keys == 0 {
        bail!("need at least one client and one record");
    }
    if !(0.0..=1.0).contains(&args.read_fraction) {
        bail!("--read-fraction must be between 0 and 1");
    }
    let mix = Mix::of(args.workload, args.read_fraction, args.distribution)
        .map_err(anyhow::Error::msg)?;
    if args.driver == Driver::Resp && (args.rate.is_some() || args.pipeline > 1) {
        bail!(
            "the RESP driver runs closed loop with one request per client (no --rate, no --pipeline)"
        );
    }
    if !args.no_load {
        load(args, map)?;
    }
    let use_pipeline = args.driver == Driver::Tern && (args.pipeline > 1 || args.rate.is_some());
    // Open loop keeps up to 16 requests in flight per client unless told.
    let depth = if args.rate.is_some() && args.pipeline == 1 {
        PIPELINE_DEPTH_MAX
    } else {
        usize::from(args.pipeline)
    };
    let pace = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.clients as f64 / rate.max(1) as f64));
    let keys = Arc::new(Keys::new(args.keys, mix.distribution));
    let running = Arc::new(AtomicBool::new(true));
    let completed = Arc::new(AtomicU64::new(0));
    let start_line = Arc::new(Barrier::new(args.clients + 1));
    let run_start = Arc::new(std::sync::OnceLock::new());
    let mut workers = Vec::new();
    for index in 0..args.clients {
        let connection = connect(args, map, use_pipeline)?;
        let (running, completed, start_line, run_start) = (
            running.clone(),
            completed.clone(),
            start_line.clone(),
            run_start.clone(),
        );
        let (keys, args) = (keys.clone(), args.clone());
        workers.push(std::thread::spawn(move || {
            start_line.wait();
            let started: Instant = *run_start.get().expect("set before the start line opens");
            let mut worker = Worker {
                random: SmallRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) + index as u64),
                mix,
                keys,
                key_size: args.key_size,
                value: vec![b'v'; args.value_size],
                key: Vec::new(),
                recorder: Recorder::new(started, args.interval),
                completed,
            };
            match connection {
                Connection::Pipelined(pipeline) => {
                    pipelined(pipeline, depth, &mut worker, &running, pace)
                }
                connection => closed_loop(connection, &mut worker, &running),
            }
            worker.recorder
        }));
    }
    let started = Instant::now();
    run_start.set(started).expect("set once");
    start_line.wait();
    let progress = std::io::stderr().is_terminal();
    let mut last = (started, 0);
    while started.elapsed() < args.duration {
        let step = (args.duration - started.elapsed()).min(Duration::from_secs(1));
        std::thread::sleep(step);
        if progress {
            let done = completed.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            let fraction = (started.elapsed().as_secs_f64() / args.duration.as_secs_f64()).min(1.0);
            let filled = (fraction * 30.0).round() as usize;
            eprint!(
                "\r  [{}{}] {:>5.1}s / {:.0}s  {:>10.0} ops/s  {} ops ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                started.elapsed().as_secs_f64(),
                args.duration.as_secs_f64(),
                rate,
                done
            );
            last = (Instant::now(), done);
        }
    }
    running.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    if progress {
        eprintln!();
    }
    let mut total = Recorder::new(started, args.interval);
    for worker in workers {
        total.merge(
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?,
        );
    }
    let report = BenchReport::build(args, mix, elapsed, total);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::plot::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
