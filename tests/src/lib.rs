//! The end-to-end test harness: runs the real `feature-gateway` binary as a child process on
//! loopback ports it picks itself, and hands out gRPC clients to it.
//!
//! The binaries are built (or found up to date) with `cargo build` once per test process, so the
//! tests always drive the code of this checkout.
#![forbid(unsafe_code)]

pub mod demo_traffic;
pub mod kafka;
pub mod otlp;
pub mod postgres;
pub mod redis;
pub mod sidecar;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use proto::v1::{self, feature_service_client::FeatureServiceClient};
use tonic::transport::Channel;

/// `N` distinct TCP ports on 127.0.0.1 that nothing listens on right now. All `N` are held at
/// once while choosing, so they differ from each other; nothing stops another process from taking
/// one before the server binds it, so a server started on them retries on fresh ones when it
/// finds one taken.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| {
        TcpListener::bind("127.0.0.1:0").expect("cannot bind an ephemeral loopback port")
    });
    listeners.map(|listener| {
        listener
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    })
}

/// The workspace's binaries, built once per test process with the same command as `tests/run`
/// (`cargo build --workspace --bins`), so that it finds everything up to date there. Returns
/// `target/<profile>`, where the binaries are.
///
/// Two things would make it compile again what `tests/run` built: a build of one package
/// (`-p`), which resolves other features for the shared dependencies, and the variables cargo
/// sets for a test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, `OUT_DIR`...), which some
/// build scripts watch (`ring`'s, through the `cc` crate): seen in this process's environment,
/// they would rerun that script and recompile everything above it. So the build runs without
/// them.
pub fn workspace_binaries() -> &'static Path {
    static PROFILE_DIR: OnceLock<PathBuf> = OnceLock::new();
    PROFILE_DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_for_a_test) {
                build.env_remove(&name);
            }
        }
        let status = build
            .args(["build", "--quiet", "--workspace", "--bins", "--locked"])
            .status()
            .expect("cannot run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
        // target/<profile>/deps/<test binary> -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf()
    })
}

/// Whether cargo sets the variable `name` for a test (or build script) it runs, rather than the
/// user for cargo itself.
fn set_for_a_test(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name)
}

/// Every vector the Parquet training log in `log` holds for `feature_service`, by request id.
pub fn logged_vectors(
    log: &Path,
    feature_service: &str,
) -> Result<std::collections::HashMap<String, training_log::Record>, String> {
    let mut records = std::collections::HashMap::new();
    for (path, _, _) in training_log::training_set::log_files(log, feature_service)? {
        for r in training_log::training_set::read_records(&path)?.1 {
            records.insert(r.request_id.clone(), r);
        }
    }
    Ok(records)
}

/// Path of the `feature-gateway` binary of this checkout, built on first use.
pub fn gateway_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = workspace_binaries().join("feature-gateway");
        assert!(binary.exists(), "{} was not built", binary.display());
        binary
    })
}

/// A running gateway process, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// `127.0.0.1:PORT` of the gRPC server.
    pub grpc: String,
    /// `127.0.0.1:PORT` of the admin HTTP server.
    pub admin: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Runs `feature-gateway demo`, writing the demo into a temporary directory.
    pub fn demo() -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let demo_dir = dir.path().join("demo");
        Self::start(
            &["demo", "--dir", demo_dir.to_str().expect("utf-8 path")],
            &[],
            dir,
        )
    }

    /// Runs `feature-gateway serve --config FILE`.
    pub fn serve(config: &Path) -> GatewayProcess {
        Self::serve_with_env(config, &[])
    }

    /// Runs `feature-gateway serve --config FILE` with extra environment variables (secrets the
    /// configuration references, or `RUST_LOG`).
    pub fn serve_with_env(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start(
            &["serve", "--config", config.to_str().expect("utf-8 path")],
            env,
            dir,
        )
    }

    fn start(args: &[&str], env: &[(&str, &str)], dir: tempfile::TempDir) -> GatewayProcess {
        let log = dir.path().join("gateway.log");
        let mut child = Command::new(gateway_binary())
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start feature-gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("feature-gateway ready ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ready) => ready,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "feature-gateway did not become ready; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .expect("ready line fields")
                .to_owned()
        };
        GatewayProcess {
            grpc: field("grpc="),
            admin: field("admin="),
            child,
            log,
            _dir: dir,
        }
    }

    /// The process's working directory (the demo's files are in `demo/` below it).
    pub fn workdir(&self) -> &Path {
        self._dir.path()
    }

    /// The process's log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of `FeatureService`.
    pub async fn client(&self) -> FeatureServiceClient<Channel> {
        FeatureServiceClient::new(self.channel().await)
    }

    /// A channel to the gRPC port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the gateway")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL and waits for the process to end: a replica lost at once, its calls in
    /// flight with it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGHUP: the gateway reloads its configuration file.
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET `path` on the admin port, returning the body.
    pub async fn admin_get(&self, path: &str) -> String {
        http_get(&self.admin, path).await
    }

    /// POSTs `body` to `path` on the admin port with extra `headers`; the status and body.
    pub async fn admin_post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.admin)
            .await
            .expect("connect to the admin port");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.admin,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (status, body.to_owned())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` on the HTTP/1.1 server at `addr` (an admin port), returning the body; panics on
/// anything but 200.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the admin port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}

/// `t` in RFC 3339 (UTC, microseconds), as `--from` and `--to` of `profile` and `skew` take it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let us = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64;
    let secs = (us / 1_000_000) % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}.{:06}Z",
        training_log::record::utc_date(us),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        us % 1_000_000
    )
}

/// Polls `probe` every 20 ms until it answers `Some`, and returns that; panics naming `what`
/// (with the last `Err` the probe gave as the reason) once `limit` has passed. For tests that
/// wait for a state rather than for a fixed time, so a loaded machine only makes them slower.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                started.elapsed() < limit,
                "{what}: not within {limit:?}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series in a Prometheus text scrape. `series` is the metric's name with its
/// labels as the scrape prints them (`name{a="x",b="y"}`), or the bare name of an unlabelled
/// one; `None` when the scrape holds no such series.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl GatewayProcess {
    /// The value of `series` (see [`metric`]) in a scrape of `/metrics` now.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.admin_get("/metrics").await, series)
    }

    /// Scrapes `/metrics` until `series` has a value that satisfies `done`, at most `limit`, and
    /// returns that value.
    pub async fn metric_until(
        &self,
        series: &str,
        limit: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        eventually(limit, series, async || match self.metric(series).await {
            Some(value) if done(value) => Ok(value),
            other => Err(format!("{other:?}")),
        })
        .await
    }
}

/// A string value.
pub fn s(v: &str) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::StringValue(v.to_owned())),
    }
}

/// An int64 value.
pub fn i(v: i64) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::Int64Value(v)),
    }
}

/// A double value.
pub fn d(v: f64) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::DoubleValue(v)),
    }
}

/// A map from pairs.
pub fn map(pairs: &[(&str, v1::Value)]) -> std::collections::BTreeMap<String, v1::Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A request with a client deadline (`grpc-timeout`).
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The statuses of a response, as enum values.
pub fn statuses(statuses: &[i32]) -> Vec<v1::FeatureStatus> {
    statuses
        .iter()
        .map(|s| v1::FeatureStatus::try_from(*s).expect("a known status"))
        .collect()
}
