//! Reading a configuration file: parse, validate, and place every problem at its line and column.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use fetcher_api::Registry;
use toml::de::{DeTable, DeValue};

use crate::{Config, RawConfig, problems::Problems, validate::validate};

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `line:column` (1-based) of the problem, when it can be placed.
    pub position: Option<(usize, usize)>,
    /// Dotted path of the offending field, e.g. `views.user.source`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, as named to the user.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some((line, col)) = e.position {
                write!(f, ":{line}:{col}")?;
            }
            if e.path.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// A check the loader's caller runs on a configuration that validated (the gateway's planner,
/// which finds dependency cycles): each problem is a field path and a message, placed at its line
/// and column like the loader's own. It runs only when every name resolves.
pub type Check<'a> = &'a dyn Fn(&Config) -> Vec<(Vec<String>, String)>;

/// Reads, parses and validates the file at `path`. Relative paths in source options are
/// resolved against the file's directory.
pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
    load_checked(path, registry, &|_| Vec::new())
}

/// [`load`], then `check` on the result.
pub fn load_checked(
    path: &Path,
    registry: &Registry,
    check: Check<'_>,
) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.display().to_string(),
        errors: vec![ConfigError {
            position: None,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_str_checked(
        &text,
        &path.display().to_string(),
        &base_dir,
        registry,
        check,
    )
}

/// Parses and validates `text`; `file` names it in errors.
pub fn load_str(
    text: &str,
    file: &str,
    base_dir: &Path,
    registry: &Registry,
) -> Result<Config, ConfigErrors> {
    load_str_checked(text, file, base_dir, registry, &|_| Vec::new())
}

/// [`load_str`], then `check` on the result.
pub fn load_str_checked(
    text: &str,
    file: &str,
    base_dir: &Path,
    registry: &Registry,
    check: Check<'_>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_owned(),
        errors,
    };
    let document = DeTable::parse(text).map_err(|e| fail(vec![from_toml_error(text, &e)]))?;
    let Parsed {
        raw,
        unknown,
        refused,
    } = parse(text).map_err(|e| fail(vec![from_toml_error(text, &e)]))?;
    let mut problems = Problems::default();
    problems.0.extend(refused);
    for path in unknown {
        let field = path.last().cloned().unwrap_or_default();
        problems.0.push((path, format!("unknown field `{field}`")));
    }
    let config = validate(raw, text, base_dir, registry, &mut problems);
    if problems.0.is_empty() {
        problems.0.extend(check(&config));
    }
    if problems.0.is_empty() {
        return Ok(config);
    }
    let mut errors: Vec<ConfigError> = problems
        .0
        .into_iter()
        .map(|(path, message)| ConfigError {
            position: locate(document.get_ref(), &path).map(|span| line_col(text, span.start)),
            path: path.join("."),
            message,
        })
        .collect();
    errors.sort_by(|a, b| a.position.cmp(&b.position).then(a.path.cmp(&b.path)));
    errors.dedup();
    Err(fail(errors))
}

/// What [`parse`] read: the configuration as written, the paths of the fields it does not know,
/// and the fields it had to leave out because their values do not fit their types (each with
/// its path and why).
#[derive(Debug)]
pub struct Parsed {
    /// The file as written, less the refused fields.
    pub raw: RawConfig,
    /// Fields no section has, by path.
    pub unknown: Vec<Vec<String>>,
    /// Fields whose value has the wrong type, by path, with serde's message.
    pub refused: Vec<(Vec<String>, String)>,
}

/// Most fields of one file refused for their type before the parse gives up on the rest.
const MAX_REFUSED: usize = 100;

