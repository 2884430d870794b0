//! RESP2 and RESP3: parsing commands, encoding replies.
//!
//! Commands are parsed as redis-server 7 parses them, with its limits and
//! its error texts: RESP arrays of bulk strings, and inline commands (one
//! line, split with Redis's quoting rules). The parser keeps its place
//! between reads, so a command arriving in many pieces is never scanned
//! again from its start, and every length is checked before anything is
//! buffered for it.

/// Largest bulk string accepted in a command, in bytes (Redis:
/// `proto-max-bulk-len`, 512 MB there): twice the replicas' default value
/// limit, so that a value over that limit is read and refused with an
/// error naming it while the connection stays open; the bound keeps a bad
/// client from exhausting memory.
pub const BULK_LEN_MAX: usize = 32 << 20;
/// Most arguments accepted in one command (Redis: `INT_MAX`; here enough
/// for any command Tern serves).
pub const ARGUMENTS_MAX: usize = 1 << 20;
/// Longest inline command, and longest `*N` or `$N` line, without its line
/// end (Redis: `PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;
/// Most bytes one command may hold while it arrives: its arguments so far
/// and the bulk string it is in (Redis: `client-query-buffer-limit`, 1 GB
/// there). Bounds a connection's input memory.
pub const QUERY_BUFFER_MAX: usize = 64 << 20;
/// What one argument costs besides its bytes, counted against
/// [`QUERY_BUFFER_MAX`] (so a million empty ones count too).
const ARGUMENT_OVERHEAD: usize = std::mem::size_of::<Vec<u8>>();
/// Before AUTH, when a password is set: most arguments and longest bulk
/// string (as Redis 7 limits unauthenticated clients).
const UNAUTHENTICATED_ARGUMENTS_MAX: usize = 10;
const UNAUTHENTICATED_BULK_LEN_MAX: usize = 16 * 1024;

/// Why bytes are not a command: the connection is answered with this
/// (`ERR ...`) and closed.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn protocol(message: &str) -> ProtocolError {
    ProtocolError(format!("Protocol error: {message}"))
}

/// What [`Parser::next`] did: the bytes it took, and a command if one is
/// complete.
pub type Parsed = (usize, Option<Vec<Vec<u8>>>);

/// A command parser for one connection. Feed it the connection's unparsed
/// input with [`Parser::next`]; it says how many bytes it took (drop them
/// from the input) and returns a command once one is complete.
#[derive(Debug, Default)]
pub struct Parser {
    /// In a RESP array: the arguments still to come.
    remaining: usize,
    /// The arguments taken so far.
    arguments: Vec<Vec<u8>>,
    /// Their bytes.
    held: usize,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Parses from the start of `input`: the number of bytes taken, and the
    /// command if one is complete (an empty one for a blank line or `*0`,
    /// which Redis ignores). `authenticated`: a client that has passed AUTH
    /// (or needs none) is allowed the full limits.
    pub fn next(&mut self, input: &[u8], authenticated: bool) -> Result<Parsed, ProtocolError> {
        let mut taken = 0;
        if self.remaining == 0 {
            match input.first() {
                None => return Ok((0, None)),
                Some(b'*') => {}
                Some(_) => return inline(input),
            }
            let Some((count, line)) = number_line(input, 1, "too big mbulk count string")? else {
                return Ok((0, None));
            };
            let count = count
                .filter(|count| *count <= ARGUMENTS_MAX as i64)
                .ok_or_else(|| protocol("invalid multibulk length"))?;
            if !authenticated && count > UNAUTHENTICATED_ARGUMENTS_MAX as i64 {
                return Err(protocol("unauthenticated multibulk length"));
            }
            if count <= 0 {
                return Ok((line, Some(Vec::new())));
            }
            taken = line;
            self.remaining = count as usize;
            self.arguments = Vec::with_capacity(self.remaining.min(64));
            self.held = 0;
        }
        while self.remaining > 0 {
            let rest = &input[taken..];
            match rest.first() {
                None => return Ok((taken, None)),
                Some(b'$') => {}
                Some(other) => {
                    return Err(protocol(&format!("expected '$', got '{}'", *other as char)));
                }
            }
            let Some((length, line)) = number_line(rest, 1, "too big bulk count string")? else {
                return Ok((taken, None));
            };
            let length = length
                .filter(|length| (0..=BULK_LEN_MAX as i64).contains(length))
                .ok_or_else(|| protocol("invalid bulk length"))? as usize;
            if !authenticated && length > UNAUTHENTICATED_BULK_LEN_MAX {
                return Err(protocol("unauthenticated bulk length"));
            }
            if self.held + length + ARGUMENT_OVERHEAD > QUERY_BUFFER_MAX {
                return Err(ProtocolError(format!(
                    "command too large: over {QUERY_BUFFER_MAX} bytes (the query buffer limit)"
                )));
            }
            // As Redis does, the two bytes after the string are taken as
            // its line end without looking at them.
            if rest.len() < line + length + 2 {
                return Ok((taken, None));
            }
            self.arguments.push(rest[line..line + length].to_vec());
            self.held += length + ARGUMENT_OVERHEAD;
            self.remaining -= 1;
            taken += line + length + 2;
        }
        self.held = 0;
        Ok((taken, Some(std::mem::take(&mut self.arguments))))
    }
}

