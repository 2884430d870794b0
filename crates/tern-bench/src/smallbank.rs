//! `tern bench smallbank`: DINT's SmallBank mix as optimistic transactions
//! (`Client::transact`), scaled to this machine.
//!
//! Each account has a checking and a savings balance (integer cents, both
//! starting at 10 000), kept under one `{hash tag}` so that an account is
//! of one shard; transactions of two accounts (Amalgamate, SendPayment)
//! cross shards when the accounts do. The mix (DINT's
//! `smallbank/caladan/smallbank.h`): Amalgamate 15, Balance 15,
//! DepositChecking 15, SendPayment 25, TransactSaving 15, WriteCheck 15;
//! `--hot-fraction` of the transactions pick their accounts among the
//! `--hot` first ones. Reported: committed and attempted transactions per
//! second (an attempt is a run of a transaction's body: a conflict runs it
//! again), conflicts by cause, p50/p99 per transaction type. With
//! `--verify` the ledger is checked at the end: the sum of every balance
//! is the start plus every committed deposit less every committed check.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tern_client::{Client, ClientError, ClientOptions, ClusterMap, Pipeline, Request};

/// Cents on every balance at the start.
pub const START_CENTS: i64 = 10_000;

#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct SmallbankArgs {
    /// Accounts (each two keys: checking and savings).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Accounts in the hot set (the first ones).
    #[arg(long, default_value_t = 400)]
    pub hot: u64,
    /// Share of transactions whose accounts come from the hot set.
    #[arg(long, default_value_t = 0.9)]
    pub hot_fraction: f64,
    /// Concurrent clients (threads, one transaction outstanding each).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Run before the measured part (not counted).
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Skip loading the accounts (a cluster loaded before).
    #[arg(long)]
    pub no_load: bool,
    /// Check the ledger at the end (reads every balance).
    #[arg(long)]
    pub verify: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A SmallBank transaction type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Kind {
    Amalgamate,
    Balance,
    DepositChecking,
    SendPayment,
    TransactSaving,
    WriteCheck,
}

impl Kind {
    const ALL: [(Kind, u32); 6] = [
        (Kind::Amalgamate, 15),
        (Kind::Balance, 15),
        (Kind::DepositChecking, 15),
        (Kind::SendPayment, 25),
        (Kind::TransactSaving, 15),
        (Kind::WriteCheck, 15),
    ];

    fn pick(random: &mut SmallRng) -> Kind {
        let mut roll = random.random_range(0..100);
        for (kind, share) in Kind::ALL {
            if roll < share {
                return kind;
            }
            roll -= share;
        }
        unreachable!("the shares add up to 100")
    }
}

fn checking(account: u64) -> Vec<u8> {
    format!("{{sb{account}}}c").into_bytes()
}

fn savings(account: u64) -> Vec<u8> {
    format!("{{sb{account}}}s").into_bytes()
}

fn cents(value: Option<Vec<u8>>) -> Result<i64, ClientError> {
    let value = value.ok_or(ClientError::Refused {
        status: tern_wire::Status::NotFound,
    })?;
    std::str::from_utf8(&value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ClientError::NotInteger)
}

fn text(amount: i64) -> Vec<u8> {
    amount.to_string().into_bytes()
}

/// One type's figures.
#[derive(Clone, Debug, Serialize)]
pub struct KindReport {
    pub kind: Kind,
    pub committed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// A run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct SmallbankReport {
    pub config: SmallbankArgs,
    pub elapsed_s: f64,
    pub committed: u64,
    /// Runs of transaction bodies (committed ones and conflicts).
    pub attempted: u64,
    pub committed_per_s: f64,
    pub attempted_per_s: f64,
    /// Commits refused because a version read had changed.
    pub conflicts_changed: u64,
    /// Commits refused because another transaction held a key.
    pub conflicts_locked: u64,
    /// Transactions that failed (timeouts, gave up after conflicts).
    pub failed: u64,
    pub kinds: Vec<KindReport>,
    /// With `--verify`: the ledger held (None: not checked).
    pub ledger_ok: Option<bool>,
}

