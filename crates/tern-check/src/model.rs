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
    /// A read answered with a value but no version (e.g. through the Redis
    /// protocol); `None` for an absent key.
    Value(Option<Vec<u8>>),
    /// A write acknowledged without a version.
    Written,
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

    /// Whether the current version may equal `version`. Version 0 means
    /// absent: only the absent register has it.
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
    let absent = state.value == 0;
    let wrote = |version: Version| State {
        value: step.input_value,
        version,
    };
    match (&step.input, &step.output) {
        (Input::Get, Output::Get(None)) if absent => vec![state],
        (Input::Get, Output::Get(Some((version, _))))
            if state.value == step.output_value && state.may_be(*version) =>
        {
            vec![State {
                version: Version::Known(*version),
                ..state
            }]
        }
        (Input::Get, Output::Unknown) => vec![state],
        (Input::Get, Output::Value(None)) if absent => vec![state],
        (Input::Get, Output::Value(Some(_))) if state.value == step.output_value => vec![state],
        (Input::Put { .. }, Output::Written) => vec![wrote(Version::Unknown)],
        (Input::Put { .. }, Output::Put { version }) if state.precedes(*version) => {
            vec![wrote(Version::Known(*version))]
        }
        (Input::Put { .. }, Output::Unknown) => vec![wrote(Version::Unknown)],
        (Input::Delete, Output::Delete { existed: true }) if !absent => vec![State::absent()],
        (Input::Delete, Output::Delete { existed: false }) if absent => vec![state],
        (Input::Delete, Output::Unknown) => vec![State::absent()],
        (Input::Cas { expected, .. }, Output::CasSwapped { version })
            if state.may_be(*expected) && state.precedes(*version) =>
        {
            vec![wrote(Version::Known(*version))]
        }
        (Input::Cas { expected, .. }, Output::CasMismatch { current })
            if current != expected && state.may_be(*current) =>
        {
            vec![State {
                version: Version::Known(*current),
                ..state
            }]
        }
        (Input::Cas { expected, .. }, Output::Unknown) => {
            // Either outcome is possible when the version is not known.
            let mut next = Vec::new();
            if state.may_be(*expected) {
                next.push(wrote(Version::Unknown));
            }
            if state.version != Version::Known(*expected) {
                next.push(state);
            }
            next
        }
        // The observed output is impossible in this state, or does not
        // belong to the input at all.
        _ => Vec::new(),
    }
}
