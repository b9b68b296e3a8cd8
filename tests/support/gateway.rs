//! Calls to a cluster's gateway, shared by the end-to-end tests.

#![allow(dead_code)]

use anyhow::Context;
use tonic::transport::Channel;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};

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
