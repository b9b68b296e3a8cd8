//! `vidcascade.v1.TextEncoder`: a worker thread owning the encoder behind a bounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use candle_core::{Device, Tensor};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use vidcascade_core::cascade::MAX_PROMPT_BYTES;
use vidcascade_core::wire::tensor_to_wire;
use vidcascade_models::text_encoder::TextEncoder;
use vidcascade_proto::v1;
use vidcascade_proto::v1::text_encoder_server::{TextEncoder as TextEncoderRpc, TextEncoderServer};
use vidcascade_runtime::info::{build_info, model_info};
use vidcascade_runtime::telemetry::set_parent_from;

use crate::config::EncoderConfig;
use crate::error::EncoderServiceError;

type Reply = oneshot::Sender<Result<Vec<Tensor>, EncoderServiceError>>;

struct Job {
    prompts: Vec<String>,
    reply: Reply,
}

/// The loaded encoder, its worker and the gRPC service over them.
#[derive(Clone)]
pub struct EncoderServer {
    jobs: SyncSender<Job>,
    queued: Arc<AtomicU64>,
    draining: Arc<AtomicBool>,
    max_queue: usize,
    max_batch_size: usize,
    info: v1::TextEncoderInfo,
}

impl std::fmt::Debug for EncoderServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderServer").finish_non_exhaustive()
    }
}

impl EncoderServer {
    /// Loads the encoder's weights and starts its worker thread.
    pub fn load(config: &EncoderConfig) -> Result<Self, EncoderServiceError> {
        let encoder = config.repository.load_text_encoder(&Device::Cpu)?;
        let encoder_config = config.repository.text_encoder_config();
        let info = v1::TextEncoderInfo {
            model: Some(model_info(&config.repository.manifest().name, 0)),
            embedding_dim: encoder.embedding_dim() as u32,
            max_tokens: encoder.max_tokens() as u32,
            vocab_size: encoder_config.vocab_size as u32,
            dtype: v1::DType::F32 as i32,
            max_batch_size: config.max_batch_size as u32,
            build: Some(build_info()),
        };
        let (jobs, receiver) = sync_channel::<Job>(config.max_queue);
        let queued = Arc::new(AtomicU64::new(0));
        let worker_queued = queued.clone();
        std::thread::Builder::new()
            .name("text-encoder".into())
            .spawn(move || worker(&encoder, &receiver, &worker_queued))
            .map_err(|_| EncoderServiceError::WorkerGone)?;
        Ok(Self {
            jobs,
            queued,
            draining: Arc::new(AtomicBool::new(false)),
            max_queue: config.max_queue,
            max_batch_size: config.max_batch_size,
            info,
        })
    }

    /// Encodes `prompts` on the worker.
    pub async fn encode(&self, prompts: Vec<String>) -> Result<Vec<Tensor>, EncoderServiceError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(EncoderServiceError::Draining);
        }
        if prompts.is_empty() || prompts.len() > self.max_batch_size {
            return Err(EncoderServiceError::BadBatch {
                reason: format!(
                    "{} prompts; send 1..={} per call",
                    prompts.len(),
                    self.max_batch_size
                ),
            });
        }
        if let Some((index, prompt)) = prompts
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() > MAX_PROMPT_BYTES)
        {
            return Err(EncoderServiceError::BadPrompt {
                index,
                reason: format!("is {} bytes; the limit is {MAX_PROMPT_BYTES}", prompt.len()),
            });
        }
        let (reply, answer) = oneshot::channel();
        // Count the job before the worker can see it, so its decrement never runs first.
        let depth = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match self.jobs.try_send(Job { prompts, reply }) {
            Ok(()) => metrics::gauge!("vidcascade_encoder_queue_depth").set(depth as f64),
            Err(err) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(match err {
                    TrySendError::Full(_) => EncoderServiceError::QueueFull {
                        limit: self.max_queue,
                    },
                    TrySendError::Disconnected(_) => EncoderServiceError::WorkerGone,
                });
            }
        }
        answer.await.map_err(|_| EncoderServiceError::WorkerGone)?
    }
}

fn worker(encoder: &TextEncoder, jobs: &std::sync::mpsc::Receiver<Job>, queued: &AtomicU64) {
    while let Ok(job) = jobs.recv() {
        let depth = queued.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("vidcascade_encoder_queue_depth").set(depth as f64);
        if job.reply.is_closed() {
            continue;
        }
        let started = Instant::now();
        let prompts: Vec<&str> = job.prompts.iter().map(String::as_str).collect();
        let result = encoder.encode(&prompts).map_err(EncoderServiceError::from);
        metrics::histogram!("vidcascade_encoder_seconds").record(started.elapsed().as_secs_f64());
        let _ = job.reply.send(result);
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
        let prompts = request.into_inner().prompts;
        let result = async {
            let embeddings = self.encode(prompts).await?;
            let count = embeddings.len();
            let embeddings = embeddings
                .iter()
                .map(|e| tensor_to_wire(e, v1::DType::F32))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| {
                    EncoderServiceError::Model(vidcascade_models::ModelError::InvalidInput {
                        field: "embeddings",
                        reason: err.to_string(),
                    })
                })?;
            Ok::<_, EncoderServiceError>(v1::EncodeResponse {
                embeddings,
                truncated: vec![false; count],
            })
        }
        .await;
        let outcome = match &result {
            Ok(_) => "completed",
            Err(err) => err.outcome(),
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

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(TextEncoderServer::new(self.clone()))
    }

    async fn warm_up(&self) -> anyhow::Result<()> {
        self.encode(vec!["warm up".into(), String::new()]).await?;
        Ok(())
    }

    fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
