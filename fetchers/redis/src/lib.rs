//! The `redis` source (in progress).
