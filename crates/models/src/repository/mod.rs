//! The model repository: `models/<cascade>/` with a `manifest.json` and one folder per stage
//! holding `config.json` + `model.safetensors` (+ `tokenizer.json` for the text encoder).
//!
//! [`ModelRepository::open`] reads and cross-checks everything that is cheap to check (the stage
//! chain, every config, that configs agree with the manifest and with each other) so a broken
//! repository fails at start-up with a message naming the file; the `load_*` methods then check
//! each weights file tensor by tensor before building the network.

pub mod scaffold;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::de::DeserializeOwned;
use tokenizers::Tokenizer;

pub use vidcascade_spec::manifest::{
    Manifest, StageDefaults, StageKind, StageManifest, VideoShape,
};

use crate::ModelError;
use crate::text_encoder::{T5Config, T5Encoder, TextEncoder, t5::EMBEDDING_NAMES};
use crate::unet::{TemporalMixing, VideoUNet, VideoUNetConfig};

/// File names inside a repository.
pub mod files {
    /// The cascade's manifest, at the repository root.
    pub const MANIFEST: &str = vidcascade_spec::manifest::MANIFEST_FILE;
    /// A stage's hyper-parameters.
    pub const CONFIG: &str = "config.json";
    /// A stage's weights.
    pub const WEIGHTS: &str = "model.safetensors";
    /// The text encoder's tokenizer.
    pub const TOKENIZER: &str = "tokenizer.json";
}

/// Reads and parses a JSON file, naming it in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// An opened, validated model repository.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
    manifest: Manifest,
    encoder_config: T5Config,
    unet_configs: Vec<(String, VideoUNetConfig)>,
}

impl ModelRepository {
    /// Opens `root`, validating the manifest, every config and their agreement.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, ModelError> {
        let root = root.as_ref().to_path_buf();
        let manifest = Manifest::load(&root)?;

        let encoder_stage = &manifest.stages[0];
        let encoder_config_path = root.join(&encoder_stage.path).join(files::CONFIG);
        let encoder_config: T5Config = read_json(&encoder_config_path, "T5 text encoder config")?;
        encoder_config
            .validate()
            .map_err(|e| ModelError::InvalidRepository {
                path: encoder_config_path.clone(),
                reason: e.to_string(),
            })?;

