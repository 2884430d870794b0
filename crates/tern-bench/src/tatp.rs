//! `tern bench tatp`: the TATP mix (as DINT runs it,
//! `tatp/caladan/tatp.h`), scaled to this machine.
//!
//! Each subscriber has a subscriber row, 1-4 access-info rows, 1-4
//! special-facility rows (85% active) and 0-3 call-forwarding rows per
//! facility, all under one `{hash tag}`: every transaction is of one shard
//! (as DINT places a subscriber's rows on one primary). Subscriber ids are
//! drawn with NURand (A = 65535). The mix: GetSubscriberData 35 and
//! GetAccessData 35 (one key, a plain linearizable GET), GetNewDestination
//! 10 (a read-only transaction), UpdateSubscriberData 2, UpdateLocation 14,
//! InsertCallForwarding 2, DeleteCallForwarding 2 (optimistic transactions
//! through `Client::transact`). A read that finds no row is a committed
//! transaction, as in TATP.

use std::sync::Arc;

use anyhow::{Result, bail};
use rand::RngExt;
use rand::rngs::SmallRng;
use serde::Serialize;
use tern_client::{Client, ClientError, ClientOptions, ClusterMap, Pipeline, Request};

use crate::mix::{Mix, MixArgs, MixReport, run_mix};

#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct TatpArgs {
    /// Subscribers (each with its access-info, facility and forwarding rows).
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: u64,
    #[command(flatten)]
    pub mix: MixArgs,
    /// Skip loading the rows (a cluster loaded before).
    #[arg(long)]
    pub no_load: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The TATP transaction types, by `Mix` index, with their shares.
pub const KINDS: &[(&str, u32)] = &[
    ("GetSubscriberData", 35),
    ("GetAccessData", 35),
    ("GetNewDestination", 10),
    ("UpdateSubscriberData", 2),
    ("UpdateLocation", 14),
    ("InsertCallForwarding", 2),
    ("DeleteCallForwarding", 2),
];
/// NURand's A for up to a million subscribers.
const NURAND_A: u64 = 65_535;
/// Call forwarding start times.
const STARTS: [u64; 3] = [0, 8, 16];

fn subscriber(s: u64) -> Vec<u8> {
    format!("{{t{s}}}sub").into_bytes()
}

fn access_info(s: u64, kind: u64) -> Vec<u8> {
    format!("{{t{s}}}ai{kind}").into_bytes()
}

fn facility(s: u64, kind: u64) -> Vec<u8> {
    format!("{{t{s}}}sf{kind}").into_bytes()
}

fn forwarding(s: u64, kind: u64, start: u64) -> Vec<u8> {
    format!("{{t{s}}}cf{kind}.{start}").into_bytes()
}

/// A row's value: `text` padded to TATP's 40 bytes.
fn row(text: &str) -> Vec<u8> {
    format!("{text:<40}").into_bytes()
}

/// How many rows of a kind a subscriber has (1 + hash % spread), the
/// same at load and never needed at run time.
fn rows_of(s: u64, salt: u64, spread: u64) -> u64 {
    let mixed = (s ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 33) % spread
}

/// Every row of every subscriber, by the value it starts with.
fn rows(subscribers: u64) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
    let (mut subs, mut infos, mut active, mut idle, mut forwards) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in 0..subscribers {
        subs.push(subscriber(s));
        for kind in 1..=1 + rows_of(s, 1, 4) {
            infos.push(access_info(s, kind));
        }
        for kind in 1..=1 + rows_of(s, 2, 4) {
            if rows_of(s + kind, 3, 100) < 85 {
                active.push(facility(s, kind));
            } else {
                idle.push(facility(s, kind));
            }
            for start in STARTS.iter().take(rows_of(s + kind, 4, 4) as usize) {
                forwards.push(forwarding(s, kind, *start));
            }
        }
    }
    vec![
        (row("location 0"), subs),
        (row("data"), infos),
        (row("1 active"), active),
        (row("0 idle"), idle),
        (row("number 0"), forwards),
    ]
}

