//! The stage engine: one worker thread owns a diffusion stage and runs every admitted request
//! through it with step-level batching.
//!
//! Requests wait in a bounded queue (a full queue rejects at once, which the service maps to
//! RESOURCE_EXHAUSTED). At every step boundary the worker admits queued requests into the running
//! batch, up to `max_batch_size`, so a new request never waits for a whole batch to finish — each
//! sample carries its own time, the way TGI batches tokens. After every step each request gets its
//! progress (and, every `preview_every` steps, its current x0 estimate); a request whose caller has
//! gone away (its event receiver is dropped), whose cancel flag is set, or whose deadline has passed
//! leaves the batch before the next step and frees its slot.
//!
//! The engine is plain threads and channels, no gRPC: the stage service is a thin shell around it,
//! and tests drive it directly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use vidcascade_diffusion::{SampleState, step_batch};

use crate::CascadeError;
use crate::stage::{Conditioning, DiffusionStage, ResolvedSettings, StageInput, UNetVelocity};

/// Engine limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Most samples denoised together in one network call.
    pub max_batch_size: usize,
    /// Most requests waiting for a slot; beyond it `submit` fails with `QueueFull`.
    pub max_queue: usize,
    /// How long an idle worker waits for more requests before starting a batch of one.
    pub batch_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 4,
            max_queue: 32,
            batch_wait: Duration::from_millis(5),
        }
    }
}

/// One request for the engine. Tensors are owned so the request can cross threads.
#[derive(Debug)]
pub struct StageJob {
    /// The prompt's embedding `[tokens, dim]`.
    pub text: Tensor,
    /// The empty prompt's embedding `[tokens, dim]`.
    pub unconditional: Tensor,
    /// SR stages: the previous stage's output `[3, F, H, W]` in [-1, 1].
    pub low_res: Option<Tensor>,
    /// Seed of all noise.
    pub seed: u64,
    /// Resolved sampler settings.
    pub settings: ResolvedSettings,
    /// Send a preview every this many steps (and after the last); 0 = never.
    pub preview_every: usize,
    /// Stop when this instant passes.
    pub deadline: Option<Instant>,
}

/// What a request hears back, in order: `Admitted`, then `Step`s (with previews), then exactly
/// one of `Done`, `Failed` or `Cancelled`.
#[derive(Debug)]
pub enum JobEvent {
    /// The request joined the running batch.
    Admitted {
        /// Time spent queued.
        queued: Duration,
    },
    /// A step finished.
    Step {
        /// Steps completed, 1-based.
        step: usize,
        /// Steps in the run.
        total_steps: usize,
        /// The x0 estimate `[3, F, H, W]`, on preview steps only.
        preview: Option<Tensor>,
    },
    /// The video `[3, F, H, W]` in [-1, 1].
    Done {
        /// The output.
        video: Tensor,
        /// Time from admission to completion.
        run: Duration,
        /// Steps run.
        steps: usize,
    },
    /// The request failed; others are unaffected.
    Failed(CascadeError),
    /// The deadline passed (the caller's going away is not reported: nobody is listening).
    DeadlineExceeded {
        /// Steps completed before stopping.
        completed_steps: usize,
    },
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is at `max_queue`.
    #[error("the queue is full ({limit} requests waiting); retry later or on another replica")]
    QueueFull {
        /// The queue limit.
        limit: usize,
    },
    /// The engine is draining or stopped.
    #[error("the stage is shutting down and accepts no new requests")]
    ShuttingDown,
}

/// A handle for the submitter: events, and a way to cancel explicitly.
#[derive(Debug)]
pub struct JobHandle {
    /// Events of this request.
    pub events: UnboundedReceiver<JobEvent>,
    /// Requests ahead of this one when it was queued.
    pub queue_position: usize,
    cancel: Arc<AtomicBool>,
}

impl JobHandle {
    /// Asks the worker to drop this request at the next step boundary.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Counters the service exports as metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting.
    pub queued: AtomicU64,
    /// Samples in the running batch.
    pub running: AtomicU64,
    /// Denoising steps still to run for queued and running requests (queued work).
    pub pending_steps: AtomicU64,
    /// Network calls made.
    pub batches: AtomicU64,
    /// Sum of batch sizes over all network calls.
    pub batched_samples: AtomicU64,
    /// Requests finished, by outcome.
    pub completed: AtomicU64,
    /// Requests that failed.
    pub failed: AtomicU64,
    /// Requests dropped because the caller left or cancelled.
    pub cancelled: AtomicU64,
    /// Requests stopped by their deadline.
    pub deadline_exceeded: AtomicU64,
    /// Requests rejected because the queue was full.
    pub rejected: AtomicU64,
    /// Exponential moving average of one step's wall time, in microseconds.
    pub step_micros_ema: AtomicU64,
}

impl EngineStats {
    /// Estimated seconds of work queued and running (pending steps x recent step time).
    pub fn queued_work_seconds(&self) -> f64 {
        self.pending_steps.load(Ordering::Relaxed) as f64
            * self.step_micros_ema.load(Ordering::Relaxed) as f64
            / 1e6
    }
}

