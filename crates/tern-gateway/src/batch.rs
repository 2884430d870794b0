//! A connection's pipelined commands in flight together. The commonest
//! commands (GET, SET, INCR and kin, DEL, EXISTS, MGET, MSET, STRLEN, ...)
//! are planned as Tern requests, which a `tern_client::Pipeline` sends many at a time;
//! their replies go back in command order. Each key's commands stay in
//! order: a command touching a key that is still in flight waits for it.
//! Any other command runs alone, once everything before it has finished.
//! A [`Round`] is one connection's share: its worker sends the calls of
//! many connections' rounds through the same pipelines.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tern_client::answer::{self, Call};
use tern_client::{ClientError, Lifetime, Reply, SetCondition};

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

/// Whether a command (its name and arguments) is sent through the
/// pipelines with others: planned, no large value, not a transaction of
/// its own (`crate::transaction::runs_atomically`).
pub fn is_pipelined(arguments: &[Vec<u8>]) -> bool {
    let name = crate::upper(&arguments[0]);
    is_planned(&name)
        && !has_large_value(arguments)
        && !crate::transaction::runs_atomically(&name, &arguments[1..])
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
    if crate::transaction::runs_atomically(name, args) {
        // A transaction of its own, run alone (`crate::transaction::atomically`).
        return None;
    }
    plan_keywise(name, args, delta)
}

/// The plan of a command as requests for one key each (a multi-key
/// command too: not atomic then).
pub fn plan_keywise<'a>(
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

/// What became of one call handed to a pipeline.
pub enum Sent {
    /// In flight under this tag.
    InFlight(u64),
    /// No pipeline has room: the round waits until one has.
    NoRoom,
    /// It could not be sent: the call fails with this.
    Failed(ClientError),
}

/// A command of a round that runs alone.
pub struct Alone<'a> {
    /// Its place in the round.
    pub slot: usize,
    /// Its entry in `commands::COMMANDS`.
    pub spec: Option<usize>,
    /// Its arguments, name first.
    pub arguments: &'a mut Vec<Vec<u8>>,
}

/// One planned command under way.
struct Running {
    /// Its place among the commands of the round.
    slot: usize,
    finish: Finish,
    replies: Vec<Option<Result<Reply, ClientError>>>,
    left: usize,
}

/// A round of one connection's commands: the planned ones sent many at
/// once, each key's calls in order, then those that run alone (at most
/// the round's last command), answered in order. Kept by the connection
/// while replies come in; [`Round::pump`] sends what can be sent.
pub struct Round {
    /// The commands as they came, name first.
    commands: Vec<Vec<Vec<u8>>>,
    /// Their entries in `commands::COMMANDS`.
    specs: Vec<Option<usize>>,
    /// Each command's arguments with its keys in the selected database
    /// (None in database 0: as they came).
    in_db: Vec<Option<Vec<Vec<u8>>>>,
    answers: Vec<Option<(Frame, Duration)>>,
    started: Instant,
    /// The planned commands in order, and the next call to send: (its
    /// command among them, its place among the command's calls).
    running: Vec<Running>,
    next: (usize, usize),
    /// (key, tag) of each call in flight.
    in_flight: Vec<(Vec<u8>, u64)>,
    /// The commands that run alone, in order.
    alone: VecDeque<usize>,
}

impl Round {
    /// Plans `commands` for a connection in database `db`; the planned
    /// commands wait for [`Round::pump`], refusals are answered at once.
    /// `planning`: whether planned commands go through the pipelines (a
    /// connection that is not authenticated, or queues a MULTI, runs every
    /// command alone, through `execute`).
    pub fn new(commands: Vec<Vec<Vec<u8>>>, db: u32, planning: bool) -> Round {
        let started = Instant::now();
        let specs: Vec<Option<usize>> = commands
            .iter()
            .map(|arguments| crate::commands::index_of(&String::from_utf8_lossy(&arguments[0])))
            .collect();
        let in_db: Vec<Option<Vec<Vec<u8>>>> = commands
            .iter()
            .zip(&specs)
            .map(|(arguments, index)| {
                let spec = index.map(|index| &crate::commands::COMMANDS[index]);
                (db != 0).then(|| crate::keys_in_db(spec, &arguments[1..], db))
            })
            .collect();
        let mut round = Round {
            answers: (0..commands.len()).map(|_| None).collect(),
            specs,
            in_db,
            started,
            running: Vec::new(),
            next: (0, 0),
            in_flight: Vec::new(),
            alone: VecDeque::new(),
            commands: Vec::new(),
        };
        for (slot, arguments) in commands.iter().enumerate() {
            let args = round.in_db[slot].as_deref().unwrap_or(&arguments[1..]);
            let mut delta = None;
            let planned = planning
                .then(|| plan(&crate::upper(&arguments[0]), args, &mut delta))
                .flatten();
            match planned {
                Some(Ok(plan)) => round.running.push(Running {
                    slot,
                    finish: plan.finish,
                    replies: (0..plan.calls.len()).map(|_| None).collect(),
                    left: plan.calls.len(),
                }),
                Some(Err(refusal)) => round.answers[slot] = Some((refusal, started.elapsed())),
                None => round.alone.push_back(slot),
            }
        }
        round.commands = commands;
        round
    }

