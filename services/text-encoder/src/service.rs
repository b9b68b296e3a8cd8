//! `vidcascade.v1.TextEncoder` over the engine's text worker.

use std::time::Instant;

use candle_core::Tensor;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use vidcascade_engine::{Compute, EngineError, Precision, TextEngine};
use vidcascade_proto::v1;
use vidcascade_proto::v1::text_encoder_server::{TextEncoder as TextEncoderRpc, TextEncoderServer};
use vidcascade_runtime::deadline::timeout_from_metadata;
use vidcascade_runtime::info::{build_info, model_info_on};
use vidcascade_runtime::telemetry::set_parent_from;
use vidcascade_spec::error_type::COMPLETED;

use crate::config::EncoderConfig;
use crate::error::EncoderServiceError;

/// The loaded encoder, its worker and the gRPC service over them.
#[derive(Clone)]
pub struct EncoderServer {
    engine: TextEngine,
    info: v1::TextEncoderInfo,
}

impl std::fmt::Debug for EncoderServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderServer").finish_non_exhaustive()
    }
}

/// An embedding `[tokens, dim]` as an f32 wire tensor.
fn tensor_to_wire(tensor: &Tensor) -> Result<v1::Tensor, EncoderServiceError> {
    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
    Ok(v1::Tensor::from_f32(
        tensor.dims(),
        &values,
        v1::DType::F32,
    )?)
}

impl EncoderServer {
    /// Loads the encoder's weights and starts its worker thread.
    pub fn load(config: &EncoderConfig) -> Result<Self, EngineError> {
        let compute = Compute::open(config.device, Precision::F32)?;
        let encoder = config.repository.load_text_encoder(&compute.device)?;
        let engine = TextEngine::start(encoder, config.engine);
        let info = v1::TextEncoderInfo {
            model: Some(model_info_on(
                &config.repository.manifest().name,
                0,
                v1::DType::F32,
                &compute.spec().to_string(),
            )),
            embedding_dim: engine.embedding_dim() as u32,
            max_tokens: engine.max_tokens() as u32,
            vocab_size: config.repository.text_encoder_config().vocab_size as u32,
            dtype: v1::DType::F32 as i32,
            max_batch_size: config.engine.max_batch_size as u32,
            build: Some(build_info()),
        };
        Ok(Self { engine, info })
    }

    /// Encodes `prompts` on the worker, giving up at `deadline`.
    pub async fn encode(
        &self,
        prompts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<v1::EncodeResponse, EncoderServiceError> {
        let embeddings = self.engine.encode(prompts, deadline).await?;
        Ok(v1::EncodeResponse {
            embeddings: embeddings
                .iter()
                .map(tensor_to_wire)
                .collect::<Result<Vec<_>, _>>()?,
        })
    }
}

#[tonic::async_trait]
impl TextEncoderRpc for EncoderServer {
    async fn encode(
        &self,
        request: Request<v1::EncodeRequest>,
    ) -> Result<Response<v1::EncodeResponse>, Status> {
        let span = tracing::info_span!("encoder.encode");
        set_parent_from(&span, request.metadata());
        let deadline = timeout_from_metadata(request.metadata())?.map(|t| Instant::now() + t);
        let prompts = request.into_inner().prompts;
        let result = self
            .encode(prompts, deadline)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => COMPLETED,
            Err(err) => err.error_type().label(),
        };
        metrics::counter!("vidcascade_encoder_requests_total", "outcome" => outcome).increment(1);
        span.in_scope(|| tracing::debug!(outcome, "encode"));
        Ok(Response::new(result?))
    }

    async fn info(
        &self,
        _request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::TextEncoderInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }
}

impl vidcascade_runtime::Service for EncoderServer {
    fn label(&self) -> String {
        "vidcascade-text-encoder".into()
    }

    fn health_names(&self) -> Vec<String> {
        vec!["vidcascade.v1.TextEncoder".into()]
    }

    fn public_services(&self) -> Vec<String> {
        vec!["vidcascade.v1.TextEncoder".into()]
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(TextEncoderServer::new(self.clone()))
    }

    async fn warm_up(&self) -> anyhow::Result<()> {
        self.engine
            .warm_up(vec!["warm up".into(), String::new()])
            .await?;
        Ok(())
    }

    fn drain(&self) {
        self.engine.drain();
    }
}
