//! `vidcascade.v1.Gateway`: admission, then the cascade pipeline over the replica sets, its
//! events forwarded as one ordered gRPC stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use vidcascade_pipeline::plan::{MAX_SEGMENTS, manifest_max_seconds};
use vidcascade_pipeline::{Event, PipelineError, Plan, RunLimits, plan, run};
use vidcascade_proto::convert::{request_from_wire, shape_to_wire, stage_info};
use vidcascade_proto::v1::gateway_server::{Gateway, GatewayServer as GatewayRpcServer};
use vidcascade_proto::v1::text_encoder_client::TextEncoderClient;
use vidcascade_proto::v1::video_stage_client::VideoStageClient;
use vidcascade_proto::v1::{self, generate_event};
use vidcascade_runtime::deadline::timeout_from_metadata;
use vidcascade_runtime::info::{build_info, model_info};
use vidcascade_runtime::telemetry::set_parent_from;
use vidcascade_spec::error_type::COMPLETED;
use vidcascade_spec::request::MAX_PROMPT_BYTES;
use vidcascade_spec::{ErrorType, Manifest};

use crate::auth::{Guard, RateLimiter};
use crate::backend::ReplicaBackend;
use crate::config::GatewayConfig;
use crate::discovery::discover;
use crate::encoding::{check_plan, requested_format};
use crate::error::GatewayError;
use crate::events::{ClientGone, WireEvents};
use crate::health::probe_forever;
use crate::line::WaitLine;
use crate::replicas::{ReplicaSet, Upstream};

/// Events buffered per client before the gateway waits for it.
const EVENT_BUFFER: usize = 32;

struct Inner {
    manifest: Manifest,
    backend: Arc<ReplicaBackend>,
    readiness: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    tickets: Arc<Semaphore>,
    admission: std::sync::Mutex<()>,
    max_tickets: usize,
    max_concurrent: usize,
    waiting: AtomicUsize,
    draining: AtomicBool,
    max_waiting: usize,
    default_timeout: Duration,
    info: v1::GatewayInfo,
    /// The text encoder's token limit, as its Info said at warm-up.
    max_prompt_tokens: AtomicU32,
    /// API keys and rate limit of every Gateway call.
    guard: Guard,
    /// Requests waiting for a slot, in order.
    line: Arc<WaitLine>,
    /// Where the HTTP API listens, if it is on.
    http_listen: Option<std::net::SocketAddr>,
    /// Warm-up is done (the services answered and serve the manifest's shapes).
    warmed_up: AtomicBool,
}

/// The gateway: cheap to clone, one per process.
#[derive(Clone)]
pub struct GatewayServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServer")
            .field("model", &self.inner.manifest.name)
            .finish_non_exhaustive()
    }
}

/// `Gateway.Info`: the manifest's stages and the request limits.
fn gateway_info(config: &GatewayConfig) -> v1::GatewayInfo {
    let manifest = &config.manifest;
    let clip_shape = manifest.final_output();
    v1::GatewayInfo {
        model: Some(model_info(&manifest.name, 0)),
        build: Some(build_info()),
        stages: manifest.stages.iter().map(stage_info).collect(),
        clip_shape: clip_shape.as_ref().map(shape_to_wire),
        max_seconds: manifest_max_seconds(manifest).unwrap_or(0.0) as f32,
        max_segments: MAX_SEGMENTS as u32,
        max_concurrent_requests: config.max_concurrent as u32,
        max_request_bytes: 4 << 20,
        // Filled in from the text encoder's Info once it answers (warm-up).
        max_prompt_tokens: 0,
        max_prompt_bytes: MAX_PROMPT_BYTES as u32,
        output_formats: [
            v1::VideoFormat::RawRgb8,
            v1::VideoFormat::Gif,
            v1::VideoFormat::Mp4,
            v1::VideoFormat::Png,
        ]
        .map(|format| format as i32)
        .to_vec(),
    }
}

