//! A bank: transfers between accounts (optimistic transactions through
//! `Client::transact`, two-phase commit when the accounts are of two
//! shards) and audits that read every account in one transaction. Shared
//! by the system tests and `tern chaos --workload bank`.
//!
//! Every audit that commits must see the same total. Every transaction is
//! recorded with the versions it read and wrote, and the history must be
//! strictly serializable (`tern_check::check_cycles`). Each write's value
//! carries a tag unique to it (`BALANCE:TAG`), so that a transaction whose
//! outcome its client could not learn (a timeout under faults) is settled
//! by what others read: if anyone read one of its values it committed (a
//! GET never returns an uncommitted value), with the versions read; if
//! nobody did, it is left out, which can hide an anomaly but never invent
//! one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_check::{Transaction, Versioned, check_cycles, check_serial};
use tern_client::txn::Item;
use tern_client::{Client, ClientError, ClusterMap, MultiOutcome, Txn, TxnMode};
use tern_wire::key_hash;

/// Every account's balance at the start.
pub const START: i64 = 100;

/// The shard of `key` by `map`.
pub fn shard_of(map: &ClusterMap, key: &[u8]) -> u32 {
    map.shard_of_key_hash(key_hash(key)).id.get()
}

/// `count` account keys of the shard of `acct/0`.
pub fn accounts_of_one_shard(map: &ClusterMap, count: usize) -> Vec<Vec<u8>> {
    let first = shard_of(map, b"acct/0");
    (0..)
        .map(|n| format!("acct/{n}").into_bytes())
        .filter(|key| shard_of(map, key) == first)
        .take(count)
        .collect()
}

/// `count` account keys spread over every shard of the map, in turn (so
/// that a transfer between neighbours crosses shards).
pub fn accounts_across_shards(map: &ClusterMap, count: usize) -> Vec<Vec<u8>> {
    let shards: Vec<u32> = map.shards.iter().map(|shard| shard.id.get()).collect();
    let mut of_shard: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    let per_shard = count.div_ceil(shards.len());
    for key in (0..).map(|n| format!("acct/{n}").into_bytes()) {
        let list = of_shard.entry(shard_of(map, &key)).or_default();
        if list.len() < per_shard {
            list.push(key);
        }
        if shards.iter().all(|shard| {
            of_shard
                .get(shard)
                .is_some_and(|list| list.len() == per_shard)
        }) {
            break;
        }
    }
    let lists: Vec<&Vec<Vec<u8>>> = shards.iter().map(|shard| &of_shard[shard]).collect();
    (0..per_shard)
        .flat_map(|index| lists.iter().map(move |list| list[index].clone()))
        .take(count)
        .collect()
}

/// An account's value: its balance and the tag of the write.
pub fn value_of(balance: i64, tag: &str) -> Vec<u8> {
    format!("{balance}:{tag}").into_bytes()
}

/// The balance in an account's value.
pub fn balance(value: &[u8]) -> i64 {
    let text = std::str::from_utf8(value).expect("an account's value is text");
    let number = text.split(':').next().unwrap_or_default();
    number
        .parse()
        .expect("an account's value starts with its balance")
}

/// A transaction as recorded: what it read and wrote (key, value,
/// version; a written version 0 is unknown), whether its outcome is known
/// (committed) or in doubt, and its one-shard commit version (0 across
/// shards).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub call: Instant,
    pub ret: Instant,
    pub version: u64,
    pub reads: Vec<(Vec<u8>, Vec<u8>, u64)>,
    pub writes: Vec<(Vec<u8>, Vec<u8>, u64)>,
    pub in_doubt: bool,
}

/// The history of a bank run, shared by its clients.
pub type History = Arc<Mutex<Vec<Recorded>>>;