/// An inline command: one line, ended by LF (a CR before it is dropped).
fn inline(input: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some(newline) = input.iter().position(|byte| *byte == b'\n') else {
        if input.len() > INLINE_MAX {
            return Err(protocol("too big inline request"));
        }
        return Ok((0, None));
    };
    if newline > INLINE_MAX {
        return Err(protocol("too big inline request"));
    }
    let line = &input[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let arguments =
        split_arguments(line).ok_or_else(|| protocol("unbalanced quotes in request"))?;
    Ok((newline + 1, Some(arguments)))
}

/// The number on a `*N` or `$N` line starting at `input[0]`, digits from
/// `from`, and the bytes the line takes with its CRLF; None while the line
/// is incomplete; the number is None if it is not one. As Redis does, the
/// line ends at the first CR and the byte after it is taken as the LF.
fn number_line(
    input: &[u8],
    from: usize,
    too_big: &str,
) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let Some(cr) = input.iter().position(|byte| *byte == b'\r') else {
        if input.len() > INLINE_MAX {
            return Err(protocol(too_big));
        }
        return Ok(None);
    };
    if cr > INLINE_MAX {
        return Err(protocol(too_big));
    }
    if input.len() < cr + 2 {
        return Ok(None);
    }
    Ok(Some((strict_i64(&input[from..cr]), cr + 2)))
}

