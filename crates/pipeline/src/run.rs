//! Running a [`Plan`]: per clip, the text encoder, then every diffusion stage in order, each
//! conditioned on the previous stage's RGB8 output, under one deadline shared by expected cost.
//! The run stops as soon as the deadline passes or the event receiver is dropped; dropping the
//! stage call's future is what cancels it in every backend.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vidcascade_spec::{ErrorType, StageKind, Video};

use crate::PipelineError;
use crate::backend::{
    CallError, Embeddings, StageCall, StageCallRequest, StageReport, TextEncoding,
};
use crate::event::{Event, StageTiming};
use crate::plan::{Plan, deadline_share};

/// Share of the remaining deadline the text encoder may use.
const ENCODER_SHARE: f64 = 0.05;
/// The text encoder's time never drops below this.
const ENCODER_MIN: Duration = Duration::from_millis(500);
/// Time kept back from each stage's deadline share, so a stage that runs out of time reports
/// where it stopped before the run's own timer fires.
const STAGE_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// Identity and time limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits<'a> {
    /// The run's id, passed to every stage call.
    pub request_id: &'a str,
    /// When the request arrived (for error messages).
    pub started: Instant,
    /// When everything must be done.
    pub deadline: Instant,
}

/// Runs `plan` on `encoder` and `stages`, sending every event to `events`. Returns when the
/// final `Completed` event is sent, or with the reason the run stopped.
pub async fn run<T, S>(
    plan: &Plan,
    limits: RunLimits<'_>,
    encoder: &T,
    stages: &S,
    events: &mpsc::Sender<Event>,
) -> Result<(), PipelineError>
where
    T: TextEncoding,
    S: StageCall<T::Embedding>,
{
    let mut run = Run {
        plan,
        limits,
        events,
        timings: Vec::new(),
    };
    tokio::select! {
        result = run.execute(encoder, stages) => result,
        () = tokio::time::sleep_until(limits.deadline.into()) => {
            Err(run_deadline_exceeded(limits, "running the cascade"))
        }
        () = events.closed() => Err(PipelineError::Cancelled),
    }
}

fn run_deadline_exceeded(limits: RunLimits<'_>, during: &str) -> PipelineError {
    PipelineError::DeadlineExceeded {
        during: during.to_string(),
        elapsed: limits.started.elapsed(),
    }
}

struct Run<'a> {
    plan: &'a Plan,
    limits: RunLimits<'a>,
    events: &'a mpsc::Sender<Event>,
    timings: Vec<StageTiming>,
}

impl Run<'_> {
    async fn send(&self, event: Event) -> Result<(), PipelineError> {
        self.events
            .send(event)
            .await
            .map_err(|_| PipelineError::Cancelled)
    }

    fn remaining(&self, during: &str) -> Result<Duration, PipelineError> {
        let remaining = self
            .limits
            .deadline
            .saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(run_deadline_exceeded(self.limits, during));
        }
        Ok(remaining)
    }

    /// A failed call of `stage`: the caller leaving is a cancellation, not a stage failure.
    fn call_failed(&self, stage: &str, source: CallError) -> PipelineError {
        if source.error_type == ErrorType::Cancelled && self.events.is_closed() {
            return PipelineError::Cancelled;
        }
        PipelineError::Stage {
            stage: stage.to_string(),
            source,
        }
    }

    async fn execute<T, S>(&mut self, encoder: &T, stages: &S) -> Result<(), PipelineError>
    where
        T: TextEncoding,
        S: StageCall<T::Embedding>,
    {
        let mut finals: Vec<Video> = Vec::with_capacity(self.plan.clips.len());
        for clip in 0..self.plan.clips.len() {
            let text = self.encode(encoder, clip).await?;
            let mut previous: Option<Video> = None;
            for index in 0..self.plan.stages.len() {
                previous = Some(
                    self.stage(stages, clip, index, &text, previous.as_ref())
                        .await?,
                );
            }
            finals.extend(previous);
        }
        let video = Video::concat(&finals).ok_or_else(|| PipelineError::Stage {
            stage: "cascade".into(),
            source: CallError::new(ErrorType::Internal, "no clip produced a video"),
        })?;
        let timings = std::mem::take(&mut self.timings);
        self.send(Event::Completed { video, timings }).await
    }

    async fn encode<T: TextEncoding>(
        &mut self,
        encoder: &T,
        clip: usize,
    ) -> Result<Embeddings<T::Embedding>, PipelineError> {
        let name = self.plan.encoder.clone();
        self.send(Event::StageStarted {
            stage: name.clone(),
            kind: StageKind::TextEncoder,
            output_shape: None,
            total_steps: 0,
            clip,
        })
        .await?;
        let timeout = self
            .remaining(&format!("waiting for `{name}`"))?
            .mul_f64(ENCODER_SHARE)
            .max(ENCODER_MIN);
        let started = Instant::now();
        let text = encoder
            .encode(&self.plan.clips[clip], started + timeout)
            .await
            .map_err(|source| self.call_failed(&name, source))?;
        let elapsed = started.elapsed();
        self.timings.push(StageTiming {
            stage: name.clone(),
            clip,
            queued: Duration::ZERO,
            run: elapsed,
            steps_run: 0,
        });
        self.send(Event::StageCompleted {
            stage: name,
            clip,
            video: None,
            elapsed,
        })
        .await?;
        Ok(text)
    }

    async fn stage<E, S: StageCall<E>>(
        &mut self,
        stages: &S,
        clip: usize,
        index: usize,
        text: &Embeddings<E>,
        previous: Option<&Video>,
    ) -> Result<Video, PipelineError> {
        let plan = self.plan;
        let stage = &plan.stages[index];
        let name = stage.manifest.name.as_str();
        self.send(Event::StageStarted {
            stage: name.to_string(),
            kind: stage.manifest.kind,
            output_shape: stage.manifest.output,
            total_steps: stage.settings.steps,
            clip,
        })
        .await?;
        let remaining = self.remaining(&format!("waiting for stage `{name}`"))?;
        let remaining = remaining.saturating_sub(STAGE_DEADLINE_MARGIN.min(remaining / 20));
        let timeout = deadline_share(remaining, &plan.remaining_costs(clip, index));
        let started = Instant::now();
        let call = StageCallRequest {
            request_id: self.limits.request_id,
            index,
            stage,
            text,
            conditioning: previous,
            seed: plan.stage_seed(clip, index),
            preview_every: plan.preview_every,
            deadline: started + timeout,
        };
        let report = StageReport::new(self.events, name, clip);
        let outcome = stages
            .generate(call, &report)
            .await
            .map_err(|source| self.call_failed(name, source))?;
        self.timings.push(StageTiming {
            stage: name.to_string(),
            clip,
            queued: outcome.queued,
            run: outcome.run,
            steps_run: outcome.steps,
        });
        self.send(Event::StageCompleted {
            stage: name.to_string(),
            clip,
            video: Some(outcome.video.clone()),
            elapsed: started.elapsed(),
        })
        .await?;
        Ok(outcome.video)
    }
}
