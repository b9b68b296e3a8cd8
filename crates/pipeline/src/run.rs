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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vidcascade_spec::{GenerateRequest, Segment};

    use super::*;
    use crate::backend::StageOutcome;
    use crate::plan::plan;
    use crate::plan::tests::manifest;

    /// What a fake stage saw of one call.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        index: usize,
        seed: u64,
        conditioning_frames: Option<usize>,
        embedding: u32,
        deadline: Instant,
    }

    /// Encodes a prompt as its length; each stage returns a flat video of its output shape
    /// whose pixels are the stage index, after reporting two steps. `fail_at` fails that stage.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<Seen>>,
        fail_at: Option<usize>,
    }

    impl TextEncoding for Fake {
        type Embedding = u32;

        async fn encode(&self, prompt: &str, _: Instant) -> Result<Embeddings<u32>, CallError> {
            Ok(Embeddings {
                text: prompt.len() as u32,
                unconditional: 0,
            })
        }
    }

    impl StageCall<u32> for Fake {
        async fn generate(
            &self,
            call: StageCallRequest<'_, u32>,
            report: &StageReport<'_>,
        ) -> Result<StageOutcome, CallError> {
            self.seen.lock().expect("lock").push(Seen {
                index: call.index,
                seed: call.seed,
                conditioning_frames: call.conditioning.map(|v| v.frames.len()),
                embedding: call.text.text,
                deadline: call.deadline,
            });
            if self.fail_at == Some(call.index) {
                return Err(CallError::new(
                    ErrorType::ResourceExhausted,
                    "queue is full",
                ));
            }
            report.progress(1, 2).await?;
            report.progress(2, 2).await?;
            let shape = call.stage.manifest.output.expect("diffusion stage");
            Ok(StageOutcome {
                video: Video {
                    width: shape.width,
                    height: shape.height,
                    fps: shape.fps,
                    frames: vec![
                        vec![call.index as u8; shape.width * shape.height * 3];
                        shape.frames
                    ],
                },
                queued: Duration::ZERO,
                run: Duration::from_millis(1),
                steps: 2,
            })
        }
    }

    fn limits(deadline: Duration) -> RunLimits<'static> {
        let started = Instant::now();
        RunLimits {
            request_id: "test",
            started,
            deadline: started + deadline,
        }
    }

    async fn collect(plan: &Plan, fake: &Fake) -> (Result<(), PipelineError>, Vec<Event>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let result = run(plan, limits(Duration::from_secs(60)), fake, fake, &tx).await;
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        (result, events)
    }

    fn describe(event: &Event) -> String {
        match event {
            Event::StageStarted { stage, clip, .. } => format!("{clip} start {stage}"),
            Event::Progress { stage, step, .. } => format!("{stage} {step}"),
            Event::Preview { stage, .. } => format!("preview {stage}"),
            Event::StageCompleted { stage, video, .. } => {
                format!(
                    "done {stage} {}",
                    video.as_ref().map_or(0, |v| v.frames.len())
                )
            }
            Event::Completed { video, timings } => {
                format!("completed {} {}", video.frames.len(), timings.len())
            }
        }
    }

    #[tokio::test]
    async fn clips_run_every_stage_in_order_each_conditioned_on_the_last() -> anyhow::Result<()> {
        let request = GenerateRequest {
            segments: vec![
                Segment {
                    prompt: "red".into(),
                    seconds: 1.0,
                },
                Segment {
                    prompt: "blue!".into(),
                    seconds: 1.0,
                },
            ],
            seed: Some(9),
            ..GenerateRequest::default()
        };
        let plan = plan(&request, &manifest(), 0)?;
        let fake = Fake::default();
        let started = Instant::now();
        let (result, events) = collect(&plan, &fake).await;
        result?;
        let mut expected = Vec::new();
        for clip in 0..2 {
            expected.push(format!("{clip} start text-encoder"));
            expected.push("done text-encoder 0".to_string());
            for (stage, frames) in [("base", 2), ("tsr", 4), ("ssr", 4)] {
                expected.extend([
                    format!("{clip} start {stage}"),
                    format!("{stage} 1"),
                    format!("{stage} 2"),
                    format!("done {stage} {frames}"),
                ]);
            }
        }
        expected.push("completed 8 8".into());
        assert_eq!(events.iter().map(describe).collect::<Vec<_>>(), expected);

        let seen = fake.seen.lock().expect("lock").clone();
        let calls: Vec<(usize, Option<usize>, u32)> = seen
            .iter()
            .map(|s| (s.index, s.conditioning_frames, s.embedding))
            .collect();
        assert_eq!(
            calls,
            vec![
                (0, None, 3),
                (1, Some(2), 3),
                (2, Some(4), 3),
                (0, None, 5),
                (1, Some(2), 5),
                (2, Some(4), 5),
            ]
        );
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.seed, plan.stage_seed(i / 3, s.index));
        }
        // Each call gets its cost's share of what is left (here, of nearly all 60 s): the first
        // of six calls its share of the whole, none past the run's deadline.
        let costs = plan.remaining_costs(0, 0);
        let first_share = Duration::from_secs(60).mul_f64(costs[0] / costs.iter().sum::<f64>());
        let first = seen[0].deadline.duration_since(started);
        assert!(first <= first_share && first + Duration::from_secs(1) > first_share);
        assert!(
            seen.iter()
                .all(|s| s.deadline <= started + Duration::from_secs(61))
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_stage_ends_the_run_with_its_error_type() -> anyhow::Result<()> {
        let plan = plan(&GenerateRequest::new("red"), &manifest(), 0)?;
        let fake = Fake {
            fail_at: Some(1),
            ..Fake::default()
        };
        let (result, events) = collect(&plan, &fake).await;
        let err = result.expect_err("tsr failed");
        assert_eq!(err.error_type(), ErrorType::ResourceExhausted);
        assert_eq!(err.to_string(), "stage `tsr`: queue is full");
        assert!(!events.iter().any(|e| matches!(e, Event::Completed { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn a_departed_caller_cancels_the_run() -> anyhow::Result<()> {
        let plan = plan(&GenerateRequest::new("red"), &manifest(), 0)?;
        let fake = Fake::default();
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let result = run(&plan, limits(Duration::from_secs(60)), &fake, &fake, &tx).await;
        assert!(
            matches!(result, Err(PipelineError::Cancelled)),
            "{result:?}"
        );
        assert!(
            fake.seen.lock().expect("lock").is_empty(),
            "no stage was called"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_passed_deadline_stops_before_calling_anything() -> anyhow::Result<()> {
        let plan = plan(&GenerateRequest::new("red"), &manifest(), 0)?;
        let fake = Fake::default();
        let (tx, _rx) = mpsc::channel(64);
        let result = run(&plan, limits(Duration::ZERO), &fake, &fake, &tx).await;
        let err = result.expect_err("no time");
        assert_eq!(err.error_type(), ErrorType::DeadlineExceeded);
        assert!(fake.seen.lock().expect("lock").is_empty());
        Ok(())
    }
}
