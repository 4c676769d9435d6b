//! The fake Plaid over real HTTP: every endpoint's success shape, every error class of the
//! contract's table with its exact body and status, credentials, sync paging and mutation,
//! the item state machine, rate limits, latency, injected errors and determinism.

use std::time::{Duration, Instant};

use fake_upstreams::{
    FailNext, FakeConfig, FakeServer, Latency, RouteFaults,
    plaid::{
        self, ACCOUNTS_BALANCE_GET, ACCOUNTS_GET, ItemState, PlaidConfig, PlaidFailNext,
        PlaidFaults, PlaidHoldNext, RateLimit, RateLimitPlan, TRANSACTIONS_SYNC, data,
    },
};
use serde_json::{Value, json};

const POPULATION: u64 = 200;

async fn start_with(seed: u64) -> (FakeServer, reqwest::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = FakeServer::start(FakeConfig {
        seed,
        population: POPULATION,
        ..FakeConfig::default()
    })
    .await
    .expect("server starts");
    (server, reqwest::Client::new())
}

async fn start() -> (FakeServer, reqwest::Client) {
    start_with(42).await
}

fn creds() -> PlaidConfig {
    PlaidConfig::default()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request completes");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text}"));
    (status, body)
}

/// A well-formed call: credentials as headers, the version header, a JSON body.
async fn call(
    server: &FakeServer,
    client: &reqwest::Client,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let c = creds();
    send(
        client
            .post(format!("{}{path}", server.base_url()))
            .header("PLAID-CLIENT-ID", c.client_id)
            .header("PLAID-SECRET", c.secret)
            .header("Plaid-Version", plaid::PLAID_VERSION)
            .json(&body),
    )
    .await
}

fn token(server: &FakeServer, user: u64) -> String {
    data::access_token(server.seed(), user)
}

/// Asserts the exact Plaid error body and status.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, error_type: &str, error_code: &str) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{body}");
    assert_eq!(body["error_type"], error_type, "{body}");
    assert_eq!(body["error_code"], error_code, "{body}");
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["display_message"], Value::Null);
    assert!(
        body["request_id"].as_str().is_some_and(|r| r.len() == 15),
        "{body}"
    );
    assert_eq!(body["causes"], json!([]));
    assert_eq!(body["suggested_action"], Value::Null);
    assert_eq!(
        body["documentation_url"]
            .as_str()
            .and_then(|u| u.rsplit('#').next()),
        Some(error_code.to_lowercase().as_str())
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(8),
        "no other fields: {body}"
    );
}