struct Queued {
    job: StageJob,
    events: UnboundedSender<JobEvent>,
    cancel: Arc<AtomicBool>,
    enqueued: Instant,
}

struct Shared {
    queue: Mutex<QueueState>,
    wake: Condvar,
    stats: Arc<EngineStats>,
    config: EngineConfig,
}

struct QueueState {
    waiting: VecDeque<Queued>,
    accepting: bool,
    stop: bool,
}

/// The engine handle: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct StageEngine {
    shared: Arc<Shared>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for StageEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageEngine")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Active {
    state: SampleState,
    conditioning: Conditioning,
    events: UnboundedSender<JobEvent>,
    cancel: Arc<AtomicBool>,
    deadline: Option<Instant>,
    preview_every: usize,
    admitted: Instant,
}

impl StageEngine {
    /// Starts the worker thread that owns `stage`.
    pub fn start(stage: DiffusionStage, config: EngineConfig) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                accepting: true,
                stop: false,
            }),
            wake: Condvar::new(),
            stats: Arc::new(EngineStats::default()),
            config,
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("stage-{}", stage.name()))
            .spawn(move || worker_loop(&stage, &worker_shared))
            .ok();
        Self {
            shared,
            worker: Arc::new(Mutex::new(worker)),
        }
    }

    /// The engine's limits.
    pub fn config(&self) -> EngineConfig {
        self.shared.config
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.shared.stats.clone()
    }

    /// Queues a request, or rejects it at once when the queue is full.
    pub fn submit(&self, job: StageJob) -> Result<JobHandle, SubmitError> {
        let (tx, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut queue = self
            .shared
            .queue
            .lock()
            .map_err(|_| SubmitError::ShuttingDown)?;
        if !queue.accepting {
            return Err(SubmitError::ShuttingDown);
        }
        if queue.waiting.len() >= self.shared.config.max_queue {
            self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull {
                limit: self.shared.config.max_queue,
            });
        }
        let position = queue.waiting.len();
        let steps = job.settings.sampler.steps as u64;
        queue.waiting.push_back(Queued {
            job,
            events: tx,
            cancel: cancel.clone(),
            enqueued: Instant::now(),
        });
        self.shared
            .stats
            .queued
            .store(queue.waiting.len() as u64, Ordering::Relaxed);
        self.shared
            .stats
            .pending_steps
            .fetch_add(steps, Ordering::Relaxed);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(JobHandle {
            events: rx,
            queue_position: position,
            cancel,
        })
    }

    /// Stops accepting requests; queued and running ones still finish.
    pub fn drain(&self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.accepting = false;
        }
    }

    /// Requests queued or running.
    pub fn in_flight(&self) -> u64 {
        self.shared.stats.queued.load(Ordering::Relaxed)
            + self.shared.stats.running.load(Ordering::Relaxed)
    }

    /// Stops the worker after the running batch's current step and waits for it.
    pub fn shutdown(&self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.accepting = false;
            queue.stop = true;
        }
        self.shared.wake.notify_all();
        if let Ok(mut worker) = self.worker.lock()
            && let Some(handle) = worker.take()
        {
            let _ = handle.join();
        }
    }
}

/// Moves queued requests into the batch; blocks (up to `batch_wait` for company) when idle.
/// Returns false when the engine should stop.
fn admit(stage: &DiffusionStage, shared: &Shared, active: &mut Vec<Active>) -> bool {
    let Ok(mut queue) = shared.queue.lock() else {
        return false;
    };
    if active.is_empty() {
        while queue.waiting.is_empty() && !queue.stop {
            queue = match shared.wake.wait(queue) {
                Ok(q) => q,
                Err(_) => return false,
            };
        }
        if queue.stop && queue.waiting.is_empty() {
            return false;
        }
        // Give requests arriving together a moment to share the first step.
        let until = Instant::now() + shared.config.batch_wait;
        while queue.waiting.len() < shared.config.max_batch_size && !queue.stop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            queue = match shared.wake.wait_timeout(queue, until - now) {
                Ok((q, _)) => q,
                Err(_) => return false,
            };
        }
    }
    if queue.stop {
        return false;
    }
    while active.len() < shared.config.max_batch_size {
        let Some(queued) = queue.waiting.pop_front() else {
            break;
        };
        let steps = queued.job.settings.sampler.steps as u64;
        if queued.events.is_closed() || queued.cancel.load(Ordering::Relaxed) {
            shared
                .stats
                .pending_steps
                .fetch_sub(steps, Ordering::Relaxed);
            shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let input = StageInput {
            text: &queued.job.text,
            unconditional: &queued.job.unconditional,
            low_res: queued.job.low_res.as_ref(),
            seed: queued.job.seed,
            settings: queued.job.settings,
        };
        match stage.prepare(&input) {
            Ok((state, conditioning)) => {
                let _ = queued.events.send(JobEvent::Admitted {
                    queued: queued.enqueued.elapsed(),
                });
                active.push(Active {
                    state,
                    conditioning,
                    events: queued.events,
                    cancel: queued.cancel,
                    deadline: queued.job.deadline,
                    preview_every: queued.job.preview_every,
                    admitted: Instant::now(),
                });
            }
            Err(err) => {
                shared
                    .stats
                    .pending_steps
                    .fetch_sub(steps, Ordering::Relaxed);
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                let _ = queued.events.send(JobEvent::Failed(err));
            }
        }
    }
    shared
        .stats
        .queued
        .store(queue.waiting.len() as u64, Ordering::Relaxed);
    shared
        .stats
        .running
        .store(active.len() as u64, Ordering::Relaxed);
    true
}

