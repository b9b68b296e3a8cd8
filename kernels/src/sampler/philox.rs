//! Philox4x32-10 (Salmon et al. 2011, "Parallel Random Numbers: As Easy as 1, 2, 3") and the
//! Box-Muller map the fused sampler step uses for its ancestral noise.
//!
//! A counter-based generator is a pure function `(counter, key) -> 4 x u32`, so every GPU
//! thread computes the noise of its own four elements with no state to carry between steps or
//! threads: the noise of a sample depends only on its seed, stream, step and element index,
//! never on the batch it runs in or the launch configuration. This file is bit-identical to
//! `philox4x32_10` and `box_muller` in `kernels/cuda/sampler_step.cu` (the known-answer tests
//! below pin the generator; the normals agree up to the last bits of `logf` / `sinf` / `cosf`).

/// Multipliers of the two Philox S-boxes.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// Weyl-sequence key increments (golden ratio and sqrt(3) - 1).
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox round: two 32 x 32 -> 64-bit products and a permutation.
fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let p0 = u64::from(M0) * u64::from(ctr[0]);
    let p1 = u64::from(M1) * u64::from(ctr[2]);
    let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
    let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// Philox4x32 with 10 rounds: the key is bumped before every round but the first.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut ctr = counter;
    let mut key = key;
    for r in 0..10 {
        if r > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        ctr = round(ctr, key);
    }
    ctr
}

/// Two standard normals from two uniform words (Box-Muller).
///
/// `u` keeps the top 23 bits of `a` plus one half, so it is exact in f32 and lies in
/// `[2^-24, 1 - 2^-24]`: `ln(u)` is finite and the radius at most `sqrt(2 ln 2^24) ~ 5.8`. The
/// angle keeps 24 bits of `b`, also exact. Every step is written as one IEEE operation so the
/// CUDA twin (which uses `__fmul_rn` & co. to stop FMA contraction) rounds the same way.
pub fn box_muller(a: u32, b: u32) -> (f32, f32) {
    const TWO_POW_M23: f32 = 1.0 / 8_388_608.0;
    const TWO_POW_M24: f32 = 1.0 / 16_777_216.0;
    const TWO_PI: f32 = std::f32::consts::TAU;
    let u = ((a >> 9) as f32 + 0.5) * TWO_POW_M23;
    let theta = ((b >> 8) as f32 * TWO_POW_M24) * TWO_PI;
    let radius = (-2.0 * u.ln()).sqrt();
    let (sin, cos) = theta.sin_cos();
    (radius * cos, radius * sin)
}

/// The Philox key and counter words of one sample's noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseKey {
    /// The request's seed, split into the two key words.
    pub seed: u64,
    /// The sample's stream (its index in the request).
    pub stream: u64,
    /// The 1-based denoising step, so every step draws fresh noise.
    pub step: u32,
}

impl NoiseKey {
    /// The four normals of elements `4 group .. 4 group + 4`: counter
    /// `(group, step, stream_lo, stream_hi)`, key `(seed_lo, seed_hi)`.
    pub fn normals4(&self, group: u32) -> [f32; 4] {
        let counter = [
            group,
            self.step,
            self.stream as u32,
            (self.stream >> 32) as u32,
        ];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let r = philox4x32_10(counter, key);
        let (n0, n1) = box_muller(r[0], r[1]);
        let (n2, n3) = box_muller(r[2], r[3]);
        [n0, n1, n2, n3]
    }

    /// The first `count` normals of this sample and step, element `i` from group `i / 4`,
    /// lane `i % 4` (what the fused step adds, before scaling by the posterior std).
    pub fn normals(&self, count: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(count + 3);
        for group in 0..count.div_ceil(4) {
            out.extend_from_slice(&self.normals4(group as u32));
        }
        out.truncate(count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three `philox4x32 10` known answers of the Random123 distribution's
    /// `tests/kat_vectors`, as quoted (cut and pasted from that file, per its comment) in
    /// DEShawResearch/Random123-Boost `libs/random/test/test_philox.cpp`: counter, key, output.
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0x0000_0000, 0x0000_0000, 0x0000_0000, 0x0000_0000],
            [0x0000_0000, 0x0000_0000],
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        ),
        (
            [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
            [0xffff_ffff, 0xffff_ffff],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];

    #[test]
    fn philox4x32_10_matches_the_random123_known_answers() {
        for (counter, key, expected) in KAT {
            assert_eq!(
                philox4x32_10(counter, key),
                expected,
                "counter {counter:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    fn box_muller_stays_finite_at_the_extreme_words() {
        for a in [0, 1, 511, 512, u32::MAX - 1, u32::MAX] {
            for b in [0, u32::MAX] {
                let (x, y) = box_muller(a, b);
                assert!(x.is_finite() && y.is_finite(), "{a} {b}: {x} {y}");
                assert!(x.abs() < 5.8 && y.abs() < 5.8, "{a} {b}: {x} {y}");
            }
        }
    }

    #[test]
    fn normals_look_standard_and_depend_on_seed_stream_and_step() {
        let key = NoiseKey {
            seed: 42,
            stream: 3,
            step: 7,
        };
        let v = key.normals(40_001);
        assert_eq!(v.len(), 40_001);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        assert_eq!(v, key.normals(40_001), "a pure function of its key");
        assert_eq!(&v[..5], &key.normals(5)[..], "prefix-stable");
        for other in [
            NoiseKey { seed: 43, ..key },
            NoiseKey { stream: 4, ..key },
            NoiseKey {
                stream: 3 + (1 << 32),
                ..key
            },
            NoiseKey { step: 8, ..key },
        ] {
            assert_ne!(other.normals(64), key.normals(64), "{other:?}");
        }
    }
}
