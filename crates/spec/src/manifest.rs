//! `manifest.json`: the stages of a cascade, in order, and how they fit together.
//!
//! ```json
//! {"name": "shapes", "stages": [
//!   {"name": "text-encoder", "kind": "text-encoder", "path": "text-encoder"},
//!   {"name": "base", "kind": "base", "path": "base",
//!    "output": {"frames": 8, "height": 16, "width": 16, "fps": 4},
//!    "defaults": {"steps": 32, "guidance": 4.0}},
//!   {"name": "tsr", "kind": "tsr", "path": "tsr",
//!    "input": {"frames": 8, "height": 16, "width": 16, "fps": 4},
//!    "output": {"frames": 16, "height": 16, "width": 16, "fps": 8},
//!    "defaults": {"steps": 16, "guidance": 1.0, "noise_augmentation": 0.1}}]}
//! ```
//! Stages are data, not code: any number of TSR and SSR stages in any order, as long as each
//! one's input is the previous stage's output.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sampling::{
    SamplerKind, check_guidance, check_noise_augmentation, check_steps, check_threshold_quantile,
};

/// The manifest's file name at a repository root.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Why a manifest could not be read or is not a valid cascade. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not parse as a manifest.
    #[error("{path} is not a valid model manifest: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// The stages do not form a valid cascade.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong and what was expected.
        reason: String,
    },
}

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    /// The frozen text encoder.
    TextEncoder,
    /// The base video model: text to a short, small, low-frame-rate video.
    Base,
    /// Temporal super-resolution: more frames (a higher frame rate), same size.
    Tsr,
    /// Spatial super-resolution: larger frames, same frame count.
    Ssr,
}

impl StageKind {
    /// The name used in manifests and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TextEncoder => "text-encoder",
            Self::Base => "base",
            Self::Tsr => "tsr",
            Self::Ssr => "ssr",
        }
    }
}

/// Frames x height x width at a frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoShape {
    /// Frames in the clip.
    pub frames: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Frame width in pixels.
    pub width: usize,
    /// Frames per second.
    pub fps: f32,
}

impl std::fmt::Display for VideoShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{} @ {} fps",
            self.frames, self.height, self.width, self.fps
        )
    }
}

fn default_steps() -> usize {
    32
}
fn default_guidance() -> f64 {
    1.0
}
fn default_quantile() -> Option<f64> {
    Some(0.995)
}

/// Sampling defaults of a diffusion stage; requests may override them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDefaults {
    /// Denoising steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Classifier-free guidance weight.
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    /// Update rule.
    #[serde(default)]
    pub sampler: SamplerKind,
    /// SR stages: diffusion time in [0, 1] to which the conditioning video is noised.
    #[serde(default)]
    pub noise_augmentation: f64,
    /// Dynamic thresholding quantile; `null` disables it.
    #[serde(default = "default_quantile")]
    pub threshold_quantile: Option<f64>,
}

impl Default for StageDefaults {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            guidance: default_guidance(),
            sampler: SamplerKind::default(),
            noise_augmentation: 0.0,
            threshold_quantile: default_quantile(),
        }
    }
}

/// One stage of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageManifest {
    /// Unique name (`[a-z0-9-]+`), used on the wire and in per-stage overrides.
    pub name: String,
    /// What the stage does.
    pub kind: StageKind,
    /// The stage's folder, relative to the repository root.
    pub path: String,
    /// The video the stage consumes (SR stages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<VideoShape>,
    /// The video the stage produces (all diffusion stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<VideoShape>,
    /// Sampling defaults (diffusion stages).
    #[serde(default)]
    pub defaults: StageDefaults,
    /// Most known leading frames of its output the stage continues from (image-to-video,
    /// stories; its network has `context_frames`); 0, absent in older manifests, when it
    /// cannot. At most the output's frames.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_context_frames: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The whole `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The cascade's name.
    pub name: String,
    /// What it was trained on, for people.
    #[serde(default)]
    pub description: String,
    /// Stages in execution order.
    pub stages: Vec<StageManifest>,
}

