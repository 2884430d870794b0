//! Recording a concurrent history.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{Input, Output};

/// One completed (or timed-out) operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: Vec<u8>,
    pub input: Input,
    pub output: Output,
    /// Nanoseconds since the recorder started, taken before the request left.
    pub call: u64,
    /// Nanoseconds since the recorder started, taken after the reply arrived;
    /// `None` when no reply came (the outcome is unknown).
    pub ret: Option<u64>,
}

/// Collects operations from many threads. Clones share one history.
#[derive(Clone, Debug)]
pub struct Recorder {
    start: Instant,
    operations: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            operations: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Records an operation called at `call` that returned `output` at `ret`
    /// (`None` for a timeout; `output` is then ignored and set to Unknown).
    pub fn record(
        &self,
        client: u64,
        key: &[u8],
        input: Input,
        call: Instant,
        output: Output,
        ret: Option<Instant>,
    ) {
        let since_start = |at: Instant| at.saturating_duration_since(self.start).as_nanos() as u64;
        let operation = Operation {
            client,
            key: key.to_vec(),
            input,
            output: if ret.is_some() {
                output
            } else {
                Output::Unknown
            },
            call: since_start(call),
            ret: ret.map(since_start),
        };
        self.operations
            .lock()
            .expect("recorder lock")
            .push(operation);
    }

    /// The operations recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.operations.lock().expect("recorder lock").clone()
    }
}
