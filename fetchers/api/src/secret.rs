//! Secrets in a source's configuration: where `${NAME}` references are looked up ([`Env`]) and
//! the strings that hold them ([`EnvTemplate`]).
//!
//! A header token, a password in a URL: configuration files hold references such as
//! `Bearer ${API_TOKEN}` or `redis://:${REDIS_PASSWORD}@cache:6379`, resolved when a source is
//! built. Every fetcher kind needs the same rules for that (the same syntax, the same messages,
//! values that never reach a message or `{:?}`, a lookup that tests can replace), so they live
//! here, next to the [`FetcherFactory`](crate::FetcherFactory) that uses them, rather than once
//! per fetcher crate. What a kind does with a resolved value (check it as a header, percent-encode
//! it into a URL, refuse a password written in the file) stays with that kind: it passes an
//! `encode` function to [`EnvTemplate::resolve`] and wraps the messages with the option's name.
//!
//! # Redaction
//! [`Env`] never prints a value. [`TemplatePart`]'s `Debug` prints a reference's name but never a
//! literal part, since someone may have written a secret straight into the file. Errors name the
//! variable at most.

use std::{borrow::Cow, fmt, sync::Arc};

/// Where `${NAME}` references are looked up: the process environment, or a function (tests, a
/// secrets store). Cheap to clone.
#[derive(Clone)]
pub struct Env(Arc<Lookup>);

/// Looks a variable up by name.
type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Env {
    /// The process environment (a variable that is unset or not Unicode reads as unset).
    pub fn process() -> Env {
        Env::from_fn(|name| std::env::var(name).ok())
    }

    /// Looks names up with `lookup` instead.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Env {
        Env(Arc::new(lookup))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::process()
    }
}

// Hand-written: a function has no `Debug`, and a lookup's values are secrets anyway.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

/// A piece of an [`EnvTemplate`]: literal text, or the name of a `${NAME}` reference.
#[derive(Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Env(String),
}

// Hand-written so that a literal part (possibly a secret someone put in the file) never reaches a
// log through `{:?}`.
impl fmt::Debug for TemplatePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplatePart::Literal(_) => f.write_str("Literal(<redacted>)"),
            TemplatePart::Env(name) => write!(f, "Env({name})"),
        }
    }
}

/// Why a string is not a valid [`EnvTemplate`]. The message names a reference at most, never the
/// string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// A `${` with no `}` after it.
    Unclosed,
    /// `${...}` holding something other than a variable name (given).
    InvalidName(String),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unclosed => f.write_str("a `${` has no closing `}`"),
            TemplateError::InvalidName(name) => write!(
                f,
                "`${{{name}}}` is not an environment variable reference (letters, digits, `_`)"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// A string with `${NAME}` environment references, split into its parts without reading the
/// environment. A name is ASCII letters, digits and `_`, not starting with a digit; there is no
/// escape, and everything outside `${...}` is literal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvTemplate {
    parts: Vec<TemplatePart>,
}

