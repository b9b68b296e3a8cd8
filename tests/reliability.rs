//! Failure handling end to end through the real binaries on the tiny random-weight repository:
//! a base replica killed with SIGKILL mid-stream (the run resumes on the other replica from its
//! last checkpoint and ends with the undisturbed video), a dead replica taken out of rotation,
//! and the gateway's health following its stages' liveness.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use support::cluster::{Cluster, GATEWAY_BIN, STAGE_BIN, Service, tiny_model};
use support::gateway::{collect, final_video, generate_on, request};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};

/// Gateway flags that make failures show quickly in a test.
const FAST_HEALTH: [&str; 4] = ["--health-probe-seconds", "0.2", "--checkpoint-every", "2"];

/// A long ancestral base run (so there is time to kill its replica, and the resumed noise
/// stream matters).
fn long_request(seed: u64) -> v1::GenerateRequest {
    let mut request = request("a red circle moving left", seed);
    request.stage_overrides.insert(
        "base".into(),
        v1::SamplerSettings {
            steps: Some(1000),
            sampler: v1::Sampler::Ancestral as i32,
            ..Default::default()
        },
    );
    request
}

fn sigkill(service: &Service) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-KILL", &service.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -KILL failed");
    Ok(())
}

/// A second base replica and a gateway over both base replicas.
struct TwoBases {
    cluster: Cluster,
    second: Service,
    gateway: Service,
}

impl TwoBases {
    async fn start(model: &std::path::Path) -> anyhow::Result<Self> {
        let cluster = Cluster::start(model, &[]).await?;
        let second = Service::start(
            STAGE_BIN,
            "base-2",
            &[
                "--model".into(),
                model.display().to_string(),
                "--stage".into(),
                "base".into(),
            ],
        )?;
        second.wait_serving(Duration::from_secs(60)).await?;
        let first = cluster.stage("base").grpc;
        let mut args = cluster.gateway_args(&[("base", format!("{first},{}", second.grpc))]);
        args.extend(FAST_HEALTH.iter().map(|a| a.to_string()));
        let gateway = Service::start(GATEWAY_BIN, "gateway-2", &args)?;
        gateway.wait_serving(Duration::from_secs(60)).await?;
        Ok(Self {
            cluster,
            second,
            gateway,
        })
    }

    /// The base replica running a request now (its running gauge says so).
    async fn busy_base(&self) -> anyhow::Result<&Service> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            for base in [self.cluster.stage("base"), &self.second] {
                let running = base
                    .metric("vidcascade_stage_running_requests", &[("stage", "base")])
                    .await?;
                if running >= 1.0 {
                    return Ok(base);
                }
            }
            ensure!(
                Instant::now() < until,
                "no base replica started the request"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_replica_killed_mid_stream_costs_the_client_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let bases = TwoBases::start(&model).await?;
    let undisturbed = final_video(&generate_on(&bases.gateway, long_request(11)).await?)?;

    let mut stream = GatewayClient::new(bases.gateway.channel().await?)
        .generate(long_request(11))
        .await?
        .into_inner();
    let mut base_steps = Vec::new();
    let mut events = Vec::new();
    let mut killed = false;
    while let Some(message) = stream.message().await? {
        let Some(event) = message.event else { continue };
        if let Event::Progress(progress) = &event
            && progress.stage == "base"
        {
            base_steps.push(progress.step);
            if progress.step == 20 && !killed {
                sigkill(bases.busy_base().await?)?;
                killed = true;
            }
        }
        events.push(event);
    }
    ensure!(killed, "the run ended before the kill");
    let video = final_video(&events)?;
    assert_eq!(
        video, undisturbed,
        "the resumed run ends with the undisturbed video"
    );
    assert_eq!(
        base_steps,
        (1..=1000).collect::<Vec<u32>>(),
        "every base step reported once, in order"
    );
    let failovers = bases
        .gateway
        .metric(
            "vidcascade_gateway_stage_failovers_total",
            &[("stage", "base")],
        )
        .await?;
    assert_eq!(failovers, 1.0);
    // The survivor serves the next request; the gateway stays SERVING with one live base.
    let next = generate_on(&bases.gateway, request("a blue square", 3)).await?;
    final_video(&next)?;
    assert_eq!(health(&bases.gateway).await?, ServingStatus::Serving);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_taken_out_of_rotation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start(&model, &[]).await?;
    // A second gateway whose base stage has a dead replica listed first.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let base = cluster.stage("base").grpc;
    let mut args = cluster.gateway_args(&[("base", format!("{dead},{base}"))]);
    args.extend(FAST_HEALTH.iter().map(|a| a.to_string()));
    let gateway = Service::start(GATEWAY_BIN, "gateway-2", &args)?;
    gateway.wait_serving(Duration::from_secs(30)).await?;
    for seed in 0..4 {
        final_video(&generate_on(&gateway, request("a cyan circle", seed)).await?)?;
    }
    let retries = gateway
        .metric(
            "vidcascade_gateway_stage_retries_total",
            &[("stage", "base")],
        )
        .await?;
    assert!(
        retries <= 1.0,
        "the dead replica is skipped once known dead, not tried first by every request: {retries} retries"
    );
    Ok(())
}

async fn health(service: &Service) -> anyhow::Result<ServingStatus> {
    let response = HealthClient::new(service.channel().await?)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.get_ref().status())
}