/// What one transaction's body read and wrote.
#[derive(Debug, Default)]
struct Seen {
    reads: Vec<(Vec<u8>, Vec<u8>, u64)>,
    writes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Seen {
    /// Reads an account (`for_update`: one the transaction will write).
    fn get(&mut self, tx: &mut Txn<'_>, key: &[u8], for_update: bool) -> Result<i64, ClientError> {
        let value = match for_update {
            true => tx.get_for_update(key)?,
            false => tx.get(key)?,
        };
        let value = value.expect("every account exists");
        let version = tx.version_read(key).expect("read from the store");
        self.reads.push((key.to_vec(), value.clone(), version));
        Ok(balance(&value))
    }

    fn put(&mut self, tx: &mut Txn<'_>, key: &[u8], value: Vec<u8>) {
        tx.put(key, &value);
        self.writes.push((key.to_vec(), value));
    }
}

/// How a recorded transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Committed after this many runs of its body.
    Committed(u32),
    /// Gave up, conflicting every time: nothing written, nothing recorded.
    Conflicted,
    /// Its client could not learn the outcome (recorded in doubt).
    InDoubt,
}

/// Runs `body` as a transaction and records it: committed, or in doubt
/// when the client failed to learn the outcome (`tolerate_errors`; else an
/// error panics).
fn recorded(
    client: &mut Client,
    mode: TxnMode,
    history: &History,
    tolerate_errors: bool,
    mut body: impl FnMut(&mut Txn<'_>, &mut Seen) -> Result<(), ClientError>,
) -> Ended {
    let mut runs = 0;
    let mut seen = Seen::default();
    let call = Instant::now();
    let done = client.transact(mode, |tx| {
        runs += 1;
        seen = Seen::default();
        body(tx, &mut seen)
    });
    let (written, version, ended) = match done {
        Ok(done) => (done.written, done.version, Ended::Committed(runs)),
        Err(ClientError::Conflict { .. }) => return Ended::Conflicted,
        Err(_) if tolerate_errors => {
            // A read-only transaction that failed wrote nothing.
            if seen.writes.is_empty() {
                return Ended::InDoubt;
            }
            (Vec::new(), 0, Ended::InDoubt)
        }
        Err(error) => panic!("transaction failed: {error}"),
    };
    let written_at = |key: &[u8]| {
        written
            .iter()
            .find(|(of, _)| of == key)
            .map_or(0, |(_, version)| *version)
    };
    let writes = seen
        .writes
        .into_iter()
        .map(|(key, value)| {
            let version = written_at(&key);
            (key, value, version)
        })
        .collect();
    history.lock().unwrap().push(Recorded {
        call,
        ret: Instant::now(),
        version,
        reads: seen.reads,
        writes,
        in_doubt: ended == Ended::InDoubt,
    });
    ended
}

/// A transfer drawn at random among `accounts` accounts: from, to (never
/// the same), and an amount of 1 to 10.
pub fn draw_transfer(random: &mut impl rand::RngExt, accounts: usize) -> (usize, usize, i64) {
    let from = random.random_range(0..accounts);
    let to = (from + random.random_range(1..accounts)) % accounts;
    (from, to, random.random_range(1..=10))
}

/// Moves `amount` from account `from` to account `to` if `from` holds it,
/// in a transaction of `mode` (a locking one locks both for update).
pub fn transfer(
    client: &mut Client,
    mode: TxnMode,
    history: &History,
    accounts: &[Vec<u8>],
    (from, to, amount): (usize, usize, i64),
    tag: &str,
    tolerate_errors: bool,
) -> Ended {
    recorded(client, mode, history, tolerate_errors, |tx, seen| {
        let (a, b) = (&accounts[from], &accounts[to]);
        let (left, right) = (seen.get(tx, a, true)?, seen.get(tx, b, true)?);
        if left >= amount {
            seen.put(tx, a, value_of(left - amount, tag));
            seen.put(tx, b, value_of(right + amount, tag));
        }
        Ok(())
    })
}

/// Every account at `START`, in one transaction.
pub fn open(client: &mut Client, history: &History, accounts: &[Vec<u8>]) {
    let ended = recorded(client, TxnMode::Optimistic, history, false, |tx, seen| {
        for account in accounts {
            seen.put(tx, account, value_of(START, "open"));
        }
        Ok(())
    });
    assert!(matches!(ended, Ended::Committed(_)), "the bank opens");
}

/// Reads every account in one transaction of `mode`: the total when it
/// committed.
pub fn audit(
    client: &mut Client,
    mode: TxnMode,
    history: &History,
    accounts: &[Vec<u8>],
    tolerate_errors: bool,
) -> Option<i64> {
    let mut total = 0;
    let ended = recorded(client, mode, history, tolerate_errors, |tx, seen| {
        total = 0;
        for account in accounts {
            total += seen.get(tx, account, false)?;
        }
        Ok(())
    });
    matches!(ended, Ended::Committed(_)).then_some(total)
}

/// Reads every account (of one shard) by one MULTI of GETs, decided at one
/// seq by its head: recorded, and its total.
pub fn audit_at_once(client: &mut Client, history: &History, accounts: &[Vec<u8>]) -> i64 {
    let items: Vec<Item<'_>> = accounts.iter().map(|key| Item::get(key)).collect();
    let call = Instant::now();
    // A reply without the answers is a resend's, answered from the
    // head's record of the outcome (its chain changed meanwhile): asked
    // again (it writes nothing).
    let (version, answers) = loop {
        match client.multi(&items).expect("an audit commits") {
            MultiOutcome::Committed {
                version,
                answers: Some(answers),
            } => break (version, answers),
            MultiOutcome::Committed { answers: None, .. } => continue,
            outcome => panic!("an audit that failed: {outcome:?}"),
        }
    };
    let reads: Vec<_> = accounts
        .iter()
        .cloned()
        .zip(answers)
        .map(|(key, answer)| {
            let value = answer.value.expect("every account exists");
            (key, value, answer.number)
        })
        .collect();
    let total = reads.iter().map(|(_, value, _)| balance(value)).sum();
    history.lock().unwrap().push(Recorded {
        call,
        ret: Instant::now(),
        version,
        reads,
        writes: Vec::new(),
        in_doubt: false,
    });
    total
}

/// What `check` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub committed: usize,
    /// In doubt, found committed by what others read.
    pub settled_committed: usize,
    /// In doubt, read by nobody: left out.
    pub left_out: usize,
}

