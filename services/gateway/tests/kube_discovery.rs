//! `kube://` discovery against a fake Kubernetes API server: a real HTTP server in the test
//! that serves list and watch of discovery.k8s.io/v1 EndpointSlices (the JSON the API server
//! sends) and changes them while the gateway's watcher follows — no mocks of kube's internals.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use vidcascade_gateway::discovery::Discovery;
use vidcascade_gateway::kubernetes::{KubeDiscovery, KubeService};

/// The fake API server's state: the slices, a resource version, the watch events it streams.
#[derive(Clone)]
struct ApiServer {
    slices: Arc<Mutex<Vec<Value>>>,
    version: Arc<Mutex<u64>>,
    /// Live watch events (`None` ends every open watch), with their resource versions.
    events: broadcast::Sender<Option<(u64, Value)>>,
    /// Every event since the start, for watches that resume from a resource version.
    history: Arc<Mutex<Vec<(u64, Value)>>>,
    queries: Arc<Mutex<Vec<String>>>,
    /// Watches from a resource version below this get 410 Gone (etcd compacted it).
    compacted: Arc<Mutex<u64>>,
}

fn endpoint(ip: &str, ready: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": terminating}})
}

fn slice(name: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "video",
            "labels": {"kubernetes.io/service-name": "vc-stage-base"},
            "resourceVersion": "1",
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "metrics", "port": 50052, "protocol": "TCP"},
                  {"name": "grpc", "port": 50051, "protocol": "TCP"}],
    })
}

impl ApiServer {
    fn new(initial: Vec<Value>) -> Self {
        Self {
            slices: Arc::new(Mutex::new(initial)),
            version: Arc::new(Mutex::new(10)),
            events: broadcast::channel(64).0,
            history: Arc::new(Mutex::new(Vec::new())),
            queries: Arc::new(Mutex::new(Vec::new())),
            compacted: Arc::new(Mutex::new(0)),
        }
    }

    /// Changes the slices without telling the watchers and compacts the history, so a watcher
    /// can only catch up by listing again.
    fn change_unseen_and_compact(&self, object: Value) {
        let mut version = Self::lock(&self.version);
        *version += 1;
        Self::lock(&self.slices).push(object);
        *Self::lock(&self.compacted) = *version;
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the slices as the API server would, and tells the watchers.
    fn change(&self, kind: &str, object: Value) {
        let mut version = Self::lock(&self.version);
        *version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        {
            let mut slices = Self::lock(&self.slices);
            let name = object["metadata"]["name"].clone();
            slices.retain(|s| s["metadata"]["name"] != name);
            if kind != "DELETED" {
                slices.push(object.clone());
            }
        }
        // Recorded and sent under the version lock: a watch that subscribes under the same lock
        // sees every event exactly once, from the history or live.
        let event = json!({"type": kind, "object": object});
        Self::lock(&self.history).push((*version, event.clone()));
        let _ = self.events.send(Some((*version, event)));
    }

    /// Ends every open watch (as an API server does after its timeout).
    fn close_watches(&self) {
        let _ = self.events.send(None);
    }
}

async fn endpointslices(
    State(server): State<ApiServer>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    ApiServer::lock(&server.queries).push(query.clone());
    assert_eq!(namespace, "video");
    if !query.split('&').any(|p| p == "watch=true") {
        let version = ApiServer::lock(&server.version).to_string();
        let items = ApiServer::lock(&server.slices).clone();
        let list = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": version},
            "items": items,
        });
        return ([("content-type", "application/json")], list.to_string()).into_response();
    }
    let from: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let gone = from < *ApiServer::lock(&server.compacted);
    // As the API server does: first the events after `from`, then the live ones.
    let (mut events, missed) = {
        let _version = ApiServer::lock(&server.version);
        let missed: Vec<(u64, Value)> = ApiServer::lock(&server.history)
            .iter()
            .filter(|(v, _)| *v > from)
            .cloned()
            .collect();
        (server.events.subscribe(), missed)
    };
    let stream = async_stream(move |tx| async move {
        if gone {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version"}});
            let _ = tx.send(format!("{status}\n")).await;
            return;
        }
        let mut last = from;
        for (version, event) in missed {
            last = version;
            if tx.send(format!("{event}\n")).await.is_err() {
                return;
            }
        }
        while let Ok(Some((version, event))) = events.recv().await {
            if version > last && tx.send(format!("{event}\n")).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// A body stream fed by `produce` through a channel.
fn async_stream<F, Fut>(
    produce: F,
) -> impl futures_util::Stream<Item = Result<String, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok(line), rx))
    })
}

async fn start(server: ApiServer) -> anyhow::Result<kube::Client> {
    let app = Router::new()
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            get(endpointslices),
        )
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{addr}").parse()?);
    Ok(kube::Client::try_from(config)?)
}

async fn wait_for(discovery: &KubeDiscovery, expected: &[&str]) -> anyhow::Result<()> {
    let mut watch = discovery.watch();
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    let found = tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|a| *a == expected))
        .await
        .is_ok_and(|r| r.is_ok());
    if !found {
        anyhow::bail!("replicas {:?}, expected {expected:?}", *watch.borrow());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_set_follows_the_services_endpointslices() -> anyhow::Result<()> {
    let server = ApiServer::new(vec![slice(
        "base-abc",
        vec![
            endpoint("10.0.0.1", true, false),
            endpoint("10.0.0.2", false, false),
            endpoint("10.0.0.3", true, true),
        ],
    )]);
    let client = start(server.clone()).await?;
    let service = KubeService::parse("vc-stage-base.video:50051").map_err(anyhow::Error::msg)?;
    let discovery = KubeDiscovery::with_client(service, client);

    // Only ready, non-terminating endpoints, on the port named grpc.
    wait_for(&discovery, &["10.0.0.1:50051"]).await?;
    let queries = ApiServer::lock(&server.queries).clone();
    assert!(
        queries
            .iter()
            .all(|q| q.contains("labelSelector=kubernetes.io%2Fservice-name%3Dvc-stage-base")),
        "{queries:?}"
    );

    // A pod becomes ready; a second slice appears; the first slice goes.
    server.change(
        "MODIFIED",
        slice(
            "base-abc",
            vec![
                endpoint("10.0.0.1", true, false),
                endpoint("10.0.0.2", true, false),
            ],
        ),
    );
    wait_for(&discovery, &["10.0.0.1:50051", "10.0.0.2:50051"]).await?;
    server.change(
        "ADDED",
        slice("base-def", vec![endpoint("10.0.1.5", true, false)]),
    );
    wait_for(
        &discovery,
        &["10.0.0.1:50051", "10.0.0.2:50051", "10.0.1.5:50051"],
    )
    .await?;
    server.change(
        "MODIFIED",
        slice("base-def", vec![endpoint("10.0.1.5", true, true)]),
    );
    wait_for(&discovery, &["10.0.0.1:50051", "10.0.0.2:50051"]).await?;
    server.change("DELETED", slice("base-abc", Vec::new()));
    wait_for(&discovery, &[]).await?;

    // The watch ends (as the API server's timeout ends it) after the set changed unseen and
    // the history was compacted: the watcher's next watch gets 410 Gone, it lists again and
    // picks the change up.
    server.change_unseen_and_compact(slice("base-ghi", vec![endpoint("10.0.2.7", true, false)]));
    server.close_watches();
    wait_for(&discovery, &["10.0.2.7:50051"]).await?;
    Ok(())
}
