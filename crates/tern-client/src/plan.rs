//! Which slots a rebalance moves: to even slot counts (`plan_even`), or to
//! even load (`plan_by_load`, from what each slot was asked lately). Both
//! plan on a copy of the ownership, so every move is of slots its donor
//! owns when it runs, in order, and each is one contiguous run.

use tern_control::{ShardId, SlotRange};

/// One move of a rebalance: `slots` from shard `from` to shard `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub from: ShardId,
    pub to: ShardId,
    pub slots: SlotRange,
}

fn slot_count(ranges: &[SlotRange]) -> u32 {
    ranges.iter().map(|[start, end]| end - start).sum()
}

/// What each shard of `owned` was asked: the sum of `load` (index: slot)
/// over the slots it owns.
pub fn shard_loads(owned: &[(ShardId, Vec<SlotRange>)], load: &[u64]) -> Vec<(ShardId, u64)> {
    owned
        .iter()
        .map(|(id, ranges)| {
            let asked = ranges
                .iter()
                .flat_map(|&[start, end]| start..end)
                .map(|slot| load.get(slot as usize).copied().unwrap_or(0))
                .sum();
            (*id, asked)
        })
        .collect()
}

/// `owned` once `moves` are carried out, in order (each of slots its donor
/// owns then, as the plans here make them).
pub fn after(
    owned: &[(ShardId, Vec<SlotRange>)],
    moves: &[Move],
) -> Vec<(ShardId, Vec<SlotRange>)> {
    let mut shards = owned.to_vec();
    let index = |shards: &[(ShardId, Vec<SlotRange>)], id: ShardId| {
        shards.iter().position(|(shard, _)| *shard == id)
    };
    for step in moves {
        if let (Some(donor), Some(receiver)) = (index(&shards, step.from), index(&shards, step.to))
        {
            carry(&mut shards, donor, receiver, step.slots);
        }
    }
    shards
}

/// Moves `slots` from `shards[donor]` to `shards[receiver]` in the plan.
fn carry(
    shards: &mut [(ShardId, Vec<SlotRange>)],
    donor: usize,
    receiver: usize,
    slots: SlotRange,
) -> Move {
    tern_wire::slots::remove(&mut shards[donor].1, slots);
    tern_wire::slots::add(&mut shards[receiver].1, slots);
    Move {
        from: shards[donor].0,
        to: shards[receiver].0,
        slots,
    }
}

/// The moves that leave every shard of `owned` (each shard with the slot
/// ranges it owns) with an even share of the slots: counts differing by at
/// most one, the shards that own the most keeping the larger shares. Each
/// move is taken from the end of one of the donor's ranges; as few slots
/// move as an even share allows.
pub fn plan_even(owned: &[(ShardId, Vec<SlotRange>)]) -> Vec<Move> {
    let mut shards: Vec<(ShardId, Vec<SlotRange>)> = owned.to_vec();
    if shards.is_empty() {
        return Vec::new();
    }
    let total: u32 = shards.iter().map(|(_, ranges)| slot_count(ranges)).sum();
    let n = shards.len() as u32;
    // The larger shares go to those that own the most already.
    let mut order: Vec<usize> = (0..shards.len()).collect();
    order.sort_by_key(|&index| {
        (
            std::cmp::Reverse(slot_count(&shards[index].1)),
            shards[index].0,
        )
    });
    let mut target = vec![total / n; shards.len()];
    for &index in order.iter().take((total % n) as usize) {
        target[index] += 1;
    }
    let mut moves = Vec::new();
    loop {
        let excess = |index: usize, shards: &[(ShardId, Vec<SlotRange>)]| {
            i64::from(slot_count(&shards[index].1)) - i64::from(target[index])
        };
        let donor = (0..shards.len()).max_by_key(|&index| (excess(index, &shards), index));
        let receiver = (0..shards.len()).min_by_key(|&index| (excess(index, &shards), index));
        let (Some(donor), Some(receiver)) = (donor, receiver) else {
            break;
        };
        let (surplus, deficit) = (excess(donor, &shards), -excess(receiver, &shards));
        if surplus <= 0 || deficit <= 0 {
            break;
        }
        let &[start, end] = shards[donor].1.last().expect("a donor owns slots");
        let length = (end - start).min(surplus.min(deficit) as u32);
        moves.push(carry(&mut shards, donor, receiver, [end - length, end]));
    }
    moves
}

/// How close to the mean a shard's load must come for a rebalance by load
/// to leave it: 5% above the mean.
pub const LOAD_TOLERANCE: f64 = 0.05;

