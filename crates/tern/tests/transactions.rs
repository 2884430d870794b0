//! Transactions against a real cluster: a bank whose transfers
//! (optimistic or locking transactions through `Client::transact`) run concurrently
//! with audits that read every account in one transaction. Every audit
//! must see the same total, and the whole recorded history must be
//! strictly serializable: checked by the cycles of its dependency graph
//! (`tern_check::check_cycles`, no order assumed), and for accounts of one
//! shard also in the commit order the heads report
//! (`tern_check::check_serial`). Accounts of one shard commit by one-shot
//! MULTI; accounts across shards by two-phase commit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestCluster;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tern_client::txn::Item;
use tern_client::{Client, ClientError, ClusterMap, TxnMode};
use tern_testbed::bank::{self, Ended, History, shard_of};

const ACCOUNTS: usize = 8;
const TRANSFERS_PER_CLIENT: usize = 150;
const CLIENTS: usize = 4;
/// Transfers each client makes after the fault has run, at least.
const TRANSFERS_AFTER_FAULT: usize = 20;

/// A client that waits out a reconfiguration (meta takes a failed replica
/// out of its chain within about a second).
fn patient_client(map: &ClusterMap) -> Client {
    let options = tern_client::ClientOptions {
        deadline: Duration::from_secs(15),
        ..Default::default()
    };
    Client::with_options(map.clone(), options).unwrap()
}

