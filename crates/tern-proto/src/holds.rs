//! [`HoldTable`]: the transactions a shard's coordinator holds, in shared
//! memory laid out as `tern_wire::maps::HoldBucket` describes, so that the
//! XDP program (bpf/txn.h) and user space take and release the same holds.
//!
//! A transaction's hold lives in bucket `hold_bucket(id)`, in one of its
//! ways. Every look and change happens under the bucket's lock, a word
//! taken by compare-and-swap: the kernel hands its datagram up when it
//! finds the lock taken, user space waits (the kernel's sections are short
//! and never wait). What a hold counts dirty is counted once: a key's
//! dirty entry when a PREPARE writes it, the bit of the key in
//! `dirty_mask` recording that it was.

use std::sync::atomic::Ordering;

use tern_wire::maps::{
    HOLD_BUCKETS, HOLD_KEYS_MAX, HOLD_LOCKED, HOLD_PARTICIPANTS_LEN, HoldBucket, HoldSlot,
    hold_bucket,
};
use tern_wire::txn::TxnId;
use tern_wire::{dirty_index, slot_of};

use crate::Time;
use crate::coordinator::ShardState;

/// Why a hold could not be taken; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldRefusal {
    /// A key's slot is no longer served here (a migration froze it since
    /// the request was checked).
    NotServed,
    /// Every way of the transaction's bucket holds another transaction.
    Full,
    /// The transaction would lock more keys here than a hold names.
    TooManyKeys,
    /// No sequence number was free (the in-flight window is full).
    WindowFull,
}

/// What a request's hold is to be: the transaction, its keys (each key's
/// hash, and whether its dirty entry counts: a key the PREPARE writes),
/// its lease and participants (as a PREPARE encodes them).
#[derive(Clone, Debug)]
pub struct HoldRequest<'a> {
    pub id: TxnId,
    pub keys: &'a [(u32, bool)],
    pub lease_ms: u32,
    pub participants: &'a [u8],
    /// The lease's start when taken again from the head's report.
    pub prepared_at: Option<Time>,
}

/// What an acknowledgement does to its transaction's hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldAck {
    /// Settled here: the hold goes, its dirty entries lowered.
    Release,
    /// A yes: the lease runs again from now.
    Renew,
    /// Still in doubt: the lease runs from now unless it already runs.
    Start,
}

/// A hold as read by [`HoldTable::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub id: TxnId,
    pub hashes: Vec<u32>,
    /// The dirty entries it counts.
    pub dirty: Vec<u32>,
    pub prepared_at: Option<Time>,
    pub lease_ms: u32,
    pub participants: Vec<u8>,
    pub taken_at: u64,
}

/// One shard's hold table: `HOLD_BUCKETS` buckets of shared memory.
#[derive(Debug)]
pub struct HoldTable {
    buckets: std::ptr::NonNull<HoldBucket>,
}

// SAFETY: every access goes through atomics, under the bucket's lock for
// everything but the lock itself; the participant bytes are read and
// written only under the lock.
unsafe impl Send for HoldTable {}
// SAFETY: as above.
unsafe impl Sync for HoldTable {}

/// A bucket's lock, released on drop.
struct Locked<'a> {
    bucket: &'a HoldBucket,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.bucket.lock.store(0, Ordering::Release);
    }
}

fn id_of(slot: &HoldSlot) -> TxnId {
    TxnId {
        client_id: slot.client_id.load(Ordering::Relaxed),
        txn_seq: slot.txn_seq.load(Ordering::Relaxed),
    }
}

fn used(slot: &HoldSlot) -> bool {
    slot.used.load(Ordering::Relaxed) != 0
}

impl HoldTable {
    /// # Safety
    /// `buckets` must point at `HOLD_BUCKETS` `HoldBucket`s, aligned and
    /// valid (zeroed or as the kernel left them) for the table's life.
    pub unsafe fn from_raw(buckets: std::ptr::NonNull<HoldBucket>) -> Self {
        HoldTable { buckets }
    }

    fn bucket(&self, index: u32) -> &HoldBucket {
        assert!(index < HOLD_BUCKETS, "hold bucket {index} out of range");
        // SAFETY: in bounds (checked) and valid for our lifetime.
        unsafe { &*self.buckets.as_ptr().add(index as usize) }
    }

