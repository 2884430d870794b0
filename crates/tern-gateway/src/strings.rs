//! The string commands beyond GET and SET, as redis-server 7 answers them:
//! SETRANGE, INCRBYFLOAT and SETBIT are each one Tern write decided at the
//! chain head (EDIT); GETBIT, BITCOUNT, BITPOS and LCS are computed here
//! from linearizable reads (LCS reads its two keys one after the other).

use tern_client::{Client, bit_of};

use crate::resp::Frame;
use crate::{arity_error, integer_error, parse_i64, tern_error, upper};

/// Redis's error for a bit offset outside `0..2^32`.
fn bit_offset_error() -> Frame {
    Frame::error("ERR bit offset is not an integer or out of range")
}

fn bit_offset(bytes: &[u8]) -> Result<u64, Frame> {
    match parse_i64(bytes) {
        Some(offset) if (0..1 << 32).contains(&offset) => Ok(offset as u64),
        _ => Err(bit_offset_error()),
    }
}

/// The value of `key`, empty when absent (Redis's string commands read a
/// missing key as "").
fn value_of(client: &mut Client, key: &[u8]) -> Result<Option<Vec<u8>>, Frame> {
    client
        .get(key)
        .map(|found| found.map(|found| found.value))
        .map_err(tern_error)
}

/// SETRANGE key offset value
pub fn set_range(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, offset, value] = args else {
        return arity_error("setrange");
    };
    let offset = match parse_i64(offset) {
        None => return integer_error(),
        Some(offset) if offset < 0 => return Frame::error("ERR offset is out of range"),
        Some(offset) => offset as u64,
    };
    match client.set_range(key, offset, value) {
        Ok(length) => Frame::Integer(length as i64),
        Err(error) => tern_error(error),
    }
}

/// INCRBYFLOAT key increment
pub fn incr_by_float(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, increment] = args else {
        return arity_error("incrbyfloat");
    };
    let Some(delta) = std::str::from_utf8(increment).ok() else {
        return Frame::error("ERR value is not a valid float");
    };
    match client.incr_by_float(key, delta) {
        Ok(value) => Frame::bulk(value),
        Err(error) => tern_error(error),
    }
}

/// SETBIT key offset value
pub fn set_bit(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, offset, value] = args else {
        return arity_error("setbit");
    };
    let offset = match bit_offset(offset) {
        Ok(offset) => offset,
        Err(error) => return error,
    };
    let on = match &value[..] {
        b"0" => false,
        b"1" => true,
        _ => return Frame::error("ERR bit is not an integer or out of range"),
    };
    match client.set_bit(key, offset, on) {
        Ok(before) => Frame::Integer(i64::from(before)),
        Err(error) => tern_error(error),
    }
}

/// GETBIT key offset
pub fn get_bit(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, offset] = args else {
        return arity_error("getbit");
    };
    let offset = match bit_offset(offset) {
        Ok(offset) => offset,
        Err(error) => return error,
    };
    match value_of(client, key) {
        Ok(value) => Frame::Integer(i64::from(bit_of(&value.unwrap_or_default(), offset))),
        Err(error) => error,
    }
}

/// A range of a BITCOUNT or BITPOS, in bits, inclusive; None when empty.
/// `start` and `end` count bytes, or bits with `in_bits`; negative ones
/// count from the end, as Redis normalizes them.
fn bit_range(length: usize, start: i64, end: i64, in_bits: bool) -> Option<(u64, u64)> {
    let total = if in_bits { length * 8 } else { length } as i64;
    let normalize = |index: i64| {
        if index < 0 {
            (total + index).max(0)
        } else {
            index
        }
    };
    let (start, end) = (normalize(start), normalize(end).min(total - 1));
    if start > end {
        return None;
    }
    let (start, end) = (start as u64, end as u64);
    Some(if in_bits {
        (start, end)
    } else {
        (start * 8, end * 8 + 7)
    })
}

/// The unit option of BITCOUNT and BITPOS: bits with BIT, bytes with BYTE.
fn in_bits(option: &[u8]) -> Option<bool> {
    match upper(option).as_str() {
        "BIT" => Some(true),
        "BYTE" => Some(false),
        _ => None,
    }
}

/// BITCOUNT key [start end [BYTE | BIT]]
pub fn bit_count(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, range @ ..] = args else {
        return arity_error("bitcount");
    };
    let value = match value_of(client, key) {
        Ok(Some(value)) => value,
        Ok(None) => return Frame::Integer(0),
        Err(error) => return error,
    };
    let (start, end, bits) = match range {
        [] => (0, -1, false),
        [start, end, unit @ ..] => {
            let (Some(start), Some(end)) = (parse_i64(start), parse_i64(end)) else {
                return integer_error();
            };
            let bits = match unit {
                [] => false,
                [unit] => match in_bits(unit) {
                    Some(bits) => bits,
                    None => return Frame::error("ERR syntax error"),
                },
                _ => return Frame::error("ERR syntax error"),
            };
            (start, end, bits)
        }
        _ => return Frame::error("ERR syntax error"),
    };
    let count = bit_range(value.len(), start, end, bits).map_or(0, |(first, last)| {
        (first..=last).filter(|&bit| bit_of(&value, bit)).count()
    });
    Frame::Integer(count as i64)
}

