//! The `plaid` source (in progress).
