//! The connection pool of a `redis` source, and how its failures are classified.
//!
//! # Contract
//! The pool reconnects by itself, forever, with an exponential backoff (50 ms doubling to 500 ms:
//! after a failover, the next attempt finds the new primary within half a second).
//! Commands never wait for a reconnection: every call is sent with fred's `fail_fast`, so while a
//! connection is down it fails at once (as [`ErrorClass::Unavailable`], retryable), and with a
//! timeout that is the lesser of `command_timeout` and what is left of the caller's deadline, so
//! a server that accepts but does not answer fails as [`ErrorClass::Timeout`]. Commands are
//! written once (`max_attempts = 1`): the gateway's retry layer, not the client, decides whether
//! a failed call is repeated.
//!
//! # Cluster
//! In `cluster` mode the client follows no redirection itself (`max_redirections = 0`): a command
//! a node answers `MOVED` (its slot has moved) or `ASK` (its slot is migrating and the key has
//! moved) fails with [`is_redirection`], and the node did not run it. [`crate::fetcher`] follows
//! both. On `MOVED` the client has read the slot map again before failing the command, so the
//! command sent once more reaches the slot's new owner. A command redirected again is an `ASK`:
//! [`redirect_target`] asks the slot's owner where the slot is migrating to, and the command is
//! sent there right after `ASKING`, the two in one pipeline, so nothing else runs between them on
//! that connection. fred 10.1's own `ASK` handling is not safe to use: it writes `ASKING` to the
//! new node and takes the next answer on that connection as its reply (whatever command it
//! answers), sends the command to the old node again, and, its attempts spent, ends the
//! connection's task (see "Supervision").
//!
//! # Supervision
//! fred ends a client's connection task on a few errors that no reconnection policy covers and
//! leaves the client looking connected: every command sent to it would then wait its whole
//! timeout, forever. [`connect`] watches each client's task and starts it again (logged) when it
//! ends with an error; the pool quitting ends the watch.
//!
//! # Failure
//! [`connect`] fails only on what waiting cannot fix: a URL that does not resolve (an unset
//! variable, a bad TLS setup), an unreadable `tls_*` file (naming the option) or a refused
//! password.
//!
//! # TLS
//! A `rediss://` URL uses rustls with the ring provider (fred's `enable-rustls-ring`). The server
//! is checked against `tls_ca_file`'s roots when set, else the system's, and must hold a
//! certificate for the URL's host; a client certificate is sent when `tls_client_cert_file` and
//! `tls_client_key_file` are set. A server whose certificate fails the check never connects:
//! the error says why (e.g. `UnknownIssuer`) and, as Redis may simply not be up yet, it is a
//! warning at start-up and a fast `unavailable` at fetch time, like any connection failure. A server that is not there yet is logged and
//! left to the background reconnection, so the gateway can start before Redis does.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use fetcher_api::{Env, ErrorClass, FetchError, tls};
use fred::{
    prelude::{
        Client, ClientLike, Config, EventInterface, Options, Pool, ReconnectPolicy, ServerConfig,
        TcpConfig,
    },
    types::{
        Builder, ClusterHash, ConnectHandle, CustomCommand,
        config::{Server, TlsConfig},
    },
};
use rustls::{ClientConfig, RootCertStore};

use crate::config::{CompiledSource, Mode, resolve_url};

/// Backoff of the background reconnection, in milliseconds.
const RECONNECT_MIN_MS: u32 = 50;
const RECONNECT_MAX_MS: u32 = 500;