    /// Sends, through `send(key, call, command, call index)`, every call
    /// whose key has nothing in flight, in order, until one must wait.
    /// Whether it stopped for want of room in the pipelines.
    pub fn pump(&mut self, send: &mut impl FnMut(&[u8], Call<'_>, usize, usize) -> Sent) -> bool {
        let Round {
            commands,
            in_db,
            running,
            next,
            in_flight,
            answers,
            started,
            ..
        } = self;
        let busy = |in_flight: &[(Vec<u8>, u64)], key: &[u8]| {
            in_flight.iter().any(|(busy, _)| busy.as_slice() == key)
        };
        while next.0 < running.len() {
            let (command, first) = *next;
            let slot = running[command].slot;
            let arguments = &commands[slot];
            let args = in_db[slot].as_deref().unwrap_or(&arguments[1..]);
            let mut delta = None;
            let Some(Ok(plan)) = plan(&crate::upper(&arguments[0]), args, &mut delta) else {
                unreachable!("planned when the round began")
            };
            // A key's calls in order: a command waits for its keys' calls
            // in flight, and a call for its command's own on the same key
            // (MSET a 1 a 2).
            if first == 0 && plan.calls.iter().any(|(key, _)| busy(in_flight, key)) {
                return false;
            }
            for (index, (key, call)) in plan.calls.into_iter().enumerate().skip(first) {
                if busy(in_flight, key) {
                    next.1 = index;
                    return false;
                }
                match send(key, call, command, index) {
                    Sent::InFlight(tag) => in_flight.push((key.to_vec(), tag)),
                    Sent::NoRoom => {
                        next.1 = index;
                        return true;
                    }
                    Sent::Failed(error) => {
                        Self::store(running, answers, *started, command, index, Err(error))
                    }
                }
            }
            *next = (command + 1, 0);
        }
        false
    }

    /// The reply of call `call` of planned command `command`, sent under
    /// `tag`.
    pub fn deliver(
        &mut self,
        command: usize,
        call: usize,
        tag: u64,
        result: Result<Reply, ClientError>,
    ) {
        self.in_flight.retain(|(_, sent)| *sent != tag);
        Self::store(
            &mut self.running,
            &mut self.answers,
            self.started,
            command,
            call,
            result,
        );
    }

    fn store(
        running: &mut [Running],
        answers: &mut [Option<(Frame, Duration)>],
        started: Instant,
        command: usize,
        call: usize,
        result: Result<Reply, ClientError>,
    ) {
        let command = &mut running[command];
        command.replies[call] = Some(result);
        command.left -= 1;
        if command.left == 0 {
            let replies = command
                .replies
                .drain(..)
                .map(|reply| reply.expect("every call answered"))
                .collect();
            answers[command.slot] = Some((finish(command.finish, replies), started.elapsed()));
        }
    }

    /// Whether every planned command is sent and answered.
    pub fn planned_done(&self) -> bool {
        self.next.0 == self.running.len() && self.in_flight.is_empty()
    }

    /// The next command that runs alone, once the planned ones are done.
    pub fn next_alone(&mut self) -> Option<Alone<'_>> {
        let slot = self.alone.pop_front()?;
        Some(Alone {
            slot,
            spec: self.specs[slot],
            arguments: &mut self.commands[slot],
        })
    }

    /// The answer of a command that ran alone.
    pub fn answer(&mut self, slot: usize, reply: Frame) {
        self.answers[slot] = Some((reply, self.started.elapsed()));
    }

    /// Whether every command of the round is answered (a planned one is
    /// once all its calls are, so nothing of the round is in flight).
    pub fn answered(&self) -> bool {
        self.answers.iter().all(Option::is_some)
    }

    /// Each command's entry in `commands::COMMANDS`, answer and how long
    /// it took, in order (once [`Round::answered`]).
    pub fn into_answers(self) -> impl Iterator<Item = (Option<usize>, Frame, Duration)> {
        self.specs
            .into_iter()
            .zip(self.answers)
            .map(|(spec, answer)| {
                let (reply, took) = answer.expect("every command answered");
                (spec, reply, took)
            })
    }
}
