//! A dependency-graph check of transactions over versioned registers, in
//! the manner of Adya's phenomena and Elle: no commit order is assumed;
//! every committed transaction is a node, and the history is strictly
//! serializable exactly when the graph of its dependencies and real-time
//! order has no cycle.
//!
//! Every write of a key names the version it made (Tern reports it), so
//! each key's version order is known, not inferred (as Elle must infer it
//! from list-append reads):
//! - **ww**: the writer of a key's version precedes the writer of its next;
//! - **wr**: the writer of a version precedes every reader of it;
//! - **rw** (anti-dependency): a reader of a version precedes the writer
//!   of the next version of that key;
//! - **rt** (real time): a transaction that returned before another was
//!   called precedes it (through a chain of time points, so that the edges
//!   grow linearly with the history).
//!
//! A cycle is named by its edges as Adya names them: only ww, G0 (dirty
//! write); ww and wr, G1c (circular information flow); one rw, G-single
//! (read skew); more, G2 (write skew and the like); with an rt edge, the
//! name gains `-realtime` (it is not strict). A read of a version no
//! committed transaction wrote (other than 0, the key absent at the start)
//! is G1a (aborted or phantom read); two writers of one version are named
//! too.
//!
//! Depends on nothing, like the rest of the crate.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// One committed transaction over versioned registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub call: Instant,
    pub ret: Instant,
    /// Each key it read from the store with the version read (0: absent
    /// since the start), before any write of its own to that key.
    pub reads: Vec<(Vec<u8>, u64)>,
    /// Each key it wrote with the version its write made.
    pub writes: Vec<(Vec<u8>, u64)>,
}

/// An edge's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Edge {
    Ww,
    Wr,
    Rw,
    Rt,
}

/// Why a history is not strictly serializable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CycleError {
    /// Two transactions claim to have written one version of a key.
    SharedVersion { key: Vec<u8>, version: u64 },
    /// G1a: transaction `reader` read a version nobody committed.
    G1a {
        reader: usize,
        key: Vec<u8>,
        version: u64,
    },
    /// A cycle: its transactions (indices into the history) in order,
    /// each with the kind of the edge to the next (the last to the first).
    Cycle {
        name: String,
        steps: Vec<(usize, Edge)>,
    },
}

impl std::fmt::Display for CycleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CycleError::SharedVersion { key, version } => write!(
                f,
                "two transactions wrote version {version} of {}",
                String::from_utf8_lossy(key)
            ),
            CycleError::G1a {
                reader,
                key,
                version,
            } => write!(
                f,
                "G1a: transaction {reader} read version {version} of {}, which no committed \
                 transaction wrote",
                String::from_utf8_lossy(key)
            ),
            CycleError::Cycle { name, steps } => {
                write!(f, "{name}:")?;
                for (node, edge) in steps {
                    write!(f, " T{node} -{edge:?}->")?;
                }
                write!(f, " T{}", steps.first().map_or(0, |step| step.0))
            }
        }
    }
}

impl std::error::Error for CycleError {}

