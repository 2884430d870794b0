//! A client connection's byte stream: the socket itself, or TLS over it
//! (`--tls-cert`/`--tls-key`, rustls), both non-blocking under the I/O
//! thread's edge-triggered poller. With TLS, `read` hands out the
//! plaintext rustls has, reading and decrypting more records until the
//! socket would block; `write` gives plaintext to rustls, which holds at
//! most `TLS_BUFFER_MAX` bytes unsent (then the write would block, as a
//! full socket's), and every call pushes what ciphertext the socket takes.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use tern_control::tls;

/// Bytes of TLS records a connection may hold unsent.
pub const TLS_BUFFER_MAX: usize = 256 * 1024;

pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<(TcpStream, rustls::ServerConnection)>),
}

impl Transport {
    /// A connection accepted on `stream`, under TLS when `tls` is given.
    pub(crate) fn new(
        stream: TcpStream,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> io::Result<Transport> {
        let Some(config) = tls else {
            return Ok(Transport::Plain(stream));
        };
        let mut connection =
            rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        connection.set_buffer_limit(Some(TLS_BUFFER_MAX));
        Ok(Transport::Tls(Box::new((stream, connection))))
    }

    pub(crate) fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(both) => &mut both.0,
        }
    }

    /// Plaintext read; Ok(0) at the end; WouldBlock when the socket has no
    /// more for now.
    pub(crate) fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let (socket, tls) = match self {
            Transport::Plain(stream) => return stream.read(buffer),
            Transport::Tls(both) => (&mut both.0, &mut both.1),
        };
        loop {
            match tls.reader().read(buffer) {
                Ok(read) => return Ok(read),
                // Closed without close_notify: an end all the same.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            if tls.read_tls(socket)? == 0 {
                return Ok(0);
            }
            let processed = tls.process_new_packets();
            // Whatever it has to say (a handshake message, an alert) goes out.
            push(socket, tls)?;
            processed.map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        }
    }

    /// Plaintext written (WouldBlock when nothing more can be taken now).
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let (socket, tls) = match self {
            Transport::Plain(stream) => return stream.write(bytes),
            Transport::Tls(both) => (&mut both.0, &mut both.1),
        };
        push(socket, tls)?;
        let taken = tls.writer().write(bytes)?;
        push(socket, tls)?;
        if taken == 0 && !bytes.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Sends what TLS records wait, as far as the socket takes them.
    pub(crate) fn push_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(both) => push(&mut both.0, &mut both.1),
        }
    }

    /// Whether TLS records wait to be sent.
    pub(crate) fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(both) => both.1.wants_write(),
        }
    }
}

fn push(socket: &mut TcpStream, tls: &mut rustls::ServerConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The server's TLS configuration from PEM files: its certificate chain
/// and key, and, with `client_ca`, client certificates required and
/// checked against those authorities. Errors name the file.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = tls::read_certificates(cert)?;
    let key_der = tls::read_key(key)?;
    let verifier = match client_ca {
        Some(ca) => Some(
            tls::client_verifier(tls::read_roots(ca)?)
                .map_err(|error| format!("{}: {error}", ca.display()))?,
        ),
        None => None,
    };
    tls::server_config(chain, key_der, verifier)
        .map_err(|error| format!("{} and {}: {error}", cert.display(), key.display()))
}
