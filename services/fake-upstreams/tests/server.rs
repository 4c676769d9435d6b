//! The fake upstreams over real HTTP: data, 404s, batches, and every fault control through both
//! the admin API and the library API.

use std::time::Duration;

use fake_upstreams::{
    FailNext, FakeConfig, FakeServer, Latency, RouteFaults, Stats,
    internal::{self, DEVICE_REPUTATION, MERCHANT_RISK, MERCHANT_RISK_BATCH},
};
use serde_json::{Value, json};

async fn start() -> (FakeServer, reqwest::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = FakeServer::start(FakeConfig {
        population: 500,
        ..FakeConfig::default()
    })
    .await
    .expect("server starts");
    (server, reqwest::Client::new())
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request completes");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn serves_seeded_records_and_json_404s() {
    let (server, client) = start().await;
    let base = server.base_url();
    let (status, body) = get(&client, format!("{base}/v1/devices/d_000123/reputation")).await;
    assert_eq!(status, 200);
    assert_eq!(
        Some(body),
        internal::device_reputation(server.seed(), 500, "d_000123")
    );
    let (status, body) = get(&client, format!("{base}/v1/merchants/m_00042/risk")).await;
    assert_eq!(status, 200);
    assert_eq!(body["merchant_id"], "m_00042");

    for missing in ["d_000500", "d_1", "..%2Fadmin", "d_000001%3Fx%3D1"] {
        let (status, body) = get(&client, format!("{base}/v1/devices/{missing}/reputation")).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(body["error"], "not_found", "{missing}");
    }
    let (status, body) = get(&client, format!("{base}/nowhere")).await;
    assert_eq!((status, &body["error"]), (404, &json!("not_found")));

    let stats = server.stats();
    assert_eq!(stats.calls(DEVICE_REPUTATION), 5);
    assert_eq!(stats.route(DEVICE_REPUTATION).not_found, 4);
    assert_eq!(
        stats.route(DEVICE_REPUTATION).last_uri.as_deref(),
        Some("/v1/devices/d_000001%3Fx%3D1/reputation")
    );
    assert_eq!(stats.calls(MERCHANT_RISK), 1);
}

