//! The text engine: one worker thread owns the frozen text encoder and encodes each job's
//! prompts in one padded batch, behind the same bounded [`JobQueue`] as the stage engine — the
//! text encoder service and embedded mode both submit here. A job whose caller left or whose
//! deadline passed while queued is skipped, and the caller stops waiting at its deadline.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::Tensor;
use tokio::sync::oneshot;
use vidcascade_models::{ModelError, TextEncoder};
use vidcascade_spec::request::check_prompt_length;

use crate::EngineError;
use crate::queue::JobQueue;

/// The worker's name in errors.
const WORKER: &str = "text encoder";

/// Text engine limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEngineConfig {
    /// Most prompts in one job.
    pub max_batch_size: usize,
    /// Most jobs waiting; beyond it `encode` fails with `QueueFull`.
    pub max_queue: usize,
}

impl Default for TextEngineConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 16,
            max_queue: 64,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, EngineError>>;

struct EncodeJob {
    prompts: Vec<String>,
    deadline: Option<Instant>,
    /// Counted in the metrics (false for warm-up).
    metered: bool,
    reply: Reply,
    span: tracing::Span,
}

/// The text engine handle: cheap to clone.
#[derive(Clone)]
pub struct TextEngine {
    queue: Arc<JobQueue<EncodeJob>>,
    config: TextEngineConfig,
    embedding_dim: usize,
    max_tokens: usize,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for TextEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TextEngine {
    /// Starts the worker thread that owns `encoder`.
    pub fn start(encoder: TextEncoder, config: TextEngineConfig) -> Self {
        let queue = Arc::new(JobQueue::new(WORKER, config.max_queue));
        let (embedding_dim, max_tokens) = (encoder.embedding_dim(), encoder.max_tokens());
        let worker_queue = queue.clone();
        let worker = std::thread::Builder::new()
            .name("text-encoder".into())
            .spawn(move || work(&encoder, &worker_queue))
            .ok();
        Self {
            queue,
            config,
            embedding_dim,
            max_tokens,
            worker: Arc::new(Mutex::new(worker)),
        }
    }

    /// The engine's limits.
    pub fn config(&self) -> TextEngineConfig {
        self.config
    }

    /// Width of every embedding.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Longest prompt in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Checks a job's prompts: 1..=`max_batch_size` of them, each within the prompt length limit.
    fn check(&self, prompts: &[String]) -> Result<(), EngineError> {
        if prompts.is_empty() || prompts.len() > self.config.max_batch_size {
            return Err(EngineError::InvalidRequest {
                field: "prompts".into(),
                reason: format!(
                    "{} prompts; send 1..={} per call",
                    prompts.len(),
                    self.config.max_batch_size
                ),
            });
        }
        for (index, prompt) in prompts.iter().enumerate() {
            check_prompt_length(prompt).map_err(|reason| EngineError::InvalidRequest {
                field: format!("prompts[{index}]"),
                reason,
            })?;
        }
        Ok(())
    }

    /// Encodes `prompts` (`[tokens, dim]` each) on the worker, giving up at `deadline`.
    pub async fn encode(
        &self,
        prompts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, EngineError> {
        self.run(prompts, deadline, true).await
    }

    /// As [`Self::encode`], left out of the metrics (a service's warm-up is not traffic).
    pub async fn warm_up(&self, prompts: Vec<String>) -> Result<Vec<Tensor>, EngineError> {
        self.run(prompts, None, false).await
    }

    async fn run(
        &self,
        prompts: Vec<String>,
        deadline: Option<Instant>,
        metered: bool,
    ) -> Result<Vec<Tensor>, EngineError> {
        self.check(&prompts)?;
        let (reply, answer) = oneshot::channel();
        let job = EncodeJob {
            prompts,
            deadline,
            metered,
            reply,
            span: tracing::info_span!("encoder.queued"),
        };
        self.queue.push(job, |len| {
            metrics::gauge!("vidcascade_encoder_queue_depth").set(len as f64);
        })?;
        let gone = || EngineError::WorkerGone {
            worker: WORKER.into(),
        };
        match deadline {
            None => answer.await.map_err(|_| gone())?,
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(answer) => answer.map_err(|_| gone())?,
                Err(_) => Err(deadline_exceeded()),
            },
        }
    }

    /// Stops accepting jobs; queued ones still run.
    pub fn drain(&self) {
        self.queue.drain();
    }

    /// Stops the worker and waits for it.
    pub fn shutdown(&self) {
        self.queue.stop();
        if let Ok(mut worker) = self.worker.lock()
            && let Some(handle) = worker.take()
        {
            let _ = handle.join();
        }
    }
}

fn deadline_exceeded() -> EngineError {
    EngineError::TimedOut {
        worker: WORKER.into(),
    }
}

/// Prompt errors name the prompt, as the caller indexed it.
fn prompt_error(err: ModelError) -> EngineError {
    match err {
        ModelError::PromptTooLong { index, .. } | ModelError::Tokenize { index, .. } => {
            EngineError::InvalidRequest {
                field: format!("prompts[{index}]"),
                reason: err.to_string(),
            }
        }
        other => EngineError::Model(other),
    }
}

fn work(encoder: &TextEncoder, queue: &JobQueue<EncodeJob>) {
    while let Some(jobs) = queue.take(1, true, std::time::Duration::ZERO) {
        metrics::gauge!("vidcascade_encoder_queue_depth").set(queue.len() as f64);
        for job in jobs {
            if job.reply.is_closed() {
                continue;
            }
            if job.deadline.is_some_and(|d| Instant::now() >= d) {
                let _ = job.reply.send(Err(deadline_exceeded()));
                continue;
            }
            let _entered = tracing::info_span!(parent: &job.span, "encoder.run").entered();
            let started = Instant::now();
            let prompts: Vec<&str> = job.prompts.iter().map(String::as_str).collect();
            let result = encoder.encode(&prompts).map_err(prompt_error);
            if job.metered {
                metrics::histogram!("vidcascade_encoder_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            let _ = job.reply.send(result);
        }
    }
}
