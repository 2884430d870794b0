//! [`AllowList`]: the client networks a coordinator serves. Tern's data
//! plane is unauthenticated UDP (README, "Threat model"); where clients
//! share a network with hosts that must not reach the store, a coordinator
//! can be told which source networks to serve, and drops (and counts)
//! everything else that asks it something: clients' requests, PING, STATS
//! and a migration's FREEZE. Its chain's own messages (acknowledgements,
//! reports, retransmit requests) are checked by address already, and the
//! answers to its settler by request id. The XDP program applies the same
//! list to what it serves (an LPM trie, `allowed_clients`).

use std::net::Ipv4Addr;

/// IPv4 networks (address and prefix length); empty: every source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<(Ipv4Addr, u8)>,
}

impl AllowList {
    /// Every source allowed.
    pub fn everyone() -> AllowList {
        AllowList::default()
    }

    /// Parses `a.b.c.d/len` or `a.b.c.d` (one address), comma-separated.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut networks = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (address, prefix) = match part.split_once('/') {
                Some((address, prefix)) => {
                    let prefix: u8 = prefix
                        .parse()
                        .ok()
                        .filter(|prefix| *prefix <= 32)
                        .ok_or_else(|| format!("{part:?}: the prefix length must be 0 to 32"))?;
                    (address, prefix)
                }
                None => (part, 32),
            };
            let address: Ipv4Addr = address
                .parse()
                .map_err(|_| format!("{part:?}: not an IPv4 address or network (a.b.c.d/len)"))?;
            let network = Ipv4Addr::from(u32::from(address) & mask(prefix));
            if network != address {
                return Err(format!(
                    "{part:?}: host bits set; the network is {network}/{prefix}"
                ));
            }
            networks.push((network, prefix));
        }
        if networks.is_empty() && !text.trim().is_empty() {
            return Err(format!("{text:?}: no network given"));
        }
        Ok(AllowList { networks })
    }

    /// Whether every source is allowed (no list given).
    pub fn is_everyone(&self) -> bool {
        self.networks.is_empty()
    }

    /// The networks, as (address, prefix length).
    pub fn networks(&self) -> &[(Ipv4Addr, u8)] {
        &self.networks
    }

    /// Whether `source` may ask this coordinator anything.
    pub fn permits(&self, source: Ipv4Addr) -> bool {
        self.networks.is_empty()
            || self
                .networks
                .iter()
                .any(|(network, prefix)| u32::from(source) & mask(*prefix) == u32::from(*network))
    }
}

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.networks.is_empty() {
            return write!(f, "everyone");
        }
        let parts: Vec<String> = self
            .networks
            .iter()
            .map(|(network, prefix)| format!("{network}/{prefix}"))
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        prefix => u32::MAX << (32 - u32::from(prefix)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_addresses_are_parsed_and_matched() {
        let list = AllowList::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        assert!(list.permits(Ipv4Addr::new(10, 200, 3, 4)));
        assert!(list.permits(Ipv4Addr::new(192, 168, 1, 7)));
        assert!(!list.permits(Ipv4Addr::new(192, 168, 1, 8)));
        assert!(!list.permits(Ipv4Addr::new(11, 0, 0, 1)));
        assert_eq!(list.to_string(), "10.0.0.0/8,192.168.1.7/32");
        assert!(
            AllowList::parse("0.0.0.0/0")
                .unwrap()
                .permits(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert!(AllowList::parse("").unwrap().is_everyone());
        assert!(AllowList::everyone().permits(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        for (text, says) in [
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.1/8", "host bits set; the network is 10.0.0.0/8"),
            ("ten", "not an IPv4 address"),
            ("::1", "not an IPv4 address"),
            (",", "no network given"),
        ] {
            let error = AllowList::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
