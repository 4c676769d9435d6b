//! A fetcher-sidecar process for tests (in progress).
