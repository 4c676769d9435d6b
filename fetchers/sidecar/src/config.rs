//! The options of a `sidecar` source and of its views, and their pure compilation.
//!
//! [`compile_source`] and [`compile_view`] check everything that can be checked without I/O (one
//! of `address` and `unix_socket`, the address's form, durations) and return every problem,
//! positioned at the option it concerns ([`Problem`]). `validate` and `build` share them, so a
//! source that validated builds the same way.

use std::{path::PathBuf, time::Duration};

use fetcher_api::{ConfigDuration, Problem, SourceSpec, ViewSpec};
use serde::Deserialize;
use tonic::transport::Uri;

/// The source-level options of a `sidecar` source. Exactly one of `address` and `unix_socket`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSourceConfig {
    /// The sidecar's gRPC address over TCP, e.g. `http://127.0.0.1:7001`. Plain HTTP/2 only: a
    /// sidecar runs beside the gateway, on loopback or a Unix socket.
    #[serde(default)]
    pub address: Option<String>,
    /// The sidecar's Unix socket, e.g. `/run/fg/plaid.sock`; a relative path is resolved against
    /// the configuration file's directory. File permissions then decide who may call it.
    #[serde(default)]
    pub unix_socket: Option<String>,
    /// How long to wait for a connection (default `1s`). A refused connection fails at once.
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// How often an HTTP/2 PING checks the connection (default `10s`), even while idle, so a
    /// sidecar that hangs or vanishes without closing its sockets is noticed.
    #[serde(default)]
    pub keepalive_interval: Option<ConfigDuration>,
    /// How long a PING may go unanswered before the connection is dropped (default `5s`); the
    /// next call then reconnects.
    #[serde(default)]
    pub keepalive_timeout: Option<ConfigDuration>,
}

/// The view-level options of a view on a `sidecar` source.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarViewConfig {
    /// The view's name in the sidecar's own configuration (default: the same name). The sidecar
    /// checks the requested features against its view, and the gateway checks their types.
    #[serde(default)]
    pub remote_view: Option<String>,
}

/// The default of [`SidecarSourceConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The default of [`SidecarSourceConfig::keepalive_interval`].
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// The default of [`SidecarSourceConfig::keepalive_timeout`].
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the sidecar listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port`.
    Tcp(Uri),
    /// A Unix socket path, already resolved against the configuration's directory.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(uri) => write!(f, "{uri}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A validated source configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSource {
    /// Where to call.
    pub target: Target,
    /// See [`SidecarSourceConfig::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`SidecarSourceConfig::keepalive_interval`].
    pub keepalive_interval: Duration,
    /// See [`SidecarSourceConfig::keepalive_timeout`].
    pub keepalive_timeout: Duration,
}

/// Checks a source's options; every problem is reported.
pub fn compile_source(
    source: &SourceSpec,
    config: &SidecarSourceConfig,
) -> Result<CompiledSource, Vec<Problem>> {
    let mut problems = Vec::new();
    let target = match (&config.address, &config.unix_socket) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                "set one of `address` and `unix_socket`, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(Problem::new(
                "missing `address` (e.g. \"http://127.0.0.1:7001\") or `unix_socket`",
            ));
            None
        }
        (Some(address), None) => match parse_address(address) {
            Ok(uri) => Some(Target::Tcp(uri)),
            Err(e) => {
                problems.push(Problem::new(e).at("address"));
                None
            }
        },
        (None, Some(path)) if path.trim().is_empty() => {
            problems.push(Problem::new("empty path").at("unix_socket"));
            None
        }
        (None, Some(path)) => Some(Target::Unix(source.resolve_path(path))),
    };
    let mut duration = |name: &str, value: Option<ConfigDuration>, default: Duration| {
        let d = value.map_or(default, ConfigDuration::get);
        if d.is_zero() {
            problems.push(Problem::new("must be more than zero").at(name));
        }
        d
    };
    let connect_timeout = duration(
        "connect_timeout",
        config.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let keepalive_interval = duration(
        "keepalive_interval",
        config.keepalive_interval,
        DEFAULT_KEEPALIVE_INTERVAL,
    );
    let keepalive_timeout = duration(
        "keepalive_timeout",
        config.keepalive_timeout,
        DEFAULT_KEEPALIVE_TIMEOUT,
    );
    match target {
        Some(target) if problems.is_empty() => Ok(CompiledSource {
            target,
            connect_timeout,
            keepalive_interval,
            keepalive_timeout,
        }),
        _ => Err(problems),
    }
}

