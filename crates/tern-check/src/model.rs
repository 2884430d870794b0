//! The sequential specification of one key: a versioned register.

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Put {
        value: Vec<u8>,
    },
    Delete,
    /// Compare-and-set against `expected` (0: the key is absent).
    Cas {
        expected: u64,
        value: Vec<u8>,
    },
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// `Some((version, value))` or `None` for an absent key.
    Get(Option<(u64, Vec<u8>)>),
    Put {
        version: u64,
    },
    Delete {
        existed: bool,
    },
    CasSwapped {
        version: u64,
    },
    CasMismatch {
        current: u64,
    },
    /// No reply: the operation may or may not have taken effect.
    Unknown,
}

/// Version of the register's value. Unknown after a write whose reply never
/// came (its version was never observed); the next observation fixes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Version {
    Known(u64),
    Unknown,
}

/// The register: `value` is an interned value id (0: absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct State {
    pub value: u32,
    pub version: Version,
}

impl State {
    pub const INITIAL: State = State {
        value: 0,
        version: Version::Known(0),
    };

    fn absent() -> State {
        State::INITIAL
    }

    /// A version assigned by a later write must exceed the current one.
    fn precedes(self, version: u64) -> bool {
        match self.version {
            Version::Known(current) => version > current,
            Version::Unknown => true,
        }
    }

    /// Whether the current version may equal `version`.
    fn may_be(self, version: u64) -> bool {
        match self.version {
            Version::Known(current) => current == version,
            Version::Unknown => self.value != 0 && version != 0,
        }
    }
}

/// An operation with values interned: `value` ids for Put/Cas inputs and for
/// the value a Get returned.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub input: Input,
    pub output: Output,
    pub input_value: u32,
    pub output_value: u32,
}

/// Every state the register can be in after applying `step` to `state`
/// (none: the step is impossible here). More than one only for a CAS whose
/// outcome is unknown against an unknown version.
pub(crate) fn apply(state: State, step: &Step) -> Vec<State> {
    let mut next = Vec::new();
    match (&step.input, &step.output) {
        (Input::Get, Output::Get(None)) => {
            if state.value == 0 {
                next.push(state);
            }
        }
        (Input::Get, Output::Get(Some((version, _)))) => {
            if state.value == step.output_value && state.may_be(*version) {
                next.push(State {
                    version: Version::Known(*version),
                    ..state
                });
            }
        }
        (Input::Get, Output::Unknown) => next.push(state),
        (Input::Put { .. }, Output::Put { version }) => {
            if state.precedes(*version) {
                next.push(State {
                    value: step.input_value,
                    version: Version::Known(*version),
                });
            }
        }
        (Input::Put { .. }, Output::Unknown) => {
            next.push(State {
                value: step.input_value,
                version: Version::Unknown,
            });
        }
        (Input::Delete, Output::Delete { existed: true }) => {
            if state.value != 0 {
                next.push(State::absent());
            }
        }
        (Input::Delete, Output::Delete { existed: false }) => {
            if state.value == 0 {
                next.push(state);
            }
        }
        (Input::Delete, Output::Unknown) => next.push(State::absent()),
        (Input::Cas { expected, .. }, Output::CasSwapped { version }) => {
            if state.may_be(*expected)
                && (*expected != 0 || state.value == 0)
                && state.precedes(*version)
            {
                next.push(State {
                    value: step.input_value,
                    version: Version::Known(*version),
                });
            }
        }
        (Input::Cas { expected, .. }, Output::CasMismatch { current }) => {
            if current != expected && state.may_be(*current) && (*current != 0 || state.value == 0)
            {
                next.push(State {
                    version: Version::Known(*current),
                    ..state
                });
            }
        }
        (Input::Cas { expected, .. }, Output::Unknown) => {
            let may_match = state.may_be(*expected) && (*expected != 0 || state.value == 0);
            let may_differ = match state.version {
                Version::Known(current) => current != *expected,
                Version::Unknown => true,
            };
            if may_match {
                next.push(State {
                    value: step.input_value,
                    version: Version::Unknown,
                });
            }
            if may_differ {
                next.push(state);
            }
        }
        // An output that does not belong to the input can never happen.
        _ => {}
    }
    next
}
