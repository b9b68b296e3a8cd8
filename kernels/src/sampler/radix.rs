//! Exact quantiles of `|x0|` by radix select: the algorithm of the `vc_sampler_predict` /
//! `vc_sampler_radix_hist` / `vc_sampler_select` kernels, written over slices.
//!
//! Dynamic thresholding needs, per sample, the two order statistics around `p (n - 1)` of
//! `|x0|` (numpy's linear interpolation). Sorting per sample on the GPU would cost far more
//! than the step itself; a radix select finds both exactly in three counting passes over the
//! data. For a non-negative float, the IEEE bit pattern read as a `u32` sorts exactly like the
//! value (the sign bit is clear, then exponent, then mantissa), so `|x|` becomes the key
//! `x.to_bits() & 0x7fff_ffff` and the select runs on integers. Pass `k` counts, among the keys
//! whose higher bits equal the prefix found so far, how many have each value of the next digit
//! (11, 11, then 10 bits); a scan of that histogram fixes the digit holding the target rank and
//! the rank within it. After three passes the prefix *is* the key of the order statistic.
//! Both targets (the floor and the ceil rank) run through the same passes; while their
//! prefixes agree they share one histogram, and a pass gives the upper target its own only once
//! they differ. NaN keys sort above infinity, as `f32::total_cmp` sorts them, so even a
//! non-finite sample gets the order statistic a sort would give.

/// Bits of the key each pass resolves, most significant first.
pub(crate) const WIDTH: [u32; 3] = [11, 11, 10];
/// Right shift that brings each pass's digit to the bottom.
pub(crate) const SHIFT: [u32; 3] = [21, 10, 0];
/// Bins of the widest digit; every histogram is allotted this many.
pub(crate) const BINS: usize = 1 << 11;

/// The sort key of `|x|`: its bit pattern with the sign cleared.
pub fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// One order statistic being searched for: the key bits found so far, and the rank of the target
/// among the keys that share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) prefix: u32,
    pub(crate) rank: u32,
}

impl Target {
    pub(crate) fn new(rank: u32) -> Self {
        Self { prefix: 0, rank }
    }
}

/// Whether `key` has the bits above pass `pass`'s digit equal to `prefix` (every key does in
/// pass 0, where nothing is known yet).
pub(crate) fn matches(key: u32, pass: usize, prefix: u32) -> bool {
    pass == 0 || key >> SHIFT[pass - 1] == prefix
}

/// The digit of `key` that pass `pass` resolves.
pub(crate) fn digit(key: u32, pass: usize) -> usize {
    ((key >> SHIFT[pass]) & ((1 << WIDTH[pass]) - 1)) as usize
}

/// Histogram of pass `pass`'s digit over the keys that match `prefix`.
pub(crate) fn histogram(keys: &[u32], pass: usize, prefix: u32) -> Vec<u32> {
    let mut counts = vec![0u32; BINS];
    for &key in keys.iter().filter(|&&k| matches(k, pass, prefix)) {
        counts[digit(key, pass)] += 1;
    }
    counts
}

/// Fixes the digit holding `target.rank`: the smallest digit whose inclusive running count
/// exceeds the rank. A rank beyond the counted keys (impossible with consistent counts) takes
/// digit 0 and keeps its rank, exactly as the kernel's fallback does.
pub(crate) fn select_digit(counts: &[u32], width: u32, target: Target) -> Target {
    let mut below = 0u64;
    for (d, &count) in counts.iter().take(1 << width).enumerate() {
        if u64::from(target.rank) < below + u64::from(count) {
            return Target {
                prefix: (target.prefix << width) | d as u32,
                rank: target.rank - below as u32,
            };
        }
        below += u64::from(count);
    }
    Target {
        prefix: target.prefix << width,
        rank: target.rank,
    }
}

/// The keys of rank `lo` and `hi` (0-based, ascending) among `keys`, both found in the same
/// three passes. Ranks must be below `keys.len()`.
pub(crate) fn order_statistics(keys: &[u32], lo: u32, hi: u32) -> (u32, u32) {
    let (mut lo, mut hi) = (Target::new(lo), Target::new(hi));
    for (pass, &width) in WIDTH.iter().enumerate() {
        let split = pass > 0 && lo.prefix != hi.prefix;
        let lo_counts = histogram(keys, pass, lo.prefix);
        let hi_counts = if split {
            histogram(keys, pass, hi.prefix)
        } else {
            lo_counts.clone()
        };
        lo = select_digit(&lo_counts, width, lo);
        hi = select_digit(&hi_counts, width, hi);
    }
    (lo.prefix, hi.prefix)
}

/// Where the `p`-quantile of `n` sorted values lies: the floor and ceil ranks and the fraction
/// between them, computed exactly as `vidcascade_diffusion::threshold` does (in f64).
pub(crate) fn quantile_position(p: f64, n: usize) -> (u32, u32, f64) {
    let position = p * (n - 1) as f64;
    let lo = position.floor();
    let hi = position.ceil();
    (lo as u32, hi as u32, position - lo)
}

/// The clamp limit and the factor that dynamic thresholding applies to `x0`, from the two order
/// statistics: `s = max(1, lo + (hi - lo) frac)`; `s <= 1` clamps to [-1, 1] and keeps the
/// scale (`x * 1` is exact), else clamp to `[-s, s]` then multiply by `1 / s` (which is what
/// candle's `tensor / s` does on f32).
pub(crate) fn threshold_limits(lo_key: u32, hi_key: u32, frac: f64) -> (f32, f32) {
    let lo = f64::from(f32::from_bits(lo_key));
    let hi = f64::from(f32::from_bits(hi_key));
    let s = (lo + (hi - lo) * frac).max(1.0);
    if s <= 1.0 {
        (1.0, 1.0)
    } else {
        (s as f32, (1.0 / s) as f32)
    }
}