impl SmallbankReport {
    pub fn print(&self) {
        if self.config.json {
            println!(
                "{}",
                serde_json::to_string_pretty(self).expect("a report serializes")
            );
            return;
        }
        println!(
            "smallbank: {} accounts ({} hot, {:.0}% of transactions), {} clients, {:.1} s",
            self.config.accounts,
            self.config.hot,
            self.config.hot_fraction * 100.0,
            self.config.clients,
            self.elapsed_s
        );
        println!(
            "committed {:.0}/s ({}), attempted {:.0}/s ({}); conflicts: {} changed, {} locked; failed {}",
            self.committed_per_s,
            self.committed,
            self.attempted_per_s,
            self.attempted,
            self.conflicts_changed,
            self.conflicts_locked,
            self.failed
        );
        for kind in &self.kinds {
            println!(
                "  {:<16} {:>8} committed  p50 {:>6} us  p99 {:>6} us",
                format!("{:?}", kind.kind),
                kind.committed,
                kind.p50_us,
                kind.p99_us
            );
        }
        if let Some(ok) = self.ledger_ok {
            println!("ledger: {}", if ok { "holds" } else { "BROKEN" });
        }
    }
}

/// Writes every account's two balances, many at once.
pub fn load(map: &ClusterMap, accounts: u64) -> Result<()> {
    let mut pipeline = Pipeline::new(map.clone(), ClientOptions::default())?;
    let start = text(START_CENTS);
    pipeline.for_each_key(&every_key(accounts), Request::Put(&start), |_, _| Ok(()))?;
    Ok(())
}

fn every_key(accounts: u64) -> Vec<Vec<u8>> {
    (0..accounts)
        .flat_map(|account| [checking(account), savings(account)])
        .collect()
}

/// What one client did.
struct Tally {
    committed: BTreeMap<Kind, Histogram<u64>>,
    attempted: u64,
    failed: u64,
    changed: u64,
    locked: u64,
    /// Money that entered (deposits) less money that left (checks), in
    /// committed transactions.
    net: i64,
}

fn account(random: &mut SmallRng, args: &SmallbankArgs) -> u64 {
    if random.random_bool(args.hot_fraction.clamp(0.0, 1.0)) {
        random.random_range(0..args.hot.clamp(1, args.accounts))
    } else {
        random.random_range(args.hot.min(args.accounts - 1)..args.accounts)
    }
}