    fn lock(&self, id: TxnId) -> Locked<'_> {
        self.lock_bucket(hold_bucket(id.client_id, id.txn_seq))
    }

    fn lock_bucket(&self, index: u32) -> Locked<'_> {
        let bucket = self.bucket(index);
        let mut spins = 0u32;
        while bucket
            .lock
            .compare_exchange_weak(0, HOLD_LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Locked { bucket }
    }

    fn find<'b>(locked: &'b Locked<'_>, id: TxnId) -> Option<&'b HoldSlot> {
        locked
            .bucket
            .slots
            .iter()
            .find(|slot| used(slot) && id_of(slot) == id)
    }

    /// Takes (or adds to) the hold of `request.id`: its keys' slots must
    /// all be served, the union of its keys fit a hold. Only then is
    /// `reserve` called for the request's seq (the hold's `taken_at` when
    /// new), and only if it gives one does anything change: the new keys
    /// entered, each dirty entry to count counted once. All or nothing.
    pub fn take(
        &self,
        state: &(impl ShardState + ?Sized),
        request: &HoldRequest<'_>,
        reserve: impl FnOnce() -> Option<u64>,
    ) -> Result<u64, HoldRefusal> {
        let locked = self.lock(request.id);
        // Under the lock: a FREEZE clears its slots before it looks for
        // holds on them, bucket by bucket under their locks.
        if request
            .keys
            .iter()
            .any(|&(hash, _)| !state.serves_slot(slot_of(hash)))
        {
            return Err(HoldRefusal::NotServed);
        }
        let existing = Self::find(&locked, request.id);
        let slot = match existing {
            Some(slot) => slot,
            None => locked
                .bucket
                .slots
                .iter()
                .find(|slot| !used(slot))
                .ok_or(HoldRefusal::Full)?,
        };
        let count = if existing.is_some() {
            slot.count.load(Ordering::Relaxed) as usize
        } else {
            0
        };
        let known = |hash: u32, upto: usize| {
            slot.hashes[..upto]
                .iter()
                .position(|known| known.load(Ordering::Relaxed) == hash)
        };
        let mut added = 0;
        for (at, &(hash, _)) in request.keys.iter().enumerate() {
            let earlier = request.keys[..at].iter().any(|&(other, _)| other == hash);
            if !earlier && known(hash, count).is_none() {
                added += 1;
            }
        }
        if count + added > HOLD_KEYS_MAX || request.participants.len() > HOLD_PARTICIPANTS_LEN {
            return Err(HoldRefusal::TooManyKeys);
        }
        let seq = reserve().ok_or(HoldRefusal::WindowFull)?;
        if existing.is_none() {
            slot.client_id
                .store(request.id.client_id, Ordering::Relaxed);
            slot.txn_seq.store(request.id.txn_seq, Ordering::Relaxed);
            slot.taken_at.store(seq, Ordering::Relaxed);
            slot.prepared_ns.store(0, Ordering::Relaxed);
            slot.dirty_mask.store(0, Ordering::Relaxed);
            slot.participants_len.store(0, Ordering::Relaxed);
            slot.count.store(0, Ordering::Relaxed);
            slot.used.store(1, Ordering::Relaxed);
        }
        let mut count = count;
        let mut mask = slot.dirty_mask.load(Ordering::Relaxed);
        for &(hash, dirty) in request.keys {
            let at = known(hash, count).unwrap_or_else(|| {
                slot.hashes[count].store(hash, Ordering::Relaxed);
                count += 1;
                count - 1
            });
            if dirty && mask & (1 << at) == 0 {
                // DESIGN rule 3: dirty before the request can reach anyone.
                state.increment_dirty(dirty_index(hash));
                mask |= 1 << at;
            }
        }
        slot.count.store(count as u32, Ordering::Relaxed);
        slot.dirty_mask.store(mask, Ordering::Relaxed);
        slot.lease_ms.store(request.lease_ms, Ordering::Relaxed);
        if let Some(at) = request.prepared_at {
            slot.prepared_ns.store(stamp(at), Ordering::Relaxed);
        }
        // The newest list, unless it is shorter than the one held.
        let len = request.participants.len();
        if len >= slot.participants_len.load(Ordering::Relaxed) as usize {
            // SAFETY: under the bucket's lock nobody else reads or writes
            // these bytes; `len` was checked against their size.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    request.participants.as_ptr(),
                    slot.participants.get().cast::<u8>(),
                    len,
                );
            }
            slot.participants_len.store(len as u32, Ordering::Relaxed);
        }
        Ok(seq)
    }

    /// After the acknowledgement of request `seq` of transaction `id`:
    /// `decide` says, from whether that request took the hold, what
    /// becomes of it. Returns what was done, None when `id` holds nothing
    /// here.
    pub fn acknowledged(
        &self,
        state: &(impl ShardState + ?Sized),
        id: TxnId,
        seq: u64,
        now: Time,
        decide: impl FnOnce(bool) -> HoldAck,
    ) -> Option<HoldAck> {
        let locked = self.lock(id);
        let slot = Self::find(&locked, id)?;
        let action = decide(slot.taken_at.load(Ordering::Relaxed) == seq);
        match action {
            HoldAck::Release => {
                let count = slot.count.load(Ordering::Relaxed) as usize;
                let mask = slot.dirty_mask.load(Ordering::Relaxed);
                for (at, hash) in slot.hashes[..count].iter().enumerate() {
                    if mask & (1 << at) != 0 {
                        state.decrement_dirty(dirty_index(hash.load(Ordering::Relaxed)));
                    }
                }
                slot.used.store(0, Ordering::Relaxed);
            }
            HoldAck::Renew => slot.prepared_ns.store(stamp(now), Ordering::Relaxed),
            HoldAck::Start => {
                let _ = slot.prepared_ns.compare_exchange(
                    0,
                    stamp(now),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        Some(action)
    }

    /// Runs `f` with the bucket of `id` locked, as a concurrent holder of
    /// the lock would (the kernel then hands that bucket's datagrams up).
    pub fn with_bucket_locked<T>(&self, id: TxnId, f: impl FnOnce() -> T) -> T {
        let _locked = self.lock(id);
        f()
    }

    /// Every hold, each bucket read under its lock (even one that looks
    /// empty: a FREEZE's check for holds relies on meeting every take that
    /// saw its slots still served, and a take fills its way only after it
    /// reserved its seq, under the lock).
    pub fn snapshot(&self) -> Vec<HoldView> {
        let mut holds = Vec::new();
        for index in 0..HOLD_BUCKETS {
            let locked = self.lock_bucket(index);
            for slot in locked.bucket.slots.iter().filter(|slot| used(slot)) {
                holds.push(view(slot));
            }
        }
        holds
    }

    /// Transactions held.
    pub fn count(&self) -> u64 {
        (0..HOLD_BUCKETS)
            .map(|index| {
                self.bucket(index)
                    .slots
                    .iter()
                    .filter(|slot| used(slot))
                    .count() as u64
            })
            .sum()
    }
}

/// A time as `prepared_ns` keeps it (never 0, which means none).
fn stamp(time: Time) -> u64 {
    time.as_nanos().max(1)
}

fn view(slot: &HoldSlot) -> HoldView {
    let count = (slot.count.load(Ordering::Relaxed) as usize).min(HOLD_KEYS_MAX);
    let mask = slot.dirty_mask.load(Ordering::Relaxed);
    let hashes: Vec<u32> = slot.hashes[..count]
        .iter()
        .map(|hash| hash.load(Ordering::Relaxed))
        .collect();
    let dirty = hashes
        .iter()
        .enumerate()
        .filter(|(at, _)| mask & (1 << at) != 0)
        .map(|(_, &hash)| dirty_index(hash))
        .collect();
    let len = (slot.participants_len.load(Ordering::Relaxed) as usize).min(HOLD_PARTICIPANTS_LEN);
    // SAFETY: read under the bucket's lock (see `snapshot`).
    let participants =
        unsafe { std::slice::from_raw_parts(slot.participants.get().cast::<u8>(), len).to_vec() };
    let prepared = slot.prepared_ns.load(Ordering::Relaxed);
    HoldView {
        id: id_of(slot),
        hashes,
        dirty,
        prepared_at: (prepared != 0).then(|| Time::from_nanos(prepared)),
        lease_ms: slot.lease_ms.load(Ordering::Relaxed),
        participants,
        taken_at: slot.taken_at.load(Ordering::Relaxed),
    }
}