/// BITPOS key bit [start [end [BYTE | BIT]]]
pub fn bit_pos(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [key, bit, range @ ..] = args else {
        return arity_error("bitpos");
    };
    let wanted = match &bit[..] {
        b"0" => false,
        b"1" => true,
        _ if parse_i64(bit).is_none() => return integer_error(),
        _ => return Frame::error("ERR The bit argument must be 1 or 0."),
    };
    let value = match value_of(client, key) {
        Ok(Some(value)) => value,
        Ok(None) => return Frame::Integer(if wanted { -1 } else { 0 }),
        Err(error) => return error,
    };
    if range.len() > 3 {
        return Frame::error("ERR syntax error");
    }
    let mut numbers = [0, -1];
    for (index, number) in range.iter().take(2).enumerate() {
        match parse_i64(number) {
            Some(number) => numbers[index] = number,
            None => return integer_error(),
        }
    }
    let bits = match range.get(2) {
        None => false,
        Some(unit) => match in_bits(unit) {
            Some(bits) => bits,
            None => return Frame::error("ERR syntax error"),
        },
    };
    let end_given = range.len() >= 2;
    let Some((first, last)) = bit_range(value.len(), numbers[0], numbers[1], bits) else {
        return Frame::Integer(-1);
    };
    match (first..=last).find(|&bit| bit_of(&value, bit) == wanted) {
        Some(position) => Frame::Integer(position as i64),
        // Looking for a clear bit without an end: the one past the value.
        None if !wanted && !end_given => Frame::Integer((last + 1) as i64),
        None => Frame::Integer(-1),
    }
}

/// LCS key1 key2 [LEN] [IDX] [MINMATCHLEN len] [WITHMATCHLEN]
pub fn lcs(client: &mut Client, args: &[Vec<u8>]) -> Frame {
    let [first, second, options @ ..] = args else {
        return arity_error("lcs");
    };
    let (mut length_only, mut indexes, mut with_lengths, mut shortest) = (false, false, false, 0);
    let mut index = 0;
    while index < options.len() {
        match upper(&options[index]).as_str() {
            "LEN" => length_only = true,
            "IDX" => indexes = true,
            "WITHMATCHLEN" => with_lengths = true,
            "MINMATCHLEN" if index + 1 < options.len() => {
                match parse_i64(&options[index + 1]) {
                    Some(length) => shortest = length.max(0) as usize,
                    None => return integer_error(),
                }
                index += 1;
            }
            _ => return Frame::error("ERR syntax error"),
        }
        index += 1;
    }
    if length_only && indexes {
        return Frame::error("ERR If you want both the length and indexes, please just use IDX.");
    }
    let (a, b) = match (value_of(client, first), value_of(client, second)) {
        (Ok(a), Ok(b)) => (a.unwrap_or_default(), b.unwrap_or_default()),
        (Err(error), _) | (_, Err(error)) => return error,
    };
    // table[i][j]: the LCS length of a[..i] and b[..j].
    let width = b.len() + 1;
    let mut table = vec![0u32; (a.len() + 1) * width];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let total = table[a.len() * width + b.len()] as usize;
    if length_only {
        return Frame::Integer(total as i64);
    }
    // Walk back from the end, as Redis does, gathering the common string
    // and the matching ranges (last first).
    let mut common = vec![0u8; total];
    let mut matches = Vec::new();
    let (mut i, mut j, mut left) = (a.len(), b.len(), total);
    let mut range: Option<[usize; 4]> = None; // a start, a end, b start, b end
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            common[left - 1] = a[i - 1];
            range = Some(match range {
                None => [i - 1, i - 1, j - 1, j - 1],
                Some([_, a_end, _, b_end]) => [i - 1, a_end, j - 1, b_end],
            });
            if i == 1 || j == 1 {
                emit = true;
            }
            left -= 1;
            i -= 1;
            j -= 1;
        } else {
            if table[(i - 1) * width + j] > table[i * width + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            emit = range.is_some();
        }
        if emit && let Some([a_start, a_end, b_start, b_end]) = range.take() {
            let length = a_end - a_start + 1;
            if shortest == 0 || length >= shortest {
                let pair = |start: usize, end: usize| {
                    Frame::Array(vec![
                        Frame::Integer(start as i64),
                        Frame::Integer(end as i64),
                    ])
                };
                let mut found = vec![pair(a_start, a_end), pair(b_start, b_end)];
                if with_lengths {
                    found.push(Frame::Integer(length as i64));
                }
                matches.push(Frame::Array(found));
            }
        }
    }
    if !indexes {
        return Frame::bulk(common);
    }
    Frame::Map(vec![
        (Frame::bulk("matches"), Frame::Array(matches)),
        (Frame::bulk("len"), Frame::Integer(total as i64)),
    ])
}
