//! Persistent storage for openraft: the Raft log and vote in one append-only
//! file of JSON lines (synced before openraft is told), the state machine in
//! memory with its snapshot in a file replaced atomically.
//!
//! Meta's log is small (a few changes per failure), so simplicity wins over
//! speed: every append is one `write` and one `fdatasync`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::TypeConfig;
use crate::state::{CommandResult, MetaState};

type NodeId = u64;
type Node = openraft::BasicNode;

const LOG_FILE: &str = "raft-log.jsonl";
const SNAPSHOT_FILE: &str = "snapshot.json";

/// One line of the log file.
#[derive(Serialize, Deserialize)]
enum LogRecord {
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Entry(Entry<TypeConfig>),
    /// Entries from this index on were removed (a conflicting suffix).
    Truncate(u64),
    /// Entries up to this id were removed (covered by a snapshot).
    Purge(LogId<NodeId>),
}

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
}

impl LogInner {
    fn apply(&mut self, record: LogRecord) {
        match record {
            LogRecord::Vote(vote) => self.vote = Some(vote),
            LogRecord::Committed(committed) => self.committed = committed,
            LogRecord::Entry(entry) => {
                self.entries.insert(entry.log_id.index, entry);
            }
            LogRecord::Truncate(index) => {
                self.entries.split_off(&index);
            }
            LogRecord::Purge(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index + 1));
                self.last_purged = Some(log_id);
            }
        }
    }
}

/// The Raft log and vote.
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    file: Arc<Mutex<File>>,
    dir: PathBuf,
}

