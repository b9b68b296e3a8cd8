//! Running a [`Plan`]: per clip, the text encoder, then every diffusion stage in order, each
//! conditioned on the previous stage's RGB8 output, under the caller's one deadline.
//!
//! Every call may use all the time left (less a small margin, so that a stage that runs out of
//! time answers before the run's own timer fires): no stage's queue time eats a fixed share, so
//! the run fails only when the caller's deadline really passes, and the error says where the time
//! went ("in stage `base`: waited 35.2 s for its first step, then ran 12 of 32 steps in 84.8 s,
//! of a 120.0 s deadline"). The run stops as soon as the deadline passes or the event receiver
//! is dropped; dropping the stage call's future is what cancels it in every backend.

use std::sync::Mutex;

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vidcascade_spec::{ErrorType, StageKind, Video};

use crate::PipelineError;
use crate::backend::{
    CallError, Embeddings, StageCall, StageCallRequest, StageClock, StageReport, TextEncoding,
};
use crate::context::{continuation_context, image_context};
use crate::event::{Event, StageTiming};
use crate::plan::Plan;

/// Time kept back from each call's deadline (at most 5 % of what is left), so a call that runs
/// out of time answers before the run's own timer fires.
const CALL_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

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
    let clock = Mutex::new(StageClock::default());
    let mut run = Run {
        plan,
        limits,
        events,
        timings: Vec::new(),
        clock: &clock,
    };
    tokio::select! {
        result = run.execute(encoder, stages) => result,
        () = tokio::time::sleep_until(limits.deadline.into()) => Err(limits.deadline_exceeded(&clock)),
        () = events.closed() => Err(PipelineError::Cancelled),
    }
}

impl RunLimits<'_> {
    /// The caller's deadline passed; `clock` says where.
    fn deadline_exceeded(&self, clock: &Mutex<StageClock>) -> PipelineError {
        let what = clock
            .lock()
            .map_or_else(|_| "running the cascade".into(), |c| c.describe());
        PipelineError::DeadlineExceeded {
            what,
            deadline: self.deadline.saturating_duration_since(self.started),
        }
    }
}

struct Run<'a> {
    plan: &'a Plan,
    limits: RunLimits<'a>,
    events: &'a mpsc::Sender<Event>,
    timings: Vec<StageTiming>,
    clock: &'a Mutex<StageClock>,
}

