//! What the fast path needs to know about its network: the interface that
//! holds the coordinator's address, and the Ethernet address of each replica
//! (the replicas must share the coordinator's L2 segment).

use std::collections::HashMap;
use std::ffi::CStr;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use tern_wire::{Header, Op, encode};

/// The name of the interface that holds `address`.
pub fn interface_of(address: Ipv4Addr) -> Result<String, String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, released with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!("getifaddrs: {}", std::io::Error::last_os_error()));
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: entries of the list returned by getifaddrs.
        let current = unsafe { &*entry };
        if !current.ifa_addr.is_null()
            // SAFETY: ifa_addr is non-null and points at a sockaddr.
            && i32::from(unsafe { (*current.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let inet = unsafe { &*(current.ifa_addr as *const libc::sockaddr_in) };
            if Ipv4Addr::from(u32::from_be(inet.sin_addr.s_addr)) == address {
                // SAFETY: ifa_name is a NUL-terminated string.
                found = Some(
                    unsafe { CStr::from_ptr(current.ifa_name) }
                        .to_string_lossy()
                        .into_owned(),
                );
                break;
            }
        }
        entry = current.ifa_next;
    }
    // SAFETY: releases what getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| format!("no interface holds {address}"))
}

/// The Ethernet address of every peer, learnt by sending each a PING (so
/// that the kernel resolves it) and reading the neighbour table.
pub fn resolve_macs(
    from: Ipv4Addr,
    peers: &[SocketAddrV4],
    timeout: Duration,
) -> Result<HashMap<SocketAddrV4, [u8; 6]>, String> {
    let socket = UdpSocket::bind(SocketAddrV4::new(from, 0)).map_err(|error| error.to_string())?;
    let ping = encode(&Header::new(Op::Ping, 0, 0), b"", b"").expect("an empty ping encodes");
    let deadline = Instant::now() + timeout;
    loop {
        let table = arp_table()?;
        let missing: Vec<_> = peers
            .iter()
            .filter(|peer| !table.contains_key(peer.ip()))
            .collect();
        if missing.is_empty() {
            return Ok(peers.iter().map(|peer| (*peer, table[peer.ip()])).collect());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = missing.iter().map(|peer| peer.to_string()).collect();
            return Err(format!(
                "no Ethernet address for {} after {timeout:?}: the XDP fast path needs its \
                 replicas on the coordinator's L2 segment",
                names.join(", ")
            ));
        }
        for peer in &missing {
            let _ = socket.send_to(&ping, peer);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Complete entries of the IPv4 neighbour table of this network namespace.
fn arp_table() -> Result<HashMap<Ipv4Addr, [u8; 6]>, String> {
    let text = std::fs::read_to_string("/proc/net/arp")
        .map_err(|error| format!("/proc/net/arp: {error}"))?;
    let mut table = HashMap::new();
    // IP address, HW type, Flags, HW address, Mask, Device.
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(flags), Some(mac)) = (fields.first(), fields.get(2), fields.get(3))
        else {
            continue;
        };
        let complete =
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|f| f & 0x2 != 0);
        let octets: Vec<u8> = mac
            .split(':')
            .filter_map(|part| u8::from_str_radix(part, 16).ok())
            .collect();
        if let (true, Ok(ip), Ok(mac)) = (complete, ip.parse(), <[u8; 6]>::try_from(octets)) {
            table.insert(ip, mac);
        }
    }
    Ok(table)
}
