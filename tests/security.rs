//! Exposure end to end through the real binaries: TLS on every listener, mutual TLS between the
//! gateway and the internal services, API keys and a per-key rate limit on the public gateway,
//! and reflection that lists only the public services.

mod support;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use support::certs::Pki;
use support::cluster::{Cluster, Extra, Service, tiny_model};
use support::gateway::{collect, final_video, request};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;
use vidcascade_proto::v1::gateway_client::GatewayClient;
use vidcascade_proto::v1::{self, generate_event::Event};

const KEY: &str = "test-key-0123456789abcdef";

/// Encoder and stages that serve mTLS only, and a TLS gateway with API keys over them.
async fn secured_cluster(
    model: &std::path::Path,
    pki: &Pki,
    dir: &std::path::Path,
) -> anyhow::Result<Cluster> {
    let keys = dir.join("keys.txt");
    std::fs::write(&keys, format!("# test keys\n{KEY}\n"))?;
    let path = |p: &std::path::Path| p.display().to_string();
    let mut gateway = vec![
        "--upstream-ca".to_string(),
        path(&pki.ca),
        "--upstream-cert".into(),
        path(&pki.client_cert),
        "--upstream-key".into(),
        path(&pki.client_key),
        "--api-keys-file".into(),
        path(&keys),
        "--rate-limit-per-minute".into(),
        "5".into(),
    ];
    gateway.extend(pki.server_flags(false));
    let extra = Extra {
        encoder: pki.server_flags(true),
        stages: pki.server_flags(true),
        gateway,
        backend_tls: Some(pki.client(true)?),
        gateway_tls: Some(pki.client(false)?),
    };
    Cluster::launch(model, extra).await
}

fn keyed<T>(message: T, key: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
    }
    Ok(request)
}

async fn generate_with(
    cluster: &Cluster,
    key: Option<&str>,
) -> anyhow::Result<Result<Vec<Event>, tonic::Status>> {
    let channel = cluster.gateway.channel().await?;
    Ok(collect(channel, keyed(request("a red circle", 1), key)?).await)
}

async fn listed_services(service: &Service) -> anyhow::Result<Vec<String>> {
    let mut client = ServerReflectionClient::new(service.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = responses.message().await?.context("no reflection answer")?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => bail!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_take_only_the_gateways_certificate_and_the_gateway_only_keys()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = tiny_model(dir.path())?;
    let pki = Pki::create(dir.path())?;
    let cluster = secured_cluster(&model, &pki, dir.path()).await?;

    // A stage refuses plaintext and TLS without a client certificate.
    let base = cluster.stage("base");
    let plaintext = tonic::transport::Channel::from_shared(format!("http://{}", base.grpc))?
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        ensure!(answer.is_err(), "a stage answered plaintext");
    }
    let anonymous = tonic::transport::Channel::from_shared(format!("https://{}", base.grpc))?
        .tls_config(pki.client(false)?)?
        .connect()
        .await;
    if let Ok(channel) = anonymous {
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        ensure!(
            answer.is_err(),
            "a stage answered a client without a certificate"
        );
    }
    HealthClient::new(base.channel().await?)
        .check(HealthCheckRequest::default())
        .await
        .context("the gateway's certificate is accepted")?;

    // The gateway: no key or a wrong key is UNAUTHENTICATED; the key generates over mTLS.
    for key in [None, Some("test-key-0123456789abcdeX")] {
        match generate_with(&cluster, key).await? {
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message()),
            Ok(_) => bail!("the gateway generated for key {key:?}"),
        }
    }
    let events = generate_with(&cluster, Some(KEY))
        .await?
        .map_err(|s| anyhow::anyhow!("{s:?}"))?;
    final_video(&events)?;

    // Five calls a minute: the generation and four Info calls, then RESOURCE_EXHAUSTED with
    // the delay to wait.
    let mut client = GatewayClient::new(cluster.gateway.channel().await?);
    for _ in 0..4 {
        client.info(keyed(v1::InfoRequest {}, Some(KEY))?).await?;
    }
    let status = client
        .info(keyed(v1::InfoRequest {}, Some(KEY))?)
        .await
        .err()
        .context("the sixth call of the minute went through")?;
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|delay| delay > Duration::ZERO && delay <= Duration::from_secs(12)),
        "{retry:?}: {}",
        status.message()
    );

    // Reflection (not behind the keys, like health) lists the public services only.
    let listed = listed_services(&cluster.gateway).await?;
    assert!(
        listed.contains(&"vidcascade.v1.Gateway".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"grpc.health.v1.Health".to_string()),
        "{listed:?}"
    );
    for internal in ["vidcascade.v1.VideoStage", "vidcascade.v1.TextEncoder"] {
        assert!(
            !listed.contains(&internal.to_string()),
            "{internal} listed: {listed:?}"
        );
    }
    Ok(())
}