/// `http://host:port`, nothing else: no TLS (none is built in), no path (gRPC ignores it).
fn parse_address(address: &str) -> Result<Uri, String> {
    let uri: Uri = address
        .parse()
        .map_err(|_| format!("`{address}` is not a URI such as \"http://127.0.0.1:7001\""))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{address}`: TLS is not supported; run the sidecar beside the gateway on \
                 loopback or a Unix socket"
            ));
        }
        _ => {
            return Err(format!(
                "`{address}` must start with http://, e.g. \"http://127.0.0.1:7001\""
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!("`{address}` needs a host and a port"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("`{address}` must not have a path"));
    }
    Ok(uri)
}

/// The sidecar's name for `view`. The problems are the view's (its caller places them on it).
pub fn compile_view(view: &ViewSpec, config: &SidecarViewConfig) -> Result<String, Vec<Problem>> {
    match &config.remote_view {
        None => Ok(view.name.clone()),
        Some(name) if name.trim().is_empty() => {
            Err(vec![Problem::new("is empty").at("remote_view")])
        }
        Some(name) => Ok(name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::Options;

    use super::*;

    fn spec(options: &str) -> (SourceSpec, SidecarSourceConfig) {
        let options = Options(options.parse().expect("valid TOML"));
        let config = options.parse().expect("parses");
        let spec = SourceSpec {
            name: "plaid".into(),
            kind: "sidecar".into(),
            options,
            views: vec![],
            base_dir: "/etc/fg".into(),
        };
        (spec, config)
    }

    #[test]
    fn tcp_and_unix_targets() {
        let (s, c) = spec(r#"address = "http://127.0.0.1:7001""#);
        let compiled = compile_source(&s, &c).expect("valid");
        assert_eq!(compiled.target.to_string(), "http://127.0.0.1:7001/");
        assert_eq!(compiled.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let (s, c) = spec(
            r#"unix_socket = "run/plaid.sock"
               connect_timeout = "250ms""#,
        );
        let compiled = compile_source(&s, &c).expect("valid");
        assert_eq!(
            compiled.target,
            Target::Unix("/etc/fg/run/plaid.sock".into())
        );
        assert_eq!(compiled.connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_options_are_all_reported() {
        let (s, c) = spec(
            r#"address = "http://127.0.0.1:7001"
               unix_socket = "/x.sock"
               keepalive_timeout = "0s""#,
        );
        let errors = compile_source(&s, &c).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message().contains("not both"));
        assert_eq!(
            errors[1].to_string(),
            "keepalive_timeout: must be more than zero"
        );

        let (s, c) = spec("");
        assert!(
            compile_source(&s, &c).unwrap_err()[0]
                .message()
                .contains("missing `address`")
        );
        for (address, expected) in [
            ("https://127.0.0.1:7001", "TLS"),
            ("127.0.0.1:7001", "http://"),
            ("http://127.0.0.1", "host and a port"),
            ("http://127.0.0.1:7001/v1", "path"),
            ("http://exa mple:1", "not a URI"),
        ] {
            let (s, c) = spec(&format!("address = {address:?}"));
            let errors = compile_source(&s, &c).unwrap_err();
            assert_eq!(errors[0].field(), ["address"]);
            assert!(
                errors[0].message().contains(expected),
                "{address}: {errors:?}"
            );
        }
    }

    #[test]
    fn unknown_options_and_bad_durations_do_not_parse() {
        let options = Options(r#"adress = "x""#.parse().expect("toml"));
        assert!(
            options
                .parse::<SidecarSourceConfig>()
                .unwrap_err()
                .contains("adress")
        );
        let options = Options(r#"connect_timeout = "soon""#.parse().expect("toml"));
        assert!(
            options
                .parse::<SidecarSourceConfig>()
                .unwrap_err()
                .contains("`soon` is not a duration like \"20ms\" or \"5s\"")
        );
    }
}