impl Run<'_> {
    async fn send(&self, event: Event) -> Result<(), PipelineError> {
        self.events
            .send(event)
            .await
            .map_err(|_| PipelineError::Cancelled)
    }

    /// Starts the clock of a call of `stage` and gives its deadline: the run's, less a margin.
    fn start_call(&self, stage: &str, total_steps: usize) -> Result<Instant, PipelineError> {
        if let Ok(mut clock) = self.clock.lock() {
            *clock = StageClock {
                called: Some((stage.to_string(), Instant::now())),
                first_step: None,
                steps: (0, total_steps),
            };
        }
        let remaining = self
            .limits
            .deadline
            .saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(self.limits.deadline_exceeded(self.clock));
        }
        Ok(self.limits.deadline - CALL_DEADLINE_MARGIN.min(remaining / 20))
    }

    /// A failed call of `stage`: the caller leaving is a cancellation, not a stage failure, and
    /// a call that ran out of time is the run's deadline passing.
    fn call_failed(&self, stage: &str, source: CallError) -> PipelineError {
        if source.error_type == ErrorType::Cancelled && self.events.is_closed() {
            return PipelineError::Cancelled;
        }
        if source.error_type == ErrorType::DeadlineExceeded {
            return self.limits.deadline_exceeded(self.clock);
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
        // Each stage's output of the previous clip, which the next clip continues from.
        let mut previous_clip: Vec<Video> = Vec::new();
        for clip in 0..self.plan.clips.len() {
            let text = self.encode(encoder, clip).await?;
            let mut outputs: Vec<Video> = Vec::with_capacity(self.plan.stages.len());
            for index in 0..self.plan.stages.len() {
                let context = self.context(clip, index, &previous_clip);
                let video = self
                    .stage(stages, clip, index, &text, outputs.last(), context.as_ref())
                    .await?;
                outputs.push(video);
            }
            if let Some(last) = outputs.last() {
                let new = Video {
                    frames: last.frames[self.plan.new_frames_from(clip).min(last.frames.len())..]
                        .to_vec(),
                    ..last.clone()
                };
                self.send(Event::ClipCompleted {
                    clip,
                    segment: self.plan.clips[clip].segment,
                    ends_segment: self.plan.ends_segment(clip),
                    first_frame: finals.iter().map(|v| v.frames.len()).sum(),
                    video: new.clone(),
                })
                .await?;
                finals.push(new);
            }
            previous_clip = outputs;
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
        let deadline = self.start_call(&name, 0)?;
        let started = Instant::now();
        let text = encoder
            .encode(&self.plan.clips[clip].prompt, deadline)
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

    /// The known leading frames of stage `index` in clip `clip`: the init image for the first
    /// clip, the overlap with the same stage's output of the previous clip for a continuing one.
    fn context(&self, clip: usize, index: usize, previous_clip: &[Video]) -> Option<Video> {
        let plan = self.plan;
        let output = plan.stages[index].manifest.output?;
        match (clip, &plan.init_image) {
            (0, Some(image)) => Some(image_context(
                image,
                output.width,
                output.height,
                output.fps,
            )),
            (0, None) => None,
            _ if plan.overlap == 0 => None,
            _ => previous_clip
                .get(index)
                .map(|v| continuation_context(v, plan.base_frames, plan.overlap)),
        }
    }

    async fn stage<E, S: StageCall<E>>(
        &mut self,
        stages: &S,
        clip: usize,
        index: usize,
        text: &Embeddings<E>,
        previous: Option<&Video>,
        context: Option<&Video>,
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
        let deadline = self.start_call(name, stage.settings.steps)?;
        let started = Instant::now();
        let call = StageCallRequest {
            request_id: self.limits.request_id,
            index,
            stage,
            text,
            conditioning: previous,
            context,
            seed: plan.stage_seed(clip, index),
            preview_every: plan.preview_every,
            deadline,
        };
        let report = StageReport::new(self.events, name, clip, self.clock);
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
        /// `(stage, wait, steps)`: that stage reports `steps` steps, then stalls for `wait`
        /// (queued, or a slow step) before it goes on.
        stall: Option<(usize, Duration, usize)>,
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
            if let Some((at, wait, steps)) = self.stall
                && at == call.index
            {
                for step in 1..=steps {
                    report.progress(step, 2).await?;
                }
                tokio::time::sleep(wait).await;
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
        collect_within(plan, fake, Duration::from_secs(60)).await
    }

    async fn collect_within(
        plan: &Plan,
        fake: &Fake,
        deadline: Duration,
    ) -> (Result<(), PipelineError>, Vec<Event>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let result = run(plan, limits(deadline), fake, fake, &tx).await;
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
            Event::ClipCompleted {
                clip,
                first_frame,
                video,
                ..
            } => format!("clip {clip} {first_frame}+{}", video.frames.len()),
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
            // This manifest's stages take no context frames: the clips are independent.
            expected.push(format!("clip {clip} {}+4", 4 * clip));
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
        // Every call may use the time left: each deadline is the run's, less a small margin.
        for s in &seen {
            let deadline = s.deadline.duration_since(started);
            assert!(
                deadline <= Duration::from_secs(60) && deadline >= Duration::from_millis(59_800),
                "call {} got {deadline:?} of a 60 s run",
                s.index
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_long_queue_at_one_stage_does_not_fail_a_run_that_can_still_finish()
    -> anyhow::Result<()> {
        let plan = plan(&GenerateRequest::new("red"), &manifest(), 0)?;
        // The base waits 70 % of the deadline for its first step; the rest is quick.
        let fake = Fake {
            stall: Some((0, Duration::from_millis(700), 0)),
            ..Fake::default()
        };
        let (result, events) = collect_within(&plan, &fake, Duration::from_secs(1)).await;
        result?;
        assert!(events.iter().any(|e| matches!(e, Event::Completed { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn a_passed_deadline_says_where_the_time_went() -> anyhow::Result<()> {
        let plan = plan(&GenerateRequest::new("red"), &manifest(), 0)?;
        let fake = Fake {
            stall: Some((1, Duration::from_secs(5), 1)),
            ..Fake::default()
        };
        let (result, _) = collect_within(&plan, &fake, Duration::from_millis(500)).await;
        let err = result.expect_err("tsr stalls past the deadline");
        assert_eq!(err.error_type(), ErrorType::DeadlineExceeded);
        let message = err.to_string();
        assert!(
            message.starts_with("deadline exceeded in stage `tsr`: waited ")
                && message.contains(" for its first step, then ran 1 of 2 steps in ")
                && message.ends_with(", of a 0.5 s deadline"),
            "{message}"
        );

        let queued = Fake {
            stall: Some((0, Duration::from_secs(5), 0)),
            ..Fake::default()
        };
        let (result, _) = collect_within(&plan, &queued, Duration::from_millis(300)).await;
        let message = result.expect_err("base never starts").to_string();
        assert!(
            message.starts_with("deadline exceeded in stage `base`: waited 0.")
                && message.contains("s and ran no step"),
            "{message}"
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
