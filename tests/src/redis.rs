//! Real Redis servers for tests: Debian's `redis-server`, started on free loopback ports.
//!
//! [`RedisServer`] is one standalone server with no persistence (`--save '' --appendonly no`),
//! which a test can [`stop`](RedisServer::stop) and [`restart`](RedisServer::restart) on the same
//! port to exercise reconnection, or [`pause`](RedisServer::pause) (SIGSTOP) to make it hang.
//! [`RedisCluster`] is a Redis Cluster of masters only, each in its
//! own temporary directory, created with `redis-cli --cluster create` and returned once every node
//! reports `cluster_state:ok`. [`RedisSentinel`] is a primary, its replica and a Redis Sentinel
//! (`redis-server --sentinel`) watching them, with timeouts short enough for a failover in
//! seconds.
//!
//! [`RedisServer::start_tls`] serves TLS only (`--port 0 --tls-port PORT`), with a certificate
//! for `127.0.0.1` and `localhost` from a CA of its own ([`TestCertificates`], made with the
//! `openssl` command-line tool; Debian's redis-server 7 is built with TLS), and optionally
//! requires a client certificate of that CA (`--tls-auth-clients yes`).
//!
//! Servers are killed when dropped. If `redis-server` is not installed every constructor panics
//! with a message saying how to install it; nothing here is mocked.
//!
//! Only std is used (blocking sockets and child processes), so the helpers work with or without
//! a tokio runtime and add nothing to the compile time of the `tests` crate.

pub use crate::postgres::TestCertificates;

