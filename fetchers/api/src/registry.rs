//! From configuration to fetchers: a [`FetcherFactory`] per source kind, and the [`Registry`]
//! that maps a configuration's `kind` to its factory.
//!
//! Building a source has two steps. [`FetcherFactory::validate`] checks the source's and its
//! views' options without any I/O, so `feature-gateway validate` can run it anywhere.
//! [`FetcherFactory::build`] then connects, loads or prepares, and may fail on I/O.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::{FeatureType, Fetcher};

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
    /// each a message that names the view or option at fault.
    fn validate(&self, source: &SourceSpec) -> Vec<String>;

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