/// Builds the pool of `source` and waits up to its `connect_timeout` for it to connect.
///
/// `require_connection` makes an unreachable server an error (for `materialize`, which has nothing
/// to do without it) instead of a warning.
pub async fn connect(
    source_name: &str,
    source: &CompiledSource,
    base_dir: &Path,
    env: &Env,
    require_connection: bool,
) -> Result<Pool, String> {
    let url = resolve_url(&source.url, env)?;
    // The URL holds the password: its parse errors are reported by kind only.
    let mut config = Config::from_url_centralized(&url)
        .map_err(|e| format!("url: cannot be used ({:?})", e.kind()))?;
    let parsed = url::Url::parse(&url).map_err(|_| "url: not a valid URL".to_owned())?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    match source.mode {
        Mode::Standalone => {}
        Mode::Cluster => {
            let port = parsed.port().unwrap_or(6379);
            let mut hosts = vec![(host, port)];
            hosts.extend(source.nodes.iter().cloned());
            config.server = ServerConfig::new_clustered(hosts);
            config.database = None;
        }
        Mode::Sentinel => {
            let port = parsed.port().unwrap_or(26379);
            let mut hosts = vec![(host, port)];
            hosts.extend(source.nodes.iter().cloned());
            config.server = ServerConfig::new_sentinel(
                hosts,
                source.sentinel_service_name.clone().unwrap_or_default(),
            );
        }
    }
    if let Some(tls) = tls_config(source, |path| base_dir.join(path))? {
        config.tls = Some(tls);
    }
    // Keep retrying a first connection that fails, instead of giving up: Redis may start after
    // the gateway.
    config.fail_fast = false;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = source.connect_timeout;
            c.internal_command_timeout = source.command_timeout.max(source.connect_timeout);
            // Retries belong to the gateway's retry layer, within its budget.
            c.max_command_attempts = 1;
            // Redirections are followed by the fetcher (see the module doc's "Cluster").
            c.max_redirections = 0;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = source.command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0, // no limit: a fetcher lives as long as the gateway
            RECONNECT_MIN_MS,
            RECONNECT_MAX_MS,
            2,
        ))
        .build_pool(source.pool_size)
        .map_err(|e| format!("cannot create the Redis client ({:?})", e.kind()))?;

    let mut errors = pool.clients().first().map(|c| c.error_rx());
    supervise(source_name, &pool, pool.connect_pool());
    let connected = tokio::time::timeout(source.connect_timeout, pool.wait_for_connect()).await;
    if matches!(connected, Ok(Ok(()))) {
        return Ok(pool);
    }
    let mut last_error = None;
    if let Some(errors) = errors.as_mut() {
        while let Ok((error, _server)) = errors.try_recv() {
            last_error = Some(error);
        }
    }
    let refused = last_error
        .as_ref()
        .is_some_and(|e| *e.kind() == fred::error::ErrorKind::Auth);
    let untrusted = last_error.as_ref().is_some_and(is_certificate_error);
    if refused || untrusted || require_connection {
        let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
        let why = match &last_error {
            Some(e) if refused => format!("Redis refused the credentials ({})", e.details()),
            Some(e) if untrusted => format!(
                "the TLS handshake with Redis failed: {} ({})",
                certificate_hint(e.details(), source.tls_ca_file.is_some()),
                e.details()
            ),
            Some(e) => format!("cannot connect to Redis: {}", e.details()),
            None => format!(
                "cannot connect to Redis within connect_timeout ({:?})",
                source.connect_timeout
            ),
        };
        return Err(why);
    }
    tracing::warn!(
        source = source_name,
        error = last_error.as_ref().map(|e| e.details().to_owned()),
        "redis is unreachable at start-up, reconnecting in the background"
    );
    Ok(pool)
}

/// The TLS setup of a `rediss://` source with `tls_*` options; `None` keeps fred's own (the
/// system's roots, no client certificate). Reads the files named by the options; an error names
/// the option and the file.
pub(crate) fn tls_config(
    source: &CompiledSource,
    resolve: impl Fn(&str) -> PathBuf,
) -> Result<Option<TlsConfig>, String> {
    if !source.tls || (source.tls_ca_file.is_none() && source.tls_client_cert.is_none()) {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match &source.tls_ca_file {
        Some(file) => {
            let path = resolve(file);
            for cert in tls::read_certs("tls_ca_file", &path)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "tls_ca_file: `{}` holds a certificate rustls cannot use as a root: {e}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            // A client certificate alone: trust what fred would have trusted.
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(
                    "no system root certificate could be loaded: set tls_ca_file to the CA of \
                     the server's certificate"
                        .to_owned(),
                );
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots);
    let config = match &source.tls_client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            tls::client_auth(builder, &resolve(cert_file), &resolve(key_file))?
        }
    };
    Ok(Some(TlsConfig::from(config)))
}

