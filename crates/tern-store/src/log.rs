//! Log-structured persistence: append-only segment files of framed records,
//! and snapshots that let old segments go.
//!
//! A record is `[payload length u32][seq u64][CRC-32 of seq and payload u32]`
//! followed by the payload, little-endian. Records carry strictly increasing
//! sequence numbers. Segment `segment-<first seq>.log` holds the records from
//! its first seq up to the next segment's. A crash can leave the last record
//! of the last segment torn; replay truncates it and reports how far it got.
//! A snapshot `snapshot-<seq>.snap` stands for every record up to its seq.
//!
//! The payload is opaque here: the replica decides what a record says.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started past this size, in bytes.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Longest record payload, in bytes: a large value's record carries the
/// value (up to 256 MiB, the most a replica may be configured to take,
/// `tern_proto::large`) after its datagram. Longer is a torn or corrupt
/// length on replay.
pub const RECORD_PAYLOAD_MAX: usize = (256 << 20) + 4096;
/// Bytes of framing before each payload.
pub const RECORD_HEADER_LEN: usize = 16;
const SNAPSHOT_MAGIC: &[u8; 8] = b"TERNSNAP";
const SNAPSHOT_HEADER_LEN: usize = 8 + 8 + 8 + 4;

fn segment_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.log")
}

fn snapshot_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

/// Files in `dir` named `prefix<20 digits>suffix`, sorted by that number.
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix));
        if let Some(Ok(number)) = number.map(str::parse::<u64>) {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends records to the newest segment. Records are framed into a buffer
/// by `append`, written by `write` and made durable by `sync`, so that one
/// write and one `fdatasync` serve a whole batch (group commit).
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    segment_bytes: u64,
    pending: Vec<u8>,
    next_seq: u64,
    unsynced: bool,
}

impl LogWriter {
    /// Opens the log in `dir` for appending records from `next_seq` on, in a
    /// new segment (replay has already truncated any torn tail).
    pub fn open(dir: &Path, next_seq: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = Self::create_segment(dir, next_seq)?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            segment_bytes: 0,
            pending: Vec::new(),
            next_seq,
            unsynced: false,
        })
    }

    fn create_segment(dir: &Path, first_seq: u64) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(segment_name(first_seq)))?;
        sync_dir(dir)?;
        Ok(file)
    }

    /// Frames one record. Sequence numbers must grow: a programmer error otherwise.
    pub fn append(&mut self, seq: u64, payload: &[u8]) {
        assert!(
            seq >= self.next_seq,
            "record {seq} appended after {}",
            self.next_seq - 1
        );
        assert!(
            payload.len() <= RECORD_PAYLOAD_MAX,
            "record payload of {} bytes",
            payload.len()
        );
        self.next_seq = seq + 1;
        self.pending
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&seq.to_le_bytes());
        self.pending
            .extend_from_slice(&checksum(seq, payload).to_le_bytes());
        self.pending.extend_from_slice(payload);
    }

    /// Bytes framed and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes the framed records to the segment (not yet durable).
    pub fn write(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.segment_bytes += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        if self.segment_bytes >= SEGMENT_BYTES_MAX {
            self.rotate()?;
        }
        Ok(())
    }

    /// Makes everything written durable (one `fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Closes the segment (durably) and starts the next one at `next_seq`.
    pub fn rotate(&mut self) -> io::Result<()> {
        self.write()?;
        self.sync()?;
        self.file = Self::create_segment(&self.dir, self.next_seq)?;
        self.segment_bytes = 0;
        Ok(())
    }

    /// Writes a snapshot standing for every record up to `seq` (atomically:
    /// a temporary file, fsync, rename), then removes older snapshots and the
    /// segments it covers. Call after `rotate`, so that the current segment
    /// starts after `seq`.
    pub fn snapshot(&mut self, seq: u64, payload: &[u8]) -> io::Result<()> {
        write_snapshot(&self.dir, seq, payload)?;
        for (older, path) in numbered(&self.dir, "snapshot-", ".snap")? {
            if older < seq {
                std::fs::remove_file(path)?;
            }
        }
        let segments = numbered(&self.dir, "segment-", ".log")?;
        for pair in segments.windows(2) {
            let (_, path) = &pair[0];
            let (next_first, _) = pair[1];
            // Every record of this segment is below the next one's first seq.
            if next_first <= seq + 1 {
                std::fs::remove_file(path)?;
            }
        }
        sync_dir(&self.dir)
    }
}

