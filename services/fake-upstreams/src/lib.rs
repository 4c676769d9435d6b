//! Fake upstreams (in progress).