#[tokio::test]
async fn batch_answers_known_ids_in_order() {
    let (server, client) = start().await;
    let response = client
        .post(format!("{}/v1/merchants/risk:batch", server.base_url()))
        .json(&json!({"ids": ["m_00007", "m_99999", "m_00003", 12]}))
        .send()
        .await
        .expect("request completes");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON body");
    let ids: Vec<&str> = body["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["m_00007", "m_00003"]);
    assert_eq!(
        body["results"][0]["scores"],
        internal::merchant_risk(server.seed(), 500, "m_00007").expect("exists")["scores"]
    );
    let bad = client
        .post(format!("{}/v1/merchants/risk:batch", server.base_url()))
        .json(&json!({"keys": []}))
        .send()
        .await
        .expect("request completes");
    assert_eq!(bad.status(), 400);
    let stats = server.stats().route(MERCHANT_RISK_BATCH);
    assert_eq!((stats.calls, stats.keys, stats.not_found), (2, 4, 2));
}

#[tokio::test]
async fn admin_api_scripts_failures_and_resets() {
    let (server, client) = start().await;
    let base = server.base_url();
    let plan = json!({"routes": {"device_reputation": {"fail_next": {"count": 2, "status": 429}}}});
    let response = client
        .post(format!("{base}/admin/faults"))
        .json(&plan)
        .send()
        .await
        .expect("request completes");
    assert_eq!(response.status(), 200);
    let url = format!("{base}/v1/devices/d_000001/reputation");
    let first = client.get(&url).send().await.expect("request completes");
    assert_eq!(first.status(), 429);
    assert_eq!(
        first.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(get(&client, url.clone()).await.0, 429);
    assert_eq!(get(&client, url.clone()).await.0, 200);

    let stats: Stats = client
        .get(format!("{base}/admin/stats"))
        .send()
        .await
        .expect("request completes")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(stats.calls(DEVICE_REPUTATION), 3);
    assert_eq!(stats.route(DEVICE_REPUTATION).injected_errors, 2);

    let (status, body) = {
        let r = client
            .post(format!("{base}/admin/faults"))
            .json(&json!({"routes": {"nope": {}}}))
            .send()
            .await
            .expect("request completes");
        (r.status().as_u16(), r.json::<Value>().await.expect("JSON"))
    };
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown route `nope`")),
        "{body}"
    );

    let reset = client
        .post(format!("{base}/admin/reset"))
        .send()
        .await
        .expect("request completes");
    assert_eq!(reset.status(), 200);
    assert_eq!(server.stats().calls(DEVICE_REPUTATION), 0);
}

#[tokio::test]
async fn library_api_sets_latency_rates_and_hangs() {
    let (server, client) = start().await;
    let url = format!("{}/v1/merchants/m_00001/risk", server.base_url());

    server
        .set_faults(
            MERCHANT_RISK,
            RouteFaults {
                error_rate: 1.0,
                error_status: 502,
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    assert_eq!(get(&client, url.clone()).await.0, 502);

    server
        .set_faults(
            "*",
            RouteFaults {
                latency: Latency::Fixed { ms: 200.0 },
                fail_next: Some(FailNext {
                    count: 1,
                    status: 500,
                }),
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    let started = std::time::Instant::now();
    assert_eq!(get(&client, url.clone()).await.0, 500);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "delay applied"
    );

    // A hang holds the call until the fault is lifted.
    server
        .set_faults(
            MERCHANT_RISK,
            RouteFaults {
                hang: true,
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, url).await.0 }
    });
    // Counted once it arrives; still held a while after.
    arrived(&server, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "call hangs");
    assert_eq!(server.stats().calls(MERCHANT_RISK), 3);
    server
        .set_faults(MERCHANT_RISK, RouteFaults::default())
        .expect("valid faults");
    let status = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("released")
        .expect("task ok");
    assert_eq!(status, 200);

    // Shutting down releases a hung call with a 503 instead of leaving it stuck.
    server.set_time_scale(0.0).expect("valid scale");
    server
        .set_faults(
            MERCHANT_RISK,
            RouteFaults {
                hang: true,
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    let pending = tokio::spawn(async move { get(&client, url).await.0 });
    arrived(&server, 4).await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown completes")
        .expect("clean shutdown");
    assert_eq!(pending.await.expect("task ok"), 503);
}

#[tokio::test]
async fn a_scripted_delay_slows_the_next_call_only_and_a_caller_leaving_is_counted() {
    let (server, client) = start().await;
    let base = server.base_url();
    // Through the admin API: the next call waits 30 s, the ones after it do not.
    let plan = json!({"routes": {"device_reputation": {"delay_next": {"count": 1, "ms": 30000}}}});
    let response = client
        .post(format!("{base}/admin/faults"))
        .json(&plan)
        .send()
        .await
        .expect("request completes");
    assert_eq!(response.status(), 200);
    let url = format!("{base}/v1/devices/d_000001/reputation");
    // The caller gives up after 300 ms: its connection closes while the call is held.
    let abandoned = client
        .get(&url)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("the held call outlasts the caller's timeout");
    assert!(abandoned.is_timeout(), "{abandoned}");
    let started = std::time::Instant::now();
    while server.stats().route(DEVICE_REPUTATION).cancelled == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dropped call was never counted: {:?}",
            server.stats().route(DEVICE_REPUTATION)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next call is not delayed (nothing like 30 s) and is answered, not cancelled.
    let started = std::time::Instant::now();
    assert_eq!(get(&client, url.clone()).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    let stats = server.stats().route(DEVICE_REPUTATION);
    assert_eq!((stats.calls, stats.cancelled), (2, 1));
    let served: Stats = client
        .get(format!("{base}/admin/stats"))
        .send()
        .await
        .expect("request completes")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(served.route(DEVICE_REPUTATION).cancelled, 1);
}

/// Waits until `MERCHANT_RISK` has seen `calls` calls.
async fn arrived(server: &FakeServer, calls: u64) {
    let started = std::time::Instant::now();
    while server.stats().calls(MERCHANT_RISK) < calls {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "call {calls} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
