//! A strict-serializability check of committed transactions whose commit
//! order is reported by the system: each transaction names the version it
//! committed at (for Tern's one-shot transactions, the seq its head gave
//! it), and the check verifies that this order explains the history.
//!
//! - **Serial**: replayed one by one in version order from an empty store,
//!   every value a transaction read is the value the replay holds for that
//!   key just before it (reads see no later and no earlier write).
//! - **Strict**: the order agrees with real time: a transaction that
//!   returned before another was called has the lower version.
//! - Versions are distinct (one commit point each).
//!
//! What it does not do: infer an order the system does not report (as
//! Elle does from list-append histories); transactions whose outcome is
//! unknown must be left out by the caller, so histories with timeouts
//! cannot be checked by it.

use std::collections::HashMap;
use std::time::Instant;

/// One committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub call: Instant,
    pub ret: Instant,
    /// Its commit point in the reported order.
    pub version: u64,
    /// The values it read from the store (None: absent), before any write
    /// of its own.
    pub reads: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// What it wrote (None: deleted).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Why a history is not strictly serializable in the reported order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialError {
    /// Two transactions report the same version.
    SharedVersion { version: u64 },
    /// `earlier` returned before `later` was called, yet committed after it.
    RealTime { earlier: u64, later: u64 },
    /// The transaction at `version` read a value of `key` that the replay
    /// does not hold at that point.
    Read {
        version: u64,
        key: Vec<u8>,
        read: Option<Vec<u8>>,
        held: Option<Vec<u8>>,
    },
}

impl std::fmt::Display for SerialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialError::SharedVersion { version } => {
                write!(f, "two transactions committed at version {version}")
            }
            SerialError::RealTime { earlier, later } => write!(
                f,
                "the transaction at version {earlier} returned before the one at \
                 {later} was called"
            ),
            SerialError::Read {
                version,
                key,
                read,
                held,
            } => write!(
                f,
                "the transaction at version {version} read {:?} = {:?}, but the serial \
                 order holds {:?}",
                String::from_utf8_lossy(key),
                read.as_deref().map(String::from_utf8_lossy),
                held.as_deref().map(String::from_utf8_lossy),
            ),
        }
    }
}

impl std::error::Error for SerialError {}

/// Checks `history` (committed transactions, any order).
pub fn check_serial(history: &[Transaction]) -> Result<(), SerialError> {
    let mut order: Vec<&Transaction> = history.iter().collect();
    order.sort_by_key(|txn| txn.version);
    for pair in order.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(SerialError::SharedVersion {
                version: pair[0].version,
            });
        }
    }
    // Real time: walking down from the highest version, the earliest
    // return among the higher versions must not precede this one's call.
    let mut earliest_ret: Option<&Transaction> = None;
    for txn in order.iter().rev() {
        if let Some(higher) = earliest_ret
            && higher.ret < txn.call
        {
            return Err(SerialError::RealTime {
                earlier: higher.version,
                later: txn.version,
            });
        }
        if earliest_ret.is_none_or(|known| txn.ret < known.ret) {
            earliest_ret = Some(txn);
        }
    }
    let mut held: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
    for txn in order {
        for (key, read) in &txn.reads {
            let now = held.get(&key[..]).copied().flatten();
            if now != read.as_deref() {
                return Err(SerialError::Read {
                    version: txn.version,
                    key: key.clone(),
                    read: read.clone(),
                    held: now.map(<[u8]>::to_vec),
                });
            }
        }
        for (key, value) in &txn.writes {
            held.insert(key, value.as_deref());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn txn(
        base: Instant,
        (call, ret): (u64, u64),
        version: u64,
        reads: &[(&str, Option<&str>)],
        writes: &[(&str, Option<&str>)],
    ) -> Transaction {
        let pairs = |list: &[(&str, Option<&str>)]| {
            list.iter()
                .map(|(key, value)| {
                    (
                        key.as_bytes().to_vec(),
                        value.map(|v| v.as_bytes().to_vec()),
                    )
                })
                .collect()
        };
        Transaction {
            call: base + Duration::from_millis(call),
            ret: base + Duration::from_millis(ret),
            version,
            reads: pairs(reads),
            writes: pairs(writes),
        }
    }

    #[test]
    fn a_serial_history_passes_and_overlapping_ones_may_commit_in_either_order() {
        let base = Instant::now();
        let history = [
            txn(
                base,
                (0, 1),
                1,
                &[("a", None)],
                &[("a", Some("1")), ("b", Some("1"))],
            ),
            // Overlapping in time: the later version may have been called first.
            txn(base, (3, 6), 3, &[("a", Some("2"))], &[]),
            txn(
                base,
                (2, 5),
                2,
                &[("a", Some("1")), ("b", Some("1"))],
                &[("a", Some("2"))],
            ),
            txn(base, (7, 8), 4, &[("a", Some("2"))], &[("a", None)]),
            txn(base, (9, 9), 5, &[("a", None), ("b", Some("1"))], &[]),
        ];
        assert_eq!(check_serial(&history), Ok(()));
    }

    #[test]
    fn a_read_of_a_value_the_order_does_not_hold_is_found() {
        let base = Instant::now();
        // A lost update: both read 0 and wrote 1, the second must have seen 1.
        let history = [
            txn(base, (0, 1), 1, &[], &[("n", Some("0"))]),
            txn(base, (2, 4), 2, &[("n", Some("0"))], &[("n", Some("1"))]),
            txn(base, (2, 4), 3, &[("n", Some("0"))], &[("n", Some("1"))]),
        ];
        let error = check_serial(&history).unwrap_err();
        assert!(
            matches!(error, SerialError::Read { version: 3, .. }),
            "{error}"
        );
        // A fractured read: half of a transaction's writes seen.
        let history = [
            txn(base, (0, 1), 1, &[], &[("x", Some("1")), ("y", Some("1"))]),
            txn(base, (2, 3), 2, &[("x", Some("1")), ("y", None)], &[]),
        ];
        assert!(matches!(
            check_serial(&history),
            Err(SerialError::Read { version: 2, .. })
        ));
    }

    #[test]
    fn an_order_against_real_time_and_a_shared_version_are_found() {
        let base = Instant::now();
        let history = [
            txn(base, (0, 1), 2, &[], &[("k", Some("a"))]),
            txn(base, (2, 3), 1, &[], &[("k", Some("b"))]),
        ];
        assert_eq!(
            check_serial(&history),
            Err(SerialError::RealTime {
                earlier: 2,
                later: 1
            })
        );
        let history = [
            txn(base, (0, 1), 1, &[], &[]),
            txn(base, (0, 1), 1, &[], &[]),
        ];
        assert_eq!(
            check_serial(&history),
            Err(SerialError::SharedVersion { version: 1 })
        );
    }
}