#[tokio::test]
async fn balance_and_accounts_share_one_shape_and_filter_by_account_id() {
    let (server, client) = start().await;
    let seed = server.seed();
    let expected = data::accounts(seed, 7);
    for path in ["/accounts/balance/get", "/accounts/get"] {
        let (status, body) = call(
            &server,
            &client,
            path,
            json!({"access_token": token(&server, 7)}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["request_id"].as_str().is_some_and(|r| r.len() == 15));
        assert_eq!(body["item"]["item_id"], data::item_id(seed, 7));
        assert_eq!(body["item"]["error"], Value::Null);
        let accounts = body["accounts"].as_array().expect("accounts");
        assert_eq!(accounts.len(), expected.len());
        for (got, want) in accounts.iter().zip(&expected) {
            assert_eq!(got, &want.to_json());
            let balances = &got["balances"];
            for field in [
                "available",
                "current",
                "limit",
                "iso_currency_code",
                "unofficial_currency_code",
            ] {
                assert!(balances.get(field).is_some(), "{field} present, maybe null");
            }
            assert!(!balances["current"].is_null() || !balances["available"].is_null());
            for field in ["mask", "name", "official_name", "type", "subtype"] {
                assert!(got[field].is_string(), "{field}");
            }
        }
    }
    // A user with several accounts, filtered down to the last one.
    let user = (0..POPULATION)
        .find(|u| data::accounts(seed, *u).len() >= 2)
        .expect("some user has two accounts");
    let last = data::accounts(seed, user).pop().expect("an account");
    let (status, body) = call(
        &server,
        &client,
        "/accounts/balance/get",
        json!({"access_token": token(&server, user), "options": {"account_ids": [last.account_id]}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["accounts"], json!([last.to_json()]));
    let got = call(
        &server,
        &client,
        "/accounts/get",
        json!({"access_token": token(&server, user), "options": {"account_ids": ["nope"]}}),
    )
    .await;
    assert_error(&got, 400, "INVALID_INPUT", "INVALID_ACCOUNT_ID");
    assert_eq!(server.stats().calls(ACCOUNTS_BALANCE_GET), 2);
    assert_eq!(server.stats().calls(ACCOUNTS_GET), 2);
    assert_eq!(
        server.plaid().stats().route(ACCOUNTS_GET).errors["INVALID_ACCOUNT_ID"],
        1
    );
}

#[tokio::test]
async fn transport_and_request_errors_have_exact_bodies() {
    let (server, client) = start().await;
    let base = server.base_url();
    let c = creds();
    let url = format!("{base}/accounts/get");
    let access_token = token(&server, 1);
    let with_creds = |r: reqwest::RequestBuilder| {
        r.header("PLAID-CLIENT-ID", &c.client_id)
            .header("PLAID-SECRET", &c.secret)
    };
    let body = json!({"access_token": access_token}).to_string();

    let got = send(with_creds(client.post(&url)).body(body.clone())).await;
    assert_error(&got, 400, "INVALID_REQUEST", "INVALID_HEADERS");
    let got = send(
        with_creds(client.post(&url))
            .header("content-type", "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_error(&got, 400, "INVALID_REQUEST", "INVALID_HEADERS");
    let got = send(
        with_creds(client.post(&url))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.clone()),
    )
    .await;
    assert_eq!(got.0, 200, "a charset parameter is fine: {}", got.1);

    for bad in ["{not json", "", "[1, 2]"] {
        let got = send(
            with_creds(client.post(&url))
                .header("content-type", "application/json")
                .body(bad),
        )
        .await;
        assert_error(&got, 400, "INVALID_REQUEST", "INVALID_BODY");
    }
    let got = send(
        with_creds(client.post(&url))
            .header("Plaid-Version", "2018-05-22")
            .json(&json!({"access_token": token(&server, 1)})),
    )
    .await;
    assert_error(&got, 400, "INVALID_REQUEST", "INVALID_HEADERS");

    // Only POST; unknown endpoints are Plaid's 404.
    let got = send(with_creds(client.get(&url))).await;
    assert_error(&got, 404, "INVALID_REQUEST", "NOT_FOUND");
    let got = call(&server, &client, "/accounts/nope", json!({})).await;
    assert_error(&got, 404, "INVALID_REQUEST", "NOT_FOUND");

    let got = call(
        &server,
        &client,
        "/accounts/get",
        json!({"access_token": token(&server, 1), "extra": 1}),
    )
    .await;
    assert_error(&got, 400, "INVALID_REQUEST", "UNKNOWN_FIELDS");
    assert!(
        got.1["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("extra"))
    );
    let got = call(
        &server,
        &client,
        "/accounts/get",
        json!({"access_token": token(&server, 1), "options": {"bogus": true}}),
    )
    .await;
    assert_error(&got, 400, "INVALID_REQUEST", "UNKNOWN_FIELDS");
    let got = call(&server, &client, "/item/get", json!({})).await;
    assert_error(&got, 400, "INVALID_REQUEST", "MISSING_FIELDS");
    assert!(
        got.1["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("access_token"))
    );
    for count in [json!(0), json!(501), json!("ten"), json!(1.5)] {
        let got = call(
            &server,
            &client,
            "/transactions/sync",
            json!({"access_token": token(&server, 1), "count": count}),
        )
        .await;
        assert_error(&got, 400, "INVALID_REQUEST", "INVALID_FIELD");
    }
    let got = call(
        &server,
        &client,
        "/accounts/get",
        json!({"access_token": 12}),
    )
    .await;
    assert_error(&got, 400, "INVALID_REQUEST", "INVALID_FIELD");

    // Tokens: malformed, of a user beyond the population, of another seed.
    for bad in [
        "access-sandbox-nope".to_owned(),
        data::access_token(server.seed(), POPULATION),
        data::access_token(server.seed() + 1, 1),
    ] {
        let got = call(
            &server,
            &client,
            "/accounts/get",
            json!({"access_token": bad}),
        )
        .await;
        assert_error(&got, 400, "INVALID_INPUT", "INVALID_ACCESS_TOKEN");
    }
}

#[tokio::test]
async fn credentials_from_headers_or_body_and_never_echoed() {
    let (server, client) = start().await;
    let url = format!("{}/item/get", server.base_url());
    let c = creds();
    let access_token = token(&server, 3);

    let (status, _) = send(client.post(&url).json(&json!({
        "client_id": c.client_id, "secret": c.secret, "access_token": access_token,
    })))
    .await;
    assert_eq!(status, 200, "credentials in the body");
    let (status, _) = send(
        client
            .post(&url)
            .header("PLAID-CLIENT-ID", &c.client_id)
            .header("PLAID-SECRET", &c.secret)
            .json(&json!({"access_token": access_token})),
    )
    .await;
    assert_eq!(status, 200, "credentials in headers");
    let (status, _) = send(
        client
            .post(&url)
            .header("PLAID-CLIENT-ID", &c.client_id)
            .json(&json!({"secret": c.secret, "access_token": access_token})),
    )
    .await;
    assert_eq!(status, 200, "one of each");

    let got = send(
        client
            .post(&url)
            .json(&json!({"access_token": access_token})),
    )
    .await;
    assert_error(&got, 400, "INVALID_REQUEST", "MISSING_FIELDS");
    assert!(
        got.1["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("client_id") && m.contains("secret"))
    );

    let wrong_secret = "not-the-secret-9f8e7d";
    let got = send(client.post(&url).json(&json!({
        "client_id": c.client_id, "secret": wrong_secret, "access_token": access_token,
    })))
    .await;
    assert_error(&got, 400, "INVALID_INPUT", "INVALID_API_KEYS");
    assert!(!got.1.to_string().contains(wrong_secret));
    let got = send(
        client
            .post(&url)
            .header("PLAID-CLIENT-ID", "someone-else")
            .header("PLAID-SECRET", &c.secret)
            .json(&json!({"access_token": access_token})),
    )
    .await;
    assert_error(&got, 400, "INVALID_INPUT", "INVALID_API_KEYS");
    assert!(!got.1.to_string().contains(&c.secret));
    assert!(
        !format!("{c:?}").contains(&c.secret),
        "Debug redacts the secret"
    );
}

/// Pages `/transactions/sync` from `cursor` until `has_more` is false; returns the added ids,
/// the page count and the final cursor, or the first error.
async fn sync_all(
    server: &FakeServer,
    client: &reqwest::Client,
    user: u64,
    cursor: &str,
    count: u64,
) -> Result<(Vec<String>, usize, String), (u16, Value)> {
    let mut cursor = cursor.to_owned();
    let (mut ids, mut pages) = (Vec::new(), 0);
    loop {
        let (status, body) = call(
            server,
            client,
            "/transactions/sync",
            json!({"access_token": token(server, user), "cursor": cursor, "count": count}),
        )
        .await;
        if status != 200 {
            return Err((status, body));
        }
        pages += 1;
        let added = body["added"].as_array().expect("added");
        assert!(added.len() as u64 <= count);
        ids.extend(
            added
                .iter()
                .map(|t| t["transaction_id"].as_str().expect("id").to_owned()),
        );
        cursor = body["next_cursor"].as_str().expect("cursor").to_owned();
        if body["has_more"] == json!(false) {
            return Ok((ids, pages, cursor));
        }
    }
}

#[tokio::test]
async fn sync_pages_the_full_history_to_completion() {
    let (server, client) = start().await;
    let seed = server.seed();
    let expected = data::transactions(seed, 11);
    assert!(
        expected.len() > 30,
        "enough history to page: {}",
        expected.len()
    );

    // The first page without a cursor, with the default count.
    let (status, body) = call(
        &server,
        &client,
        "/transactions/sync",
        json!({"access_token": token(&server, 11)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let added = body["added"].as_array().expect("added");
    assert_eq!(added.len(), expected.len().min(100));
    assert_eq!(added[0], expected[0].to_json());
    assert_eq!(body["modified"], json!([]));
    assert_eq!(body["removed"], json!([]));
    assert_eq!(
        body["transactions_update_status"],
        "HISTORICAL_UPDATE_COMPLETE"
    );
    assert_eq!(body["has_more"], json!(expected.len() > 100));
    let txn = &added[0];
    for field in [
        "transaction_id",
        "account_id",
        "amount",
        "iso_currency_code",
        "date",
        "authorized_date",
        "datetime",
        "name",
        "merchant_name",
        "pending",
        "payment_channel",
    ] {
        assert!(txn.get(field).is_some(), "{field}");
    }
    for field in ["primary", "detailed", "confidence_level"] {
        assert!(
            txn["personal_finance_category"][field].is_string(),
            "{field}"
        );
    }

    let (ids, pages, last) = sync_all(&server, &client, 11, "", 7).await.expect("syncs");
    let want: Vec<&str> = expected.iter().map(|t| t.transaction_id.as_str()).collect();
    assert_eq!(ids, want, "every transaction exactly once, in order");
    assert_eq!(pages, expected.len().div_ceil(7));

    // The final cursor has nothing new.
    let (more, pages, again) = sync_all(&server, &client, 11, &last, 50)
        .await
        .expect("syncs");
    assert_eq!((more.len(), pages), (0, 1));
    assert_eq!(again, last);

    // Foreign or edited cursors are refused.
    let got = sync_all(&server, &client, 12, &last, 10)
        .await
        .expect_err("other item's cursor");
    assert_error(&got, 400, "INVALID_REQUEST", "INVALID_FIELD");
    let got = sync_all(&server, &client, 11, "garbage", 10)
        .await
        .expect_err("garbage");
    assert_error(&got, 400, "INVALID_REQUEST", "INVALID_FIELD");
}

#[tokio::test]
async fn mutation_during_pagination_forces_a_restart() {
    let (server, client) = start().await;
    let user = 21;
    let item = data::item_id(server.seed(), user);
    let (status, first) = call(
        &server,
        &client,
        "/transactions/sync",
        json!({"access_token": token(&server, user), "count": 5}),
    )
    .await;
    assert_eq!((status, &first["has_more"]), (200, &json!(true)));
    let mid = first["next_cursor"].as_str().expect("cursor").to_owned();

    let response = client
        .post(format!(
            "{}/admin/plaid/items/{item}/mutate_transactions",
            server.base_url()
        ))
        .send()
        .await
        .expect("admin call");
    assert_eq!(response.status(), 200);
    let got = sync_all(&server, &client, user, &mid, 5)
        .await
        .expect_err("mutated");
    assert_error(
        &got,
        400,
        "TRANSACTIONS_ERROR",
        "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
    );

    // Restarting from the loop's first cursor completes.
    let (ids, _, _) = sync_all(&server, &client, user, "", 50)
        .await
        .expect("restart completes");
    assert_eq!(ids.len(), data::transactions(server.seed(), user).len());

    // The same error can also be scripted on the route.
    server
        .plaid()
        .set_faults(
            TRANSACTIONS_SYNC,
            PlaidFaults {
                fail_next: Some(PlaidFailNext {
                    count: 1,
                    error_code: "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION".into(),
                }),
                ..PlaidFaults::default()
            },
        )
        .expect("valid faults");
    let got = sync_all(&server, &client, user, "", 50)
        .await
        .expect_err("scripted");
    assert_error(
        &got,
        400,
        "TRANSACTIONS_ERROR",
        "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
    );
    assert!(sync_all(&server, &client, user, "", 500).await.is_ok());
}

#[tokio::test]
async fn item_state_machine_from_admin_and_library() {
    let (server, client) = start().await;
    let base = server.base_url();
    let user = 5;
    let item = data::item_id(server.seed(), user);
    let access_token = token(&server, user);

    let (status, body) = call(
        &server,
        &client,
        "/item/get",
        json!({"access_token": access_token}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["item"]["item_id"], item);
    assert_eq!(body["item"]["error"], Value::Null);
    for field in [
        "institution_id",
        "products",
        "created_at",
        "consent_expiration_time",
    ] {
        assert!(body["item"].get(field).is_some(), "{field}");
    }
    assert!(body["status"]["transactions"]["last_successful_update"].is_string());
    assert_eq!(
        body["status"]["transactions"]["last_failed_update"],
        Value::Null
    );

    let set = |state: &'static str| {
        let (client, url) = (
            client.clone(),
            format!("{base}/admin/plaid/items/{item}/state"),
        );
        async move { send(client.post(url).json(&json!({"state": state}))).await }
    };
    let (status, _) = set("login_required").await;
    assert_eq!(status, 200);
    assert_eq!(
        server.plaid().item_state(&item),
        Some(ItemState::LoginRequired)
    );
    for path in [
        "/accounts/balance/get",
        "/accounts/get",
        "/transactions/sync",
        "/identity/get",
        "/identity/match",
        "/auth/get",
    ] {
        let got = call(
            &server,
            &client,
            path,
            json!({"access_token": access_token}),
        )
        .await;
        assert_error(&got, 400, "ITEM_ERROR", "ITEM_LOGIN_REQUIRED");
    }
    let (status, body) = call(
        &server,
        &client,
        "/item/get",
        json!({"access_token": access_token}),
    )
    .await;
    assert_eq!(status, 200, "item/get still answers, showing the error");
    assert_eq!(body["item"]["error"]["error_code"], "ITEM_LOGIN_REQUIRED");
    assert_eq!(body["item"]["error"]["error_type"], "ITEM_ERROR");
    assert!(body["status"]["transactions"]["last_failed_update"].is_string());
    // Other Items are unaffected.
    let (status, _) = call(
        &server,
        &client,
        "/accounts/get",
        json!({"access_token": token(&server, 6)}),
    )
    .await;
    assert_eq!(status, 200);

    // Repaired through the library API.
    server
        .plaid()
        .set_item_state(&item, ItemState::Healthy)
        .expect("known item");
    let (status, body) = call(
        &server,
        &client,
        "/accounts/balance/get",
        json!({"access_token": access_token}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["item"]["error"], Value::Null);

    // Not ready: sync answers empty with NOT_READY.
    let (status, _) = set("not_ready").await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &server,
        &client,
        "/transactions/sync",
        json!({"access_token": access_token}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &body["added"],
            &body["modified"],
            &body["removed"],
            &body["next_cursor"],
            &body["has_more"]
        ),
        (
            &json!([]),
            &json!([]),
            &json!([]),
            &json!(""),
            &json!(false)
        )
    );
    assert_eq!(body["transactions_update_status"], "NOT_READY");

    // Bad admin calls.
    let (status, _) = send(
        client
            .post(format!("{base}/admin/plaid/items/nope/state"))
            .json(&json!({"state": "healthy"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        client
            .post(format!("{base}/admin/plaid/items/{item}/state"))
            .json(&json!({"state": "broken"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = send(client.get(format!("{base}/admin/plaid/users/{user}"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["access_token"], access_token);
    assert_eq!(body["state"], "not_ready");

    // A reset makes every Item healthy again.
    server.reset();
    assert_eq!(server.plaid().item_state(&item), Some(ItemState::Healthy));
}

#[tokio::test]
async fn rate_limits_per_item_and_per_client() {
    let (server, client) = start().await;
    let balance = |user: u64| {
        let (server, client) = (&server, &client);
        async move {
            call(
                server,
                client,
                "/accounts/balance/get",
                json!({"access_token": token(server, user)}),
            )
            .await
        }
    };
    // Production default: 5 per Item per minute.
    for _ in 0..5 {
        assert_eq!(balance(1).await.0, 200);
    }
    let got = balance(1).await;
    assert_error(&got, 429, "RATE_LIMIT_EXCEEDED", "BALANCE_LIMIT");
    assert_eq!(balance(2).await.0, 200, "another Item has its own budget");

    // A small per-client limit and a short window, through the admin API, over empty windows
    // (a reset), so the count starts from zero. The window is long enough for the next five
    // calls on a loaded machine, short enough to wait for below.
    server.reset();
    let window = Duration::from_secs(2);
    let response = client
        .post(format!("{}/admin/plaid/rate_limits", server.base_url()))
        .json(&json!({"window_ms": window.as_millis() as u64, "routes": {ACCOUNTS_BALANCE_GET: {"per_item": 100, "per_client": 3}}}))
        .send()
        .await
        .expect("admin call");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    for user in 10..13 {
        assert_eq!(balance(user).await.0, 200);
    }
    let got = balance(13).await;
    assert_error(
        &got,
        429,
        "RATE_LIMIT_EXCEEDED",
        "ACCOUNTS_BALANCE_GET_LIMIT",
    );
    // No Retry-After is documented, so none is sent.
    let raw = client
        .post(format!("{}/accounts/balance/get", server.base_url()))
        .header("PLAID-CLIENT-ID", creds().client_id)
        .header("PLAID-SECRET", creds().secret)
        .json(&json!({"access_token": token(&server, 14)}))
        .send()
        .await
        .expect("request completes");
    assert_eq!(raw.status(), 429);
    assert!(raw.headers().get("retry-after").is_none());
    // Refused calls are not recorded: once the window has passed (and not before), calls are
    // admitted again.
    loop {
        let (status, _) = balance(13).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(started.elapsed() < window + Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= window, "{:?}", started.elapsed());

    // Other endpoints have their own limits and codes.
    server
        .plaid()
        .set_rate_limits(&RateLimitPlan {
            window_ms: Some(60_000),
            routes: [(
                TRANSACTIONS_SYNC.to_owned(),
                RateLimit {
                    per_item: Some(2),
                    per_client: None,
                },
            )]
            .into(),
        })
        .expect("valid plan");
    for _ in 0..2 {
        assert_eq!(
            call(
                &server,
                &client,
                "/transactions/sync",
                json!({"access_token": token(&server, 1)})
            )
            .await
            .0,
            200
        );
    }
    let got = call(
        &server,
        &client,
        "/transactions/sync",
        json!({"access_token": token(&server, 1)}),
    )
    .await;
    assert_error(&got, 429, "RATE_LIMIT_EXCEEDED", "TRANSACTIONS_SYNC_LIMIT");
    let stats = server.plaid().stats().route(TRANSACTIONS_SYNC);
    assert_eq!((stats.ok, stats.rate_limited), (2, 1));
    assert!(
        server
            .plaid()
            .set_rate_limits(&RateLimitPlan {
                window_ms: Some(0),
                ..RateLimitPlan::default()
            })
            .is_err()
    );
}

#[tokio::test]
async fn injected_plaid_errors_scripted_and_probabilistic() {
    let (server, client) = start().await;
    let base = server.base_url();
    let access_token = token(&server, 4);
    let balance = || {
        call(
            &server,
            &client,
            "/accounts/balance/get",
            json!({"access_token": access_token}),
        )
    };

    let plan = json!({"routes": {ACCOUNTS_BALANCE_GET: {"fail_next": {"count": 2, "error_code": "INSTITUTION_DOWN"}}}});
    let (status, _) = send(
        client
            .post(format!("{base}/admin/plaid/faults"))
            .json(&plan),
    )
    .await;
    assert_eq!(status, 200);
    assert_error(
        &balance().await,
        400,
        "INSTITUTION_ERROR",
        "INSTITUTION_DOWN",
    );
    assert_error(
        &balance().await,
        400,
        "INSTITUTION_ERROR",
        "INSTITUTION_DOWN",
    );
    assert_eq!(balance().await.0, 200);

    let cases = [
        ("INSTITUTION_NOT_RESPONDING", 400, "INSTITUTION_ERROR"),
        ("INTERNAL_SERVER_ERROR", 500, "API_ERROR"),
        ("PLANNED_MAINTENANCE", 503, "API_ERROR"),
        ("ITEM_NOT_FOUND", 400, "ITEM_ERROR"),
        ("NO_ACCOUNTS", 400, "ITEM_ERROR"),
        ("PRODUCT_NOT_READY", 400, "ITEM_ERROR"),
        ("ACCOUNTS_LIMIT", 429, "RATE_LIMIT_EXCEEDED"),
    ];
    for (code, status, error_type) in cases {
        server
            .plaid()
            .set_faults(
                ACCOUNTS_GET,
                PlaidFaults {
                    fail_next: Some(PlaidFailNext {
                        count: 1,
                        error_code: code.into(),
                    }),
                    ..PlaidFaults::default()
                },
            )
            .expect("valid faults");
        let got = call(
            &server,
            &client,
            "/accounts/get",
            json!({"access_token": access_token}),
        )
        .await;
        assert_error(&got, status, error_type, code);
    }

    // Probabilistic: a rate of 1 fails every call, 0 none.
    server
        .plaid()
        .set_faults(
            "*",
            PlaidFaults {
                error_rate: 1.0,
                error_code: "INTERNAL_SERVER_ERROR".into(),
                ..PlaidFaults::default()
            },
        )
        .expect("valid faults");
    assert_error(
        &call(
            &server,
            &client,
            "/item/get",
            json!({"access_token": access_token}),
        )
        .await,
        500,
        "API_ERROR",
        "INTERNAL_SERVER_ERROR",
    );
    server
        .plaid()
        .set_faults("*", PlaidFaults::default())
        .expect("valid faults");
    assert_eq!(balance().await.0, 200);

    // Generic route faults answer with Plaid bodies too.
    server
        .set_faults(
            ACCOUNTS_BALANCE_GET,
            RouteFaults {
                fail_next: Some(FailNext {
                    count: 1,
                    status: 503,
                }),
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    assert_error(&balance().await, 503, "API_ERROR", "PLANNED_MAINTENANCE");

    // Unknown codes and routes are refused whole.
    let (status, body) = send(client.post(format!("{base}/admin/plaid/faults")).json(
        &json!({"routes": {ACCOUNTS_GET: {"fail_next": {"count": 1, "error_code": "NOPE"}}}}),
    ))
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("NOPE") && m.contains("INSTITUTION_DOWN")),
        "{body}"
    );
    assert!(
        server
            .plaid()
            .set_faults("plaid_nope", PlaidFaults::default())
            .is_err()
    );

    let stats = server.plaid().stats().route(ACCOUNTS_BALANCE_GET);
    assert_eq!(stats.injected_errors, 3);
    assert_eq!(stats.errors["INSTITUTION_DOWN"], 2);
    let (status, body) = send(client.get(format!("{base}/admin/plaid/stats"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["routes"][ACCOUNTS_BALANCE_GET]["errors"]["PLANNED_MAINTENANCE"],
        1
    );
}

#[tokio::test]
async fn latency_injection_is_scaled() {
    let (server, client) = start().await;
    server.set_time_scale(0.01).expect("valid scale");
    server
        .set_faults(
            ACCOUNTS_BALANCE_GET,
            RouteFaults {
                latency: Latency::Fixed { ms: 3000.0 },
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    let started = Instant::now();
    let (status, _) = call(
        &server,
        &client,
        "/accounts/balance/get",
        json!({"access_token": token(&server, 1)}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "3 s scaled to 30 ms is applied"
    );

    // The real endpoint's heavy tail, scaled: every call completes, each is delayed.
    server
        .set_faults(
            ACCOUNTS_BALANCE_GET,
            RouteFaults {
                latency: Latency::LogNormal {
                    median_ms: 3000.0,
                    p95_ms: 11000.0,
                },
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    for user in 20..25 {
        let (status, _) = call(
            &server,
            &client,
            "/accounts/balance/get",
            json!({"access_token": token(&server, user)}),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(server.stats().calls(ACCOUNTS_BALANCE_GET), 6);
    assert_eq!(server.stats().calls(ACCOUNTS_GET), 0);

    // A hang holds a Plaid call until lifted; the call is counted while it hangs.
    server
        .set_faults(
            ACCOUNTS_GET,
            RouteFaults {
                hang: true,
                ..RouteFaults::default()
            },
        )
        .expect("valid faults");
    let pending = tokio::spawn({
        let (client, url, token) = (
            client.clone(),
            format!("{}/accounts/get", server.base_url()),
            token(&server, 1),
        );
        async move {
            let c = creds();
            send(
                client
                    .post(url)
                    .header("PLAID-CLIENT-ID", c.client_id)
                    .header("PLAID-SECRET", c.secret)
                    .json(&json!({"access_token": token})),
            )
            .await
            .0
        }
    });
    // Counted once it arrives; still held a while after.
    let arrived = Instant::now();
    while server.stats().calls(ACCOUNTS_GET) == 0 {
        assert!(arrived.elapsed() < Duration::from_secs(10), "never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "call hangs");
    assert_eq!(server.stats().calls(ACCOUNTS_GET), 1);
    server
        .set_faults(ACCOUNTS_GET, RouteFaults::default())
        .expect("valid faults");
    let status = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("released")
        .expect("task ok");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn identity_auth_and_match_shapes() {
    let (server, client) = start().await;
    let seed = server.seed();
    let user = 9;
    let owner = data::identity(seed, user);
    let access_token = token(&server, user);
    let accounts = data::accounts(seed, user);

    let (status, body) = call(
        &server,
        &client,
        "/identity/get",
        json!({"access_token": access_token}),
    )
    .await;
    assert_eq!(status, 200);
    let got = body["accounts"].as_array().expect("accounts");
    assert_eq!(got.len(), accounts.len());
    assert_eq!(got[0]["owners"][0]["names"][0], owner.legal_name);
    assert_eq!(
        got[0]["owners"][0]["emails"][0]["data"],
        owner.email_address
    );
    assert_eq!(
        got[0]["owners"][0]["addresses"][0]["data"]["postal_code"],
        owner.address.postal_code
    );

    let (status, body) = call(&server, &client, "/identity/match", json!({
        "access_token": access_token,
        "user": {
            "legal_name": owner.legal_name,
            "phone_number": owner.phone_number,
            "email_address": owner.email_address,
            "address": {"street": owner.address.street, "city": owner.address.city,
                        "region": owner.address.region, "postal_code": owner.address.postal_code,
                        "country": "US"},
        },
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    for account in body["accounts"].as_array().expect("accounts") {
        assert_eq!(account["legal_name"]["score"], 100);
        assert_eq!(account["phone_number"]["score"], 100);
        assert_eq!(account["email_address"]["score"], 100);
        assert_eq!(account["address"]["score"], 100);
        assert_eq!(account["address"]["is_postal_code_match"], true);
    }
    let (status, body) = call(
        &server,
        &client,
        "/identity/match",
        json!({
            "access_token": access_token, "user": {"legal_name": "Zed Nobody"},
        }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["accounts"][0]["legal_name"]["score"], 0);
    assert_eq!(
        body["accounts"][0]["phone_number"],
        Value::Null,
        "not asked, not scored"
    );

    let (status, body) = call(
        &server,
        &client,
        "/auth/get",
        json!({"access_token": access_token}),
    )
    .await;
    assert_eq!(status, 200);
    let ach = body["numbers"]["ach"].as_array().expect("ach");
    let depository = accounts
        .iter()
        .filter(|a| a.kind != data::AccountKind::CreditCard)
        .count();
    assert_eq!(ach.len(), depository);
    assert!(
        ach.iter()
            .all(|n| n["routing"].as_str().is_some_and(|r| r.len() == 9))
    );
    assert!(
        ach[0]["account"]
            .as_str()
            .is_some_and(|a| a.ends_with(&accounts[0].mask))
    );
}

#[tokio::test]
async fn same_seed_same_data_other_seed_other_data() {
    let (a, client) = start_with(7).await;
    let (b, _) = start_with(7).await;
    let (c, _) = start_with(8).await;
    let strip = |mut v: Value| {
        v.as_object_mut().map(|o| o.remove("request_id"));
        v
    };
    for path in [
        "/accounts/balance/get",
        "/transactions/sync",
        "/identity/get",
        "/item/get",
    ] {
        let body = json!({"access_token": data::access_token(7, 33)});
        let (sa, va) = call(&a, &client, path, body.clone()).await;
        let (sb, vb) = call(&b, &client, path, body).await;
        assert_eq!((sa, sb), (200, 200));
        assert_eq!(strip(va), strip(vb), "{path}");
    }
    assert_ne!(data::access_token(7, 33), data::access_token(8, 33));
    assert_ne!(data::transactions(7, 33), data::transactions(8, 33));
    let got = call(
        &c,
        &client,
        "/accounts/get",
        json!({"access_token": data::access_token(7, 33)}),
    )
    .await;
    assert_error(&got, 400, "INVALID_INPUT", "INVALID_ACCESS_TOKEN");
    assert_eq!(data::now(7), data::now(7));
}

#[tokio::test]
async fn a_held_answer_carries_the_data_read_when_the_call_arrived() {
    let (server, client) = start().await;
    let fake = server.plaid();
    let (user, item) = (3, fake.item_id(3));
    let available = |body: &Value| body["accounts"][0]["balances"]["available"].as_f64();
    fake.set_faults(
        ACCOUNTS_BALANCE_GET,
        PlaidFaults {
            hold_next: Some(PlaidHoldNext {
                count: 1,
                ms: 1500.0,
            }),
            ..PlaidFaults::default()
        },
    )
    .expect("valid faults");
    let held = tokio::spawn({
        let (client, url, token) = (
            client.clone(),
            format!("{}/accounts/balance/get", server.base_url()),
            token(&server, user),
        );
        async move {
            let c = creds();
            send(
                client
                    .post(url)
                    .header("PLAID-CLIENT-ID", c.client_id)
                    .header("PLAID-SECRET", c.secret)
                    .json(&json!({"access_token": token})),
            )
            .await
        }
    });
    // Its data are read once its hold starts; the balance changes while it is held.
    let arrived = Instant::now();
    while fake.stats().route(ACCOUNTS_BALANCE_GET).held == 0 {
        assert!(arrived.elapsed() < Duration::from_secs(10), "never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.stats().route(ACCOUNTS_BALANCE_GET).ok, 0);
    fake.set_balance(&item, 4321.0, 4400.0)
        .expect("a known item");
    // A call made meanwhile is not held (count 1) and sees the new balance.
    let (status, now) = call(
        &server,
        &client,
        "/accounts/balance/get",
        json!({"access_token": token(&server, user)}),
    )
    .await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(available(&now), Some(4321.0));
    assert!(!held.is_finished(), "the held answer is still held");
    // The held one answers afterwards with the balance as it was when it arrived.
    let (status, old) = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the hold ends")
        .expect("task ok");
    assert_eq!(status, 200, "{old}");
    assert_ne!(available(&old), Some(4321.0), "{old}");
    assert_eq!(
        available(&old),
        data::accounts(server.seed(), user)[0].available,
        "{old}"
    );
    let stats = fake.stats().route(ACCOUNTS_BALANCE_GET);
    assert_eq!((stats.ok, stats.held), (2, 1));

    // A negative hold is refused whole, naming the field.
    let err = fake
        .set_faults(
            ACCOUNTS_BALANCE_GET,
            PlaidFaults {
                hold_next: Some(PlaidHoldNext { count: 1, ms: -1.0 }),
                ..PlaidFaults::default()
            },
        )
        .expect_err("a negative hold");
    assert!(err.0.contains("hold_next.ms"), "{err}");
}