impl EnvTemplate {
    /// Splits `text` into literal text and references.
    pub fn parse(text: &str) -> Result<EnvTemplate, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(TemplatePart::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(TemplateError::InvalidName(name.to_owned()));
            }
            parts.push(TemplatePart::Env(name.to_owned()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_owned()));
        }
        Ok(EnvTemplate { parts })
    }

    /// The parts, in order (no empty literal).
    pub fn parts(&self) -> &[TemplatePart] {
        &self.parts
    }

    /// The referenced variables' names, in order of appearance (repeats included).
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            TemplatePart::Env(name) => Some(name.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }

    /// The text with every reference replaced by `stand_in`, for checking its shape (e.g. as a
    /// URL) without reading the environment.
    pub fn with_stand_in(&self, stand_in: &str) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                TemplatePart::Literal(text) => text.as_str(),
                TemplatePart::Env(_) => stand_in,
            })
            .collect()
    }

    /// The text with every reference replaced by its value from `env`, passed through `encode`
    /// (e.g. percent-encoding for a URL; literals are kept as written). The error names the first
    /// unset variable, never a value.
    pub fn resolve(
        &self,
        env: &Env,
        encode: impl Fn(&str) -> Cow<'_, str>,
    ) -> Result<String, String> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(literal) => text.push_str(literal),
                TemplatePart::Env(name) => {
                    let value = env
                        .get(name)
                        .ok_or_else(|| format!("environment variable `{name}` is not set"))?;
                    text.push_str(&encode(&value));
                }
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verbatim(value: &str) -> Cow<'_, str> {
        Cow::Borrowed(value)
    }

    #[test]
    fn templates_split_into_literals_and_references() {
        let t = EnvTemplate::parse("Bearer ${TOKEN}").expect("valid");
        assert_eq!(
            t.parts(),
            [
                TemplatePart::Literal("Bearer ".into()),
                TemplatePart::Env("TOKEN".into())
            ]
        );
        let t = EnvTemplate::parse("${_A1}${B}:x:${A1}").expect("valid");
        assert_eq!(
            t.parts(),
            [
                TemplatePart::Env("_A1".into()),
                TemplatePart::Env("B".into()),
                TemplatePart::Literal(":x:".into()),
                TemplatePart::Env("A1".into()),
            ]
        );
        assert_eq!(t.env_names().collect::<Vec<_>>(), ["_A1", "B", "A1"]);
        assert_eq!(t.with_stand_in("v"), "vv:x:v");
        let t = EnvTemplate::parse("no references, $ { } $x").expect("valid");
        assert_eq!(
            t.parts(),
            [TemplatePart::Literal("no references, $ { } $x".into())]
        );
        assert_eq!(EnvTemplate::parse("").expect("valid").parts(), []);
    }

    #[test]
    fn bad_references_are_named_without_the_rest_of_the_text() {
        let e = EnvTemplate::parse("s3cr3t ${A-B}").unwrap_err();
        assert_eq!(e, TemplateError::InvalidName("A-B".into()));
        assert_eq!(
            e.to_string(),
            "`${A-B}` is not an environment variable reference (letters, digits, `_`)"
        );
        assert_eq!(
            EnvTemplate::parse("${}").unwrap_err(),
            TemplateError::InvalidName(String::new())
        );
        assert_eq!(
            EnvTemplate::parse("${1A}").unwrap_err(),
            TemplateError::InvalidName("1A".into())
        );
        let e = EnvTemplate::parse("s3cr3t ${OPEN").unwrap_err();
        assert_eq!(e, TemplateError::Unclosed);
        assert_eq!(e.to_string(), "a `${` has no closing `}`");
    }

    #[test]
    fn resolving_encodes_values_and_names_an_unset_variable() {
        let t = EnvTemplate::parse("redis://:${P}@cache/${DB}").expect("valid");
        let env = Env::from_fn(|name| match name {
            "P" => Some("p@ss".into()),
            "DB" => Some("0".into()),
            _ => None,
        });
        assert_eq!(
            t.resolve(&env, verbatim).expect("resolves"),
            "redis://:p@ss@cache/0"
        );
        let encoded = t
            .resolve(&env, |v| Cow::Owned(v.replace('@', "%40")))
            .expect("resolves");
        assert_eq!(encoded, "redis://:p%40ss@cache/0");
        let partial = Env::from_fn(|name| (name == "P").then(|| "s3cr3t".into()));
        let e = t.resolve(&partial, verbatim).unwrap_err();
        assert_eq!(e, "environment variable `DB` is not set");
    }

    #[test]
    fn debug_output_holds_no_value() {
        let t = EnvTemplate::parse("Bearer s3cr3t ${TOKEN}").expect("valid");
        let text = format!("{t:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("Env(TOKEN)"), "{text}");
        let env = Env::from_fn(|_| Some("s3cr3t".into()));
        assert_eq!(env.get("ANY").as_deref(), Some("s3cr3t"));
        assert!(!format!("{env:?}").contains("s3cr3t"));
        assert_eq!(format!("{:?}", env.clone()), "Env { .. }");
    }

    #[test]
    fn the_process_environment_is_the_default() {
        // PATH is set wherever the tests run; reading it is enough to tell the lookup apart.
        assert_eq!(Env::default().get("PATH"), std::env::var("PATH").ok());
        assert_eq!(Env::process().get("FG_SURELY_UNSET_VARIABLE_1234"), None);
    }
}