/// Runs the bank, client `i` in `modes[i % modes.len()]`; `fault` runs on
/// a thread of its own meanwhile.
fn bank(
    cluster: &TestCluster,
    accounts: Vec<Vec<u8>>,
    modes: &[TxnMode],
    fault: impl FnOnce() + Send + 'static,
) {
    let shards: std::collections::BTreeSet<u32> = accounts
        .iter()
        .map(|key| shard_of(&cluster.map, key))
        .collect();
    let one_shard = shards.len() == 1;
    let accounts = Arc::new(accounts);
    let history: History = Arc::default();
    let mut client = patient_client(&cluster.map);
    bank::open(&mut client, &history, &accounts);
    let expected = bank::START * ACCOUNTS as i64;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let modes = modes.to_vec();
    let auditing = modes.clone();
    let auditor = {
        let (map, accounts, history, stop) = (
            cluster.map.clone(),
            accounts.clone(),
            history.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut client = patient_client(&map);
            // Audits of both kinds: by a transaction of each mode in turn
            // (optimistic: reads, then a commit that checks every version
            // read: under this contention most give up, which is allowed,
            // as long as some commit; locking: shared locks on every
            // account) and one-shot.
            let (mut audits, mut transacted) = (0, 0);
            for round in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) && transacted >= 3 {
                    break;
                }
                let mode = auditing[round % auditing.len()];
                if let Some(total) = bank::audit(&mut client, mode, &history, &accounts, false) {
                    assert_eq!(total, expected, "an audit saw money appear or vanish");
                    transacted += 1;
                }
                // Locks on every account, audit after audit, would starve
                // the transfers (no-wait locking gives writers no turn).
                std::thread::sleep(Duration::from_millis(2));
                // A one-shot audit reads one shard only.
                for _ in 0..if one_shard { 10 } else { 0 } {
                    let total = bank::audit_at_once(&mut client, &history, &accounts);
                    assert_eq!(total, expected, "an audit saw money appear or vanish");
                    audits += 1;
                }
            }
            (audits, transacted)
        })
    };
    // Set once the fault has run: every client goes on transferring until
    // it made TRANSFERS_AFTER_FAULT transfers after it, so that the fault
    // always falls inside the load, however fast the load runs.
    let faulted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transfers: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let mode = modes[index % modes.len()];
            let (map, accounts, history) = (cluster.map.clone(), accounts.clone(), history.clone());
            let faulted = faulted.clone();
            std::thread::spawn(move || {
                let mut client = patient_client(&map);
                let mut rng = SmallRng::seed_from_u64(rand::random());
                let id = client.client_id().get();
                let (mut runs, mut done, mut after_fault) = (0, 0, 0);
                while done < TRANSFERS_PER_CLIENT || after_fault < TRANSFERS_AFTER_FAULT {
                    if faulted.load(std::sync::atomic::Ordering::Relaxed) {
                        after_fault += 1;
                    }
                    done += 1;
                    let transfer = bank::draw_transfer(&mut rng, ACCOUNTS);
                    let tag = format!("{id:x}-{done}");
                    match bank::transfer(
                        &mut client,
                        mode,
                        &history,
                        &accounts,
                        transfer,
                        &tag,
                        false,
                    ) {
                        Ended::Committed(its_runs) => runs += its_runs,
                        ended => panic!("a transfer did not commit: {ended:?}"),
                    }
                }
                (runs, done)
            })
        })
        .collect();
    let fault = {
        let faulted = faulted.clone();
        std::thread::spawn(move || {
            fault();
            faulted.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let (mut runs, mut transferred) = (0, 0);
    for transfer in transfers {
        let (its_runs, its_transfers) = transfer.join().unwrap();
        runs += its_runs;
        transferred += its_transfers;
    }
    fault.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (audits, transacted) = auditor.join().unwrap();
    let history = history.lock().unwrap();
    eprintln!(
        "{} transactions committed ({audits} one-shot audits, {transacted} by transact), \
         {runs} runs for {transferred} transfers",
        history.len(),
    );
    if let Err(error) = bank::check(&history, one_shard) {
        panic!("{error}");
    }
    // The workload must contend, or the check proves little.
    assert!(runs as usize > transferred, "no transfer ever conflicted");
    // And the store holds the total too.
    let total: i64 = accounts
        .iter()
        .map(|account| bank::balance(&client.get(account).unwrap().unwrap().value))
        .sum();
    assert_eq!(total, expected);
}

#[test]
fn bank_transfers_keep_the_total_and_the_history_is_strictly_serializable() {
    let cluster = TestCluster::up(2, 3);
    bank(
        &cluster,
        bank::accounts_of_one_shard(&cluster.map, ACCOUNTS),
        &[TxnMode::Optimistic],
        || {},
    );
}

#[test]
fn bank_across_shards_of_optimistic_and_locking_transactions_keeps_the_total() {
    // Half the clients optimistic, half locking (no-wait 2PL), on the same
    // accounts; audits locking.
    let cluster = TestCluster::up(2, 3);
    let accounts = bank::accounts_across_shards(&cluster.map, ACCOUNTS);
    bank(
        &cluster,
        accounts,
        &[TxnMode::Optimistic, TxnMode::Locking],
        || {},
    );
    // Nothing stays locked or held once the load is done.
    let mut client = Client::new(cluster.map.clone()).unwrap();
    for shard in &cluster.map.shards {
        let stats = client.stats(shard.coordinator, shard.id).unwrap();
        assert_eq!(
            common::counter(&stats, &format!("shard{}.txn_held", shard.id.get())),
            0
        );
        for replica in &shard.replicas {
            let stats = common::stats_of(&mut client, *replica);
            assert_eq!(common::counter(&stats, "txn_locked_keys"), 0, "{stats}");
        }
    }
}

#[test]
fn bank_with_the_xdp_coordinator_keeps_the_total_and_is_strictly_serializable() {
    // Accounts of two shards: transfers within a shard are one-shot
    // MULTIs, across shards two-phase commits, both sequenced in the
    // kernel, their holds taken and released there.
    let cluster = TestCluster::up_with(2, 3, "xdp", "netns");
    bank(
        &cluster,
        bank::accounts_across_shards(&cluster.map, ACCOUNTS),
        &[TxnMode::Locking, TxnMode::Optimistic],
        || {},
    );
    let mut client = Client::new(cluster.map.clone()).unwrap();
    for shard in &cluster.map.shards {
        let stats = common::stats_of(&mut client, shard.coordinator);
        assert!(common::counter(&stats, "xdp.txns") > 0, "{stats}");
        // Every hold released: none left in the shared table.
        let held: Vec<&str> = stats
            .lines()
            .filter(|line| line.contains(".txn_held "))
            .collect();
        assert!(!held.is_empty(), "{stats}");
        assert!(held.iter().all(|line| line.ends_with(" 0")), "{stats}");
    }
}

#[test]
fn bank_survives_its_head_and_then_its_tail_being_killed() {
    // Durable replicas; the shard's head is killed under the load, then
    // the tail: meta reconfigures the chain each time, transactions in
    // flight are resent to the new head (applied once), and the history
    // stays strictly serializable with the total kept.
    let cluster = Arc::new(TestCluster::up_with_args(
        1,
        3,
        &["--topology", "loopback", "--durability", "always"],
    ));
    let killer = cluster.clone();
    bank(
        &cluster,
        bank::accounts_of_one_shard(&cluster.map, ACCOUNTS),
        &[TxnMode::Optimistic, TxnMode::Locking],
        move || {
            std::thread::sleep(Duration::from_millis(300));
            killer.kill(&["shard0-replica0"]);
            std::thread::sleep(Duration::from_millis(1500));
            killer.kill(&["shard0-replica2"]);
        },
    );
    // Both were taken out: one replica serves the shard now.
    let map = cluster.meta_map();
    assert_eq!(map.shards[0].replicas.len(), 1, "{map:?}");
}

#[test]
fn transactions_over_the_limits_or_across_shards_are_refused_with_the_reason() {
    let cluster = TestCluster::up(2, 3);
    let mut client = Client::new(cluster.map.clone()).unwrap();
    let shard_of = |key: &[u8]| cluster.map.shard_of_key_hash(tern_wire::key_hash(key)).id;
    let other = (0..)
        .map(|n| format!("other/{n}").into_bytes())
        .find(|key| shard_of(key) != shard_of(b"a"))
        .unwrap();
    let error = client
        .multi(&[Item::put(b"a", b"1"), Item::put(&other, b"2")])
        .unwrap_err();
    assert!(matches!(error, ClientError::CrossShard { .. }), "{error}");
    assert!(error.to_string().contains("span shards"), "{error}");
    let big = vec![b'v'; 2000];
    let error = client.multi(&[Item::put(b"a", &big)]).unwrap_err();
    assert!(error.to_string().contains("limit of 1024 bytes"), "{error}");
    let many = vec![Item::get(b"a"); 65];
    let error = client.multi(&many).unwrap_err();
    assert!(error.to_string().contains("at most 64 items"), "{error}");
    // Nothing was written, and the shard serves on.
    assert!(client.get(b"a").unwrap().is_none());
    let outcome = client
        .multi(&[Item::put(b"a", b"1"), Item::get(b"a")])
        .unwrap();
    assert!(matches!(
        outcome,
        tern_client::MultiOutcome::Committed { answers: Some(ref answers), .. }
            if answers[1].value.as_deref() == Some(&b"1"[..])
    ));
    // Keys of one hash tag are of one shard, whatever else they hold.
    let tagged: Vec<Vec<u8>> = (0..8)
        .map(|n| format!("{{user7}}.field{n}").into_bytes())
        .collect();
    let items: Vec<Item<'_>> = tagged.iter().map(|key| Item::put(key, b"1")).collect();
    assert!(matches!(
        client.multi(&items).unwrap(),
        tern_client::MultiOutcome::Committed { .. }
    ));
    // The CLI form: items as words, one answer per line.
    let output = cluster.tern(&["txn", "put", "c", "5", "incr", "c", "2", "get", "c"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.starts_with("COMMITTED version "), "{text}");
    assert!(text.contains("c\tOk\t7\nc\tOk\t7\n"), "{text}");
    let output = cluster.tern(&["txn", "check", "c", "1", ";", "put", "c", "9"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ABORTED"));
    let output = cluster.tern(&["txn", "incr", "c", "x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an integer"));
    assert_eq!(client.get(b"c").unwrap().unwrap().value, b"7");
    // The JSON form, with JSON out: values with spaces, a check that fails.
    let output = cluster.tern(&[
        "txn",
        "--output",
        "json",
        "--json",
        r#"{"items": [{"op": "put", "key": "d", "value": "two words"},
                     {"op": "incr", "key": "c", "by": 3}, {"op": "get", "key": "d"}]}"#,
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let outcome: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(outcome["outcome"], "committed", "{text}");
    assert_eq!(outcome["answers"][1]["value"], "10", "{text}");
    assert_eq!(outcome["answers"][2]["value"], "two words", "{text}");
    let output = cluster.tern(&[
        "txn",
        "--json",
        r#"[{"op": "check", "key": "d", "version": 1}]"#,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let output = cluster.tern(&["txn", "--json", r#"[{"op": "incr", "key": "d"}]"#]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("`incr` needs `by`"));
    // The script form: items over lines, comments.
    let script = cluster.dir().join("transfer.txn");
    std::fs::write(
        &script,
        "# move 2 from c to e\nincr c -2\nincr e 2 # e was absent\n",
    )
    .unwrap();
    let output = cluster.tern(&["txn", "--script", script.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(client.get(b"c").unwrap().unwrap().value, b"8");
    assert_eq!(client.get(b"e").unwrap().unwrap().value, b"2");
    assert_eq!(client.get(b"d").unwrap().unwrap().value, b"two words");
    client.put(b"c", b"7").unwrap();
    // A read of large values inside a transaction: refused whole, named.
    client.put(b"a", &vec![b'x'; 700]).unwrap();
    let error = client
        .multi(&[Item::get(b"a"), Item::get(b"a")])
        .unwrap_err();
    assert!(error.to_string().contains("exceed the limit"), "{error}");
}

/// A PREPARE of `items` (all of `shard`'s) for transaction `id` over
/// `shards`, sent as a client that then goes away would send it.
fn prepare_only(
    client: &mut Client,
    id: tern_wire::txn::TxnId,
    shards: &[u32],
    items: &[Item<'_>],
) -> tern_wire::Status {
    let map = client.map().clone();
    let participants = shards
        .iter()
        .map(|&shard| tern_wire::txn::Participant {
            shard,
            coordinator: map.shard(tern_client::ShardId(shard)).unwrap().coordinator,
        })
        .collect();
    let value = tern_wire::txn::Prepare {
        id,
        lease_ms: 500,
        participants,
        items: items.to_vec(),
    }
    .encode()
    .unwrap();
    let call = tern_client::answer::Call::new(tern_wire::Op::Prepare, &value);
    client.call(items[0].key, call).unwrap().status
}

/// Every coordinator holds no transaction and every replica no lock.
fn nothing_held(cluster: &TestCluster) -> bool {
    let mut client = Client::new(cluster.map.clone()).unwrap();
    cluster.map.shards.iter().all(|shard| {
        let stats = client.stats(shard.coordinator, shard.id).unwrap();
        let name = format!("shard{}.txn_held", shard.id.get());
        common::counter(&stats, &name) == 0
            && shard.replicas.iter().all(|replica| {
                let stats = common::stats_of(&mut client, *replica);
                common::counter(&stats, "txn_locked_keys") == 0
                    && common::counter(&stats, "txn_pending") == 0
            })
    })
}

#[test]
fn a_transaction_whose_client_went_away_is_settled_within_its_lease() {
    let cluster = TestCluster::up(2, 3);
    let map = cluster.map.clone();
    let a = b"acct/0".to_vec();
    let b = (1..)
        .map(|n| format!("acct/{n}").into_bytes())
        .find(|key| shard_of(&map, key) != shard_of(&map, &a))
        .unwrap();
    let shards = [shard_of(&map, &a), shard_of(&map, &b)];
    let mut client = patient_client(&map);
    client.put(&a, b"old").unwrap();
    client.put(&b, b"old").unwrap();
    let gone = client.client_id().get();
    let id = |txn_seq| tern_wire::txn::TxnId {
        client_id: gone,
        txn_seq,
    };
    // Gone after preparing one shard of two: the other never prepared, so
    // it is aborted; the key is read, once free, with its old value.
    let status = prepare_only(
        &mut client,
        id(1_000_001),
        &shards,
        &[Item::put(&a, b"new")],
    );
    assert_eq!(status, tern_wire::Status::Ok);
    let start = Instant::now();
    let mut reader = patient_client(&map);
    assert_eq!(reader.get(&a).unwrap().unwrap().value, b"old");
    let waited = start.elapsed();
    assert!(waited < Duration::from_millis(500 + 2000), "{waited:?}");
    // The other shard refuses the PREPARE now: it voted no for good.
    let late = prepare_only(
        &mut client,
        id(1_000_001),
        &shards,
        &[Item::put(&b, b"new")],
    );
    assert_eq!(late, tern_wire::Status::TxnAborted);
    // Gone after preparing both: committed, both writes visible.
    let both = id(1_000_002);
    let on_a = prepare_only(&mut client, both, &shards, &[Item::put(&a, b"both")]);
    let on_b = prepare_only(&mut client, both, &shards, &[Item::put(&b, b"both")]);
    assert_eq!((on_a, on_b), (tern_wire::Status::Ok, tern_wire::Status::Ok));
    let start = Instant::now();
    assert_eq!(reader.get(&b).unwrap().unwrap().value, b"both");
    assert_eq!(reader.get(&a).unwrap().unwrap().value, b"both");
    assert!(start.elapsed() < Duration::from_millis(500 + 2000));
    // Nothing stays held, within the lease and 2 s.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !nothing_held(&cluster) {
        assert!(Instant::now() < deadline, "a hold outlived lease + 2 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut settled = 0;
    for coordinator in cluster.map.shards.iter().map(|shard| shard.coordinator) {
        let stats = common::stats_of(&mut reader, coordinator);
        settled += common::counter(&stats, "txn_settled_committed");
        assert_eq!(common::counter(&stats, "txn_settle_disagreed"), 0);
    }
    assert!(settled >= 1, "the second was settled committed");
}

/// Elle's list-append workload across shards: transactions of one to four
/// reads and appends of lists (keys of both shards, one MULTI or two-phase
/// commit through `Client::multi_anywhere`), checked by
/// `tern_check::check_append`.
fn list_append(cluster: &TestCluster) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tern_check::{AppendOp, AppendTxn, check_append};
    use tern_client::MultiOutcome;
    let keys: Arc<Vec<Vec<u8>>> =
        Arc::new((0..12).map(|n| format!("la/{n}").into_bytes()).collect());
    let shards: std::collections::BTreeSet<u32> =
        keys.iter().map(|key| shard_of(&cluster.map, key)).collect();
    assert!(shards.len() > 1, "the keys span shards");
    let next_element = Arc::new(AtomicU64::new(1));
    let history = Arc::new(std::sync::Mutex::new(Vec::<AppendTxn>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (map, keys, next_element, history) = (
                cluster.map.clone(),
                keys.clone(),
                next_element.clone(),
                history.clone(),
            );
            std::thread::spawn(move || {
                let mut client = patient_client(&map);
                let mut rng = SmallRng::seed_from_u64(rand::random());
                let mut committed = 0;
                for _ in 0..60 {
                    let ops: Vec<AppendOp> = (0..rng.random_range(1..=4))
                        .map(|_| {
                            let key = keys[rng.random_range(0..keys.len())].clone();
                            if rng.random_bool(0.5) {
                                AppendOp::Read {
                                    key,
                                    list: Vec::new(),
                                }
                            } else {
                                let element = next_element.fetch_add(1, Ordering::Relaxed);
                                AppendOp::Append { key, element }
                            }
                        })
                        .collect();
                    let suffixes: Vec<Vec<u8>> = ops
                        .iter()
                        .map(|op| match op {
                            AppendOp::Append { element, .. } => format!("{element},").into_bytes(),
                            AppendOp::Read { .. } => Vec::new(),
                        })
                        .collect();
                    let items: Vec<Item<'_>> = ops
                        .iter()
                        .zip(&suffixes)
                        .map(|(op, suffix)| match op {
                            AppendOp::Append { key, .. } => Item::append(key, suffix),
                            AppendOp::Read { key, .. } => Item::get(key),
                        })
                        .collect();
                    let call = Instant::now();
                    let outcome = client.multi_anywhere(&items);
                    let ret = Instant::now();
                    let appends_only = || -> Vec<AppendOp> {
                        ops.iter()
                            .filter(|op| matches!(op, AppendOp::Append { .. }))
                            .cloned()
                            .collect()
                    };
                    let (ops, committed_now) = match outcome {
                        Ok(MultiOutcome::Committed {
                            answers: Some(answers),
                            ..
                        }) => {
                            let read = ops
                                .iter()
                                .zip(answers)
                                .map(|(op, answer)| match op {
                                    AppendOp::Read { key, .. } => AppendOp::Read {
                                        key: key.clone(),
                                        list: answer
                                            .value
                                            .unwrap_or_default()
                                            .split(|byte| *byte == b',')
                                            .filter(|part| !part.is_empty())
                                            .map(|part| {
                                                std::str::from_utf8(part).unwrap().parse().unwrap()
                                            })
                                            .collect(),
                                    },
                                    append => append.clone(),
                                })
                                .collect();
                            (read, true)
                        }
                        // Committed; the replies went with a first copy.
                        Ok(MultiOutcome::Committed { answers: None, .. }) => (appends_only(), true),
                        Ok(MultiOutcome::CheckFailed { .. }) => unreachable!("no CHECK item"),
                        // Refused whole (lists grown past a record, or
                        // conflicting every time): nothing appended.
                        Err(ClientError::Transaction(_) | ClientError::Conflict { .. }) => continue,
                        Err(error) => panic!("a list-append transaction failed: {error}"),
                    };
                    committed += usize::from(committed_now);
                    history.lock().unwrap().push(AppendTxn {
                        call,
                        ret,
                        ops,
                        committed: committed_now,
                    });
                }
                committed
            })
        })
        .collect();
    let committed: usize = clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .sum();
    let history = history.lock().unwrap();
    let reads = history
        .iter()
        .flat_map(|txn| &txn.ops)
        .filter(|op| matches!(op, AppendOp::Read { list, .. } if !list.is_empty()))
        .count();
    eprintln!("list-append: {committed} transactions committed, {reads} non-empty reads");
    assert!(
        committed > 150 && reads > 100,
        "{committed} committed, {reads} reads"
    );
    if let Err(error) = check_append(&history) {
        panic!("list-append history not strictly serializable: {error}");
    }
}

#[test]
fn list_append_across_shards_is_strictly_serializable() {
    let cluster = TestCluster::up(2, 3);
    list_append(&cluster);
}

#[test]
fn list_append_across_shards_with_the_xdp_coordinator_is_strictly_serializable() {
    let cluster = TestCluster::up_with(2, 3, "xdp", "netns");
    list_append(&cluster);
}

#[test]
fn a_transaction_driven_by_hand_commits_conflicts_or_aborts() {
    let cluster = TestCluster::up(2, 3);
    let map = cluster.map.clone();
    let a = b"hand/0".to_vec();
    let b = (1..)
        .map(|n| format!("hand/{n}").into_bytes())
        .find(|key| shard_of(&map, key) != shard_of(&map, &a))
        .unwrap();
    let mut client = Client::new(map.clone()).unwrap();
    let mut other = Client::new(map).unwrap();
    // Across shards: both written, each at its shard's version.
    let mut tx = client.begin(TxnMode::Optimistic);
    assert_eq!(tx.get(&a).unwrap(), None);
    tx.put(&a, b"1");
    tx.put(&b, b"1");
    let done = tx.commit().unwrap();
    assert_eq!(done.written.len(), 2);
    for (key, version) in &done.written {
        assert_eq!(other.get(key).unwrap().unwrap().version, *version);
    }
    // A key read changes before the commit: a conflict, nothing written.
    let mut tx = client.begin(TxnMode::Optimistic);
    assert_eq!(tx.get(&a).unwrap().as_deref(), Some(&b"1"[..]));
    tx.put(&b, b"2");
    other.put(&a, b"changed").unwrap();
    let error = tx.commit().unwrap_err();
    assert!(matches!(error, ClientError::Conflict { .. }), "{error}");
    assert_eq!(other.get(&b).unwrap().unwrap().value, b"1");
    // Given up: nothing written.
    let mut tx = client.begin(TxnMode::Optimistic);
    tx.put(&a, b"never");
    tx.abort();
    assert_eq!(other.get(&a).unwrap().unwrap().value, b"changed");
    // Locking: a key locked for update keeps other writers and lockers
    // out (a rival locking it conflicts at once, a plain write waits and
    // then gives up), and is written at the commit.
    let mut tx = client.begin(TxnMode::Locking);
    assert_eq!(
        tx.get_for_update(&a).unwrap().as_deref(),
        Some(&b"changed"[..])
    );
    assert_eq!(tx.get(&b).unwrap().as_deref(), Some(&b"1"[..]));
    let mut rival = other.begin(TxnMode::Locking);
    let error = rival.get(&a).unwrap_err();
    assert!(matches!(error, ClientError::Conflict { .. }), "{error}");
    drop(rival);
    let mut impatient = Client::with_options(
        cluster.map.clone(),
        tern_client::ClientOptions {
            deadline: Duration::from_millis(300),
            ..tern_client::ClientOptions::default()
        },
    )
    .unwrap();
    assert!(impatient.put(&a, b"sneaked").is_err(), "a locked key waits");
    tx.put(&a, b"locked");
    let done = tx.commit().unwrap();
    assert_eq!(done.written.len(), 1);
    assert_eq!(other.get(&a).unwrap().unwrap().value, b"locked");
    // Given up (or dropped), a locking transaction lets go of its locks.
    let mut tx = client.begin(TxnMode::Locking);
    tx.get_for_update(&a).unwrap();
    tx.get_for_update(&b).unwrap();
    tx.abort();
    other.put(&a, b"free").unwrap();
    let mut tx = client.begin(TxnMode::Locking);
    tx.get(&b).unwrap();
    drop(tx);
    other.put(&b, b"free").unwrap();
    // Through transact: a read-modify-write of both, under locks.
    let done = client
        .transact(TxnMode::Locking, |tx| {
            let left = tx.get_for_update(&a)?.unwrap_or_default();
            tx.put(&b, &left);
            Ok(left)
        })
        .unwrap();
    assert_eq!(done.value, b"free");
    assert!(nothing_held(&cluster), "every lock released");
}