use crate::free_ports;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a server may take to answer PING after being started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster may take to reach `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds an executable: Debian puts the Redis tools in `/usr/bin`, but a `PATH` entry wins so a
/// locally built Redis can be used too.
fn executable(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    let found = from_path.or_else(|| {
        let debian = Path::new("/usr/bin").join(name);
        debian.is_file().then_some(debian)
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run `bash .ci/run`, or `apt-get install redis-server` \
             (it provides redis-server and redis-cli)"
        )
    })
}

/// How many times a new server is started on fresh ports when the ports chosen were taken in the
/// meantime (another test, or another process on the machine, bound them first).
const PORT_ATTEMPTS: usize = 8;

/// Sends one inline command and reads the first line of the answer, or `None` if the server does
/// not answer (not listening yet, or still loading).
fn inline_command(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

/// One `redis-server` process.
#[derive(Debug)]
struct Process {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Set for a TLS-only server: the port is its TLS port, and the harness's own commands go
    /// through `redis-cli --tls` with the client certificate.
    tls: Option<TestCertificates>,
    /// Set for a sentinel: its configuration file's first text (the sentinel rewrites the file
    /// as it learns, so a restart keeps what it knew).
    sentinel_config: Option<String>,
}

/// Why a server did not start.
enum StartFailure {
    /// One of its ports was bound by someone else between choosing and binding it.
    PortTaken,
    /// Anything else: the message says what the server printed.
    Other(String),
}

impl Process {
    /// Starts a server on the ports `choose` returns (its port and extra arguments), choosing
    /// again when a port turns out to be taken.
    fn spawn_on_free_ports(
        choose: impl Fn() -> (u16, Vec<String>),
        tls: Option<TestCertificates>,
    ) -> Process {
        Process::spawn_with(choose, tls, None)
    }

    /// [`Process::spawn_on_free_ports`], as a sentinel when `sentinel_config` is given.
    fn spawn_with(
        choose: impl Fn() -> (u16, Vec<String>),
        tls: Option<TestCertificates>,
        sentinel_config: Option<String>,
    ) -> Process {
        let mut tls = tls;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (port, extra_args) = choose();
            let mut process = Process {
                child: None,
                port,
                dir: tempfile::tempdir().expect("cannot create a temporary directory for Redis"),
                extra_args,
                tls: tls.take(),
                sentinel_config: sentinel_config.clone(),
            };
            match process.try_start() {
                Ok(()) => return process,
                Err(StartFailure::PortTaken) if attempt < PORT_ATTEMPTS => {
                    tls = process.tls.take();
                }
                Err(StartFailure::PortTaken) => {
                    panic!("redis-server found its ports taken {PORT_ATTEMPTS} times in a row")
                }
                Err(StartFailure::Other(message)) => panic!("{message}"),
            }
        }
    }

    /// Whether the server answers PING.
    fn answers(&self) -> bool {
        match &self.tls {
            None => inline_command(self.port, "PING").as_deref() == Some("+PONG"),
            Some(certs) => redis_cli_command(self.port, false, Some(certs))
                .arg("PING")
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG"),
        }
    }

    /// Starts the server on its port again (after [`Process::kill`]); panics if it does not come
    /// up, whatever the reason, since the port cannot change under the test's clients.
    fn start(&mut self) {
        match self.try_start() {
            Ok(()) => {}
            Err(StartFailure::PortTaken) => panic!(
                "redis-server cannot bind port {}: it was taken while the server was down",
                self.port
            ),
            Err(StartFailure::Other(message)) => panic!("{message}"),
        }
    }

    fn try_start(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(executable("redis-server"));
        if let Some(text) = &self.sentinel_config {
            // The file comes first on the command line.
            let file = self.dir.path().join("sentinel.conf");
            if !file.exists() {
                std::fs::write(&file, text).expect("cannot write sentinel.conf");
            }
            command.arg(&file).arg("--sentinel");
        }
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            // TLS only: no plain port at all, so nothing can reach it without TLS.
            Some(certs) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(certs.server_cert())
                .arg("--tls-key-file")
                .arg(certs.server_key())
                .arg("--tls-ca-cert-file")
                .arg(certs.ca()),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            // No persistence: tests start from an empty server and leave nothing behind.
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if self.answers() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Other(format!(
                    "redis-server on port {} exited with {status}:\n{stderr}\n{log}",
                    self.port
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(StartFailure::Other(format!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (`STOP`, `CONT`...) to the running server.
    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} redis-server failed");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone Redis server on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    process: Process,
}

impl RedisServer {
    /// Starts a server with no persistence and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer {
            process: Process::spawn_on_free_ports(|| (free_ports::<1>()[0], Vec::new()), None),
        }
    }

    /// Starts a server that speaks TLS only, with a certificate for `127.0.0.1` and `localhost`
    /// issued by a CA of its own ([`RedisServer::ca_file`]). With `client_certificates`, clients
    /// must also present a certificate of that CA (`--tls-auth-clients yes`), e.g.
    /// [`TestCertificates::client_cert`]. Panics if `openssl` is not installed.
    pub fn start_tls(client_certificates: bool) -> RedisServer {
        let auth = if client_certificates { "yes" } else { "no" };
        RedisServer {
            process: Process::spawn_on_free_ports(
                || {
                    let tls_auth = vec!["--tls-auth-clients".to_owned(), auth.to_owned()];
                    (free_ports::<1>()[0], tls_auth)
                },
                Some(TestCertificates::generate()),
            ),
        }
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.process.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.process.port)
    }

    /// The certificates of a TLS server.
    pub fn certificates(&self) -> Option<&TestCertificates> {
        self.process.tls.as_ref()
    }

    /// The PEM file of the CA that issued a TLS server's certificate. Panics if TLS is off.
    pub fn ca_file(&self) -> &std::path::Path {
        self.process
            .tls
            .as_ref()
            .map(TestCertificates::ca)
            .expect("the server was started without TLS")
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Kills the server (SIGKILL: clients see the connection drop, as in a crash).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Freezes the server (SIGSTOP): its connections stay open and every command waits
    /// unanswered, as with a server that hangs (a long fork, a swapped-out host), until
    /// [`RedisServer::resume`]. Do not call [`RedisServer::cli`] meanwhile: it would wait too.
    pub fn pause(&self) {
        self.process.signal("STOP");
    }

    /// Lets a [`paused`](RedisServer::pause) server run again (SIGCONT): it answers the commands
    /// that waited.
    pub fn resume(&self) {
        self.process.signal("CONT");
    }

    /// Starts the server again on the same port (empty: nothing is persisted) and waits until it
    /// answers PING.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process.start();
    }

    /// Runs `redis-cli` against the server with `args` and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(
            redis_cli_command(self.process.port, false, self.process.tls.as_ref()),
            args,
        )
    }
}

/// A Redis Cluster of masters on loopback, each node killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Process>,
}

impl RedisCluster {
    /// Starts `masters` nodes in cluster mode (no replicas), creates the cluster and waits until
    /// every node reports `cluster_state:ok`. Redis Cluster needs at least 3 masters.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let nodes: Vec<Process> = (0..masters)
            .map(|_| {
                // The cluster bus gets its own free port: the default (port + 10000) may be taken
                // or out of range for an ephemeral port.
                let choose = || {
                    let [port, bus] = free_ports::<2>();
                    let args = [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--cluster-port",
                        &bus.to_string(),
                    ];
                    (port, args.map(str::to_owned).to_vec())
                };
                Process::spawn_on_free_ports(choose, None)
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = Command::new(executable("redis-cli"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        let started = Instant::now();
        while !cluster
            .nodes
            .iter()
            .all(|n| redis_cli(n.port, false, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the cluster did not reach cluster_state:ok within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// `127.0.0.1:PORT` of every node.
    pub fn addresses(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Runs `redis-cli -c` (following redirections) against the first node with `args` and
    /// returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.nodes[0].port, true, args)
    }
}

/// A primary, its replica and one Redis Sentinel watching them on loopback, each killed when
/// dropped. The sentinel (`redis-server --sentinel`, Debian's binary) knows the primary as
/// [`RedisSentinel::SERVICE`], with a quorum of 1 and short timeouts, so a failover takes
/// seconds: the primary is deemed down after [`RedisSentinel::DOWN_AFTER`] without an answer,
/// then the replica is promoted.
#[derive(Debug)]
pub struct RedisSentinel {
    primary: Process,
    replica: Process,
    sentinel: Process,
}

impl RedisSentinel {
    /// The name the sentinel knows the primary by.
    pub const SERVICE: &str = "mymaster";
    /// How long the primary may not answer before the sentinel deems it down.
    pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
    /// The sentinel's `failover-timeout`: a failover that has not ended by then is tried again.
    pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);

    /// Starts the primary, then its replica, waits until the replica is in sync, then starts
    /// the sentinel and waits until it knows of the replica (the candidate for a failover).
    pub fn start() -> RedisSentinel {
        let primary = Process::spawn_on_free_ports(|| (free_ports::<1>()[0], Vec::new()), None);
        let of = primary.port.to_string();
        let replica = Process::spawn_on_free_ports(
            || {
                let args = ["--replicaof", "127.0.0.1", &of];
                (free_ports::<1>()[0], args.map(str::to_owned).to_vec())
            },
            None,
        );
        let started = Instant::now();
        while !redis_cli(replica.port, false, &["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the replica did not sync with the primary within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let name = Self::SERVICE;
        let config = format!(
            "sentinel monitor {name} 127.0.0.1 {of} 1\n\
             sentinel down-after-milliseconds {name} {}\n\
             sentinel failover-timeout {name} {}\n",
            Self::DOWN_AFTER.as_millis(),
            Self::FAILOVER_TIMEOUT.as_millis(),
        );
        let sentinel =
            Process::spawn_with(|| (free_ports::<1>()[0], Vec::new()), None, Some(config));
        let cluster = RedisSentinel {
            primary,
            replica,
            sentinel,
        };
        let replica_port = cluster.replica.port.to_string();
        let started = Instant::now();
        while !cluster
            .sentinel_cli(&["SENTINEL", "replicas", name])
            .lines()
            .any(|l| l.trim() == replica_port)
        {
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the sentinel did not learn of the replica within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster
    }

    /// `redis://127.0.0.1:PORT` of the sentinel.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    /// The port of the server started as the primary.
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// The port of the server started as the replica.
    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// The primary's port as the sentinel names it now, if it names one.
    pub fn current_primary(&self) -> Option<u16> {
        self.sentinel_cli(&["SENTINEL", "get-master-addr-by-name", Self::SERVICE])
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
    }

    /// Runs `redis-cli` against the server started as the primary.
    pub fn primary_cli(&self, args: &[&str]) -> String {
        redis_cli(self.primary.port, false, args)
    }

    /// Runs `redis-cli` against the server started as the replica.
    pub fn replica_cli(&self, args: &[&str]) -> String {
        redis_cli(self.replica.port, false, args)
    }

    /// Runs `redis-cli` against the sentinel.
    pub fn sentinel_cli(&self, args: &[&str]) -> String {
        redis_cli(self.sentinel.port, false, args)
    }

    /// Kills the server started as the primary (SIGKILL, as in a crash).
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }
}

