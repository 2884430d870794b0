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

use std::sync::Arc;

use anyhow::{Result, bail};
use rand::RngExt;
use rand::rngs::SmallRng;
use serde::Serialize;
use tern_client::{Client, ClientError, ClientOptions, ClusterMap, Pipeline, Request};

use crate::mix::{Mix, MixArgs, MixReport, run_mix};

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
    #[command(flatten)]
    pub mix: MixArgs,
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

/// The SmallBank transaction types, by `Mix` index, with their shares.
pub const KINDS: &[(&str, u32)] = &[
    ("Amalgamate", 15),
    ("Balance", 15),
    ("DepositChecking", 15),
    ("SendPayment", 25),
    ("TransactSaving", 15),
    ("WriteCheck", 15),
];

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

/// A run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct SmallbankReport {
    pub config: SmallbankArgs,
    pub mix: MixReport,
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
            "smallbank: {} accounts ({} hot, {:.0}% of transactions), {} clients, {:?}, {:.1} s",
            self.config.accounts,
            self.config.hot,
            self.config.hot_fraction * 100.0,
            self.config.mix.clients,
            self.config.mix.txn_mode,
            self.mix.elapsed_s
        );
        self.mix.print();
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

/// The SmallBank mix over `accounts` accounts.
struct Smallbank {
    accounts: u64,
    hot: u64,
    hot_fraction: f64,
    mode: tern_client::TxnMode,
}

impl Smallbank {
    fn account(&self, random: &mut SmallRng) -> u64 {
        if random.random_bool(self.hot_fraction.clamp(0.0, 1.0)) {
            random.random_range(0..self.hot.clamp(1, self.accounts))
        } else {
            random.random_range(self.hot.min(self.accounts - 1)..self.accounts)
        }
    }
}

impl Mix for Smallbank {
    fn kinds(&self) -> &'static [(&'static str, u32)] {
        KINDS
    }

    /// One transaction; the money it brought in (or took out).
    fn run(
        &self,
        kind: usize,
        client: &mut Client,
        random: &mut SmallRng,
        runs: &mut u64,
    ) -> Result<i64, ClientError> {
        let a = self.account(random);
        let mut b = self.account(random);
        while b == a {
            b = self.account(random);
        }
        let amount = random.random_range(1..=100);
        let done = client.transact(self.mode, |tx| {
            *runs += 1;
            Ok(match kind {
                // Amalgamate
                0 => {
                    let saved = cents(tx.get_for_update(&savings(a))?)?;
                    let checked = cents(tx.get_for_update(&checking(a))?)?;
                    let other = cents(tx.get_for_update(&checking(b))?)?;
                    tx.put(&savings(a), &text(0));
                    tx.put(&checking(a), &text(0));
                    tx.put(&checking(b), &text(other + saved + checked));
                    0
                }
                // Balance
                1 => {
                    cents(tx.get(&savings(a))?)?;
                    cents(tx.get(&checking(a))?)?;
                    0
                }
                // DepositChecking
                2 => {
                    let checked = cents(tx.get_for_update(&checking(a))?)?;
                    tx.put(&checking(a), &text(checked + amount));
                    amount
                }
                // SendPayment
                3 => {
                    let from = cents(tx.get_for_update(&checking(a))?)?;
                    let to = cents(tx.get_for_update(&checking(b))?)?;
                    if from >= amount {
                        tx.put(&checking(a), &text(from - amount));
                        tx.put(&checking(b), &text(to + amount));
                    }
                    0
                }
                // TransactSaving
                4 => {
                    let saved = cents(tx.get_for_update(&savings(a))?)?;
                    tx.put(&savings(a), &text(saved + amount));
                    amount
                }
                // WriteCheck: an overdraft costs a cent more.
                _ => {
                    let saved = cents(tx.get(&savings(a))?)?;
                    let checked = cents(tx.get_for_update(&checking(a))?)?;
                    let taken = if saved + checked < amount {
                        amount + 1
                    } else {
                        amount
                    };
                    tx.put(&checking(a), &text(checked - taken));
                    -taken
                }
            })
        });
        done.map(|done| done.value)
    }
}

/// Runs the mix (loading the accounts first unless `--no-load`).
pub fn run(map: &ClusterMap, args: &SmallbankArgs) -> Result<SmallbankReport> {
    if args.accounts < 2 || args.mix.clients == 0 {
        bail!("SmallBank needs at least two accounts and one client");
    }
    if !args.no_load {
        load(map, args.accounts)?;
    }
    let mix = Arc::new(Smallbank {
        accounts: args.accounts,
        hot: args.hot,
        hot_fraction: args.hot_fraction,
        mode: args.mix.mode(),
    });
    let report = run_mix(map, &args.mix, mix)?;
    let ledger_ok = match args.verify {
        true => {
            let expected = 2 * START_CENTS * args.accounts as i64 + report.sum;
            Some(ledger(map, args.accounts)? == expected)
        }
        false => None,
    };
    Ok(SmallbankReport {
        config: args.clone(),
        mix: report,
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