/// Writes every row, many at once.
pub fn load(map: &ClusterMap, subscribers: u64) -> Result<()> {
    let mut pipeline = Pipeline::new(map.clone(), ClientOptions::default())?;
    for (value, keys) in rows(subscribers) {
        pipeline.for_each_key(&keys, Request::Put(&value), |_, _| Ok(()))?;
    }
    Ok(())
}

struct Tatp {
    subscribers: u64,
    mode: tern_client::TxnMode,
}

impl Tatp {
    /// NURand(A, 0, subscribers - 1).
    fn subscriber(&self, random: &mut SmallRng) -> u64 {
        let n = self.subscribers;
        ((random.random_range(0..=NURAND_A) | random.random_range(0..n)) + 7) % n
    }
}

impl Mix for Tatp {
    fn kinds(&self) -> &'static [(&'static str, u32)] {
        KINDS
    }

    fn run(
        &self,
        kind: usize,
        client: &mut Client,
        random: &mut SmallRng,
        runs: &mut u64,
    ) -> Result<i64, ClientError> {
        let s = self.subscriber(random);
        let facility_kind = random.random_range(1..=4);
        let start = STARTS[random.random_range(0..STARTS.len())];
        let location = random.random_range(0..u32::MAX);
        let result = match kind {
            0 => client.get(&subscriber(s)).map(|_| 0),
            1 => client
                .get(&access_info(s, random.random_range(1..=4)))
                .map(|_| 0),
            _ => client
                .transact(self.mode, |tx| {
                    *runs += 1;
                    match kind {
                        // GetNewDestination
                        2 => {
                            let active = tx
                                .get(&facility(s, facility_kind))?
                                .is_some_and(|value| value.first() == Some(&b'1'));
                            if active {
                                for &at in STARTS.iter().filter(|&&at| at <= start) {
                                    tx.get(&forwarding(s, facility_kind, at))?;
                                }
                            }
                        }
                        // UpdateSubscriberData
                        3 => {
                            tx.get_for_update(&subscriber(s))?;
                            tx.put(&subscriber(s), &row(&format!("bit {location}")));
                            if tx.get_for_update(&facility(s, facility_kind))?.is_some() {
                                let data = row(&format!("1 data {location}"));
                                tx.put(&facility(s, facility_kind), &data);
                            }
                        }
                        // UpdateLocation
                        4 => {
                            tx.get_for_update(&subscriber(s))?;
                            tx.put(&subscriber(s), &row(&format!("location {location}")));
                        }
                        // InsertCallForwarding
                        5 => {
                            let key = forwarding(s, facility_kind, start);
                            if tx.get(&facility(s, facility_kind))?.is_some()
                                && tx.get_for_update(&key)?.is_none()
                            {
                                tx.put(&key, &row(&format!("number {location}")));
                            }
                        }
                        // DeleteCallForwarding
                        _ => {
                            let key = forwarding(s, facility_kind, start);
                            if tx.get_for_update(&key)?.is_some() {
                                tx.delete(&key);
                            }
                        }
                    }
                    Ok(0)
                })
                .map(|done| done.value),
        };
        if kind < 2 {
            *runs += 1;
        }
        result
    }
}

/// A run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct TatpReport {
    pub config: TatpArgs,
    pub mix: MixReport,
}

impl TatpReport {
    pub fn print(&self) {
        if self.config.json {
            println!(
                "{}",
                serde_json::to_string_pretty(self).expect("a report serializes")
            );
            return;
        }
        println!(
            "tatp: {} subscribers, {} clients, {:?}, {:.1} s",
            self.config.subscribers,
            self.config.mix.clients,
            self.config.mix.txn_mode,
            self.mix.elapsed_s
        );
        self.mix.print();
    }
}

/// Runs the mix (loading the rows first unless `--no-load`).
pub fn run(map: &ClusterMap, args: &TatpArgs) -> Result<TatpReport> {
    if args.subscribers == 0 || args.mix.clients == 0 {
        bail!("TATP needs at least one subscriber and one client");
    }
    if !args.no_load {
        load(map, args.subscribers)?;
    }
    let mix = Arc::new(Tatp {
        subscribers: args.subscribers,
        mode: args.mix.mode(),
    });
    Ok(TatpReport {
        config: args.clone(),
        mix: run_mix(map, &args.mix, mix)?,
    })
}
