//! Random client histories on the simulated network, checked for
//! linearizability by `tern_check` (early commit, fan-out), and the loss
//! early commit at K = 1 documents.

use std::time::Duration;

use tern_check::{Input, Operation, Output, Verdict, check};
use tern_wire::{Op, Status};

use super::*;

/// One client operation of the random histories: its request and, once
/// answered, its place in the history.
struct Pending {
    request_id: u64,
    key: &'static [u8],
    input: Input,
    call: u64,
}

const KEYS: [&[u8]; 2] = [b"a", b"b"];

/// Random histories: `ops` PUTs and GETs sent one after another, with some
/// of the datagrams on their way (`picks` chooses how many, and which)
/// delivered before each; halfway replica `failed` (if any) fails and
/// meta reconfigures the coordinator in place or a new one takes over. Every answered operation goes into the history, an unanswered
/// write as of unknown outcome; the history must be linearizable.
pub fn run_history(
    mut sim: Sim,
    failed: Option<usize>,
    in_place: bool,
    ops: &[(bool, u8)],
    picks: &[usize],
) {
    let mut clock = 0u64;
    let mut pending: Vec<Pending> = Vec::new();
    let mut history: Vec<Operation> = Vec::new();
    let mut seen = 0usize;
    let mut epoch = EPOCH;
    let mut next_id = 1u64;
    let half = ops.len() / 2;
    let collect = |sim: &Sim,
                   clock: u64,
                   pending: &mut Vec<Pending>,
                   history: &mut Vec<Operation>,
                   seen: &mut usize| {
        for reply in &sim.client_inbox[*seen..] {
            let id = reply.header.request_id.get();
            let Some(index) = pending.iter().position(|p| p.request_id == id) else {
                continue;
            };
            let output = match (&pending[index].input, reply.status()) {
                (Input::Get, Status::Ok) => {
                    Output::Get(Some((reply.header.version(), reply.value.clone())))
                }
                (Input::Get, Status::NotFound) => Output::Get(None),
                (Input::Put { .. }, Status::Ok) => Output::Put {
                    version: reply.header.version(),
                },
                // Refused (TRY_AGAIN, STALE_EPOCH): never applied.
                _ => {
                    pending.remove(index);
                    continue;
                }
            };
            let done = pending.remove(index);
            history.push(Operation {
                client: done.request_id,
                key: done.key.to_vec(),
                input: done.input,
                output,
                call: done.call,
                ret: Some(clock),
            });
        }
        *seen = sim.client_inbox.len();
    };
    let mut step = 0usize;
    for (index, &(is_put, key)) in ops.iter().enumerate() {
        if index == half
            && let Some(failed) = failed
        {
            if in_place {
                sim.fail_replica_in_place(failed);
            } else {
                sim.fail_replica(failed);
            }
            epoch = sim.replica_config(0).epoch;
            sim.advance(Duration::from_millis(50));
        }
        let key = KEYS[key as usize % KEYS.len()];
        let request_id = next_id;
        next_id += 1;
        let input = if is_put {
            let value = format!("v{request_id}").into_bytes();
            sim.send(request_at(epoch, Op::Put, key, &value, 0, request_id));
            Input::Put { value }
        } else {
            sim.send(request_at(epoch, Op::Get, key, b"", 0, request_id));
            Input::Get
        };
        clock += 1;
        pending.push(Pending {
            request_id,
            key,
            input,
            call: clock,
        });
        // Some of what is on its way arrives before the next request.
        for _ in 0..picks[index % picks.len()] % 8 {
            if sim.network.is_empty() {
                break;
            }
            let at = picks[step % picks.len()] % sim.network.len();
            step += 1;
            sim.deliver_at(at);
            clock += 1;
            collect(&sim, clock, &mut pending, &mut history, &mut seen);
        }
    }
    for _ in 0..6 {
        sim.advance(Duration::from_millis(120));
        sim.deliver_all();
        clock += 1;
        collect(&sim, clock, &mut pending, &mut history, &mut seen);
    }
    for write in pending
        .into_iter()
        .filter(|p| matches!(p.input, Input::Put { .. }))
    {
        history.push(Operation {
            client: write.request_id,
            key: write.key.to_vec(),
            input: write.input,
            output: Output::Unknown,
            call: write.call,
            ret: None,
        });
    }
    match check(&history) {
        Verdict::Linearizable => {}
        verdict => panic!("{verdict:?}\n{history:#?}"),
    }
}

/// K = 1 (`sim` answers at its head's acknowledgement): a write the head
/// answered and failed before passing on is lost, and nothing else: a
/// write the others received survives the head's failure.
pub fn assert_k1_loses_only_what_the_head_alone_had(mut sim: Sim) {
    let head = sim.chain[0];
    sim.put(b"kept", b"1", 1);
    sim.deliver_all();
    sim.put(b"lost", b"2", 2);
    let from_head = |d: &Datagram| d.from == head && d.op() == Op::Replicate;
    sim.deliver_all_except(from_head);
    sim.lose(from_head);
    assert_eq!(sim.reply_to(2).status(), Status::Ok, "answered by the head");
    sim.fail_replica(0);
    for _ in 0..10 {
        sim.advance(Duration::from_millis(60));
        sim.deliver_all();
    }
    assert!(sim.shard().is_ready());
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"kept").unwrap().value, b"1");
        assert!(replica.store().latest(b"lost").is_none(), "K = 1 loses it");
    }
}