        let mut unet_configs = Vec::new();
        for stage in manifest.diffusion_stages() {
            let path = root.join(&stage.path).join(files::CONFIG);
            let config: VideoUNetConfig = read_json(&path, "Video U-Net config")?;
            config
                .validate()
                .map_err(|e| ModelError::InvalidRepository {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            check_unet_against_stage(&path, stage, &config, &encoder_config)?;
            unet_configs.push((stage.name.clone(), config));
        }
        Ok(Self {
            root,
            manifest,
            encoder_config,
            unet_configs,
        })
    }

    /// The repository's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The folder of stage `stage`.
    pub fn stage_dir(&self, stage: &StageManifest) -> PathBuf {
        self.root.join(&stage.path)
    }

    /// The text encoder's config.
    pub fn text_encoder_config(&self) -> &T5Config {
        &self.encoder_config
    }

    /// The U-Net config of diffusion stage `name`.
    pub fn unet_config(&self, name: &str) -> Result<&VideoUNetConfig, ModelError> {
        self.unet_configs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .ok_or_else(|| self.unknown_stage(name))
    }

    fn unknown_stage(&self, name: &str) -> ModelError {
        let known: Vec<&str> = self
            .manifest
            .diffusion_stages()
            .map(|s| s.name.as_str())
            .collect();
        ModelError::InvalidRepository {
            path: self.root.join(files::MANIFEST),
            reason: format!("no diffusion stage named `{name}`; the stages are {known:?}"),
        }
    }

    /// Loads the tokenizer and the T5 encoder, checking every tensor.
    pub fn load_text_encoder(&self, device: &Device) -> Result<TextEncoder, ModelError> {
        let dir = self.stage_dir(&self.manifest.stages[0]);
        let config = self.encoder_config.clone();

        let tokenizer_path = dir.join(files::TOKENIZER);
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        if tokenizer_vocab > config.vocab_size {
            return Err(ModelError::Tokenizer {
                path: tokenizer_path,
                reason: format!(
                    "the tokenizer has {tokenizer_vocab} tokens but config.json's vocab_size is {}",
                    config.vocab_size
                ),
            });
        }

        let file = dir.join(files::WEIGHTS);
        let bytes = weights::read_weights(&file)?;
        let stored = weights::stored_tensors(&file, &bytes)?;
        let prefix = EMBEDDING_NAMES
            .iter()
            .find(|p| stored.contains_key(&format!("{p}.weight")))
            .copied()
            .unwrap_or(EMBEDDING_NAMES[0]);
        let expected = weights::expected_tensors(|vb| Ok(T5Encoder::new(vb, &config, prefix)?))?;
        // Real checkpoints also carry a decoder and tied heads: extra tensors are fine here.
        weights::check_tensors(&file, &expected, &stored, true)?;
        let vb = weights::var_builder(&file, bytes, DType::F32, device)?;
        let model = T5Encoder::new(vb, &config, prefix)?;
        Ok(TextEncoder::new(tokenizer, model, config, device.clone()))
    }

    /// Number of parameters of diffusion stage `name`'s U-Net (from its config; no weights read).
    pub fn unet_parameter_count(&self, name: &str) -> Result<usize, ModelError> {
        let config = self.unet_config(name)?.clone();
        let expected = weights::expected_tensors(|vb| VideoUNet::new(vb, &config))?;
        Ok(expected
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum())
    }

    /// Loads diffusion stage `name`'s U-Net in f32, checking every tensor (and that nothing is
    /// left over).
    pub fn load_unet(&self, name: &str, device: &Device) -> Result<VideoUNet, ModelError> {
        self.load_unet_as(name, device, DType::F32)
    }

    /// [`Self::load_unet`] with the weights converted to `dtype` (f16 / bf16 halve a GPU's
    /// weight memory and run attention on the tensor cores; the checkpoint stays f32).
    pub fn load_unet_as(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<VideoUNet, ModelError> {
        let stage = self
            .manifest
            .stage(name)
            .filter(|s| s.kind != StageKind::TextEncoder)
            .ok_or_else(|| self.unknown_stage(name))?;
        let config = self.unet_config(name)?.clone();
        let file = self.stage_dir(stage).join(files::WEIGHTS);
        let bytes = weights::read_weights(&file)?;
        let stored = weights::stored_tensors(&file, &bytes)?;
        let expected = weights::expected_tensors(|vb| VideoUNet::new(vb, &config))?;
        weights::check_tensors(&file, &expected, &stored, false)?;
        let vb = weights::var_builder(&file, bytes, dtype, device)?;
        VideoUNet::new(vb, &config)
    }
}

/// Checks a U-Net config against its manifest entry and the text encoder.
fn check_unet_against_stage(
    path: &Path,
    stage: &StageManifest,
    config: &VideoUNetConfig,
    encoder: &T5Config,
) -> Result<(), ModelError> {
    let fail = |reason: String| {
        Err(ModelError::InvalidRepository {
            path: path.to_path_buf(),
            reason: format!("stage `{}`: {reason}", stage.name),
        })
    };
    if config.context_dim != encoder.d_model {
        return fail(format!(
            "context_dim {} must equal the text encoder's d_model {}",
            config.context_dim, encoder.d_model
        ));
    }
    if stage.max_context_frames > 0 && !config.context_frames {
        return fail(format!(
            "the manifest's max_context_frames is {} but config.json has no context_frames",
            stage.max_context_frames
        ));
    }
    if config.in_channels != 3 || config.out_channels != 3 {
        return fail(format!(
            "in_channels and out_channels must be 3 (RGB), got {} and {}",
            config.in_channels, config.out_channels
        ));
    }
    let is_sr = matches!(stage.kind, StageKind::Tsr | StageKind::Ssr);
    if is_sr && config.cond_channels != 3 {
        return fail(format!(
            "a super-resolution stage takes the RGB conditioning video: cond_channels must be 3, got {}",
            config.cond_channels
        ));
    }
    if !is_sr && config.cond_channels != 0 {
        return fail(format!(
            "a base stage takes no conditioning video: cond_channels must be 0, got {}",
            config.cond_channels
        ));
    }
    if let Some(out) = stage.output {
        let d = config.spatial_divisor();
        if out.height % d != 0 || out.width % d != 0 {
            return fail(format!(
                "output {}x{} must be divisible by {d} (2^(levels-1) for channel_mult {:?})",
                out.height, out.width, config.channel_mult
            ));
        }
        if config.temporal == TemporalMixing::Attention && out.frames > config.max_frames {
            return fail(format!(
                "output has {} frames but temporal attention covers max_frames = {}",
                out.frames, config.max_frames
            ));
        }
    }
    Ok(())
}