/// A decimal integer as Redis's `string2ll` reads one: an optional minus,
/// no plus, no leading zeros, nothing else.
fn strict_i64(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => bytes.len() == 1,
        [first, ..] => (b'1'..=b'9').contains(first),
    };
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Splits an inline command into arguments as Redis's `sdssplitargs` does:
/// words separated by white space; in double quotes, the escapes `\n \r
/// \t \b \a \\ \"` and `\xHH`; in single quotes, `\'`. A closing quote must
/// be followed by white space or the end. None for unbalanced quotes.
pub fn split_arguments(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut arguments = Vec::new();
    let mut position = 0;
    let at = |index: usize| line.get(index).copied();
    loop {
        while at(position).is_some_and(is_space) {
            position += 1;
        }
        if position >= line.len() {
            return Some(arguments);
        }
        let mut current = Vec::new();
        // Inside quotes: the quote that closes them.
        let mut quote: Option<u8> = None;
        loop {
            let byte = at(position);
            match (quote, byte) {
                (Some(_), None) => return None,
                (Some(b'"'), Some(b'\\'))
                    if at(position + 1) == Some(b'x')
                        && at(position + 2).is_some_and(|b| b.is_ascii_hexdigit())
                        && at(position + 3).is_some_and(|b| b.is_ascii_hexdigit()) =>
                {
                    let hex = |b: u8| (b as char).to_digit(16).expect("checked") as u8;
                    current.push(hex(line[position + 2]) * 16 + hex(line[position + 3]));
                    position += 3;
                }
                (Some(b'"'), Some(b'\\')) if at(position + 1).is_some() => {
                    position += 1;
                    current.push(match line[position] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                }
                (Some(b'\''), Some(b'\\')) if at(position + 1) == Some(b'\'') => {
                    position += 1;
                    current.push(b'\'');
                }
                (Some(closing), Some(byte)) if byte == closing => {
                    // A closing quote must end the argument.
                    if at(position + 1).is_some_and(|b| !is_space(b)) {
                        return None;
                    }
                    position += 1;
                    break;
                }
                (Some(_), Some(other)) => current.push(other),
                (None, None | Some(b' ' | b'\n' | b'\r' | b'\t' | 0)) => break,
                (None, Some(opening @ (b'"' | b'\''))) => quote = Some(opening),
                (None, Some(other)) => current.push(other),
            }
            position += 1;
        }
        arguments.push(current);
    }
}

/// C's `isspace`.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    /// A null array (`*-1` in RESP2): EXEC of a transaction whose watched
    /// key changed.
    NullArray,
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
            Frame::NullArray if protocol >= 3 => out.extend_from_slice(b"_\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
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

    /// Feeds `input` to a fresh parser in pieces of `piece` bytes, as a
    /// connection would: the commands, or the first error.
    fn parse_in_pieces(
        input: &[u8],
        piece: usize,
        authenticated: bool,
    ) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut parser = Parser::new();
        let (mut buffer, mut commands) = (Vec::new(), Vec::new());
        for chunk in input.chunks(piece) {
            buffer.extend_from_slice(chunk);
            loop {
                let (taken, command) = parser.next(&buffer, authenticated)?;
                buffer.drain(..taken);
                match command {
                    Some(command) => commands.push(command),
                    None => break,
                }
            }
        }
        Ok(commands)
    }

    fn words(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|word| word.as_bytes().to_vec()).collect()
    }

    #[test]
    fn arrays_and_inline_commands_parse_in_any_pieces() {
        let input = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING hello\r\nSET a b\n*0\r\n\r\n";
        for piece in 1..=input.len() {
            assert_eq!(
                parse_in_pieces(input, piece, true),
                Ok(vec![
                    words(&["GET", "key"]),
                    words(&["PING", "hello"]),
                    words(&["SET", "a", "b"]),
                    vec![],
                    vec![],
                ]),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn bad_input_gets_redis_s_error_texts() {
        let cases: [(&[u8], &str); 9] = [
            (b"*1\r\n+x\r\n", "Protocol error: expected '$', got '+'"),
            (
                b"*1\r\n$99999999\r\n",
                "Protocol error: invalid bulk length",
            ),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$01\r\n", "Protocol error: invalid bulk length"),
            (b"*x\r\n", "Protocol error: invalid multibulk length"),
            (b"*+1\r\n", "Protocol error: invalid multibulk length"),
            (
                b"*99999999999\r\n",
                "Protocol error: invalid multibulk length",
            ),
            (
                b"set \"\"\"test-key\"\"\" v\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"get \"open\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                parse_in_pieces(input, input.len(), true),
                Err(ProtocolError(message.into())),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn input_without_a_line_end_is_refused_after_64_kib() {
        for (lead, message) in [
            (&b""[..], "Protocol error: too big inline request"),
            (b"\x00", "Protocol error: too big inline request"),
            (b"*", "Protocol error: too big mbulk count string"),
            (b"*1\r\n$", "Protocol error: too big bulk count string"),
        ] {
            let mut input = lead.to_vec();
            input.resize(INLINE_MAX, b'1');
            assert_eq!(
                parse_in_pieces(&input, 4096, true),
                Ok(vec![]),
                "{lead:?}: waits"
            );
            input.extend_from_slice(b"11111111");
            assert_eq!(
                parse_in_pieces(&input, 4096, true),
                Err(ProtocolError(message.into())),
                "{lead:?}"
            );
        }
    }

    #[test]
    fn a_command_larger_than_the_query_buffer_limit_is_refused_before_it_arrives() {
        let mut input = format!("*{}\r\n", QUERY_BUFFER_MAX / BULK_LEN_MAX + 1).into_bytes();
        for _ in 0..QUERY_BUFFER_MAX / BULK_LEN_MAX {
            input.extend_from_slice(format!("${BULK_LEN_MAX}\r\n").as_bytes());
            input.resize(input.len() + BULK_LEN_MAX, b'v');
            input.extend_from_slice(b"\r\n");
        }
        // Only the next header: refused without its string.
        input.extend_from_slice(b"$1\r\n");
        let refused = parse_in_pieces(&input, 1 << 16, true).unwrap_err();
        assert!(refused.0.contains("query buffer limit"), "{refused}");
    }

    #[test]
    fn clients_that_have_not_authenticated_get_small_limits() {
        let many = b"*11\r\n";
        let long = b"*1\r\n$16385\r\n";
        for (input, message) in [
            (
                &many[..],
                "Protocol error: unauthenticated multibulk length",
            ),
            (&long[..], "Protocol error: unauthenticated bulk length"),
        ] {
            assert_eq!(
                parse_in_pieces(input, input.len(), false),
                Err(ProtocolError(message.into()))
            );
            assert_eq!(parse_in_pieces(input, input.len(), true), Ok(vec![]));
        }
    }

    #[test]
    fn inline_arguments_are_split_with_redis_s_quoting() {
        let split = |line: &str| split_arguments(line.as_bytes());
        assert_eq!(split("set \"a b\" c"), Some(words(&["set", "a b", "c"])));
        assert_eq!(split("  get   'it''s'  "), None);
        assert_eq!(split("get 'it\\'s'"), Some(words(&["get", "it's"])));
        assert_eq!(
            split("set k \"\\x41\\n\\t\\\\\\\"\""),
            Some(vec![b"set".to_vec(), b"k".to_vec(), b"A\n\t\\\"".to_vec()])
        );
        assert_eq!(
            split("a\"b c\"d"),
            None,
            "a closing quote must end the word"
        );
        assert_eq!(split("a\"b c\""), Some(words(&["ab c"])));
        assert_eq!(split("'unterminated"), None);
        assert_eq!(split(""), Some(vec![]));
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
