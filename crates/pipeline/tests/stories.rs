//! Stories and image-to-video through `run` with a recording fake backend: every stage of a
//! continuing clip gets the overlap from its own output of the previous clip, the first clip's
//! stages get the init image at their size, each clip's new frames stream in `ClipCompleted`,
//! and the final video joins them without the overlapped frames.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vidcascade_pipeline::{
    CallError, Embeddings, Event, RunLimits, StageCall, StageCallRequest, StageOutcome,
    StageReport, TextEncoding, plan, run,
};
use vidcascade_spec::{GenerateRequest, Manifest, Segment, Video};

/// Text encoder, base 4 frames of 4x4 @ 2 fps, TSR to 8 frames, SSR to 8x8; every stage takes
/// context frames.
fn manifest() -> Manifest {
    let json = r#"{"name": "tiny", "stages": [
        {"name": "text-encoder", "kind": "text-encoder", "path": "text-encoder"},
        {"name": "base", "kind": "base", "path": "base", "max_context_frames": 4,
         "output": {"frames": 4, "height": 4, "width": 4, "fps": 2},
         "defaults": {"steps": 2}},
        {"name": "tsr", "kind": "tsr", "path": "tsr", "max_context_frames": 8,
         "input": {"frames": 4, "height": 4, "width": 4, "fps": 2},
         "output": {"frames": 8, "height": 4, "width": 4, "fps": 4},
         "defaults": {"steps": 2}},
        {"name": "ssr", "kind": "ssr", "path": "ssr", "max_context_frames": 8,
         "input": {"frames": 8, "height": 4, "width": 4, "fps": 4},
         "output": {"frames": 8, "height": 8, "width": 8, "fps": 4},
         "defaults": {"steps": 2}}]}"#;
    serde_json::from_str(json).expect("valid test manifest")
}

/// One call as the fake saw it: stage index, prompt length, and the context's frames (their
/// first byte each) and width.
type Seen = (usize, u32, Option<(Vec<u8>, usize)>);

/// Frame `f` of stage `i`'s output in clip `c` is filled with `100 c + 10 i + f`.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
}

impl TextEncoding for Recorder {
    type Embedding = u32;

    async fn encode(&self, prompt: &str, _: Instant) -> Result<Embeddings<u32>, CallError> {
        Ok(Embeddings {
            text: prompt.len() as u32,
            unconditional: 0,
        })
    }
}

impl StageCall<u32> for Recorder {
    async fn generate(
        &self,
        call: StageCallRequest<'_, u32>,
        report: &StageReport<'_>,
    ) -> Result<StageOutcome, CallError> {
        let n = {
            let mut seen = self.seen.lock().expect("lock");
            let context = call
                .context
                .map(|v| (v.frames.iter().map(|f| f[0]).collect(), v.width));
            seen.push((call.index, call.text.text, context));
            seen.len() - 1
        };
        report.progress(1, 1).await?;
        let shape = call.stage.manifest.output.expect("diffusion stage");
        let clip = n / 3;
        let frames = (0..shape.frames)
            .map(|f| vec![(100 * clip + 10 * call.index + f) as u8; shape.width * shape.height * 3])
            .collect();
        Ok(StageOutcome {
            video: Video {
                width: shape.width,
                height: shape.height,
                fps: shape.fps,
                frames,
            },
            queued: Duration::ZERO,
            run: Duration::from_millis(1),
            steps: 1,
        })
    }
}

async fn run_to_end(request: &GenerateRequest) -> anyhow::Result<(Vec<Event>, Vec<Seen>)> {
    let plan = plan(request, &manifest(), 0)?;
    let fake = Recorder::default();
    let (tx, mut rx) = mpsc::channel(1024);
    let started = Instant::now();
    let limits = RunLimits {
        request_id: "story",
        started,
        deadline: started + Duration::from_secs(60),
    };
    run(&plan, limits, &fake, &fake, &tx).await?;
    drop(tx);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    let seen = fake.seen.lock().expect("lock").clone();
    Ok((events, seen))
}

fn story(prompts: &[&str]) -> GenerateRequest {
    GenerateRequest {
        segments: prompts
            .iter()
            .map(|p| Segment {
                prompt: p.to_string(),
                seconds: 1.0,
            })
            .collect(),
        seed: Some(3),
        ..GenerateRequest::default()
    }
}

