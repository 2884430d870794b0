//! Arithmetic on hash slot ranges, `[start, end)` each: what a shard serves,
//! what a migration moves or holds.

/// A range of hash slots, `[start, end)`.
pub type SlotRange = [u32; 2];

/// Removes the slots of `cut` from `ranges`.
pub fn remove(ranges: &mut Vec<SlotRange>, [cut_start, cut_end]: SlotRange) {
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for &[start, end] in ranges.iter() {
        if end <= cut_start || cut_end <= start {
            kept.push([start, end]);
            continue;
        }
        if start < cut_start {
            kept.push([start, cut_start]);
        }
        if cut_end < end {
            kept.push([cut_end, end]);
        }
    }
    *ranges = kept;
}

/// Adds `range` to `ranges`, keeping them sorted with neighbours merged.
pub fn add(ranges: &mut Vec<SlotRange>, range: SlotRange) {
    ranges.push(range);
    ranges.sort_unstable();
    let mut merged: Vec<SlotRange> = Vec::with_capacity(ranges.len());
    for &[start, end] in ranges.iter() {
        match merged.last_mut() {
            Some(last) if last[1] >= start => last[1] = last[1].max(end),
            _ => merged.push([start, end]),
        }
    }
    *ranges = merged;
}

/// Whether `ranges` contain `slot`.
pub fn contains(ranges: &[SlotRange], slot: u32) -> bool {
    ranges
        .iter()
        .any(|&[start, end]| start <= slot && slot < end)
}

/// Whether `ranges` and `range` share a slot.
pub fn overlaps(ranges: &[SlotRange], [start, end]: SlotRange) -> bool {
    ranges.iter().any(|&[s, e]| s < end && start < e)
}

/// The first slot of `range` that `ranges` lack, if any.
pub fn first_missing(ranges: &[SlotRange], [start, end]: SlotRange) -> Option<u32> {
    (start..end).find(|slot| !contains(ranges, *slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_need_a_shared_slot() {
        let ranges = [[0, 100], [200, 300]];
        assert!(overlaps(&ranges, [99, 101]));
        assert!(overlaps(&ranges, [150, 201]));
        assert!(!overlaps(&ranges, [100, 200]));
        assert!(!overlaps(&[], [0, 10]));
    }

    #[test]
    fn slot_ranges_split_and_merge() {
        let mut ranges = vec![[0, 100], [200, 300]];
        remove(&mut ranges, [40, 60]);
        assert_eq!(ranges, [[0, 40], [60, 100], [200, 300]]);
        remove(&mut ranges, [200, 300]);
        assert_eq!(ranges, [[0, 40], [60, 100]]);
        add(&mut ranges, [40, 60]);
        assert_eq!(ranges, [[0, 100]]);
        add(&mut ranges, [150, 160]);
        add(&mut ranges, [100, 150]);
        assert_eq!(ranges, [[0, 160]]);
        assert!(contains(&ranges, 159) && !contains(&ranges, 160));
        assert_eq!(first_missing(&ranges, [10, 160]), None);
        assert_eq!(first_missing(&ranges, [150, 170]), Some(160));
    }
}
