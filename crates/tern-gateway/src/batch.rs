//! A connection's pipelined commands in flight together. The commonest
//! commands (GET, SET, INCR and kin, DEL, EXISTS, MGET, MSET, STRLEN, ...)
//! are planned as Tern requests, which a [`Pipeline`] sends many at a time;
//! their replies go back in command order. Each key's commands stay in
//! order: a command touching a key that is still in flight waits for it.
//! Any other command runs alone, once everything before it has finished.

use tern_client::answer::{self, Call};
use tern_client::{ClientError, Lifetime, Pipeline, Reply, Request, SetCondition};

use crate::expire;
use crate::resp::Frame;
use crate::{arity_error, integer_error, parse_i64, tern_error};

/// How a planned command's replies become its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// GET: the value or nil.
    Value,
    /// SET: OK, nil when not written, or the value before with GET.
    Set { return_old: bool },
    /// SETNX: 1 when written.
    Written,
    /// GETSET: the value before.
    Old,
    /// INCR and kin: the sum.
    Sum,
    /// DEL, UNLINK: the keys deleted.
    Deleted,
    /// EXISTS, TOUCH: the keys found.
    Found,
    /// MGET: every value or nil.
    Values,
    /// MSET: OK once every key is written.
    Ok,
    /// STRLEN: the value's length.
    Length,
}

/// A command as Tern requests, each for one key.
#[derive(Debug)]
pub struct Plan<'a> {
    pub calls: Vec<(&'a [u8], Call<'a>)>,
    pub finish: Finish,
}

impl<'a> Plan<'a> {
    fn one(key: &'a [u8], call: Call<'a>, finish: Finish) -> Plan<'a> {
        Plan {
            calls: vec![(key, call)],
            finish,
        }
    }

    fn each(keys: &'a [Vec<u8>], call: Call<'a>, finish: Finish) -> Plan<'a> {
        Plan {
            calls: keys.iter().map(|key| (&key[..], call)).collect(),
            finish,
        }
    }
}

/// The commands [`plan`] plans (any case).
const PLANNED: &[&str] = &[
    "GET", "STRLEN", "SET", "SETNX", "GETSET", "INCR", "DECR", "INCRBY", "DECRBY", "DEL", "UNLINK",
    "EXISTS", "TOUCH", "MGET", "MSET",
];

/// Whether command `name` is planned (run with others in flight).
pub fn is_planned(name: &str) -> bool {
    PLANNED
        .iter()
        .any(|planned| planned.eq_ignore_ascii_case(name))
}

/// The plan of command `name` (upper case) with `args` (its keys already
/// in the selected database); None for a command that runs alone; an
/// error frame for arguments Redis refuses. `delta` keeps the decimal
/// text of an INCR-like delta, which the plan borrows.
pub fn plan<'a>(
    name: &str,
    args: &'a [Vec<u8>],
    delta: &'a mut Option<Vec<u8>>,
) -> Option<Result<Plan<'a>, Frame>> {
    if has_large_value(args) {
        return None;
    }
    plan_calls(name, args, delta)
}

/// Whether a command carries a value too large for a datagram: it is
/// staged before its write is sent (the client's blocking way), so the
/// command runs alone (`run_alone`) and ends its round.
pub fn has_large_value(args: &[Vec<u8>]) -> bool {
    args.iter().any(|arg| tern_client::large::is_large(arg))
}

/// A planned command with a value too large for a datagram, its calls one
/// after the other through the blocking client.
pub fn run_alone(client: &mut tern_client::Client, plan: Plan<'_>) -> Frame {
    let replies = plan
        .calls
        .into_iter()
        .map(|(key, call)| client.call(key, call))
        .collect();
    finish(plan.finish, replies)
}

