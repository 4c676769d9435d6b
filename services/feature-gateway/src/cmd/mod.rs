//! One file per subcommand, each a `run` returning `Result<(), Failure>`.

pub mod demo;
pub mod hash_token;
pub mod materialize;
pub mod profile;
pub mod serve;
pub mod skew;
pub mod training_set;
pub mod validate;
