//! The head's in-place edits of a value (EDIT), each as Redis's command of
//! the same name computes it: SETRANGE, INCRBYFLOAT, SETBIT. Pure
//! functions of the value before and the operand, so every head decides
//! them alike.

#[cfg(test)]
use tern_wire::VALUE_LEN_MAX;
use tern_wire::edit;

/// Why an edit is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditError {
    /// The value would grow over the replica's longest value.
    TooLarge,
    /// INCRBYFLOAT of a value or operand that is not a decimal float.
    NotNumber,
    /// INCRBYFLOAT whose result is NaN or infinite.
    NotFinite,
    /// An unknown kind, or a SETBIT operand other than `0` or `1`.
    Malformed,
}

/// The value after the edit `kind` at `offset` with `operand`, from
/// `current` (empty for an absent key); None when nothing changes. The value
/// may not grow past `limit` bytes.
pub fn apply(
    kind: u8,
    offset: u64,
    current: &[u8],
    operand: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, EditError> {
    match kind {
        edit::SET_RANGE => set_range(offset, current, operand, limit),
        edit::INCR_BY_FLOAT => incr_by_float(current, operand).map(Some),
        edit::SET_BIT => set_bit(offset, current, operand, limit).map(Some),
        _ => Err(EditError::Malformed),
    }
}

fn set_range(
    offset: u64,
    current: &[u8],
    operand: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, EditError> {
    if operand.is_empty() {
        return Ok(None);
    }
    let end = usize::try_from(offset)
        .ok()
        .and_then(|offset| offset.checked_add(operand.len()))
        .filter(|end| *end <= limit)
        .ok_or(EditError::TooLarge)?;
    let offset = end - operand.len();
    let mut value = current.to_vec();
    if value.len() < end {
        value.resize(end, 0);
    }
    value[offset..end].copy_from_slice(operand);
    Ok(Some(value))
}

/// A decimal float as Redis reads one: no surrounding space, not NaN.
fn parse_float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty()
        || text.starts_with(char::is_whitespace)
        || text.ends_with(char::is_whitespace)
    {
        return None;
    }
    text.parse::<f64>().ok().filter(|value| !value.is_nan())
}

/// How INCRBYFLOAT writes its result: to 15 significant digits, with no
/// exponent and no trailing zeros, which is what Redis (computing in long
/// double, printing 17 decimals) gives for the sums people make
/// (`0.1 + 0.2` is `0.3`, not `0.30000000000000004`).
pub fn format_float(value: f64) -> String {
    let rounded: f64 = format!("{value:.14e}")
        .parse()
        .expect("a formatted float parses");
    let text = format!("{rounded}");
    if text == "-0" { "0".into() } else { text }
}

fn incr_by_float(current: &[u8], operand: &[u8]) -> Result<Vec<u8>, EditError> {
    let value = if current.is_empty() {
        0.0
    } else {
        parse_float(current).ok_or(EditError::NotNumber)?
    };
    let delta = parse_float(operand).ok_or(EditError::NotNumber)?;
    let sum = value + delta;
    if !sum.is_finite() {
        return Err(EditError::NotFinite);
    }
    Ok(format_float(sum).into_bytes())
}

fn set_bit(
    offset: u64,
    current: &[u8],
    operand: &[u8],
    limit: usize,
) -> Result<Vec<u8>, EditError> {
    let on = match operand {
        b"0" => false,
        b"1" => true,
        _ => return Err(EditError::Malformed),
    };
    let byte = usize::try_from(offset / 8)
        .ok()
        .filter(|byte| *byte < limit)
        .ok_or(EditError::TooLarge)?;
    let mask = 0x80u8 >> (offset % 8);
    let mut value = current.to_vec();
    if value.len() <= byte {
        value.resize(byte + 1, 0);
    }
    if on {
        value[byte] |= mask;
    } else {
        value[byte] &= !mask;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setrange_pads_overwrites_and_refuses_to_grow_past_the_limit() {
        let run = |offset, current: &[u8], operand: &[u8]| {
            apply(edit::SET_RANGE, offset, current, operand, VALUE_LEN_MAX)
        };
        assert_eq!(
            run(6, b"Hello World", b"Redis"),
            Ok(Some(b"Hello Redis".to_vec()))
        );
        assert_eq!(run(3, b"", b"x"), Ok(Some(b"\0\0\0x".to_vec())));
        assert_eq!(
            run(1, b"abc", b""),
            Ok(None),
            "an empty operand changes nothing"
        );
        let last = (VALUE_LEN_MAX - 1) as u64;
        assert_eq!(run(last, b"", b"x").unwrap().unwrap().len(), VALUE_LEN_MAX);
        assert_eq!(run(last, b"", b"xy"), Err(EditError::TooLarge));
        assert_eq!(run(u64::MAX, b"", b"x"), Err(EditError::TooLarge));
    }

    #[test]
    fn incrbyfloat_reads_and_writes_decimals_as_redis_does() {
        let run = |current: &[u8], operand: &[u8]| {
            apply(edit::INCR_BY_FLOAT, 0, current, operand, VALUE_LEN_MAX)
                .map(|value| String::from_utf8(value.unwrap()).unwrap())
        };
        assert_eq!(run(b"10.50", b"0.1"), Ok("10.6".into()));
        assert_eq!(run(b"0.1", b"0.2"), Ok("0.3".into()));
        assert_eq!(run(b"5.0e3", b"2.0e2"), Ok("5200".into()));
        assert_eq!(run(b"", b"-1.5"), Ok("-1.5".into()));
        assert_eq!(run(b"3", b"-3"), Ok("0".into()));
        assert_eq!(run(b"1e20", b"1"), Ok("100000000000000000000".into()));
        assert_eq!(run(b"abc", b"1"), Err(EditError::NotNumber));
        assert_eq!(run(b"1", b" 1"), Err(EditError::NotNumber));
        assert_eq!(run(b"1", b"nan"), Err(EditError::NotNumber));
        assert_eq!(run(b"1.7e308", b"1.7e308"), Err(EditError::NotFinite));
    }

    #[test]
    fn setbit_counts_bits_from_the_high_end_and_pads() {
        let run = |offset, current: &[u8], operand: &[u8]| {
            apply(edit::SET_BIT, offset, current, operand, VALUE_LEN_MAX)
        };
        assert_eq!(run(7, b"", b"1"), Ok(Some(vec![0x01])));
        assert_eq!(run(0, b"\x01", b"1"), Ok(Some(vec![0x81])));
        assert_eq!(run(9, b"\xff", b"1"), Ok(Some(vec![0xff, 0x40])));
        assert_eq!(run(0, b"\xff", b"0"), Ok(Some(vec![0x7f])));
        assert_eq!(run(0, b"", b"2"), Err(EditError::Malformed));
        let last = VALUE_LEN_MAX as u64 * 8 - 1;
        assert_eq!(run(last, b"", b"1").unwrap().unwrap().len(), VALUE_LEN_MAX);
        assert_eq!(run(last + 1, b"", b"1"), Err(EditError::TooLarge));
        assert_eq!(
            apply(99, 0, b"", b"", VALUE_LEN_MAX),
            Err(EditError::Malformed)
        );
    }
}
