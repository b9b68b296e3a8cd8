//! The stage engine: one worker thread owns a diffusion stage and runs every admitted request
//! through it with step-level batching — the only denoising loop in the codebase.
//!
//! Requests wait in a bounded [`JobQueue`] (a full queue rejects at once, which the service maps
//! to RESOURCE_EXHAUSTED). At every step boundary the worker admits queued requests into the
//! running batch, up to `max_batch_size`, so a new request never waits for a whole batch to
//! finish — each sample carries its own time, the way TGI batches tokens. After every step each
//! request gets its progress (and, every `preview_every` steps, its current x0 estimate); a
//! request whose caller has gone away (its event receiver is dropped), whose cancel flag is set,
//! or whose deadline has passed leaves the batch before the next step and frees its slot. Errors
//! are per sample: one request's non-finite estimate fails that request alone.
//!
//! Tracing: each queued request carries a `stage.queued` span (a child of the submitter's
//! current span) and, once admitted, a `stage.run` span that follows from every `stage.batch`
//! span it took part in — TGI's queue-entry spans.
//!
//! The engine is plain threads and channels, no gRPC: the stage service and embedded mode are
//! thin shells around it, and tests drive it directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use vidcascade_diffusion::{Checkpoint, DiffusionError, SampleState, SampleStep, step_batch};
use vidcascade_spec::ResolvedSettings;

use crate::EngineError;
use crate::queue::JobQueue;
use crate::stage::{Conditioning, DiffusionStage, KnownFrames, StageInput, UNetVelocity};
use crate::stats::EngineStats;

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
    /// Frames the output must continue from (stages trained with context frames).
    pub known: Option<KnownFrames>,
    /// Seed of all noise.
    pub seed: u64,
    /// Resolved sampler settings.
    pub settings: ResolvedSettings,
    /// Send a preview every this many steps (and after the last); 0 = never.
    pub preview_every: usize,
    /// Stop when this instant passes.
    pub deadline: Option<Instant>,
    /// Attach a resumable [`Checkpoint`] to every this many steps (never after the last);
    /// 0 = never.
    pub checkpoint_every: usize,
    /// Continue an interrupted run of this same request from its checkpoint instead of step 0.
    pub resume: Option<Checkpoint>,
}

impl StageJob {
    /// Denoising steps this job still has to run.
    pub fn steps_to_run(&self) -> usize {
        let done = self.resume.as_ref().map_or(0, |c| c.completed_steps);
        self.settings.steps.saturating_sub(done)
    }
}

/// What a request hears back, in order: `Admitted`, then `Step`s (with previews), then exactly
/// one of `Done` or `Failed` (a caller that went away hears nothing: nobody is listening).
#[derive(Debug)]
pub enum JobEvent {
    /// The request is still queued, now with `position` requests ahead (sent when it moves).
    Queued {
        /// Requests ahead of it in the queue.
        position: usize,
    },
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
        /// The sample after this step, on checkpoint steps only.
        checkpoint: Option<Checkpoint>,
    },
    /// The video `[3, F, H, W]` in [-1, 1].
    Done {
        /// The output.
        video: Tensor,
        /// Time from admission to completion.
        run: Duration,
        /// Steps run by this engine (fewer than the total for a resumed run).
        steps: usize,
    },
    /// The request failed (its deadline passed, its input was bad, its sample went non-finite);
    /// the others are unaffected.
    Failed(EngineError),
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

    /// Blocks this thread until the request ends (for tools off an async runtime), showing
    /// `on_step` each completed step and its preview; returns the output video `[3, F, H, W]`.
    pub fn blocking_wait(
        mut self,
        mut on_step: impl FnMut(usize, Option<&Tensor>),
    ) -> Result<Tensor, EngineError> {
        while let Some(event) = self.events.blocking_recv() {
            match event {
                JobEvent::Queued { .. } | JobEvent::Admitted { .. } => {}
                JobEvent::Step { step, preview, .. } => on_step(step, preview.as_ref()),
                JobEvent::Done { video, .. } => return Ok(video),
                JobEvent::Failed(err) => return Err(err),
            }
        }
        Err(EngineError::WorkerGone {
            worker: "stage".into(),
        })
    }
}

