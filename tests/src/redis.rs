//! Real Redis servers for tests: Debian's `redis-server`, started on free loopback ports.
//!
//! [`RedisServer`] is one standalone server with no persistence (`--save '' --appendonly no`),
//! which a test can [`stop`](RedisServer::stop) and [`restart`](RedisServer::restart) on the same
//! port to exercise reconnection, or [`pause`](RedisServer::pause) (SIGSTOP) to make it hang.
//! [`RedisCluster`] is a Redis Cluster of primaries only, or with a replica per primary, each node
//! in its own temporary directory, created with `redis-cli --cluster create` and returned once
//! every node reports `cluster_state:ok` (and every replica is in sync); a test can kill a
//! primary and wait for its replica's promotion, or move a slot's keys to another primary while
//! clients use them (`CLUSTER SETSLOT` and `MIGRATE`, as a resharding does). [`key_slot`] is
//! Redis Cluster's hash slot of a key. [`RedisSentinel`] is a primary, its replica and a Redis Sentinel
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

/// A Redis Cluster on loopback, each node killed when dropped: primaries only
/// ([`RedisCluster::start`]) or a replica per primary ([`RedisCluster::start_with_replicas`]).
/// A test can kill a node ([`RedisCluster::kill`]) and wait for its replica to take over
/// ([`RedisCluster::wait_for_failover`]), or move a slot and its keys to another primary while
/// clients use it ([`RedisCluster::migrate_slot`], step by step as `redis-cli --cluster reshard`
/// does it).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Process>,
    /// A slot each killed primary served when it was killed, by port.
    killed_slots: Vec<(u16, u16)>,
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a primary (else a replica).
    pub primary: bool,
    /// Whether the cluster deems it failed (`fail` or `fail?`).
    pub failing: bool,
    /// A replica's primary.
    pub primary_id: Option<String>,
    /// The slots it serves (a primary's), as inclusive ranges.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

impl RedisCluster {
    /// The `cluster-node-timeout` of a cluster with replicas: how long a primary may not answer
    /// before the others deem it failed and its replica takes over (Redis's default is 15 s).
    pub const FAILOVER_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

