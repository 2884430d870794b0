//! RESP2 and RESP3: parsing commands, encoding replies.

/// Largest bulk string accepted in a command, in bytes. Tern values are far
/// smaller; the bound only keeps a bad client from exhausting memory.
pub const BULK_LEN_MAX: usize = 1 << 20;
/// Most arguments accepted in one command.
pub const ARGUMENTS_MAX: usize = 1 << 16;

/// Why bytes are not a command.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// More bytes are needed.
    Incomplete,
    /// Not RESP: the connection is answered with this and closed.
    Protocol(String),
}

/// Parses one command at the start of `bytes`: its arguments and the number
/// of bytes it used. Accepts RESP arrays of bulk strings and inline commands.
pub fn parse_command(bytes: &[u8]) -> Result<(Vec<Vec<u8>>, usize), ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Incomplete);
    }
    if bytes[0] != b'*' {
        let end = find_line_end(bytes, 0).ok_or(ParseError::Incomplete)?;
        let line = &bytes[..end];
        let arguments = line
            .split(|byte| byte.is_ascii_whitespace())
            .filter(|word| !word.is_empty());
        return Ok((arguments.map(<[u8]>::to_vec).collect(), end + 2));
    }
    let (count, mut position) = parse_number(bytes, 1)?;
    if count < 0 {
        return Ok((Vec::new(), position));
    }
    let count = usize::try_from(count).map_err(|_| protocol("invalid multibulk length"))?;
    if count > ARGUMENTS_MAX {
        return Err(protocol("invalid multibulk length"));
    }
    let mut arguments = Vec::with_capacity(count);
    for _ in 0..count {
        match bytes.get(position) {
            None => return Err(ParseError::Incomplete),
            Some(b'$') => {}
            Some(other) => {
                return Err(protocol(&format!("expected '$', got '{}'", *other as char)));
            }
        }
        let (length, start) = parse_number(bytes, position + 1)?;
        let length = usize::try_from(length).map_err(|_| protocol("invalid bulk length"))?;
        if length > BULK_LEN_MAX {
            return Err(protocol("invalid bulk length"));
        }
        let end = start + length;
        if bytes.len() < end + 2 {
            return Err(ParseError::Incomplete);
        }
        if &bytes[end..end + 2] != b"\r\n" {
            return Err(protocol("bulk string not followed by CRLF"));
        }
        arguments.push(bytes[start..end].to_vec());
        position = end + 2;
    }
    Ok((arguments, position))
}

fn protocol(message: &str) -> ParseError {
    ParseError::Protocol(format!("Protocol error: {message}"))
}

fn find_line_end(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..]
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|offset| from + offset)
}

/// A decimal number from `from` up to CRLF, and the position after the CRLF.
fn parse_number(bytes: &[u8], from: usize) -> Result<(i64, usize), ParseError> {
    let end = find_line_end(bytes, from).ok_or(ParseError::Incomplete)?;
    let text = std::str::from_utf8(&bytes[from..end]).map_err(|_| protocol("invalid length"))?;
    let number = text
        .parse::<i64>()
        .map_err(|_| protocol("invalid length"))?;
    Ok((number, end + 2))
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Frame>),
    /// A map in RESP3, a flat array of pairs in RESP2.
    Map(Vec<(Frame, Frame)>),
}

impl Frame {
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    pub fn error(message: impl Into<String>) -> Frame {
        Frame::Error(message.into())
    }

    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// Appends the encoding for protocol version 2 or 3.
    pub fn encode(&self, protocol: u8, out: &mut Vec<u8>) {
        match self {
            Frame::Simple(text) => {
                out.push(b'+');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Error(text) => {
                out.push(b'-');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Integer(value) => out.extend_from_slice(format!(":{value}\r\n").as_bytes()),
            Frame::Bulk(bytes) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Nil if protocol >= 3 => out.extend_from_slice(b"_\r\n"),
            Frame::Nil => out.extend_from_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Frame::Map(pairs) => {
                if protocol >= 3 {
                    out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes());
                } else {
                    out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes());
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_inline_commands_parse_and_incomplete_input_waits() {
        let command = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        assert_eq!(
            parse_command(command),
            Ok((vec![b"GET".to_vec(), b"key".to_vec()], command.len()))
        );
        for cut in 0..command.len() {
            assert_eq!(
                parse_command(&command[..cut]),
                Err(ParseError::Incomplete),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_command(b"PING hello\r\nrest"),
            Ok((vec![b"PING".to_vec(), b"hello".to_vec()], 12))
        );
        assert!(matches!(
            parse_command(b"*1\r\n+x\r\n"),
            Err(ParseError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n$99999999\r\n"),
            Err(ParseError::Protocol(_))
        ));
    }

    #[test]
    fn nil_and_maps_follow_the_protocol_version() {
        let mut two = Vec::new();
        let mut three = Vec::new();
        let map = Frame::Map(vec![(Frame::bulk("a"), Frame::Integer(1))]);
        Frame::Nil.encode(2, &mut two);
        Frame::Nil.encode(3, &mut three);
        assert_eq!(two, b"$-1\r\n");
        assert_eq!(three, b"_\r\n");
        let (mut two, mut three) = (Vec::new(), Vec::new());
        map.encode(2, &mut two);
        map.encode(3, &mut three);
        assert_eq!(two, b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(three, b"%1\r\n$1\r\na\r\n:1\r\n");
    }
}