/// Checks `history` (committed transactions only: one whose outcome is
/// unknown must be settled and added, or left out with everything that
/// read its writes).
pub fn check_cycles(history: &[Versioned]) -> Result<(), CycleError> {
    // Each key's writers by version.
    let mut writers: HashMap<&[u8], Vec<(u64, usize)>> = HashMap::new();
    for (index, txn) in history.iter().enumerate() {
        for (key, version) in &txn.writes {
            writers.entry(key).or_default().push((*version, index));
        }
    }
    for (key, versions) in &mut writers {
        versions.sort_unstable();
        if let Some(pair) = versions.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(CycleError::SharedVersion {
                key: key.to_vec(),
                version: pair[0].0,
            });
        }
    }
    let mut graph = Graph::new(history.iter().map(|txn| (txn.call, txn.ret)));
    for (index, txn) in history.iter().enumerate() {
        for (key, version) in &txn.reads {
            let Some(versions) = writers.get(&key[..]) else {
                if *version != 0 {
                    return Err(CycleError::G1a {
                        reader: index,
                        key: key.clone(),
                        version: *version,
                    });
                }
                continue;
            };
            let at = versions.partition_point(|(written, _)| written < version);
            match versions.get(at) {
                Some(&(written, writer)) if written == *version => {
                    graph.add(writer, index, Edge::Wr);
                    if let Some(&(_, next)) = versions.get(at + 1) {
                        graph.add(index, next, Edge::Rw);
                    }
                }
                _ if *version != 0 => {
                    return Err(CycleError::G1a {
                        reader: index,
                        key: key.clone(),
                        version: *version,
                    });
                }
                // Read absent: before the key's first writer.
                _ => {
                    if let Some(&(_, first)) = versions.first() {
                        graph.add(index, first, Edge::Rw);
                    }
                }
            }
        }
    }
    for versions in writers.values() {
        for pair in versions.windows(2) {
            graph.add(pair[0].1, pair[1].1, Edge::Ww);
        }
    }
    match graph.cycle() {
        None => Ok(()),
        Some(cycle) => Err(cycle),
    }
}

/// The dependency graph of a history: its transactions (nodes `0..count`),
/// then two time points per transaction (its call and its return).
#[derive(Debug)]
pub(crate) struct Graph {
    count: usize,
    edges: Vec<Vec<(usize, Edge)>>,
}

impl Graph {
    /// The graph of transactions called and returned at `times`, with the
    /// real-time order: T -> ret(T) -> ... later points ... -> call(U) ->
    /// U, the points chained in time order; at one instant calls come
    /// first, so a return reaches only calls strictly after it.
    pub(crate) fn new(times: impl ExactSizeIterator<Item = (Instant, Instant)>) -> Graph {
        let count = times.len();
        let mut edges = vec![Vec::new(); count * 3];
        let mut points: Vec<(Instant, bool, usize)> = Vec::with_capacity(count * 2);
        for (index, (call, ret)) in times.enumerate() {
            points.push((call, false, index));
            points.push((ret, true, index));
        }
        points.sort_by_key(|&(at, is_ret, _)| (at, is_ret));
        let point_node =
            |&(_, is_ret, index): &(Instant, bool, usize)| count + 2 * index + usize::from(is_ret);
        for pair in points.windows(2) {
            edges[point_node(&pair[0])].push((point_node(&pair[1]), Edge::Rt));
        }
        for point in &points {
            let (_, is_ret, index) = *point;
            if is_ret {
                edges[index].push((point_node(point), Edge::Rt));
            } else {
                edges[point_node(point)].push((index, Edge::Rt));
            }
        }
        Graph { count, edges }
    }

    /// An edge between two transactions (none from one to itself).
    pub(crate) fn add(&mut self, from: usize, to: usize, edge: Edge) {
        if from != to {
            self.edges[from].push((to, edge));
        }
    }

    /// A cycle, named, if there is one.
    pub(crate) fn cycle(&self) -> Option<CycleError> {
        find_cycle(&self.edges).map(|cycle| name_cycle(&cycle, self.count))
    }
}

