//! The `plaid` fetcher against the fake Plaid (`fake_upstreams::plaid`), started in-process on
//! loopback: every endpoint with values checked against the fake's seeded data, every error
//! class, rate limits, a slow balance past the deadline, and what reaches errors and logs.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use fake_upstreams::{
    FakeConfig, FakeServer, Latency, RouteFaults,
    plaid::{
        self, ItemState, PlaidConfig, PlaidFailNext, PlaidFaults, RateLimit, RateLimitConfig,
        RateLimitPlan, data,
    },
    seeded::rfc3339,
};
use fetcher_api::{
    ErrorClass, FeatureType, FetchError, FetchRequest, Fetcher, FetcherFactory, KeyPart, KeySpec,
    Options, Record, Row, SourceSpec, Value, ViewSpec,
};
use fetcher_plaid::PlaidFactory;
use tokio::time::Instant;

const CLIENT_ID: &str = "test-client-id";
const SECRET: &str = "s3cr3t-plaid-secret-value";
const DAY: i64 = 86_400;

async fn fake() -> FakeServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeServer::start(FakeConfig {
        population: 50,
        plaid: PlaidConfig {
            client_id: CLIENT_ID.into(),
            secret: SECRET.into(),
            // Unlimited, so tests that call one Item often are not refused; the rate-limit test
            // sets its own.
            rate_limits: RateLimitConfig {
                window_ms: 60_000,
                routes: Default::default(),
            },
        },
        ..FakeConfig::default()
    })
    .await
    .unwrap()
}

fn all_features(endpoint: fetcher_plaid::Endpoint) -> Vec<(String, FeatureType)> {
    fetcher_plaid::features::catalog(endpoint)
}

/// A fetcher with one view per endpoint, keyed by `plaid_access_token` (identity_match also by
/// `email` and `name`), as of the fake's fixed "now".
async fn fetcher(server: &FakeServer, secret: &str, extra: &str) -> Arc<dyn Fetcher> {
    use fetcher_plaid::Endpoint::*;
    let token = KeySpec {
        name: "plaid_access_token".into(),
        ty: FeatureType::String,
    };
    let mut views = Vec::new();
    for (name, endpoint) in [
        ("balance", Balance),
        ("accounts", Accounts),
        ("transactions", Transactions),
        ("item", Item),
    ] {
        views.push(ViewSpec {
            name: name.into(),
            keys: vec![token.clone()],
            features: all_features(endpoint),
            options: Options(format!("endpoint = \"{name}\"").parse().unwrap()),
        });
    }
    views.push(ViewSpec {
        name: "identity".into(),
        keys: vec![
            token.clone(),
            KeySpec {
                name: "email".into(),
                ty: FeatureType::String,
            },
            KeySpec {
                name: "name".into(),
                ty: FeatureType::String,
            },
        ],
        features: all_features(IdentityMatch),
        options: Options(
            r#"endpoint = "identity_match"
               user = { email_address = "email", legal_name = "name" }"#
                .parse()
                .unwrap(),
        ),
    });
    let spec = SourceSpec {
        name: "plaid".into(),
        kind: "plaid".into(),
        options: Options(
            format!(
                "base_url = \"{}\"\nclient_id = \"${{PLAID_CLIENT_ID}}\"\nsecret = \"${{PLAID_SECRET}}\"\n\
                 as_of = \"{}\"\ntransactions_page_size = 20\n{extra}",
                server.base_url(),
                rfc3339(data::now(server.seed()))
            )
            .parse()
            .unwrap(),
        ),
        views,
        base_dir: ".".into(),
    };
    let secret = secret.to_owned();
    let factory = PlaidFactory::with_env(move |name| match name {
        "PLAID_CLIENT_ID" => Some(CLIENT_ID.into()),
        "PLAID_SECRET" => Some(secret.clone()),
        _ => None,
    });
    assert_eq!(factory.validate(&spec), Vec::<String>::new());
    factory.build(&spec).await.unwrap()
}

