//! End to end through the real binaries (`vidcascade-text-encoder`, `vidcascade-stage`,
//! `vidcascade-gateway`) on 127.0.0.1 with free ports, on the tiny random-weight repository:
//! event order and shapes (and the same video as the in-process cascade), previews, a client
//! leaving mid-generation, a full queue, invalid requests, retry on a dead replica, SIGTERM
//! drain, configuration errors, and a Python grpcio client.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use candle_core::Device;
use support::cluster::{Cluster, GATEWAY_BIN, STAGE_BIN, Service, tiny_model};
use support::gateway::{final_video, generate, in_process, request};
use tonic::Code;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::video_stage_client::VideoStageClient;
use vidcascade_proto::v1::{self, generate_event::Event, stage_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_streams_every_stage_in_order_and_matches_the_in_process_cascade()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let mut request = request("a red circle moving left", 7);
    request.preview_every = 1;
    request.output = Some(v1::OutputOptions {
        include_stage_videos: true,
        ..Default::default()
    });
    let events = generate(&cluster, request).await?;

    // Order: accepted; per stage started, progress (1..=N, previews between), completed; then
    // the final video.
    ensure!(matches!(events.first(), Some(Event::Accepted(a)) if a.seed == 7 && a.clips == 1));
    let cascade = EmbeddedCascade::load(&model, &Device::Cpu)?;
    let mut expected_stages = vec!["text-encoder".to_string()];
    expected_stages.extend(
        cascade
            .manifest()
            .diffusion_stages()
            .map(|s| s.name.clone()),
    );
    let mut started = Vec::new();
    let mut current: Option<String> = None;
    let mut steps: HashMap<String, Vec<u32>> = HashMap::new();
    let mut previews: HashMap<String, usize> = HashMap::new();
    let mut stage_videos: HashMap<String, v1::Video> = HashMap::new();
    let mut completed_seen = false;
    for event in &events[1..] {
        match event {
            Event::Accepted(_) => bail!("accepted again after the run started"),
            Event::StageStarted(s) => {
                ensure!(
                    current.is_none(),
                    "stage {} started inside another",
                    s.stage
                );
                started.push(s.stage.clone());
                current = Some(s.stage.clone());
            }
            Event::Progress(p) => {
                ensure!(
                    current.as_deref() == Some(p.stage.as_str()),
                    "progress outside its stage"
                );
                steps.entry(p.stage.clone()).or_default().push(p.step);
            }
            Event::Preview(p) => {
                ensure!(
                    current.as_deref() == Some(p.stage.as_str()),
                    "preview outside its stage"
                );
                *previews.entry(p.stage.clone()).or_default() += 1;
            }
            Event::StageCompleted(c) => {
                ensure!(current.as_deref() == Some(c.stage.as_str()));
                if let Some(video) = &c.video {
                    ensure!(
                        video.first_frame_index == 0
                            && video.total_frames as usize == video.frames.len()
                    );
                    stage_videos.insert(c.stage.clone(), video.clone());
                }
                current = None;
            }
            Event::Completed(_) => {
                ensure!(
                    current.is_none(),
                    "final video before the last stage completed"
                );
                completed_seen = true;
            }
            Event::ClipCompleted(_) => bail!("a one-clip video sent a clip event"),
        }
    }
    ensure!(completed_seen);
    assert_eq!(started, expected_stages);
    for stage in cascade.manifest().diffusion_stages() {
        let total = stage.defaults.steps as u32;
        assert_eq!(
            steps[&stage.name],
            (1..=total).collect::<Vec<_>>(),
            "{}",
            stage.name
        );
        assert_eq!(previews[&stage.name], total as usize, "a preview per step");
        let shape = stage.output.context("output")?;
        let video = &stage_videos[&stage.name];
        assert_eq!(
            (
                video.frames.len(),
                video.height as usize,
                video.width as usize
            ),
            (shape.frames, shape.height, shape.width)
        );
    }
    let timings = match events.last() {
        Some(Event::Completed(c)) => c.timings.clone(),
        other => bail!("last event is {other:?}"),
    };
    assert_eq!(timings.len(), expected_stages.len());

    // Same seed, same steps: the services produce the in-process cascade's video exactly.
    let video = final_video(&events)?;
    let same = support::gateway::request("a red circle moving left", 7);
    let expected = &in_process(&model, &same).await?;
    assert_eq!(
        (video.width as usize, video.height as usize),
        (expected.width, expected.height)
    );
    assert!(
        video.frames == expected.frames,
        "service video differs from the in-process one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_described_and_warm_up_and_start_up_count_as_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let base = cluster.stage("base");
    for service in [base, &cluster.encoder, &cluster.gateway] {
        let text = service.metrics_text().await?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or(&text);
        for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "{}: {name} has no # HELP",
                service.name
            );
        }
        let build = support::cluster::metric_value(&text, "vidcascade_build_info", &[]);
        assert_eq!(build, Some(1.0), "{}: vidcascade_build_info", service.name);
    }
    // The warm-up step and the gateway's start-up checks are not traffic.
    let steps = base
        .metric("vidcascade_stage_step_seconds_count", &[("stage", "base")])
        .await?;
    assert_eq!(steps, 0.0, "the warm-up step was counted");
    let encodes = cluster
        .encoder
        .metric("vidcascade_encoder_seconds_count", &[])
        .await?;
    assert_eq!(encodes, 0.0, "the encoder's warm-up was counted");
    let retries = cluster
        .gateway
        .metric("vidcascade_gateway_stage_retries_total", &[])
        .await?;
    assert_eq!(retries, 0.0, "start-up probes counted as retries");
    // A generation is counted, its latency labelled by outcome.
    final_video(&generate(&cluster, request("a red circle", 1)).await?)?;
    let latency = cluster
        .gateway
        .metric(
            "vidcascade_gateway_request_seconds_count",
            &[("outcome", "completed")],
        )
        .await?;
    assert_eq!(latency, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_the_service_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let mut zero_steps = request("a red circle", 1);
    zero_steps.stage_overrides.insert(
        "base".into(),
        v1::SamplerSettings {
            steps: Some(0),
            ..Default::default()
        },
    );
    let mut unknown_stage = request("a red circle", 1);
    unknown_stage
        .stage_overrides
        .insert("upscaler".into(), v1::SamplerSettings::default());
    let mut guidance = request("a red circle", 1);
    guidance.stage_overrides.insert(
        "tsr".into(),
        v1::SamplerSettings {
            guidance: Some(80.0),
            ..Default::default()
        },
    );
    let mut bad_sampler = request("a red circle", 1);
    bad_sampler.stage_overrides.insert(
        "base".into(),
        v1::SamplerSettings {
            sampler: 99,
            ..Default::default()
        },
    );
    // A 100 KB stage name is named, but not echoed whole.
    let mut huge_name = request("a red circle", 1);
    huge_name
        .stage_overrides
        .insert("x".repeat(100_000), v1::SamplerSettings::default());
    match generate(&cluster, huge_name).await {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().len() < 400,
                "{} bytes",
                status.message().len()
            );
        }
        Ok(_) => bail!("accepted an unknown 100 KB stage name"),
    }
    // The limits are published...
    let info = GatewayClient::new(cluster.gateway.channel().await?)
        .info(v1::InfoRequest {})
        .await?
        .into_inner();
    assert_eq!((info.max_prompt_tokens, info.max_prompt_bytes), (16, 2048));
    // ...and longer than the tiny encoder's 16 tokens is the client's fault, not INTERNAL.
    let too_many_tokens = request(&vec!["red"; 20].join(" "), 1);
    for (request, field) in [
        (
            too_many_tokens,
            "prompt: prompt 0 is 21 tokens long; the limit is 16 tokens",
        ),
        (bad_sampler, "stage_overrides[base].sampler"),
        (request("", 1), "prompt"),
        (request(&"word ".repeat(1000), 1), "prompt"),
        (zero_steps, "stage_overrides[base].steps"),
        (unknown_stage, "stage_overrides[upscaler]"),
        (guidance, "stage_overrides[tsr].guidance"),
    ] {
        match generate(&cluster, request).await {
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
                assert!(
                    status.message().contains(field),
                    "{field} not in {:?}",
                    status.message()
                );
            }
            Ok(events) => bail!(
                "accepted an invalid request for {field}: {} events",
                events.len()
            ),
        }
    }
    // A stage refuses an embedding longer than its token limit before decoding it.
    let channel = cluster.stage("base").channel().await?;
    let long = v1::Tensor::from_f32(&[32768, 1], &vec![0.0; 32768], v1::DType::F32)?;
    let status = VideoStageClient::new(channel)
        .generate(v1::StageRequest {
            text_embedding: Some(long.clone()),
            uncond_embedding: Some(long),
            ..Default::default()
        })
        .await
        .expect_err("too many tokens");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status
            .message()
            .contains("text_embedding: 32768 tokens; this stage takes at most 16"),
        "{}",
        status.message()
    );
    // ... and a sampler value the contract does not define.
    let channel = cluster.stage("base").channel().await?;
    let mut bad_sampler = stage_request(cluster.stage("base"), 2).await?;
    bad_sampler.sampler = Some(v1::SamplerSettings {
        sampler: 99,
        ..Default::default()
    });
    let status = VideoStageClient::new(channel)
        .generate(bad_sampler)
        .await
        .expect_err("sampler 99");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("sampler.sampler"),
        "{}",
        status.message()
    );
    // A stage checks its own input too: an embedding of the wrong width.
    let channel = cluster.stage("base").channel().await?;
    let bad = v1::Tensor::from_f32(&[2, 3], &[0.0; 6], v1::DType::F32)?;
    let status = VideoStageClient::new(channel)
        .generate(v1::StageRequest {
            text_embedding: Some(bad.clone()),
            uncond_embedding: Some(bad),
            ..Default::default()
        })
        .await
        .err()
        .context("a bad embedding was accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("text_embedding"),
        "{}",
        status.message()
    );
    let events = generate(&cluster, request("a blue square", 2)).await?;
    final_video(&events)?;
    Ok(())
}

