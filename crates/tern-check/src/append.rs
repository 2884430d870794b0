//! Elle's list-append check: transactions of appends to lists and reads of
//! whole lists, over any number of keys (and shards). Each element is
//! appended once, so a read list names the writers of every element in it
//! and their order: the version order of a key is inferred from the
//! longest list read of it, which every other read must be a prefix of.
//! Then, as in `cycles`, committed transactions are nodes with ww
//! (consecutive elements' appenders), wr (the appender of a read's last
//! element precedes the reader), rw (a reader precedes the appender of the
//! element after what it read) and real-time edges, and a cycle is named
//! after Adya. Found directly: G1a (a read of an element no committed
//! transaction appended: an aborted or phantom write), G1b (a read ending
//! in an element its appender did not leave last), and incompatible orders
//! (two reads that are not prefixes of one list).

use std::collections::HashMap;
use std::time::Instant;

use crate::cycles::{CycleError, Edge, Graph};

/// One operation of a list-append transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOp {
    /// Appends `element` (unique for its key) to the key's list.
    Append { key: Vec<u8>, element: u64 },
    /// The key's list as read at this point of the transaction (its own
    /// earlier appends included).
    Read { key: Vec<u8>, list: Vec<u64> },
}

/// A transaction of list appends and reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendTxn {
    pub call: Instant,
    pub ret: Instant,
    pub ops: Vec<AppendOp>,
    /// Committed for sure; false: its outcome is unknown (it may have
    /// committed): its appends may be read, but it is no node unless a
    /// read shows it committed.
    pub committed: bool,
}

/// Why a list-append history is not strictly serializable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendError {
    /// Two reads of a key that are not prefixes of one list.
    Incompatible {
        key: Vec<u8>,
        first: Vec<u64>,
        second: Vec<u64>,
    },
    /// A read of an element no transaction (committed or unknown) appended.
    G1a {
        reader: usize,
        key: Vec<u8>,
        element: u64,
    },
    /// A read that ends in an element its appender appended more after.
    G1b {
        reader: usize,
        key: Vec<u8>,
        element: u64,
    },
    /// An element appended twice to one key.
    Duplicate { key: Vec<u8>, element: u64 },
    /// A cycle (indices into the history).
    Cycle(CycleError),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
        match self {
            AppendError::Incompatible { key, first, second } => write!(
                f,
                "incompatible orders of {}: {first:?} and {second:?}",
                name(key)
            ),
            AppendError::G1a {
                reader,
                key,
                element,
            } => write!(
                f,
                "G1a: transaction {reader} read element {element} of {}, which nobody appended",
                name(key)
            ),
            AppendError::G1b {
                reader,
                key,
                element,
            } => write!(
                f,
                "G1b: transaction {reader} read {} ending in {element}, an intermediate append",
                name(key)
            ),
            AppendError::Duplicate { key, element } => {
                write!(f, "element {element} appended twice to {}", name(key))
            }
            AppendError::Cycle(cycle) => write!(f, "{cycle}"),
        }
    }
}

impl std::error::Error for AppendError {}

