//! Parsing and compiling a source's options and its views' options, the half that every
//! fetcher kind's [`validate`](crate::FetcherFactory::validate) and
//! [`build`](crate::FetcherFactory::build) share.
//!
//! A kind supplies its option structs (`S` for the source, `V` for a view) and two pure
//! compilation functions returning [`Problem`]s; [`validate_options`] collects every problem,
//! [`build_options`] stops at the first compilation that fails. Options that do not parse are a
//! problem too ([`Options::decode`](crate::Options::decode)). Every problem of a view, whether
//! its options did not parse or its compilation failed, is placed on that view here: a
//! compilation function positions its problems inside the options it was given (`.at("key")`)
//! and never names the view.

use serde::de::DeserializeOwned;

use crate::{
    Problem,
    config::join,
    registry::{BuildError, SourceSpec, ViewSpec},
};

/// Every problem with the source's options and its views' options; empty when all compile.
pub fn validate_options<S, V, CS, CV>(
    source: &SourceSpec,
    compile_source: impl FnOnce(&S) -> Result<CS, Vec<Problem>>,
    compile_view: impl FnMut(&ViewSpec, &V) -> Result<CV, Vec<Problem>>,
) -> Vec<Problem>
where
    S: DeserializeOwned,
    V: DeserializeOwned,
{
    match check(source, false, compile_source, compile_view) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    }
}

/// The compiled source options and the compiled options of each view, in the source's view
/// order. The first compilation that fails fails the build, its problems shown as one message
/// (``view `NAME`: FIELD: MESSAGE``, joined with `; `).
pub fn build_options<S, V, CS, CV>(
    source: &SourceSpec,
    compile_source: impl FnOnce(&S) -> Result<CS, Vec<Problem>>,
    compile_view: impl FnMut(&ViewSpec, &V) -> Result<CV, Vec<Problem>>,
) -> Result<(CS, Vec<CV>), BuildError>
where
    S: DeserializeOwned,
    V: DeserializeOwned,
{
    check(source, true, compile_source, compile_view)
        .map_err(|problems| BuildError::new(source, join(&problems, "; ")))
}

/// Parses and compiles; with `first_only`, returns the first failure's problems alone.
fn check<S, V, CS, CV>(
    source: &SourceSpec,
    first_only: bool,
    compile_source: impl FnOnce(&S) -> Result<CS, Vec<Problem>>,
    mut compile_view: impl FnMut(&ViewSpec, &V) -> Result<CV, Vec<Problem>>,
) -> Result<(CS, Vec<CV>), Vec<Problem>>
where
    S: DeserializeOwned,
    V: DeserializeOwned,
{
    let mut problems = Vec::new();
    let compiled = match source.options.decode::<S>() {
        Err(problem) => Err(vec![problem]),
        Ok(config) => compile_source(&config),
    };
    let compiled = match compiled {
        Ok(compiled) => Some(compiled),
        Err(found) if first_only => return Err(found),
        Err(found) => {
            problems.extend(found);
            None
        }
    };
    let mut views = Vec::with_capacity(source.views.len());
    for view in &source.views {
        let result = match view.options.decode::<V>() {
            Err(problem) => Err(vec![problem]),
            Ok(config) => compile_view(view, &config),
        };
        match result {
            Ok(compiled) => views.push(compiled),
            Err(found) => {
                let found = found.into_iter().map(|p| p.in_view(&view.name));
                if first_only {
                    return Err(found.collect());
                }
                problems.extend(found);
            }
        }
    }
    match compiled {
        Some(compiled) if problems.is_empty() => Ok((compiled, views)),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::registry::Options;

    type Table = BTreeMap<String, i64>;

    fn spec(source: &str, views: &[(&str, &str)]) -> SourceSpec {
        let options = |text: &str| Options(text.parse().expect("toml"));
        SourceSpec {
            name: "s".into(),
            kind: "k".into(),
            options: options(source),
            views: views
                .iter()
                .map(|(name, text)| ViewSpec {
                    name: (*name).into(),
                    keys: Vec::new(),
                    features: Vec::new(),
                    options: options(text),
                })
                .collect(),
            base_dir: ".".into(),
        }
    }

    fn compile_source(config: &Table) -> Result<i64, Vec<Problem>> {
        match config.get("n") {
            Some(n) if *n > 0 => Ok(*n),
            _ => Err(vec![
                Problem::new("must be positive").at("n"),
                Problem::new("second").at("n"),
            ]),
        }
    }

    fn compile_view(view: &ViewSpec, config: &Table) -> Result<String, Vec<Problem>> {
        match config.get("m") {
            Some(m) => Ok(format!("{}={m}", view.name)),
            None => Err(vec![Problem::new("m is missing")]),
        }
    }

    #[test]
    fn validate_collects_every_problem_and_build_stops_at_the_first() {
        let bad = spec("n = 0", &[("a", "m = 'x'"), ("b", ""), ("c", "m = 1")]);
        assert_eq!(
            validate_options(&bad, compile_source, compile_view),
            [
                Problem::source("must be positive").at("n"),
                Problem::source("second").at("n"),
                Problem::view("a", "invalid type: string \"x\", expected i64"),
                Problem::view("b", "m is missing"),
            ]
        );
        let error = build_options(&bad, compile_source, compile_view).unwrap_err();
        assert_eq!(error.message, "n: must be positive; n: second");

        let bad_view = spec("n = 2", &[("c", "m = 1"), ("b", ""), ("a", "m = 'x'")]);
        let error = build_options(&bad_view, compile_source, compile_view).unwrap_err();
        assert_eq!(error.message, "view `b`: m is missing");

        let good = spec("n = 2", &[("a", "m = 1"), ("b", "m = 2")]);
        assert!(validate_options(&good, compile_source, compile_view).is_empty());
        let (source, views) = build_options(&good, compile_source, compile_view).expect("builds");
        assert_eq!(
            (source, views),
            (2, vec!["a=1".to_owned(), "b=2".to_owned()])
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        #[serde(default)]
        n: i64,
        #[serde(default)]
        batch: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        size: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

    #[test]
    fn an_unknown_field_is_positioned_at_that_field() {
        let options = |text: &str| Options(text.parse().expect("toml"));
        let problem = options("n = 1\ncolour = 'red'")
            .decode::<Strict>()
            .unwrap_err();
        assert_eq!(problem.field(), ["colour"]);
        assert!(
            problem
                .message()
                .starts_with("unknown field `colour`, expected"),
            "{problem}"
        );
        let problem = options("batch = { size = 1, colour = 'red' }")
            .decode::<Strict>()
            .unwrap_err();
        assert_eq!(problem.field(), ["batch", "colour"]);
        let problem = options("colour = 'red'").decode::<Empty>().unwrap_err();
        assert_eq!(problem.to_string(), "colour: unknown field `colour`");
        let problem = options("n = 'x'").decode::<Strict>().unwrap_err();
        assert_eq!(problem.field(), [] as [String; 0]);
    }
}