fn invalid(path: &Path, reason: String) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// Integer factor `to / from`, if it is one and at least 2.
fn integer_factor(from: usize, to: usize) -> Option<usize> {
    (from > 0 && to.is_multiple_of(from) && to / from >= 2).then(|| to / from)
}

impl Manifest {
    /// Reads and validates `<root>/manifest.json`.
    pub fn load(root: &Path) -> Result<Self, ManifestError> {
        let path = root.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Self = serde_json::from_str(&text).map_err(|source| ManifestError::Json {
            path: path.clone(),
            source,
        })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// Checks the stage chain; `path` (the manifest file) labels every error.
    pub fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        if self.stages.len() < 2 {
            return Err(invalid(
                path,
                format!(
                    "`stages` must list a text-encoder and a base stage at least, found {} stage(s)",
                    self.stages.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut previous: Option<&StageManifest> = None;
        for (index, stage) in self.stages.iter().enumerate() {
            let at = format!("stage {index} (`{}`)", stage.name);
            check_name_and_path(path, &at, stage)?;
            if !names.insert(stage.name.as_str()) {
                return Err(invalid(
                    path,
                    format!("{at}: `name` is used by another stage"),
                ));
            }
            check_kind_at(path, &at, index, stage.kind)?;
            self.check_shapes(path, &at, stage, previous)?;
            if stage.kind != StageKind::TextEncoder {
                check_defaults(path, &at, &stage.defaults)?;
            }
            let frames = stage.output.map_or(0, |o| o.frames);
            if stage.max_context_frames > frames {
                return Err(invalid(
                    path,
                    format!(
                        "{at}: `max_context_frames` {} is above the output's {frames} frames",
                        stage.max_context_frames
                    ),
                ));
            }
            previous = Some(stage);
        }
        Ok(())
    }

    /// A stage's `input`/`output` shapes against its kind and the previous stage.
    fn check_shapes(
        &self,
        path: &Path,
        at: &str,
        stage: &StageManifest,
        previous: Option<&StageManifest>,
    ) -> Result<(), ManifestError> {
        let at = at.to_string();
        match stage.kind {
            StageKind::TextEncoder => {
                if stage.input.is_some() || stage.output.is_some() {
                    return Err(invalid(
                        path,
                        format!("{at}: a text encoder has no `input` or `output` video"),
                    ));
                }
            }
            StageKind::Base => {
                if stage.input.is_some() {
                    return Err(invalid(
                        path,
                        format!("{at}: a base stage takes no `input` video"),
                    ));
                }
                self.check_output(path, &at, stage)?;
            }
            StageKind::Tsr | StageKind::Ssr => {
                let output = self.check_output(path, &at, stage)?;
                let Some(input) = stage.input else {
                    return Err(invalid(
                        path,
                        format!("{at}: a super-resolution stage needs an `input` shape"),
                    ));
                };
                let upstream = previous.and_then(|p| p.output);
                if upstream != Some(input) {
                    return Err(invalid(
                        path,
                        format!(
                            "{at}: `input` {input} must equal the previous stage's output {}",
                            upstream.map_or("(none)".to_string(), |s| s.to_string())
                        ),
                    ));
                }
                check_super_resolution(path, &at, stage.kind, input, output)?;
            }
        }
        Ok(())
    }

    fn check_output(
        &self,
        path: &Path,
        at: &str,
        stage: &StageManifest,
    ) -> Result<VideoShape, ManifestError> {
        let Some(output) = stage.output else {
            return Err(invalid(
                path,
                format!("{at}: a diffusion stage needs an `output` shape"),
            ));
        };
        if output.frames == 0
            || output.height == 0
            || output.width == 0
            || output.fps.is_nan()
            || output.fps <= 0.0
        {
            return Err(invalid(
                path,
                format!(
                    "{at}: `output` must have positive frames, height, width and fps, got {output}"
                ),
            ));
        }
        Ok(output)
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&StageManifest> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The diffusion stages (base, then every SR stage), in order.
    pub fn diffusion_stages(&self) -> impl Iterator<Item = &StageManifest> {
        self.stages
            .iter()
            .filter(|s| s.kind != StageKind::TextEncoder)
    }

    /// The final video's shape.
    pub fn final_output(&self) -> Option<VideoShape> {
        self.stages.last().and_then(|s| s.output)
    }
}

fn check_super_resolution(
    path: &Path,
    at: &str,
    kind: StageKind,
    input: VideoShape,
    output: VideoShape,
) -> Result<(), ManifestError> {
    let fps_close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * a.abs().max(1.0);
    match kind {
        StageKind::Tsr => {
            let Some(k) = integer_factor(input.frames, output.frames) else {
                return Err(invalid(
                    path,
                    format!(
                        "{at}: a TSR stage must multiply frames by an integer >= 2, got {} -> {}",
                        input.frames, output.frames
                    ),
                ));
            };
            if (input.height, input.width) != (output.height, output.width) {
                return Err(invalid(
                    path,
                    format!("{at}: a TSR stage keeps the frame size, got {input} -> {output}"),
                ));
            }
            if !fps_close(output.fps, input.fps * k as f32) {
                return Err(invalid(
                    path,
                    format!(
                        "{at}: a TSR stage with {k}x frames must have {k}x fps, got {input} -> {output}"
                    ),
                ));
            }
        }
        StageKind::Ssr => {
            let kh = integer_factor(input.height, output.height);
            let kw = integer_factor(input.width, output.width);
            if kh.is_none() || kh != kw {
                return Err(invalid(
                    path,
                    format!(
                        "{at}: an SSR stage must scale height and width by the same integer >= 2, got {input} -> {output}"
                    ),
                ));
            }
            if input.frames != output.frames || !fps_close(input.fps, output.fps) {
                return Err(invalid(
                    path,
                    format!("{at}: an SSR stage keeps frames and fps, got {input} -> {output}"),
                ));
            }
        }
        StageKind::TextEncoder | StageKind::Base => {}
    }
    Ok(())
}

/// `name` is `[a-z0-9-]+` and `path` a folder inside the repository.
fn check_name_and_path(path: &Path, at: &str, stage: &StageManifest) -> Result<(), ManifestError> {
    if stage.name.is_empty()
        || !stage
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid(path, format!("{at}: `name` must match [a-z0-9-]+")));
    }
    if stage.path.is_empty() || Path::new(&stage.path).is_absolute() || stage.path.contains("..") {
        return Err(invalid(
            path,
            format!(
                "{at}: `path` must be a folder inside the repository, got {:?}",
                stage.path
            ),
        ));
    }
    Ok(())
}

/// Stage 0 is the text encoder, stage 1 the base, every later one an SR stage.
fn check_kind_at(
    path: &Path,
    at: &str,
    index: usize,
    kind: StageKind,
) -> Result<(), ManifestError> {
    let expected_kind = match index {
        0 => "text-encoder",
        1 => "base",
        _ => "tsr or ssr",
    };
    let kind_ok = match index {
        0 => kind == StageKind::TextEncoder,
        1 => kind == StageKind::Base,
        _ => matches!(kind, StageKind::Tsr | StageKind::Ssr),
    };
    if !kind_ok {
        return Err(invalid(
            path,
            format!(
                "{at}: `kind` must be {expected_kind} here, found {}",
                kind.as_str()
            ),
        ));
    }
    Ok(())
}

/// The sampling defaults of a diffusion stage, by the same rules requests are held to.
fn check_defaults(path: &Path, at: &str, defaults: &StageDefaults) -> Result<(), ManifestError> {
    let field = |name: &str, rule: Result<(), String>| {
        rule.map_err(|reason| invalid(path, format!("{at}: `defaults.{name}` {reason}")))
    };
    field("steps", check_steps(defaults.steps))?;
    field("guidance", check_guidance(defaults.guidance))?;
    if let Some(p) = defaults.threshold_quantile {
        field("threshold_quantile", check_threshold_quantile(p))?;
    }
    field(
        "noise_augmentation",
        check_noise_augmentation(defaults.noise_augmentation),
    )
}