/// Checks a list-append history.
pub fn check_append(history: &[AppendTxn]) -> Result<(), AppendError> {
    // Who appended each element of each key, and the elements each
    // transaction appended to each key, in order.
    let mut appender: HashMap<(&[u8], u64), usize> = HashMap::new();
    let mut own: HashMap<(usize, &[u8]), Vec<u64>> = HashMap::new();
    for (index, txn) in history.iter().enumerate() {
        for op in &txn.ops {
            if let AppendOp::Append { key, element } = op {
                if appender.insert((key, *element), index).is_some() {
                    return Err(AppendError::Duplicate {
                        key: key.clone(),
                        element: *element,
                    });
                }
                own.entry((index, key)).or_default().push(*element);
            }
        }
    }
    // A read that shows a transaction's append shows it committed.
    let mut committed: Vec<bool> = history.iter().map(|txn| txn.committed).collect();
    // Each key's longest read: its version order.
    let mut longest: HashMap<&[u8], &[u64]> = HashMap::new();
    for (index, txn) in history.iter().enumerate() {
        for op in &txn.ops {
            let AppendOp::Read { key, list } = op else {
                continue;
            };
            for element in list {
                match appender.get(&(&key[..], *element)) {
                    Some(&writer) => committed[writer] |= txn.committed || writer == index,
                    None => {
                        return Err(AppendError::G1a {
                            reader: index,
                            key: key.clone(),
                            element: *element,
                        });
                    }
                }
            }
            let known = longest.entry(key).or_insert(&list[..]);
            let (short, long) = if list.len() <= known.len() {
                (&list[..], *known)
            } else {
                (*known, &list[..])
            };
            if !long.starts_with(short) {
                return Err(AppendError::Incompatible {
                    key: key.clone(),
                    first: known.to_vec(),
                    second: list.clone(),
                });
            }
            *known = long;
        }
    }
    // Nodes are the committed transactions.
    let nodes: Vec<usize> = (0..history.len())
        .filter(|&index| committed[index])
        .collect();
    let node_of: HashMap<usize, usize> = nodes
        .iter()
        .enumerate()
        .map(|(node, &index)| (index, node))
        .collect();
    let mut graph = Graph::new(
        nodes
            .iter()
            .map(|&index| (history[index].call, history[index].ret)),
    );
    let writer_of = |key: &[u8], element: u64| node_of.get(&appender[&(key, element)]).copied();
    // Committed appenders of each key whose appends no list read shows.
    let mut unread: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (&(index, key), elements) in &own {
        let order = longest.get(key).copied().unwrap_or_default();
        if let Some(&node) = node_of.get(&index)
            && elements.iter().any(|element| !order.contains(element))
        {
            unread.entry(key).or_default().push(node);
        }
    }
    for order in longest.iter() {
        let (key, list) = order;
        for pair in list.windows(2) {
            if let (Some(from), Some(to)) = (writer_of(key, pair[0]), writer_of(key, pair[1])) {
                graph.add(from, to, Edge::Ww);
            }
        }
    }
    for &index in &nodes {
        let reader = node_of[&index];
        for op in &history[index].ops {
            let AppendOp::Read { key, list } = op else {
                continue;
            };
            // What others had appended: the transaction's own appends,
            // read back at the end of the list, are left aside.
            let mut seen = &list[..];
            while let Some((&last, rest)) = seen.split_last() {
                if appender[&(&key[..], last)] != index {
                    break;
                }
                seen = rest;
            }
            if let Some(&last) = seen.last() {
                let writer = appender[&(&key[..], last)];
                let appended = &own[&(writer, &key[..])];
                if appended.last() != Some(&last) {
                    return Err(AppendError::G1b {
                        reader: index,
                        key: key.clone(),
                        element: last,
                    });
                }
                if let Some(from) = node_of.get(&writer) {
                    graph.add(*from, reader, Edge::Wr);
                }
            }
            let order = longest[&key[..]];
            // The first element after what it read that is not its own;
            // past every list read, any committed append nobody read (it
            // came after them all).
            match order[seen.len()..]
                .iter()
                .find(|element| appender[&(&key[..], **element)] != index)
            {
                Some(&next) => {
                    if let Some(to) = writer_of(key, next) {
                        graph.add(reader, to, Edge::Rw);
                    }
                }
                None => {
                    for &later in unread.get(&key[..]).into_iter().flatten() {
                        graph.add(reader, later, Edge::Rw);
                    }
                }
            }
        }
    }
    match graph.cycle() {
        None => Ok(()),
        Some(CycleError::Cycle { name, steps }) => {
            // Steps named by history index, not node.
            let steps = steps
                .into_iter()
                .map(|(node, edge)| (nodes[node], edge))
                .collect();
            Err(AppendError::Cycle(CycleError::Cycle { name, steps }))
        }
        Some(other) => Err(AppendError::Cycle(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn append(key: &str, element: u64) -> AppendOp {
        AppendOp::Append {
            key: key.as_bytes().to_vec(),
            element,
        }
    }

    fn read(key: &str, list: &[u64]) -> AppendOp {
        AppendOp::Read {
            key: key.as_bytes().to_vec(),
            list: list.to_vec(),
        }
    }

    fn txn(call: u64, ret: u64, ops: Vec<AppendOp>) -> AppendTxn {
        AppendTxn {
            call: base() + Duration::from_millis(call),
            ret: base() + Duration::from_millis(ret),
            ops,
            committed: true,
        }
    }

    fn cycle_name(history: &[AppendTxn]) -> String {
        match check_append(history) {
            Err(AppendError::Cycle(CycleError::Cycle { name, .. })) => name,
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn good_histories_pass() {
        let good = [
            txn(0, 1, vec![append("x", 1), append("y", 1)]),
            txn(
                2,
                5,
                vec![read("x", &[1]), append("x", 2), read("x", &[1, 2])],
            ),
            txn(3, 4, vec![read("y", &[1]), read("x", &[1])]),
            txn(6, 7, vec![read("x", &[1, 2]), read("y", &[1])]),
            // Unknown outcome, never read: no node.
            AppendTxn {
                committed: false,
                ..txn(8, 9, vec![append("z", 7)])
            },
        ];
        assert_eq!(check_append(&good), Ok(()));
    }

    #[test]
    fn each_anomaly_is_found() {
        // G0: writes interleaved on two keys.
        let g0 = [
            txn(0, 10, vec![append("x", 1), append("y", 2)]),
            txn(0, 10, vec![append("x", 2), append("y", 1)]),
            txn(11, 12, vec![read("x", &[1, 2]), read("y", &[1, 2])]),
        ];
        assert_eq!(cycle_name(&g0), "G0");
        // G-single: read skew across two keys.
        let skew = [
            txn(0, 1, vec![append("x", 1), append("y", 1)]),
            txn(2, 10, vec![append("x", 2), append("y", 2)]),
            txn(2, 10, vec![read("x", &[1]), read("y", &[1, 2])]),
            txn(11, 12, vec![read("x", &[1, 2])]),
        ];
        assert_eq!(cycle_name(&skew), "G-single");
        // G2: write skew.
        let write_skew = [
            txn(0, 10, vec![read("x", &[]), append("y", 1)]),
            txn(0, 10, vec![read("y", &[]), append("x", 1)]),
            txn(11, 12, vec![read("x", &[1]), read("y", &[1])]),
        ];
        assert_eq!(cycle_name(&write_skew), "G2");
        // Not strict: a read after a committed append misses it.
        let stale = [
            txn(0, 1, vec![append("x", 1)]),
            txn(2, 3, vec![read("x", &[])]),
            txn(4, 5, vec![read("x", &[1])]),
        ];
        assert_eq!(cycle_name(&stale), "G-single-realtime");
        // G1a: nobody appended 9.
        let phantom = [txn(0, 1, vec![read("x", &[9])])];
        assert!(matches!(
            check_append(&phantom),
            Err(AppendError::G1a { .. })
        ));
        // G1b: 1 was followed by 2 in its transaction.
        let intermediate = [
            txn(0, 10, vec![append("x", 1), append("x", 2)]),
            txn(0, 10, vec![read("x", &[1])]),
        ];
        assert!(matches!(
            check_append(&intermediate),
            Err(AppendError::G1b { element: 1, .. })
        ));
        let incompatible = [
            txn(0, 1, vec![append("x", 1)]),
            txn(0, 1, vec![append("x", 2)]),
            txn(2, 3, vec![read("x", &[1, 2])]),
            txn(2, 3, vec![read("x", &[2, 1])]),
        ];
        assert!(matches!(
            check_append(&incompatible),
            Err(AppendError::Incompatible { .. })
        ));
        // An unknown transaction that someone read is committed: its
        // appends then count.
        let read_unknown = [
            AppendTxn {
                committed: false,
                ..txn(0, 10, vec![append("x", 1), append("y", 1)])
            },
            txn(2, 3, vec![read("x", &[1])]),
            txn(11, 12, vec![read("y", &[])]),
        ];
        assert_eq!(cycle_name(&read_unknown), "G-single-realtime");
    }
}
