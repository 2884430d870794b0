//! Key choosers: uniform, and YCSB's scrambled zipfian.

use rand::{Rng, RngExt};

/// The skew YCSB uses by default.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// Which of `items` keys an operation touches.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform {
        items: u64,
    },
    /// YCSB's ScrambledZipfianGenerator: a zipfian over a huge item space,
    /// hashed onto `items`, so that popular keys are spread out (and over
    /// shards) instead of being the lowest-numbered ones.
    ScrambledZipfian {
        items: u64,
        zipfian: Zipfian,
    },
}

impl KeyChooser {
    pub fn uniform(items: u64) -> Self {
        KeyChooser::Uniform { items }
    }

    pub fn scrambled_zipfian(items: u64) -> Self {
        // YCSB draws from 10^10 items with a precomputed zeta to stay cheap.
        const ITEM_COUNT: u64 = 10_000_000_000;
        const ZETAN: f64 = 26.469_028_201_783_02;
        KeyChooser::ScrambledZipfian {
            items,
            zipfian: Zipfian::with_zeta(ITEM_COUNT, ZIPFIAN_THETA, ZETAN),
        }
    }

    pub fn next(&self, random: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { items } => random.random_range(0..*items),
            KeyChooser::ScrambledZipfian { items, zipfian } => {
                fnv1a_64(zipfian.next(random)) % items
            }
        }
    }
}

/// Zipfian over `0..items` (Gray et al., "Quickly generating billion-record
/// synthetic databases", as in YCSB's ZipfianGenerator): item 0 is the most
/// popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zeta_n: f64,
    alpha: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Self {
        Self::with_zeta(items, theta, zeta(items, theta))
    }

    fn with_zeta(items: u64, theta: f64, zeta_n: f64) -> Self {
        let zeta_2 = zeta(2, theta);
        Zipfian {
            items,
            theta,
            zeta_n,
            alpha: 1.0 / (1.0 - theta),
            eta: (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    /// The probability of item 0, `1 / zeta(n)`.
    pub fn hottest_probability(&self) -> f64 {
        1.0 / self.zeta_n
    }

    pub fn next(&self, random: &mut impl Rng) -> u64 {
        let u: f64 = random.random();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let value = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (value as u64).min(self.items - 1)
    }
}

fn zeta(items: u64, theta: f64) -> f64 {
    (1..=items).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// 64-bit FNV-1a of a number's little-endian bytes (YCSB's fnvhash64).
fn fnv1a_64(value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn the_hottest_zipfian_item_has_its_theoretical_frequency() {
        let zipfian = Zipfian::new(1000, ZIPFIAN_THETA);
        let mut random = SmallRng::seed_from_u64(7);
        let draws = 200_000;
        let hits = (0..draws)
            .filter(|_| zipfian.next(&mut random) == 0)
            .count();
        let observed = hits as f64 / draws as f64;
        let expected = zipfian.hottest_probability();
        assert!(
            (observed - expected).abs() < 0.01,
            "observed {observed}, expected {expected}"
        );
    }

    #[test]
    fn scrambling_spreads_the_hot_keys() {
        let chooser = KeyChooser::scrambled_zipfian(10_000);
        let mut random = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            counts[chooser.next(&mut random) as usize] += 1;
        }
        let mut hottest: Vec<usize> = (0..counts.len()).collect();
        hottest.sort_by_key(|&key| std::cmp::Reverse(counts[key]));
        // Skewed: the ten hottest keys take a large share...
        let top: u32 = hottest[..10].iter().map(|&key| counts[key]).sum();
        assert!(
            top > 10_000,
            "the ten hottest keys got only {top} of 100000"
        );
        // ...but they are not the lowest-numbered keys.
        assert!(hottest[..10].iter().any(|&key| key > 1_000));
    }
}
