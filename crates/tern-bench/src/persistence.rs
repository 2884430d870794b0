//! Measurements of the replica log: append throughput with and without group
//! commit (`tern bench log`), and recovery time (`tern bench recovery`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tern_proto::Outbox;
use tern_proto::replica::ReplicaConfig;
use tern_store::log::{self, LogWriter};
use tern_wire::{Effect, Header, Op, Status, key_hash};

/// Options of `tern bench log`.
#[derive(Clone, Debug, clap::Args)]
pub struct LogBenchArgs {
    /// Records appended per run.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Value size of each record's write, in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Records per fdatasync to compare (1 is one sync per write).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub batches: Vec<u64>,
    /// Rounds; batch sizes alternate within each round.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Directory for the logs (default: a temporary one under the system's).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of `tern bench recovery`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecoveryBenchArgs {
    /// Distinct keys written once each.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn replica_config() -> ReplicaConfig {
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
    ReplicaConfig {
        shard: 0,
        epoch: 1,
        chain: vec![address],
        position: 0,
        coordinator: address,
        early_commit: 0,
        fanout: false,
    }
}

/// A record as a replica writes it: the REPLICATE datagram of a PUT.
fn record(seq: u64, value: &[u8], out: &mut Outbox) {
    let key = format!("key:{seq:012}");
    let mut header = Header::new(Op::Replicate, 0, 1);
    header.seq.set(seq);
    header.key_hash.set(key_hash(key.as_bytes()));
    header.effect = Effect::Put as u8;
    header.status = Status::Ok as u8;
    header.set_version(seq);
    out.journal_push(seq, &header, &Default::default(), key.as_bytes(), value);
}

fn scratch_dir(base: &Option<PathBuf>) -> Result<tempfile::TempDir> {
    match base {
        Some(base) => {
            std::fs::create_dir_all(base)?;
            tempfile::tempdir_in(base).context("creating a directory for the log")
        }
        None => tempfile::tempdir().context("creating a directory for the log"),
    }
}

/// Appends `records` records to a fresh log in `dir`, syncing every `batch`.
fn append_run(dir: &Path, records: u64, batch: u64, value: &[u8]) -> Result<(Duration, u64)> {
    let mut writer = LogWriter::open(dir, 1)?;
    let mut outbox = Outbox::new();
    let started = Instant::now();
    let mut bytes = 0;
    for seq in 1..=records {
        record(seq, value, &mut outbox);
        if seq % batch == 0 || seq == records {
            for (seq, payload) in outbox.journal() {
                bytes += (payload.len() + log::RECORD_HEADER_LEN) as u64;
                writer.append(seq, payload);
            }
            outbox.clear();
            writer.write()?;
            writer.sync()?;
        }
    }
    Ok((started.elapsed(), bytes))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run_log(args: &LogBenchArgs) -> Result<()> {
    if args.batches.is_empty() || args.batches.contains(&0) || args.records == 0 || args.repeat == 0
    {
        bail!("need at least one record, one round and batch sizes of 1 or more");
    }
    let value = vec![b'v'; args.value_size];
    println!(
        "log append: {} records of a {}-byte PUT per run, fdatasync every {:?} records, {} rounds",
        args.records, args.value_size, args.batches, args.repeat
    );
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); args.batches.len()];
    for round in 1..=args.repeat {
        for (index, batch) in args.batches.iter().enumerate() {
            let dir = scratch_dir(&args.dir)?;
            let (elapsed, bytes) = append_run(dir.path(), args.records, *batch, &value)?;
            let megabytes = bytes as f64 / 1e6 / elapsed.as_secs_f64();
            let records = args.records as f64 / elapsed.as_secs_f64();
            println!(
                "round {round} batch {batch:>4}: {records:>10.0} records/s {megabytes:>8.2} MB/s"
            );
            rates[index].push((records, megabytes));
        }
    }
    let base = median(&mut rates[0].iter().map(|r| r.0).collect::<Vec<_>>());
    for (batch, runs) in args.batches.iter().zip(&rates) {
        let records = median(&mut runs.iter().map(|r| r.0).collect::<Vec<_>>());
        let megabytes = median(&mut runs.iter().map(|r| r.1).collect::<Vec<_>>());
        println!(
            "batch {batch:>4}: median {records:>10.0} records/s {megabytes:>8.2} MB/s ({:.1}x batch {})",
            records / base,
            args.batches[0]
        );
    }
    Ok(())
}

pub fn run_recovery(args: &RecoveryBenchArgs) -> Result<()> {
    let dir = scratch_dir(&args.dir)?;
    let value = vec![b'v'; args.value_size];
    let (elapsed, bytes) = append_run(dir.path(), args.keys, 4096, &value)?;
    println!(
        "log of {} keys ({:.1} MB) written in {:.2}s",
        args.keys,
        bytes as f64 / 1e6,
        elapsed.as_secs_f64()
    );

    let started = Instant::now();
    let recovered = tern_server::recover_replica(replica_config(), dir.path())?;
    let (replica, report) = (recovered.replica, recovered.replay);
    let from_log = started.elapsed();
    println!(
        "recovery from the log alone: {} records in {:.2}s ({:.0} records/s), {} live keys",
        report.records,
        from_log.as_secs_f64(),
        report.records as f64 / from_log.as_secs_f64(),
        replica.store().live_keys()
    );

    let started = Instant::now();
    let mut writer = LogWriter::open(dir.path(), replica.store().applied_seq() + 1)?;
    let (seq, snapshot) = replica.snapshot();
    writer.snapshot(seq, &snapshot)?;
    println!(
        "snapshot of {:.1} MB written in {:.2}s (older log removed: {:.1} MB left on disk)",
        snapshot.len() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        log::disk_bytes(dir.path())? as f64 / 1e6
    );
    drop(replica);
    let started = Instant::now();
    let recovered = tern_server::recover_replica(replica_config(), dir.path())?;
    let (restored, report) = (recovered.replica, recovered.replay);
    println!(
        "recovery from the snapshot: {} keys in {:.2}s (+{} log records)",
        restored.store().live_keys(),
        started.elapsed().as_secs_f64(),
        report.records
    );
    Ok(())
}
