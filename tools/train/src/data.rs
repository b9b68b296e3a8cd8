//! Training batches for one stage of the cascade, drawn from the shapes world.
//!
//! Each example is one scene with a random placement, rendered at the stage's output shape (the
//! target) and, for SR stages, at its input shape (the conditioning the previous stage would
//! produce). Captions use the long form most of the time and the short form (no background)
//! otherwise; with probability `text_dropout` the caption is replaced by the empty prompt, which is
//! what the unconditional branch of classifier-free guidance sees at sampling time.

use candle_core::{Device, Tensor};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use vidcascade_models::repository::VideoShape;
use vidcascade_shapes::render::{Placement, render_chw};
use vidcascade_shapes::world::{Scene, training_scenes};

/// A training window of the output video: super-resolution stages are local in time (temporal
/// convolutions) and mostly local in space, so they train on random sub-clips and crops, several
/// times cheaper than whole videos, and run on whole videos at inference (as Imagen's SR models do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Crop {
    /// Output frames per example.
    pub frames: usize,
    /// Output side (height = width) per example.
    pub side: usize,
}

/// One batch.
#[derive(Debug)]
pub struct Batch {
    /// Targets `[B, 3, F, H, W]` in [-1, 1].
    pub videos: Tensor,
    /// SR stages: conditioning `[B, 3, F_in, H_in, W_in]` in [-1, 1].
    pub low_res: Option<Tensor>,
    /// Captions, `""` for dropped text.
    pub captions: Vec<String>,
}

/// Draws batches for a stage.
#[derive(Debug)]
pub struct BatchSampler {
    scenes: Vec<Scene>,
    output: VideoShape,
    input: Option<VideoShape>,
    text_dropout: f64,
    short_caption_rate: f64,
    crop: Option<Crop>,
}

impl BatchSampler {
    /// A sampler over the training scenes for a stage producing `output` from `input`.
    pub fn new(output: VideoShape, input: Option<VideoShape>, text_dropout: f64) -> Self {
        Self {
            scenes: training_scenes(),
            output,
            input,
            text_dropout,
            short_caption_rate: 0.25,
            crop: None,
        }
    }

    /// Trains on random windows of the output (and the matching windows of the input).
    pub fn with_crop(mut self, crop: Crop) -> Self {
        self.crop = Some(crop);
        self
    }

    /// The shape of one target example.
    pub fn example_shape(&self) -> VideoShape {
        match self.crop {
            Some(c) => VideoShape {
                frames: c.frames.min(self.output.frames),
                height: c.side.min(self.output.height),
                width: c.side.min(self.output.width),
                fps: self.output.fps,
            },
            None => self.output,
        }
    }

    /// A batch of `size` examples.
    pub fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        size: usize,
        device: &Device,
    ) -> candle_core::Result<Batch> {
        let o = self.output;
        let mut videos = Vec::with_capacity(size);
        let mut low = Vec::with_capacity(size);
        let mut captions = Vec::with_capacity(size);
        for _ in 0..size {
            let Some(scene) = self.scenes.choose(rng).copied() else {
                candle_core::bail!("no training scenes");
            };
            let placement = Placement::sample(rng);
            let data = render_chw(&scene, &placement, o.frames, o.height, o.width);
            let video = Tensor::from_vec(data, (3, o.frames, o.height, o.width), device)?;
            let e = self.example_shape();
            // Window offsets, multiples of the up-sampling factors so both windows line up.
            let (tf, sf) = match self.input {
                Some(i) => (o.frames / i.frames, o.height / i.height),
                None => (1, 1),
            };
            let f0 = tf * rng.random_range(0..=(o.frames - e.frames) / tf);
            let y0 = sf * rng.random_range(0..=(o.height - e.height) / sf);
            let x0 = sf * rng.random_range(0..=(o.width - e.width) / sf);
            videos.push(
                video
                    .narrow(1, f0, e.frames)?
                    .narrow(2, y0, e.height)?
                    .narrow(3, x0, e.width)?,
            );
            if let Some(i) = self.input {
                let data = render_chw(&scene, &placement, i.frames, i.height, i.width);
                let low_video = Tensor::from_vec(data, (3, i.frames, i.height, i.width), device)?;
                low.push(
                    low_video
                        .narrow(1, f0 / tf, e.frames / tf)?
                        .narrow(2, y0 / sf, e.height / sf)?
                        .narrow(3, x0 / sf, e.width / sf)?,
                );
            }
            let caption = if rng.random_bool(self.text_dropout) {
                String::new()
            } else if rng.random_bool(self.short_caption_rate) {
                scene.short_caption()
            } else {
                scene.caption()
            };
            captions.push(caption);
        }
        Ok(Batch {
            videos: Tensor::stack(&videos, 0)?,
            low_res: if low.is_empty() {
                None
            } else {
                Some(Tensor::stack(&low, 0)?)
            },
            captions,
        })
    }
}
