//! Batched UDP I/O for Tern's processes and the loop that drives a protocol
//! core with it: receive up to [`BATCH_MAX`] datagrams with one `recvmmsg`,
//! step the core on each, send everything it produced with `sendmmsg`.
//!
//! IPv4 only, like the kernel fast path. Knows nothing of the protocol beyond
//! the [`tern_proto::Core`] trait.
// PERFORMANCE CRITICAL PATH: `serve` is every process's main loop.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tern_proto::{Core, Outbox, Time};

/// Datagrams received or sent per system call at most.
pub const BATCH_MAX: usize = 64;
/// Receive buffer per datagram; larger than any valid datagram, so that an
/// oversized one arrives truncated, fails to decode and is counted.
pub const RECV_BUFFER_LEN: usize = 2048;
/// Kernel socket buffer size requested for each direction, in bytes.
pub const SOCKET_BUFFER_BYTES: i32 = 4 << 20;
/// Longest wait for a datagram before the core's timers run.
pub const TICK_INTERVAL: Duration = Duration::from_millis(5);

/// A UDP socket that receives and sends in batches.
#[derive(Debug)]
pub struct BatchSocket {
    socket: UdpSocket,
    buffers: Box<[[u8; RECV_BUFFER_LEN]]>,
    lengths: [usize; BATCH_MAX],
    sources: [SocketAddrV4; BATCH_MAX],
    received: usize,
    send_errors: u64,
    /// Where this process's own [`Waker`]s send from: their empty
    /// datagrams only end a wait, and never reach the core.
    wakers: Vec<SocketAddrV4>,
}

/// Ends a [`BatchSocket`]'s wait for datagrams from another thread (one that
/// left work for the main loop, which looks for it between batches): an
/// empty datagram to the socket, from an address the socket knows as its
/// own waker's.
#[derive(Debug)]
pub struct Waker {
    socket: UdpSocket,
    to: SocketAddrV4,
}

impl Waker {
    pub fn wake(&self) {
        // Best effort: a lost wake-up costs one wait of TICK_INTERVAL.
        let _ = self.socket.send_to(&[], self.to);
    }
}

impl BatchSocket {
    pub fn bind(address: SocketAddrV4) -> io::Result<Self> {
        let socket = UdpSocket::bind(address)?;
        for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // Best effort: the kernel caps the size at net.core.*mem_max.
            set_socket_option(&socket, option, SOCKET_BUFFER_BYTES);
        }
        socket.set_read_timeout(Some(TICK_INTERVAL))?;
        Ok(BatchSocket {
            socket,
            buffers: vec![[0; RECV_BUFFER_LEN]; BATCH_MAX].into_boxed_slice(),
            lengths: [0; BATCH_MAX],
            sources: [SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); BATCH_MAX],
            received: 0,
            send_errors: 0,
            wakers: Vec::new(),
        })
    }

    /// A [`Waker`] for this socket.
    pub fn waker(&mut self) -> io::Result<Waker> {
        let mut to = self.local_addr()?;
        if to.ip().is_unspecified() {
            to.set_ip(Ipv4Addr::LOCALHOST);
        }
        let socket = UdpSocket::bind(SocketAddrV4::new(*to.ip(), 0))?;
        let std::net::SocketAddr::V4(from) = socket.local_addr()? else {
            unreachable!("bound to IPv4")
        };
        self.wakers.push(from);
        Ok(Waker { socket, to })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        match self.socket.local_addr()? {
            std::net::SocketAddr::V4(address) => Ok(address),
            std::net::SocketAddr::V6(_) => Err(io::Error::other("Tern speaks IPv4 only")),
        }
    }

    /// Datagrams that could not be sent (for example no route), so far.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Waits up to [`TICK_INTERVAL`] for datagrams and receives every one
    /// already queued, up to [`BATCH_MAX`]. Returns how many arrived.
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        // SAFETY: all-zero bytes are a valid value for these plain C structs.
        let mut headers: [libc::mmsghdr; BATCH_MAX] = unsafe { zeroed() };
        let mut iovecs: [libc::iovec; BATCH_MAX] = unsafe { zeroed() };
        let mut names: [libc::sockaddr_in; BATCH_MAX] = unsafe { zeroed() };
        for index in 0..BATCH_MAX {
            iovecs[index].iov_base = self.buffers[index].as_mut_ptr().cast();
            iovecs[index].iov_len = RECV_BUFFER_LEN;
            headers[index].msg_hdr.msg_iov = &mut iovecs[index];
            headers[index].msg_hdr.msg_iovlen = 1;
            headers[index].msg_hdr.msg_name = (&raw mut names[index]).cast();
            headers[index].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: every pointer refers to a live local or to self.buffers,
        // each sized as declared; MSG_WAITFORONE blocks only for the first
        // datagram (bounded by the socket's read timeout).
        let count = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH_MAX as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            self.received = 0;
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        self.received = count as usize;
        for index in 0..self.received {
            self.lengths[index] = headers[index].msg_len as usize;
            self.sources[index] = from_sockaddr(&names[index]);
        }
        Ok(self.received)
    }

    /// The datagrams of the last [`BatchSocket::recv_batch`] (less the
    /// wake-ups).
    pub fn received(&self) -> impl Iterator<Item = (SocketAddrV4, &[u8])> {
        (0..self.received)
            .filter(|&index| self.lengths[index] > 0 || !self.wakers.contains(&self.sources[index]))
            .map(|index| {
                (
                    self.sources[index],
                    &self.buffers[index][..self.lengths[index]],
                )
            })
    }

    /// Whether the last [`BatchSocket::recv_batch`] brought a wake-up.
    pub fn woken(&self) -> bool {
        (0..self.received)
            .any(|index| self.lengths[index] == 0 && self.wakers.contains(&self.sources[index]))
    }

    /// Sends every datagram, `BATCH_MAX` per system call. A datagram the
    /// kernel refuses is skipped and counted in [`BatchSocket::send_errors`].
    pub fn send_batch<'a>(
        &mut self,
        datagrams: impl Iterator<Item = (SocketAddrV4, &'a [u8])>,
    ) -> io::Result<()> {
        let mut datagrams = datagrams.peekable();
        while datagrams.peek().is_some() {
            // SAFETY: all-zero bytes are a valid value for these plain C structs.
            let mut headers: [libc::mmsghdr; BATCH_MAX] = unsafe { zeroed() };
            let mut iovecs: [libc::iovec; BATCH_MAX] = unsafe { zeroed() };
            let mut names: [libc::sockaddr_in; BATCH_MAX] = unsafe { zeroed() };
            let mut count = 0;
            for (to, bytes) in datagrams.by_ref().take(BATCH_MAX) {
                names[count] = to_sockaddr(to);
                iovecs[count].iov_base = bytes.as_ptr().cast_mut().cast();
                iovecs[count].iov_len = bytes.len();
                headers[count].msg_hdr.msg_iov = &mut iovecs[count];
                headers[count].msg_hdr.msg_iovlen = 1;
                headers[count].msg_hdr.msg_name = (&raw mut names[count]).cast();
                headers[count].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                count += 1;
            }
            let mut sent = 0;
            while sent < count {
                // SAFETY: headers[sent..count] point at live locals and at
                // the borrowed datagram bytes, which outlive this call.
                let result = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        headers[sent..].as_mut_ptr(),
                        (count - sent) as u32,
                        0,
                    )
                };
                if result < 0 {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // The first remaining datagram failed on its own: skip it.
                    self.send_errors += 1;
                    tracing::debug!(%error, to = %from_sockaddr(&names[sent]), "datagram not sent");
                    sent += 1;
                } else {
                    sent += result as usize;
                }
            }
        }
        Ok(())
    }
}

