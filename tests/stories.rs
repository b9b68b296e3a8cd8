//! Stories and image-to-video end to end through the real binaries, on the tiny random-weight
//! repository (whose stages all take context frames): a 3-segment story's event order, each
//! clip's frames streamed as it completes and equal to the in-process cascade's video; init
//! image validation over gRPC and frame 0 pinned to the image; a story cancelled, or out of
//! time, in its middle stops every stage and calls none for the clips after it.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use support::cluster::{Cluster, tiny_model};
use support::gateway::{final_video, generate, in_process, request};
use tonic::Code;
use vidcascade_proto::convert::video_from_wire;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};

/// One clip per prompt (the shortest length a segment can ask for).
fn story(prompts: &[&str], seed: u64) -> v1::GenerateRequest {
    v1::GenerateRequest {
        segments: prompts
            .iter()
            .map(|p| v1::Segment {
                prompt: p.to_string(),
                seconds: f32::MIN_POSITIVE,
            })
            .collect(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// The order of the events that mark stages and clips (progress left out).
fn milestones(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::StageStarted(s) => Some(format!("{} start {}", s.clip, s.stage)),
            Event::StageCompleted(s) => Some(format!("{} done {}", s.clip, s.stage)),
            Event::ClipCompleted(c) => Some(format!(
                "{} clip of segment {} (ends it: {}) from frame {}",
                c.clip, c.segment, c.segment_completed, c.first_frame
            )),
            Event::Completed(c) => Some(format!("completed (video: {})", c.video.is_some())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_segment_story_streams_each_clip_when_done_and_matches_the_in_process_cascade()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let request = story(
        &[
            "a red circle moving left",
            "a red circle moving up",
            "a red circle moving right",
        ],
        11,
    );
    let events = generate(&cluster, request.clone()).await?;
    ensure!(matches!(events.first(), Some(Event::Accepted(a)) if a.clips == 3));

    // Per clip: the encoder and every stage in order, then the clip's new frames (all 8 of the
    // first; the 4 after the overlap of each later one), before the next clip starts.
    let mut want = Vec::new();
    for (clip, first_frame) in [(0, 0), (1, 8), (2, 12)] {
        for stage in ["text-encoder", "base", "tsr", "ssr"] {
            want.push(format!("{clip} start {stage}"));
            want.push(format!("{clip} done {stage}"));
        }
        want.push(format!(
            "{clip} clip of segment {clip} (ends it: true) from frame {first_frame}"
        ));
    }
    want.push("completed (video: true)".into());
    assert_eq!(milestones(&events), want);

    // The clips' frames, one after another, are the final video, and the in-process
    // cascade's: the context frames cross the wire intact.
    let mut clip_frames = Vec::new();
    for event in &events {
        if let Event::ClipCompleted(c) = event {
            clip_frames.extend(c.video.clone().context("a clip without frames")?.frames);
        }
    }
    let video = final_video(&events)?;
    assert_eq!(video.total_frames, 16);
    assert!(
        clip_frames == video.frames,
        "the clips' frames are not the final video"
    );
    let expected = in_process(&model, &request).await?;
    assert!(
        video.frames == expected.frames,
        "the services' story differs from the in-process one"
    );

    // Asked not to repeat them, the gateway sends the frames only in the clips.
    let mut once = request.clone();
    once.output = Some(v1::OutputOptions {
        omit_final_video: true,
        ..Default::default()
    });
    let events = generate(&cluster, once).await?;
    match events.last() {
        Some(Event::Completed(c)) => {
            ensure!(
                c.video.is_none() && c.encoded.is_none(),
                "frames sent twice"
            );
            ensure!(c.timings.len() == 12, "{} timings", c.timings.len());
        }
        other => bail!("the story ended with {other:?}"),
    }
    // A single prompt has one clip: its frames come only in `Completed`.
    let events = generate(&cluster, request_with_omit("a red circle")).await?;
    ensure!(!events.iter().any(|e| matches!(e, Event::ClipCompleted(_))));
    final_video(&events)?;
    Ok(())
}

fn request_with_omit(prompt: &str) -> v1::GenerateRequest {
    v1::GenerateRequest {
        output: Some(v1::OutputOptions {
            omit_final_video: true,
            ..Default::default()
        }),
        ..request(prompt, 5)
    }
}

/// An RGB PNG of `width` x `height` in one colour.
fn solid_png(width: usize, height: usize, rgb: [u8; 3]) -> anyhow::Result<Vec<u8>> {
    let pixels: Vec<u8> = rgb
        .iter()
        .copied()
        .cycle()
        .take(width * height * 3)
        .collect();
    Ok(vidcascade_media::encode_png(
        std::path::Path::new("init.png"),
        width,
        height,
        &pixels,
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_images_are_validated_and_a_valid_one_becomes_frame_0() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let with_image = |png: Vec<u8>| v1::GenerateRequest {
        init_image_png: Some(png),
        ..request("a red circle moving left", 3)
    };
    let cases = [
        (b"GIF89a not a png".to_vec(), "is not a readable PNG"),
        (
            solid_png(5000, 1, [1, 2, 3])?,
            "is 5000x1; each side must be 1..=4096",
        ),
    ];
    for (png, reason) in cases {
        let status = generate(&cluster, with_image(png))
            .await
            .err()
            .context("an invalid init image was accepted")?;
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().starts_with("init_image_png: ") && status.message().contains(reason),
            "{}",
            status.message()
        );
    }
    // A 40x24 image, resized to every stage's size by area averaging (a solid colour stays
    // itself): the final video starts from it.
    let colour = [200u8, 30, 60];
    let events = generate(&cluster, with_image(solid_png(40, 24, colour)?)).await?;
    let video = video_from_wire(final_video(&events)?)?;
    let worst = video.frames[0]
        .chunks_exact(3)
        .flat_map(|p| p.iter().zip(colour).map(|(a, b)| a.abs_diff(b)))
        .max()
        .unwrap_or(u8::MAX);
    assert!(
        worst <= 2,
        "frame 0 is up to {worst} levels off the init image"
    );
    Ok(())
}

/// How a story run ended: its status, and the clips whose frames arrived before that.
struct StoryEnd {
    status: Option<tonic::Status>,
    clips_done: usize,
    first_clip_after: Option<Duration>,
}

/// Runs `call` to its end (or until `leave_during_clip` has its second stage a few steps in).
async fn run_story(
    cluster: &Cluster,
    call: tonic::Request<v1::GenerateRequest>,
    leave_during_clip: Option<u32>,
) -> anyhow::Result<StoryEnd> {
    let started = Instant::now();
    let mut stream = GatewayClient::new(cluster.gateway.channel().await?)
        .generate(call)
        .await?
        .into_inner();
    let mut end = StoryEnd {
        status: None,
        clips_done: 0,
        first_clip_after: None,
    };
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event.event,
            Ok(None) => return Ok(end),
            Err(status) => {
                end.status = Some(status);
                return Ok(end);
            }
        };
        match event {
            Some(Event::ClipCompleted(c)) if c.segment_completed => {
                end.clips_done += 1;
                end.first_clip_after.get_or_insert(started.elapsed());
            }
            Some(Event::Progress(p))
                if Some(p.clip) == leave_during_clip && p.stage == "tsr" && p.step >= 3 =>
            {
                return Ok(end);
            }
            _ => {}
        }
    }
}

/// A 3-segment story whose TSR stage takes many steps.
fn slow_story() -> v1::GenerateRequest {
    let mut request = story(&["a red circle", "a blue square", "a green triangle"], 21);
    request.stage_overrides.insert(
        "tsr".into(),
        v1::SamplerSettings {
            steps: Some(300),
            ..Default::default()
        },
    );
    request
}

/// What the stages have counted so far.
#[derive(Debug, Clone, Copy)]
struct Counts {
    base_completed: f64,
    ssr_completed: f64,
    /// Requests cancelled or out of time, over every stage.
    stopped: f64,
}

async fn counts(cluster: &Cluster) -> anyhow::Result<Counts> {
    let mut stopped = 0.0;
    for stage in ["base", "tsr", "ssr"] {
        for outcome in ["cancelled", "deadline_exceeded"] {
            stopped += outcome_count(cluster, stage, outcome).await?;
        }
    }
    Ok(Counts {
        base_completed: outcome_count(cluster, "base", "completed").await?,
        ssr_completed: outcome_count(cluster, "ssr", "completed").await?,
        stopped,
    })
}

/// Waits until no stage has pending work and one has counted the stopped request; then checks
/// that since `before` the last stage finished the `clips_done` clips the client got (plus at
/// most `in_flight`, one whose frames were on their way when the run stopped) and the base at
/// most one more (the clip stopped after it): nothing ran for the clips after.
async fn stages_stopped(
    cluster: &Cluster,
    before: Counts,
    clips_done: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    let now = loop {
        let mut pending = 0.0;
        for stage in ["base", "tsr", "ssr"] {
            pending += cluster
                .stage(stage)
                .gauge("vidcascade_stage_pending_steps", &[("stage", stage)])
                .await?
                .unwrap_or(1.0);
        }
        let now = counts(cluster).await?;
        if pending == 0.0 && now.stopped > before.stopped {
            break now;
        }
        if Instant::now() > until {
            bail!("stages still busy: {pending} pending steps, {now:?} after {before:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ssr = (now.ssr_completed - before.ssr_completed) as usize;
    let base = (now.base_completed - before.base_completed) as usize;
    ensure!(
        (clips_done..=clips_done + in_flight).contains(&ssr),
        "ssr completed {ssr} clips; the client got {clips_done}"
    );
    ensure!(base <= ssr + 1, "base completed {base} clips, ssr {ssr}");
    Ok(())
}

async fn outcome_count(cluster: &Cluster, stage: &str, outcome: &str) -> anyhow::Result<f64> {
    cluster
        .stage(stage)
        .metric(
            "vidcascade_stage_requests_total",
            &[("stage", stage), ("outcome", outcome)],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_story_cancelled_in_its_middle_stops_every_stage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    // Leave while the second clip's TSR stage runs.
    let before = counts(&cluster).await?;
    let end = run_story(&cluster, tonic::Request::new(slow_story()), Some(1)).await?;
    ensure!(end.status.is_none(), "the story failed: {:?}", end.status);
    assert_eq!(end.clips_done, 1);
    stages_stopped(&cluster, before, 1, 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_story_out_of_time_in_its_middle_stops_every_stage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    // How long a clip takes here, now; then deadlines that should fall inside the story,
    // adjusted when one falls before its first clip or after its last.
    let full = run_story(&cluster, tonic::Request::new(slow_story()), None).await?;
    ensure!(full.status.is_none(), "the story failed: {:?}", full.status);
    let mut deadline = full
        .first_clip_after
        .context("no clip completed")?
        .mul_f64(1.5);
    for _attempt in 0..5 {
        let before = counts(&cluster).await?;
        let mut call = tonic::Request::new(slow_story());
        call.set_timeout(deadline);
        let end = run_story(&cluster, call, None).await?;
        match (end.status, end.clips_done) {
            (None, _) => deadline = deadline.mul_f64(0.6),
            (Some(status), 0) => {
                assert_eq!(
                    status.code(),
                    Code::DeadlineExceeded,
                    "{}",
                    status.message()
                );
                deadline = deadline.mul_f64(1.6);
            }
            (Some(status), done) => {
                assert_eq!(
                    status.code(),
                    Code::DeadlineExceeded,
                    "{}",
                    status.message()
                );
                // The deadline may fall as a clip's last frames are being sent.
                return stages_stopped(&cluster, before, done, 1).await;
            }
        }
        // Let the stopped run settle before the next attempt counts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("no deadline fell inside the story (the last tried: {deadline:?})")
}
