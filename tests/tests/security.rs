//! End-to-end security of the real binary: TLS and mutual TLS on the gRPC port (certificates
//! made here with openssl), a certificate reloaded without a restart, callers authenticated by
//! bearer token or client certificate, each allowed its own feature services
//! (PERMISSION_DENIED otherwise, UNAUTHENTICATED without credentials, health open to all), and
//! a per-caller rate limit answering RESOURCE_EXHAUSTED with a retry hint.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{path::Path, process::Command, time::Duration};

use end_to_end::{GatewayProcess, i, map, postgres::TestCertificates, s};
use proto::v1::{self, feature_service_client::FeatureServiceClient};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn hash_token(token: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(end_to_end::gateway_binary())
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        line.starts_with("sha256$") && !line.contains(token),
        "{line}"
    );
    line
}

fn write_config(
    dir: &Path,
    certs: &TestCertificates,
    require_client_cert: bool,
) -> std::path::PathBuf {
    std::fs::write(dir.join("users.csv"), "user_id,score\nu1,0.5\n").unwrap();
    std::fs::write(dir.join("recs-token.hash"), hash_token("tok-recs-only")).unwrap();
    let config = format!(
        r#"
[entities.user_id]
type = "string"
[sources.tables]
kind = "static"
[views.users]
source = "tables"
entities = ["user_id"]
path = "users.csv"
features = {{ score = {{ type = "double" }} }}
[sources.payments]
kind = "stream"
store = "memory"
[views.activity]
source = "payments"
entities = ["user_id"]
time_field = "ts"
aggregations = {{ n_1h = {{ op = "count", window = "1h" }} }}
features = {{ n_1h = {{ type = "int64" }} }}
[feature_services.fraud]
features = ["users:score"]
[feature_services.recs]
features = ["users:score"]

[server.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
require_client_cert = {require_client_cert}
reload_interval = "200ms"

[auth.callers.scorer]
token_hash = "{scorer}"
feature_services = ["fraud"]
push_views = ["activity"]
[auth.callers.recommender]
token_hash_file = "recs-token.hash"
feature_services = ["recs"]
[auth.callers.bursty]
token_hash = "{bursty}"
feature_services = ["*"]
rate_limit = 1.0
burst = 3
[auth.callers.mesh]
mtls_name = "recs.internal"
feature_services = ["recs"]
"#,
        cert = dir.join("server.pem").display(),
        key = dir.join("server.key").display(),
        ca = certs.ca().display(),
        scorer = hash_token("tok-scorer"),
        bursty = hash_token("tok-bursty"),
    );
    std::fs::copy(certs.server_cert(), dir.join("server.pem")).unwrap();
    std::fs::copy(certs.server_key(), dir.join("server.key")).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn tls_channel(
    gw: &GatewayProcess,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{}", gw.grpc))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn request(fs: &str, token: Option<&str>) -> tonic::Request<v1::GetFeaturesRequest> {
    let mut r = tonic::Request::new(v1::GetFeaturesRequest {
        feature_service: fs.into(),
        entities: map(&[("user_id", s("u1"))]),
        ..Default::default()
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn code(client: &mut FeatureServiceClient<Channel>, fs: &str, token: Option<&str>) -> Code {
    match client.get_features(request(fs, token)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn tokens_and_client_certificates_each_read_their_own_feature_services() {
    let certs = TestCertificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &certs, false);
    let gw = GatewayProcess::serve(&config);

    // Plaintext to the TLS port gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", gw.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let status = HealthClient::new(plain)
            .check(HealthCheckRequest::default())
            .await;
        assert!(status.is_err(), "a plaintext call was answered");
    }

    let channel = tls_channel(&gw, certs.ca(), None).await.unwrap();
    // Health stays open to everyone.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    let mut client = FeatureServiceClient::new(channel);
    assert_eq!(
        code(&mut client, "fraud", Some("tok-scorer")).await,
        Code::Ok
    );
    let denied = client
        .get_features(request("recs", Some("tok-scorer")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("feature_service") && denied.message().contains("`recs`"),
        "{denied:?}"
    );
    // A token from a file.
    assert_eq!(
        code(&mut client, "recs", Some("tok-recs-only")).await,
        Code::Ok
    );
    assert_eq!(
        code(&mut client, "fraud", Some("tok-recs-only")).await,
        Code::PermissionDenied
    );
    // Pushing events is a permission of its own: the scorer may push to `activity`, the
    // recommender (who may read) may not.
    let push = |token: &str| {
        let mut r = tonic::Request::new(v1::PushEventsRequest {
            view: "activity".into(),
            events: vec![v1::Event {
                fields: map(&[
                    ("user_id", s("u1")),
                    (
                        "ts",
                        i(std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as i64),
                    ),
                ]),
            }],
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    assert_eq!(
        client
            .push_events(push("tok-scorer"))
            .await
            .unwrap()
            .into_inner()
            .applied,
        1
    );
    let denied = client.push_events(push("tok-recs-only")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "caller `recommender` may not push events to view `activity`"
    );
    // No ad-hoc reads for callers not allowed them, even of allowed views.
    let mut adhoc = request("", Some("tok-scorer"));
    adhoc.get_mut().features = vec!["users:score".into()];
    assert_eq!(
        client.get_features(adhoc).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        code(&mut client, "fraud", None).await,
        Code::Unauthenticated
    );
    let unknown = client
        .get_features(request("fraud", Some("tok-wrong")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert!(!unknown.message().contains("tok-wrong"));
    // Discovery shows a caller what it may read.
    let mut list = tonic::Request::new(v1::ListFeatureServicesRequest::default());
    list.metadata_mut()
        .insert("authorization", "Bearer tok-scorer".parse().unwrap());
    let names: Vec<String> = client
        .list_feature_services(list)
        .await
        .unwrap()
        .into_inner()
        .feature_services
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["fraud"]);

    // A client certificate for `recs.internal` from the trusted CA is the caller `mesh`.
    let (cert, key) = certs.issue_client("mesh", "recs.internal", "ca");
    let mesh = tls_channel(&gw, certs.ca(), Some((&cert, &key)))
        .await
        .unwrap();
    let mut mesh = FeatureServiceClient::new(mesh);
    assert_eq!(code(&mut mesh, "recs", None).await, Code::Ok);
    assert_eq!(code(&mut mesh, "fraud", None).await, Code::PermissionDenied);
    // A certificate from an unrelated CA is refused at the handshake.
    let (cert, key) = certs.issue_client("stranger", "recs.internal", "other-ca");
    let refused = match tls_channel(&gw, certs.ca(), Some((&cert, &key))).await {
        Err(_) => true,
        Ok(channel) => FeatureServiceClient::new(channel)
            .get_features(request("recs", None))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");

    // The rate limit: a burst of 3, then RESOURCE_EXHAUSTED with a retry hint.
    for _ in 0..3 {
        assert_eq!(
            code(&mut client, "fraud", Some("tok-bursty")).await,
            Code::Ok
        );
    }
    let limited = client
        .get_features(request("fraud", Some("tok-bursty")))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    use tonic_types::StatusExt;
    let retry = limited.get_details_retry_info().unwrap();
    let delay = retry.retry_delay.unwrap();
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    // Another caller is not affected.
    assert_eq!(
        code(&mut client, "fraud", Some("tok-scorer")).await,
        Code::Ok
    );
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    assert_eq!(
        code(&mut client, "fraud", Some("tok-bursty")).await,
        Code::Ok
    );

    let metrics = gw.admin_get("/metrics").await;
    for reason in ["unauthenticated", "rate_limited", "permission_denied"] {
        assert!(
            metrics.contains(&format!(
                "feature_gateway_requests_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
    let log = gw.log();
    for secret in ["tok-scorer", "tok-bursty", "tok-recs-only", "tok-wrong"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
    }
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_and_reloads_certificates() {
    let certs = TestCertificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &certs, true);
    let gw = GatewayProcess::serve(&config);
    let (cert, key) = certs.issue_client("mesh", "recs.internal", "ca");

    // Without a client certificate: refused, token or not.
    let refused = match tls_channel(&gw, certs.ca(), None).await {
        Err(_) => true,
        Ok(channel) => FeatureServiceClient::new(channel)
            .get_features(request("recs", Some("tok-recs-only")))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let channel = tls_channel(&gw, certs.ca(), Some((&cert, &key)))
        .await
        .unwrap();
    assert_eq!(
        code(&mut FeatureServiceClient::new(channel), "recs", None).await,
        Code::Ok
    );

    // A file that does not load keeps the previous certificate in use.
    let served_cert = dir.path().join("server.pem");
    std::fs::write(&served_cert, "not a certificate").unwrap();
    logged(&gw, "do not load").await;
    let channel = tls_channel(&gw, certs.ca(), Some((&cert, &key)))
        .await
        .unwrap();
    assert_eq!(
        code(&mut FeatureServiceClient::new(channel), "recs", None).await,
        Code::Ok
    );

    // A new certificate from another CA: new connections get it without a restart, so a client
    // trusting only the first CA no longer connects, and one trusting the other CA does.
    let (new_cert, new_key) = certs.issue_server("server2", "other-ca");
    std::fs::copy(&new_key, dir.path().join("server.key")).unwrap();
    std::fs::copy(&new_cert, &served_cert).unwrap();
    logged(&gw, "TLS certificate reloaded").await;
    let old_trust = match tls_channel(&gw, certs.ca(), Some((&cert, &key))).await {
        Err(_) => false,
        Ok(channel) => FeatureServiceClient::new(channel)
            .get_features(request("recs", None))
            .await
            .is_ok(),
    };
    assert!(!old_trust, "the old certificate is still served");
    let channel = tls_channel(&gw, &certs.other_ca(), Some((&cert, &key)))
        .await
        .unwrap();
    assert_eq!(
        code(&mut FeatureServiceClient::new(channel), "recs", None).await,
        Code::Ok
    );
}

/// Waits until the gateway's log holds `line` (the certificate watcher checks the files every
/// `reload_interval`).
async fn logged(gw: &GatewayProcess, line: &str) {
    end_to_end::eventually(Duration::from_secs(20), line, async || {
        let log = gw.log();
        if log.contains(line) { Ok(()) } else { Err(log) }
    })
    .await;
}