    /// Starts `masters` nodes in cluster mode (no replicas), creates the cluster and waits until
    /// every node reports `cluster_state:ok`. Redis Cluster needs at least 3 masters.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        Self::create(masters, 0, Duration::from_millis(5000))
    }

    /// Starts `primaries` primaries and a replica of each, with a node timeout of
    /// [`RedisCluster::FAILOVER_NODE_TIMEOUT`], and waits until every node reports
    /// `cluster_state:ok`, knows every other node, and every replica is in sync.
    pub fn start_with_replicas(primaries: usize) -> RedisCluster {
        assert!(primaries >= 3, "a Redis Cluster needs at least 3 primaries");
        let cluster = Self::create(primaries, 1, Self::FAILOVER_NODE_TIMEOUT);
        let started = Instant::now();
        loop {
            let nodes = cluster.cluster_nodes();
            let replicas = nodes.iter().filter(|n| !n.primary).count();
            let everyone_knows = cluster.nodes.iter().all(|n| {
                redis_cli(n.port, false, &["cluster", "info"])
                    .contains(&format!("cluster_known_nodes:{}", primaries * 2))
            });
            if replicas == primaries && everyone_knows {
                break;
            }
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the cluster's replicas did not join within {CLUSTER_TIMEOUT:?}: {nodes:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.wait_replicated();
        cluster
    }

    fn create(primaries: usize, replicas: usize, node_timeout: Duration) -> RedisCluster {
        let node_timeout = node_timeout.as_millis().to_string();
        let nodes: Vec<Process> = (0..primaries * (1 + replicas))
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
                        &node_timeout,
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
        let replicas = replicas.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
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
        let cluster = RedisCluster {
            nodes,
            killed_slots: Vec::new(),
        };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok`.
    fn wait_ok(&self) {
        let started = Instant::now();
        while !self
            .running()
            .all(|n| redis_cli(n.port, false, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the cluster did not reach cluster_state:ok within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running(&self) -> impl Iterator<Item = &Process> {
        self.nodes.iter().filter(|n| n.child.is_some())
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

    /// Runs `redis-cli -c` (following redirections) against the first running node with `args`
    /// and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.any_running(), true, args)
    }

    /// Runs `redis-cli` (not following redirections) against the node on `port`.
    pub fn node_cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, false, args)
    }

    fn any_running(&self) -> u16 {
        self.running()
            .next()
            .expect("every node of the cluster is down")
            .port
    }

    /// The cluster's nodes as a running node sees them now.
    pub fn cluster_nodes(&self) -> Vec<ClusterNode> {
        parse_cluster_nodes(&redis_cli(self.any_running(), false, &["cluster", "nodes"]))
    }

    /// The port of the primary serving `slot` now, as a running node sees it.
    pub fn owner(&self, slot: u16) -> u16 {
        self.cluster_nodes()
            .into_iter()
            .find(|n| n.primary && n.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .port
    }

    /// The port of the replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let nodes = self.cluster_nodes();
        let id = &nodes
            .iter()
            .find(|n| n.port == primary)
            .expect("a node of the cluster")
            .id;
        nodes
            .iter()
            .find(|n| n.primary_id.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("the primary on port {primary} has no replica"))
            .port
    }

    /// Waits until every replica has every write its primary acknowledged so far (equal
    /// replication offsets).
    pub fn wait_replicated(&self) {
        let started = Instant::now();
        loop {
            let behind: Vec<u16> = self
                .cluster_nodes()
                .iter()
                .filter(|n| n.primary && !n.failing && !n.slots.is_empty())
                .filter(|n| {
                    let info = redis_cli(n.port, false, &["INFO", "replication"]);
                    let primary_offset = info_field(&info, "master_repl_offset");
                    let replica_offsets: Vec<&str> = info
                        .lines()
                        .filter(|l| l.starts_with("slave") && l.contains("offset="))
                        .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
                        .collect();
                    replica_offsets.is_empty()
                        || replica_offsets.iter().any(|o| Some(*o) != primary_offset)
                })
                .map(|n| n.port)
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "replicas of {behind:?} not in sync within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the node on `port` (SIGKILL, as in a crash). Its port stays reserved.
    pub fn kill(&mut self, port: u16) {
        let served = self
            .cluster_nodes()
            .into_iter()
            .find(|n| n.port == port && n.primary)
            .and_then(|n| n.slots.first().map(|&(first, _)| first));
        if let Some(slot) = served {
            self.killed_slots.push((port, slot));
        }
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster")
            .kill();
    }

    /// Waits, at most `limit`, until the slots of the primary [killed](RedisCluster::kill) on
    /// `killed` are served by another primary (its replica, promoted) in the view of every
    /// running node, and every running node reports `cluster_state:ok`; returns the new
    /// primary's port.
    pub fn wait_for_failover(&self, killed: u16, limit: Duration) -> u16 {
        let slot = self
            .killed_slots
            .iter()
            .find(|(port, _)| *port == killed)
            .map(|(_, slot)| *slot)
            .unwrap_or_else(|| panic!("no primary with slots was killed on port {killed}"));
        let started = Instant::now();
        loop {
            let views: Vec<Option<u16>> = self
                .running()
                .map(|n| {
                    parse_cluster_nodes(&redis_cli(n.port, false, &["cluster", "nodes"]))
                        .into_iter()
                        .find(|m| m.primary && m.serves(slot))
                        .map(|m| m.port)
                })
                .collect();
            let agreed = views.iter().all(|v| *v == views[0]);
            if let Some(Some(owner)) = views.first().filter(|_| agreed)
                && *owner != killed
                && self.running().all(|n| {
                    redis_cli(n.port, false, &["cluster", "info"]).contains("cluster_state:ok")
                })
            {
                return *owner;
            }
            assert!(
                started.elapsed() < limit,
                "no failover of port {killed} within {limit:?}: owners of slot {slot} as each \
                 node sees them: {views:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts moving `slot` from its primary to the primary on `to`, as a resharding does: the
    /// target marks it importing, the source migrating. Until [`SlotMigration::finish`], keys
    /// not moved yet are served by the source, and a client asking the source for a key that has
    /// moved gets `ASK` (to ask the target once); once finished, the source answers `MOVED`.
    pub fn migrate_slot(&self, slot: u16, to: u16) -> SlotMigration {
        let nodes = self.cluster_nodes();
        let source = nodes
            .iter()
            .find(|n| n.primary && n.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .clone();
        let target = nodes
            .iter()
            .find(|n| n.port == to && n.primary)
            .unwrap_or_else(|| panic!("port {to} is not a primary"))
            .clone();
        assert_ne!(source.port, target.port, "slot {slot} is already there");
        let slot_text = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let answer = redis_cli(port, false, args);
            assert_eq!(answer.trim(), "OK", "{args:?} on port {port}: {answer}");
        };
        ok(
            target.port,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &source.id],
        );
        ok(
            source.port,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &target.id],
        );
        SlotMigration {
            slot,
            source,
            target,
        }
    }
}

/// A slot being moved between two primaries (see [`RedisCluster::migrate_slot`]).
#[derive(Debug)]
pub struct SlotMigration {
    slot: u16,
    source: ClusterNode,
    target: ClusterNode,
}

impl SlotMigration {
    /// Moves up to `count` of the slot's keys still on the source to the target (`MIGRATE ...
    /// KEYS`, atomic per batch); returns how many moved.
    pub fn move_keys(&self, count: usize) -> usize {
        let listed = redis_cli(
            self.source.port,
            false,
            &[
                "CLUSTER",
                "GETKEYSINSLOT",
                &self.slot.to_string(),
                &count.to_string(),
            ],
        );
        let keys: Vec<&str> = listed.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return 0;
        }
        let port = self.target.port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        let answer = redis_cli(self.source.port, false, &args);
        assert_eq!(answer.trim(), "OK", "MIGRATE: {answer}");
        keys.len()
    }

    /// Moves every key left, then gives the slot to the target on every primary, and waits until
    /// every running node names the target as its owner.
    pub fn finish(self, cluster: &RedisCluster) {
        while self.move_keys(100) > 0 {}
        let slot = self.slot.to_string();
        let give = |port: u16| {
            let answer = redis_cli(
                port,
                false,
                &["CLUSTER", "SETSLOT", &slot, "NODE", &self.target.id],
            );
            assert_eq!(answer.trim(), "OK", "SETSLOT NODE on {port}: {answer}");
        };
        // The target first (so it never refuses the slot's keys), then the source, then the
        // other primaries; replicas learn it from the cluster bus.
        give(self.target.port);
        give(self.source.port);
        for node in cluster.cluster_nodes() {
            if node.primary
                && !node.failing
                && node.id != self.source.id
                && node.id != self.target.id
            {
                give(node.port);
            }
        }
        let started = Instant::now();
        while !cluster.running().all(|n| {
            parse_cluster_nodes(&redis_cli(n.port, false, &["cluster", "nodes"]))
                .iter()
                .any(|m| m.id == self.target.id && m.serves(self.slot))
        }) {
            assert!(
                started.elapsed() < CLUSTER_TIMEOUT,
                "the cluster did not learn slot {slot}'s new owner within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of the primary the slot comes from.
    pub fn source_port(&self) -> u16 {
        self.source.port
    }

    /// The port of the primary the slot goes to.
    pub fn target_port(&self) -> u16 {
        self.target.port
    }
}

/// The value of `name:` in an `INFO` answer.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus[,hostname]> <flags> <primary> <ping> <pong>
/// <epoch> <link> <slot>...`, slots as `N` or `A-B` (migrations, `[...]`, left out).
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of the key, or of its
/// hash tag (the text between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
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
    fn key_slots_are_redis_clusters() {
        // As `CLUSTER KEYSLOT` answers them.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(key_slot(b"{}x"), key_slot(b"x"));
        assert_ne!(key_slot(b"a{}{b}"), key_slot(b"b"));
        assert_eq!(key_slot(b"x{b}y{c}"), key_slot(b"b"));
    }

    #[test]
    fn a_cluster_with_replicas_fails_over_and_moves_slots() {
        let mut cluster = RedisCluster::start_with_replicas(3);
        let nodes = cluster.cluster_nodes();
        assert_eq!(nodes.iter().filter(|n| n.primary).count(), 3);
        for key in ["a", "b", "c"] {
            let slot = key_slot(key.as_bytes());
            assert_eq!(
                cluster
                    .node_cli(cluster.owner(slot), &["SET", key, "1"])
                    .trim(),
                "OK"
            );
            assert_eq!(
                cluster.cli(&["CLUSTER", "KEYSLOT", key]).trim(),
                slot.to_string()
            );
        }

        // Slot of "a" moved to another primary, key and all.
        let slot = key_slot(b"a");
        let from = cluster.owner(slot);
        let to = nodes
            .iter()
            .find(|n| n.primary && n.port != from)
            .unwrap()
            .port;
        let migration = cluster.migrate_slot(slot, to);
        assert_eq!(migration.move_keys(10), 1);
        assert!(
            cluster.node_cli(from, &["GET", "a"]).starts_with("ASK"),
            "the source redirects"
        );
        migration.finish(&cluster);
        assert_eq!(cluster.owner(slot), to);
        assert_eq!(cluster.node_cli(to, &["GET", "a"]).trim(), "1");
        assert!(cluster.node_cli(from, &["GET", "a"]).starts_with("MOVED"));

        // The primary of "b" dies; its replica takes over with its data.
        cluster.wait_replicated();
        let slot = key_slot(b"b");
        let primary = cluster.owner(slot);
        let replica = cluster.replica_of(primary);
        cluster.kill(primary);
        let promoted = cluster.wait_for_failover(primary, CLUSTER_TIMEOUT);
        assert_eq!(promoted, replica);
        assert_eq!(cluster.owner(slot), replica);
        assert_eq!(cluster.cli(&["GET", "b"]).trim(), "1");
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
