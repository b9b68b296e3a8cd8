//! Realistic payloads for loading one service alone, recorded once and replayed.
//!
//! A stage is loaded with the requests the gateway would send it: text embeddings the real
//! text encoder made for a prompt set, and, for a super-resolution stage, the conditioning video
//! the real upstream stages made for the same prompt. [`record`] runs the cascade in this
//! process (the same engines as the services) and keeps, per prompt, the encoder's request and
//! every diffusion stage's `StageRequest`; [`Payload::save`] writes them to one file (`VCLOAD1`
//! then the protobuf encoding of [`Payload`]) that [`Payload::load`] reads back, so
//! `vidcascade-load run --target stage:ssr --payload FILE` needs no encoder, base or TSR.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use candle_core::{Device, Tensor};
use prost::Message;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_pipeline::TextEncoding;
use vidcascade_proto::convert::video_to_wire;
use vidcascade_proto::v1;
use vidcascade_spec::GenerateRequest;

/// The first bytes of a payload file.
const MAGIC: &[u8] = b"VCLOAD1\n";

/// Version of the payload encoding.
pub const PAYLOAD_VERSION: u32 = 1;

/// Everything recorded for one model and prompt set.
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    /// [`PAYLOAD_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The model (repository name) the requests were made with.
    #[prost(string, tag = "2")]
    pub model: String,
    /// The prompts, in order.
    #[prost(string, repeated, tag = "3")]
    pub prompts: Vec<String>,
    /// The text encoder's requests (one per prompt: the prompt and the empty prompt).
    #[prost(message, repeated, tag = "4")]
    pub encode: Vec<v1::EncodeRequest>,
    /// Per diffusion stage, in cascade order, one request per prompt.
    #[prost(message, repeated, tag = "5")]
    pub stages: Vec<StagePayload>,
}

/// One diffusion stage's recorded requests.
#[derive(Clone, PartialEq, Message)]
pub struct StagePayload {
    /// Stage name from the manifest.
    #[prost(string, tag = "1")]
    pub stage: String,
    /// One request per prompt, exactly as the gateway would send it.
    #[prost(message, repeated, tag = "2")]
    pub requests: Vec<v1::StageRequest>,
}

impl Payload {
    /// The recorded requests of `stage`, or an error listing the stages there are.
    pub fn stage(&self, stage: &str) -> anyhow::Result<&[v1::StageRequest]> {
        match self.stages.iter().find(|s| s.stage == stage) {
            Some(found) if !found.requests.is_empty() => Ok(&found.requests),
            Some(_) => bail!("the payload holds no requests for stage `{stage}`"),
            None => bail!(
                "the payload has no stage `{stage}`; it has {:?}",
                self.stages.iter().map(|s| &s.stage).collect::<Vec<_>>()
            ),
        }
    }

    /// Writes the payload to `path`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut bytes = MAGIC.to_vec();
        self.encode(&mut bytes)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a payload written by [`Payload::save`].
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let body = bytes
            .strip_prefix(MAGIC)
            .with_context(|| format!("{} is not a vidcascade-load payload", path.display()))?;
        let payload =
            Self::decode(body).with_context(|| format!("{}: a damaged payload", path.display()))?;
        ensure!(
            payload.version == PAYLOAD_VERSION,
            "{}: payload version {}, this tool reads {PAYLOAD_VERSION} (record it again)",
            path.display(),
            payload.version
        );
        Ok(payload)
    }
}

/// How [`record`] makes the requests.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The prompts.
    pub prompts: Vec<String>,
    /// Seed of prompt i is `seed + i`.
    pub seed: u64,
    /// The stages' `preview_every` (0: no previews).
    pub preview_every: u32,
}

/// Runs the cascade of the model at `model` in this process for every prompt and records the
/// requests each service would receive.
pub fn record(model: &Path, options: &RecordOptions) -> anyhow::Result<Payload> {
    ensure!(
        !options.prompts.is_empty(),
        "--prompt: give at least one prompt"
    );
    let cascade = EmbeddedCascade::load(model, &Device::Cpu)?;
    let mut payload = Payload {
        version: PAYLOAD_VERSION,
        model: cascade.manifest().name.clone(),
        prompts: options.prompts.clone(),
        encode: Vec::new(),
        stages: cascade
            .manifest()
            .diffusion_stages()
            .map(|stage| StagePayload {
                stage: stage.name.clone(),
                requests: Vec::new(),
            })
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (i, prompt) in options.prompts.iter().enumerate() {
        let seed = options.seed + i as u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        let embeddings = runtime.block_on(cascade.encode(prompt, deadline))?;
        let request = GenerateRequest::new(prompt.clone()).with_seed(seed);
        let output = cascade.generate(&request, None, |_| std::ops::ControlFlow::Continue(()))?;
        payload.encode.push(v1::EncodeRequest {
            prompts: vec![prompt.clone(), String::new()],
        });
        let text = tensor_to_wire(&embeddings.text)?;
        let unconditional = tensor_to_wire(&embeddings.unconditional)?;
        let mut conditioning = None;
        for (index, recorded) in payload.stages.iter_mut().enumerate() {
            recorded.requests.push(v1::StageRequest {
                request_id: format!("load-{i}"),
                text_embedding: Some(text.clone()),
                uncond_embedding: Some(unconditional.clone()),
                conditioning: conditioning.take(),
                seed: seed.wrapping_add(index as u64),
                preview_every: options.preview_every,
                ..Default::default()
            });
            let made = output
                .stages
                .get(index)
                .with_context(|| format!("the cascade made no video for stage {index}"))?;
            conditioning = Some(video_to_wire(&made.video));
        }
    }
    Ok(payload)
}

/// An embedding `[tokens, dim]` as an f32 wire tensor.
fn tensor_to_wire(tensor: &Tensor) -> anyhow::Result<v1::Tensor> {
    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
    Ok(v1::Tensor::from_f32(
        tensor.dims(),
        &values,
        v1::DType::F32,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> anyhow::Result<Payload> {
        let tensor =
            v1::Tensor::from_f32(&[2, 3], &[1.0, -2.0, 3.5, 0.0, 4.0, 5.0], v1::DType::F32)?;
        Ok(Payload {
            version: PAYLOAD_VERSION,
            model: "tiny".into(),
            prompts: vec!["a red circle".into()],
            encode: vec![v1::EncodeRequest {
                prompts: vec!["a red circle".into(), String::new()],
            }],
            stages: vec![StagePayload {
                stage: "base".into(),
                requests: vec![v1::StageRequest {
                    request_id: "load-0".into(),
                    text_embedding: Some(tensor.clone()),
                    uncond_embedding: Some(tensor),
                    seed: 7,
                    ..Default::default()
                }],
            }],
        })
    }

    #[test]
    fn a_saved_payload_loads_back_the_same() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("payload.bin");
        let original = payload()?;
        original.save(&path)?;
        assert_eq!(Payload::load(&path)?, original);
        assert_eq!(original.stage("base")?.len(), 1);
        let missing = original.stage("ssr").expect_err("no ssr");
        assert!(missing.to_string().contains("[\"base\"]"), "{missing}");
        Ok(())
    }

    #[test]
    fn other_files_and_versions_are_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x");
        std::fs::write(&path, b"not a payload")?;
        let err = Payload::load(&path).expect_err("no magic");
        assert!(
            err.to_string().contains("not a vidcascade-load payload"),
            "{err}"
        );
        let mut future = payload()?;
        future.version = 99;
        future.save(&path)?;
        let err = Payload::load(&path).expect_err("version 99");
        assert!(err.to_string().contains("version 99"), "{err}");
        Ok(())
    }
}