/// Polls the health of `service` until it is `wanted`.
async fn until_health(service: &Service, wanted: ServingStatus) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if health(service).await? == wanted {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{} did not become {wanted:?}",
            service.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(service: &Service, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([signal, &service.child.id().to_string()])
        .status()
        .context("kill")?;
    ensure!(status.success(), "kill {signal} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_not_serving_while_a_stage_has_no_live_replica() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let cluster = Cluster::start_with(&model, &[], &FAST_HEALTH).await?;
    let stage = cluster.stages.last().context("a stage")?;
    // A stopped process answers nothing: its probes time out.
    signal(stage, "-STOP")?;
    let down = until_health(&cluster.gateway, ServingStatus::NotServing).await;
    signal(stage, "-CONT")?;
    let down = down?;
    let up = until_health(&cluster.gateway, ServingStatus::Serving).await?;
    eprintln!(
        "gateway NOT_SERVING {down:?} after the stage stopped, SERVING {up:?} after it resumed"
    );
    final_video(&generate_on(&cluster.gateway, request("a red circle", 1)).await?)?;
    Ok(())
}

/// Resident memory of a process in MiB (Linux).
fn rss_mib(service: &Service) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", service.child.id()))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// One generation under a deadline: its final status and when it ended.
async fn timed_generation(url: String, seed: u64, deadline: Duration) -> (Code, Duration) {
    let started = Instant::now();
    let mut request = tonic::Request::new(request("a green triangle moving up", seed));
    request.set_timeout(deadline);
    let outcome = async {
        let channel = tonic::transport::Channel::from_shared(url)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        collect(channel, request).await
    }
    .await;
    let code = outcome.err().map_or(Code::Ok, |status| status.code());
    (code, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_ends_every_request_by_its_deadline_and_the_next_one_succeeds()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let gateway_flags = ["--max-concurrent", "8", "--max-waiting", "16"];
    let cluster = Cluster::start_with(&model, &["--max-queue", "8"], &gateway_flags).await?;
    let base = cluster.stage("base");
    let memory_before = rss_mib(base)? + rss_mib(&cluster.gateway)?;

    let deadline = Duration::from_secs(6);
    let mut calls = tokio::task::JoinSet::new();
    for seed in 0..40 {
        calls.spawn(timed_generation(cluster.gateway.url(), seed, deadline));
    }
    let outcomes = calls.join_all().await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (code, elapsed) in &outcomes {
        *counts.entry(format!("{code:?}")).or_default() += 1;
        assert!(
            matches!(
                code,
                Code::Ok | Code::ResourceExhausted | Code::DeadlineExceeded
            ),
            "a request under overload ended {code:?}"
        );
        assert!(
            *elapsed < deadline + Duration::from_secs(1),
            "a request ended {elapsed:?} into its {deadline:?} deadline ({code:?})"
        );
    }
    let latest = outcomes.iter().map(|(_, elapsed)| *elapsed).max();
    eprintln!("overload outcomes of 40: {counts:?}, the last ended {latest:?} in");
    assert!(counts.get("Ok").is_some_and(|&ok| ok >= 1), "{counts:?}");

    let memory_after = rss_mib(base)? + rss_mib(&cluster.gateway)?;
    eprintln!("base + gateway RSS: {memory_before:.0} MiB before, {memory_after:.0} MiB after");
    assert!(
        memory_after < memory_before + 256.0,
        "memory grew from {memory_before:.0} to {memory_after:.0} MiB"
    );
    let (code, _) = timed_generation(cluster.gateway.url(), 99, Duration::from_secs(60)).await;
    assert_eq!(code, Code::Ok, "the next request succeeds");
    Ok(())
}
