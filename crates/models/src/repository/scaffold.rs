//! Writing a model repository from configs: the starting point of training (initial weights) and
//! of tests and benchmarks (random weights of any cascade shape, no download needed).
//!
//! A [`Scaffold`] is a cascade's manifest and configs before any weights exist; [`Scaffold::write`]
//! fills every network (per [`WeightInit`]) and writes the files [`super::ModelRepository::open`]
//! reads. The tiny cascade that tests use is `vidcascade_test_support::tiny_scaffold`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vidcascade_diffusion::noise::GaussianNoise;

use super::files;
use super::{Manifest, StageDefaults, StageKind, StageManifest};
use crate::ModelError;
use crate::text_encoder::tokenizer::word_level_tokenizer_json;
use crate::text_encoder::{T5Config, T5Encoder};
use crate::unet::{VideoUNet, VideoUNetConfig};

/// How new weights are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightInit {
    /// The training initialisation: candle's defaults, with residual output branches at zero
    /// (the network starts as an identity-like map predicting v = 0).
    Training,
    /// Every tensor from seeded N(0, 1) scaled by `1 / sqrt(fan_in)` (norm weights around 1):
    /// a non-trivial random network, the same for the same seed on every machine.
    Random {
        /// Seed of the fill.
        seed: u64,
    },
}

/// One diffusion stage to write.
#[derive(Debug, Clone)]
pub struct ScaffoldStage {
    /// Its manifest entry.
    pub manifest: StageManifest,
    /// Its U-Net config.
    pub unet: VideoUNetConfig,
}

/// Everything a repository holds, before weights exist.
#[derive(Debug, Clone)]
pub struct Scaffold {
    /// Cascade name.
    pub name: String,
    /// Description for people.
    pub description: String,
    /// Text encoder config.
    pub encoder: T5Config,
    /// Words of the word-level tokenizer.
    pub vocabulary: Vec<String>,
    /// Diffusion stages in order (base first).
    pub stages: Vec<ScaffoldStage>,
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), ModelError> {
    std::fs::write(path, contents).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        what: "JSON document",
        source,
    })?;
    write_file(path, text.as_bytes())
}

/// Fills every variable of `varmap` per `init` (sorted by name, so the fill is reproducible).
fn fill(varmap: &VarMap, init: WeightInit) -> Result<(), ModelError> {
    let WeightInit::Random { seed } = init else {
        return Ok(());
    };
    let data = varmap.data().lock().map_err(|_| ModelError::InvalidInput {
        field: "weights",
        reason: "variable map lock poisoned".into(),
    })?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut noise = GaussianNoise::new(seed, 0);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let values = noise.tensor(&dims, var.device())?;
        let value = if dims.len() == 1 {
            let base = if name.contains("norm") && name.ends_with("weight") {
                1.0
            } else {
                0.0
            };
            ((values * 0.1)? + base)?
        } else if name.contains("embed_tokens") || name.starts_with("shared") {
            values
        } else {
            (values / (fan_in as f64).sqrt())?
        };
        var.set(&value)?;
    }
    Ok(())
}

fn save(varmap: &VarMap, path: &Path) -> Result<(), ModelError> {
    varmap.save(path).map_err(|e| ModelError::Safetensors {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Scaffold {
    /// The manifest this scaffold describes.
    pub fn manifest(&self) -> Manifest {
        let mut stages = vec![StageManifest {
            name: "text-encoder".into(),
            kind: StageKind::TextEncoder,
            path: "text-encoder".into(),
            input: None,
            output: None,
            defaults: StageDefaults::default(),
            max_context_frames: 0,
        }];
        stages.extend(self.stages.iter().map(|s| s.manifest.clone()));
        Manifest {
            name: self.name.clone(),
            description: self.description.clone(),
            stages,
        }
    }

    /// Writes the repository under `root` (created if missing), every network filled per `init`.
    pub fn write(&self, root: &Path, init: WeightInit) -> Result<(), ModelError> {
        self.write_with(root, init, init)
    }

    /// Writes the repository with separate fills for the text encoder and the U-Nets (a frozen
    /// encoder with seeded random features beside U-Nets at their training initialisation).
    pub fn write_with(
        &self,
        root: &Path,
        encoder_init: WeightInit,
        unet_init: WeightInit,
    ) -> Result<(), ModelError> {
        let manifest = self.manifest();
        let manifest_path = root.join(files::MANIFEST);
        manifest.validate(&manifest_path)?;
        let device = Device::Cpu;
        let mkdir = |dir: &Path| {
            std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
                path: dir.to_path_buf(),
                source,
            })
        };
        mkdir(root)?;
        write_json(&manifest_path, &manifest)?;

        let encoder_dir = root.join(&manifest.stages[0].path);
        mkdir(&encoder_dir)?;
        write_json(&encoder_dir.join(files::CONFIG), &self.encoder)?;
        let words: Vec<&str> = self.vocabulary.iter().map(String::as_str).collect();
        write_json(
            &encoder_dir.join(files::TOKENIZER),
            &word_level_tokenizer_json(&words),
        )?;
        let varmap = VarMap::new();
        T5Encoder::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
            &self.encoder,
            "shared",
        )?;
        fill(&varmap, encoder_init)?;
        save(&varmap, &encoder_dir.join(files::WEIGHTS))?;

        for (index, stage) in self.stages.iter().enumerate() {
            let dir = root.join(&stage.manifest.path);
            mkdir(&dir)?;
            write_json(&dir.join(files::CONFIG), &stage.unet)?;
            let varmap = VarMap::new();
            VideoUNet::new(
                VarBuilder::from_varmap(&varmap, DType::F32, &device),
                &stage.unet,
            )?;
            let init = match unet_init {
                WeightInit::Random { seed } => WeightInit::Random {
                    seed: seed.wrapping_add(1 + index as u64),
                },
                other => other,
            };
            fill(&varmap, init)?;
            save(&varmap, &dir.join(files::WEIGHTS))?;
        }
        Ok(())
    }
}

/// Checks that a tensor is finite; used by callers of random repositories.
pub fn all_finite(t: &Tensor) -> Result<bool, ModelError> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_finite()))
}
