//! [`SharedShard`]: the coordinator state of one shard in memory laid out as
//! `tern_wire::maps` describes, updated with the same atomic operations as
//! the XDP program. In user mode the memory is on the heap; in XDP mode it is
//! the BPF maps, mapped into the process, so both paths share one truth.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use tern_wire::maps::{
    CAS_ATTEMPTS_MAX, HOLD_BUCKETS, HoldBucket, INFLIGHT_WRITES_MAX, SLOT_WORDS, ShardCell,
    WindowSlot, fanout_acks,
};
use tern_wire::{DIRTY_SLOTS, MESSAGE_LEN_MAX, SLOT_COUNT};

use crate::Time;
use crate::coordinator::{FanoutAck, ShardState};
use crate::holds::HoldTable;
use zerocopy::FromBytes;

/// One shard's coordinator state in shared memory.
#[derive(Debug)]
pub struct SharedShard {
    cell: NonNull<ShardCell>,
    dirty: NonNull<AtomicU64>,
    window: NonNull<WindowSlot>,
    /// The bitmap of slots served: `SLOT_WORDS` words.
    slots: NonNull<AtomicU64>,
    /// The transactions held (`holds`: `HOLD_BUCKETS` buckets).
    holds: HoldTable,
    /// Keeps the memory alive (heap regions, or the mapped BPF maps).
    _owner: Box<dyn std::fmt::Debug + Send + Sync>,
}

// SAFETY: all access to the shared memory goes through atomics, except the
// datagram bytes of a window slot, which follow the publication protocol
// documented on `WindowSlot` (written before `seq` is published, read under a
// sequence check).
unsafe impl Send for SharedShard {}
// SAFETY: as above.
unsafe impl Sync for SharedShard {}

/// Zeroed heap memory for one layout, freed on drop.
#[derive(Debug)]
struct HeapRegion {
    pointer: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for HeapRegion {}
// SAFETY: as above; SharedShard mediates all access.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    fn zeroed(layout: Layout) -> Self {
        // SAFETY: every layout used here has a non-zero size.
        let pointer = unsafe { alloc_zeroed(layout) };
        let pointer =
            NonNull::new(pointer).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapRegion { pointer, layout }
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { dealloc(self.pointer.as_ptr(), self.layout) }
    }
}

impl SharedShard {
    /// State in process memory (user mode): every key dirty until recovery.
    pub fn in_process() -> Self {
        let cell = HeapRegion::zeroed(Layout::new::<ShardCell>());
        let dirty =
            HeapRegion::zeroed(Layout::array::<AtomicU64>(DIRTY_SLOTS as usize).expect("fits"));
        let window = HeapRegion::zeroed(
            Layout::array::<WindowSlot>(INFLIGHT_WRITES_MAX as usize).expect("fits"),
        );
        let slots =
            HeapRegion::zeroed(Layout::array::<AtomicU64>(SLOT_WORDS as usize).expect("fits"));
        let holds =
            HeapRegion::zeroed(Layout::array::<HoldBucket>(HOLD_BUCKETS as usize).expect("fits"));
        let pointers = (
            cell.pointer.cast(),
            dirty.pointer.cast(),
            window.pointer.cast(),
            slots.pointer.cast(),
            holds.pointer.cast(),
        );
        // SAFETY: the regions are zeroed (a valid state of every field),
        // sized and aligned for their types, and owned by the returned value.
        let shard = unsafe {
            SharedShard::from_raw_parts(
                pointers.0,
                pointers.1,
                pointers.2,
                pointers.3,
                pointers.4,
                Box::new((cell, dirty, window, slots, holds)),
            )
        };
        shard.cell().next_seq.store(1, Ordering::Release);
        shard
    }

    /// State in memory provided by the caller (XDP mode: mapped BPF maps).
    ///
    /// # Safety
    /// `cell` must point at one `ShardCell`, `dirty` at `DIRTY_SLOTS`
    /// `AtomicU64`s, `window` at `INFLIGHT_WRITES_MAX` `WindowSlot`s and
    /// `slots` at `SLOT_WORDS` `AtomicU64`s and `holds` at `HOLD_BUCKETS`
    /// `HoldBucket`s, all aligned and valid for as long as `owner` lives.
    pub unsafe fn from_raw_parts(
        cell: NonNull<ShardCell>,
        dirty: NonNull<AtomicU64>,
        window: NonNull<WindowSlot>,
        slots: NonNull<AtomicU64>,
        holds: NonNull<HoldBucket>,
        owner: Box<dyn std::fmt::Debug + Send + Sync>,
    ) -> Self {
        SharedShard {
            cell,
            dirty,
            window,
            slots,
            // SAFETY: the caller's contract covers `holds`.
            holds: unsafe { HoldTable::from_raw(holds) },
            _owner: owner,
        }
    }

