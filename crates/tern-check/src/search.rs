//! The linearizability search (Wing & Gong, with Lowe's memoization).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::model::{State, Step, apply};
use crate::{Input, Operation, Output};

/// Outcome of checking a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The history of `key` has no linearization.
    Violation(CheckError),
}

/// Why a key's history is not linearizable, for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub key: Vec<u8>,
    pub operations: usize,
    /// The most operations any attempted linearization reached.
    pub longest_prefix: usize,
    /// The deepest dead end of the search: the last operation linearized and
    /// the operation that could not follow it before it returned.
    pub context: Vec<Operation>,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: no linearization of {} operations (best attempt linearized {})",
            String::from_utf8_lossy(&self.key),
            self.operations,
            self.longest_prefix
        )?;
        for (label, operation) in ["last linearized", "cannot follow"]
            .iter()
            .zip(&self.context)
        {
            let ret = operation
                .ret
                .map_or("never".to_string(), |ret| format!("{ret}ns"));
            writeln!(
                f,
                "  {label:<15} client {:>20} [{}ns .. {}] {} -> {}",
                operation.client,
                operation.call,
                ret,
                describe_input(&operation.input),
                describe_output(&operation.output)
            )?;
        }
        Ok(())
    }
}

fn text(value: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(value))
}

fn describe_input(input: &Input) -> String {
    match input {
        Input::Get => "GET".into(),
        Input::Put { value } => format!("PUT {}", text(value)),
        Input::Delete => "DEL".into(),
        Input::Cas { expected, value } => format!("CAS expected v{expected} {}", text(value)),
    }
}

fn describe_output(output: &Output) -> String {
    match output {
        Output::Get(Some((version, value))) => format!("{} v{version}", text(value)),
        Output::Get(None) => "absent".into(),
        Output::Put { version } | Output::CasSwapped { version } => format!("ok v{version}"),
        Output::Delete { existed } => format!("existed={existed}"),
        Output::CasMismatch { current } => format!("mismatch, current v{current}"),
        Output::Value(Some(value)) => text(value),
        Output::Value(None) => "absent".into(),
        Output::Written => "ok".into(),
        Output::Unknown => "unknown (timed out)".into(),
    }
}

/// Checks every key's history; stops at the first violation.
pub fn check(operations: &[Operation]) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<Operation>> = BTreeMap::new();
    for operation in operations {
        by_key
            .entry(&operation.key)
            .or_default()
            .push(operation.clone());
    }
    for (key, history) in by_key {
        if let Err(error) = check_key(key, &history) {
            return Verdict::Violation(error);
        }
    }
    Verdict::Linearizable
}

/// One event of the history: the call or the return of an operation.
#[derive(Clone, Copy, Debug)]
struct Event {
    operation: usize,
    is_call: bool,
    time: u64,
}

const END: usize = usize::MAX;

/// The events as a doubly linked list that operations can be lifted out of
/// and put back into (node 0 is the head sentinel, node i + 1 is event i).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EventList {
    fn new(count: usize) -> Self {
        let mut next: Vec<usize> = (1..=count + 1).collect();
        next[count] = END;
        let prev = (0..=count).map(|node| node.wrapping_sub(1)).collect();
        EventList { next, prev }
    }

    fn first(&self) -> usize {
        self.next[0]
    }

    fn remove(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = after;
        if after != END {
            self.prev[after] = before;
        }
    }

    /// Puts back a node removed last (removals are undone in reverse order).
    fn restore(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = node;
        if after != END {
            self.prev[after] = node;
        }
    }
}

/// A linearized call: its node, the state before it, and the successor
/// states not yet tried.
struct Linearized {
    node: usize,
    before: State,
    untried: Vec<State>,
}