fn request(view: &str, features: &[&str], keys: Vec<Vec<&str>>, within: Duration) -> FetchRequest {
    FetchRequest {
        view: view.into(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        keys: keys
            .into_iter()
            .map(|k| k.into_iter().map(|p| KeyPart::String(p.into())).collect())
            .collect(),
        deadline: Some(Instant::now() + within),
    }
}

async fn one(
    fetcher: &Arc<dyn Fetcher>,
    view: &str,
    features: &[&str],
    key: Vec<&str>,
) -> Result<Row, FetchError> {
    let mut rows = fetcher
        .fetch(request(view, features, vec![key], Duration::from_secs(10)))
        .await?;
    assert_eq!(rows.len(), 1);
    Ok(rows.remove(0))
}

fn values(row: &Row) -> Vec<Value> {
    let Row::Found(Record { cells, .. }) = row else {
        panic!("expected a row, got {row:?}")
    };
    cells
        .iter()
        .map(|c| c.clone().unwrap_or_else(|e| panic!("cell error {e}")))
        .collect()
}

fn cell_errors(row: &Row) -> Vec<String> {
    let Row::Found(Record { cells, .. }) = row else {
        panic!("expected a row, got {row:?}")
    };
    cells
        .iter()
        .map(|c| c.clone().expect_err("expected a cell error").0)
        .collect()
}

fn close(got: &Value, want: f64) -> bool {
    matches!(got, Value::Double(g) if (g - want).abs() < 1e-6)
}

#[tokio::test]
async fn balances_and_accounts_match_the_seeded_data() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    let seed = server.seed();
    for user in [0, 7, 23] {
        let token = server.plaid().access_token(user);
        let accounts = data::accounts(seed, user);
        let depository = accounts
            .iter()
            .filter(|a| a.kind != data::AccountKind::CreditCard);
        let credit: Vec<_> = accounts
            .iter()
            .filter(|a| a.kind == data::AccountKind::CreditCard)
            .collect();
        let available: f64 = depository
            .clone()
            .filter_map(|a| a.available.or(a.current))
            .sum();
        let limit: f64 = credit.iter().filter_map(|a| a.limit).sum();
        for view in ["balance", "accounts"] {
            let row = one(
                &fetcher,
                view,
                &[
                    "available_total",
                    "account_count",
                    "depository_count",
                    "credit_count",
                    "limit_total",
                ],
                vec![&token],
            )
            .await
            .unwrap();
            let v = values(&row);
            assert!(close(&v[0], available), "user {user} {view}: {v:?}");
            assert_eq!(v[1], Value::Int64(accounts.len() as i64));
            assert_eq!(v[2], Value::Int64(depository.clone().count() as i64));
            assert_eq!(v[3], Value::Int64(credit.len() as i64));
            if credit.iter().any(|a| a.limit.is_some()) {
                assert!(close(&v[4], limit), "user {user}: {v:?}");
            } else {
                assert_eq!(v[4], Value::Null);
            }
        }
    }
    // The balance view's row carries the time it was read.
    let token = server.plaid().access_token(1);
    let Row::Found(record) = one(&fetcher, "balance", &["account_count"], vec![&token])
        .await
        .unwrap()
    else {
        panic!("found")
    };
    assert!(record.event_time.is_some());
    assert_eq!(
        server.plaid().stats().route(plaid::ACCOUNTS_BALANCE_GET).ok,
        4
    );
}

