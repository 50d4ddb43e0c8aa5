//! Reproducible pseudo-random values: the probe check and the benchmark each draw their own input
//! from it.

/// `n` reproducible pseudo-random values in [0, 1) from the xorshift64 state `seed` (advanced).
pub(crate) fn unit_noise(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}
