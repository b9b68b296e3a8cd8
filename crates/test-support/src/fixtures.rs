//! The tiny random-weight cascade: a model repository with every kind of stage, small enough to
//! write and run in milliseconds, so tests exercise every code path of a real cascade without a
//! download.

use std::path::{Path, PathBuf};

use vidcascade_models::repository::scaffold::{Scaffold, ScaffoldStage, WeightInit};
use vidcascade_models::repository::{StageDefaults, StageKind, StageManifest, VideoShape};
use vidcascade_models::text_encoder::T5Config;
use vidcascade_models::unet::{Prediction, TemporalMixing, VideoUNetConfig};

/// A tiny 4-stage cascade (encoder -> base 4x8x8 -> TSR 8x8x8 -> SSR 8x16x16) for tests and
/// benchmarks: every code path of a real cascade, in milliseconds. Write it with
/// [`Scaffold::write`], or use [`tiny_model`].
pub fn tiny_scaffold() -> Scaffold {
    let words = "a red green blue yellow white magenta cyan black gray circle square triangle moving left right up down on background";
    Scaffold {
        name: "tiny".into(),
        description: "random-weight cascade for tests".into(),
        encoder: tiny_encoder(),
        vocabulary: words.split(' ').map(String::from).collect(),
        stages: vec![tiny_base_stage(), tiny_tsr_stage(), tiny_ssr_stage()],
    }
}

/// The tiny cascade's text encoder: 2 layers of width 16 over a 32-token vocabulary.
fn tiny_encoder() -> T5Config {
    T5Config {
        vocab_size: 32,
        d_model: 16,
        d_kv: 8,
        d_ff: 32,
        num_layers: 2,
        num_heads: 2,
        relative_attention_num_buckets: 8,
        relative_attention_max_distance: 16,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
        max_tokens: 16,
    }
}

/// The tiny 2-level U-Net: a base stage (`cond_channels` 0, with the frame embedding, coordinate
/// maps and layout map, predicting `v`) or a super-resolution one (predicting the residual).
fn tiny_unet(temporal: TemporalMixing, cond_channels: usize) -> VideoUNetConfig {
    VideoUNetConfig {
        in_channels: 3,
        cond_channels,
        out_channels: 3,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_levels: vec![false, true],
        num_heads: 2,
        temporal,
        temporal_kernel: 3,
        max_frames: 8,
        context_dim: 16,
        norm_groups: 4,
        frame_embedding: cond_channels == 0,
        position_channels: cond_channels == 0,
        layout_channels: if cond_channels == 0 { 4 } else { 0 },
        layout_grid: 8,
        layout_storyboard_knots: if cond_channels == 0 { 4 } else { 0 },
        context_frames: true,
        prediction: if cond_channels == 0 {
            Prediction::V
        } else {
            Prediction::X0Residual
        },
    }
}

/// A square video shape.
fn square(frames: usize, side: usize, fps: f32) -> VideoShape {
    VideoShape {
        frames,
        height: side,
        width: side,
        fps,
    }
}

/// A stage's manifest, stored under its name, with its sampling defaults.
fn tiny_manifest(
    name: &str,
    kind: StageKind,
    input: Option<VideoShape>,
    output: VideoShape,
    steps: usize,
    guidance: f64,
    aug: f64,
) -> StageManifest {
    StageManifest {
        name: name.into(),
        kind,
        path: name.into(),
        input,
        output: Some(output),
        defaults: StageDefaults {
            steps,
            guidance,
            noise_augmentation: aug,
            ..StageDefaults::default()
        },
        // The tiny U-Nets take context frames.
        max_context_frames: output.frames,
    }
}

/// The base stage: 4 frames of 8x8 at 2 fps, temporal attention.
fn tiny_base_stage() -> ScaffoldStage {
    ScaffoldStage {
        manifest: tiny_manifest(
            "base",
            StageKind::Base,
            None,
            square(4, 8, 2.0),
            4,
            3.0,
            0.0,
        ),
        unet: tiny_unet(TemporalMixing::Attention, 0),
    }
}

/// The temporal super-resolution stage: 4 to 8 frames of 8x8, 2 to 4 fps.
fn tiny_tsr_stage() -> ScaffoldStage {
    ScaffoldStage {
        manifest: tiny_manifest(
            "tsr",
            StageKind::Tsr,
            Some(square(4, 8, 2.0)),
            square(8, 8, 4.0),
            3,
            1.0,
            0.1,
        ),
        unet: tiny_unet(TemporalMixing::Conv, 3),
    }
}

/// The spatial super-resolution stage: 8 frames from 8x8 to 16x16.
fn tiny_ssr_stage() -> ScaffoldStage {
    ScaffoldStage {
        manifest: tiny_manifest(
            "ssr",
            StageKind::Ssr,
            Some(square(8, 8, 4.0)),
            square(8, 16, 4.0),
            3,
            1.0,
            0.1,
        ),
        unet: tiny_unet(TemporalMixing::Conv, 3),
    }
}

/// Writes [`tiny_scaffold`] with seeded random weights (`WeightInit::Random { seed: 11 }`, so
/// every run and machine gets the same network) into `dir/tiny`, and returns that repository
/// root, ready for `ModelRepository::open`.
pub fn tiny_model(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("tiny");
    tiny_scaffold().write(&root, WeightInit::Random { seed: 11 })?;
    Ok(root)
}
