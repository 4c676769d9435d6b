//! The configuration vocabulary every fetcher kind shares with the gateway: [`ConfigDuration`],
//! a duration written the human way, and [`Problem`], something wrong found while validating,
//! positioned by what it concerns.
//!
//! A problem concerns the source's own options or one of its views' ([`Subject`]), optionally at
//! a field inside them (`url`, `fields.risk`), and says what is wrong in a message that does not
//! repeat its position. The gateway turns the position into a path of its configuration file
//! (`sources.NAME.url`, `views.NAME.fields.risk`) and a line and column; anywhere else a problem
//! is shown as one line with its position in front ([`Problem`]'s `Display`):
//! ``view `user_stats`: fields.risk: the view has no feature `risk` ``.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

/// A duration in a configuration, written the human way: `"250ms"`, `"2s"`, `"1h 30m"`, `"30d"`
/// (anything [`humantime::parse_duration`] reads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for ConfigDuration {
    type Err = String;

    /// Parses `text`; the error quotes it and gives an example of the form.
    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map(ConfigDuration)
            .map_err(|e| format!("`{text}` is not a duration like \"20ms\" or \"5s\": {e}"))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ConfigDuration {
    /// The human form again, e.g. `1s 500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl From<Duration> for ConfigDuration {
    fn from(duration: Duration) -> Self {
        ConfigDuration(duration)
    }
}

impl From<ConfigDuration> for Duration {
    fn from(duration: ConfigDuration) -> Self {
        duration.0
    }
}

/// What a [`Problem`] concerns: the source's own options, or one of its views' options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The source's options.
    #[default]
    Source,
    /// The options of the view of this name.
    View(String),
}

/// Something wrong with a source's or a view's options, found while validating.
///
/// Built the way it reads: `Problem::new("must be at least 1").at("pool_size")`. A kind's
/// compilation functions return problems about the options they were given; the shared
/// [`validate_options`](crate::validate_options) places those of a view's compilation on that
/// view, so a kind never writes a view's name into a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    subject: Subject,
    field: Vec<String>,
    message: String,
}

impl Problem {
    /// A problem with the options being checked, at no field in particular: it concerns the
    /// source until placed on a view ([`Problem::in_view`]).
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            subject: Subject::Source,
            field: Vec::new(),
            message: message.into(),
        }
    }

    /// A problem with the source's own options.
    pub fn source(message: impl Into<String>) -> Self {
        Self::new(message)
    }

    /// A problem with the options of the view `name`.
    pub fn view(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(message).in_view(name)
    }

    /// The same problem one key deeper: at `key` inside the field it was at (or at the top
    /// level when it had none). `Problem::new(msg).at("fields").at("risk")` is at `fields.risk`.
    pub fn at(mut self, key: impl Into<String>) -> Self {
        self.field.push(key.into());
        self
    }

    /// The same problem, placed on the view `name` (its field and message unchanged).
    pub fn in_view(mut self, name: impl Into<String>) -> Self {
        self.subject = Subject::View(name.into());
        self
    }

    /// What the problem concerns.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// The view it concerns, if it is a view's.
    pub fn view_name(&self) -> Option<&str> {
        match &self.subject {
            Subject::Source => None,
            Subject::View(name) => Some(name),
        }
    }

    /// The keys leading to the field it is at, outermost first; empty when it concerns the
    /// options as a whole.
    pub fn field(&self) -> &[String] {
        &self.field
    }

    /// What is wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    /// ``view `NAME`: FIELD: MESSAGE``, each part of the position only when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Subject::View(name) = &self.subject {
            write!(f, "view `{name}`: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field.join("."))?;
        }
        f.write_str(&self.message)
    }
}

/// A problem equals the line it shows as ([`Problem`]'s `Display`), so a test can compare what
/// `validate` returns with the lines it expects.
impl PartialEq<str> for Problem {
    fn eq(&self, line: &str) -> bool {
        let shown = self.to_string();
        shown == line
    }
}

impl PartialEq<&str> for Problem {
    fn eq(&self, line: &&str) -> bool {
        self == *line
    }
}

impl PartialEq<String> for Problem {
    fn eq(&self, line: &String) -> bool {
        self == line.as_str()
    }
}

/// Every problem shown as one line ([`Problem`]'s `Display`), the lines joined by `separator`:
/// what a build error or a log says.
pub fn join(problems: &[Problem], separator: &str) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

