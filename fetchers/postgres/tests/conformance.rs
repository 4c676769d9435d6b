//! The fetcher conformance suite against a real PostgreSQL server, twice:
//!
//! - over typed columns (`int8`, `float8`, `text`, `bool`), the usual shape of a view. A typed
//!   column cannot hold `"n/a"` where an int64 is declared, and a query that casts text to a
//!   number fails as a whole statement, not per cell, so this run skips the mistyped-value case;
//!   a column of the wrong type is caught when the source is built instead (see
//!   `against_postgres.rs`, `a_wrong_column_or_type_fails_the_build_naming_view_query_and_column`).
//! - over one `jsonb` document per row read through `json_paths`, where a mistyped value is real
//!   data (`{"count": "n/a"}`) and must fail its own cell only. This run covers that case.
//!
//! The unreachable case builds against a server of its own and then stops it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a panic is the failure report

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use end_to_end::postgres::PostgresServer;
use fetcher_api::{Fetcher, Value};
use fetcher_conformance::{Dataset, ENTITY, Harness, Stored, VIEW};
use tokio_postgres::types::ToSql;

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Typed,
    Jsonb,
}

struct PostgresHarness {
    layout: Layout,
}

impl PostgresHarness {
    /// Creates the table in a new database of `server`, loads the dataset, and builds.
    async fn load_and_build(&self, server: &PostgresServer, dataset: &Dataset) -> Arc<dyn Fetcher> {
        let db = server.create_database();
        let url = server.url_for(&db);
        let client = common::connect(&url).await;
        let features: Vec<(&str, fetcher_api::FeatureType)> = dataset
            .features
            .iter()
            .map(|(n, t)| (n.as_str(), *t))
            .collect();
        let view_options = match self.layout {
            Layout::Typed => {
                client
                    .batch_execute(
                        "CREATE TABLE conformance (id text PRIMARY KEY, count int8, score float8, label text, flag bool)",
                    )
                    .await
                    .unwrap();
                for row in &dataset.rows {
                    let cell = |i: usize| -> Box<dyn ToSql + Sync + Send> {
                        match &row.cells[i] {
                            Stored::Value(Value::Int64(v)) => Box::new(Some(*v)),
                            Stored::Value(Value::Double(v)) => Box::new(Some(*v)),
                            Stored::Value(Value::String(v)) => Box::new(Some(v.clone())),
                            Stored::Value(Value::Bool(v)) => Box::new(Some(*v)),
                            // A typed column cannot hold a mistyped value (see the module docs):
                            // store NULL, and the suite skips that case for this layout.
                            Stored::Null | Stored::WrongType(_) => match i {
                                0 => Box::new(None::<i64>),
                                1 => Box::new(None::<f64>),
                                2 => Box::new(None::<String>),
                                _ => Box::new(None::<bool>),
                            },
                            Stored::Value(other) => panic!("the dataset has no {other:?}"),
                        }
                    };
                    let cells: Vec<_> = (0..4).map(cell).collect();
                    client
                        .execute(
                            "INSERT INTO conformance VALUES ($1, $2, $3, $4, $5)",
                            &[
                                &row.key,
                                cells[0].as_ref(),
                                cells[1].as_ref(),
                                cells[2].as_ref(),
                                cells[3].as_ref(),
                            ],
                        )
                        .await
                        .unwrap();
                }
                "query = \"SELECT count, score, label, flag FROM conformance WHERE id = $1\""
                    .to_owned()
            }
            Layout::Jsonb => {
                client
                    .batch_execute(
                        "CREATE TABLE conformance (id text PRIMARY KEY, doc jsonb NOT NULL)",
                    )
                    .await
                    .unwrap();
                for row in &dataset.rows {
                    let mut doc = serde_json::Map::new();
                    for ((name, _), cell) in dataset.features.iter().zip(&row.cells) {
                        let json = match cell {
                            Stored::Value(Value::Int64(v)) => serde_json::json!(v),
                            Stored::Value(Value::Double(v)) => serde_json::json!(v),
                            Stored::Value(Value::String(v)) => serde_json::json!(v),
                            Stored::Value(Value::Bool(v)) => serde_json::json!(v),
                            Stored::Null => serde_json::Value::Null,
                            Stored::WrongType(text) => serde_json::json!(text),
                            Stored::Value(other) => panic!("the dataset has no {other:?}"),
                        };
                        doc.insert(name.clone(), json);
                    }
                    client
                        .execute(
                            "INSERT INTO conformance VALUES ($1, $2)",
                            &[&row.key, &serde_json::Value::Object(doc)],
                        )
                        .await
                        .unwrap();
                }
                let paths: Vec<String> = dataset
                    .features
                    .iter()
                    .map(|(n, _)| format!("{n} = {{ column = \"doc\", path = \"/{n}\" }}"))
                    .collect();
                format!(
                    "query = \"SELECT doc FROM conformance WHERE id = $1\"\njson_paths = {{ {} }}",
                    paths.join(", ")
                )
            }
        };
        let view = common::view(
            VIEW,
            &[(ENTITY, fetcher_api::FeatureType::String)],
            &features,
            &view_options,
        );
        assert_eq!(dataset.keys()[0].name, ENTITY);
        common::build(&common::source(&url, "", vec![view])).await
    }
}

#[async_trait]
impl Harness for PostgresHarness {
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher> {
        self.load_and_build(PostgresServer::shared(), dataset).await
    }

    async fn build_unreachable(&self, dataset: &Dataset) -> Option<Arc<dyn Fetcher>> {
        let mut server = PostgresServer::start();
        let fetcher = self.load_and_build(&server, dataset).await;
        server.stop();
        Some(fetcher)
    }

    fn supports_wrong_type(&self) -> bool {
        self.layout == Layout::Jsonb
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_pass_the_conformance_suite() {
    fetcher_conformance::run(&PostgresHarness {
        layout: Layout::Typed,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonb_documents_pass_the_conformance_suite_with_mistyped_values() {
    fetcher_conformance::run(&PostgresHarness {
        layout: Layout::Jsonb,
    })
    .await;
}
