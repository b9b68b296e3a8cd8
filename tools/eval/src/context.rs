//! Image-to-video and continuation, run stage by stage on a cascade's engines with known
//! frames, and measured.
//!
//! Each stage gets its known frames at its own resolution and frame rate: for image-to-video the
//! image (box-downsampled) as frame 0 of every stage; for a continuation the previous clip's
//! last frames from the *same* stage's output, `k` base frames and the frames between them at
//! the higher frame rates (`r (k - 1) + 1` frames at `r` times the base's rate). The stages run
//! exactly as in a generation (the plan's settings and seeds, RGB8 between stages), only with
//! `known` set.

use candle_core::{Device, Tensor};
use vidcascade_engine::video::{downsample_space, video_from_tensor, video_to_tensor};
use vidcascade_engine::{EmbeddedCascade, KnownFrames, StageJob};
use vidcascade_models::TextEncoder;
use vidcascade_spec::{GenerateRequest, Video};

/// Runs every diffusion stage of `cascade` for `prompt` at `seed`, stage `i` continuing from
/// `known[i]` (`None`: nothing given); returns each stage's output video.
pub fn run_with_known(
    cascade: &EmbeddedCascade,
    encoder: &TextEncoder,
    prompt: &str,
    seed: u64,
    known: &[Option<KnownFrames>],
) -> anyhow::Result<Vec<Video>> {
    let request = GenerateRequest::new(prompt).with_seed(seed);
    let plan = vidcascade_pipeline::plan(&request, cascade.manifest(), 0)?;
    let mut embeddings = encoder.encode(&[prompt, ""])?;
    let unconditional = embeddings
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no embedding"))?;
    let text = embeddings
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no embedding"))?;
    let mut outputs: Vec<Video> = Vec::new();
    for (index, (engine, stage)) in cascade.engines().iter().zip(&plan.stages).enumerate() {
        let low_res = outputs
            .last()
            .map(|v| video_to_tensor(v, &Device::Cpu))
            .transpose()?;
        let job = StageJob {
            text: text.clone(),
            unconditional: unconditional.clone(),
            low_res,
            known: known.get(index).cloned().flatten(),
            seed: plan.stage_seed(0, index),
            settings: stage.settings,
            preview_every: 0,
            deadline: None,
            checkpoint_every: 0,
            resume: None,
        };
        let video = engine.submit(job)?.blocking_wait(|_, _| {})?;
        let fps = stage.manifest.output.map_or(0.0, |s| s.fps);
        outputs.push(video_from_tensor(&video, fps)?);
    }
    Ok(outputs)
}

/// Every stage's known frames for image-to-video: `image` (RGB8 at the final resolution)
/// box-downsampled to each stage's size as its frame 0.
pub fn image_context(
    cascade: &EmbeddedCascade,
    image: &Video,
) -> anyhow::Result<Vec<Option<KnownFrames>>> {
    let picture = video_to_tensor(image, &Device::Cpu)?;
    cascade
        .manifest()
        .diffusion_stages()
        .map(|stage| {
            let out = stage
                .output
                .ok_or_else(|| anyhow::anyhow!("stage {} has no output", stage.name))?;
            let factor = image.height / out.height;
            let frame = if factor > 1 {
                downsample_space(&picture, factor)?
            } else {
                picture.clone()
            };
            let rest = Tensor::zeros(
                (3, out.frames - 1, out.height, out.width),
                frame.dtype(),
                frame.device(),
            )?;
            let mut given = vec![false; out.frames];
            given[0] = true;
            Ok(Some(KnownFrames {
                video: Tensor::cat(&[frame, rest], 1)?,
                given,
            }))
        })
        .collect()
}

/// Frames of a stage at `ratio` times the base's frame rate that a `k`-frame base overlap covers.
pub fn overlap_frames(k: usize, ratio: usize) -> usize {
    ratio * (k - 1) + 1
}

/// Every stage's known frames for continuing `previous` (each stage's output of the previous
/// clip) with `k` base frames of overlap.
pub fn continuation_context(
    previous: &[Video],
    k: usize,
) -> anyhow::Result<Vec<Option<KnownFrames>>> {
    let base_frames = previous
        .first()
        .map(|v| v.frames.len())
        .ok_or_else(|| anyhow::anyhow!("no previous clip"))?;
    previous
        .iter()
        .map(|video| {
            let frames = video.frames.len();
            let ratio = frames / base_frames;
            let start = ratio * (base_frames - k);
            let overlap = overlap_frames(k, ratio);
            let tail = video_to_tensor(video, &Device::Cpu)?.narrow(1, start, overlap)?;
            let rest = Tensor::zeros(
                (3, frames - overlap, video.height, video.width),
                tail.dtype(),
                tail.device(),
            )?;
            Ok(Some(KnownFrames {
                video: Tensor::cat(&[tail, rest], 1)?,
                given: (0..frames).map(|f| f < overlap).collect(),
            }))
        })
        .collect()
}
