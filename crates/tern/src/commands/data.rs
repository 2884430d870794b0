//! The client commands: get, put, del, cas, txn, expire, ttl, stats.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tern_client::expiry::unix_now_ms;
use tern_client::txn::OwnedItem;
use tern_client::{
    CasOutcome, Client, ClusterMap, Deadline, ExpireCondition, Lifetime, SetCondition,
};
use tern_testbed::cluster;
use tern_wire::LARGE_VALUE_LEN_DEFAULT;

/// Prints the key's value (as text), or writes its bytes as they are to
/// `value_file` (`-`: standard output).
pub fn get(
    map: &ClusterMap,
    key: &str,
    with_version: bool,
    value_file: Option<&Path>,
) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    match (client.get(key.as_bytes())?, value_file) {
        (Some(found), Some(path)) => {
            if path == Path::new("-") {
                let mut out = std::io::stdout().lock();
                out.write_all(&found.value)?;
                out.flush()?;
            } else {
                std::fs::write(path, &found.value)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if with_version {
                eprintln!("version {}", found.version);
            }
            Ok(ExitCode::SUCCESS)
        }
        (Some(found), None) => {
            let value = String::from_utf8_lossy(&found.value);
            if with_version {
                println!("{}\t{value}", found.version);
            } else {
                println!("{value}");
            }
            Ok(ExitCode::SUCCESS)
        }
        (None, _) => {
            eprintln!("(not found)");
            Ok(ExitCode::from(1))
        }
    }
}

/// A value from a file, or from standard input for `-`; one over the
/// value limit is refused before it is read whole, naming the limit.
pub fn read_value(path: &Path) -> Result<Vec<u8>> {
    let limit = LARGE_VALUE_LEN_DEFAULT;
    let mut value = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(limit as u64 + 1)
            .read_to_end(&mut value)
    } else {
        std::fs::File::open(path)
            .and_then(|file| file.take(limit as u64 + 1).read_to_end(&mut value))
    };
    read.with_context(|| format!("reading {}", path.display()))?;
    if value.len() > limit {
        anyhow::bail!(
            "the value of {} exceeds the limit of {limit} bytes",
            if path == Path::new("-") {
                "standard input".to_string()
            } else {
                path.display().to_string()
            }
        );
    }
    Ok(value)
}

pub fn put(
    map: &ClusterMap,
    key: &str,
    value: &[u8],
    expire_in: Option<Duration>,
) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    let version = match expire_in {
        None => client.put(key.as_bytes(), value)?,
        Some(after) => {
            let lifetime = Lifetime::For(after);
            let key = key.as_bytes();
            client
                .set_for(key, value, SetCondition::Always, false, lifetime)?
                .version
        }
    };
    println!("OK version {version}");
    Ok(ExitCode::SUCCESS)
}

/// Gives `key` a deadline `after` from now, or none.
pub fn expire(map: &ClusterMap, key: &str, after: Option<Duration>) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    let deadline = after.map_or(Deadline::Never, Deadline::In);
    if client.expire(key.as_bytes(), deadline, ExpireCondition::Always)? {
        println!("OK");
        return Ok(ExitCode::SUCCESS);
    }
    if client.get(key.as_bytes())?.is_some() {
        // PERSIST of a key without a deadline.
        println!("OK (no deadline)");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("(not found)");
    Ok(ExitCode::from(1))
}

/// Prints the milliseconds `key` has left, or `none`.
pub fn ttl(map: &ClusterMap, key: &str) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    match client.get(key.as_bytes())? {
        Some(found) => {
            match found.deadline_ms {
                Some(deadline) => println!("{}", deadline.saturating_sub(unix_now_ms())),
                None => println!("none"),
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("(not found)");
            Ok(ExitCode::from(1))
        }
    }
}

pub fn del(map: &ClusterMap, key: &str) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    if client.delete(key.as_bytes())? {
        println!("deleted");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("(not found)");
        Ok(ExitCode::from(1))
    }
}

