//! The fetcher conformance suite, over a CSV file written from its dataset.
#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use fetcher_api::{Fetcher, FetcherFactory, Options, SourceSpec, Value, ViewSpec};
use fetcher_conformance::{Dataset, Harness, Stored, VIEW};
use fetcher_static::StaticFactory;

struct StaticHarness {
    dir: tempfile::TempDir,
}

fn text(cell: &Stored) -> String {
    match cell {
        Stored::Value(Value::Int64(i)) => i.to_string(),
        Stored::Value(Value::Double(d)) => d.to_string(),
        Stored::Value(Value::String(s)) => s.clone(),
        Stored::Value(Value::Bool(b)) => b.to_string(),
        // Static tables are type-checked when loaded, so a mistyped value cannot be stored.
        Stored::Null | Stored::WrongType(_) => String::new(),
        Stored::Value(other) => panic!("the dataset has no {other:?}"),
    }
}

fn spec(dir: PathBuf, dataset: &Dataset) -> SourceSpec {
    SourceSpec {
        name: "tables".into(),
        kind: "static".into(),
        options: Options::default(),
        views: vec![ViewSpec {
            name: VIEW.into(),
            keys: dataset.keys(),
            features: dataset.features.clone(),
            options: Options(toml::toml! { path = "conformance.csv" }),
        }],
        base_dir: dir,
    }
}

#[async_trait]
impl Harness for StaticHarness {
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher> {
        let mut writer = csv::Writer::from_path(self.dir.path().join("conformance.csv")).unwrap();
        let mut header = vec!["id".to_owned()];
        header.extend(dataset.features.iter().map(|(n, _)| n.clone()));
        writer.write_record(&header).unwrap();
        for row in &dataset.rows {
            let mut record = vec![row.key.clone()];
            record.extend(row.cells.iter().map(text));
            writer.write_record(&record).unwrap();
        }
        writer.flush().unwrap();
        let spec = spec(self.dir.path().to_owned(), dataset);
        assert!(StaticFactory.validate(&spec).is_empty());
        StaticFactory.build(&spec).await.unwrap()
    }

    async fn build_unreachable(&self, _: &Dataset) -> Option<Arc<dyn Fetcher>> {
        None
    }

    fn supports_wrong_type(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn static_source_passes_the_conformance_suite() {
    let harness = StaticHarness {
        dir: tempfile::tempdir().unwrap(),
    };
    fetcher_conformance::run(&harness).await;
}