#[tokio::test]
async fn transactions_page_to_completion_and_aggregate_over_windows() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    let seed = server.seed();
    let today = data::now(seed).div_euclid(DAY);
    let features = [
        "debit_count_1d",
        "debit_count_7d",
        "credit_count_30d",
        "debit_sum_30d",
        "credit_sum_7d",
        "pending_count",
        "overdraft_fee_count_30d",
        "distinct_merchants_30d",
        "days_since_oldest_txn",
        "transaction_count",
    ];
    for user in [2, 11] {
        let txns = data::transactions(seed, user);
        assert!(txns.len() > 40, "the fake's history needs several pages");
        let within = |t: &&data::Transaction, days: i64| today - t.day < days;
        let debits = || txns.iter().filter(|t| t.amount > 0.0);
        let credits = || txns.iter().filter(|t| t.amount < 0.0);
        let merchants: std::collections::HashSet<String> = debits()
            .filter(|t| within(t, 30))
            .filter_map(|t| t.merchant_name.map(str::to_lowercase))
            .collect();
        let before = server.stats().calls(plaid::TRANSACTIONS_SYNC);
        let token = server.plaid().access_token(user);
        let row = one(&fetcher, "transactions", &features, vec![&token])
            .await
            .unwrap();
        let v = values(&row);
        let pages = server.stats().calls(plaid::TRANSACTIONS_SYNC) - before;
        assert_eq!(pages, txns.len().div_ceil(20) as u64, "user {user}");
        assert_eq!(
            v[0],
            Value::Int64(debits().filter(|t| within(t, 1)).count() as i64)
        );
        assert_eq!(
            v[1],
            Value::Int64(debits().filter(|t| within(t, 7)).count() as i64)
        );
        assert_eq!(
            v[2],
            Value::Int64(credits().filter(|t| within(t, 30)).count() as i64)
        );
        let debit_sum: f64 = debits().filter(|t| within(t, 30)).map(|t| t.amount).sum();
        assert!(close(&v[3], debit_sum), "{v:?}");
        let credit_sum: f64 = credits().filter(|t| within(t, 7)).map(|t| -t.amount).sum();
        assert!(close(&v[4], credit_sum), "{v:?}");
        assert_eq!(
            v[5],
            Value::Int64(txns.iter().filter(|t| t.pending).count() as i64)
        );
        let overdrafts = txns
            .iter()
            .filter(|t| within(t, 30) && t.detailed == "BANK_FEES_OVERDRAFT_FEES")
            .count();
        assert_eq!(v[6], Value::Int64(overdrafts as i64));
        assert_eq!(v[7], Value::Int64(merchants.len() as i64));
        let oldest = txns.iter().map(|t| t.day).min().unwrap();
        assert_eq!(v[8], Value::Int64(today - oldest));
        assert_eq!(v[9], Value::Int64(txns.len() as i64));
    }

    // Data that changes mid-pagination: the loop restarts from the first cursor and succeeds.
    server
        .plaid()
        .set_faults(
            plaid::TRANSACTIONS_SYNC,
            PlaidFaults {
                fail_next: Some(PlaidFailNext {
                    count: 1,
                    error_code: "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION".into(),
                }),
                ..PlaidFaults::default()
            },
        )
        .unwrap();
    let token = server.plaid().access_token(2);
    let row = one(
        &fetcher,
        "transactions",
        &["transaction_count"],
        vec![&token],
    )
    .await
    .unwrap();
    assert_eq!(
        values(&row),
        [Value::Int64(data::transactions(seed, 2).len() as i64)]
    );
    // ...but not forever: past the restart budget the batch fails, retryable.
    server
        .plaid()
        .set_faults(
            plaid::TRANSACTIONS_SYNC,
            PlaidFaults {
                fail_next: Some(PlaidFailNext {
                    count: 10,
                    error_code: "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION".into(),
                }),
                ..PlaidFaults::default()
            },
        )
        .unwrap();
    let e = one(
        &fetcher,
        "transactions",
        &["transaction_count"],
        vec![&token],
    )
    .await
    .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Unavailable);
    assert!(e.retryable());

    // Not extracted yet: no values rather than zeros.
    server
        .plaid()
        .set_faults("*", PlaidFaults::default())
        .unwrap();
    let token = server.plaid().access_token(4);
    server
        .plaid()
        .set_item_state(&server.plaid().item_id(4), ItemState::NotReady)
        .unwrap();
    let row = one(&fetcher, "transactions", &["debit_count_7d"], vec![&token])
        .await
        .unwrap();
    assert_eq!(values(&row), [Value::Null]);
}

