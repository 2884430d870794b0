//! The transactional side of `tern chaos`: the bank workload (transfers and
//! audits across shards under every fault, `--workload bank`), the fault
//! of a client process killed at a random point of a transaction across
//! shards (`kill-client`: a `tern txn` writing both keys of a pair, one per
//! shard, SIGKILLed after a random delay), and the checks after the run:
//! every pair whole (both keys written by one transaction, or neither),
//! and every hold and lock released within a lease and 2 s of the last
//! fault.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_client::{Client, ClientOptions, ClusterMap, TxnMode};
use tern_wire::key_hash;
use tern_wire::txn::LEASE_MS_DEFAULT;

use crate::bank::{self, Ended, History};

/// Pairs the killed clients write.
const PAIRS: usize = 4;
/// Accounts of the bank workload, spread over the shards.
pub const ACCOUNTS: usize = 8;

/// The pairs: each a key of the first shard and one of another.
pub fn pairs(map: &ClusterMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    let shard_of = |key: &[u8]| map.shard_of_key_hash(key_hash(key)).id;
    let first = map.shards[0].id;
    let here = (0..)
        .map(|n| format!("pair/x{n}").into_bytes())
        .filter(|key| shard_of(key) == first);
    let there = (0..)
        .map(|n| format!("pair/y{n}").into_bytes())
        .filter(|key| shard_of(key) != first);
    here.zip(there).take(PAIRS).collect()
}

/// Kills clients in the middle of their transactions.
#[derive(Debug)]
pub struct ClientKiller {
    cluster: std::path::PathBuf,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// How long a whole `tern txn` takes here, measured once.
    lifetime: Duration,
    next: u64,
    pub killed: u64,
    pub finished: u64,
}

impl ClientKiller {
    /// Measures a client's lifetime by running one transaction of each
    /// pair to the end (so every pair starts whole and written).
    pub fn new(dir: &Path, map: &ClusterMap) -> Result<ClientKiller> {
        let mut killer = ClientKiller {
            cluster: dir.join("cluster.toml"),
            pairs: pairs(map),
            lifetime: Duration::ZERO,
            next: 0,
            killed: 0,
            finished: 0,
        };
        let mut longest = Duration::ZERO;
        for index in 0..killer.pairs.len() {
            let started = Instant::now();
            let mut child = killer.spawn(index)?;
            let status = child.wait()?;
            if !status.success() {
                bail!("tern txn on pair {index} failed: {status}");
            }
            longest = longest.max(started.elapsed());
        }
        killer.lifetime = longest;
        Ok(killer)
    }

    fn spawn(&mut self, index: usize) -> Result<std::process::Child> {
        self.next += 1;
        let value = format!("w{}", self.next);
        let (x, y) = &self.pairs[index];
        let text = |key: &[u8]| String::from_utf8(key.to_vec()).expect("pair keys are text");
        Command::new(std::env::current_exe()?)
            .arg("--cluster")
            .arg(&self.cluster)
            .args(["txn", "put", &text(x), &value, "put", &text(y), &value])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a tern txn client")
    }

    /// Starts a client writing a random pair and SIGKILLs it at a random
    /// point of its life (the later half, where its transaction runs, more
    /// often). The target's description.
    pub fn strike(&mut self, random: &mut SmallRng) -> Result<String> {
        let index = random.random_range(0..self.pairs.len());
        let mut child = self.spawn(index)?;
        let lifetime = self.lifetime.as_micros() as u64;
        let at = Duration::from_micros(random.random_range(lifetime / 3..=lifetime.max(1)));
        std::thread::sleep(at);
        match child.try_wait()? {
            Some(_) => self.finished += 1,
            None => {
                child.kill()?;
                child.wait()?;
                self.killed += 1;
            }
        }
        Ok(format!("a client writing pair {index}, after {at:?}"))
    }
}

/// Pairs written by halves (one key without the other, or two values):
/// must be none.
pub fn torn_pairs(map: &ClusterMap) -> Result<Vec<String>> {
    let mut client = patient(map)?;
    let mut torn = Vec::new();
    for (x, y) in pairs(map) {
        let read = client.transact(tern_client::TxnMode::Optimistic, |tx| {
            Ok((tx.get(&x)?, tx.get(&y)?))
        })?;
        let (left, right) = read.value;
        if left != right {
            torn.push(format!(
                "{} = {:?}, {} = {:?}",
                String::from_utf8_lossy(&x),
                left.map(|value| String::from_utf8_lossy(&value).into_owned()),
                String::from_utf8_lossy(&y),
                right.map(|value| String::from_utf8_lossy(&value).into_owned()),
            ));
        }
    }
    Ok(torn)
}

fn patient(map: &ClusterMap) -> Result<Client> {
    let options = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    Ok(Client::with_options(map.clone(), options)?)
}