/// Runs one transaction of `kind`; the money it brought in (or took out).
fn run_one(
    client: &mut Client,
    kind: Kind,
    random: &mut SmallRng,
    args: &SmallbankArgs,
    runs: &mut u64,
) -> Result<i64, ClientError> {
    let a = account(random, args);
    let mut b = account(random, args);
    while b == a {
        b = account(random, args);
    }
    let amount = random.random_range(1..=100);
    let done = client.transact(|tx| {
        *runs += 1;
        Ok(match kind {
            Kind::Amalgamate => {
                let saved = cents(tx.get(&savings(a))?)?;
                let checked = cents(tx.get(&checking(a))?)?;
                let other = cents(tx.get(&checking(b))?)?;
                tx.put(&savings(a), &text(0));
                tx.put(&checking(a), &text(0));
                tx.put(&checking(b), &text(other + saved + checked));
                0
            }
            Kind::Balance => {
                cents(tx.get(&savings(a))?)?;
                cents(tx.get(&checking(a))?)?;
                0
            }
            Kind::DepositChecking => {
                let checked = cents(tx.get(&checking(a))?)?;
                tx.put(&checking(a), &text(checked + amount));
                amount
            }
            Kind::SendPayment => {
                let from = cents(tx.get(&checking(a))?)?;
                let to = cents(tx.get(&checking(b))?)?;
                if from >= amount {
                    tx.put(&checking(a), &text(from - amount));
                    tx.put(&checking(b), &text(to + amount));
                }
                0
            }
            Kind::TransactSaving => {
                let saved = cents(tx.get(&savings(a))?)?;
                tx.put(&savings(a), &text(saved + amount));
                amount
            }
            Kind::WriteCheck => {
                let saved = cents(tx.get(&savings(a))?)?;
                let checked = cents(tx.get(&checking(a))?)?;
                // An overdraft costs a cent more.
                let taken = if saved + checked < amount {
                    amount + 1
                } else {
                    amount
                };
                tx.put(&checking(a), &text(checked - taken));
                -taken
            }
        })
    })?;
    Ok(done.value)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn client_loop(
    map: &ClusterMap,
    args: &SmallbankArgs,
    seed: u64,
    measure_from: Instant,
    until: Instant,
) -> Result<Tally> {
    let mut client = Client::new(map.clone())?;
    let mut random = SmallRng::seed_from_u64(seed);
    let mut tally = Tally {
        committed: BTreeMap::new(),
        attempted: 0,
        failed: 0,
        changed: 0,
        locked: 0,
        net: 0,
    };
    let before = client.counters();
    let mut counted_from = None;
    while Instant::now() < until {
        let kind = Kind::pick(&mut random);
        let started = Instant::now();
        let measured = started >= measure_from;
        if measured && counted_from.is_none() {
            counted_from = Some(client.counters());
        }
        let mut runs = 0;
        let result = run_one(&mut client, kind, &mut random, args, &mut runs);
        if let Ok(net) = result {
            // Every committed transaction counts in the ledger.
            tally.net += net;
        }
        if !measured {
            continue;
        }
        tally.attempted += runs;
        match result {
            Ok(_) => {
                let took = started.elapsed().as_micros() as u64;
                tally
                    .committed
                    .entry(kind)
                    .or_insert_with(histogram)
                    .saturating_record(took.max(1));
            }
            Err(_) => tally.failed += 1,
        }
    }
    let after = client.counters();
    let from = counted_from.unwrap_or(before);
    tally.changed = after.txn_changed - from.txn_changed;
    tally.locked = after.txn_locked - from.txn_locked;
    Ok(tally)
}

/// Runs the mix (loading the accounts first unless `--no-load`).
pub fn run(map: &ClusterMap, args: &SmallbankArgs) -> Result<SmallbankReport> {
    if args.accounts < 2 || args.clients == 0 {
        bail!("SmallBank needs at least two accounts and one client");
    }
    if !args.no_load {
        load(map, args.accounts)?;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let until = measure_from + args.duration;
    let threads: Vec<_> = (0..args.clients)
        .map(|index| {
            let (map, args) = (map.clone(), args.clone());
            std::thread::spawn(move || {
                client_loop(
                    &map,
                    &args,
                    seed.wrapping_add(index as u64),
                    measure_from,
                    until,
                )
            })
        })
        .collect();
    let mut kinds: BTreeMap<Kind, Histogram<u64>> = BTreeMap::new();
    let (mut attempted, mut failed, mut changed, mut locked, mut net) = (0, 0, 0, 0, 0);
    for thread in threads {
        let tally = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        for (kind, histogram) in tally.committed {
            kinds
                .entry(kind)
                .or_insert_with(self::histogram)
                .add(histogram)?;
        }
        attempted += tally.attempted;
        failed += tally.failed;
        changed += tally.changed;
        locked += tally.locked;
        net += tally.net;
    }
    let elapsed_s = args.duration.as_secs_f64();
    let committed: u64 = kinds.values().map(Histogram::len).sum();
    let ledger_ok = match args.verify {
        true => Some(ledger(map, args.accounts)? == 2 * START_CENTS * args.accounts as i64 + net),
        false => None,
    };
    Ok(SmallbankReport {
        config: args.clone(),
        elapsed_s,
        committed,
        attempted,
        committed_per_s: committed as f64 / elapsed_s,
        attempted_per_s: attempted as f64 / elapsed_s,
        conflicts_changed: changed,
        conflicts_locked: locked,
        failed,
        kinds: kinds
            .into_iter()
            .map(|(kind, histogram)| KindReport {
                kind,
                committed: histogram.len(),
                p50_us: histogram.value_at_quantile(0.5),
                p99_us: histogram.value_at_quantile(0.99),
            })
            .collect(),
        ledger_ok,
    })
}

/// The sum of every balance, read many at once (after the run: nothing
/// changes meanwhile).
fn ledger(map: &ClusterMap, accounts: u64) -> Result<i64> {
    let mut pipeline = Pipeline::new(map.clone(), ClientOptions::default())?;
    let mut total = 0i64;
    pipeline.for_each_key(&every_key(accounts), Request::Get, |_, reply| {
        total += cents(Some(reply.value))?;
        Ok(())
    })?;
    Ok(total)
}