#[tokio::test]
async fn each_clip_continues_every_stage_from_its_own_output_of_the_clip_before()
-> anyhow::Result<()> {
    let (events, seen) = run_to_end(&story(&["red", "blue!", "green"])).await?;
    // Clip 0 starts from nothing; clips 1 and 2 get the overlap of 2 base frames: the base its
    // frames 2 and 3, the 8-frame stages frames 4, 5, 6 (the same instants), each from its own
    // output of the previous clip.
    let expected: Vec<Seen> = (0..3)
        .flat_map(|clip: usize| {
            let prompt = [3, 5, 5][clip];
            (0..3).map(move |i| {
                let context = (clip > 0).then(|| {
                    let from = (100 * (clip - 1) + 10 * i) as u8;
                    let width = if i == 2 { 8 } else { 4 };
                    match i {
                        0 => (vec![from + 2, from + 3], width),
                        _ => (vec![from + 4, from + 5, from + 6], width),
                    }
                });
                (i, prompt, context)
            })
        })
        .collect();
    assert_eq!(seen, expected);
    // Each clip streams its new final frames: all 8 of the first, then 8 - 4 per continuation.
    // One clip per segment here, so each clip completes its segment.
    let clips: Vec<(usize, usize, bool, usize, Vec<u8>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ClipCompleted {
                clip,
                segment,
                ends_segment,
                first_frame,
                video,
            } => Some((
                *clip,
                *segment,
                *ends_segment,
                *first_frame,
                video.frames.iter().map(|f| f[0]).collect(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        clips,
        vec![
            (0, 0, true, 0, (20..28).collect()),
            (1, 1, true, 8, (124..128).collect()),
            (2, 2, true, 12, (224..228).collect()),
        ]
    );
    // ClipCompleted comes right after the clip's last stage, before the next clip starts.
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::ClipCompleted { clip, .. } => Some(format!("clip {clip}")),
            Event::StageCompleted {
                stage,
                clip,
                video: Some(_),
                ..
            } => Some(format!("{clip} {stage}")),
            _ => None,
        })
        .collect();
    let want = [
        "0 base", "0 tsr", "0 ssr", "clip 0", "1 base", "1 tsr", "1 ssr", "clip 1", "2 base",
        "2 tsr", "2 ssr", "clip 2",
    ];
    assert_eq!(order, want);
    match events.last() {
        Some(Event::Completed { video, .. }) => {
            let firsts: Vec<u8> = video.frames.iter().map(|f| f[0]).collect();
            let want: Vec<u8> = (20..28).chain(124..128).chain(224..228).collect();
            assert_eq!(firsts, want);
        }
        other => anyhow::bail!("the run did not end with Completed: {other:?}"),
    }
    Ok(())
}

fn png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(rgb).expect("data");
    }
    out
}

#[tokio::test]
async fn an_init_image_is_every_stage_s_first_frame_at_its_size() -> anyhow::Result<()> {
    // A flat 16x16 image of value 200 becomes each stage's one known frame at 4x4 or 8x8.
    let mut request = GenerateRequest::new("red").with_seed(1);
    request.init_image_png = Some(png(16, 16, &[200; 16 * 16 * 3]));
    let (_, seen) = run_to_end(&request).await?;
    assert_eq!(
        seen,
        vec![
            (0, 3, Some((vec![200], 4))),
            (1, 3, Some((vec![200], 4))),
            (2, 3, Some((vec![200], 8))),
        ]
    );
    Ok(())
}

#[test]
fn a_story_is_limited_to_its_documented_length_and_a_bad_image_names_its_field() {
    let manifest = manifest();
    // Continuing clips: 2 s, then 1 s more each; the limit is 96 clips.
    let seconds = vidcascade_pipeline::plan::manifest_max_seconds(&manifest).expect("stages");
    assert!((seconds - (2.0 + 95.0)).abs() < 1e-9, "{seconds}");
    let long = GenerateRequest {
        segments: vec![Segment {
            prompt: "red".into(),
            seconds: seconds as f32 + 1.0,
        }],
        ..GenerateRequest::default()
    };
    let field = |request: &GenerateRequest| match plan(request, &manifest, 0) {
        Err(vidcascade_pipeline::PipelineError::InvalidArgument { field, .. }) => field,
        other => format!("not invalid: {other:?}"),
    };
    assert_eq!(field(&long), "segments[0].seconds");
    // The shortest segment still gets one clip.
    let tiny = GenerateRequest {
        segments: vec![Segment {
            prompt: "red".into(),
            seconds: f32::MIN_POSITIVE,
        }],
        ..GenerateRequest::default()
    };
    assert_eq!(
        plan(&tiny, &manifest, 0).map(|p| p.clips.len()).ok(),
        Some(1)
    );
    let mut bad = GenerateRequest::new("red");
    bad.init_image_png = Some(b"GIF89a".to_vec());
    assert_eq!(field(&bad), "init_image_png");
}
