//! Encoded output and the gateway's HTTP API end to end, through the real binaries on the tiny
//! random-weight cascade: GIF / MP4 / PNG pieces over gRPC, server-sent events that mirror the
//! gRPC stream, errors as HTTP statuses, probes, API keys, and the playground driven in a real
//! headless Chromium.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use support::cluster::{Cluster, Extra, tiny_model};
use support::gateway::{final_video, generate, request};
use support::http::{get, post_json, send};
use tonic::Code;
use vidcascade_media::{OutputFormat, WriteOptions, encode_video};
use vidcascade_proto::v1::{self, generate_event::Event};

const STAGES: [&str; 3] = ["base", "tsr", "ssr"];

fn with_format(
    mut request: v1::GenerateRequest,
    format: v1::VideoFormat,
    chunk: u32,
) -> v1::GenerateRequest {
    request.output = Some(v1::OutputOptions {
        include_stage_videos: true,
        max_chunk_bytes: chunk,
        format: format as i32,
        ..Default::default()
    });
    request
}

/// The files of the final video, reassembled from its `Completed` pieces, checking that the
/// pieces are consecutive ranges.
fn final_files(events: &[Event]) -> anyhow::Result<Vec<Vec<u8>>> {
    let pieces: Vec<&v1::EncodedVideo> = events
        .iter()
        .filter_map(|e| match e {
            Event::Completed(c) => Some(c.encoded.as_ref().context("an encoded piece")),
            _ => None,
        })
        .collect::<anyhow::Result<_>>()?;
    assemble(&pieces)
}

