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

/// `tern txn`'s arguments: the items as words, or a script, or JSON.
#[derive(Debug, clap::Args)]
pub struct TxnArgs {
    /// Items as words: `get K`, `put K V`, `del K`, `incr K DELTA`,
    /// `append K V`, `check K VERSION`; `;` between items is allowed.
    #[arg(num_args = 0.., allow_hyphen_values = true,
          required_unless_present_any = ["script", "json"])]
    items: Vec<String>,
    /// A file of items in the same words, any number per line, `#`
    /// starting a comment (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["items", "json"])]
    script: Option<std::path::PathBuf>,
    /// The items as JSON: an array (or `{"items": [...]}`) of objects
    /// `{"op": "put", "key": "k", "value": "v"}`, `{"op": "incr", "key":
    /// "n", "by": 5}`, `{"op": "check", "key": "k", "version": 3}`, `get`,
    /// `del`, `append` alike; `@FILE` reads it from a file, `-` from
    /// standard input.
    #[arg(long, value_name = "JSON", conflicts_with = "items")]
    json: Option<String>,
    /// How the outcome is printed: one line per item, or one JSON object.
    #[arg(long, value_enum, default_value_t = TxnOutput::Text)]
    output: TxnOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TxnOutput {
    Text,
    Json,
}

/// Reads a file, or standard input for `-`.
fn read_text(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

impl TxnArgs {
    /// The transaction's items, from whichever form was given.
    fn items(&self) -> Result<Vec<OwnedItem>> {
        if let Some(path) = &self.script {
            let text = read_text(path)?;
            let words: Vec<String> = text
                .lines()
                .map(|line| line.split('#').next().unwrap_or_default())
                .flat_map(str::split_whitespace)
                .map(str::to_owned)
                .collect();
            return txn_items(&words);
        }
        if let Some(json) = &self.json {
            let text = match json.strip_prefix('@') {
                Some(path) => read_text(Path::new(path))?,
                None if json == "-" => read_text(Path::new("-"))?,
                None => json.clone(),
            };
            return json_items(&text);
        }
        txn_items(&self.items)
    }
}

/// Items in words: `get K`, `put K V`, `del K`, `incr K DELTA`,
/// `append K V`, `check K VERSION`.
pub fn txn_items(words: &[String]) -> Result<Vec<OwnedItem>> {
    let mut items = Vec::new();
    let mut words = words.iter().filter(|word| *word != ";").peekable();
    while let Some(verb) = words.next() {
        let mut next = |what: &str| {
            words
                .next()
                .cloned()
                .with_context(|| format!("`{verb}` needs {what}"))
        };
        let key = next("a key")?;
        let argument = match verb.to_lowercase().as_str() {
            "put" | "append" => Some(next("a value")?),
            "incr" => Some(next("a delta")?),
            "check" => Some(next("a version")?),
            _ => None,
        };
        items.push(txn_item(verb, key, argument)?);
    }
    anyhow::ensure!(!items.is_empty(), "a transaction needs at least one item");
    Ok(items)
}

/// Items in JSON: an array of `{"op", "key", "value" | "by" | "version"}`
/// objects, or an object holding it as `items`.
fn json_items(text: &str) -> Result<Vec<OwnedItem>> {
    use serde_json::Value;
    let parsed: Value = serde_json::from_str(text).context("the transaction is not JSON")?;
    let list = match &parsed {
        Value::Array(list) => list,
        Value::Object(object) => match object.get("items") {
            Some(Value::Array(list)) => list,
            _ => anyhow::bail!("a JSON transaction is an array of items, or {{\"items\": [...]}}"),
        },
        _ => anyhow::bail!("a JSON transaction is an array of items, or {{\"items\": [...]}}"),
    };
    let mut items = Vec::with_capacity(list.len());
    for (index, entry) in list.iter().enumerate() {
        let field = |name: &str| -> Result<Option<String>> {
            match entry.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(Value::Number(number)) => Ok(Some(number.to_string())),
                Some(other) => {
                    anyhow::bail!("item {index}: `{name}` is {other}, not a string or number")
                }
            }
        };
        let op = field("op")?.with_context(|| format!("item {index} has no `op`"))?;
        let key = field("key")?.with_context(|| format!("item {index} has no `key`"))?;
        let argument = match op.to_lowercase().as_str() {
            "put" | "append" => field("value")?,
            "incr" => field("by")?,
            "check" => field("version")?,
            _ => None,
        };
        let item = match argument {
            None if matches!(
                op.to_lowercase().as_str(),
                "put" | "append" | "incr" | "check"
            ) =>
            {
                let wanted = match op.to_lowercase().as_str() {
                    "incr" => "by",
                    "check" => "version",
                    _ => "value",
                };
                anyhow::bail!("item {index}: `{op}` needs `{wanted}`")
            }
            argument => txn_item(&op, key, argument)?,
        };
        items.push(item);
    }
    anyhow::ensure!(!items.is_empty(), "a transaction needs at least one item");
    Ok(items)
}