/// The plan of a command, whatever the size of its values.
pub fn plan_calls<'a>(
    name: &str,
    args: &'a [Vec<u8>],
    delta: &'a mut Option<Vec<u8>>,
) -> Option<Result<Plan<'a>, Frame>> {
    let arity = || Err(arity_error(name));
    Some(match (name, args) {
        ("GET", [key]) => Ok(Plan::one(key, Call::get(), Finish::Value)),
        ("STRLEN", [key]) => Ok(Plan::one(key, Call::get(), Finish::Length)),
        ("SET", _) => {
            expire::parse_set(args).map(|(key, value, condition, return_old, lifetime)| {
                let call = Call::set(value, condition, return_old, lifetime);
                Plan::one(key, call, Finish::Set { return_old })
            })
        }
        ("SETNX", [key, value]) => {
            let call = Call::set(value, SetCondition::IfAbsent, false, Lifetime::Forever);
            Ok(Plan::one(key, call, Finish::Written))
        }
        ("GETSET", [key, value]) => {
            let call = Call::set(value, SetCondition::Always, true, Lifetime::Forever);
            Ok(Plan::one(key, call, Finish::Old))
        }
        ("INCR" | "DECR", [key]) => {
            let text = if name == "INCR" {
                b"1".to_vec()
            } else {
                b"-1".to_vec()
            };
            Ok(Plan::one(
                key,
                Call::incr_by(delta.insert(text)),
                Finish::Sum,
            ))
        }
        ("INCRBY" | "DECRBY", [key, by]) => match parse_i64(by) {
            Some(by) => {
                let by = if name == "INCRBY" {
                    Some(by)
                } else {
                    by.checked_neg()
                };
                match by {
                    Some(sum) => {
                        let text = sum.to_string().into_bytes();
                        Ok(Plan::one(
                            key,
                            Call::incr_by(delta.insert(text)),
                            Finish::Sum,
                        ))
                    }
                    None => Err(integer_error()),
                }
            }
            None => Err(integer_error()),
        },
        // No lazy freeing to choose: UNLINK deletes as DEL does.
        ("DEL" | "UNLINK", [_, ..]) => Ok(Plan::each(args, Call::delete(), Finish::Deleted)),
        // No access times are kept: TOUCH counts the keys that exist.
        ("EXISTS" | "TOUCH", [_, ..]) => Ok(Plan::each(args, Call::get(), Finish::Found)),
        ("MGET", [_, ..]) => Ok(Plan::each(args, Call::get(), Finish::Values)),
        ("MSET", [_, _, ..]) if args.len().is_multiple_of(2) => Ok(Plan {
            calls: args
                .chunks(2)
                .map(|pair| {
                    let call = Call::set(&pair[1], SetCondition::Always, false, Lifetime::Forever);
                    (&pair[0][..], call)
                })
                .collect(),
            finish: Finish::Ok,
        }),
        _ if is_planned(name) => arity(),
        _ => return None,
    })
}

/// The answer of a command whose requests were answered `replies` (in the
/// order of its calls).
pub fn finish(finish: Finish, replies: Vec<Result<Reply, ClientError>>) -> Frame {
    let mut replies = match replies.into_iter().collect::<Result<Vec<Reply>, _>>() {
        Ok(replies) => replies,
        Err(error) => return tern_error(error),
    };
    let counted = |replies: Vec<Reply>, count: fn(Reply) -> Result<bool, ClientError>| {
        let mut total = 0;
        for reply in replies {
            match count(reply) {
                Ok(counts) => total += i64::from(counts),
                Err(error) => return tern_error(error),
            }
        }
        Frame::Integer(total)
    };
    match finish {
        Finish::Deleted => return counted(replies, |reply| answer::deleted(&reply)),
        Finish::Found => {
            return counted(replies, |reply| {
                answer::read(reply).map(|found| found.is_some())
            });
        }
        Finish::Values => {
            let mut values = Vec::with_capacity(replies.len());
            for reply in replies {
                match answer::read(reply) {
                    Ok(found) => {
                        values.push(found.map_or(Frame::Nil, |found| Frame::bulk(found.value)))
                    }
                    Err(error) => return tern_error(error),
                }
            }
            return Frame::Array(values);
        }
        Finish::Ok => {
            for reply in replies {
                if let Err(error) = answer::set(reply, false) {
                    return tern_error(error);
                }
            }
            return Frame::ok();
        }
        _ => {}
    }
    let reply = replies.swap_remove(0);
    let result = match finish {
        Finish::Value => answer::read(reply)
            .map(|found| found.map_or(Frame::Nil, |found| Frame::bulk(found.value))),
        Finish::Length => answer::read(reply)
            .map(|found| Frame::Integer(found.map_or(0, |found| found.value.len() as i64))),
        Finish::Set { return_old } => answer::set(reply, return_old).map(|outcome| {
            if return_old {
                outcome.old.map_or(Frame::Nil, Frame::bulk)
            } else if outcome.written {
                Frame::ok()
            } else {
                Frame::Nil
            }
        }),
        Finish::Written => {
            answer::set(reply, false).map(|outcome| Frame::Integer(i64::from(outcome.written)))
        }
        Finish::Old => {
            answer::set(reply, true).map(|outcome| outcome.old.map_or(Frame::Nil, Frame::bulk))
        }
        Finish::Sum => answer::sum(&reply).map(Frame::Integer),
        Finish::Deleted | Finish::Found | Finish::Values | Finish::Ok => {
            unreachable!("answered above")
        }
    };
    result.unwrap_or_else(tern_error)
}

