//! Helpers shared by this crate's test binaries: sources over the real test server, and a plain
//! tokio-postgres client for fixtures and for looking at the server's own views.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the report

use std::{sync::Arc, time::Duration};

use fetcher_api::{
    FeatureType, FetchRequest, Fetcher, FetcherFactory, KeyPart, KeySpec, Options, SourceSpec,
    ViewSpec,
};
use fetcher_postgres::PostgresFactory;
use tokio::time::Instant;

/// A client of `url`, its connection driven by a task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A view spec from TOML options.
pub fn view(
    name: &str,
    keys: &[(&str, FeatureType)],
    features: &[(&str, FeatureType)],
    options: &str,
) -> ViewSpec {
    ViewSpec {
        name: name.into(),
        keys: keys
            .iter()
            .map(|(n, ty)| KeySpec {
                name: (*n).into(),
                ty: *ty,
            })
            .collect(),
        features: features
            .iter()
            .map(|(n, ty)| ((*n).to_owned(), *ty))
            .collect(),
        options: Options(options.parse().expect("view options are TOML")),
    }
}

/// A `postgres` source named `db` over `url`, with extra source options.
pub fn source(url: &str, extra: &str, views: Vec<ViewSpec>) -> SourceSpec {
    let text = format!("url = \"{url}\"\n{extra}");
    SourceSpec {
        name: "db".into(),
        kind: "postgres".into(),
        options: Options(text.parse().expect("source options are TOML")),
        views,
        base_dir: ".".into(),
    }
}

/// Validates (expecting no problems) and builds.
pub async fn build(spec: &SourceSpec) -> Arc<dyn Fetcher> {
    let factory = PostgresFactory::new();
    assert_eq!(factory.validate(spec), Vec::<String>::new());
    factory.build(spec).await.expect("the source builds")
}

/// The build error's text.
pub async fn build_error(spec: &SourceSpec) -> String {
    let factory = PostgresFactory::new();
    assert_eq!(factory.validate(spec), Vec::<String>::new());
    factory
        .build(spec)
        .await
        .expect_err("the build should fail")
        .to_string()
}

/// A fetch of `keys` (each one key part per entity) for `features`, with a deadline.
pub fn request(
    view: &str,
    keys: Vec<Vec<KeyPart>>,
    features: &[&str],
    deadline: Duration,
) -> FetchRequest {
    FetchRequest {
        view: view.into(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        keys,
        deadline: Some(Instant::now() + deadline),
    }
}

/// A string key.
pub fn s(key: &str) -> Vec<KeyPart> {
    vec![KeyPart::String(key.to_owned())]
}

/// An int64 key.
pub fn i(key: i64) -> Vec<KeyPart> {
    vec![KeyPart::Int64(key)]
}