fn write_snapshot(dir: &Path, seq: u64, payload: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!("{}.tmp", snapshot_name(seq)));
    let mut file = File::create(&temporary)?;
    file.write_all(SNAPSHOT_MAGIC)?;
    file.write_all(&seq.to_le_bytes())?;
    file.write_all(&(payload.len() as u64).to_le_bytes())?;
    file.write_all(&checksum(seq, payload).to_le_bytes())?;
    file.write_all(payload)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(snapshot_name(seq)))?;
    sync_dir(dir)
}

/// The newest snapshot in `dir`: its seq and payload.
pub fn read_snapshot(dir: &Path) -> io::Result<Option<(u64, Vec<u8>)>> {
    let Some((seq, path)) = numbered(dir, "snapshot-", ".snap")?.pop() else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    File::open(&path)?.read_to_end(&mut bytes)?;
    let corrupt = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is corrupt", path.display()),
        )
    };
    if bytes.len() < SNAPSHOT_HEADER_LEN || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt());
    }
    let stored_seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let length = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let payload = &bytes[SNAPSHOT_HEADER_LEN..];
    if stored_seq != seq || payload.len() != length || checksum(seq, payload) != crc {
        return Err(corrupt());
    }
    Ok(Some((seq, payload.to_vec())))
}

/// What `replay` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records handed to the callback.
    pub records: u64,
    /// Highest seq replayed (or the `after` given, when none was).
    pub last_seq: u64,
    /// Bytes cut off the end of the last segment (a torn last record).
    pub truncated_bytes: u64,
    pub segments: usize,
}