/// Reads `text`, one more node of a deployment whose `url` (with scheme `url_scheme`) names the
/// first, as a `host:port` address (an IPv6 host in brackets, `[::1]:6379`). The scheme, TLS and
/// credentials are `url`'s for every node, so a node written as a URL is refused, and the message
/// says when its scheme differs from `url`'s (`rediss://` beside a `redis://` url: TLS for some
/// nodes only). The message quotes `text`, but for credentials written in it.
pub fn node_address(text: &str, url_scheme: &str) -> Result<(String, u16), String> {
    // Credentials written in a node are never quoted back.
    let shown = match text.rsplit_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{after}"),
            None => format!("…@{after}"),
        },
        None => text.to_owned(),
    };
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(if scheme == url_scheme {
            format!(
                "`{shown}` is a URL: write `host:port` (every node is reached with the scheme, TLS \
                 and credentials of `url`)"
            )
        } else {
            format!(
                "`{shown}` is a {scheme}:// URL while `url` is {url_scheme}://: every node is \
                 reached the same way, with the scheme, TLS and credentials of `url`; write \
                 `host:port`"
            )
        });
    }
    let not_an_address = || format!("`{shown}` is not a `host:port` address");
    if text.contains(['@', '/', '?', '#']) || text.chars().any(char::is_whitespace) {
        return Err(not_an_address());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(not_an_address)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(not_an_address)?,
        None if host.contains(':') => return Err(not_an_address()),
        None => host,
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 && !host.is_empty() => Ok((host.to_owned(), port)),
        _ => Err(not_an_address()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_human_form() {
        let parse = |text: &str| toml::Value::String(text.into()).try_into::<ConfigDuration>();
        assert_eq!(
            parse("250ms").expect("parses").get(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse("30d").expect("parses"),
            ConfigDuration(Duration::from_secs(30 * 86_400))
        );
        let error = parse("soon").unwrap_err().message().to_owned();
        assert!(
            error.starts_with("`soon` is not a duration like \"20ms\" or \"5s\": "),
            "{error}"
        );
        assert_eq!(
            ConfigDuration(Duration::from_millis(1500)).to_string(),
            "1s 500ms"
        );
    }

    #[test]
    fn problems_show_their_position_in_front() {
        let problem = Problem::new("the view has no feature `y`")
            .at("fields")
            .at("y");
        assert_eq!(problem.to_string(), "fields.y: the view has no feature `y`");
        let problem = problem.in_view("x");
        assert_eq!(problem.view_name(), Some("x"));
        assert_eq!(problem.field(), ["fields", "y"]);
        assert_eq!(problem.message(), "the view has no feature `y`");
        assert_eq!(
            problem.to_string(),
            "view `x`: fields.y: the view has no feature `y`"
        );
        assert_eq!(Problem::view("x", "m").to_string(), "view `x`: m");
        assert_eq!(Problem::source("m").at("url").to_string(), "url: m");
        assert_eq!(*Problem::source("m").subject(), Subject::Source);
        let problems = [Problem::source("a"), Problem::view("v", "b")];
        assert_eq!(join(&problems, "; "), "a; view `v`: b");
        assert_eq!(problems, ["a", "view `v`: b"]);
        assert_eq!(Vec::<Problem>::new(), Vec::<String>::new());
    }

    #[test]
    fn node_addresses_are_host_and_port_only() {
        assert_eq!(
            node_address("cache-2.internal:6380", "redis"),
            Ok(("cache-2.internal".to_owned(), 6380))
        );
        assert_eq!(
            node_address("[::1]:7000", "rediss"),
            Ok(("::1".to_owned(), 7000))
        );
        let e = node_address("rediss://cache-2:6380", "redis").unwrap_err();
        assert!(
            e.contains("is a rediss:// URL while `url` is redis://"),
            "{e}"
        );
        let e = node_address("redis://cache-2:6380", "redis").unwrap_err();
        assert!(e.contains("is a URL: write `host:port`"), "{e}");
        let e = node_address("redis://:hunter2@cache:6379", "redis").unwrap_err();
        assert!(e.starts_with("`redis://…@cache:6379` is a URL"), "{e}");
        let e = node_address("user:hunter2@cache:6379", "redis").unwrap_err();
        assert_eq!(e, "`…@cache:6379` is not a `host:port` address");
        for bad in [
            "cache-2",
            "cache-2:",
            ":6379",
            "cache-2:0",
            "cache-2:99999",
            "::1:6379",
            "[::1:6379",
            "user:pw@cache:6379",
            "cache:6379/0",
            "cache :6379",
        ] {
            let e = node_address(bad, "redis").unwrap_err();
            assert!(e.contains("is not a `host:port` address"), "{bad}: {e}");
        }
    }
}
