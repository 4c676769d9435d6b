//! The `postgres` source over TLS, against real PostgreSQL servers started with `ssl=on` and a
//! CA of their own (`end_to_end::postgres::PostgresServer::start_tls`): `verify-full` against that CA
//! serves and cancels over TLS, a certificate from another CA or a server without TLS fails the
//! build with a message naming why, and a server that requires client certificates accepts the
//! configured one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{build, build_error, request, s, source, view};
use end_to_end::postgres::PostgresServer;
use fetcher_api::{ErrorClass, FeatureType as T, Row, Value};

const SECOND: Duration = Duration::from_secs(5);

fn found(row: &Row) -> &fetcher_api::Record {
    match row {
        Row::Found(record) => record,
        Row::NotFound => panic!("expected a row, got NotFound"),
    }
}

/// A view reading `v` and the backend's pid and TLS state for key `k` of table `t`.
fn probe_view() -> fetcher_api::ViewSpec {
    view(
        "probe",
        &[("id", T::String)],
        &[("v", T::Int64), ("pid", T::Int64), ("tls", T::Bool)],
        r#"query = "SELECT v, pg_backend_pid()::int8 AS pid, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS tls FROM t WHERE id = $1""#,
    )
}

/// `toml` text of a path.
fn quoted(path: &std::path::Path) -> String {
    format!("\"{}\"", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_against_the_servers_ca_serves_and_cancels_over_tls() {
    let server = PostgresServer::start_tls();
    let db = server.create_database();
    server.psql(
        &db,
        "CREATE TABLE t (id text, v int8); INSERT INTO t VALUES ('k', 1);",
    );
    // Both the IP address and the name are in the certificate.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!(
            "postgres://test@{host}:{}/{db}?sslmode=verify-full",
            server.port()
        );
        let spec = source(
            &url,
            // One connection: the fetch after the cancellation must reuse the very connection.
            &format!("pool_size = 1\ntls_ca_file = {}", quoted(server.ca_file())),
            vec![
                probe_view(),
                view(
                    "slow",
                    &[("id", T::String)],
                    &[("v", T::Int64)],
                    r#"query = "SELECT v FROM t CROSS JOIN pg_sleep(5) WHERE id = $1""#,
                ),
            ],
        );
        let fetcher = build(&spec).await;
        let rows = fetcher
            .fetch(request("probe", vec![s("k")], &["v", "pid", "tls"], SECOND))
            .await
            .unwrap();
        let cells = &found(&rows[0]).cells;
        assert_eq!(cells[0], Ok(Value::Int64(1)));
        assert_eq!(cells[2], Ok(Value::Bool(true)), "the connection uses TLS");
        let before = cells[1].clone().unwrap();

        // Cancelled on the server over TLS: the server, which would refuse nothing plain here,
        // confirms the cancellation, so the same connection serves the next fetch.
        let err = fetcher
            .fetch(request(
                "slow",
                vec![s("k")],
                &["v"],
                Duration::from_millis(200),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Timeout, "{err}");
        let sleeping = || {
            server.psql(
                &db,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE query LIKE '%pg_sleep(5)%' AND state = 'active' AND pid <> pg_backend_pid()",
            )
        };
        let started = std::time::Instant::now();
        while sleeping() != "0" {
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "the sleeping query is still running on the server"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let rows = fetcher
            .fetch(request("probe", vec![s("k")], &["v", "pid", "tls"], SECOND))
            .await
            .unwrap();
        assert_eq!(
            found(&rows[0]).cells[1],
            Ok(before),
            "the same pooled connection serves the next fetch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_build_naming_tls_ca_file() {
    let server = PostgresServer::start_tls();
    let certs = server.certificates().unwrap();
    for mode in ["verify-full", "verify-ca"] {
        let spec = source(
            &format!("{}?sslmode={mode}", server.url()),
            &format!("tls_ca_file = {}", quoted(&certs.other_ca())),
            vec![probe_view()],
        );
        let e = build_error(&spec).await;
        assert!(
            e.contains("the server's certificate is not signed by a root in tls_ca_file"),
            "{e}"
        );
        assert!(e.contains("UnknownIssuer"), "{e}");
    }
    // `require` encrypts without checking the certificate, as in libpq.
    let db = server.create_database();
    server.psql(
        &db,
        "CREATE TABLE t (id text, v int8); INSERT INTO t VALUES ('k', 1);",
    );
    let fetcher = build(&source(
        &format!("{}?sslmode=require", server.url_for(&db)),
        "",
        vec![probe_view()],
    ))
    .await;
    let rows = fetcher
        .fetch(request("probe", vec![s("k")], &["v", "pid", "tls"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells[2], Ok(Value::Bool(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_read_fails_the_build_naming_its_option() {
    let server = PostgresServer::shared();
    let spec = source(
        &format!("{}?sslmode=verify-full", server.url()),
        "tls_ca_file = \"no/such/ca.pem\"",
        vec![probe_view()],
    );
    let e = build_error(&spec).await;
    assert!(
        e.contains("tls_ca_file: cannot read `./no/such/ca.pem`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_fails_the_build_clearly() {
    let server = PostgresServer::shared();
    let spec = source(
        &format!("{}?sslmode=require", server.url()),
        "",
        vec![probe_view()],
    );
    let e = build_error(&spec).await;
    assert!(
        e.contains("the server does not accept TLS connections, and sslmode=require requires TLS"),
        "{e}"
    );
    // The default (prefer) falls back to plain text there, as libpq does.
    let db = server.create_database();
    server.psql(
        &db,
        "CREATE TABLE t (id text, v int8); INSERT INTO t VALUES ('k', 1);",
    );
    let fetcher = build(&source(&server.url_for(&db), "", vec![probe_view()])).await;
    let rows = fetcher
        .fetch(request("probe", vec![s("k")], &["v", "pid", "tls"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells[2], Ok(Value::Bool(false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_client_certificates_accepts_the_configured_one() {
    let server = PostgresServer::start_mutual_tls();
    let certs = server.certificates().unwrap();
    let db = server.create_database();
    server.psql(
        &db,
        "CREATE TABLE t (id text, v int8); INSERT INTO t VALUES ('k', 1);",
    );
    let url = format!("{}?sslmode=verify-full", server.url_for(&db));
    let ca = format!("tls_ca_file = {}", quoted(certs.ca()));
    let fetcher = build(&source(
        &url,
        &format!(
            "{ca}\ntls_client_cert_file = {}\ntls_client_key_file = {}",
            quoted(&certs.client_cert()),
            quoted(&certs.client_key())
        ),
        vec![probe_view()],
    ))
    .await;
    let rows = fetcher
        .fetch(request("probe", vec![s("k")], &["v", "pid", "tls"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells[0], Ok(Value::Int64(1)));

    // Without a client certificate the server turns the gateway away.
    let e = build_error(&source(&url, &ca, vec![probe_view()])).await;
    assert!(e.contains("cannot connect to"), "{e}");
}
