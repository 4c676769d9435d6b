//! What every section's validation shares: the problems found so far, each a field path and a
//! message ([`Problems`], placed at a line and column by the loader), the duration parser and
//! the "known: ..." hint. A leaf: it imports no other module.

use std::{collections::BTreeSet, time::Duration};

/// Collects problems with their paths while validating; resolves positions at the end.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<(Vec<String>, String)>);

impl Problems {
    pub(crate) fn add(&mut self, path: &[&str], message: impl Into<String>) {
        self.0.push((
            path.iter().map(|s| (*s).to_owned()).collect(),
            message.into(),
        ));
    }

    /// An optional duration field: `default` when absent; reported at `path` and replaced by
    /// `default` when it does not parse, or is zero and `allow_zero` is false.
    pub(crate) fn duration(
        &mut self,
        path: &[&str],
        value: Option<&str>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) if allow_zero || !d.is_zero() => d,
            Some(Ok(_)) => {
                self.add(path, "must be positive");
                default
            }
            Some(Err(msg)) => {
                self.add(path, msg);
                default
            }
        }
    }
}

/// A duration field's text, read as every fetcher kind reads its own
/// ([`fetcher_api::ConfigDuration`]).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<fetcher_api::ConfigDuration>().map(|d| d.0)
}

pub(crate) fn has_duplicates(items: &[String]) -> bool {
    let mut seen = BTreeSet::new();
    !items.iter().all(|i| seen.insert(i))
}

pub(crate) fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).take(20).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}