/// Checks the history: strictly serializable by its dependency cycles
/// (with the in-doubt transactions settled by what was read), and, when
/// `one_shard`, in the commit order the heads report too.
pub fn check(history: &[Recorded], one_shard: bool) -> Result<Checked, String> {
    // Every value any transaction read, with the version it had.
    let mut read_at: HashMap<(&[u8], &[u8]), u64> = HashMap::new();
    for recorded in history {
        for (key, value, version) in &recorded.reads {
            read_at.insert((key, value), *version);
        }
    }
    let mut checked = Checked::default();
    let mut versioned = Vec::with_capacity(history.len());
    for recorded in history {
        let writes: Vec<(Vec<u8>, u64)> = recorded
            .writes
            .iter()
            .filter_map(|(key, value, version)| {
                let known = match *version {
                    0 => read_at.get(&(&key[..], &value[..])).copied()?,
                    version => version,
                };
                Some((key.clone(), known))
            })
            .collect();
        if recorded.in_doubt {
            if writes.is_empty() {
                checked.left_out += 1;
                continue;
            }
            checked.settled_committed += 1;
        } else {
            checked.committed += 1;
        }
        versioned.push(Versioned {
            call: recorded.call,
            ret: recorded.ret,
            reads: recorded
                .reads
                .iter()
                .map(|(key, _, version)| (key.clone(), *version))
                .collect(),
            writes,
        });
    }
    check_cycles(&versioned).map_err(|error| format!("not strictly serializable: {error}"))?;
    if one_shard && history.iter().all(|recorded| !recorded.in_doubt) {
        let serial: Vec<Transaction> = history
            .iter()
            .map(|recorded| Transaction {
                call: recorded.call,
                ret: recorded.ret,
                version: recorded.version,
                reads: pairs(&recorded.reads),
                writes: pairs(&recorded.writes),
            })
            .collect();
        check_serial(&serial)
            .map_err(|error| format!("not strictly serializable in the heads' order: {error}"))?;
    }
    Ok(checked)
}

fn pairs(list: &[(Vec<u8>, Vec<u8>, u64)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    list.iter()
        .map(|(key, value, _)| (key.clone(), Some(value.clone())))
        .collect()
}