fn assemble(pieces: &[&v1::EncodedVideo]) -> anyhow::Result<Vec<Vec<u8>>> {
    let count = pieces.first().context("no pieces")?.file_count as usize;
    let mut files = vec![Vec::new(); count];
    for piece in pieces {
        let file = &mut files[piece.file_index as usize];
        ensure!(piece.offset == file.len() as u64, "piece out of order");
        file.extend_from_slice(&piece.data);
    }
    for (file, piece) in files.iter().zip(pieces) {
        ensure!(!file.is_empty() && piece.file_count as usize == count);
    }
    Ok(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_encodes_gif_mp4_and_png_in_pieces() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let raw = generate(&cluster, request("a red circle moving left", 5)).await?;
    let video = vidcascade_proto::convert::video_from_wire(final_video(&raw)?)?;

    for (format, ours, chunk) in [
        (v1::VideoFormat::Gif, OutputFormat::Gif, 0),
        (v1::VideoFormat::Mp4, OutputFormat::Mp4, 0),
        (v1::VideoFormat::Png, OutputFormat::PngFrames, 0),
        // Small pieces: every file in several ranges, reassembling to the same bytes.
        (v1::VideoFormat::Gif, OutputFormat::Gif, 64),
    ] {
        let request = with_format(request("a red circle moving left", 5), format, chunk);
        let events = generate(&cluster, request).await?;
        let files = final_files(&events)?;
        // The same video as the raw stream, encoded as the media crate writes files.
        assert_eq!(
            files,
            encode_video(&video, ours, &WriteOptions::default())?,
            "{format:?}"
        );
        if chunk > 0 {
            let pieces = events
                .iter()
                .filter(|e| matches!(e, Event::Completed(_)))
                .count();
            assert!(pieces > 2, "{pieces} pieces of at most {chunk} bytes");
        }
        // Stage videos and previews are encoded too; raw frames are not sent besides.
        for stage in STAGES {
            let pieces: Vec<&v1::EncodedVideo> = events
                .iter()
                .filter_map(|e| match e {
                    Event::StageCompleted(c) if c.stage == stage => {
                        assert!(c.video.is_none());
                        c.encoded.as_ref()
                    }
                    _ => None,
                })
                .collect();
            let files = assemble(&pieces).with_context(|| format!("{stage} {format:?}"))?;
            let magic: &[u8] = match ours {
                OutputFormat::Gif => b"GIF89a",
                OutputFormat::Mp4 => b"\0\0\0",
                OutputFormat::PngFrames => b"\x89PNG",
            };
            assert!(
                files.iter().all(|f| f.starts_with(magic)),
                "{stage} {format:?}"
            );
            assert_eq!(pieces[0].media_type, ours.media_type());
        }
        if ours == OutputFormat::PngFrames {
            assert_eq!(files.len(), video.frames.len());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_format_is_refused_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let mut request = request("a red circle moving left", 5);
    request.output = Some(v1::OutputOptions {
        format: 42,
        ..Default::default()
    });
    let status = generate(&cluster, request).await.expect_err("format 42");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("output.format"),
        "{}",
        status.message()
    );
    Ok(())
}

/// The camelCase JSON key of an SSE event name (`stage_started` -> `stageStarted`).
fn json_key(name: &str) -> String {
    let mut parts = name.split('_');
    let first = parts.next().unwrap_or_default().to_string();
    parts.fold(first, |mut key, part| {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            key.push(c.to_ascii_uppercase());
            key.extend(chars);
        }
        key
    })
}

fn grpc_name(event: &Event) -> &'static str {
    match event {
        Event::Accepted(_) => "accepted",
        Event::StageStarted(_) => "stage_started",
        Event::Progress(_) => "progress",
        Event::Preview(_) => "preview",
        Event::StageCompleted(_) => "stage_completed",
        Event::Completed(_) => "completed",
        Event::ClipCompleted(_) => "clip_completed",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_generate_streams_the_grpc_events_as_server_sent_events() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let http = cluster
        .gateway
        .http
        .context("the gateway announced no HTTP address")?;
    let body = serde_json::json!({
        "prompt": "a red circle moving left",
        "seed": "7",
        "previewEvery": 2,
        "output": { "includeStageVideos": true },
    });
    let reply = post_json(http, "/v1/generate", &[], &body).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let events = reply.events();

    // Over gRPC, the same request with the HTTP default format (GIF).
    let mut grpc = request("a red circle moving left", 7);
    grpc.preview_every = 2;
    let grpc = generate(&cluster, with_format(grpc, v1::VideoFormat::Gif, 0)).await?;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let grpc_names: Vec<&str> = grpc.iter().map(grpc_name).collect();
    assert_eq!(names, grpc_names, "the SSE stream mirrors the gRPC stream");

    let mut gif = Vec::new();
    for event in &events {
        let json = event.json()?;
        let object = json.as_object().context("an object")?;
        assert_eq!(object.keys().collect::<Vec<_>>(), [&json_key(&event.name)]);
        // Proto3 JSON: the whole event parses back as a GenerateEvent.
        let parsed: v1::GenerateEvent = serde_json::from_str(&event.data)?;
        if let Some(Event::Completed(done)) = parsed.event {
            gif.extend(done.encoded.context("encoded")?.data);
        }
    }
    assert_eq!(
        events[0].json()?["accepted"]["seed"],
        "7",
        "uint64 as a string"
    );
    let preview = events
        .iter()
        .find(|e| e.name == "preview")
        .context("a preview")?;
    assert_eq!(
        preview.json()?["preview"]["encoded"][0]["mediaType"],
        "image/gif"
    );
    assert_eq!(vec![gif], final_files(&grpc)?, "the same GIF as over gRPC");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_statuses_with_json_and_the_probes_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let http = cluster.gateway.http.context("no HTTP address")?;

    assert_eq!(get(http, "/healthz").await?.status, 200);
    assert_eq!(get(http, "/readyz").await?.status, 200);
    // Every service's plaintext metrics port answers probes too (the kubelet cannot speak gRPC
    // over TLS): SERVING after warm-up.
    let metrics = cluster.stage("base").metrics.context("metrics")?;
    assert_eq!(get(metrics, "/readyz").await?.status, 200);
    assert_eq!(get(metrics, "/healthz").await?.text(), "ok\n");
    assert_eq!(get(http, "/nowhere").await?.status, 404);
    let page = get(http, "/").await?;
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert!(page.text().contains("id=\"generate\""));
    let info = get(http, "/v1/info").await?.json()?;
    let stages: Vec<&str> = info["stages"]
        .as_array()
        .context("stages")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(stages, ["text-encoder", "base", "tsr", "ssr"]);
    assert_eq!(info["outputFormats"][1], "VIDEO_FORMAT_GIF");

    let cases: [(&str, &str, u16, &str, &str); 4] = [
        (
            "/v1/generate",
            r#"{"prompt": ""}"#,
            400,
            "INVALID_ARGUMENT",
            "prompt",
        ),
        (
            "/v1/generate",
            r#"{"prompt": "#,
            400,
            "INVALID_ARGUMENT",
            "request body",
        ),
        (
            "/v1/generate",
            r#"{"promt": "x"}"#,
            400,
            "INVALID_ARGUMENT",
            "promt",
        ),
        (
            "/v1/generate?seed=3",
            r#"{"prompt": "x"}"#,
            400,
            "INVALID_ARGUMENT",
            "seed",
        ),
    ];
    for (path, body, status, code, names) in cases {
        let reply = send(
            http,
            "POST",
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await?;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        let json = reply.json()?;
        assert_eq!(json["code"], code, "{body}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body}: {message}");
    }

    // A deadline that passes mid-run ends the stream with an error event.
    let body = serde_json::json!({ "prompt": "a red circle", "stageOverrides": { "base": { "steps": 1000 } } });
    let reply = post_json(http, "/v1/generate?timeout=0.5", &[], &body).await?;
    assert_eq!(reply.status, 200);
    let last = reply.events().pop().context("events")?;
    assert_eq!(last.name, "error");
    assert_eq!(last.json()?["code"], "DEADLINE_EXCEEDED", "{}", last.data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_need_the_api_key_and_keep_to_the_rate_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "http-test-key-0123456789\n")?;
    let extra = Extra {
        gateway: vec![
            "--api-keys-file".into(),
            keys.display().to_string(),
            "--rate-limit-per-minute".into(),
            "2".into(),
        ],
        ..Extra::default()
    };
    let cluster = Cluster::launch(&model, extra).await?;
    let http = cluster.gateway.http.context("no HTTP address")?;
    let body = serde_json::json!({ "prompt": "a red circle moving left" });

    let reply = post_json(http, "/v1/generate", &[], &body).await?;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()?["code"], "UNAUTHENTICATED");
    let key = [("authorization", "Bearer http-test-key-0123456789")];
    let reply = post_json(http, "/v1/generate", &key, &body).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.events().last().map(|e| e.name.clone()).as_deref(),
        Some("completed")
    );
    // Probes carry no key and are not limited.
    assert_eq!(get(http, "/readyz").await?.status, 200);
    let _ = send(http, "GET", "/v1/info", &key, "").await?;
    let limited = send(http, "GET", "/v1/info", &key, "").await?;
    assert_eq!(limited.status, 429, "{}", limited.text());
    let retry: u64 = limited
        .header("retry-after")
        .context("Retry-After")?
        .parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    Ok(())
}

/// Runs the playground check in headless Chromium (`tests/playground/check.py`) with `args`.
async fn playground_check(http: std::net::SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/playground/check.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &format!("http://{http}/"), "--stages", &STAGES.join(",")])
        .args(args)
        .output()
        .await
        .context("running python3 (needs selenium, chromium and chromium-driver; .ci/test installs them)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "playground check {args:?} failed:\n{stdout}\n{stderr}"
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_shows_every_stage_video_in_headless_chromium() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let http = cluster.gateway.http.context("no HTTP address")?;
    let mut seen = BTreeMap::new();
    for format in ["gif", "mp4", "png"] {
        let stdout = playground_check(http, &["--format", format]).await?;
        seen.insert(
            format,
            stdout.contains(&format!("playground: ok ({format})")),
        );
    }
    let story = playground_check(http, &["--story"]).await?;
    assert!(story.contains("playground: ok"), "{story}");
    assert!(seen.values().all(|&ok| ok), "{seen:?}");
    Ok(())
}