/// Waits until `check` passes or `timeout` runs out.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let until = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_stage_which_then_serves_the_next_request()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let mut long = request("a red circle", 3);
    long.stage_overrides.insert(
        "base".into(),
        v1::SamplerSettings {
            steps: Some(1000),
            ..Default::default()
        },
    );
    let mut stream = GatewayClient::new(cluster.gateway.channel().await?)
        .generate(long)
        .await?
        .into_inner();
    // Leave once the base stage is a few steps in.
    while let Some(event) = stream.message().await? {
        if let Some(Event::Progress(p)) = event.event
            && p.stage == "base"
            && p.step >= 3
        {
            break;
        }
    }
    drop(stream);
    let base = cluster.stage("base");
    eventually(Duration::from_secs(20), || async {
        let cancelled = base_outcome(base, "cancelled").await?;
        let pending = base
            .gauge("vidcascade_stage_pending_steps", &[("stage", "base")])
            .await?;
        Ok(cancelled >= 1.0 && pending == Some(0.0))
    })
    .await
    .context("the base stage did not stop the abandoned request")?;
    let events = generate(&cluster, request("a green triangle", 4)).await?;
    final_video(&events)?;
    let completed = base_outcome(base, "completed").await?;
    assert!(completed >= 1.0);
    Ok(())
}