    fn slot_word(&self, word: u32) -> &AtomicU64 {
        assert!(word < SLOT_WORDS, "slot word {word} out of range");
        // SAFETY: in bounds (checked) and valid for our lifetime.
        unsafe { &*self.slots.as_ptr().add(word as usize) }
    }

    fn cell(&self) -> &ShardCell {
        // SAFETY: valid for our lifetime (constructor contract).
        unsafe { self.cell.as_ref() }
    }

    fn dirty(&self, index: u32) -> &AtomicU64 {
        assert!(index < DIRTY_SLOTS, "dirty index {index} out of range");
        // SAFETY: in bounds (checked) and valid for our lifetime.
        unsafe { &*self.dirty.as_ptr().add(index as usize) }
    }

    fn slot(&self, seq: u64) -> &WindowSlot {
        // SAFETY: the index is reduced modulo the window length.
        unsafe {
            &*self
                .window
                .as_ptr()
                .add((seq % INFLIGHT_WRITES_MAX) as usize)
        }
    }
}

impl ShardState for SharedShard {
    fn begin_write(&self) -> Option<u64> {
        // The slot of `seq` can only be claimed by whoever wins `seq`, so a
        // slot seen free before winning stays free until it is published.
        for _ in 0..CAS_ATTEMPTS_MAX {
            let seq = self.cell().next_seq.load(Ordering::Acquire);
            if self.slot(seq).seq.load(Ordering::Acquire) != 0 {
                return None;
            }
            if self
                .cell()
                .next_seq
                .compare_exchange(seq, seq + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(seq);
            }
        }
        None
    }