pub fn cas(map: &ClusterMap, key: &str, expected_version: u64, value: &str) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    match client.cas(key.as_bytes(), expected_version, value.as_bytes())? {
        CasOutcome::Swapped { version } => {
            println!("OK version {version}");
            Ok(ExitCode::SUCCESS)
        }
        CasOutcome::Mismatch { current } => {
            println!("MISMATCH current version {current}");
            Ok(ExitCode::from(2))
        }
    }
}

pub fn stats(map: &ClusterMap) -> Result<ExitCode> {
    let mut client = Client::new(map.clone())?;
    for (name, address, shard) in cluster::processes_of(map) {
        let text = client.stats(address, shard)?;
        println!("== {name} {address}");
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The items of `tern txn` from its words: `get K`, `put K V`, `del K`,
/// `incr K DELTA`, `append K V`, `check K VERSION`, one after the other
/// (a `;` between items is allowed). Errors name the word at fault.
pub fn txn_items(words: &[String]) -> Result<Vec<OwnedItem>> {
    use tern_client::txn::kind;
    let mut items = Vec::new();
    let mut words = words.iter().filter(|word| *word != ";").peekable();
    while let Some(verb) = words.next() {
        let mut next = |what: &str| {
            words
                .next()
                .cloned()
                .with_context(|| format!("`{verb}` needs {what}"))
        };
        let item = match verb.to_lowercase().as_str() {
            "get" => (kind::GET, next("a key")?, String::new(), 0),
            "del" => (kind::DELETE, next("a key")?, String::new(), 0),
            "put" => (kind::PUT, next("a key")?, next("a value")?, 0),
            "append" => (kind::APPEND, next("a key")?, next("a value")?, 0),
            "incr" => {
                let key = next("a key")?;
                let delta = next("a delta")?;
                delta
                    .parse::<i64>()
                    .with_context(|| format!("`incr {key}`: {delta:?} is not an integer"))?;
                (kind::INCR_BY, key, delta, 0)
            }
            "check" => {
                let key = next("a key")?;
                let version = next("a version")?;
                let version = version
                    .parse()
                    .with_context(|| format!("`check {key}`: {version:?} is not a version"))?;
                (kind::CHECK, key, String::new(), version)
            }
            other => anyhow::bail!(
                "unknown transaction item `{other}` (get, put, del, incr, append, check)"
            ),
        };
        items.push(OwnedItem {
            version: item.3,
            ..OwnedItem::new(item.0, item.1.as_bytes(), item.2.as_bytes())
        });
    }
    anyhow::ensure!(!items.is_empty(), "a transaction needs at least one item");
    Ok(items)
}

/// `tern txn`: runs the items as one transaction (of one shard, or across
/// shards by two-phase commit); prints
/// each item's answer, one line each (exit status 2 when a check failed
/// and nothing was written).
pub fn txn(map: &ClusterMap, words: &[String]) -> Result<ExitCode> {
    use tern_client::MultiOutcome;
    use tern_client::txn::Item;
    let owned = txn_items(words)?;
    let items: Vec<Item<'_>> = owned.iter().map(OwnedItem::item).collect();
    let mut client = Client::new(map.clone())?;
    match client.multi_anywhere(&items)? {
        MultiOutcome::Committed { version, answers } => {
            if version == 0 {
                println!("COMMITTED across shards");
            } else {
                println!("COMMITTED version {version}");
            }
            for (item, answer) in items.iter().zip(answers.unwrap_or_default()) {
                let shown = match (&answer.value, answer.number) {
                    (Some(value), _) => String::from_utf8_lossy(value).into_owned(),
                    (None, 0) => String::new(),
                    (None, number) => number.to_string(),
                };
                println!(
                    "{}\t{:?}\t{shown}",
                    String::from_utf8_lossy(item.key),
                    answer.status
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        MultiOutcome::CheckFailed { current } => {
            println!("ABORTED a check failed (version found: {current}); nothing written");
            Ok(ExitCode::from(2))
        }
    }
}