/// Whether a connection failed on the server's certificate (or on ours): a setup problem that
/// waiting cannot fix, unlike a server that is not up yet.
fn is_certificate_error(error: &fred::error::Error) -> bool {
    *error.kind() == fred::error::ErrorKind::Tls
        || [
            "InvalidCertificate",
            "invalid peer certificate",
            "HandshakeFailure",
        ]
        .iter()
        .any(|p| error.details().contains(p))
}

/// What to look at for a certificate error.
fn certificate_hint(details: &str, ca_file: bool) -> &'static str {
    if details.contains("NotValidForName") {
        "the server's certificate is not issued for the host in the URL"
    } else if details.contains("UnknownIssuer") || details.contains("BadSignature") {
        if ca_file {
            "the server's certificate is not signed by a root in tls_ca_file"
        } else {
            "the server's certificate is not signed by a system root: set tls_ca_file to its CA"
        }
    } else {
        "check tls_ca_file, tls_client_cert_file and tls_client_key_file"
    }
}

/// Per-call options: never wait for a reconnection, never outlive `timeout`, write once (and
/// follow no redirection: the pool's setting, which a call's options cannot lower).
pub fn call_options(timeout: Duration) -> Options {
    Options {
        fail_fast: true,
        timeout: Some(timeout),
        max_attempts: Some(1),
        ..Options::default()
    }
}

/// Whether a cluster node answered `MOVED` or `ASK` to the command, so it did not run it (see the
/// module doc's "Cluster").
pub fn is_redirection(error: &fred::error::Error) -> bool {
    *error.kind() == fred::error::ErrorKind::Routing && error.details().contains("redirections")
}

/// Where the keys of `slot` are to be asked for after nodes redirected a command twice, as the
/// node the client routes the slot to now reports it (`CLUSTER NODES`, within `timeout`): the
/// node the slot is migrating to (its keys already moved are there, to be asked for right after
/// `ASKING`), else the node serving the slot, in that node's view (itself, or the new owner when
/// the node the client read its slot map from had not heard of the move yet). `None` when it
/// cannot say.
pub async fn redirect_target(client: &Client, slot: u16, timeout: Duration) -> Option<Server> {
    let nodes: String = client
        .with_options(&call_options(timeout))
        .custom(
            CustomCommand::new_static("CLUSTER", ClusterHash::Custom(slot), false),
            vec!["NODES"],
        )
        .await
        .ok()?;
    redirect_target_in(&nodes, slot)
}

/// [`redirect_target`] in a `CLUSTER NODES` answer: the answering node's own line (`myself`)
/// lists `[SLOT->-ID]` while the slot migrates to node `ID`; otherwise the line whose slot ranges
/// hold the slot names its owner. A node's address is `host:port@bus[,hostname]`.
fn redirect_target_in(nodes: &str, slot: u16) -> Option<Server> {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect())
        .filter(|fields: &Vec<&str>| fields.len() >= 8)
        .collect();
    let myself = |fields: &Vec<&str>| fields[2].split(',').any(|f| f == "myself");
    let migrating = format!("[{slot}->-");
    let target = lines
        .iter()
        .filter(|fields| myself(fields))
        .find_map(|fields| {
            fields[8..]
                .iter()
                .find_map(|s| s.strip_prefix(migrating.as_str())?.strip_suffix(']'))
        });
    let serves = |fields: &&Vec<&str>| {
        fields[8..].iter().any(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            matches!((first.parse::<u16>(), last.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
        })
    };
    let line = match target {
        Some(id) => lines.iter().find(|fields| fields[0] == id)?,
        None => lines.iter().find(serves)?,
    };
    let address = line[1].split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| Server::new(host, port))
}

