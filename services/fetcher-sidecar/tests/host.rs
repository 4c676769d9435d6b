//! The host and the `sidecar` fetcher together, in one process, over a real Unix socket: a
//! static table and an `http` source (the fake device-reputation API) hosted, called through
//! [`fetcher_sidecar::SidecarFactory`] as the gateway would, and through a raw gRPC client for
//! the status codes other implementations see.
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use fake_upstreams::{
    FailNext, FakeConfig, FakeServer, Latency, RouteFaults, internal::DEVICE_REPUTATION,
};
use fetcher_api::{
    ErrorClass, FeatureType, FetchError, FetchRequest, Fetcher, FetcherFactory, KeyPart, KeySpec,
    Options, Record, Row, SourceSpec, Value, ViewSpec,
};
use fetcher_sidecar::{CompiledSource, SidecarFactory, Target};
use fetcher_sidecar_host::{Host, Listener, serve};
use proto::v1::{self, fetcher_client::FetcherClient};
use tokio::sync::oneshot;

struct Hosted {
    fake: FakeServer,
    socket: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    dir: tempfile::TempDir,
}

async fn host() -> Hosted {
    // The `http` fetcher's client needs a TLS provider, as in the binary.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("merchants.csv"),
        "merchant_id,risk\nm1,0.25\n",
    )
    .unwrap();
    let text = format!(
        r#"
[entities.device_id]
type = "string"
[entities.merchant_id]
type = "string"
[sources.tables]
kind = "static"
[sources.devices]
kind = "http"
base_url = "{base}"
[views.merchants]
source = "tables"
entities = ["merchant_id"]
path = "merchants.csv"
features = {{ risk = {{ type = "double" }} }}
[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}
"#,
        base = fake.base_url()
    );
    let registry = fetcher_builtin::registry();
    let config = gateway_config::load_str(&text, "sidecar.toml", dir.path(), &registry).unwrap();
    let host = Arc::new(Host::build(&config, &registry, &[]).await.unwrap());
    assert_eq!(host.views().collect::<Vec<_>>(), ["device", "merchants"]);
    let socket = dir.path().join("fetcher.sock");
    let listener = Listener::bind_unix(&socket).unwrap();
    assert_eq!(listener.describe(), format!("unix={}", socket.display()));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(host, listener, async move {
        let _ = stopped.await;
    }));
    Hosted {
        fake,
        socket,
        stop: Some(stop),
        server,
        dir,
    }
}

/// The gateway's side: a `sidecar` source on `socket` with the views `merchants` and `device`.
async fn client_fetcher(socket: &Path) -> Arc<dyn Fetcher> {
    let view = |name: &str, key: &str, feature: &str| ViewSpec {
        name: name.into(),
        keys: vec![KeySpec {
            name: key.into(),
            ty: FeatureType::String,
        }],
        features: vec![(feature.into(), FeatureType::Double)],
        options: Options::default(),
    };
    let mut options = toml::Table::new();
    options.insert(
        "unix_socket".into(),
        socket.to_str().unwrap().to_owned().into(),
    );
    let spec = SourceSpec {
        name: "remote".into(),
        kind: "sidecar".into(),
        options: Options(options),
        views: vec![
            view("merchants", "merchant_id", "risk"),
            view("device", "device_id", "risk_score"),
        ],
        base_dir: ".".into(),
    };
    assert!(SidecarFactory.validate(&spec).is_empty());
    SidecarFactory.build(&spec).await.unwrap()
}

fn fetch(view: &str, feature: &str, keys: &[&str], deadline: Option<Duration>) -> FetchRequest {
    FetchRequest {
        view: view.into(),
        features: vec![feature.to_owned()].into(),
        keys: keys
            .iter()
            .map(|k| vec![KeyPart::String((*k).to_owned())])
            .collect(),
        deadline: deadline.map(|d| tokio::time::Instant::now() + d),
    }
}

async fn device_error(fetcher: &dyn Fetcher, deadline: Option<Duration>) -> FetchError {
    fetcher
        .fetch(fetch("device", "risk_score", &["d_000042"], deadline))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn rows_and_errors_cross_a_unix_socket() {
    let mut hosted = host().await;
    let fetcher = client_fetcher(&hosted.socket).await;
    fetcher.health().await.unwrap();

    let rows = fetcher
        .fetch(fetch("merchants", "risk", &["m1", "m404"], None))
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            Row::Found(Record {
                cells: vec![Ok(Value::Double(0.25))],
                event_time: None,
            }),
            Row::NotFound,
        ]
    );
    let rows = fetcher
        .fetch(fetch("device", "risk_score", &["d_000042"], None))
        .await
        .unwrap();
    assert!(matches!(&rows[0], Row::Found(r) if matches!(r.cells[0], Ok(Value::Double(_)))));

    // Each failure class of the hosted fetcher arrives as the same class.
    let fail = |status| RouteFaults {
        fail_next: Some(FailNext { count: 1, status }),
        ..Default::default()
    };
    hosted
        .fake
        .set_faults(DEVICE_REPUTATION, fail(503))
        .unwrap();
    let error = device_error(&*fetcher, None).await;
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
    assert!(error.retryable());
    hosted
        .fake
        .set_faults(DEVICE_REPUTATION, fail(429))
        .unwrap();
    let error = device_error(&*fetcher, None).await;
    assert_eq!(error.class(), ErrorClass::RateLimited, "{error}");
    hosted
        .fake
        .set_faults(DEVICE_REPUTATION, fail(403))
        .unwrap();
    let error = device_error(&*fetcher, None).await;
    assert_eq!(error.class(), ErrorClass::Rejected, "{error}");
    assert!(!error.retryable());

    // The deadline travels as grpc-timeout: a slow upstream is a timeout well before its 3 s.
    hosted
        .fake
        .set_faults(
            DEVICE_REPUTATION,
            RouteFaults {
                latency: Latency::Fixed { ms: 3_000.0 },
                ..Default::default()
            },
        )
        .unwrap();
    let started = Instant::now();
    let error = device_error(&*fetcher, Some(Duration::from_millis(200))).await;
    assert_eq!(error.class(), ErrorClass::Timeout, "{error}");
    assert!(error.retryable());
    assert!(started.elapsed() < Duration::from_millis(2_000));

    // A graceful stop removes the socket; the fetcher then fails fast as unavailable.
    hosted.stop.take().unwrap().send(()).unwrap();
    hosted.server.await.unwrap().unwrap();
    assert!(!hosted.socket.exists());
    let error = fetcher
        .fetch(fetch("merchants", "risk", &["m1"], None))
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Unavailable, "{error}");
    drop(hosted.dir);
}