/// Checks the history of one key.
pub fn check_key(key: &[u8], history: &[Operation]) -> Result<(), CheckError> {
    let steps = intern(history);
    // Events in time order; at equal times calls come first, which treats the
    // two operations as concurrent (the permissive reading).
    let mut events: Vec<Event> = Vec::with_capacity(history.len() * 2);
    for (index, operation) in history.iter().enumerate() {
        events.push(Event {
            operation: index,
            is_call: true,
            time: operation.call,
        });
        events.push(Event {
            operation: index,
            is_call: false,
            time: operation.ret.unwrap_or(u64::MAX),
        });
    }
    events.sort_by_key(|event| (event.time, !event.is_call));
    let mut return_node = vec![0; history.len()];
    for (index, event) in events.iter().enumerate() {
        if !event.is_call {
            return_node[event.operation] = index + 1;
        }
    }

    let mut list = EventList::new(events.len());
    let mut linearized = vec![0u64; history.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<Linearized> = Vec::new();
    let mut state = State::INITIAL;
    let mut node = list.first();
    // The deepest dead end: (depth, last operation linearized, the operation
    // that returned before it could be linearized after it).
    let mut deepest: (usize, Option<usize>, usize) = (0, None, 0);

    // Tries `candidates` (successor states of the call at `node`, whose bit is
    // already set in `linearized`); on a state not seen before, linearizes it.
    let mut try_candidates = |list: &mut EventList,
                              linearized: &mut Vec<u64>,
                              stack: &mut Vec<Linearized>,
                              state: &mut State,
                              node: usize,
                              mut candidates: Vec<State>|
     -> bool {
        while let Some(candidate) = candidates.pop() {
            if cache.insert((linearized.clone(), candidate)) {
                stack.push(Linearized {
                    node,
                    before: *state,
                    untried: candidates,
                });
                *state = candidate;
                let operation = events[node - 1].operation;
                list.remove(node);
                list.remove(return_node[operation]);
                return true;
            }
        }
        let operation = events[node - 1].operation;
        linearized[operation / 64] &= !(1u64 << (operation % 64));
        false
    };

    while list.first() != END {
        let event = events[node - 1];
        if event.is_call {
            let candidates = apply(state, &steps[event.operation]);
            linearized[event.operation / 64] |= 1u64 << (event.operation % 64);
            if try_candidates(
                &mut list,
                &mut linearized,
                &mut stack,
                &mut state,
                node,
                candidates,
            ) {
                node = list.first();
            } else {
                node = list.next[node];
            }
        } else {
            // An operation returned before it could be linearized: undo the
            // most recent linearization and try what comes after it.
            if stack.len() >= deepest.0 {
                let last = stack.last().map(|top| events[top.node - 1].operation);
                deepest = (stack.len(), last, event.operation);
            }
            let Some(top) = stack.pop() else {
                return Err(failure(key, history, deepest));
            };
            let operation = events[top.node - 1].operation;
            list.restore(return_node[operation]);
            list.restore(top.node);
            state = top.before;
            if try_candidates(
                &mut list,
                &mut linearized,
                &mut stack,
                &mut state,
                top.node,
                top.untried,
            ) {
                node = list.first();
            } else {
                node = list.next[top.node];
            }
        }
    }
    Ok(())
}

fn failure(
    key: &[u8],
    history: &[Operation],
    deepest: (usize, Option<usize>, usize),
) -> CheckError {
    let (_, last, stuck) = deepest;
    let mut context: Vec<Operation> = last.map(|op| history[op].clone()).into_iter().collect();
    context.push(history[stuck].clone());
    CheckError {
        key: key.to_vec(),
        operations: history.len(),
        longest_prefix: deepest.0,
        context,
    }
}

/// Interns values so that states are small and cheap to hash.
fn intern(history: &[Operation]) -> Vec<Step> {
    let mut ids: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut intern_value = |value: &[u8]| -> u32 {
        let next = ids.len() as u32 + 1;
        *ids.entry(value.to_vec()).or_insert(next)
    };
    history
        .iter()
        .map(|operation| {
            let input_value = match &operation.input {
                Input::Put { value } | Input::Cas { value, .. } => intern_value(value),
                Input::Get | Input::Delete => 0,
            };
            let output_value = match &operation.output {
                Output::Get(Some((_, value))) | Output::Value(Some(value)) => intern_value(value),
                _ => 0,
            };
            Step {
                input: operation.input.clone(),
                output: operation.output.clone(),
                input_value,
                output_value,
            }
        })
        .collect()
}