/// A direct base-stage request of `steps` steps, with zero embeddings of the width the stage
/// reports in its `Info`.
async fn stage_request(base: &Service, steps: u32) -> anyhow::Result<v1::StageRequest> {
    let dim = VideoStageClient::new(base.channel().await?)
        .info(v1::InfoRequest {})
        .await?
        .into_inner()
        .text_embedding_dim as usize;
    let text = v1::Tensor::from_f32(&[3, dim], &vec![0.0; 3 * dim], v1::DType::F32)?;
    Ok(v1::StageRequest {
        request_id: "queue-test".into(),
        text_embedding: Some(text.clone()),
        uncond_embedding: Some(text),
        seed: 1,
        sampler: Some(v1::SamplerSettings {
            steps: Some(steps),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Reads a stage stream to its end; returns the steps it reported.
/// How many of the base stage's requests ended with `outcome`.
async fn base_outcome(base: &Service, outcome: &str) -> anyhow::Result<f64> {
    base.metric(
        "vidcascade_stage_requests_total",
        &[("stage", "base"), ("outcome", outcome)],
    )
    .await
}

/// Reads a stage stream until its first progress event: the request is running.
async fn until_progress(stream: &mut tonic::Streaming<v1::StageEvent>) -> anyhow::Result<()> {
    loop {
        match stream.message().await?.and_then(|e| e.event) {
            Some(stage_event::Event::Progress(_)) => return Ok(()),
            Some(_) => {}
            None => bail!("the request ended before running"),
        }
    }
}

async fn drain_stage_stream(
    mut stream: tonic::Streaming<v1::StageEvent>,
) -> Result<(u32, bool), tonic::Status> {
    let mut last_step = 0;
    let mut done = false;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(stage_event::Event::Progress(p)) => last_step = p.step,
            Some(stage_event::Event::Done(_)) => done = true,
            _ => {}
        }
    }
    Ok((last_step, done))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_while_admitted_requests_finish()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let model_arg = model.display().to_string();
    let base = Service::start(
        STAGE_BIN,
        "base",
        &[
            "--model",
            &model_arg,
            "--stage",
            "base",
            "--max-batch-size",
            "1",
            "--max-queue",
            "1",
        ]
        .map(String::from),
    )?;
    base.wait_serving(Duration::from_secs(30)).await?;
    let request = stage_request(&base, 150).await?;

    let mut client = VideoStageClient::new(base.channel().await?);
    // The first runs (batch of one), the second waits in the queue of one...
    let mut first = client.generate(request.clone()).await?.into_inner();
    until_progress(&mut first).await?;
    let second = client.generate(request.clone()).await?.into_inner();
    // ...and the third finds the queue full.
    let third = client.generate(request.clone()).await;
    let status = third
        .err()
        .context("the third request was admitted past a full queue")?;
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("queue is full"),
        "{}",
        status.message()
    );
    let (first_steps, first_done) = drain_stage_stream(first).await?;
    let (second_steps, second_done) = drain_stage_stream(second).await?;
    assert!(first_done && second_done);
    assert_eq!((first_steps, second_steps), (150, 150));
    let rejected = base_outcome(&base, "resource_exhausted").await?;
    assert_eq!(rejected, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_work_finish_and_refuses_new_work() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let model_arg = model.display().to_string();
    let mut base = Service::start(
        STAGE_BIN,
        "base",
        &["--model", &model_arg, "--stage", "base"].map(String::from),
    )?;
    base.wait_serving(Duration::from_secs(30)).await?;
    let request = stage_request(&base, 200).await?;
    let mut client = VideoStageClient::new(base.channel().await?);
    let mut running = client.generate(request.clone()).await?.into_inner();
    loop {
        match running.message().await?.and_then(|e| e.event) {
            Some(stage_event::Event::Progress(_)) => break,
            Some(_) => {}
            None => bail!("request ended before running"),
        }
    }
    base.terminate()?;
    // New work is refused: the connection was told GOAWAY, so a new call is refused
    // (CANCELLED or UNAVAILABLE, both retried on another replica by the gateway)...
    tokio::time::sleep(Duration::from_millis(300)).await;
    match client.generate(request.clone()).await {
        Err(status) => assert!(
            matches!(status.code(), Code::Unavailable | Code::Cancelled),
            "{:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(_) => bail!("a draining stage admitted new work"),
    }
    // ...while the admitted request runs to the end, and then the process exits cleanly.
    let (steps, done) = drain_stage_stream(running).await?;
    assert!(done, "the in-flight request was cut");
    assert_eq!(steps, 200);
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = base.child.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < until,
            "the stage did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_skipped_by_retrying_on_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    // A second gateway whose base stage has a dead replica listed first.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let base = cluster.stage("base").grpc;
    let args = cluster.gateway_args(&[("base", format!("{dead},{base}"))]);
    let gateway = Service::start(GATEWAY_BIN, "gateway-2", &args)?;
    gateway.wait_serving(Duration::from_secs(30)).await?;
    for seed in 0..3 {
        let mut stream = GatewayClient::new(gateway.channel().await?)
            .generate(request("a cyan circle", seed))
            .await?
            .into_inner();
        let mut completed = false;
        while let Some(event) = stream.message().await? {
            completed |= matches!(event.event, Some(Event::Completed(_)));
        }
        assert!(completed);
    }
    Ok(())
}

#[test]
fn bad_configuration_exits_64_naming_the_setting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let model_arg = model.display().to_string();
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            STAGE_BIN,
            vec!["--model", &model_arg, "--stage", "upscaler"],
            "--stage",
        ),
        (
            STAGE_BIN,
            vec![
                "--model",
                &model_arg,
                "--stage",
                "base",
                "--max-batch-size",
                "0",
            ],
            "--max-batch-size",
        ),
        (
            STAGE_BIN,
            vec!["--model", "/nonexistent/model", "--stage", "base"],
            "--model",
        ),
        (
            GATEWAY_BIN,
            vec![
                "--model",
                &model_arg,
                "--encoder",
                "127.0.0.1:1",
                "--stage",
                "base=127.0.0.1:2",
            ],
            "--stage",
        ),
    ];
    for (binary, args, setting) in cases {
        let output = Command::new(binary)
            .args(&args)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing was bound: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let output = Command::new(STAGE_BIN)
        .args([
            "--model",
            &model_arg,
            "--stage",
            "base",
            "--listen",
            "not-an-address",
        ])
        .output()?;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
    Ok(())
}

/// A client program in another language, run against a tiny cluster's gateway.
struct ClientCheck<'a> {
    /// The interpreter: `python3` or `node`.
    program: &'a str,
    /// Its script, relative to the repository.
    script: &'a str,
    /// Arguments after `--addr ADDR`.
    args: &'a [&'a str],
    /// Whether the script takes `--out DIR` (the Python ones write files there).
    writes_files: bool,
    /// The line it prints on success.
    ok_line: &'a str,
    /// What it needs installed, for the error when it cannot start.
    needs: &'a str,
}

