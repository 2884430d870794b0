//! The checker accepts linearizable histories and rejects the others.

use proptest::prelude::*;
use tern_check::{Input, Operation, Output, Verdict, check};

fn op(client: u64, input: Input, output: Output, call: u64, ret: Option<u64>) -> Operation {
    Operation {
        client,
        key: b"k".to_vec(),
        input,
        output,
        call,
        ret,
    }
}

fn put(value: &str) -> Input {
    Input::Put {
        value: value.as_bytes().to_vec(),
    }
}

fn got(version: u64, value: &str) -> Output {
    Output::Get(Some((version, value.as_bytes().to_vec())))
}

fn is_linearizable(history: &[Operation]) -> bool {
    match check(history) {
        Verdict::Linearizable => true,
        Verdict::Violation(error) => {
            eprintln!("{error}");
            false
        }
    }
}

#[test]
fn a_sequential_history_is_linearizable() {
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(10)),
        op(1, Input::Get, got(1, "a"), 20, Some(30)),
        op(
            2,
            Input::Cas {
                expected: 1,
                value: b"b".to_vec(),
            },
            Output::CasSwapped { version: 2 },
            40,
            Some(50),
        ),
        op(
            2,
            Input::Delete,
            Output::Delete { existed: true },
            60,
            Some(70),
        ),
        op(1, Input::Get, Output::Get(None), 80, Some(90)),
    ];
    assert!(is_linearizable(&history));
}

#[test]
fn a_read_concurrent_with_a_write_may_return_either_value() {
    for read in [Output::Get(None), got(1, "a")] {
        let history = [
            op(1, put("a"), Output::Put { version: 1 }, 0, Some(100)),
            op(2, Input::Get, read, 50, Some(60)),
        ];
        assert!(is_linearizable(&history));
    }
}

#[test]
fn a_stale_read_after_an_acknowledged_write_is_rejected() {
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(10)),
        op(1, put("b"), Output::Put { version: 2 }, 20, Some(30)),
        op(2, Input::Get, got(1, "a"), 40, Some(50)),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn reads_going_back_in_time_are_rejected() {
    // The write is concurrent with both reads, but once a read has seen the
    // new value, a later read may not see the old one.
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(5)),
        op(1, put("b"), Output::Put { version: 2 }, 10, Some(100)),
        op(2, Input::Get, got(2, "b"), 20, Some(30)),
        op(3, Input::Get, got(1, "a"), 40, Some(50)),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn two_cas_from_the_same_version_cannot_both_succeed() {
    let cas = |value: &str| Input::Cas {
        expected: 1,
        value: value.as_bytes().to_vec(),
    };
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(5)),
        op(2, cas("b"), Output::CasSwapped { version: 2 }, 10, Some(50)),
        op(3, cas("c"), Output::CasSwapped { version: 3 }, 10, Some(50)),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn a_read_must_report_the_version_of_the_write_it_saw() {
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(5)),
        op(2, Input::Get, got(7, "a"), 10, Some(20)),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn versions_must_grow_in_linearization_order() {
    let history = [
        op(1, put("a"), Output::Put { version: 5 }, 0, Some(5)),
        op(1, put("b"), Output::Put { version: 3 }, 10, Some(15)),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn a_timed_out_write_may_or_may_not_have_happened() {
    let seen = [
        op(1, put("a"), Output::Unknown, 0, None),
        op(2, Input::Get, got(4, "a"), 10, Some(20)),
        op(2, Input::Get, got(4, "a"), 30, Some(40)),
    ];
    assert!(is_linearizable(&seen));
    let not_seen = [
        op(1, put("a"), Output::Unknown, 0, None),
        op(2, Input::Get, Output::Get(None), 10, Some(20)),
    ];
    assert!(is_linearizable(&not_seen));
    // But once seen, it cannot be unseen.
    let flip = [
        op(1, put("a"), Output::Unknown, 0, None),
        op(2, Input::Get, got(4, "a"), 10, Some(20)),
        op(2, Input::Get, Output::Get(None), 30, Some(40)),
    ];
    assert!(!is_linearizable(&flip));
}

#[test]
fn a_cas_mismatch_must_report_the_current_version() {
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(5)),
        op(
            2,
            Input::Cas {
                expected: 9,
                value: b"x".to_vec(),
            },
            Output::CasMismatch { current: 1 },
            10,
            Some(20),
        ),
        op(
            2,
            Input::Cas {
                expected: 9,
                value: b"x".to_vec(),
            },
            Output::CasMismatch { current: 2 },
            30,
            Some(40),
        ),
    ];
    assert!(!is_linearizable(&history));
    assert!(is_linearizable(&history[..2]));
}

