//! The training log (in progress).
