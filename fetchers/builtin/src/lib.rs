//! The source kinds built into feature-gateway, one line each: the [`Registry`] the gateway, the
//! sidecar host and `validate` look a configuration's `kind` up in.
//!
//! A new built-in kind is a crate under `fetchers/` implementing
//! [`fetcher_api::FetcherFactory`], and one line here.
#![forbid(unsafe_code)]

use fetcher_api::Registry;

/// The built-in source kinds.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(fetcher_static::StaticFactory);
    registry.register(fetcher_http::HttpFactory::new());
    registry.register(fetcher_redis::RedisFactory::new());
    registry.register(fetcher_postgres::PostgresFactory::new());
    registry.register(fetcher_sidecar::SidecarFactory);
    registry.register(fetcher_plaid::PlaidFactory::new());
    registry.register(fetcher_stream::StreamFactory::new());
    registry
}
