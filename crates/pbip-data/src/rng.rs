//! Version-stable random numbers.
//!
//! Every random decision of this crate comes from a [`ChaCha8Rng`] seeded by hashing a tuple
//! (seed, stream tag, indices...) with SplitMix64, and is turned into integers / floats by the
//! functions below rather than by `rand`'s distributions, whose algorithms may change between
//! `rand` releases. ChaCha8's output is the reference ChaCha stream, so the sequences are
//! stable across crate versions and platforms.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// SplitMix64 finaliser.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha8 generator keyed by `seed`, a stream `tag` and up to any number of indices.
pub(crate) fn rng_for(seed: u64, tag: u64, idx: &[u64]) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    let mut h = splitmix64(seed ^ splitmix64(tag));
    for &i in idx {
        h = splitmix64(h ^ splitmix64(i.wrapping_add(0x5851_F42D_4C95_7F2D)));
    }
    for (k, chunk) in key.chunks_exact_mut(8).enumerate() {
        h = splitmix64(h.wrapping_add(k as u64));
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Uniform integer in `0..n` (`n > 0`) by rejection sampling (unbiased, version-stable).
pub(crate) fn below(rng: &mut impl RngCore, n: u64) -> u64 {
    debug_assert!(n > 0);
    if n <= 1 {
        return 0;
    }
    // Largest multiple of n that fits: reject values at or above it.
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % n;
        }
    }
}

/// Uniform f64 in [0, 1) with 53 random bits.
pub(crate) fn unit_f64(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniformly random permutation of `0..n` (Fisher–Yates with [`below`]).
pub(crate) fn permutation(rng: &mut impl RngCore, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Stream tags (any distinct constants).
pub(crate) mod tag {
    pub const SLIDE_CYCLE: u64 = 0x51_1DE;
    pub const CLASS_CYCLE: u64 = 0xC1A55;
    pub const CLASS_SLIDE_CYCLE: u64 = 0xC1A5_551D;
    pub const COORD: u64 = 0xC00D;
    pub const AUGMENT: u64 = 0xA06;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = rng_for(1, 2, &[3]);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[below(&mut r, 7) as usize] += 1;
        }
        for s in seen {
            assert!((800..1200).contains(&s), "{seen:?}");
        }
    }

    #[test]
    fn permutation_is_permutation_and_keyed() {
        let p = permutation(&mut rng_for(5, 1, &[0]), 50);
        let mut q = p.clone();
        q.sort_unstable();
        assert_eq!(q, (0..50).collect::<Vec<_>>());
        assert_eq!(p, permutation(&mut rng_for(5, 1, &[0]), 50));
        assert_ne!(p, permutation(&mut rng_for(5, 1, &[1]), 50));
        assert_ne!(p, permutation(&mut rng_for(6, 1, &[0]), 50));
    }

    #[test]
    fn unit_in_range() {
        let mut r = rng_for(0, 0, &[]);
        for _ in 0..1000 {
            let u = unit_f64(&mut r);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
