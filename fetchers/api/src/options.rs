//! Parsing and compiling a source's options and its views' options, the half that every
//! fetcher kind's [`validate`](crate::FetcherFactory::validate) and
//! [`build`](crate::FetcherFactory::build) share.
//!
//! A kind supplies its option structs (`S` for the source, `V` for a view) and two pure
//! compilation functions; [`validate_options`] collects every problem, [`build_options`] stops at
//! the first. A view's option that does not parse is reported as ``view `NAME`: …``; the
//! compilation functions name their own context.

use serde::de::DeserializeOwned;

use crate::registry::{BuildError, SourceSpec, ViewSpec};

/// Every problem with the source's options and its views' options; empty when all compile.
pub fn validate_options<S, V, CS, CV>(
    source: &SourceSpec,
    compile_source: impl FnOnce(&S) -> Result<CS, Vec<String>>,
    compile_view: impl FnMut(&ViewSpec, &V) -> Result<CV, Vec<String>>,
) -> Vec<String>
where
    S: DeserializeOwned,
    V: DeserializeOwned,
{
    match check(source, false, compile_source, compile_view) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

/// The compiled source options and the compiled options of each view, in the source's view
/// order; the first problem fails the build (a compilation's messages joined with `; `).
pub fn build_options<S, V, CS, CV>(
    source: &SourceSpec,
    compile_source: impl FnOnce(&S) -> Result<CS, Vec<String>>,
    compile_view: impl FnMut(&ViewSpec, &V) -> Result<CV, Vec<String>>,
) -> Result<(CS, Vec<CV>), BuildError>
where
    S: DeserializeOwned,
    V: DeserializeOwned,
{
    check(source, true, compile_source, compile_view)
        .map_err(|errors| BuildError::new(source, errors.join("; ")))
}

/// Parses and compiles; with `first_only`, returns the first failure's messages alone.
fn check<S, V, CS, CV>(
    source: &SourceSpec,
    first_only: bool,
    compile_source: impl FnOnce(&S) -> Result<CS, Vec<String>>,
    mut compile_view: impl FnMut(&ViewSpec, &V) -> Result<CV, Vec<String>>,
) -> Result<(CS, Vec<CV>), Vec<String>>
where
    S: DeserializeOwned,
    V: DeserializeOwned,
{
    let mut errors = Vec::new();
    let compiled = match source.options.parse::<S>() {
        Err(e) => Err(vec![e]),
        Ok(config) => compile_source(&config),
    };
    let compiled = match compiled {
        Ok(compiled) => Some(compiled),
        Err(e) if first_only => return Err(e),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let mut views = Vec::with_capacity(source.views.len());
    for view in &source.views {
        let result = match view.options.parse::<V>() {
            Err(e) => Err(vec![format!("view `{}`: {e}", view.name)]),
            Ok(config) => compile_view(view, &config),
        };
        match result {
            Ok(compiled) => views.push(compiled),
            Err(e) if first_only => return Err(e),
            Err(e) => errors.extend(e),
        }
    }
    match compiled {
        Some(compiled) if errors.is_empty() => Ok((compiled, views)),
        _ => Err(errors),
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

    fn compile_source(config: &Table) -> Result<i64, Vec<String>> {
        match config.get("n") {
            Some(n) if *n > 0 => Ok(*n),
            _ => Err(vec!["n: must be positive".into(), "n: second".into()]),
        }
    }

    fn compile_view(view: &ViewSpec, config: &Table) -> Result<String, Vec<String>> {
        match config.get("m") {
            Some(m) => Ok(format!("{}={m}", view.name)),
            None => Err(vec![format!("view `{}`: m is missing", view.name)]),
        }
    }

    #[test]
    fn validate_collects_every_problem_and_build_stops_at_the_first() {
        let bad = spec("n = 0", &[("a", "m = 'x'"), ("b", ""), ("c", "m = 1")]);
        assert_eq!(
            validate_options(&bad, compile_source, compile_view),
            [
                "n: must be positive",
                "n: second",
                "view `a`: invalid type: string \"x\", expected i64",
                "view `b`: m is missing",
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
}