fn redis_cli(port: u16, cluster: bool, args: &[&str]) -> String {
    run_cli(redis_cli_command(port, cluster, None), args)
}

/// `redis-cli` aimed at a server; over TLS (verifying the server, with the client certificate)
/// when `tls` is given.
fn redis_cli_command(port: u16, cluster: bool, tls: Option<&TestCertificates>) -> Command {
    let mut command = Command::new(executable("redis-cli"));
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if cluster {
        command.arg("-c");
    }
    if let Some(certs) = tls {
        command
            .arg("--tls")
            .arg("--cacert")
            .arg(certs.ca())
            .arg("--cert")
            .arg(certs.client_cert())
            .arg("--key")
            .arg(certs.client_key());
    }
    command
}

fn run_cli(mut command: Command, args: &[&str]) -> String {
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run redis-cli");
    assert!(
        output.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_stops_and_restarts_on_its_port() {
        let mut server = RedisServer::start();
        assert_eq!(server.cli(&["set", "k", "v"]).trim(), "OK");
        assert_eq!(server.cli(&["get", "k"]).trim(), "v");
        server.stop();
        assert_eq!(inline_command(server.port(), "PING"), None);
        server.restart();
        // Nothing persisted.
        assert_eq!(server.cli(&["exists", "k"]).trim(), "0");
        assert!(server.url().ends_with(&server.port().to_string()));
    }

    #[test]
    fn a_tls_server_answers_over_tls_only() {
        let mut server = RedisServer::start_tls(true);
        assert!(server.url().starts_with("rediss://127.0.0.1:"));
        assert_eq!(server.cli(&["set", "k", "v"]).trim(), "OK");
        // No plain text on the TLS port.
        assert_ne!(
            inline_command(server.port(), "PING").as_deref(),
            Some("+PONG")
        );
        server.restart();
        assert_eq!(server.cli(&["exists", "k"]).trim(), "0");
    }

    #[test]
    fn a_sentinel_promotes_the_replica_when_the_primary_dies() {
        let mut cluster = RedisSentinel::start();
        assert_eq!(cluster.current_primary(), Some(cluster.primary_port()));
        assert_eq!(cluster.primary_cli(&["SET", "k", "v"]).trim(), "OK");
        assert_eq!(cluster.primary_cli(&["WAIT", "1", "5000"]).trim(), "1");
        assert_eq!(cluster.replica_cli(&["GET", "k"]).trim(), "v");
        cluster.kill_primary();
        let started = Instant::now();
        while cluster.current_primary() != Some(cluster.replica_port()) {
            assert!(started.elapsed() < CLUSTER_TIMEOUT, "no failover");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(cluster.replica_cli(&["ROLE"]).starts_with("master"));
        assert_eq!(cluster.replica_cli(&["GET", "k"]).trim(), "v");
    }

    #[test]
    fn a_cluster_serves_every_slot() {
        let cluster = RedisCluster::start(3);
        assert_eq!(cluster.urls().len(), 3);
        for key in ["a", "b", "c", "d", "e"] {
            assert_eq!(cluster.cli(&["set", key, "1"]).trim(), "OK");
        }
        assert!(
            cluster
                .cli(&["cluster", "info"])
                .contains("cluster_known_nodes:3")
        );
    }
}