impl GatewayServer {
    /// Builds the gateway and starts discovery. Call inside a tokio runtime.
    pub fn new(config: &GatewayConfig) -> Self {
        let manifest = config.manifest.clone();
        let encoder_name = manifest
            .stages
            .first()
            .map_or_else(|| "text-encoder".to_string(), |s| s.name.clone());
        let upstream = Upstream {
            policy: config.outliers,
            tls: config.upstream_tls.clone(),
        };
        let encoder = ReplicaSet::new(
            encoder_name,
            "vidcascade.v1.TextEncoder",
            discover(&config.encoder, config.dns_refresh),
            upstream.clone(),
        );
        let stages = manifest
            .diffusion_stages()
            .filter_map(|stage| {
                config.stages.get(&stage.name).map(|target| {
                    ReplicaSet::new(
                        stage.name.clone(),
                        format!("vidcascade.v1.VideoStage/{}", stage.name),
                        discover(target, config.dns_refresh),
                        upstream.clone(),
                    )
                })
            })
            .collect();
        let backend = Arc::new(ReplicaBackend {
            encoder,
            stages,
            attempts: config.stage_attempts,
            checkpoint_every: config.checkpoint_every,
            failovers: config.stage_failovers,
        });
        let (ready, readiness) = watch::channel(false);
        tokio::spawn(probe_forever(backend.clone(), config.health_probe, ready));
        Self {
            inner: Arc::new(Inner {
                info: gateway_info(config),
                manifest,
                backend,
                readiness,
                permits: Arc::new(Semaphore::new(config.max_concurrent)),
                tickets: Arc::new(Semaphore::new(config.max_concurrent + config.max_waiting)),
                admission: std::sync::Mutex::new(()),
                max_tickets: config.max_concurrent + config.max_waiting,
                max_concurrent: config.max_concurrent,
                waiting: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                max_waiting: config.max_waiting,
                default_timeout: config.default_timeout,
                max_prompt_tokens: AtomicU32::new(0),
                line: Arc::new(WaitLine::default()),
                http_listen: config.http_listen,
                warmed_up: AtomicBool::new(false),
                guard: Guard::new(
                    config.api_keys.clone(),
                    RateLimiter::new(config.rate_limit_per_minute),
                ),
            }),
        }
    }

    /// The API keys and rate limit every call passes (the HTTP API checks them itself).
    pub fn guard(&self) -> &Guard {
        &self.inner.guard
    }

    /// Ready for requests: warmed up, every service has a live replica, not draining (what
    /// grpc.health.v1 reports as SERVING, for HTTP's `/readyz`).
    pub fn is_ready(&self) -> bool {
        let inner = &self.inner;
        inner.warmed_up.load(Ordering::Relaxed)
            && !inner.draining.load(Ordering::Relaxed)
            && *inner.readiness.borrow()
    }

