//! A small seeded PRNG (SplitMix64), written here so that a seed means the
//! same sequence on every machine and every version of every dependency.

/// SplitMix64: one 64-bit word of state, good enough statistical quality
/// for choosing test inputs, and trivially reproducible.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`; `stream` separates independent uses of one
    /// seed (layers, operations, data) so that changing one does not shift
    /// the others.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng {
            state: seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Multiply-shift: unbiased enough for test input selection.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index chosen with the given weights (not all zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// Deterministic bytes for a write: `len` bytes derived from `seed`, so an
/// operation carries only the seed and the length.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed, 0x64617461);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let w = r.next_u64().to_le_bytes();
        let n = (len - v.len()).min(8);
        v.extend_from_slice(&w[..n]);
    }
    v
}

/// FNV-1a over `bytes`: a content fingerprint (not cryptographic; both
/// sides are ours).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_stable() {
        // Pinned values: if these change, every recorded seed changes.
        let mut r = Rng::new(1, 0);
        let v: Vec<u64> = (0..3).map(|_| r.below(1000)).collect();
        assert_eq!(v, vec![745, 971, 444]);
        assert_eq!(data(7, 5), vec![67, 75, 59, 83, 29]);
        assert_ne!(data(7, 5), data(8, 5));
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn weighted_respects_zero_weights() {
        let mut r = Rng::new(3, 0);
        for _ in 0..1000 {
            assert_ne!(r.weighted(&[1, 0, 1]), 1);
        }
    }
}
