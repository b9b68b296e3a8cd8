//! The one event stream of a cascade run, in order: per clip, the text encoder's
//! `StageStarted`/`StageCompleted`, then per diffusion stage `StageStarted`, `Progress` after
//! every step (with a `Preview` on the requested cadence) and `StageCompleted` with its video,
//! then `ClipCompleted` with the clip's new final frames; finally `Completed` with the whole
//! final video and the timings.

use std::time::Duration;

use vidcascade_spec::{StageKind, Video, VideoShape};

/// One event of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage (or the text encoder) begins work on a clip.
    StageStarted {
        /// The stage's name.
        stage: String,
        /// What it does.
        kind: StageKind,
        /// The video it will produce (none for the text encoder).
        output_shape: Option<VideoShape>,
        /// Denoising steps it will run (0 for the text encoder).
        total_steps: usize,
        /// Which clip of the request.
        clip: usize,
    },
    /// A denoising step finished.
    Progress {
        /// The stage.
        stage: String,
        /// Steps completed, 1-based.
        step: usize,
        /// Steps in the run.
        total_steps: usize,
        /// Which clip.
        clip: usize,
    },
    /// The stage's current x0 estimate, as RGB8.
    Preview {
        /// The stage.
        stage: String,
        /// The step it was taken after.
        step: usize,
        /// The estimate.
        video: Video,
        /// Which clip.
        clip: usize,
    },
    /// A stage finished a clip.
    StageCompleted {
        /// The stage.
        stage: String,
        /// Which clip.
        clip: usize,
        /// Its output (none for the text encoder).
        video: Option<Video>,
        /// Wall time of the call, queueing included.
        elapsed: Duration,
    },
    /// A clip's last stage finished: the frames it adds to the final video (a continuing clip's
    /// first frames cover the previous clip's last instants and are left out), so a long video
    /// plays from its start while later clips are still being made.
    ClipCompleted {
        /// Which clip.
        clip: usize,
        /// The segment it belongs to (0 for a single prompt).
        segment: usize,
        /// Whether it is the segment's last clip (the segment is then complete).
        ends_segment: bool,
        /// Index of `video`'s first frame in the final video.
        first_frame: usize,
        /// The new final frames.
        video: Video,
    },
    /// Every clip's final frames, played one after another, and where the time went.
    Completed {
        /// The final video.
        video: Video,
        /// One entry per stage call (text encoder included), in run order.
        timings: Vec<StageTiming>,
    },
}

/// Where one stage call's time went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTiming {
    /// The stage (or the text encoder).
    pub stage: String,
    /// Which clip.
    pub clip: usize,
    /// Time waiting in the stage's queue.
    pub queued: Duration,
    /// Time from admission to the output.
    pub run: Duration,
    /// Denoising steps run.
    pub steps_run: usize,
}