#[tokio::test]
async fn item_health_and_identity_match() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    let seed = server.seed();
    let now = data::now(seed);
    let info = data::item(seed, 9);
    let token = server.plaid().access_token(9);
    let features = [
        "item_age_days",
        "has_error",
        "error_code",
        "hours_since_last_successful_update",
        "institution_id",
    ];
    let v = values(
        &one(&fetcher, "item", &features, vec![&token])
            .await
            .unwrap(),
    );
    assert_eq!(v[0], Value::Int64((now - info.created_at).div_euclid(DAY)));
    assert_eq!(v[1], Value::Bool(false));
    assert_eq!(v[2], Value::Null);
    assert!(close(
        &v[3],
        (now - info.last_successful_update) as f64 / 3600.0
    ));
    assert_eq!(v[4], Value::String(info.institution_id.into()));

    let who = data::identity(seed, 9);
    let scores = [
        "email_address_score",
        "legal_name_score",
        "phone_number_score",
    ];
    let v = values(
        &one(
            &fetcher,
            "identity",
            &scores,
            vec![&token, &who.email_address, &who.legal_name],
        )
        .await
        .unwrap(),
    );
    assert_eq!(v[0], Value::Int64(100));
    assert_eq!(v[1], Value::Int64(100));
    assert_eq!(v[2], Value::Null, "no phone number was sent");
    let v = values(
        &one(
            &fetcher,
            "identity",
            &scores,
            vec![&token, "someone@else.example", ""],
        )
        .await
        .unwrap(),
    );
    assert_eq!(v[0], Value::Int64(0));
    assert_eq!(v[1], Value::Null, "an empty name is not sent");
}

#[tokio::test]
async fn item_errors_stay_in_their_row_and_login_required_is_item_data() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    let (healthy, broken) = (
        server.plaid().access_token(1),
        server.plaid().access_token(5),
    );
    let item = server.plaid().item_id(5);
    server
        .plaid()
        .set_item_state(&item, ItemState::LoginRequired)
        .unwrap();
    let unknown = "access-sandbox-00000000-0000-4000-8000-000000000000";
    for view in ["balance", "transactions"] {
        let feature = if view == "balance" {
            "account_count"
        } else {
            "transaction_count"
        };
        let rows = fetcher
            .fetch(request(
                view,
                &[feature],
                vec![vec![&healthy], vec![&broken], vec![unknown], vec![""]],
                Duration::from_secs(10),
            ))
            .await
            .unwrap();
        assert!(matches!(values(&rows[0])[0], Value::Int64(n) if n > 0));
        let errors = cell_errors(&rows[1]);
        assert!(errors[0].contains("ITEM_LOGIN_REQUIRED"), "{errors:?}");
        assert_eq!(rows[2], Row::NotFound, "an unknown token is no row");
        assert_eq!(rows[3], Row::NotFound, "no linked item");
    }
    let v = values(
        &one(
            &fetcher,
            "item",
            &["has_error", "error_code"],
            vec![&broken],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        v,
        [
            Value::Bool(true),
            Value::String("ITEM_LOGIN_REQUIRED".into())
        ]
    );
    // Repaired: served again.
    server
        .plaid()
        .set_item_state(&item, ItemState::Healthy)
        .unwrap();
    let v = values(
        &one(&fetcher, "balance", &["account_count"], vec![&broken])
            .await
            .unwrap(),
    );
    assert!(matches!(v[0], Value::Int64(n) if n > 0));
    let v = values(
        &one(&fetcher, "item", &["has_error"], vec![&broken])
            .await
            .unwrap(),
    );
    assert_eq!(v, [Value::Bool(false)]);

    // PRODUCT_NOT_READY and NO_ACCOUNTS also fail only their row's cells.
    for code in ["PRODUCT_NOT_READY", "NO_ACCOUNTS"] {
        server
            .plaid()
            .set_faults(
                plaid::ACCOUNTS_GET,
                PlaidFaults {
                    fail_next: Some(PlaidFailNext {
                        count: 1,
                        error_code: code.into(),
                    }),
                    ..PlaidFaults::default()
                },
            )
            .unwrap();
        let row = one(&fetcher, "accounts", &["account_count"], vec![&healthy])
            .await
            .unwrap();
        assert!(cell_errors(&row)[0].contains(code));
    }
}