fn set_socket_option(socket: &UdpSocket, option: libc::c_int, value: libc::c_int) {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
}

fn from_sockaddr(name: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
        u16::from_be(name.sin_port),
    )
}

fn to_sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero bytes are a valid sockaddr_in.
    let mut name: libc::sockaddr_in = unsafe { zeroed() };
    name.sin_family = libc::AF_INET as libc::sa_family_t;
    name.sin_port = address.port().to_be();
    name.sin_addr.s_addr = u32::from(*address.ip()).to_be();
    name
}

/// The current CLOCK_MONOTONIC time: the clock of the cores and of the
/// kernel's `bpf_ktime_get_ns`.
pub fn monotonic_now() -> Time {
    // SAFETY: all-zero bytes are a valid timespec.
    let mut now: libc::timespec = unsafe { zeroed() };
    // SAFETY: passes a pointer to a live timespec.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "CLOCK_MONOTONIC is always available");
    Time::from_nanos(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// Unix milliseconds minus CLOCK_MONOTONIC milliseconds, now: what turns
/// the monotonic time handed to cores into wall time.
pub fn wall_offset_ms() -> i64 {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    unix_ms - (monotonic_now().as_nanos() / 1_000_000) as i64
}

/// Runs `core` on `socket` until `shutdown` is set: the main loop of every
/// Tern process.
pub fn serve<C: Core>(
    socket: &mut BatchSocket,
    core: &mut C,
    shutdown: &AtomicBool,
) -> io::Result<()> {
    serve_while(
        socket,
        core,
        |_| !shutdown.load(Ordering::Relaxed),
        |_, _| Ok(()),
    )
}

/// Runs `core` on `socket` for as long as `keep_going(core)` holds (checked
/// after every batch and tick). `before_send` runs after every batch, before
/// its datagrams leave: the place to persist the outbox's log records.
pub fn serve_while<C: Core>(
    socket: &mut BatchSocket,
    core: &mut C,
    mut keep_going: impl FnMut(&mut C) -> bool,
    mut before_send: impl FnMut(&mut C, &Outbox) -> io::Result<()>,
) -> io::Result<()> {
    let mut outbox = Outbox::new();
    let mut last_tick = monotonic_now();
    while keep_going(core) {
        socket.recv_batch()?;
        let now = monotonic_now();
        for (from, bytes) in socket.received() {
            core.step(now, from, bytes, &mut outbox);
        }
        // A wake-up means another thread left work for the core's timers.
        if socket.woken() || now.since(last_tick) >= TICK_INTERVAL {
            last_tick = now;
            core.tick(now, &mut outbox);
        }
        before_send(core, &outbox)?;
        if !outbox.is_empty() {
            // The received buffers are no longer borrowed here.
            socket.send_batch(outbox.iter())?;
        }
        outbox.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)
    }

    #[test]
    fn a_wake_up_ends_the_wait_and_reaches_no_core_but_a_stranger_s_empty_datagram_does() {
        let mut socket = BatchSocket::bind(local()).unwrap();
        let waker = socket.waker().unwrap();
        waker.wake();
        assert_eq!(socket.recv_batch().unwrap(), 1);
        assert_eq!(socket.received().count(), 0);

        let stranger = UdpSocket::bind(local()).unwrap();
        stranger.send_to(&[], socket.local_addr().unwrap()).unwrap();
        assert_eq!(socket.recv_batch().unwrap(), 1);
        let received: Vec<_> = socket.received().map(|(_, bytes)| bytes.len()).collect();
        assert_eq!(
            received,
            [0],
            "an empty datagram from elsewhere goes to the core"
        );
    }
}
