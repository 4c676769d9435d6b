//! The `http` source (in progress).