/// One item from its verb, key and argument (value, delta or version).
fn txn_item(verb: &str, key: String, argument: Option<String>) -> Result<OwnedItem> {
    use tern_client::txn::kind;
    let argument = argument.unwrap_or_default();
    let (kind, value, version) = match verb.to_lowercase().as_str() {
        "get" => (kind::GET, String::new(), 0),
        "del" => (kind::DELETE, String::new(), 0),
        "put" => (kind::PUT, argument, 0),
        "append" => (kind::APPEND, argument, 0),
        "incr" => {
            argument
                .parse::<i64>()
                .with_context(|| format!("`incr {key}`: {argument:?} is not an integer"))?;
            (kind::INCR_BY, argument, 0)
        }
        "check" => {
            let version = argument
                .parse()
                .with_context(|| format!("`check {key}`: {argument:?} is not a version"))?;
            (kind::CHECK, String::new(), version)
        }
        other => {
            anyhow::bail!("unknown transaction item `{other}` (get, put, del, incr, append, check)")
        }
    };
    Ok(OwnedItem {
        version,
        ..OwnedItem::new(kind, key.as_bytes(), value.as_bytes())
    })
}

/// `tern txn`: runs the items as one transaction (of one shard, or across
/// shards by two-phase commit); prints each item's answer, one line each
/// or one JSON object (exit status 2 when a check failed and nothing was
/// written).
pub fn txn(map: &ClusterMap, args: &TxnArgs) -> Result<ExitCode> {
    use serde_json::json;
    use tern_client::MultiOutcome;
    use tern_client::txn::Item;
    let owned = args.items()?;
    let items: Vec<Item<'_>> = owned.iter().map(OwnedItem::item).collect();
    let mut client = Client::new(map.clone())?;
    let json = args.output == TxnOutput::Json;
    match client.multi_anywhere(&items)? {
        MultiOutcome::Committed { version, answers } => {
            let answers = answers.unwrap_or_default();
            if json {
                let answers: Vec<_> = items
                    .iter()
                    .zip(&answers)
                    .map(|(item, answer)| {
                        json!({
                            "key": String::from_utf8_lossy(item.key),
                            "status": format!("{:?}", answer.status),
                            "number": answer.number,
                            "value": answer.value.as_ref().map(|value| String::from_utf8_lossy(value)),
                        })
                    })
                    .collect();
                let version = (version != 0).then_some(version);
                println!(
                    "{}",
                    json!({"outcome": "committed", "version": version, "answers": answers})
                );
                return Ok(ExitCode::SUCCESS);
            }
            if version == 0 {
                println!("COMMITTED across shards");
            } else {
                println!("COMMITTED version {version}");
            }
            for (item, answer) in items.iter().zip(answers) {
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
            if json {
                println!(
                    "{}",
                    json!({"outcome": "aborted", "reason": "a check failed", "version_found": current})
                );
            } else {
                println!("ABORTED a check failed (version found: {current}); nothing written");
            }
            Ok(ExitCode::from(2))
        }
    }
}
