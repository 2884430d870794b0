//! YCSB's core workloads: operation mixes and key choices.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngExt};

use crate::distribution::{KeyChooser, ZIPFIAN_THETA, Zipfian};

/// YCSB core workloads A-F, or a custom GET/PUT mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadName {
    /// 50% read, 50% update, zipfian (session store).
    A,
    /// 95% read, 5% update, zipfian (photo tagging).
    B,
    /// 100% read, zipfian (user profile cache).
    C,
    /// 95% read, 5% insert, latest (status updates).
    D,
    /// Short range scans: not supported (Tern hashes keys to slots).
    E,
    /// 50% read, 50% read-modify-write, zipfian (user database).
    F,
    /// GET/PUT with --read-fraction and --distribution.
    Custom,
}

/// Key distribution of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    /// YCSB's scrambled zipfian, theta 0.99.
    Zipfian,
    /// Skewed towards the most recently inserted keys.
    Latest,
}

/// What one operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum OpKind {
    Read,
    Update,
    Insert,
    ReadModifyWrite,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "READ",
            OpKind::Update => "UPDATE",
            OpKind::Insert => "INSERT",
            OpKind::ReadModifyWrite => "RMW",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Fractions of each operation (summing to 1) and the key distribution.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Mix {
    pub read: f64,
    pub update: f64,
    pub insert: f64,
    pub read_modify_write: f64,
    pub distribution: Distribution,
}

impl Mix {
    /// The YCSB definition of `workload`; `custom` uses the given read
    /// fraction and distribution. Workload E is refused: no scans.
    pub fn of(
        workload: WorkloadName,
        read_fraction: f64,
        distribution: Option<Distribution>,
    ) -> Result<Mix, String> {
        let mix = |read, update, insert, read_modify_write, default| Mix {
            read,
            update,
            insert,
            read_modify_write,
            distribution: distribution.unwrap_or(default),
        };
        Ok(match workload {
            WorkloadName::A => mix(0.5, 0.5, 0.0, 0.0, Distribution::Zipfian),
            WorkloadName::B => mix(0.95, 0.05, 0.0, 0.0, Distribution::Zipfian),
            WorkloadName::C => mix(1.0, 0.0, 0.0, 0.0, Distribution::Zipfian),
            WorkloadName::D => mix(0.95, 0.0, 0.05, 0.0, Distribution::Latest),
            WorkloadName::E => {
                return Err(
                    "workload E (short range scans) is not supported: Tern hashes keys to slots \
                            and has no ordered scans"
                        .into(),
                );
            }
            WorkloadName::F => mix(0.5, 0.0, 0.0, 0.5, Distribution::Zipfian),
            WorkloadName::Custom => mix(
                read_fraction,
                1.0 - read_fraction,
                0.0,
                0.0,
                Distribution::Uniform,
            ),
        })
    }

    pub fn choose(&self, random: &mut impl Rng) -> OpKind {
        let draw: f64 = random.random();
        if draw < self.read {
            OpKind::Read
        } else if draw < self.read + self.update {
            OpKind::Update
        } else if draw < self.read + self.update + self.insert {
            OpKind::Insert
        } else {
            OpKind::ReadModifyWrite
        }
    }
}

/// Chooses keys for reads and updates, and numbers inserts; shared by all
/// workers so that "latest" follows everyone's inserts.
#[derive(Debug)]
pub struct Keys {
    chooser: Option<KeyChooser>,
    latest: Option<Zipfian>,
    /// Keys 0..inserted exist (the load phase wrote `records` of them).
    inserted: AtomicU64,
}

impl Keys {
    pub fn new(records: u64, distribution: Distribution) -> Keys {
        let (chooser, latest) = match distribution {
            Distribution::Uniform => (Some(KeyChooser::uniform(records)), None),
            Distribution::Zipfian => (Some(KeyChooser::scrambled_zipfian(records)), None),
            Distribution::Latest => (None, Some(Zipfian::new(records, ZIPFIAN_THETA))),
        };
        Keys {
            chooser,
            latest,
            inserted: AtomicU64::new(records),
        }
    }

    /// An existing key to read or update.
    pub fn existing(&self, random: &mut impl Rng) -> u64 {
        match (&self.chooser, &self.latest) {
            (Some(chooser), _) => chooser.next(random),
            (None, Some(zipfian)) => {
                // YCSB's SkewedLatest: rank 0 is the newest key.
                let newest = self.inserted.load(Ordering::Relaxed) - 1;
                newest - zipfian.next(random).min(newest)
            }
            (None, None) => unreachable!("one chooser is always set"),
        }
    }

    /// A new key to insert.
    pub fn insert(&self) -> u64 {
        self.inserted.fetch_add(1, Ordering::Relaxed)
    }

    pub fn inserted(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn operation_mixes_match_the_ycsb_definitions() {
        let mut random = SmallRng::seed_from_u64(3);
        for (workload, expected) in [
            (WorkloadName::A, [0.5, 0.5, 0.0, 0.0]),
            (WorkloadName::B, [0.95, 0.05, 0.0, 0.0]),
            (WorkloadName::C, [1.0, 0.0, 0.0, 0.0]),
            (WorkloadName::D, [0.95, 0.0, 0.05, 0.0]),
            (WorkloadName::F, [0.5, 0.0, 0.0, 0.5]),
        ] {
            let mix = Mix::of(workload, 0.0, None).unwrap();
            let mut counts = [0u32; 4];
            let draws = 100_000;
            for _ in 0..draws {
                counts[mix.choose(&mut random).index()] += 1;
            }
            for (kind, (count, want)) in OpKind::ALL.iter().zip(counts.iter().zip(expected)) {
                let got = f64::from(*count) / f64::from(draws);
                assert!(
                    (got - want).abs() < 0.01,
                    "{workload:?} {kind:?}: {got} vs {want}"
                );
            }
        }
        assert!(
            Mix::of(WorkloadName::E, 0.0, None)
                .unwrap_err()
                .contains("not supported")
        );
    }

    #[test]
    fn latest_favours_recent_inserts() {
        let keys = Keys::new(1000, Distribution::Latest);
        for _ in 0..500 {
            keys.insert();
        }
        let mut random = SmallRng::seed_from_u64(5);
        let draws = 50_000;
        let recent = (0..draws)
            .filter(|_| keys.existing(&mut random) >= 1400)
            .count();
        // The newest 100 of 1500 keys draw far more than their 6.7% share.
        assert!(
            recent as f64 / f64::from(draws) > 0.4,
            "only {recent} of {draws}"
        );
        assert!((0..1000).all(|_| keys.existing(&mut random) < 1500));
    }

    #[test]
    fn scrambled_zipfian_spreads_hot_keys_over_shards() {
        // The hottest keys of the benchmark land on every one of 3 shards.
        let keys = Keys::new(10_000, Distribution::Zipfian);
        let mut random = SmallRng::seed_from_u64(9);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(keys.existing(&mut random)).or_insert(0u32) += 1;
        }
        let mut hottest: Vec<(u64, u32)> = counts.into_iter().collect();
        hottest.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let shards: std::collections::HashSet<u32> = hottest[..20]
            .iter()
            .map(|(key, _)| {
                let name = crate::key_name(*key, 0);
                tern_wire::slot_of(tern_wire::key_hash(&name)) * 3 / tern_wire::SLOT_COUNT
            })
            .collect();
        assert_eq!(shards.len(), 3, "the 20 hottest keys span all 3 shards");
    }
}
