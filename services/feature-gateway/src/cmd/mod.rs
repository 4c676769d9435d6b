//! One file per subcommand, each a `run` returning `Result<(), Failure>`.

pub mod backfill;
pub mod demo;
pub mod hash_token;
pub mod ingest;
pub mod materialize;
pub mod profile;
pub mod serve;
pub mod skew;
pub mod training_set;
pub mod validate;