#[test]
fn histories_without_versions_are_checked_by_value() {
    let value = |text: &str| Output::Value(Some(text.as_bytes().to_vec()));
    let good = [
        op(1, put("a"), Output::Written, 0, Some(10)),
        op(2, Input::Get, value("a"), 5, Some(20)),
        op(1, put("b"), Output::Written, 30, Some(40)),
        op(2, Input::Get, value("b"), 50, Some(60)),
    ];
    assert!(is_linearizable(&good));
    let stale = [
        op(1, put("a"), Output::Written, 0, Some(10)),
        op(1, put("b"), Output::Written, 20, Some(30)),
        op(2, Input::Get, value("a"), 40, Some(50)),
    ];
    assert!(!is_linearizable(&stale));
    let absent_after_write = [
        op(1, put("a"), Output::Written, 0, Some(10)),
        op(2, Input::Get, Output::Value(None), 20, Some(30)),
    ];
    assert!(!is_linearizable(&absent_after_write));
}

#[test]
fn keys_are_checked_independently() {
    let mut other = op(2, Input::Get, got(1, "a"), 10, Some(20));
    other.key = b"other".to_vec();
    let history = [
        op(1, put("a"), Output::Put { version: 1 }, 0, Some(5)),
        other,
    ];
    assert!(
        !is_linearizable(&history),
        "the read of another key cannot see this write"
    );
}

/// A history produced by a real atomic register: each operation takes effect
/// at a point inside its random interval, in point order.
fn atomic_history(plan: Vec<(u8, u8, u16, u16, bool)>) -> Vec<Operation> {
    // (kind, value, point offset, interval slack, times out)
    let mut value: Option<(u64, Vec<u8>)> = None;
    let mut version = 0;
    let mut history = Vec::new();
    for (index, (kind, byte, before, after, times_out)) in plan.into_iter().enumerate() {
        let point = 1_000 * (index as u64 + 1);
        let call = point - u64::from(before % 900);
        let ret = point + u64::from(after % 5_000);
        let new_value = vec![byte, index as u8];
        let (input, output) = match kind % 4 {
            0 => (Input::Get, Output::Get(value.clone())),
            1 => {
                version += 1;
                value = Some((version, new_value.clone()));
                (Input::Put { value: new_value }, Output::Put { version })
            }
            2 => {
                let existed = value.take().is_some();
                version += 1;
                (Input::Delete, Output::Delete { existed })
            }
            _ => {
                let current = value.as_ref().map_or(0, |(v, _)| *v);
                let expected = if byte % 2 == 0 { current } else { current + 1 };
                version += 1;
                if expected == current {
                    value = Some((version, new_value.clone()));
                    (
                        Input::Cas {
                            expected,
                            value: new_value,
                        },
                        Output::CasSwapped { version },
                    )
                } else {
                    (
                        Input::Cas {
                            expected,
                            value: new_value,
                        },
                        Output::CasMismatch { current },
                    )
                }
            }
        };
        let timed_out = times_out && !matches!(input, Input::Get);
        history.push(Operation {
            client: index as u64,
            key: b"k".to_vec(),
            input,
            output: if timed_out { Output::Unknown } else { output },
            call,
            ret: if timed_out { None } else { Some(ret) },
        });
    }
    history
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn histories_of_an_atomic_register_are_always_accepted(
        plan in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>(), prop::bool::weighted(0.05)), 1..60)
    ) {
        let history = atomic_history(plan);
        prop_assert!(is_linearizable(&history));
    }

    #[test]
    fn corrupting_one_read_of_a_sequential_history_is_caught(
        plan in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), Just(0u16), Just(false)), 2..40),
        pick in any::<prop::sample::Index>(),
    ) {
        // Sequential (non-overlapping) histories admit one linearization, so a
        // read whose answer is changed to one that never held is rejected.
        let mut history: Vec<Operation> = atomic_history(plan)
            .into_iter()
            .map(|mut op| { op.call = op.call.max(1_000 * (op.client + 1) - 1); op.ret = op.ret.map(|_| 1_000 * (op.client + 1)); op })
            .collect();
        let reads: Vec<usize> = (0..history.len()).filter(|&i| history[i].input == Input::Get).collect();
        prop_assume!(!reads.is_empty());
        let victim = reads[pick.index(reads.len())];
        history[victim].output = Output::Get(Some((999_999, b"never written".to_vec())));
        prop_assert!(!is_linearizable(&history));
    }
}
