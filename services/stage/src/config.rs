//! Flags of `vidcascade-stage` (each with a `VIDCASCADE_*` variable), validated before binding.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use vidcascade_engine::{DeviceSpec, EngineConfig, Precision};
use vidcascade_models::ModelRepository;
use vidcascade_runtime::ConfigError;
use vidcascade_runtime::config::model_setting_error;
use vidcascade_runtime::config::{ServerArgs, ServerConfig};

/// Most samples one network call may batch.
pub const MAX_BATCH_LIMIT: usize = 64;
/// Most requests one replica may queue.
pub const MAX_QUEUE_LIMIT: usize = 10_000;

/// `vidcascade-stage`: serves one diffusion stage of a model repository over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct StageCli {
    /// Stage flags.
    #[command(flatten)]
    pub stage: StageArgs,
    /// Server flags.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// What to serve.
#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    /// Model repository folder.
    #[arg(long, env = "VIDCASCADE_MODEL", default_value = "models/shapes")]
    pub model: PathBuf,
    /// The diffusion stage to serve (a name from the repository's manifest.json).
    #[arg(long, env = "VIDCASCADE_STAGE")]
    pub stage: String,
    /// Queue and batching.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Device and precision.
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Where a stage computes (also the flags of `vidcascade serve` and `vidcascade generate`);
/// the default is the flags' default, f32 on the CPU.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ComputeArgs {
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "VIDCASCADE_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// The U-Nets' weights and activations: `f32`, or `f16` / `bf16` on a GPU (the text encoder
    /// always runs f32).
    #[arg(long, env = "VIDCASCADE_DTYPE", default_value = "f32")]
    pub dtype: Precision,
}

/// How a stage queues and batches (also the flags of `vidcascade serve`).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Most samples denoised together in one network call (1 = no batching).
    #[arg(long, env = "VIDCASCADE_MAX_BATCH_SIZE", default_value_t = 4)]
    pub max_batch_size: usize,
    /// Most requests waiting for a batch slot; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "VIDCASCADE_MAX_QUEUE", default_value_t = 32)]
    pub max_queue: usize,
    /// How long an idle stage waits for requests arriving together before starting a batch.
    #[arg(long, env = "VIDCASCADE_BATCH_WAIT_MS", default_value_t = 5)]
    pub batch_wait_ms: u64,
}

impl EngineArgs {
    /// Checks every limit.
    pub fn validate(&self) -> Result<EngineConfig, ConfigError> {
        if !(1..=MAX_BATCH_LIMIT).contains(&self.max_batch_size) {
            return Err(ConfigError::new(
                "--max-batch-size / VIDCASCADE_MAX_BATCH_SIZE",
                format!("{} is outside 1..={MAX_BATCH_LIMIT}", self.max_batch_size),
            ));
        }
        if !(1..=MAX_QUEUE_LIMIT).contains(&self.max_queue) {
            return Err(ConfigError::new(
                "--max-queue / VIDCASCADE_MAX_QUEUE",
                format!("{} is outside 1..={MAX_QUEUE_LIMIT}", self.max_queue),
            ));
        }
        if self.batch_wait_ms > 10_000 {
            return Err(ConfigError::new(
                "--batch-wait-ms / VIDCASCADE_BATCH_WAIT_MS",
                format!("{} is above 10000 ms", self.batch_wait_ms),
            ));
        }
        Ok(EngineConfig {
            max_batch_size: self.max_batch_size,
            max_queue: self.max_queue,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
        })
    }
}

/// Validated configuration.
#[derive(Debug)]
pub struct StageConfig {
    /// The opened repository.
    pub repository: ModelRepository,
    /// The stage's name.
    pub stage: String,
    /// Queue and batching limits.
    pub engine: EngineConfig,
    /// Device and precision (opened when the weights load).
    pub compute: ComputeArgs,
    /// Common server settings.
    pub server: ServerConfig,
}

impl StageCli {
    /// Checks every setting, opening the repository's manifest (not yet the weights).
    pub fn validate(&self) -> Result<StageConfig, ConfigError> {
        let server = self.server.validate()?;
        let engine = self.stage.engine.validate()?;
        let repository = open_repository(&self.stage.model)?;
        StageConfig::new(repository, &self.stage.stage, engine, server)
            .map(|config| config.on(self.stage.compute))
    }
}

impl StageConfig {
    /// The configuration of stage `stage` of `repository`, which must be one of its diffusion
    /// stages (`vidcascade serve` builds one per stage through here).
    pub fn new(
        repository: ModelRepository,
        stage: &str,
        engine: EngineConfig,
        server: ServerConfig,
    ) -> Result<Self, ConfigError> {
        let stages: Vec<&str> = repository
            .manifest()
            .diffusion_stages()
            .map(|s| s.name.as_str())
            .collect();
        if !stages.contains(&stage) {
            return Err(ConfigError::new(
                "--stage / VIDCASCADE_STAGE",
                format!(
                    "`{stage}` is not a diffusion stage of {}; choose one of {stages:?}",
                    repository.root().display()
                ),
            ));
        }
        Ok(Self {
            repository,
            stage: stage.to_string(),
            engine,
            compute: ComputeArgs::default(),
            server,
        })
    }

    /// This configuration on `compute`'s device and precision (the default is f32 on the CPU).
    pub fn on(self, compute: ComputeArgs) -> Self {
        Self { compute, ..self }
    }
}

/// Opens a model repository, reporting problems as a `--model` setting error.
pub fn open_repository(path: &std::path::Path) -> Result<ModelRepository, ConfigError> {
    ModelRepository::open(path).map_err(model_setting_error)
}