/// Parses `text` into a [`RawConfig`]. A value of the wrong type (`max_key_bytes = "big"`) does
/// not stop the parse: the field is reported and left out (its default applies), and the parse
/// goes on, so one mistyped field never hides the other problems of the file. An entry that
/// cannot stand without the field (a source without its `kind`) is left out with it.
pub fn parse(text: &str) -> Result<Parsed, toml::de::Error> {
    let mut document: toml::Table = toml::from_str(text)?;
    let mut refused: Vec<(Vec<String>, String)> = Vec::new();
    loop {
        let mut unknown = Vec::new();
        let value = toml::Value::Table(document.clone());
        match serde_ignored::deserialize(value, |path| unknown.push(path_segments(&path))) {
            Ok(raw) => {
                return Ok(Parsed {
                    raw,
                    unknown,
                    refused,
                });
            }
            Err(e) => {
                let e: toml::de::Error = e;
                let path = error_path(&e.to_string());
                let message = e.message().trim().to_owned();
                // A required field left out in an earlier round makes its entry incomplete:
                // that entry goes too, reported once, under the field's own problem.
                let missing_after_refusal = message.starts_with("missing field")
                    && refused
                        .iter()
                        .any(|(p, _)| p.len() == path.len() + 1 && p.starts_with(&path));
                if path.is_empty() || refused.len() >= MAX_REFUSED || !remove(&mut document, &path)
                {
                    return Err(e);
                }
                if !missing_after_refusal {
                    refused.push((path, message));
                }
            }
        }
    }
}

/// The dotted path toml gives a value's deserialization error (``in `limits.max_key_bytes` ``),
/// as segments: quoted keys unquoted, `[N]` indexes as their own segments.
fn error_path(error: &str) -> Vec<String> {
    let Some(start) = error.rfind("\nin `") else {
        return Vec::new();
    };
    let rest = &error[start + "\nin `".len()..];
    let Some(end) = rest.rfind('`') else {
        return Vec::new();
    };
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = rest[..end].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => current.extend(chars.next()),
            '.' if !quoted => segments.push(std::mem::take(&mut current)),
            '[' if !quoted => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                }
                let index: String = chars.by_ref().take_while(|&c| c != ']').collect();
                segments.push(index);
                if chars.peek() == Some(&'.') {
                    chars.next();
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// Removes the value at `path` from `table`; false when there is none.
fn remove(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => table.get_mut(first).is_some_and(|v| remove_in(v, rest)),
    }
}

/// [`remove`] below a value: a table's key, or an array's index.
fn remove_in(value: &mut toml::Value, path: &[String]) -> bool {
    match value {
        toml::Value::Table(table) => remove(table, path),
        toml::Value::Array(items) => {
            let Some(index) = path.first().and_then(|i| i.parse::<usize>().ok()) else {
                return false;
            };
            match &path[1..] {
                [] if index < items.len() => {
                    items.remove(index);
                    true
                }
                [] => false,
                rest => items.get_mut(index).is_some_and(|v| remove_in(v, rest)),
            }
        }
        _ => false,
    }
}

fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path as P;
    let mut segments = match path {
        P::Root => return Vec::new(),
        P::Seq { parent, index } => {
            let mut s = path_segments(parent);
            s.push(index.to_string());
            return s;
        }
        P::Map { parent, key } => {
            let mut s = path_segments(parent);
            s.push(key.clone());
            return s;
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent)
        }
    };
    segments.shrink_to_fit();
    segments
}

fn from_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        position: e.span().map(|s| line_col(text, s.start)),
        path: String::new(),
        message: e.message().trim().to_owned(),
    }
}

/// The span of the key at `path` in the document (the key itself, so the caret points at the
/// field's name), or of the closest ancestor that exists.
fn locate(root: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let mut table = Some(root);
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    let mut found = None;
    for segment in path {
        // A segment the file does not have (a field left at its default) ends the walk: the
        // problem is placed at the closest ancestor written.
        let value = if let Some(t) = table {
            let Some((key, value)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == segment) else {
                break;
            };
            found = Some(key.span());
            value
        } else if let Some(item) = array.and_then(|items| items.get(segment.parse::<usize>().ok()?))
        {
            found = Some(item.span());
            item
        } else {
            break;
        };
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(&a[..])),
            _ => (None, None),
        };
    }
    found
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}
