//! The gateway's HTTP API beside gRPC, for browsers, `curl` and languages without a gRPC stack.
//!
//! - `POST /v1/generate`: the body is a `GenerateRequest` in the proto3 JSON mapping (field names
//!   in lowerCamelCase or as in the .proto, uint64 as strings, enums by name, bytes as base64);
//!   `?timeout=SECONDS` is the deadline (gRPC's `grpc-timeout`). Without an `output.format` the
//!   videos come as GIF (a browser shows them as they are). The answer is a stream of
//!   server-sent events, one per gRPC event, `event:` the event's name (`accepted`,
//!   `stage_started`, `progress`, `preview`, `stage_completed`, `completed`) and `data:` the
//!   `GenerateEvent` in the same JSON mapping; a failure after the stream started is an `error`
//!   event `{"code": "DEADLINE_EXCEEDED", "message": ...}`. A request refused before it starts
//!   gets an HTTP status (400, 401, 429 with `Retry-After`, 503, 504) and the same JSON body.
//!   Closing the connection cancels the request in every stage.
//! - `GET /v1/info`: `GatewayInfo` as JSON.
//! - `GET /healthz` (the process answers) and `GET /readyz` (warmed up, every service has a
//!   live replica, not draining: 200, else 503), for load balancers and Kubernetes.
//! - `GET /`: the playground, a page that generates a video and shows each stage as it works.
//!
//! Every call goes through the gRPC service's own code (admission, limits, API keys and rate
//! limit, deadlines), so HTTP and gRPC cannot disagree.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic_types::StatusExt;
use vidcascade_proto::convert::code_name;
use vidcascade_proto::v1::gateway_server::Gateway;
use vidcascade_proto::v1::{self, generate_event};
use vidcascade_spec::request::echo;

use crate::service::GatewayServer;

/// The playground page (self-contained: no external scripts, styles or fonts).
const PLAYGROUND: &str = include_str!("http/playground.html");

/// Largest request body: a 4 MiB request (`GatewayInfo.max_request_bytes`) in base64 JSON.
pub const MAX_BODY_BYTES: usize = 6 << 20;

/// Longest `?timeout=` in seconds (one day).
const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;

/// How often an idle event stream gets a keep-alive comment (proxies close silent streams).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The HTTP routes of `gateway`.
pub fn router(gateway: GatewayServer) -> Router {
    Router::new()
        .route("/", get(playground))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/info", get(info))
        .route("/v1/generate", post(generate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(gateway)
}

async fn playground() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Html(PLAYGROUND),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(gateway): State<GatewayServer>) -> (StatusCode, &'static str) {
    if gateway.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn info(
    State(gateway): State<GatewayServer>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let metadata = match metadata_of(&headers, None) {
        Ok(metadata) => metadata,
        Err(status) => return error_response(&status),
    };
    if let Err(status) = gateway.guard().check(&metadata, Some(peer.ip())) {
        return error_response(&status);
    }
    match gateway.info(tonic::Request::new(v1::InfoRequest {})).await {
        Ok(info) => json_response(StatusCode::OK, info.get_ref()),
        Err(status) => error_response(&status),
    }
}

async fn generate(
    State(gateway): State<GatewayServer>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match start(&gateway, peer, query.as_deref(), &headers, &body).await {
        Ok(events) => Sse::new(events.map(|event| Ok::<_, Infallible>(sse_event(event))))
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response(),
        Err(status) => error_response(&status),
    }
}

/// Checks the caller, parses the request and starts it on the gRPC service.
async fn start(
    gateway: &GatewayServer,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<impl Stream<Item = Result<v1::GenerateEvent, tonic::Status>> + use<>, tonic::Status> {
    let timeout = timeout_of(query)?;
    let metadata = metadata_of(headers, timeout)?;
    gateway.guard().check(&metadata, Some(peer.ip()))?;
    let mut request: v1::GenerateRequest = serde_json::from_slice(body).map_err(|err| {
        tonic::Status::invalid_argument(format!(
            "request body: not a GenerateRequest in JSON: {}",
            short(&err.to_string())
        ))
    })?;
    let output = request.output.get_or_insert_with(Default::default);
    if output.format == v1::VideoFormat::Unspecified as i32 {
        output.format = v1::VideoFormat::Gif as i32;
    }
    let mut call = tonic::Request::new(request);
    *call.metadata_mut() = metadata;
    Ok(gateway.generate(call).await?.into_inner())
}

/// The `?timeout=SECONDS` of the query, if any; other parameters are refused by name.
fn timeout_of(query: Option<&str>) -> Result<Option<Duration>, tonic::Status> {
    let mut timeout = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "timeout" {
            return Err(tonic::Status::invalid_argument(format!(
                "query parameter `{}`: unknown; the only one is `timeout` (seconds)",
                echo(name)
            )));
        }
        let seconds = value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= MAX_TIMEOUT_SECONDS)
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "timeout: must be seconds in (0, {MAX_TIMEOUT_SECONDS}], got `{}`",
                    echo(value)
                ))
            })?;
        timeout = Some(Duration::from_secs_f64(seconds));
    }
    Ok(timeout)
}

