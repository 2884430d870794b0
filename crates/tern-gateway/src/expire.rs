//! The expiry commands as redis-server 7 parses and answers them: SET's
//! EX/PX/EXAT/PXAT/KEEPTTL, SETEX, PSETEX, GETEX, the EXPIRE family with
//! NX/XX/GT/LT, TTL, PTTL, EXPIRETIME, PEXPIRETIME and PERSIST. Deadlines
//! are decided by the chain head (a duration from its clock); the gateway
//! only checks arguments as Redis does and, for TTL and PTTL, subtracts its
//! own clock from the deadline a read returned.

use std::time::Duration;

use tern_client::expiry::unix_now_ms;
use tern_client::{Client, Deadline, ExpireCondition, Lifetime, SetCondition};

use crate::resp::Frame;
use crate::{arity_error, integer_error, parse_i64, tern_error, upper};

/// Redis's error for an expire time it refuses.
fn invalid_time(command: &str) -> Frame {
    Frame::error(format!("ERR invalid expire time in '{command}' command"))
}

/// Whether `millis` from now is past what Redis's millisecond clock holds
/// (its "invalid expire time" for a relative time).
fn past_the_clock(millis: u64) -> bool {
    unix_now_ms()
        .checked_add(millis)
        .is_none_or(|at| at > i64::MAX as u64)
}

/// The unit of a time argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Millis,
}

/// A time argument of a SET-like command (`EX 10`, `PXAT 1700000000000`):
/// positive, and in milliseconds without overflow (Redis's checks).
fn lifetime(command: &str, amount: &[u8], unit: Unit, absolute: bool) -> Result<Lifetime, Frame> {
    let amount = parse_i64(amount).ok_or_else(integer_error)?;
    let millis = match unit {
        Unit::Seconds => amount.checked_mul(1000),
        Unit::Millis => Some(amount),
    };
    let millis = match millis {
        Some(millis) if amount > 0 => millis as u64,
        _ => return Err(invalid_time(command)),
    };
    if absolute {
        Ok(Lifetime::Until(millis))
    } else if past_the_clock(millis) {
        Err(invalid_time(command))
    } else {
        Ok(Lifetime::For(Duration::from_millis(millis)))
    }
}

/// SET's and GETEX's options as Redis's `parseExtendedStringArgumentsOrReply`
/// takes them: an option may repeat (the last time wins) but not meet one
/// it excludes; times are checked only once every option parsed.
#[derive(Default)]
struct Options<'a> {
    condition: SetCondition,
    return_old: bool,
    /// EX, PX, EXAT, PXAT with its amount, KEEPTTL or PERSIST.
    lifetime: Option<(&'static str, Option<&'a [u8]>)>,
}

fn parse_options<'a>(options: &'a [Vec<u8>], for_set: bool) -> Result<Options<'a>, Frame> {
    let mut parsed = Options::default();
    let mut index = 0;
    while index < options.len() {
        let option = upper(&options[index]);
        let amount = options.get(index + 1).map(|amount| &amount[..]);
        let kind = match option.as_str() {
            "EX" => "EX",
            "PX" => "PX",
            "EXAT" => "EXAT",
            "PXAT" => "PXAT",
            "KEEPTTL" if for_set => "KEEPTTL",
            "PERSIST" if !for_set => "PERSIST",
            "NX" if for_set && parsed.condition != SetCondition::IfExists => {
                parsed.condition = SetCondition::IfAbsent;
                index += 1;
                continue;
            }
            "XX" if for_set && parsed.condition != SetCondition::IfAbsent => {
                parsed.condition = SetCondition::IfExists;
                index += 1;
                continue;
            }
            "GET" if for_set => {
                parsed.return_old = true;
                index += 1;
                continue;
            }
            _ => return Err(Frame::error("ERR syntax error")),
        };
        if parsed.lifetime.is_some_and(|(chosen, _)| chosen != kind) {
            return Err(Frame::error("ERR syntax error"));
        }
        let takes_amount = !matches!(kind, "KEEPTTL" | "PERSIST");
        if takes_amount && amount.is_none() {
            return Err(Frame::error("ERR syntax error"));
        }
        parsed.lifetime = Some((kind, if takes_amount { amount } else { None }));
        index += if takes_amount { 2 } else { 1 };
    }
    Ok(parsed)
}

/// The lifetime named by parsed options, its time checked.
fn lifetime_of(command: &str, chosen: Option<(&str, Option<&[u8]>)>) -> Result<Lifetime, Frame> {
    match chosen {
        None => Ok(Lifetime::Forever),
        Some(("KEEPTTL", _)) => Ok(Lifetime::Keep),
        Some((kind, Some(amount))) => {
            let unit = if kind.starts_with('E') {
                Unit::Seconds
            } else {
                Unit::Millis
            };
            lifetime(command, amount, unit, kind.ends_with("AT"))
        }
        Some(_) => Err(Frame::error("ERR syntax error")),
    }
}

/// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]:
/// its key, value, condition, whether it answers the old value, and what
/// it does to the deadline; or Redis's error.
#[allow(clippy::type_complexity)]
pub fn parse_set(args: &[Vec<u8>]) -> Result<(&[u8], &[u8], SetCondition, bool, Lifetime), Frame> {
    let [key, value, options @ ..] = args else {
        return Err(arity_error("set"));
    };
    let parsed = parse_options(options, true)?;
    let lifetime = lifetime_of("set", parsed.lifetime)?;
    Ok((key, value, parsed.condition, parsed.return_old, lifetime))
}

/// SETEX key seconds value, PSETEX key milliseconds value.
pub fn set_ex(client: &mut Client, command: &str, args: &[Vec<u8>]) -> Frame {
    let [key, amount, value] = args else {
        return arity_error(command);
    };
    let unit = if command == "setex" {
        Unit::Seconds
    } else {
        Unit::Millis
    };
    match lifetime(command, amount, unit, false) {
        Ok(lifetime) => match client.set_for(key, value, SetCondition::Always, false, lifetime) {
            Ok(_) => Frame::ok(),
            Err(error) => tern_error(error),
        },
        Err(error) => error,
    }
}

/// GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]
pub fn get_ex(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, options @ ..] = args else {
        return arity_error("getex");
    };
    let parsed = match parse_options(options, false) {
        Ok(parsed) => parsed,
        Err(error) => return error,
    };
    let deadline = match parsed.lifetime {
        None => None,
        Some(("PERSIST", _)) => Some(Deadline::Never),
        chosen => match lifetime_of("getex", chosen) {
            Ok(Lifetime::For(duration)) => Some(Deadline::In(duration)),
            Ok(Lifetime::Until(unix_ms)) => Some(Deadline::At(unix_ms)),
            Ok(_) => unreachable!("an amount gives a duration or a time"),
            Err(error) => return error,
        },
    };
    match client.get_ex(key, deadline) {
        Ok(value) => value.map_or(Frame::Nil, Frame::bulk),
        Err(error) => tern_error(error),
    }
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX | XX | GT | LT]
pub fn expire(client: &mut Client, command: &str, args: &[Vec<u8>]) -> Frame {
    let [key, amount, options @ ..] = args else {
        return arity_error(command);
    };
    let (mut none, mut some, mut later, mut earlier) = (false, false, false, false);
    for option in options {
        match upper(option).as_str() {
            "NX" => none = true,
            "XX" => some = true,
            "GT" => later = true,
            "LT" => earlier = true,
            _ => {
                return Frame::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(option)
                ));
            }
        }
    }
    if none && (some || later || earlier) {
        return Frame::error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if later && earlier {
        return Frame::error("ERR GT and LT options at the same time are not compatible");
    }
    let condition = match (none, some, later, earlier) {
        (true, ..) => ExpireCondition::IfNone,
        (_, true, true, _) => ExpireCondition::IfSomeAndLater,
        (_, true, _, true) => ExpireCondition::IfSomeAndEarlier,
        (_, true, ..) => ExpireCondition::IfSome,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, _, _, true) => ExpireCondition::IfEarlier,
        _ => ExpireCondition::Always,
    };
    let Some(amount) = parse_i64(amount) else {
        return integer_error();
    };
    let millis = if command.starts_with('p') {
        Some(amount)
    } else {
        amount.checked_mul(1000)
    };
    let absolute = command.ends_with("at");
    let deadline = match millis {
        None => return invalid_time(command),
        // In the past (Redis deletes the key, conditions permitting).
        Some(millis) if millis <= 0 => Deadline::At(1),
        Some(millis) if absolute => Deadline::At(millis as u64),
        Some(millis) => {
            if past_the_clock(millis as u64) {
                return invalid_time(command);
            }
            Deadline::In(Duration::from_millis(millis as u64))
        }
    };
    match client.expire(key, deadline, condition) {
        Ok(changed) => Frame::Integer(i64::from(changed)),
        Err(error) => tern_error(error),
    }
}

/// PERSIST key
pub fn persist(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key] = args else {
        return arity_error("persist");
    };
    match client.expire(key, Deadline::Never, ExpireCondition::Always) {
        Ok(changed) => Frame::Integer(i64::from(changed)),
        Err(error) => tern_error(error),
    }
}

/// TTL, PTTL, EXPIRETIME, PEXPIRETIME key: -2 without the key, -1 without
/// a deadline; TTL rounds to the nearest second as Redis does.
pub fn ttl(client: &mut Client, command: &str, args: &[Vec<u8>]) -> Frame {
    let [key] = args else {
        return arity_error(command);
    };
    let found = match client.get(key) {
        Ok(Some(found)) => found,
        Ok(None) => return Frame::Integer(-2),
        Err(error) => return tern_error(error),
    };
    let Some(deadline) = found.deadline_ms else {
        return Frame::Integer(-1);
    };
    let left = deadline.saturating_sub(unix_now_ms()) as i64;
    Frame::Integer(match command {
        "ttl" => (left + 500) / 1000,
        "pttl" => left,
        "expiretime" => (deadline / 1000) as i64,
        _ => deadline as i64,
    })
}