/// Starts each client's connection task again when it ends with an error (see the module doc's
/// "Supervision"); `handles` are the tasks of `pool`'s clients, in order.
fn supervise(source_name: &str, pool: &Pool, handles: Vec<ConnectHandle>) {
    for (client, handle) in pool.clients().iter().cloned().zip(handles) {
        let source = source_name.to_owned();
        tokio::spawn(async move {
            let mut handle = handle;
            let mut wait = Duration::from_millis(u64::from(RECONNECT_MIN_MS));
            // A task that ends without an error was ended by `quit`.
            while let Ok(Err(error)) = handle.await {
                tracing::warn!(
                    source,
                    error = %error,
                    "a redis connection task ended, starting it again"
                );
                tokio::time::sleep(wait).await;
                // Backs off like the reconnection, should it end again and again.
                wait = (wait * 2).min(Duration::from_millis(u64::from(RECONNECT_MAX_MS)));
                handle = client.connect();
            }
        });
    }
}

/// Whether a command's error is about the connection (so the whole call failed) rather than the
/// one key it was about (a wrong type).
pub fn is_connection_error(error: &fred::error::Error) -> bool {
    !matches!(error.kind(), fred::error::ErrorKind::InvalidArgument)
        && !error.details().starts_with("WRONGTYPE")
}

/// Classifies a client error for the gateway's layers.
pub fn classify(error: &fred::error::Error) -> FetchError {
    use fred::error::ErrorKind as K;
    let detail = error.details();
    let class = match error.kind() {
        K::Timeout => ErrorClass::Timeout,
        // Connection lost or not yet back, the cluster reshaping, a sentinel failing over, a
        // full command queue, the server loading its data: all transient.
        K::IO | K::Canceled | K::Cluster | K::Sentinel | K::Routing | K::Backpressure => {
            ErrorClass::Unavailable
        }
        K::Unknown
            if ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"]
                .iter()
                .any(|p| detail.starts_with(p)) =>
        {
            ErrorClass::Unavailable
        }
        // Not initialized or closed under us: also a connection problem.
        K::Unknown if detail.contains("not initialized") || detail.contains("closed") => {
            ErrorClass::Unavailable
        }
        K::Auth | K::Config | K::Tls | K::Url => ErrorClass::Rejected,
        K::Protocol | K::Parse => ErrorClass::InvalidResponse,
        _ => ErrorClass::Internal,
    };
    FetchError::new(class, format!("redis: {detail}"))
}

/// A short, stable, non-reversible tag of a key for warnings: keys can be personal data, yet two
/// warnings about the same key should be recognisable as such.
pub(crate) fn key_tag(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends PING on a connected client.
pub async fn ping(pool: &Pool, timeout: Duration) -> Result<(), FetchError> {
    pool.next_connected()
        .with_options(&call_options(timeout))
        .ping::<()>(None)
        .await
        .map_err(|e| classify(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirected_slots_keys_are_where_its_node_says() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
e7d1 127.0.0.1:30002@31002,cache-2 master - 0 1426238316232 2 connected 5461-10922 [42-<-292f]
292f 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-99 101-5460 [42->-e7d1] [43->-67ed]
67ed [::1]:30003@31003 master - 0 1426238318243 3 connected 10923-16383 100
";
        // Migrating: the node it migrates to.
        assert_eq!(
            redirect_target_in(nodes, 42),
            Some(Server::new("127.0.0.1", 30002))
        );
        assert_eq!(
            redirect_target_in(nodes, 43),
            Some(Server::new("::1", 30003))
        );
        // Handed over: the node serving it now, as this node knows.
        assert_eq!(
            redirect_target_in(nodes, 6000),
            Some(Server::new("127.0.0.1", 30002))
        );
        assert_eq!(
            redirect_target_in(nodes, 100),
            Some(Server::new("::1", 30003))
        );
        // Its own slot, not migrating: itself.
        assert_eq!(
            redirect_target_in(nodes, 44),
            Some(Server::new("127.0.0.1", 30001))
        );
        assert_eq!(
            redirect_target_in(nodes, 16384 - 1),
            Some(Server::new("::1", 30003))
        );
        assert_eq!(redirect_target_in("", 42), None);
        // A node importing the slot names its owner.
        let target_view = nodes
            .replace("myself,master - 0 0 1", "master - 0 0 1")
            .replace(
                "master - 0 1426238316232 2",
                "myself,master - 0 1426238316232 2",
            );
        assert_eq!(
            redirect_target_in(&target_view, 42),
            Some(Server::new("127.0.0.1", 30001))
        );
    }
}