/// The gRPC metadata an HTTP call carries: `authorization`, `traceparent`/`tracestate`, and
/// the deadline as `grpc-timeout`.
fn metadata_of(
    headers: &HeaderMap,
    timeout: Option<Duration>,
) -> Result<MetadataMap, tonic::Status> {
    let mut metadata = MetadataMap::new();
    for name in ["authorization", "traceparent", "tracestate"] {
        if let Some(value) = headers.get(name) {
            let value = MetadataValue::try_from(value.as_bytes()).map_err(|_| {
                tonic::Status::invalid_argument(format!("header `{name}`: not valid ASCII"))
            })?;
            metadata.insert(name, value);
        }
    }
    if let Some(timeout) = timeout {
        // Milliseconds, at least 1: grpc-timeout takes up to 8 digits, and a day is 8.
        let millis = timeout.as_millis().max(1);
        let value = MetadataValue::try_from(format!("{millis}m"))
            .map_err(|_| tonic::Status::internal("grpc-timeout: not ASCII"))?;
        metadata.insert("grpc-timeout", value);
    }
    Ok(metadata)
}

/// One gRPC event (or the status that ended the stream) as a server-sent event.
fn sse_event(event: Result<v1::GenerateEvent, tonic::Status>) -> SseEvent {
    match event {
        Ok(event) => {
            let name = event.event.as_ref().map_or("unknown", event_name);
            let data = serde_json::to_string(&event).unwrap_or_else(|err| {
                error_body(tonic::Code::Internal, &format!("event to JSON: {err}"))
            });
            SseEvent::default().event(name).data(data)
        }
        Err(status) => SseEvent::default()
            .event("error")
            .data(error_body(status.code(), status.message())),
    }
}

/// The SSE name of an event: its field name in `GenerateEvent`.
fn event_name(event: &generate_event::Event) -> &'static str {
    use generate_event::Event;
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

/// The HTTP status for a gRPC code (as grpc-gateway maps them).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"code": "INVALID_ARGUMENT", "message": ...}`.
fn error_body(code: tonic::Code, message: &str) -> String {
    serde_json::json!({ "code": code_name(code), "message": message }).to_string()
}

/// A refused call: its HTTP status, the JSON error body, and `Retry-After` when the status
/// says when to retry.
fn error_response(status: &tonic::Status) -> Response {
    let mut response = (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        error_body(status.code(), status.message()),
    )
        .into_response();
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    if let Some(delay) = retry {
        let seconds = delay.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn json_response<T: serde::Serialize>(code: StatusCode, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => error_response(&tonic::Status::internal(format!("to JSON: {err}"))),
    }
}

/// At most 200 characters of the JSON parser's message (it can quote the input; the caller's
/// own text is echoed with the project's `echo`, 64 characters).
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_the_only_query_parameter() {
        assert_eq!(
            timeout_of(Some("timeout=2.5")).ok().flatten(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(timeout_of(None).ok().flatten(), None);
        for bad in [
            "timeout=0",
            "timeout=-1",
            "timeout=nan",
            "timeout=1e9",
            "seed=3",
        ] {
            let err = timeout_of(Some(bad)).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn a_day_fits_in_grpc_timeout() -> Result<(), tonic::Status> {
        let metadata = metadata_of(&HeaderMap::new(), Some(Duration::from_secs(86_400)))?;
        let value = metadata.get("grpc-timeout").and_then(|v| v.to_str().ok());
        assert_eq!(value, Some("86400000m"));
        assert_eq!(
            vidcascade_runtime::deadline::parse_timeout("86400000m"),
            Some(Duration::from_secs(86_400))
        );
        Ok(())
    }
}