/// The `p`-quantile of `|values|` (linear interpolation between order statistics, like numpy),
/// found by the radix select. `values` must be non-empty and `p` in `[0, 1]`.
pub fn radix_quantile(values: &[f32], p: f64) -> f64 {
    let keys: Vec<u32> = values.iter().map(|&v| magnitude_key(v)).collect();
    let (lo, hi, frac) = quantile_position(p, keys.len());
    let (lo, hi) = order_statistics(&keys, lo, hi);
    let (lo, hi) = (f64::from(f32::from_bits(lo)), f64::from(f32::from_bits(hi)));
    lo + (hi - lo) * frac
}

/// The dynamic-thresholding scale `max(1, quantile(|values|, p))` by radix select: the value
/// `vidcascade_diffusion::threshold::threshold_scale` computes by sorting.
pub fn radix_threshold_scale(values: &[f32], p: f64) -> f64 {
    if values.is_empty() {
        return 1.0;
    }
    radix_quantile(values, p).max(1.0)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// numpy's quantile by sorting: the definition the radix select must reproduce.
    fn sorted_quantile(values: &[f32], p: f64) -> f64 {
        let mut m: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        m.sort_by(f32::total_cmp);
        let position = p * (m.len() - 1) as f64;
        let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
        let frac = position - lo as f64;
        f64::from(m[lo]) + (f64::from(m[hi]) - f64::from(m[lo])) * frac
    }

    /// Values of very different kinds: normal-ish, large, tiny, few distinct (ties), and any
    /// finite-or-not bit pattern below the largest.
    fn random_values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        let kind = rng.random_range(0..5);
        (0..n)
            .map(|_| {
                let u = rng.random::<f64>() as f32 * 2.0 - 1.0;
                match kind {
                    0 => u,
                    1 => u * 40.0,
                    2 => u * 1e-30,
                    3 => (rng.random_range(0..4) as f32 - 1.5) * 0.75,
                    _ => f32::from_bits(rng.random::<u32>() & 0xff7f_ffff),
                }
            })
            .collect()
    }

    fn assert_same(values: &[f32], p: f64) {
        let (radix, sorted) = (radix_quantile(values, p), sorted_quantile(values, p));
        assert!(
            radix == sorted || (radix.is_nan() && sorted.is_nan()),
            "p {p}, n {}: radix {radix} sorted {sorted}, values {:?}",
            values.len(),
            &values[..values.len().min(16)]
        );
    }

    #[test]
    fn radix_quantile_equals_the_sorted_quantile_on_random_data() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..400 {
            let n = match rng.random_range(0..3) {
                0 => rng.random_range(1..=8),
                1 => rng.random_range(1..=300),
                _ => rng.random_range(1..=5000),
            };
            let values = random_values(&mut rng, n);
            for p in [rng.random::<f64>(), 0.995, 1.0, 0.5, 1e-9] {
                assert_same(&values, p);
            }
        }
    }

    #[test]
    fn radix_quantile_handles_the_edge_cases() {
        assert_same(&[3.5], 0.995);
        assert_same(&[-3.5], 1.0);
        assert_same(&[0.0; 17], 0.995);
        assert_same(&[-0.0, 0.0, -0.0], 0.5);
        assert_same(&[2.0; 1000], 0.995);
        assert_same(&[1.0, 1.0, 1.0, 5.0], 0.9);
        assert_same(&[f32::MIN_POSITIVE / 4.0, 1e-40, 0.0], 0.7);
        assert_same(&[f32::MAX, -f32::MAX, 1.0], 0.6);
        // Non-finite keys still sort like total_cmp on magnitudes.
        assert_same(&[f32::INFINITY, 1.0, f32::NAN, -2.0], 0.5);
        assert_same(&[f32::INFINITY, 1.0, f32::NAN, -2.0], 1.0);
        // Two targets whose prefixes split in the first pass and again in the last.
        assert_same(&[0.5, 100.0], 0.5);
        assert_same(&[1.0, f32::from_bits(1.0f32.to_bits() + 1)], 0.3);
    }

    #[test]
    fn the_two_targets_split_and_rejoin_histograms_correctly() {
        // Every rank of a set with many ties and near-equal keys.
        let base = 1.0f32.to_bits();
        let values: Vec<f32> = (0..64u32)
            .map(|i| f32::from_bits(base + (i % 5) * (1 + (i % 3) * 1024)))
            .collect();
        let keys: Vec<u32> = values.iter().map(|&v| magnitude_key(v)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        for lo in 0..64u32 {
            for hi in [lo, (lo + 1).min(63), 63] {
                assert_eq!(
                    order_statistics(&keys, lo, hi),
                    (sorted[lo as usize], sorted[hi as usize]),
                    "ranks {lo} {hi}"
                );
            }
        }
    }

    #[test]
    fn threshold_limits_follow_clamp_and_scale() {
        let key = |x: f32| magnitude_key(x);
        assert_eq!(threshold_limits(key(0.5), key(0.9), 0.5), (1.0, 1.0));
        assert_eq!(threshold_limits(key(4.0), key(4.0), 0.0), (4.0, 0.25));
        assert_eq!(
            threshold_limits(key(2.0), key(4.0), 0.5),
            (3.0, (1.0f64 / 3.0) as f32)
        );
        assert_eq!(radix_threshold_scale(&[], 0.9), 1.0);
        assert_eq!(radix_threshold_scale(&[0.25, -0.5], 1.0), 1.0);
        assert_eq!(radix_threshold_scale(&[0.25, -5.0], 1.0), 5.0);
    }
}