/// The moves that bring every shard of `owned` near the mean load, `load`
/// being what each slot was asked (index: slot; see
/// `reshard::measure_load`). Again and again, the most loaded shard gives
/// the least loaded one the run of slots, from either end of one of its
/// ranges, that lowers the larger of their two loads most (the fewest slots
/// among equals), until the most loaded is within `LOAD_TOLERANCE` of the
/// mean or no run helps (a single slot hotter than the gap cannot be
/// split). The most loaded shard's load never rises.
pub fn plan_by_load(owned: &[(ShardId, Vec<SlotRange>)], load: &[u64]) -> Vec<Move> {
    let slot_load = |slot: u32| load.get(slot as usize).copied().unwrap_or(0);
    let mut shards: Vec<(ShardId, Vec<SlotRange>)> = owned.to_vec();
    let mut loads: Vec<u64> = shard_loads(&shards, load)
        .into_iter()
        .map(|(_, asked)| asked)
        .collect();
    let total: u64 = loads.iter().sum();
    if shards.len() < 2 || total == 0 {
        return Vec::new();
    }
    let bound = total as f64 / shards.len() as f64 * (1.0 + LOAD_TOLERANCE);
    let mut moves = Vec::new();
    // Each move lowers the pair's larger load; the bound keeps a plan of
    // many tiny gains from going on for long.
    for _ in 0..shards.len() * 8 {
        let donor = (0..shards.len()).max_by_key(|&i| (loads[i], std::cmp::Reverse(i)));
        let receiver = (0..shards.len()).min_by_key(|&i| (loads[i], i));
        let (Some(donor), Some(receiver)) = (donor, receiver) else {
            break;
        };
        if donor == receiver || loads[donor] as f64 <= bound {
            break;
        }
        let (from, to) = (loads[donor], loads[receiver]);
        // (the larger load after, slots moved, the run, its load)
        let mut best: Option<(u64, u32, SlotRange, u64)> = None;
        let mut consider = |run: SlotRange, moved: u64| {
            let after = (from - moved).max(to + moved);
            let candidate = (after, run[1] - run[0], run, moved);
            if after < from && best.is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1)) {
                best = Some(candidate);
            }
        };
        for &[start, end] in &shards[donor].1 {
            let mut moved = 0;
            for first in (start..end).rev() {
                moved += slot_load(first);
                consider([first, end], moved);
                if to + moved >= from {
                    break;
                }
            }
            let mut moved = 0;
            for last in start..end {
                moved += slot_load(last);
                consider([start, last + 1], moved);
                if to + moved >= from {
                    break;
                }
            }
        }
        let Some((_, _, run, moved)) = best else {
            break;
        };
        moves.push(carry(&mut shards, donor, receiver, run));
        loads[donor] -= moved;
        loads[receiver] += moved;
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tern_wire::SLOT_COUNT;

    /// Carries out `moves` on `owned`, checking that each moves slots its
    /// donor owns then; the slot ranges each shard owns after.
    fn carry_out(
        owned: &[(ShardId, Vec<SlotRange>)],
        moves: &[Move],
    ) -> Vec<(ShardId, Vec<SlotRange>)> {
        let mut shards = owned.to_vec();
        for step in moves {
            assert!(step.from != step.to && step.slots[0] < step.slots[1]);
            let (_, donor) = shards.iter().find(|(id, _)| *id == step.from).unwrap();
            assert!(shards.iter().any(|(id, _)| *id == step.to));
            assert_eq!(
                tern_wire::slots::first_missing(donor, step.slots),
                None,
                "{step:?} moves slots its donor does not own"
            );
            shards = after(&shards, std::slice::from_ref(step));
        }
        shards
    }

    fn counts(shards: &[(ShardId, Vec<SlotRange>)]) -> Vec<u32> {
        shards
            .iter()
            .map(|(_, ranges)| slot_count(ranges))
            .collect()
    }

    fn loads(shards: &[(ShardId, Vec<SlotRange>)], load: &[u64]) -> Vec<u64> {
        shard_loads(shards, load)
            .into_iter()
            .map(|(_, asked)| asked)
            .collect()
    }

    /// The slots cut into runs at `cuts` and dealt to `shards` shards.
    fn layout(mut cuts: Vec<u32>, shards: u32, seed: u64) -> Vec<(ShardId, Vec<SlotRange>)> {
        cuts.push(0);
        cuts.push(SLOT_COUNT);
        cuts.sort();
        cuts.dedup();
        let mut owned: Vec<(ShardId, Vec<SlotRange>)> =
            (0..shards).map(|id| (ShardId(id), Vec::new())).collect();
        for (index, run) in cuts.windows(2).enumerate() {
            let owner = ((seed >> (index % 60)) as usize + index) % shards as usize;
            tern_wire::slots::add(&mut owned[owner].1, [run[0], run[1]]);
        }
        owned
    }

    #[test]
    fn a_new_empty_shard_gets_a_third_from_the_two_others() {
        let owned = vec![
            (ShardId(0), vec![[0, SLOT_COUNT / 2]]),
            (ShardId(1), vec![[SLOT_COUNT / 2, SLOT_COUNT]]),
            (ShardId(2), vec![]),
        ];
        let moves = plan_even(&owned);
        assert!(moves.iter().all(|step| step.to == ShardId(2)), "{moves:?}");
        let counts = counts(&carry_out(&owned, &moves));
        assert_eq!(counts.iter().sum::<u32>(), SLOT_COUNT);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        let moved: u32 = moves.iter().map(|step| step.slots[1] - step.slots[0]).sum();
        assert_eq!(moved, SLOT_COUNT / 3, "only the new shard's share moves");
    }

    #[test]
    fn an_even_cluster_needs_no_move() {
        let even: Vec<(ShardId, Vec<SlotRange>)> = tern_control::ClusterMap::even_slot_ranges(3)
            .into_iter()
            .enumerate()
            .map(|(id, range)| (ShardId(id as u32), vec![range]))
            .collect();
        assert!(plan_even(&even).is_empty());
        let uniform = vec![1; SLOT_COUNT as usize];
        assert!(plan_by_load(&even, &uniform).is_empty());
        assert!(plan_by_load(&even, &[]).is_empty(), "no load, no move");
    }

    #[test]
    fn a_hot_shard_gives_slots_until_the_load_is_even_and_even_slots_stay_put() {
        // Two even shards; everything asked of shard 0, evenly over its slots.
        let half = SLOT_COUNT / 2;
        let owned = vec![
            (ShardId(0), vec![[0, half]]),
            (ShardId(1), vec![[half, SLOT_COUNT]]),
        ];
        let mut load = vec![0; SLOT_COUNT as usize];
        load[..half as usize].fill(10);
        let moves = plan_by_load(&owned, &load);
        assert!(!moves.is_empty());
        assert!(
            moves.iter().all(|step| step.from == ShardId(0)),
            "{moves:?}"
        );
        let after = loads(&carry_out(&owned, &moves), &load);
        let mean = after.iter().sum::<u64>() as f64 / 2.0;
        assert!(
            *after.iter().max().unwrap() as f64 <= mean * (1.0 + LOAD_TOLERANCE),
            "{after:?}"
        );
        // One hot slot: it moves alone, the rest of its shard stays.
        let mut hot = vec![1; SLOT_COUNT as usize];
        hot[100] = 100_000;
        let moves = plan_by_load(&owned, &hot);
        let after = loads(&carry_out(&owned, &moves), &hot);
        assert!(after.iter().max().unwrap() < &(100_000 + 8192), "{after:?}");
    }

    proptest! {
        #[test]
        fn any_layout_ends_even_with_moves_of_owned_slots(
            cuts in proptest::collection::vec(1..SLOT_COUNT, 1..12),
            shards in 1u32..6,
            owner_seed in any::<u64>(),
        ) {
            let owned = layout(cuts, shards, owner_seed);
            let moves = plan_even(&owned);
            let counts = counts(&carry_out(&owned, &moves));
            prop_assert_eq!(counts.iter().sum::<u32>(), SLOT_COUNT);
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        }

        #[test]
        fn a_plan_by_load_moves_owned_slots_and_never_raises_the_highest_load(
            cuts in proptest::collection::vec(1..SLOT_COUNT, 1..12),
            shards in 1u32..6,
            owner_seed in any::<u64>(),
            hot in proptest::collection::vec((0..SLOT_COUNT, 1u64..10_000), 0..40),
            base in 0u64..3,
        ) {
            let owned = layout(cuts, shards, owner_seed);
            let mut load = vec![base; SLOT_COUNT as usize];
            for (slot, asked) in hot {
                load[slot as usize] += asked;
            }
            let before = loads(&owned, &load);
            let moves = plan_by_load(&owned, &load);
            let after_ranges = carry_out(&owned, &moves);
            prop_assert_eq!(counts(&after_ranges).iter().sum::<u32>(), SLOT_COUNT);
            let after = loads(&after_ranges, &load);
            prop_assert_eq!(after.iter().sum::<u64>(), before.iter().sum::<u64>());
            prop_assert!(after.iter().max() <= before.iter().max(), "{:?} -> {:?}", before, after);
        }
    }
}
