//! Calls to a cluster's gateway, shared by the end-to-end tests.

#![allow(dead_code)]

use anyhow::Context;
use candle_core::Device;
use tonic::transport::Channel;
use vidcascade_engine::EmbeddedCascade;
use vidcascade_proto::convert::request_from_wire;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};
use vidcascade_spec::Video;

use super::cluster::{Cluster, Service};

/// A request for `prompt` with a fixed seed.
pub fn request(prompt: &str, seed: u64) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: prompt.into(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// Collects a whole gateway stream (or its error status).
pub async fn generate(
    cluster: &Cluster,
    request: v1::GenerateRequest,
) -> Result<Vec<Event>, tonic::Status> {
    generate_on(&cluster.gateway, request).await
}

/// Collects a whole stream of `gateway` (or its error status).
pub async fn generate_on(
    gateway: &Service,
    request: v1::GenerateRequest,
) -> Result<Vec<Event>, tonic::Status> {
    let channel = gateway
        .channel()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    collect(channel, tonic::Request::new(request)).await
}

/// Sends `request` (with its metadata) on `channel` and collects the whole stream.
pub async fn collect(
    channel: Channel,
    request: tonic::Request<v1::GenerateRequest>,
) -> Result<Vec<Event>, tonic::Status> {
    let mut stream = GatewayClient::new(channel)
        .generate(request)
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.extend(event.event);
    }
    Ok(events)
}

pub fn final_video(events: &[Event]) -> anyhow::Result<v1::Video> {
    let mut assembler = vidcascade_proto::wire::VideoAssembler::new();
    let mut whole = None;
    for event in events {
        if let Event::Completed(completed) = event {
            whole = assembler.push(completed.video.clone().context("chunk")?)?;
        }
    }
    whole.context("no complete final video")
}

/// The final video of `request` run by the cascade in `model` in this process, without any
/// service: what a gateway must reproduce exactly at the same seed.
pub async fn in_process(
    model: &std::path::Path,
    request: &v1::GenerateRequest,
) -> anyhow::Result<Video> {
    let cascade = EmbeddedCascade::load(model, &Device::Cpu)?;
    let request = request_from_wire(request)?;
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(64);
    let local = cascade.run(&request, None, events_tx);
    let last = async {
        let mut last = None;
        while let Some(event) = events_rx.recv().await {
            if let vidcascade_pipeline::Event::Completed { video, .. } = event {
                last = Some(video);
            }
        }
        last
    };
    let (result, last) = tokio::join!(local, last);
    result?;
    last.context("the in-process run made no video")
}
