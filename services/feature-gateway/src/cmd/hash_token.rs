//! `feature-gateway hash-token`: the salted hash of a bearer token read from standard input.

use gateway_config::TokenHash;

use crate::exit::Failure;

/// Reads one line (the token) and prints its `sha256$SALT$HASH`.
pub fn run() -> Result<(), Failure> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .map_err(|e| Failure::run(format!("cannot read the token from standard input: {e}")))?;
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        return Err(Failure::Usage("no token on standard input".into()));
    }
    println!("{}", TokenHash::make(token));
    Ok(())
}
