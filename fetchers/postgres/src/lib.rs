//! The `postgres` source (in progress).