#[tokio::test]
async fn call_level_errors_fail_the_batch_with_their_class() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    let token = server.plaid().access_token(3);
    let cases = [
        ("INSTITUTION_DOWN", ErrorClass::Unavailable, true),
        ("INSTITUTION_NOT_RESPONDING", ErrorClass::Unavailable, true),
        ("INTERNAL_SERVER_ERROR", ErrorClass::Unavailable, true),
        ("PLANNED_MAINTENANCE", ErrorClass::Unavailable, true),
        ("BALANCE_LIMIT", ErrorClass::RateLimited, false),
    ];
    for (code, class, retryable) in cases {
        server
            .plaid()
            .set_faults(
                plaid::ACCOUNTS_BALANCE_GET,
                PlaidFaults {
                    fail_next: Some(PlaidFailNext {
                        count: 1,
                        error_code: code.into(),
                    }),
                    ..PlaidFaults::default()
                },
            )
            .unwrap();
        let e = one(&fetcher, "balance", &["account_count"], vec![&token])
            .await
            .unwrap_err();
        assert_eq!(
            (e.class(), e.retryable()),
            (class, retryable),
            "{code}: {e}"
        );
        assert!(e.message().contains(code), "{e}");
    }
    // A generic 503 from in front of Plaid, with Plaid's body.
    server
        .set_faults(
            plaid::ITEM_GET,
            RouteFaults {
                fail_next: Some(fake_upstreams::FailNext {
                    count: 1,
                    status: 503,
                }),
                ..RouteFaults::default()
            },
        )
        .unwrap();
    let e = one(&fetcher, "item", &["has_error"], vec![&token])
        .await
        .unwrap_err();
    assert_eq!((e.class(), e.retryable()), (ErrorClass::Unavailable, true));

    // Wrong credentials: rejected, not retryable, and the secret is nowhere in the message.
    let wrong = fetcher_with_wrong_secret(&server).await;
    let e = one(&wrong, "balance", &["account_count"], vec![&token])
        .await
        .unwrap_err();
    assert_eq!((e.class(), e.retryable()), (ErrorClass::Rejected, false));
    assert!(e.message().contains("INVALID_API_KEYS"), "{e}");
    assert!(!e.to_string().contains("wrong-s3cr3t"), "{e}");
    assert!(!e.to_string().contains(&token), "{e}");

    // Nobody listening: unavailable, retryable.
    let port = server.addr().port();
    server.shutdown().await.unwrap();
    let e = one(&fetcher, "balance", &["account_count"], vec![&token])
        .await
        .unwrap_err();
    assert!(
        matches!(e.class(), ErrorClass::Unavailable | ErrorClass::Timeout),
        "port {port}: {e}"
    );
    assert!(e.retryable());
}

async fn fetcher_with_wrong_secret(server: &FakeServer) -> Arc<dyn Fetcher> {
    fetcher(server, "wrong-s3cr3t", "").await
}

#[tokio::test]
async fn rate_limits_come_back_as_rate_limited_per_item() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    server
        .plaid()
        .set_rate_limits(&RateLimitPlan {
            window_ms: Some(60_000),
            routes: [(
                plaid::ACCOUNTS_BALANCE_GET.to_owned(),
                RateLimit {
                    per_item: Some(2),
                    per_client: None,
                },
            )]
            .into(),
        })
        .unwrap();
    let (a, b) = (
        server.plaid().access_token(1),
        server.plaid().access_token(2),
    );
    for _ in 0..2 {
        one(&fetcher, "balance", &["account_count"], vec![&a])
            .await
            .unwrap();
    }
    let e = one(&fetcher, "balance", &["account_count"], vec![&a])
        .await
        .unwrap_err();
    assert_eq!((e.class(), e.retryable()), (ErrorClass::RateLimited, false));
    assert!(e.message().contains("BALANCE_LIMIT"), "{e}");
    // Another Item has its own budget.
    one(&fetcher, "balance", &["account_count"], vec![&b])
        .await
        .unwrap();
    assert_eq!(
        server
            .plaid()
            .stats()
            .route(plaid::ACCOUNTS_BALANCE_GET)
            .rate_limited,
        1,
        "one refused call, not retried inside the fetch"
    );
}