    fn record_sent(&self, seq: u64, dirty_index: u32, datagram: &[u8], now: Time) {
        assert!(
            datagram.len() <= MESSAGE_LEN_MAX,
            "datagram larger than a window slot"
        );
        let slot = self.slot(seq);
        // SAFETY: the slot is reserved for `seq` and not yet published, so no
        // one else reads or writes its bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                datagram.as_ptr(),
                slot.data.get().cast::<u8>(),
                datagram.len(),
            );
        }
        slot.len.store(datagram.len() as u32, Ordering::Relaxed);
        slot.dirty_index.store(dirty_index, Ordering::Relaxed);
        slot.sent_ns.store(now.as_nanos(), Ordering::Relaxed);
        slot.answered.store(0, Ordering::Relaxed);
        // Counted under the epoch the write was sent at.
        let epoch = tern_wire::Header::ref_from_prefix(datagram)
            .map_or(0, |(header, _)| header.epoch.get());
        slot.acks
            .store(fanout_acks::pack(epoch, seq, 0), Ordering::Relaxed);
        slot.seq.store(seq, Ordering::Release);
    }

    fn end_write(&self, seq: u64) -> Option<u32> {
        if seq == 0 {
            // Seqs start at 1; a free slot holds 0, which must not match.
            return None;
        }
        let slot = self.slot(seq);
        let index = slot.dirty_index.load(Ordering::Acquire);
        slot.seq
            .compare_exchange(seq, 0, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| index)
    }

    fn is_in_flight(&self, seq: u64) -> bool {
        seq != 0 && self.slot(seq).seq.load(Ordering::Acquire) == seq
    }

    fn in_flight_index(&self, seq: u64) -> Option<u32> {
        let slot = self.slot(seq);
        let index = slot.dirty_index.load(Ordering::Acquire);
        (seq != 0 && slot.seq.load(Ordering::Acquire) == seq).then_some(index)
    }

    fn copy_in_flight(&self, seq: u64, out: &mut Vec<u8>) -> bool {
        let slot = self.slot(seq);
        if seq == 0 || slot.seq.load(Ordering::Acquire) != seq {
            return false;
        }
        let len = (slot.len.load(Ordering::Relaxed) as usize).min(MESSAGE_LEN_MAX);
        out.clear();
        // SAFETY: the bytes were published with `seq`; a concurrent reuse of
        // the slot is detected by the second check below and the copy dropped.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(
                slot.data.get().cast::<u8>(),
                len,
            ))
        };
        slot.seq.load(Ordering::Acquire) == seq
    }

    fn resend(&self, seq: u64, sent_before: Time, now: Time, out: &mut Vec<u8>) -> bool {
        let slot = self.slot(seq);
        if slot.sent_ns.load(Ordering::Relaxed) >= sent_before.as_nanos()
            || !self.copy_in_flight(seq, out)
        {
            return false;
        }
        slot.sent_ns.store(now.as_nanos(), Ordering::Relaxed);
        true
    }

    fn next_seq(&self) -> u64 {
        self.cell().next_seq.load(Ordering::Acquire)
    }

    fn set_next_seq(&self, seq: u64) {
        self.cell().next_seq.store(seq, Ordering::Release);
    }

    fn commit_seq(&self) -> u64 {
        self.cell().commit_seq.load(Ordering::Acquire)
    }

    fn advance_commit_seq(&self, seq: u64) {
        self.cell().commit_seq.fetch_max(seq, Ordering::AcqRel);
    }

    fn answered_early(&self, seq: u64) -> bool {
        let slot = self.slot(seq);
        let answered = slot.answered.load(Ordering::Acquire);
        seq != 0 && answered == seq && slot.seq.load(Ordering::Acquire) == seq
    }

    fn mark_answered(&self, seq: u64) -> bool {
        let slot = self.slot(seq);
        if seq == 0 || slot.seq.load(Ordering::Acquire) != seq {
            return false;
        }
        // A reuse of the slot in between resets `answered` before it
        // publishes its seq, or finds this old seq in it, which names no
        // write in flight.
        slot.answered.swap(seq, Ordering::AcqRel) != seq
    }

    fn point_applied(&self) -> u64 {
        self.cell().point_applied.load(Ordering::Acquire)
    }

    fn learn_point(&self, seq: u64) {
        self.cell().point_applied.fetch_max(seq, Ordering::AcqRel);
    }

    fn point_barrier(&self) -> u64 {
        self.cell().point_barrier.load(Ordering::Acquire)
    }

    fn fanout_ack(&self, seq: u64, epoch: u32, position: usize, replicas: usize) -> FanoutAck {
        let slot = self.slot(seq);
        let bit = 1u8 << position;
        let all = fanout_acks::all(replicas);
        let current = fanout_acks::pack(epoch, seq, 0);
        let mut word = slot.acks.load(Ordering::Acquire);
        loop {
            if seq == 0 || slot.seq.load(Ordering::Acquire) != seq {
                return FanoutAck::NotInFlight;
            }
            let counted = if fanout_acks::identity(word) == fanout_acks::identity(current) {
                word
            } else if fanout_acks::identity(word) & fanout_acks::SEQ_MASK
                == seq & fanout_acks::SEQ_MASK
            {
                // Counted under an earlier epoch, when positions named
                // other replicas: counted afresh.
                current
            } else {
                // The slot moved on to another write since `seq` was read.
                return FanoutAck::NotInFlight;
            };
            let mask = fanout_acks::mask(counted);
            if mask & bit != 0 {
                return if mask & all == all {
                    FanoutAck::Complete
                } else {
                    FanoutAck::Duplicate
                };
            }
            let new = counted | u64::from(bit);
            match slot
                .acks
                .compare_exchange(word, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if fanout_acks::mask(new) & all == all => return FanoutAck::Complete,
                Ok(_) => {
                    return FanoutAck::Counted {
                        acks: fanout_acks::mask(new).count_ones(),
                    };
                }
                Err(actual) => word = actual,
            }
        }
    }

    fn reset_point(&self, applied: u64, barrier: u64) {
        self.cell().point_barrier.store(barrier, Ordering::Release);
        self.cell().point_applied.store(applied, Ordering::Release);
    }

    fn dirty_count(&self, index: u32) -> u64 {
        self.dirty(index).load(Ordering::Acquire)
    }

    fn increment_dirty(&self, index: u32) {
        self.dirty(index).fetch_add(1, Ordering::AcqRel);
    }

    fn decrement_dirty(&self, index: u32) {
        let previous = self.dirty(index).fetch_sub(1, Ordering::AcqRel);
        assert!(previous > 0, "dirty count of {index} went below zero");
    }

    fn all_dirty(&self) -> bool {
        self.cell().all_dirty.load(Ordering::Acquire) != 0
    }

    fn set_all_dirty(&self, on: bool) {
        self.cell()
            .all_dirty
            .store(u64::from(on), Ordering::Release);
    }

    fn next_replica(&self) -> u64 {
        self.cell().next_replica.fetch_add(1, Ordering::Relaxed)
    }

    fn serves_slot(&self, slot: u32) -> bool {
        slot < SLOT_COUNT
            && self.slot_word(slot / 64).load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }

    fn holds(&self) -> &HoldTable {
        &self.holds
    }

    fn set_slots(&self, ranges: &[[u32; 2]]) {
        let mut words = [0u64; SLOT_WORDS as usize];
        for &[start, end] in ranges {
            for slot in start..end.min(SLOT_COUNT) {
                words[(slot / 64) as usize] |= 1 << (slot % 64);
            }
        }
        for (index, word) in words.iter().enumerate() {
            self.slot_word(index as u32).store(*word, Ordering::Release);
        }
    }
}