#[tokio::test]
async fn bad_requests_get_the_codes_the_proto_names() {
    let hosted = host().await;
    let channel = fetcher_sidecar::channel(&CompiledSource {
        target: Target::Unix(hosted.socket.clone()),
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(5),
    });
    let mut client = FetcherClient::new(channel);
    let key = |part: v1::Value| v1::EntityKey { parts: vec![part] };
    let string = |s: &str| v1::Value::from(Value::String(s.into()));
    let request = |view: &str, feature: &str, keys: Vec<v1::EntityKey>| v1::FetchRequest {
        view: view.into(),
        features: vec![feature.into()],
        keys,
    };

    let status = client
        .fetch(request("nope", "risk", vec![key(string("m1"))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().contains("`nope`") && status.message().contains("merchants"),
        "{}",
        status.message()
    );
    let status = client
        .fetch(request("merchants", "score", vec![key(string("m1"))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("`score`"), "{}", status.message());
    let status = client
        .fetch(request(
            "merchants",
            "risk",
            vec![key(v1::Value::from(Value::Int64(1)))],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("merchant_id"),
        "{}",
        status.message()
    );
    let status = client
        .fetch(request(
            "merchants",
            "risk",
            vec![v1::EntityKey { parts: vec![] }],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A hosted fetch failure is the class's code, with the class as metadata.
    hosted
        .fake
        .set_faults(
            DEVICE_REPUTATION,
            RouteFaults {
                fail_next: Some(FailNext {
                    count: 1,
                    status: 500,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let status = client
        .fetch(request(
            "device",
            "risk_score",
            vec![key(string("d_000042"))],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get(fetcher_sidecar::wire::ERROR_CLASS_METADATA)
            .unwrap(),
        "unavailable"
    );
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over_but_a_stale_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let first = Listener::bind_unix(&path).unwrap();
    let error = Listener::bind_unix(&path).unwrap_err().to_string();
    assert!(error.contains("another process"), "{error}");
    // A crash leaves the file behind with nobody accepting on it.
    drop(first);
    assert!(path.exists());
    Listener::bind_unix(&path).unwrap();
    // Not a socket: refused rather than deleted.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    assert!(Listener::bind_unix(&file).is_err());
    assert!(file.exists());
}

#[tokio::test]
async fn reflection_lists_the_services_served_and_no_other() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let hosted = host().await;
    let channel = fetcher_sidecar::channel(&CompiledSource {
        target: Target::Unix(hosted.socket.clone()),
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(5),
    });
    let ask = |message: MessageRequest| {
        let mut client = ServerReflectionClient::new(channel.clone());
        async move {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message),
            };
            let mut stream = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await?
                .into_inner();
            Ok::<_, tonic::Status>(stream.message().await?.unwrap().message_response.unwrap())
        }
    };
    let MessageResponse::ListServicesResponse(list) =
        ask(MessageRequest::ListServices(String::new()))
            .await
            .unwrap()
    else {
        panic!("not a list of services");
    };
    let mut listed: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    let mut served = proto::server::served(fetcher_sidecar_host::SERVICE_NAME).to_vec();
    served.sort();
    assert_eq!(listed, served);
    assert!(listed.iter().any(|s| s == "featuregateway.v1.Fetcher"));
    // Every listed service is described; the gateway's service, whose file fetcher.proto
    // imports, is not listed.
    for name in served {
        assert!(
            ask(MessageRequest::FileContainingSymbol(name.to_owned()))
                .await
                .is_ok(),
            "{name}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|s| s == "featuregateway.v1.FeatureService")
    );
}

#[tokio::test]
async fn a_health_watch_open_at_shutdown_hears_not_serving_ends_and_lets_the_host_stop() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut hosted = host().await;
    let channel = fetcher_sidecar::channel(&CompiledSource {
        target: Target::Unix(hosted.socket.clone()),
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(5),
    });
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: fetcher_sidecar_host::SERVICE_NAME.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // The watch stays open through the stop: the host still returns, the watcher having heard
    // NOT_SERVING and then the end of its stream. 30 s bounds a hang, not a speed.
    hosted.stop.take().unwrap().send(()).unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(30), async {
        let mut heard = Vec::new();
        while let Some(update) = watch.message().await.unwrap() {
            heard.push(update.status);
        }
        heard
    })
    .await
    .expect("the watch stream ends");
    assert_eq!(heard, [ServingStatus::NotServing as i32]);
    tokio::time::timeout(Duration::from_secs(30), &mut hosted.server)
        .await
        .expect("the host stops with a watch open")
        .unwrap()
        .unwrap();
}