impl ClientCheck<'_> {
    /// Runs the script and checks it succeeds and prints its ok line.
    async fn run(&self) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let model = tiny_model(dir.path())?;
        let cluster = Cluster::start(&model, &[]).await?;
        let script = format!("{}/{}", env!("CARGO_MANIFEST_DIR"), self.script);
        let mut command = tokio::process::Command::new(self.program);
        command
            .arg(script)
            .args(["--addr", &cluster.gateway.grpc.to_string()])
            .args(self.args);
        if self.writes_files {
            command.arg("--out").arg(dir.path().join("out"));
        }
        let output = command.output().await.with_context(|| {
            format!(
                "running {} (the test needs {}; .ci/test installs it)",
                self.program, self.needs
            )
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{} failed:\n{stdout}\n{stderr}",
            self.ok_line
        );
        assert!(stdout.contains(self.ok_line), "{stdout}");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_drives_the_gateway() -> anyhow::Result<()> {
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    ClientCheck {
        program: "python3",
        script: "tests/python/gateway_client.py",
        args: &["--proto", proto],
        writes_files: true,
        ok_line: "python client: ok",
        needs: "python3 with grpcio and grpcio-tools",
    }
    .run()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_package_generates_and_saves_through_the_gateway() -> anyhow::Result<()> {
    ClientCheck {
        program: "python3",
        script: "clients/python/tests/smoke.py",
        args: &[],
        writes_files: true,
        ok_line: "python package: ok",
        needs: "`pip install ./clients/python`",
    }
    .run()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_keeps_seeds_and_overrides_and_gets_a_gif() -> anyhow::Result<()> {
    ClientCheck {
        program: "node",
        script: "clients/node/test.js",
        args: &[],
        writes_files: false,
        ok_line: "node client: ok",
        needs: "node and `npm ci` in clients/node",
    }
    .run()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_reaches_the_stage_which_stops_at_the_next_step() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    let mut long = request("a yellow square", 5);
    long.stage_overrides.insert(
        "base".into(),
        v1::SamplerSettings {
            steps: Some(1000),
            ..Default::default()
        },
    );
    let mut call = tonic::Request::new(long);
    call.set_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let result = async {
        let mut stream = GatewayClient::new(cluster.gateway.channel().await?)
            .generate(call)
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let status = match result {
        Err(err) => err.downcast::<tonic::Status>()?,
        Ok(()) => bail!("a 1000-step base run finished inside 1.5 s"),
    };
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    // Public messages name the request, never an internal replica address.
    assert!(
        status.message().contains("(request ") && !status.message().contains("127.0.0.1"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let base = cluster.stage("base");
    eventually(Duration::from_secs(10), || async {
        // The stage's own deadline normally fires first; under heavy load the gateway's may
        // win, and the stage then sees its caller leave. Either way it stops.
        let mut stopped = 0.0;
        for outcome in ["deadline_exceeded", "cancelled"] {
            stopped += base_outcome(base, outcome).await?;
        }
        let pending = base
            .gauge("vidcascade_stage_pending_steps", &[("stage", "base")])
            .await?;
        Ok(stopped >= 1.0 && pending == Some(0.0))
    })
    .await
    .context("the base stage kept working past the deadline")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_never_admits_more_than_the_limits_and_positions_count_the_queue()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let gateway_args = ["--max-concurrent", "1", "--max-waiting", "1"];
    let cluster = Cluster::start_with(&model, &[], &gateway_args).await?;
    let channel = cluster.gateway.channel().await?;
    let mut burst = tokio::task::JoinSet::new();
    for seed in 0..6 {
        let mut long = request("a red circle", seed);
        long.stage_overrides.insert(
            "base".into(),
            v1::SamplerSettings {
                steps: Some(300),
                ..Default::default()
            },
        );
        let mut client = GatewayClient::new(channel.clone());
        burst.spawn(async move { client.generate(long).await.map(|r| r.into_inner()) });
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    while let Some(result) = burst.join_next().await {
        match result? {
            Ok(stream) => admitted.push(stream),
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::ResourceExhausted,
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!(
        (admitted.len(), refused),
        (2, 4),
        "limit 1 running + 1 waiting"
    );
    let mut positions = Vec::new();
    for stream in &mut admitted {
        match stream.message().await?.and_then(|e| e.event) {
            Some(Event::Accepted(a)) => positions.push(a.queue_position),
            other => bail!("expected Accepted first, got {other:?}"),
        }
    }
    positions.sort();
    assert_eq!(positions, vec![0, 1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_hears_its_new_position_when_the_line_moves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let gateway_args = ["--max-concurrent", "1", "--max-waiting", "3"];
    let cluster = Cluster::start_with(&model, &[], &gateway_args).await?;
    let channel = cluster.gateway.channel().await?;
    let mut streams = Vec::new();
    for seed in 0..4 {
        let mut long = request("a red circle", seed);
        long.stage_overrides.insert(
            "base".into(),
            v1::SamplerSettings {
                steps: Some(1000),
                ..Default::default()
            },
        );
        let mut stream = GatewayClient::new(channel.clone())
            .generate(long)
            .await?
            .into_inner();
        match stream.message().await?.and_then(|e| e.event) {
            Some(Event::Accepted(a)) => assert_eq!(a.queue_position, seed as u32),
            other => bail!("expected Accepted first, got {other:?}"),
        }
        streams.push(stream);
    }
    // The second request's caller leaves: the last one moves from 3 to 2.
    let mut last = streams.pop().context("four streams")?;
    drop(streams.remove(1));
    let moved = tokio::time::timeout(Duration::from_secs(10), last.message()).await??;
    match moved.and_then(|e| e.event) {
        Some(Event::Accepted(a)) => assert_eq!(a.queue_position, 2),
        other => bail!("expected a new position, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_caller_left_frees_its_slot_and_never_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let model_arg = model.display().to_string();
    let args = [
        "--model",
        &model_arg,
        "--stage",
        "base",
        "--max-batch-size",
        "1",
    ];
    let base = Service::start(STAGE_BIN, "base", &args.map(String::from))?;
    base.wait_serving(Duration::from_secs(30)).await?;
    let mut client = VideoStageClient::new(base.channel().await?);
    // The first request runs for a long time (batch of one)...
    let mut running = client
        .generate(stage_request(&base, 1000).await?)
        .await?
        .into_inner();
    until_progress(&mut running).await?;
    // ...the second waits behind it, and its caller leaves.
    let mut queued = client
        .generate(stage_request(&base, 1000).await?)
        .await?
        .into_inner();
    ensure!(matches!(
        queued.message().await?.and_then(|e| e.event),
        Some(stage_event::Event::Accepted(_))
    ));
    drop(queued);
    eventually(Duration::from_secs(10), || async {
        let cancelled = base_outcome(&base, "cancelled").await?;
        let depth = base
            .gauge("vidcascade_stage_queue_depth", &[("stage", "base")])
            .await?;
        Ok(cancelled == 1.0 && depth == Some(0.0))
    })
    .await
    .context("the departed caller's request stayed queued")?;
    // It left while the first was still running: its slot was freed, not its turn awaited.
    let completed = base_outcome(&base, "completed").await?;
    assert_eq!(completed, 0.0, "the first request should still be running");
    drop(running);
    Ok(())
}
