//! The connections a gateway serves, for `CLIENT LIST`, `CLIENT INFO` and
//! `CLIENT KILL`. Each connection updates its own entry (its lock is its
//! own, so commands do not contend); the registry's lock is taken only to
//! join, leave and list.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a connection says about itself.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub addr: Option<SocketAddr>,
    pub laddr: Option<SocketAddr>,
    created: Instant,
    state: Mutex<ClientState>,
    /// Set by `CLIENT KILL`: the connection closes at its next look (within
    /// its read timeout).
    killed: AtomicBool,
}

#[derive(Debug)]
struct ClientState {
    name: Option<Vec<u8>>,
    db: u32,
    protocol: u8,
    last_command: &'static str,
    last_active: Instant,
}

impl ClientEntry {
    pub fn new(id: u64, addr: Option<SocketAddr>, laddr: Option<SocketAddr>) -> ClientEntry {
        let now = Instant::now();
        ClientEntry {
            id,
            addr,
            laddr,
            created: now,
            state: Mutex::new(ClientState {
                name: None,
                db: 0,
                protocol: 2,
                last_command: "NULL",
                last_active: now,
            }),
            killed: AtomicBool::new(false),
        }
    }

    /// After a command: its name (as `COMMAND` names it), and where the
    /// connection stands.
    pub fn ran(&self, command: &'static str, db: u32, protocol: u8) {
        let mut state = self.state.lock().expect("client lock");
        state.last_command = command;
        state.db = db;
        state.protocol = protocol;
        state.last_active = Instant::now();
    }

    pub fn set_name(&self, name: Option<Vec<u8>>) {
        self.state.lock().expect("client lock").name = name;
    }

    pub fn name(&self) -> Option<Vec<u8>> {
        self.state.lock().expect("client lock").name.clone()
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Its `CLIENT LIST` line, with Redis's field names (those Tern has).
    pub fn line(&self) -> String {
        let state = self.state.lock().expect("client lock");
        let address = |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "id={} addr={} laddr={} name={} age={} idle={} flags=N db={} sub=0 psub=0 multi=-1 cmd={} user=default resp={}\n",
            self.id,
            address(self.addr),
            address(self.laddr),
            String::from_utf8_lossy(state.name.as_deref().unwrap_or_default()),
            self.created.elapsed().as_secs(),
            state.last_active.elapsed().as_secs(),
            state.db,
            state.last_command,
            state.protocol,
        )
    }
}

/// Every connection served.
#[derive(Debug, Default)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

impl Registry {
    pub fn join(&self, entry: Arc<ClientEntry>) {
        self.clients
            .lock()
            .expect("registry lock")
            .insert(entry.id, entry);
    }

    pub fn leave(&self, id: u64) {
        self.clients.lock().expect("registry lock").remove(&id);
    }

    /// The entries, by id.
    pub fn entries(&self) -> Vec<Arc<ClientEntry>> {
        self.clients
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }
}

/// What `CLIENT KILL` picks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    /// Leave the caller alone (the default, as in Redis).
    pub skip_me: bool,
}

impl KillFilter {
    /// Whether `entry` is picked, for a caller of id `me`.
    pub fn picks(&self, entry: &ClientEntry, me: u64) -> bool {
        let text = |addr: Option<SocketAddr>| addr.map(|a| a.to_string());
        !(self.skip_me && entry.id == me)
            && self.id.is_none_or(|id| id == entry.id)
            && self
                .addr
                .as_ref()
                .is_none_or(|addr| Some(addr) == text(entry.addr).as_ref())
            && self
                .laddr
                .as_ref()
                .is_none_or(|laddr| Some(laddr) == text(entry.laddr).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_pick_by_id_and_address_and_skip_the_caller() {
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let entry = ClientEntry::new(7, Some(addr), None);
        entry.set_name(Some(b"worker".to_vec()));
        entry.ran("get", 3, 2);
        let line = entry.line();
        for field in [
            "id=7 ",
            "addr=127.0.0.1:5000 ",
            "name=worker ",
            "db=3 ",
            "cmd=get ",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
        let by_id = KillFilter {
            id: Some(7),
            skip_me: true,
            ..KillFilter::default()
        };
        assert!(by_id.picks(&entry, 1));
        assert!(!by_id.picks(&entry, 7), "the caller is skipped");
        let by_addr = KillFilter {
            addr: Some("127.0.0.1:5000".into()),
            ..KillFilter::default()
        };
        assert!(by_addr.picks(&entry, 7));
        let elsewhere = KillFilter {
            addr: Some("127.0.0.1:5001".into()),
            ..KillFilter::default()
        };
        assert!(!elsewhere.picks(&entry, 1));
    }
}