    /// Waits until the encoder and every stage answer `Info` on some replica, checking that
    /// each stage serves the shapes the manifest promises.
    async fn wait_for_stages(&self) -> anyhow::Result<()> {
        loop {
            let missing = self.unreachable_stages().await?;
            if missing.is_empty() {
                self.inner.warmed_up.store(true, Ordering::Relaxed);
                return Ok(());
            }
            tracing::info!(waiting_for = ?missing, "stages not reachable yet");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Why each unreachable service is unreachable; a stage serving the wrong shapes is an error.
    async fn unreachable_stages(&self) -> anyhow::Result<Vec<String>> {
        let backend = &self.inner.backend;
        let mut missing = Vec::new();
        let encoder = backend
            .encoder
            .ask(|replica| async move {
                TextEncoderClient::new(replica.channel)
                    .info(v1::InfoRequest {})
                    .await
            })
            .await;
        match encoder {
            Ok(info) => self
                .inner
                .max_prompt_tokens
                .store(info.get_ref().max_tokens, Ordering::Relaxed),
            Err(err) => missing.push(err.to_string()),
        }
        for (set, stage) in backend
            .stages
            .iter()
            .zip(self.inner.manifest.diffusion_stages())
        {
            let info = set
                .ask(|replica| async move {
                    VideoStageClient::new(replica.channel)
                        .info(v1::InfoRequest {})
                        .await
                })
                .await;
            let info = match info {
                Ok(info) => info.into_inner(),
                Err(err) => {
                    missing.push(err.to_string());
                    continue;
                }
            };
            let expected = stage.output.as_ref().map(shape_to_wire);
            if info.name != stage.name || info.output != expected {
                anyhow::bail!(
                    "the replicas of `{}` serve stage `{}` with output {:?}; the manifest expects {:?}",
                    stage.name,
                    info.name,
                    info.output,
                    expected
                );
            }
        }
        Ok(missing)
    }

    /// Draining and capacity checks, then the plan and how its events go on the wire.
    fn admit(
        &self,
        request: &v1::GenerateRequest,
    ) -> Result<(Plan, WireEvents, Admitted), GatewayError> {
        let inner = &self.inner;
        if inner.draining.load(Ordering::Relaxed) {
            return Err(GatewayError::Draining);
        }
        let request_wire = request;
        let request = request_from_wire(request).map_err(|err| {
            let text = err.to_string();
            let reason = text
                .strip_prefix(&format!("{}: ", err.field()))
                .unwrap_or(&text);
            PipelineError::invalid(err.field(), reason)
        })?;
        let plan = plan(&request, &inner.manifest, rand::random())?;
        let output = request_wire.output.unwrap_or_default();
        let format = requested_format(&output)?;
        if let Some(format) = format {
            check_plan(&plan, format)?;
        }
        let wire = WireEvents::new(&plan, &output, format);
        // One ticket per request running or waiting, taken here or never: a burst cannot
        // overshoot the limits (checking a count and incrementing it later could).
        // The ticket and the position are taken under one lock, so two requests admitted
        // together get different positions.
        let _order = inner.admission.lock().map_err(|_| GatewayError::Draining)?;
        let ticket =
            inner
                .tickets
                .clone()
                .try_acquire_owned()
                .map_err(|_| GatewayError::Overloaded {
                    limit: inner.max_waiting,
                })?;
        // Requests admitted (this one included) beyond the ones that can run: 0 runs at once,
        // 1 is next.
        let admitted = inner.max_tickets - inner.tickets.available_permits();
        let ahead = admitted.saturating_sub(inner.max_concurrent);
        Ok((
            plan,
            wire,
            Admitted {
                _ticket: ticket,
                ahead,
            },
        ))
    }
}

type EventSender = mpsc::Sender<Result<v1::GenerateEvent, Status>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateEvent, Status>> + Send>>;

fn count_outcome(label: &str) {
    metrics::counter!("vidcascade_gateway_requests_total", "outcome" => label.to_string())
        .increment(1);
}

#[tonic::async_trait]
impl Gateway for GatewayServer {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("gateway.generate", request_id = %request_id);
        set_parent_from(&span, request.metadata());
        let timeout =
            timeout_from_metadata(request.metadata())?.unwrap_or(self.inner.default_timeout);
        let started = Instant::now();
        let (plan, wire, admitted) = match self.admit(request.get_ref()) {
            Ok(result) => result,
            Err(err) => {
                count_outcome(err.error_type().label());
                span.in_scope(|| tracing::info!(error = %err, "rejected"));
                return Err(err.into());
            }
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let job = Job {
            inner: self.inner.clone(),
            request_id,
            wire,
            plan,
            started,
            deadline: started + timeout,
            tx,
            admitted,
        };
        tokio::spawn(job.run().instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(
        &self,
        _request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::GatewayInfo>, Status> {
        Ok(Response::new(v1::GatewayInfo {
            max_prompt_tokens: self.inner.max_prompt_tokens.load(Ordering::Relaxed),
            ..self.inner.info.clone()
        }))
    }
}

/// One admitted request.
struct Job {
    inner: Arc<Inner>,
    request_id: String,
    plan: Plan,
    wire: WireEvents,
    started: Instant,
    deadline: Instant,
    tx: EventSender,
    /// Its place among the admitted requests, held for the whole request.
    admitted: Admitted,
}

/// An admitted request's ticket and its queue position when admitted.
struct Admitted {
    _ticket: OwnedSemaphorePermit,
    ahead: usize,
}

impl Job {
    /// Waits for a slot, runs the pipeline, and reports the outcome.
    async fn run(self) {
        let outcome = self.admitted_run().await;
        let label = match &outcome {
            Ok(()) => COMPLETED,
            Err(err) => err.error_type().label(),
        };
        count_outcome(label);
        metrics::histogram!("vidcascade_gateway_request_seconds", "outcome" => label)
            .record(self.started.elapsed().as_secs_f64());
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        match outcome {
            Ok(()) => tracing::info!(elapsed_ms, "completed"),
            Err(err) if err.error_type() == ErrorType::Cancelled => {
                tracing::info!("client went away; stage calls cancelled");
            }
            Err(err) => {
                tracing::info!(error = %err, "failed");
                let status: Status = err.into();
                // The request id lets an operator find the logs (which name the replicas).
                let message = format!("{} (request {})", status.message(), self.request_id);
                let _ = self.tx.send(Err(Status::new(status.code(), message))).await;
            }
        }
    }

    async fn send(&self, event: generate_event::Event) -> Result<(), ClientGone> {
        let message = v1::GenerateEvent { event: Some(event) };
        self.tx.send(Ok(message)).await.map_err(|_| ClientGone)
    }

    /// Waits in line for a slot until the deadline or the client leaves, re-sending `accepted`
    /// with the new position whenever the line moves; `None` without a slot.
    async fn wait_for_slot(&self, mut sent: usize) -> Option<OwnedSemaphorePermit> {
        let mut place = self.inner.line.join();
        let acquire = self.inner.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                permit = &mut acquire => return permit.ok(),
                () = tokio::time::sleep_until(self.deadline.into()) => return None,
                () = self.tx.closed() => return None,
                () = place.moved(), if sent > 0 => {
                    let position = place.position();
                    if position < sent {
                        sent = position;
                        if self.send(self.wire.accepted(&self.request_id, position)).await.is_err() {
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Accepted (with the queue position), then a slot under the deadline, then the run.
    async fn admitted_run(&self) -> Result<(), GatewayError> {
        let inner = &self.inner;
        let ahead = self.admitted.ahead;
        self.send(self.wire.accepted(&self.request_id, ahead))
            .await?;
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("vidcascade_gateway_waiting").increment(1.0);
        let permit = self.wait_for_slot(ahead).await;
        inner.waiting.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("vidcascade_gateway_waiting").decrement(1.0);
        let Some(_permit) = permit else {
            if self.tx.is_closed() {
                return Err(PipelineError::Cancelled.into());
            }
            return Err(PipelineError::DeadlineExceeded {
                what: format!(
                    "in the gateway's queue: waited {:.1} s for a slot",
                    self.started.elapsed().as_secs_f64()
                ),
                deadline: self.deadline.saturating_duration_since(self.started),
            }
            .into());
        };
        if ahead > 0 {
            self.send(self.wire.accepted(&self.request_id, 0)).await?;
        }
        metrics::gauge!("vidcascade_gateway_in_flight").increment(1.0);
        let result = self.pipeline().await;
        metrics::gauge!("vidcascade_gateway_in_flight").decrement(1.0);
        result
    }

    /// The pipeline on the replica sets, its events forwarded to the client as they come.
    async fn pipeline(&self) -> Result<(), GatewayError> {
        let (events, received) = mpsc::channel(EVENT_BUFFER);
        let limits = RunLimits {
            request_id: &self.request_id,
            started: self.started,
            deadline: self.deadline,
        };
        let backend: &ReplicaBackend = &self.inner.backend;
        let running = async move {
            let result = run(&self.plan, limits, backend, backend, &events).await;
            drop(events);
            result
        };
        let forwarding = async {
            // Owning the receiver here drops it when the client leaves, which cancels the run.
            let mut received = received;
            while let Some(event) = received.recv().await {
                record_stage_time(&event);
                for message in self.wire.convert(event).await? {
                    self.send(message).await?;
                }
            }
            Ok::<(), GatewayError>(())
        };
        let (result, forwarded) = tokio::join!(running, forwarding);
        forwarded?;
        Ok(result?)
    }
}

fn record_stage_time(event: &Event) {
    if let Event::StageCompleted { stage, elapsed, .. } = event {
        metrics::histogram!("vidcascade_gateway_stage_seconds", "stage" => stage.clone())
            .record(elapsed.as_secs_f64());
    }
}

impl vidcascade_runtime::Service for GatewayServer {
    fn label(&self) -> String {
        "vidcascade-gateway".into()
    }

    fn health_names(&self) -> Vec<String> {
        vec!["vidcascade.v1.Gateway".into()]
    }

    fn public_services(&self) -> Vec<String> {
        vec!["vidcascade.v1.Gateway".into()]
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(GatewayRpcServer::with_interceptor(
            self.clone(),
            self.inner.guard.clone(),
        ))
    }

    fn warm_up(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        self.wait_for_stages()
    }

    fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    fn readiness(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.readiness.clone())
    }

    fn http(&self) -> Option<(std::net::SocketAddr, axum::Router)> {
        let addr = self.inner.http_listen?;
        Some((addr, crate::http::router(self.clone())))
    }
}
