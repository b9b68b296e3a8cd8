//! The two things a cascade needs from whatever runs it: encode a prompt, and run one diffusion
//! stage call. Embedded mode implements them with in-process engines, the gateway with gRPC
//! clients of its replica sets.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vidcascade_spec::{ErrorType, Video};

use crate::event::Event;
use crate::plan::StagePlan;

/// A prompt's embedding and the empty prompt's (for classifier-free guidance), in whatever form
/// the backend's stages take them (tensors in process, wire tensors for the services).
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings<E> {
    /// The prompt's embedding.
    pub text: E,
    /// The empty prompt's embedding.
    pub unconditional: E,
}

/// Why a backend call failed, classified so the run's outcome and status follow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The outcome this failure reports.
    pub error_type: ErrorType,
    /// What happened, for the caller.
    pub message: String,
}

impl CallError {
    /// A failure of type `error_type`.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }
}

/// Encodes prompts.
pub trait TextEncoding: Send + Sync {
    /// The embedding form the stages of the same backend take.
    type Embedding: Clone + Send + Sync;

    /// Encodes `prompt` and the empty prompt in one call, before `deadline`.
    fn encode(
        &self,
        prompt: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Embeddings<Self::Embedding>, CallError>> + Send;
}

/// One diffusion stage call.
#[derive(Debug)]
pub struct StageCallRequest<'a, E> {
    /// The run's id (for logs and traces of the stage).
    pub request_id: &'a str,
    /// Index of the stage among the plan's diffusion stages.
    pub index: usize,
    /// The stage, its overrides and resolved settings.
    pub stage: &'a StagePlan,
    /// The prompt's embeddings.
    pub text: &'a Embeddings<E>,
    /// SR stages: the previous stage's output, exactly as RGB8.
    pub conditioning: Option<&'a Video>,
    /// Known leading frames of the output, at its size: the init image (first clip) or the
    /// overlap with this stage's output of the previous clip (see [`crate::context`]).
    pub context: Option<&'a Video>,
    /// Seed of the stage's noise.
    pub seed: u64,
    /// Preview cadence (0 = none).
    pub preview_every: u32,
    /// When the stage must stop.
    pub deadline: Instant,
}

/// What a finished stage call returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutcome {
    /// The stage's output.
    pub video: Video,
    /// Time waiting in the stage's queue.
    pub queued: Duration,
    /// Time from admission to the output.
    pub run: Duration,
    /// Steps run.
    pub steps: usize,
}

/// Runs diffusion stages, taking embeddings of type `E`.
pub trait StageCall<E>: Send + Sync {
    /// Runs one stage call, reporting progress and previews through `report`.
    fn generate(
        &self,
        call: StageCallRequest<'_, E>,
        report: &StageReport<'_>,
    ) -> impl Future<Output = Result<StageOutcome, CallError>> + Send;
}

/// The caller went away: nobody is listening to the events any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the caller went away")]
pub struct CallerGone;

impl From<CallerGone> for CallError {
    fn from(_: CallerGone) -> Self {
        CallError::new(ErrorType::Cancelled, "the caller went away")
    }
}

/// Where the current stage call stands, for the message of a deadline that passes during it.
#[derive(Debug, Clone, Default)]
pub struct StageClock {
    /// The stage and when it was called, once one is.
    pub called: Option<(String, Instant)>,
    /// When the first step was reported.
    pub first_step: Option<Instant>,
    /// Steps reported, of how many.
    pub steps: (usize, usize),
}

impl StageClock {
    /// Where the time went, as of now: "in stage `base`: waited 35.2 s for its first step,
    /// then ran 12 of 32 steps in 84.8 s".
    pub fn describe(&self) -> String {
        let Some((stage, called)) = &self.called else {
            return "before any stage ran".into();
        };
        let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let (done, total) = self.steps;
        match self.first_step {
            None => format!(
                "in stage `{stage}`: waited {} and ran no step",
                secs(called.elapsed())
            ),
            Some(first) => format!(
                "in stage `{stage}`: waited {} for its first step, then ran {done} of {total} steps in {}",
                secs(first.duration_since(*called)),
                secs(first.elapsed())
            ),
        }
    }
}

/// Where a stage call reports its progress and previews: into the run's event stream, labelled
/// with the stage and clip.
#[derive(Debug)]
pub struct StageReport<'a> {
    events: &'a mpsc::Sender<Event>,
    stage: &'a str,
    clip: usize,
    clock: &'a Mutex<StageClock>,
}

impl<'a> StageReport<'a> {
    /// A reporter for `stage` of `clip` into `events`, keeping `clock` up to date.
    pub fn new(
        events: &'a mpsc::Sender<Event>,
        stage: &'a str,
        clip: usize,
        clock: &'a Mutex<StageClock>,
    ) -> Self {
        Self {
            events,
            stage,
            clip,
            clock,
        }
    }

    /// Step `step` of `total_steps` is done.
    pub async fn progress(&self, step: usize, total_steps: usize) -> Result<(), CallerGone> {
        if let Ok(mut clock) = self.clock.lock() {
            clock.first_step.get_or_insert_with(Instant::now);
            clock.steps = (step, total_steps);
        }
        let event = Event::Progress {
            stage: self.stage.to_string(),
            step,
            total_steps,
            clip: self.clip,
        };
        self.events.send(event).await.map_err(|_| CallerGone)
    }

    /// The x0 estimate after step `step`.
    pub async fn preview(&self, step: usize, video: Video) -> Result<(), CallerGone> {
        let event = Event::Preview {
            stage: self.stage.to_string(),
            step,
            video,
            clip: self.clip,
        };
        self.events.send(event).await.map_err(|_| CallerGone)
    }
}
