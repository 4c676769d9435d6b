//! A real PostgreSQL server for tests (in progress).
