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
use vidcascade_shapes::render::{Continuation, Placement, Trajectory, render_trajectory_chw};
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
    /// Which target frames are given as context `[B, F]` (1) or not (0); all 0 unless the sampler
    /// draws context.
    pub given: Tensor,
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
    context_rate: f64,
    story_rate: f64,
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
            context_rate: 0.0,
            story_rate: 0.0,
        }
    }

    /// Gives known frames to a share `rate` of the examples: half of them the first frame
    /// (image-to-video), half the first `k` frames, `k` from 2 to half the clip (a continuation);
    /// half of those examples continue from an anchor anywhere in the frame, possibly turning
    /// there (see [`Continuation`]), the rest are the world's own clips.
    pub fn with_context(mut self, rate: f64) -> Self {
        self.context_rate = rate;
        self
    }

    /// Makes a share `rate` of the continuations (two or more frames given) a story's next
    /// clip: the given frames end a world clip and the shape goes on the same way
    /// ([`Continuation::following`]), the case a same-prompt story meets at every seam.
    pub fn with_story_continuations(mut self, rate: f64) -> Self {
        self.story_rate = rate;
        self
    }

    /// How many leading frames of a `frames`-frame example are given (0 for none).
    fn draw_given(&self, rng: &mut ChaCha8Rng, frames: usize) -> usize {
        if frames < 2 || !rng.random_bool(self.context_rate) {
            0
        } else if rng.random_bool(0.5) {
            1
        } else {
            rng.random_range(2..=(frames / 2).max(2))
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

    /// The shape's path in an example whose frames before `known_end` (`known` of them in the
    /// window) are given.
    fn trajectory(
        &self,
        rng: &mut ChaCha8Rng,
        scene: &Scene,
        known_end: usize,
        known: usize,
    ) -> Trajectory {
        let frames = self.output.frames;
        // Drawn only when asked for, so recipes without story continuations keep their batches.
        if known >= 2 && self.story_rate > 0.0 && rng.random_bool(self.story_rate) {
            let placed = Placement::sample(rng);
            Trajectory::Continued(Continuation::following(
                &placed,
                scene,
                known_end - 1,
                frames,
            ))
        } else if known > 0 && rng.random_bool(0.5) {
            Trajectory::Continued(Continuation::sample(rng, known_end - 1, frames))
        } else {
            Trajectory::Placed(Placement::sample(rng))
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
        let mut given = Vec::new();
        for _ in 0..size {
            let Some(scene) = self.scenes.choose(rng).copied() else {
                candle_core::bail!("no training scenes");
            };
            let e = self.example_shape();
            // Window offsets, multiples of the up-sampling factors so both windows line up.
            let (tf, sf) = match self.input {
                Some(i) => (o.frames / i.frames, o.height / i.height),
                None => (1, 1),
            };
            let f0 = tf * rng.random_range(0..=(o.frames - e.frames) / tf);
            let y0 = sf * rng.random_range(0..=(o.height - e.height) / sf);
            let x0 = sf * rng.random_range(0..=(o.width - e.width) / sf);
            let known = self.draw_given(rng, e.frames);
            let trajectory = self.trajectory(rng, &scene, f0 + known, known);
            given.extend((0..e.frames).map(|f| f32::from(u8::from(f < known))));
            let data = render_trajectory_chw(&scene, &trajectory, o.frames, o.height, o.width);
            let video = Tensor::from_vec(data, (3, o.frames, o.height, o.width), device)?;
            videos.push(
                video
                    .narrow(1, f0, e.frames)?
                    .narrow(2, y0, e.height)?
                    .narrow(3, x0, e.width)?,
            );
            if let Some(i) = self.input {
                let data = render_trajectory_chw(&scene, &trajectory, i.frames, i.height, i.width);
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
            given: Tensor::from_vec(given, (size, self.example_shape().frames), device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const SHAPE: VideoShape = VideoShape {
        frames: 8,
        height: 8,
        width: 8,
        fps: 4.0,
    };

    #[test]
    fn story_continuations_follow_a_world_clip_the_scenes_way() {
        let sampler = BatchSampler::new(SHAPE, None, 0.0)
            .with_context(1.0)
            .with_story_continuations(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for scene in training_scenes().iter().take(8) {
            match sampler.trajectory(&mut rng, scene, 3, 3) {
                Trajectory::Continued(c) => assert_eq!(c.previous, scene.motion),
                other => panic!("a story continuation was {other:?}"),
            }
        }
    }

    #[test]
    fn without_story_continuations_the_batches_are_unchanged() -> candle_core::Result<()> {
        let plain = BatchSampler::new(SHAPE, None, 0.1).with_context(1.0);
        let zero = BatchSampler::new(SHAPE, None, 0.1)
            .with_context(1.0)
            .with_story_continuations(0.0);
        let draw = |s: &BatchSampler| -> candle_core::Result<Vec<f32>> {
            let batch = s.sample(&mut ChaCha8Rng::seed_from_u64(3), 16, &Device::Cpu)?;
            batch.videos.flatten_all()?.to_vec1()
        };
        assert_eq!(draw(&plain)?, draw(&zero)?);
        Ok(())
    }
}
