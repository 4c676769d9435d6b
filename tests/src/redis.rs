//! A real Redis server for tests (in progress).
