//! The `sidecar` source (in progress).
