//! From configuration to fetchers: a [`FetcherFactory`] per source kind, and the [`Registry`]
//! that maps a configuration's `kind` to its factory.
//!
//! Building a source has two steps. [`FetcherFactory::validate`] checks the source's and its
//! views' options without any I/O, so `feature-gateway validate` can run it anywhere.
//! [`FetcherFactory::build`] then connects, loads or prepares, and may fail on I/O.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::{FeatureType, Fetcher, Problem};

/// Options of a source or view specific to its kind: the configuration's table minus the fields
/// the gateway itself reads. A factory deserializes them into its own typed config struct.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options(pub toml::Table);

impl Options {
    /// Deserializes the options. Use `#[serde(deny_unknown_fields)]` on `T` so a misspelt
    /// option is an error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        toml::Value::Table(self.0.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())
    }

    /// Deserializes the options as [`Options::parse`] does, a failure as a [`Problem`] of the
    /// source (place it on a view with [`Problem::in_view`]). An unknown field is positioned at
    /// that field: serde names it only in its message (``unknown field `x`, expected ...``), read
    /// here, in the one place such messages enter, and found in the options' tables.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        self.parse().map_err(|message| {
            // Said of a kind that takes no options, where it only puzzles.
            let message = message.replace(", there are no fields", "");
            let path = unknown_field(&message).and_then(|field| key_path(&self.0, field));
            path.into_iter()
                .flatten()
                .fold(Problem::new(message), Problem::at)
        })
    }
}

/// The field named by serde's "unknown field `X`" message, if it is one.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = &message[message.find("unknown field `")? + "unknown field `".len()..];
    Some(&rest[..rest.find('`')?])
}

/// The keys leading to `key` in `table`: itself at the top level, else inside the first nested
/// table (depth first, in key order) holding it.
fn key_path(table: &toml::Table, key: &str) -> Option<Vec<String>> {
    if table.contains_key(key) {
        return Some(vec![key.to_owned()]);
    }
    table.iter().find_map(|(name, value)| {
        let mut path = key_path(value.as_table()?, key)?;
        path.insert(0, name.clone());
        Some(path)
    })
}

/// An entity key of a view, as the fetcher sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySpec {
    /// The entity's name, e.g. `user_id`.
    pub name: String,
    /// Its type (int64 or string).
    pub ty: FeatureType,
}

/// A view served by a source.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewSpec {
    /// The view's name.
    pub name: String,
    /// Its entity keys, in key order.
    pub keys: Vec<KeySpec>,
    /// Its features with their declared types, in declaration order.
    pub features: Vec<(String, FeatureType)>,
    /// The view's options specific to the source kind (a key template, a query, a file...).
    pub options: Options,
}

/// A configured source with the views that read from it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    /// The source's name.
    pub name: String,
    /// Its kind, e.g. `static`.
    pub kind: String,
    /// The source's options specific to its kind.
    pub options: Options,
    /// The views that read from this source.
    pub views: Vec<ViewSpec>,
    /// The directory relative paths in options are resolved against (the config file's).
    pub base_dir: PathBuf,
}

impl SourceSpec {
    /// Resolves a path from the options against [`SourceSpec::base_dir`].
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// Why a source could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("source `{source_name}`: {message}")]
pub struct BuildError {
    /// The source's name.
    pub source_name: String,
    /// What went wrong.
    pub message: String,
}

impl BuildError {
    /// A build failure of `source`.
    pub fn new(source: &SourceSpec, message: impl Into<String>) -> Self {
        BuildError {
            source_name: source.name.clone(),
            message: message.into(),
        }
    }
}

/// Makes the fetcher of one kind of source.
#[async_trait]
pub trait FetcherFactory: Send + Sync + 'static {
    /// The `kind` this factory builds, e.g. `static`.
    fn kind(&self) -> &'static str;

    /// Checks the source's and its views' options without I/O. Returns every problem found,
    /// each placed on the source or the view at fault and, where there is one, at the option
    /// (see [`validate_options`](crate::validate_options), which does this for most kinds).
    fn validate(&self, source: &SourceSpec) -> Vec<Problem>;

    /// Builds the fetcher: connects, loads, prepares. Called only on a source that validated.
    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError>;
}

/// A `kind` that no factory is registered for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown source kind `{kind}` (known: {})", known.join(", "))]
pub struct UnknownKind {
    /// The kind asked for.
    pub kind: String,
    /// The kinds that are registered.
    pub known: Vec<&'static str>,
}

/// Maps source kinds to their factories.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, Arc<dyn FetcherFactory>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a factory, replacing any earlier one of the same kind.
    pub fn register(&mut self, factory: impl FetcherFactory) -> &mut Self {
        self.factories.insert(factory.kind(), Arc::new(factory));
        self
    }

    /// The factory of `kind`.
    pub fn get(&self, kind: &str) -> Result<&Arc<dyn FetcherFactory>, UnknownKind> {
        self.factories.get(kind).ok_or_else(|| UnknownKind {
            kind: kind.to_owned(),
            known: self.kinds(),
        })
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }
}