#[tokio::test]
async fn a_slow_balance_times_out_within_the_deadline_while_other_views_answer() {
    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    server
        .set_faults(
            plaid::ACCOUNTS_BALANCE_GET,
            RouteFaults {
                latency: Latency::Fixed { ms: 10_000.0 },
                ..RouteFaults::default()
            },
        )
        .unwrap();
    let token = server.plaid().access_token(6);
    let budget = Duration::from_millis(300);
    let started = SystemTime::now();
    let (slow, fast) = tokio::join!(
        fetcher.fetch(request(
            "balance",
            &["account_count"],
            vec![vec![&token]],
            budget
        )),
        fetcher.fetch(request("item", &["has_error"], vec![vec![&token]], budget)),
    );
    let elapsed = started.elapsed().unwrap();
    let e = slow.unwrap_err();
    assert_eq!(
        (e.class(), e.retryable()),
        (ErrorClass::Timeout, true),
        "{e}"
    );
    assert_eq!(values(&fast.unwrap()[0]), [Value::Bool(false)]);
    // Generous: the point is that nothing waits for the 10 s answer.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    // The source's own request_timeout bounds a call when the deadline is further away.
    let bounded = fetcher_bounded(&server).await;
    let started = SystemTime::now();
    let e = bounded
        .fetch(request(
            "balance",
            &["account_count"],
            vec![vec![&token]],
            Duration::from_secs(30),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    assert!(started.elapsed().unwrap() < Duration::from_secs(5));
}

async fn fetcher_bounded(server: &FakeServer) -> Arc<dyn Fetcher> {
    fetcher(server, SECRET, "request_timeout = \"200ms\"").await
}

/// A `MakeWriter` into a shared buffer, to read what the fetcher logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_and_tokens_never_reach_errors_debug_output_or_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .finish();
    // Thread-local, and the test runs on one thread, so every event of this test (the fetcher's,
    // reqwest's, hyper's) lands here.
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests of this binary run at once on other threads with no subscriber: a callsite
    // they reach first is cached as never enabled. Recomputed now, with this subscriber
    // registered, every callsite is asked again (else this test's logs can come out empty).
    tracing::callsite::rebuild_interest_cache();

    let server = fake().await;
    let fetcher = fetcher(&server, SECRET, "").await;
    let wrong = fetcher_with_wrong_secret(&server).await;
    let token = server.plaid().access_token(8);
    server
        .plaid()
        .set_item_state(&server.plaid().item_id(8), ItemState::LoginRequired)
        .unwrap();
    let mut outputs = vec![format!("{fetcher:?}"), format!("{wrong:?}")];
    for view in ["balance", "transactions", "item", "accounts"] {
        let features: Vec<String> = fetcher_plaid::features::catalog(match view {
            "balance" => fetcher_plaid::Endpoint::Balance,
            "transactions" => fetcher_plaid::Endpoint::Transactions,
            "item" => fetcher_plaid::Endpoint::Item,
            _ => fetcher_plaid::Endpoint::Accounts,
        })
        .into_iter()
        .map(|(f, _)| f)
        .collect();
        let features: Vec<&str> = features.iter().map(String::as_str).collect();
        for f in [&fetcher, &wrong] {
            let result = f
                .fetch(request(
                    view,
                    &features,
                    vec![vec![&token]],
                    Duration::from_secs(5),
                ))
                .await;
            outputs.push(format!("{result:?}"));
        }
    }
    server
        .set_faults(
            plaid::ACCOUNTS_GET,
            RouteFaults {
                latency: Latency::Fixed { ms: 5_000.0 },
                ..RouteFaults::default()
            },
        )
        .unwrap();
    let result = fetcher
        .fetch(request(
            "accounts",
            &["account_count"],
            vec![vec![&token]],
            Duration::from_millis(100),
        ))
        .await;
    outputs.push(format!("{result:?}"));

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The error paths ran and were logged (at debug level, with their codes).
    assert!(logs.contains("plaid error"), "{logs}");
    assert!(logs.contains("INVALID_API_KEYS"), "{logs}");
    for text in outputs.iter().chain([&logs]) {
        for secret in [SECRET, "wrong-s3cr3t", &token] {
            assert!(!text.contains(secret), "`{secret}` leaked into:\n{text}");
        }
    }
}