struct Queued {
    job: StageJob,
    /// Counted in the metrics (false for warm-up).
    metered: bool,
    /// Requests ahead of it, as it was last told.
    position: usize,
    events: UnboundedSender<JobEvent>,
    cancel: Arc<AtomicBool>,
    enqueued: Instant,
    span: tracing::Span,
}

impl Queued {
    fn is_abandoned(&self) -> bool {
        self.events.is_closed() || self.cancel.load(Ordering::Relaxed)
    }
}

/// The engine handle: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct StageEngine {
    stage: DiffusionStage,
    queue: Arc<JobQueue<Queued>>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for StageEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageEngine")
            .field("stage", &self.stage.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StageEngine {
    /// Starts the worker thread that owns `stage`.
    pub fn start(stage: DiffusionStage, config: EngineConfig) -> Self {
        let queue = Arc::new(JobQueue::new(
            format!("stage `{}`", stage.name()),
            config.max_queue,
        ));
        let stats = Arc::new(EngineStats::default());
        let worker = Worker {
            stage: stage.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            config,
            active: Vec::new(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("stage-{}", stage.name()))
            .spawn(move || worker.run())
            .ok();
        Self {
            stage,
            queue,
            stats,
            config,
            worker: Arc::new(Mutex::new(worker)),
        }
    }

    /// The stage the worker runs (shares its weights).
    pub fn stage(&self) -> &DiffusionStage {
        &self.stage
    }

    /// The engine's limits.
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Queues a request, or rejects it at once when the queue is full or the engine drains.
    /// The request's span is a child of the caller's current span.
    pub fn submit(&self, job: StageJob) -> Result<JobHandle, EngineError> {
        self.enqueue(job, true)
    }

    /// As [`Self::submit`], left out of the step metrics (a service's warm-up is not traffic).
    pub fn submit_unmetered(&self, job: StageJob) -> Result<JobHandle, EngineError> {
        self.enqueue(job, false)
    }

    fn enqueue(&self, job: StageJob, metered: bool) -> Result<JobHandle, EngineError> {
        let (tx, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let steps = job.steps_to_run() as u64;
        let queued = Queued {
            job,
            metered,
            // Approximate (the queue may move before the push); the worker's next pass sends
            // the exact position if it differs.
            position: self.queue.len(),
            events: tx,
            cancel: cancel.clone(),
            enqueued: Instant::now(),
            span: tracing::info_span!("stage.queued", stage = %self.stage.name()),
        };
        let stats = &self.stats;
        let position = self
            .queue
            .push(queued, |len| {
                stats.queued.store(len as u64, Ordering::Relaxed);
                stats.pending_steps.fetch_add(steps, Ordering::Relaxed);
            })
            .inspect_err(|err| {
                if matches!(err, EngineError::QueueFull { .. }) {
                    EngineStats::count(&stats.rejected);
                }
            })?;
        Ok(JobHandle {
            events: rx,
            queue_position: position,
            cancel,
        })
    }

    /// Stops accepting requests; queued and running ones still finish.
    pub fn drain(&self) {
        self.queue.drain();
    }

    /// Requests queued or running.
    pub fn in_flight(&self) -> u64 {
        self.stats.queued.load(Ordering::Relaxed) + self.stats.running.load(Ordering::Relaxed)
    }

    /// Stops the worker after the running batch's current step and waits for it.
    pub fn shutdown(&self) {
        self.queue.stop();
        if let Ok(mut worker) = self.worker.lock()
            && let Some(handle) = worker.take()
        {
            let _ = handle.join();
        }
    }
}

/// A request in the running batch.
struct Active {
    state: SampleState,
    conditioning: Conditioning,
    events: UnboundedSender<JobEvent>,
    cancel: Arc<AtomicBool>,
    deadline: Option<Instant>,
    preview_every: usize,
    checkpoint_every: usize,
    metered: bool,
    /// Steps already done when this engine got the sample (a resumed run).
    resumed_at: usize,
    admitted: Instant,
    span: tracing::Span,
}

impl Active {
    fn remaining_steps(&self) -> usize {
        self.state.total_steps() - self.state.completed_steps()
    }

    fn send(&self, event: JobEvent) {
        // A closed receiver means the caller left; the next eviction pass drops the request.
        let _ = self.events.send(event);
    }
}

/// The worker thread's state: the stage, the queue it serves and the running batch.
struct Worker {
    stage: DiffusionStage,
    queue: Arc<JobQueue<Queued>>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    active: Vec<Active>,
}

impl Worker {
    fn run(mut self) {
        while self.admit() {
            self.evict();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// Moves queued requests into the batch; blocks (up to `batch_wait` for company) when idle.
    /// Returns false when the engine should stop.
    fn admit(&mut self) -> bool {
        // Callers that left while queued free their slot now, not when their turn comes.
        let gone = self.queue.remove_abandoned(Queued::is_abandoned);
        let mut moved = !gone.is_empty();
        for gone in gone {
            self.stats.steps_done(gone.job.steps_to_run());
            EngineStats::count(&self.stats.cancelled);
        }
        let room = self.config.max_batch_size.saturating_sub(self.active.len());
        let Some(taken) = self
            .queue
            .take(room, self.active.is_empty(), self.config.batch_wait)
        else {
            return false;
        };
        moved |= !taken.is_empty();
        for queued in taken {
            if let Some(active) = self.prepare(queued) {
                self.active.push(active);
            }
        }
        if moved {
            self.queue.for_each_waiting(|ahead, queued| {
                if queued.position != ahead {
                    queued.position = ahead;
                    let _ = queued.events.send(JobEvent::Queued { position: ahead });
                }
            });
        }
        let stats = &self.stats;
        stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
        stats
            .running
            .store(self.active.len() as u64, Ordering::Relaxed);
        true
    }

    /// Builds a queued request's sample, or answers it: gone callers are dropped, bad inputs
    /// fail alone.
    fn prepare(&self, queued: Queued) -> Option<Active> {
        let steps = queued.job.steps_to_run();
        if queued.is_abandoned() {
            self.stats.steps_done(steps);
            EngineStats::count(&self.stats.cancelled);
            return None;
        }
        let job = &queued.job;
        let input = StageInput {
            text: &job.text,
            unconditional: &job.unconditional,
            low_res: job.low_res.as_ref(),
            known: job.known.as_ref(),
            seed: job.seed,
            settings: job.settings,
        };
        let prepared = self
            .stage
            .prepare(&input)
            .and_then(|(mut state, conditioning)| {
                if let Some(checkpoint) = job.resume.clone() {
                    state
                        .resume(checkpoint)
                        .map_err(|source| self.stage.diffusion_error(source))?;
                }
                Ok((state, conditioning))
            });
        match prepared {
            Ok((state, conditioning)) => {
                let resumed_at = state.completed_steps();
                let _ = queued.events.send(JobEvent::Admitted {
                    queued: queued.enqueued.elapsed(),
                });
                Some(Active {
                    state,
                    conditioning,
                    span: tracing::info_span!(parent: &queued.span, "stage.run", steps),
                    events: queued.events,
                    cancel: queued.cancel,
                    deadline: job.deadline,
                    preview_every: job.preview_every,
                    checkpoint_every: job.checkpoint_every,
                    metered: queued.metered,
                    resumed_at,
                    admitted: Instant::now(),
                })
            }
            Err(err) => {
                self.stats.steps_done(steps);
                EngineStats::count(&self.stats.failed);
                let _ = queued.events.send(JobEvent::Failed(err));
                None
            }
        }
    }

    /// Drops requests whose caller left, cancelled, or ran out of time.
    fn evict(&mut self) {
        let now = Instant::now();
        let (stats, stage) = (&self.stats, self.stage.name());
        self.active.retain(|a| {
            if a.events.is_closed() || a.cancel.load(Ordering::Relaxed) {
                EngineStats::count(&stats.cancelled);
                stats.steps_done(a.remaining_steps());
                return false;
            }
            if a.deadline.is_some_and(|d| now >= d) {
                EngineStats::count(&stats.deadline_exceeded);
                stats.steps_done(a.remaining_steps());
                a.send(JobEvent::Failed(EngineError::DeadlineExceeded {
                    worker: format!("stage `{stage}`"),
                    completed_steps: a.state.completed_steps(),
                    total_steps: a.state.total_steps(),
                }));
                return false;
            }
            true
        });
        stats
            .running
            .store(self.active.len() as u64, Ordering::Relaxed);
    }

    /// One network call for the whole batch, then each request's own outcome.
    fn step(&mut self) {
        let batch_span = tracing::info_span!("stage.batch", stage = %self.stage.name(), size = self.active.len());
        for a in &self.active {
            a.span.follows_from(&batch_span);
        }
        let started = Instant::now();
        let result = batch_span.in_scope(|| self.denoise());
        self.record_step(started.elapsed());
        match result {
            Ok((outcomes, states)) => self.deliver(outcomes, states),
            Err(source) => self.fail_batch(&source),
        }
        self.stats
            .running
            .store(self.active.len() as u64, Ordering::Relaxed);
    }

    /// Samples of different requests may have different step counts and times: the sampler
    /// batches them anyway. Guided and unguided samples share the call too.
    fn denoise(&self) -> Result<(Vec<SampleStep>, Vec<SampleState>), DiffusionError> {
        let model = UNetVelocity {
            unet: self.stage.unet(),
            samples: self.active.iter().map(|a| &a.conditioning).collect(),
        };
        // The model borrows every request's conditioning, so step copies of the states (a
        // state is an Arc'd tensor, a small time grid and an RNG) and put them back after.
        let mut next: Vec<SampleState> = self.active.iter().map(|a| a.state.clone()).collect();
        let mut states: Vec<&mut SampleState> = next.iter_mut().collect();
        let outcomes = step_batch(&model, &mut states)?;
        Ok((outcomes, next))
    }

    fn record_step(&self, elapsed: Duration) {
        self.stats.record_step(elapsed, self.active.len());
        if !self.active.iter().any(|a| a.metered) {
            return;
        }
        let stage = self.stage.name().to_string();
        // No-ops unless the process installed a metrics recorder (the services do).
        metrics::histogram!("vidcascade_stage_step_seconds", "stage" => stage.clone())
            .record(elapsed.as_secs_f64());
        metrics::histogram!("vidcascade_stage_batch_size", "stage" => stage)
            .record(self.active.len() as f64);
    }

    /// Sends each request its step (or its own failure) and keeps the unfinished ones.
    fn deliver(&mut self, outcomes: Vec<SampleStep>, states: Vec<SampleState>) {
        let active = std::mem::take(&mut self.active);
        for ((mut a, state), outcome) in active.into_iter().zip(states).zip(outcomes) {
            match outcome {
                Ok(x0) => {
                    a.state = state;
                    self.stats.steps_done(1);
                    if let Some(a) = self.report_step(a, x0) {
                        self.active.push(a);
                    }
                }
                Err(source) => self.fail(&a, source),
            }
        }
    }

    /// Progress (and a preview when due) after a successful step; `Done` after the last.
    fn report_step(&self, a: Active, x0: Option<Tensor>) -> Option<Active> {
        let step = a.state.completed_steps();
        let total = a.state.total_steps();
        let due = a.preview_every > 0 && (step.is_multiple_of(a.preview_every) || step == total);
        let checkpoint_due =
            a.checkpoint_every > 0 && step.is_multiple_of(a.checkpoint_every) && step < total;
        a.send(JobEvent::Step {
            step,
            total_steps: total,
            preview: x0.filter(|_| due),
            checkpoint: checkpoint_due.then(|| a.state.checkpoint()),
        });
        if !a.state.is_done() {
            return Some(a);
        }
        let video = match a.conditioning.final_video(a.state.latent()) {
            Ok(video) => video,
            Err(source) => {
                self.fail(&a, DiffusionError::from(source));
                return None;
            }
        };
        EngineStats::count(&self.stats.completed);
        a.send(JobEvent::Done {
            video,
            run: a.admitted.elapsed(),
            steps: total - a.resumed_at,
        });
        None
    }

    fn fail(&self, a: &Active, source: DiffusionError) {
        self.stats.steps_done(a.remaining_steps());
        EngineStats::count(&self.stats.failed);
        a.send(JobEvent::Failed(EngineError::Diffusion {
            stage: self.stage.name().to_string(),
            source,
        }));
    }

    /// The network call itself failed: every request in it fails, the engine goes on.
    fn fail_batch(&mut self, source: &DiffusionError) {
        for a in std::mem::take(&mut self.active) {
            self.fail(&a, DiffusionError::Model(source.to_string().into()));
        }
    }
}