/// Drops requests whose caller left, cancelled, or ran out of time.
fn evict(shared: &Shared, active: &mut Vec<Active>) {
    let now = Instant::now();
    active.retain(|a| {
        let remaining = (a.state.total_steps() - a.state.completed_steps()) as u64;
        if a.events.is_closed() || a.cancel.load(Ordering::Relaxed) {
            shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .pending_steps
                .fetch_sub(remaining, Ordering::Relaxed);
            return false;
        }
        if a.deadline.is_some_and(|d| now >= d) {
            shared
                .stats
                .deadline_exceeded
                .fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .pending_steps
                .fetch_sub(remaining, Ordering::Relaxed);
            let _ = a.events.send(JobEvent::DeadlineExceeded {
                completed_steps: a.state.completed_steps(),
            });
            return false;
        }
        true
    });
    shared
        .stats
        .running
        .store(active.len() as u64, Ordering::Relaxed);
}

fn worker_loop(stage: &DiffusionStage, shared: &Shared) {
    let mut active: Vec<Active> = Vec::new();
    loop {
        if !admit(stage, shared, &mut active) {
            break;
        }
        evict(shared, &mut active);
        if active.is_empty() {
            continue;
        }
        // Samples of different requests may have different step counts and times: the sampler
        // batches them anyway. Guided and unguided samples share the call too.
        let started = Instant::now();
        let result = {
            let model = UNetVelocity {
                unet: stage.unet(),
                samples: active.iter().map(|a| &a.conditioning).collect(),
            };
            // The model borrows every request's conditioning, so step copies of the states (a
            // state is an Arc'd tensor, a small time grid and an RNG) and put them back after.
            let mut next: Vec<SampleState> = active.iter().map(|a| a.state.clone()).collect();
            let mut states: Vec<&mut SampleState> = next.iter_mut().collect();
            let outcome = step_batch(&model, &mut states);
            outcome.map(|x0s| (x0s, next))
        };
        let step_micros = started.elapsed().as_micros() as u64;
        // No-ops unless the process installed a metrics recorder (the services do).
        metrics::histogram!("vidcascade_stage_step_seconds", "stage" => stage.name().to_string())
            .record(step_micros as f64 / 1e6);
        metrics::histogram!("vidcascade_stage_batch_size", "stage" => stage.name().to_string())
            .record(active.len() as f64);
        let ema = shared.stats.step_micros_ema.load(Ordering::Relaxed);
        let ema = if ema == 0 {
            step_micros
        } else {
            (ema * 9 + step_micros) / 10
        };
        shared.stats.step_micros_ema.store(ema, Ordering::Relaxed);
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .batched_samples
            .fetch_add(active.len() as u64, Ordering::Relaxed);

        match result {
            Ok((x0s, states)) => {
                shared
                    .stats
                    .pending_steps
                    .fetch_sub(active.len() as u64, Ordering::Relaxed);
                let mut still = Vec::with_capacity(active.len());
                for ((mut a, state), x0) in active.drain(..).zip(states).zip(x0s) {
                    a.state = state;
                    let step = a.state.completed_steps();
                    let total = a.state.total_steps();
                    let preview = (a.preview_every > 0
                        && (step % a.preview_every == 0 || step == total))
                        .then_some(x0)
                        .flatten();
                    let _ = a.events.send(JobEvent::Step {
                        step,
                        total_steps: total,
                        preview,
                    });
                    if a.state.is_done() {
                        shared.stats.completed.fetch_add(1, Ordering::Relaxed);
                        let _ = a.events.send(JobEvent::Done {
                            video: a.state.latent().clone(),
                            run: a.admitted.elapsed(),
                            steps: total,
                        });
                    } else {
                        still.push(a);
                    }
                }
                active = still;
            }
            Err(source) => {
                // A failed network call fails the requests in it, not the engine.
                for a in active.drain(..) {
                    let remaining = (a.state.total_steps() - a.state.completed_steps()) as u64;
                    shared
                        .stats
                        .pending_steps
                        .fetch_sub(remaining, Ordering::Relaxed);
                    shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = a.events.send(JobEvent::Failed(CascadeError::Diffusion {
                        stage: stage.name().to_string(),
                        source: vidcascade_diffusion::DiffusionError::Model(
                            source.to_string().into(),
                        ),
                    }));
                }
            }
        }
        shared
            .stats
            .running
            .store(active.len() as u64, Ordering::Relaxed);
    }
}