/// Calls `each(seq, payload)` for every record after `after` (the snapshot's
/// seq), in order. A torn or corrupt record at the end of the last segment is
/// cut off (the file is truncated); anywhere else it is an error.
pub fn replay(
    dir: &Path,
    after: u64,
    mut each: impl FnMut(u64, &[u8]),
) -> io::Result<ReplayReport> {
    let mut report = ReplayReport {
        last_seq: after,
        ..ReplayReport::default()
    };
    if !dir.exists() {
        return Ok(report);
    }
    let segments = numbered(dir, "segment-", ".log")?;
    report.segments = segments.len();
    for (index, (_, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let mut offset = 0;
        while offset < bytes.len() {
            match parse_record(&bytes[offset..]) {
                Some((seq, payload, length)) if seq > report.last_seq || seq <= after => {
                    if seq > after {
                        each(seq, payload);
                        report.records += 1;
                        report.last_seq = seq;
                    }
                    offset += length;
                }
                _ if is_last => {
                    let keep = offset as u64;
                    report.truncated_bytes = bytes.len() as u64 - keep;
                    let file = OpenOptions::new().write(true).open(path)?;
                    file.set_len(keep)?;
                    file.sync_all()?;
                    break;
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} has a corrupt record at byte {offset}", path.display()),
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// One record at the start of `bytes`: (seq, payload, framed length), or
/// None if it is torn or corrupt.
fn parse_record(bytes: &[u8]) -> Option<(u64, &[u8], usize)> {
    let header = bytes.get(..RECORD_HEADER_LEN)?;
    let length = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let seq = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let crc = u32::from_le_bytes(header[12..16].try_into().ok()?);
    if length > RECORD_PAYLOAD_MAX {
        return None;
    }
    let payload = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + length)?;
    (checksum(seq, payload) == crc).then_some((seq, payload, RECORD_HEADER_LEN + length))
}

/// Bytes used by the log and snapshots in `dir`.
pub fn disk_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Vec<u8> {
        format!("record {seq} ")
            .repeat(seq as usize % 7 + 1)
            .into_bytes()
    }

    fn replayed(dir: &Path, after: u64) -> (Vec<(u64, Vec<u8>)>, ReplayReport) {
        let mut seen = Vec::new();
        let report = replay(dir, after, |seq, payload| {
            seen.push((seq, payload.to_vec()))
        })
        .unwrap();
        (seen, report)
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), 1).unwrap();
        for seq in 1..=10 {
            log.append(seq, &record(seq));
            if seq == 5 {
                log.rotate().unwrap();
            }
        }
        log.write().unwrap();
        log.sync().unwrap();
        let (seen, report) = replayed(dir.path(), 0);
        assert_eq!(
            seen,
            (1..=10).map(|seq| (seq, record(seq))).collect::<Vec<_>>()
        );
        assert_eq!(report.segments, 2);
        assert_eq!(report.last_seq, 10);
        assert_eq!(report.truncated_bytes, 0);
    }

    #[test]
    fn a_log_cut_at_every_byte_offset_recovers_to_its_last_whole_record() {
        // Write three records, then for every length of the file, cut it
        // there and replay: the result is always the whole records before
        // the cut, and the file is truncated to them.
        let source = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(source.path(), 1).unwrap();
        let mut ends = Vec::new();
        let mut size = 0;
        for seq in 1..=3 {
            log.append(seq, &record(seq));
            size += RECORD_HEADER_LEN + record(seq).len();
            ends.push(size);
        }
        log.write().unwrap();
        let segment = source.path().join(segment_name(1));
        let full = std::fs::read(&segment).unwrap();
        assert_eq!(full.len(), size);
        for cut in 0..=full.len() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(segment_name(1)), &full[..cut]).unwrap();
            let (seen, report) = replayed(dir.path(), 0);
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(seen.len(), whole, "cut at {cut}");
            assert_eq!(
                seen,
                (1..=whole as u64)
                    .map(|seq| (seq, record(seq)))
                    .collect::<Vec<_>>()
            );
            let kept = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(report.truncated_bytes, (cut - kept) as u64, "cut at {cut}");
            assert_eq!(
                std::fs::metadata(dir.path().join(segment_name(1)))
                    .unwrap()
                    .len(),
                kept as u64
            );
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_is_cut_off_and_in_an_older_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), 1).unwrap();
        log.append(1, &record(1));
        log.append(2, &record(2));
        log.rotate().unwrap();
        log.append(3, &record(3));
        log.write().unwrap();
        let last = dir.path().join(segment_name(3));
        let mut bytes = std::fs::read(&last).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&last, &bytes).unwrap();
        let (seen, report) = replayed(dir.path(), 0);
        assert_eq!(seen.len(), 2);
        assert!(report.truncated_bytes > 0);

        let first = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[RECORD_HEADER_LEN] ^= 1;
        std::fs::write(&first, &bytes).unwrap();
        assert!(replay(dir.path(), 0, |_, _| {}).is_err());
    }

    #[test]
    fn a_snapshot_replaces_the_segments_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::open(dir.path(), 1).unwrap();
        for seq in 1..=100 {
            log.append(seq, &record(seq));
            log.write().unwrap();
        }
        log.rotate().unwrap();
        log.snapshot(100, b"state at 100").unwrap();
        for seq in 101..=105 {
            log.append(seq, &record(seq));
        }
        log.write().unwrap();
        assert_eq!(
            read_snapshot(dir.path()).unwrap(),
            Some((100, b"state at 100".to_vec()))
        );
        let (seen, _) = replayed(dir.path(), 100);
        assert_eq!(
            seen.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (101..=105).collect::<Vec<_>>()
        );
        assert_eq!(
            numbered(dir.path(), "segment-", ".log").unwrap().len(),
            1,
            "old segments removed"
        );
    }
}