/// Transactions held at coordinators and locks at replicas, over the
/// whole cluster (meta's newest map).
fn held(map: &ClusterMap) -> Result<u64> {
    let map = tern_client::meta::fetch_map(&map.meta, &mut None)?;
    let mut client = Client::new(map.clone())?;
    let mut total = 0;
    for shard in &map.shards {
        let stats = client.stats(shard.coordinator, shard.id)?;
        total += counter(&stats, &format!("shard{}.txn_held", shard.id.get()));
        for replica in &shard.replicas {
            let stats = client.stats(*replica, shard.id)?;
            total += counter(&stats, "txn_locked_keys") + counter(&stats, "txn_pending");
        }
    }
    Ok(total)
}

/// Transactions the coordinators settled by their lease, committed and
/// aborted (since each coordinator process last started).
pub fn settled_by_lease(map: &ClusterMap) -> Result<(u64, u64)> {
    let map = tern_client::meta::fetch_map(&map.meta, &mut None)?;
    let mut client = Client::new(map.clone())?;
    let mut coordinators: Vec<_> = map
        .shards
        .iter()
        .map(|shard| (shard.coordinator, shard.id))
        .collect();
    coordinators.dedup_by_key(|(address, _)| *address);
    let (mut committed, mut aborted) = (0, 0);
    for (address, shard) in coordinators {
        let stats = client.stats(address, shard)?;
        committed += counter(&stats, "txn_settled_committed");
        aborted += counter(&stats, "txn_settled_aborted");
    }
    Ok((committed, aborted))
}

fn counter(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// How long after `since` every hold and lock was gone (polled), or an
/// error once a lease and 2 s have passed with some left.
pub fn settled_within(map: &ClusterMap, since: Instant) -> Result<Duration> {
    let allowed = Duration::from_millis(u64::from(LEASE_MS_DEFAULT)) + Duration::from_secs(2);
    loop {
        // A process may be answering slowly right after a fault: asked
        // again until the allowance is spent.
        if let Ok(0) = held(map) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > allowed {
            let left = held(map).unwrap_or(u64::MAX);
            bail!("{left} transaction holds and locks left {allowed:?} after the last fault");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the bank's clients did.
#[derive(Debug, Default)]
pub struct BankTally {
    pub transfers: u64,
    pub in_doubt: u64,
    pub conflicted: u64,
    pub audits: u64,
    /// Audits that committed with another total: must be none.
    pub wrong_totals: Vec<i64>,
    /// When each transaction committed.
    pub successes: Vec<Instant>,
}

/// The bank's clients: transfers (80%) and audits (20%) until `running`
/// is cleared, failures under faults recorded as in doubt.
pub fn start_bank(
    map: &ClusterMap,
    accounts: &Arc<Vec<Vec<u8>>>,
    history: &History,
    running: &Arc<AtomicBool>,
    clients: usize,
    seed: u64,
) -> Result<Vec<std::thread::JoinHandle<BankTally>>> {
    let start_line = Arc::new(Barrier::new(clients));
    let expected = bank::START * accounts.len() as i64;
    (0..clients)
        .map(|worker| {
            let mut client = crate::chaos::recording_client(map)?;
            let (accounts, history, running, start_line) = (
                accounts.clone(),
                history.clone(),
                running.clone(),
                start_line.clone(),
            );
            Ok(std::thread::spawn(move || {
                let mut random =
                    SmallRng::seed_from_u64(seed.wrapping_mul(104_729) + worker as u64);
                let mut tally = BankTally::default();
                // Half the clients lock, half are optimistic: both kinds
                // of transactions meet on the same accounts.
                let mode = match worker % 2 {
                    0 => TxnMode::Optimistic,
                    _ => TxnMode::Locking,
                };
                start_line.wait();
                let mut sequence = 0u64;
                while running.load(Ordering::Relaxed) {
                    sequence += 1;
                    if random.random_range(0..100) < 20 {
                        match bank::audit(&mut client, mode, &history, &accounts, true) {
                            Some(total) if total != expected => tally.wrong_totals.push(total),
                            Some(_) => {
                                tally.audits += 1;
                                tally.successes.push(Instant::now());
                            }
                            None => {}
                        }
                        continue;
                    }
                    let transfer = bank::draw_transfer(&mut random, accounts.len());
                    let tag = format!("c{worker}-{sequence}");
                    match bank::transfer(
                        &mut client,
                        mode,
                        &history,
                        &accounts,
                        transfer,
                        &tag,
                        true,
                    ) {
                        Ended::Committed(_) => {
                            tally.transfers += 1;
                            tally.successes.push(Instant::now());
                        }
                        Ended::InDoubt => tally.in_doubt += 1,
                        Ended::Conflicted => tally.conflicted += 1,
                    }
                }
                tally
            }))
        })
        .collect()
}

/// The bank's total now (after the faults healed), by one audit.
pub fn final_total(map: &ClusterMap, accounts: &[Vec<u8>]) -> Result<i64> {
    let mut client = patient(map)?;
    let history = History::default();
    for _ in 0..10 {
        if let Some(total) = bank::audit(&mut client, TxnMode::Locking, &history, accounts, true) {
            return Ok(total);
        }
    }
    bail!("no audit committed after the faults")
}