/// A call's pipeline token: its command's place among those under way in
/// the high half, its own among the command's calls in the low half (a
/// command may have many: DEL or MSET of thousands of keys).
fn token(command: usize, call: usize) -> u64 {
    (command as u64) << 32 | call as u64
}

fn untoken(token: u64) -> (usize, usize) {
    (
        (token >> 32) as usize,
        (token & u64::from(u32::MAX)) as usize,
    )
}

/// One planned command under way.
struct Running {
    /// Its place among the commands of the batch.
    slot: usize,
    finish: Finish,
    replies: Vec<Option<Result<Reply, ClientError>>>,
    left: usize,
}

/// What is under way: the commands, and (key, token) of each call in
/// flight (`token`).
struct Flight<'a> {
    running: Vec<Running>,
    in_flight: Vec<(&'a [u8], u64)>,
    completed: Vec<tern_client::Completion>,
}

impl<'a> Flight<'a> {
    fn busy(&self, key: &[u8]) -> bool {
        self.in_flight.iter().any(|(busy, _)| *busy == key)
    }

    /// Waits for replies and hands each finished command to `done`.
    fn poll(&mut self, pipeline: &mut Pipeline, done: &mut impl FnMut(usize, Frame)) {
        if let Err(error) = pipeline.poll(&mut self.completed) {
            // The socket failed: every call in flight fails with it.
            let text = error.to_string();
            for (_, token) in std::mem::take(&mut self.in_flight) {
                let failed = ClientError::Io(std::io::Error::other(text.clone()));
                self.deliver(token, Err(failed), done);
            }
            return;
        }
        for completion in std::mem::take(&mut self.completed) {
            self.in_flight
                .retain(|(_, token)| *token != completion.token);
            self.deliver(completion.token, completion.result, done);
        }
    }

    fn deliver(
        &mut self,
        token: u64,
        result: Result<Reply, ClientError>,
        done: &mut impl FnMut(usize, Frame),
    ) {
        let (command, call) = untoken(token);
        let command = &mut self.running[command];
        command.replies[call] = Some(result);
        command.left -= 1;
        if command.left == 0 {
            let replies = command
                .replies
                .drain(..)
                .map(|reply| reply.expect("every call answered"))
                .collect();
            done(command.slot, finish(command.finish, replies));
        }
    }

    /// Sends one call once the pipeline has room for it.
    fn submit(
        &mut self,
        pipeline: &mut Pipeline,
        (key, call): (&'a [u8], Call<'a>),
        token: u64,
        done: &mut impl FnMut(usize, Frame),
    ) {
        let room = |pipeline: &Pipeline| {
            if call.op == tern_wire::Op::Get {
                pipeline.has_room_for_read()
            } else {
                pipeline.has_room()
            }
        };
        while !room(pipeline) {
            self.poll(pipeline, done);
        }
        match pipeline.submit(Request::Call(call), key, token) {
            Ok(()) => self.in_flight.push((key, token)),
            Err(error) => self.deliver(token, Err(error), done),
        }
    }
}

/// Runs `plans` (each with its place `slot`) through `pipeline`, many at
/// once, each key's calls in order; `done(slot, frame)` gets each
/// command's answer as it finishes.
pub fn run<'a>(
    pipeline: &mut Pipeline,
    plans: Vec<(usize, Plan<'a>)>,
    mut done: impl FnMut(usize, Frame),
) {
    let mut flight = Flight {
        running: Vec::new(),
        in_flight: Vec::new(),
        completed: Vec::new(),
    };
    for (slot, plan) in plans {
        // A key's calls in order: wait for the ones in flight.
        while plan.calls.iter().any(|(key, _)| flight.busy(key)) {
            flight.poll(pipeline, &mut done);
        }
        let index = flight.running.len();
        flight.running.push(Running {
            slot,
            finish: plan.finish,
            replies: (0..plan.calls.len()).map(|_| None).collect(),
            left: plan.calls.len(),
        });
        for (call_index, call) in plan.calls.into_iter().enumerate() {
            // A command naming a key twice (MSET a 1 a 2): in order too.
            while flight.busy(call.0) {
                flight.poll(pipeline, &mut done);
            }
            flight.submit(pipeline, call, token(index, call_index), &mut done);
        }
    }
    while !flight.in_flight.is_empty() {
        flight.poll(pipeline, &mut done);
    }
}