/// A cycle of the graph, as (node, edge to the next node), if any: Kahn's
/// algorithm removes every node not on or behind a cycle, then the
/// shortest cycle through one of the rest is found by breadth-first search.
fn find_cycle(edges: &[Vec<(usize, Edge)>]) -> Option<Vec<(usize, Edge)>> {
    let nodes = edges.len();
    let mut indegree = vec![0usize; nodes];
    for out in edges {
        for &(to, _) in out {
            indegree[to] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..nodes).filter(|&node| indegree[node] == 0).collect();
    let mut removed = vec![false; nodes];
    while let Some(node) = ready.pop() {
        removed[node] = true;
        for &(to, _) in &edges[node] {
            indegree[to] -= 1;
            if indegree[to] == 0 {
                ready.push(to);
            }
        }
    }
    // Every node left has a predecessor left: walking back from one ends
    // in a cycle; its nodes are on one.
    let mut predecessor: Vec<Option<usize>> = vec![None; nodes];
    for (from, out) in edges.iter().enumerate() {
        for &(to, _) in out {
            if !removed[from] && !removed[to] {
                predecessor[to] = Some(from);
            }
        }
    }
    let start = (0..nodes).find(|&node| !removed[node])?;
    let mut seen = vec![false; nodes];
    let mut node = start;
    while !seen[node] {
        seen[node] = true;
        node = predecessor[node].expect("a node left by Kahn has a predecessor left");
    }
    // `node` is on a cycle: the shortest one back to it.
    let mut came_from: Vec<Option<(usize, Edge)>> = vec![None; nodes];
    let mut queue = VecDeque::from([node]);
    let mut reached = vec![false; nodes];
    while let Some(at) = queue.pop_front() {
        for &(to, edge) in &edges[at] {
            if removed[to] {
                continue;
            }
            if to == node {
                let mut cycle = vec![(at, edge)];
                let mut back = at;
                while back != node {
                    let (from, edge) = came_from[back].expect("reached");
                    cycle.push((from, edge));
                    back = from;
                }
                cycle.reverse();
                return Some(cycle);
            }
            if !reached[to] {
                reached[to] = true;
                came_from[to] = Some((at, edge));
                queue.push_back(to);
            }
        }
    }
    unreachable!("a node on a cycle reaches itself")
}

/// The cycle over transactions (time points folded into one rt edge), and
/// its name.
fn name_cycle(cycle: &[(usize, Edge)], count: usize) -> CycleError {
    // Rotate so that it starts at a transaction.
    let first = cycle
        .iter()
        .position(|&(node, _)| node < count)
        .expect("a cycle passes through a transaction");
    let rotated: Vec<(usize, Edge)> = cycle[first..]
        .iter()
        .chain(&cycle[..first])
        .copied()
        .collect();
    let mut steps: Vec<(usize, Edge)> = Vec::new();
    for &(node, edge) in &rotated {
        if node < count {
            steps.push((node, edge));
        }
    }
    let kinds: Vec<Edge> = steps.iter().map(|&(_, edge)| edge).collect();
    let rw = kinds.iter().filter(|&&edge| edge == Edge::Rw).count();
    let wr = kinds.contains(&Edge::Wr);
    let realtime = kinds.contains(&Edge::Rt);
    let base = match (rw, wr) {
        (0, false) => "G0",
        (0, true) => "G1c",
        (1, _) => "G-single",
        _ => "G2",
    };
    let name = if realtime {
        format!("{base}-realtime")
    } else {
        base.to_string()
    };
    CycleError::Cycle { name, steps }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A transaction called at `call` ms and returned at `ret` ms.
    fn txn(call: u64, ret: u64, reads: &[(&str, u64)], writes: &[(&str, u64)]) -> Versioned {
        let base = base();
        let pairs = |list: &[(&str, u64)]| {
            list.iter()
                .map(|(key, version)| (key.as_bytes().to_vec(), *version))
                .collect()
        };
        Versioned {
            call: base + Duration::from_millis(call),
            ret: base + Duration::from_millis(ret),
            reads: pairs(reads),
            writes: pairs(writes),
        }
    }

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn name_of(history: &[Versioned]) -> String {
        match check_cycles(history) {
            Err(CycleError::Cycle { name, .. }) => name,
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn serial_and_concurrent_good_histories_pass() {
        // A bank transfer across two keys, then an audit, then another.
        let good = [
            txn(0, 1, &[], &[("a", 1), ("b", 2)]),
            txn(2, 5, &[("a", 1), ("b", 2)], &[("a", 3), ("b", 4)]),
            // Concurrent with the transfer: may see before or after.
            txn(3, 4, &[("a", 1), ("b", 2)], &[]),
            txn(6, 7, &[("a", 3), ("b", 4)], &[]),
            // Read-only of an absent key, before its first write.
            txn(8, 9, &[("c", 0)], &[]),
            txn(10, 11, &[("c", 0)], &[("c", 5)]),
        ];
        assert_eq!(check_cycles(&good), Ok(()));
        assert_eq!(check_cycles(&[]), Ok(()));
    }

    #[test]
    fn each_anomaly_is_found_and_named() {
        // G0: two transactions' writes interleaved on two keys.
        let g0 = [
            txn(0, 10, &[], &[("a", 1), ("b", 4)]),
            txn(0, 10, &[], &[("a", 2), ("b", 3)]),
        ];
        assert_eq!(name_of(&g0), "G0");
        // G1c: each read the other's write.
        let g1c = [
            txn(0, 10, &[("b", 4)], &[("a", 1)]),
            txn(0, 10, &[("a", 1)], &[("b", 4)]),
        ];
        assert_eq!(name_of(&g1c), "G1c");
        // G-single (read skew): an audit sees a's old and b's new value.
        let read_skew = [
            txn(0, 1, &[], &[("a", 1), ("b", 2)]),
            txn(2, 10, &[("a", 1), ("b", 2)], &[("a", 3), ("b", 4)]),
            txn(2, 10, &[("a", 1), ("b", 4)], &[]),
        ];
        assert_eq!(name_of(&read_skew), "G-single");
        // G2 (write skew): each read what the other wrote over.
        let write_skew = [
            txn(0, 1, &[], &[("a", 1), ("b", 2)]),
            txn(2, 10, &[("a", 1), ("b", 2)], &[("a", 3)]),
            txn(2, 10, &[("a", 1), ("b", 2)], &[("b", 4)]),
        ];
        assert_eq!(name_of(&write_skew), "G2");
        // Serializable, not strict: a read after a committed write misses it.
        let stale = [
            txn(0, 1, &[], &[("a", 1)]),
            txn(2, 3, &[("a", 1)], &[("a", 2)]),
            txn(4, 5, &[("a", 1)], &[]),
        ];
        assert_eq!(name_of(&stale), "G-single-realtime");
        // Lost update: both read 1 and both wrote after it.
        let lost = [
            txn(0, 1, &[], &[("n", 1)]),
            txn(2, 10, &[("n", 1)], &[("n", 2)]),
            txn(2, 10, &[("n", 1)], &[("n", 3)]),
        ];
        assert_eq!(name_of(&lost), "G-single");
        // G1a: a version nobody committed.
        let aborted = [txn(0, 1, &[], &[("a", 1)]), txn(2, 3, &[("a", 7)], &[])];
        assert!(matches!(
            check_cycles(&aborted),
            Err(CycleError::G1a { reader: 1, .. })
        ));
        let shared = [txn(0, 1, &[], &[("a", 1)]), txn(0, 1, &[], &[("a", 1)])];
        assert!(matches!(
            check_cycles(&shared),
            Err(CycleError::SharedVersion { version: 1, .. })
        ));
    }

    #[test]
    fn the_cycle_names_its_transactions() {
        let write_skew = [
            txn(0, 1, &[], &[("a", 1), ("b", 2)]),
            txn(2, 10, &[("a", 1), ("b", 2)], &[("a", 3)]),
            txn(2, 10, &[("a", 1), ("b", 2)], &[("b", 4)]),
        ];
        let error = check_cycles(&write_skew).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("G2:"), "{text}");
        assert!(text.contains("T1") && text.contains("T2"), "{text}");
    }

    #[test]
    fn a_long_history_is_checked_in_linear_room() {
        // 20 000 transfers one after the other: real-time edges stay linear.
        let history: Vec<Versioned> = (0..20_000u64)
            .map(|n| {
                let reads: Vec<(&str, u64)> = if n == 0 { vec![] } else { vec![("a", n)] };
                txn(2 * n, 2 * n + 1, &reads, &[("a", n + 1)])
            })
            .collect();
        assert_eq!(check_cycles(&history), Ok(()));
    }
}
