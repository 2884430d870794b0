//! How much each slot is asked: a replica counts the reads it answers and
//! the client writes it applies, by slot, from its start. `tern reshard
//! rebalance --by load` fetches the counts of every replica twice (over the
//! state-transfer connection, `LOAD`) and moves slots by the difference: the
//! load of the last seconds, not of the replica's whole life.
//!
//! Encoded sparse (slots never asked are left out): `count: u32`, then per
//! slot `slot: u16, reads: u64, writes: u64`, little-endian.

use thiserror::Error;

use crate::SLOT_COUNT;

/// Reads and writes per slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotLoad {
    reads: Box<[u64]>,
    writes: Box<[u64]>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("slot load truncated")]
    Truncated,
    #[error("slot load names slot {0}, outside the slots")]
    BadSlot(u16),
    #[error("slot load has {0} bytes after its last entry")]
    Trailing(usize),
}

const ENTRY_LEN: usize = 2 + 8 + 8;

impl Default for SlotLoad {
    fn default() -> Self {
        SlotLoad {
            reads: vec![0; SLOT_COUNT as usize].into_boxed_slice(),
            writes: vec![0; SLOT_COUNT as usize].into_boxed_slice(),
        }
    }
}

impl SlotLoad {
    pub fn count_read(&mut self, slot: u32) {
        if let Some(reads) = self.reads.get_mut(slot as usize) {
            *reads += 1;
        }
    }

    pub fn count_write(&mut self, slot: u32) {
        if let Some(writes) = self.writes.get_mut(slot as usize) {
            *writes += 1;
        }
    }

    pub fn reads(&self, slot: u32) -> u64 {
        self.reads.get(slot as usize).copied().unwrap_or(0)
    }

    pub fn writes(&self, slot: u32) -> u64 {
        self.writes.get(slot as usize).copied().unwrap_or(0)
    }

    /// What was counted after `earlier` (a sample of the same replica
    /// taken before). A count that went down (the replica restarted in
    /// between and counts from zero) is taken whole.
    pub fn since(&self, earlier: &SlotLoad) -> SlotLoad {
        let difference = |now: &[u64], then: &[u64]| -> Box<[u64]> {
            now.iter()
                .zip(then)
                .map(|(&now, &then)| now.checked_sub(then).unwrap_or(now))
                .collect()
        };
        SlotLoad {
            reads: difference(&self.reads, &earlier.reads),
            writes: difference(&self.writes, &earlier.writes),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let asked: Vec<u32> = (0..SLOT_COUNT)
            .filter(|&slot| self.reads(slot) + self.writes(slot) > 0)
            .collect();
        let mut out = Vec::with_capacity(4 + asked.len() * ENTRY_LEN);
        out.extend_from_slice(&(asked.len() as u32).to_le_bytes());
        for slot in asked {
            out.extend_from_slice(&(slot as u16).to_le_bytes());
            out.extend_from_slice(&self.reads(slot).to_le_bytes());
            out.extend_from_slice(&self.writes(slot).to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SlotLoad, LoadError> {
        let (count, mut entries) = bytes.split_at_checked(4).ok_or(LoadError::Truncated)?;
        let count = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
        let mut load = SlotLoad::default();
        for _ in 0..count {
            let (entry, rest) = entries
                .split_at_checked(ENTRY_LEN)
                .ok_or(LoadError::Truncated)?;
            entries = rest;
            let slot = u16::from_le_bytes(entry[..2].try_into().expect("2 bytes"));
            if u32::from(slot) >= SLOT_COUNT {
                return Err(LoadError::BadSlot(slot));
            }
            load.reads[slot as usize] = u64::from_le_bytes(entry[2..10].try_into().expect("8"));
            load.writes[slot as usize] = u64::from_le_bytes(entry[10..].try_into().expect("8"));
        }
        if !entries.is_empty() {
            return Err(LoadError::Trailing(entries.len()));
        }
        Ok(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_decodes_back_and_bad_ones_are_refused() {
        let mut load = SlotLoad::default();
        for _ in 0..3 {
            load.count_read(7);
        }
        load.count_write(7);
        load.count_write(SLOT_COUNT - 1);
        load.count_read(SLOT_COUNT); // outside: not counted
        let bytes = load.encode();
        assert_eq!(bytes.len(), 4 + 2 * ENTRY_LEN);
        assert_eq!(SlotLoad::decode(&bytes), Ok(load.clone()));
        assert_eq!((load.reads(7), load.writes(7)), (3, 1));
        assert_eq!(
            SlotLoad::decode(&bytes[..bytes.len() - 1]),
            Err(LoadError::Truncated)
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(SlotLoad::decode(&trailing), Err(LoadError::Trailing(1)));
        let mut bad = bytes;
        bad[4..6].copy_from_slice(&(SLOT_COUNT as u16).to_le_bytes());
        assert_eq!(
            SlotLoad::decode(&bad),
            Err(LoadError::BadSlot(SLOT_COUNT as u16))
        );
        assert_eq!(SlotLoad::decode(&[]), Err(LoadError::Truncated));
    }

    #[test]
    fn the_load_since_an_earlier_sample_is_the_difference_or_all_after_a_restart() {
        let mut earlier = SlotLoad::default();
        earlier.count_read(1);
        earlier.count_read(2);
        earlier.count_read(2);
        let mut later = earlier.clone();
        later.count_read(1);
        later.count_write(3);
        let recent = later.since(&earlier);
        assert_eq!(
            (recent.reads(1), recent.reads(2), recent.writes(3)),
            (1, 0, 1)
        );
        // A restarted replica counts from zero: its counts are all recent.
        let mut restarted = SlotLoad::default();
        restarted.count_read(2);
        assert_eq!(restarted.since(&earlier).reads(2), 1);
    }
}
