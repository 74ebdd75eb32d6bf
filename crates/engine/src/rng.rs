//! The engine's only source of randomness: a seeded SplitMix64.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fully determined by its seed.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        let folded = seed
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
            .fold(0u64, |acc, x| acc.rotate_left(17) ^ x);
        Self(folded)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
