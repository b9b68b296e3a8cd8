//! Seeded Gaussian noise that is the same on every machine and every run.
//!
//! ChaCha8 is a portable, specified stream cipher RNG (unlike `StdRng`, whose algorithm may change
//! between `rand` releases), so a seed recorded in a request reproduces its video bit for bit.
//! Each sample of a request draws from its own stream of the seed, so adding samples to a batch
//! never changes the noise of the others.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A seeded source of standard normal noise.
#[derive(Debug, Clone)]
pub struct GaussianNoise {
    rng: ChaCha8Rng,
}

impl GaussianNoise {
    /// Noise for `seed`, stream `stream` (use the sample's index in its request).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng }
    }

    /// Where the stream is: the ChaCha word position, recorded in a resumable checkpoint.
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves the stream to `position` (from [`Self::position`] of the same seed and stream), so
    /// a resumed sample draws exactly the noise the interrupted one would have drawn next.
    pub fn seek(&mut self, position: u128) {
        self.rng.set_word_pos(position);
    }

    /// `count` standard normal values.
    pub fn values(&mut self, count: usize) -> Vec<f32> {
        (0..count)
            .map(|_| self.rng.sample::<f32, _>(StandardNormal))
            .collect()
    }

    /// A tensor of standard normal values.
    pub fn tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let count = shape.iter().product();
        Tensor::from_vec(self.values(count), shape, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_other_stream_other_noise() {
        let a = GaussianNoise::new(42, 0).values(64);
        let b = GaussianNoise::new(42, 0).values(64);
        let c = GaussianNoise::new(42, 1).values(64);
        let d = GaussianNoise::new(43, 0).values(64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn a_seeked_stream_continues_where_the_first_left_off() {
        let mut first = GaussianNoise::new(42, 0);
        first.values(1000);
        let position = first.position();
        let expected = first.values(64);
        let mut resumed = GaussianNoise::new(42, 0);
        resumed.seek(position);
        assert_eq!(resumed.values(64), expected);
    }

    #[test]
    fn values_look_standard_normal() {
        let v = GaussianNoise::new(7, 0).values(20_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