fn io_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&error).into()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what it holds. A torn
    /// last line (a crash during a write) is cut off.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut inner = LogInner::default();
        let mut good_length = 0u64;
        if let Ok(file) = File::open(&path) {
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let read = reader.read_line(&mut line)?;
                if read == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<LogRecord>(&line) {
                    Ok(record) => inner.apply(record),
                    Err(_) => break,
                }
                good_length += read as u64;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        if file.metadata()?.len() != good_length {
            tracing::warn!(kept = good_length, "cutting a torn tail off the meta log");
            file.set_len(good_length)?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            file: Arc::new(Mutex::new(file)),
            dir: dir.to_path_buf(),
        })
    }

    /// Writes and syncs records, then applies them to memory.
    fn persist(&self, records: Vec<LogRecord>) -> io::Result<()> {
        self.write(records, true)
    }

    /// Writes records, synced or not, then applies them to memory. An
    /// unsynced record reaches the disk with the next synced one, or is
    /// lost in a crash: in order either way (one file, appended to).
    fn write(&self, records: Vec<LogRecord>, sync: bool) -> io::Result<()> {
        let mut bytes = Vec::new();
        for record in &records {
            serde_json::to_writer(&mut bytes, record).map_err(io::Error::other)?;
            bytes.push(b'\n');
        }
        {
            let mut file = self.file.lock().expect("log file lock");
            file.write_all(&bytes)?;
            if sync {
                file.sync_data()?;
            }
        }
        let mut inner = self.inner.lock().expect("log lock");
        for record in records {
            inner.apply(record);
        }
        Ok(())
    }

    /// Rewrites the file with only what memory holds (after a purge).
    fn compact(&self) -> io::Result<()> {
        let inner = self.inner.lock().expect("log lock");
        let mut bytes = Vec::new();
        let mut push = |record: &LogRecord| -> io::Result<()> {
            serde_json::to_writer(&mut bytes, record).map_err(io::Error::other)?;
            bytes.push(b'\n');
            Ok(())
        };
        if let Some(vote) = inner.vote {
            push(&LogRecord::Vote(vote))?;
        }
        push(&LogRecord::Committed(inner.committed))?;
        if let Some(purged) = inner.last_purged {
            push(&LogRecord::Purge(purged))?;
        }
        for entry in inner.entries.values() {
            push(&LogRecord::Entry(entry.clone()))?;
        }
        let path = self.dir.join(LOG_FILE);
        write_atomically(&path, &bytes)?;
        let file = OpenOptions::new().append(true).read(true).open(&path)?;
        *self.file.lock().expect("log file lock") = file;
        Ok(())
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// file, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.inner.lock().expect("log lock");
        Ok(inner
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.inner.lock().expect("log lock");
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.persist(vec![LogRecord::Vote(*vote)])
            .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().expect("log lock").vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: Raft does not need the commit index durable (a node
        // that lost it learns it again from the leader, and the entries it
        // covers are synced), and a sync here would sit between every
        // commit and its apply.
        self.write(vec![LogRecord::Committed(committed)], false)
            .map_err(io_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().expect("log lock").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records = entries.into_iter().map(LogRecord::Entry).collect();
        let result = self.persist(records);
        let failed = result
            .as_ref()
            .err()
            .map(|e| io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(error) => Err(io_error(error)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.persist(vec![LogRecord::Truncate(log_id.index)])
            .map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.persist(vec![LogRecord::Purge(log_id)])
            .and_then(|()| self.compact())
            .map_err(io_error)
    }
}

/// What the snapshot file holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    /// The serialized `MetaState`.
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct MachineInner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine: `MetaState`, readable by the server at any time.
#[derive(Clone, Debug)]
pub struct StateMachine {
    state: Arc<RwLock<MetaState>>,
    inner: Arc<Mutex<MachineInner>>,
    dir: PathBuf,
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from its snapshot if any.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        fs::create_dir_all(dir)?;
        let mut inner = MachineInner::default();
        let mut state = MetaState::default();
        if let Ok(bytes) = fs::read(dir.join(SNAPSHOT_FILE)) {
            let stored: StoredSnapshot =
                serde_json::from_slice(&bytes).map_err(io::Error::other)?;
            state = serde_json::from_slice(&stored.data).map_err(io::Error::other)?;
            inner.last_applied = stored.meta.last_log_id;
            inner.membership = stored.meta.last_membership.clone();
            inner.snapshot = Some(stored);
        }
        Ok(StateMachine {
            state: Arc::new(RwLock::new(state)),
            inner: Arc::new(Mutex::new(inner)),
            dir: dir.to_path_buf(),
        })
    }

    /// The current state, shared with the server.
    pub fn state(&self) -> Arc<RwLock<MetaState>> {
        self.state.clone()
    }

    fn save(&self, stored: &StoredSnapshot) -> io::Result<()> {
        let bytes = serde_json::to_vec(stored).map_err(io::Error::other)?;
        write_atomically(&self.dir.join(SNAPSHOT_FILE), &bytes)
    }
}

fn to_snapshot(stored: StoredSnapshot) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = serde_json::to_vec(&*self.state.read().expect("state lock"))
            .map_err(|error| StorageIOError::read_state_machine(&error))?;
        let stored = {
            let mut inner = self.inner.lock().expect("machine lock");
            inner.snapshots_built += 1;
            let snapshot_id = match inner.last_applied {
                Some(last) => format!(
                    "{}-{}-{}",
                    last.leader_id, last.index, inner.snapshots_built
                ),
                None => format!("none-{}", inner.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        self.save(&stored).map_err(|error| {
            StorageIOError::write_snapshot(Some(stored.meta.signature()), &error)
        })?;
        self.inner.lock().expect("machine lock").snapshot = Some(stored.clone());
        Ok(to_snapshot(stored))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let inner = self.inner.lock().expect("machine lock");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut state = self.state.write().expect("state lock");
        let mut inner = self.inner.lock().expect("machine lock");
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(state.map()),
                EntryPayload::Normal(command) => {
                    let result = state.apply(&command);
                    match &result {
                        Ok(map) => tracing::info!(?command, version = map.version, "map changed"),
                        Err(why) => tracing::info!(?command, %why, "change refused"),
                    }
                    result
                }
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(state.map())
                }
            };
            results.push(CommandResult(result));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let new_state: MetaState = serde_json::from_slice(&data)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save(&stored)
            .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        *self.state.write().expect("state lock") = new_state;
        let mut inner = self.inner.lock().expect("machine lock");
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.inner.lock().expect("machine lock");
        Ok(inner.snapshot.clone().map(to_snapshot))
    }
}
