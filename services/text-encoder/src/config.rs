//! Flags of `vidcascade-text-encoder` (each with a `VIDCASCADE_*` variable), validated before
//! binding.

use std::path::PathBuf;

use clap::{Args, Parser};
use vidcascade_engine::{DeviceSpec, TextEngineConfig};
use vidcascade_models::ModelRepository;
use vidcascade_runtime::ConfigError;
use vidcascade_runtime::config::model_setting_error;
use vidcascade_runtime::config::{ServerArgs, ServerConfig};

/// `vidcascade-text-encoder`: serves a model repository's text encoder over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct EncoderCli {
    /// Model repository folder.
    #[arg(long, env = "VIDCASCADE_MODEL", default_value = "models/shapes")]
    pub model: PathBuf,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`); the encoder
    /// runs f32 everywhere (T5 activations overflow f16).
    #[arg(long, env = "VIDCASCADE_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Queueing.
    #[command(flatten)]
    pub engine: TextEngineArgs,
    /// Server flags.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How the text encoder queues (also used by `vidcascade serve`).
#[derive(Debug, Clone, Args)]
pub struct TextEngineArgs {
    /// Most prompts in one Encode call.
    #[arg(long, env = "VIDCASCADE_MAX_BATCH_SIZE", default_value_t = 16)]
    pub max_batch_size: usize,
    /// Most calls waiting for the encoder; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "VIDCASCADE_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
}

impl TextEngineArgs {
    /// Checks every limit.
    pub fn validate(&self) -> Result<TextEngineConfig, ConfigError> {
        if !(1..=256).contains(&self.max_batch_size) {
            return Err(ConfigError::new(
                "--max-batch-size / VIDCASCADE_MAX_BATCH_SIZE",
                format!("{} is outside 1..=256", self.max_batch_size),
            ));
        }
        if !(1..=10_000).contains(&self.max_queue) {
            return Err(ConfigError::new(
                "--max-queue / VIDCASCADE_MAX_QUEUE",
                format!("{} is outside 1..=10000", self.max_queue),
            ));
        }
        Ok(TextEngineConfig {
            max_batch_size: self.max_batch_size,
            max_queue: self.max_queue,
        })
    }
}

/// Validated configuration.
#[derive(Debug)]
pub struct EncoderConfig {
    /// The opened repository.
    pub repository: ModelRepository,
    /// Queue limits.
    pub engine: TextEngineConfig,
    /// Where the encoder runs.
    pub device: DeviceSpec,
    /// Common server settings.
    pub server: ServerConfig,
}

impl EncoderCli {
    /// Checks every setting, opening the repository's manifest (not yet the weights).
    pub fn validate(&self) -> Result<EncoderConfig, ConfigError> {
        let server = self.server.validate()?;
        let engine = self.engine.validate()?;
        let repository = ModelRepository::open(&self.model).map_err(model_setting_error)?;
        Ok(EncoderConfig {
            repository,
            engine,
            device: self.device,
            server,
        })
    }
}
