//! A real PostgreSQL server for tests: Debian's PostgreSQL 15, started on loopback in a
//! temporary directory.
//!
//! # Contract
//! - [`PostgresServer::start`] runs `initdb` and `postgres` as the `postgres` user (both refuse to
//!   run as root) on a temporary directory, listening on 127.0.0.1 on a free port with its Unix
//!   socket in that directory, `fsync=off`, `max_connections=200` and `pg_stat_statements`
//!   loaded. It creates a superuser role `test` and a database `test`, both with trust
//!   authentication on loopback, and returns once a query succeeds (about 1-2 s).
//! - [`PostgresServer::shared`] is one server per test process, started on first use; each test
//!   then takes a fresh database of its own with [`PostgresServer::create_database`], so tests
//!   running in parallel never see each other's tables.
//! - SQL is run with the `psql` client ([`PostgresServer::psql`]), so this module needs nothing
//!   beyond std.
//! - The server is stopped (immediate shutdown) and its directory removed when the value is
//!   dropped or [`PostgresServer::stop`] is called. A watcher process also stops it when the test
//!   process exits without dropping it (the shared server is a static, and a panic may abort), so
//!   no server outlives its tests.
//!
//! - [`PostgresServer::start_tls`] starts one with `ssl=on`, its certificate issued for
//!   `127.0.0.1` and `localhost` by a CA of its own ([`TestCertificates`], made with the `openssl`
//!   command-line tool), so a client can connect with `sslmode=verify-full` against
//!   [`PostgresServer::ca_file`]. [`PostgresServer::start_mutual_tls`] also requires a client
//!   certificate from that CA on TCP (`hostssl ... clientcert=verify-full`, CN `test`);
//!   [`TestCertificates::client_cert`] is one.
//!
//! # Failure
//! Panics with the server's log when it does not start, and with an install hint when
//! PostgreSQL 15 or `openssl` is not installed.

use std::{
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Where Debian installs PostgreSQL 15's server binaries.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The superuser role the server is created with.
pub const USER: &str = "test";
/// The database created at start-up.
pub const DATABASE: &str = "test";

/// A PostgreSQL server of its own, stopped and removed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    dir: Option<tempfile::TempDir>,
    port: u16,
    /// `runuser` running the postmaster.
    child: Option<Child>,
    /// Held open while the server should run: closing it (the process exiting) makes the watcher
    /// stop the server.
    watcher: Option<(Child, Option<ChildStdin>)>,
    /// The postmaster's process id, from `postmaster.pid`.
    pid: u32,
    databases: AtomicUsize,
    /// The CA and certificates of a TLS server; `psql` then connects with the client certificate.
    certificates: Option<TestCertificates>,
}

/// How [`PostgresServer::launch`] sets TLS up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    Off,
    /// `ssl=on`; clients may still connect in plain text.
    On,
    /// `ssl=on`, and TCP clients must use TLS with a client certificate of the test CA.
    ClientCertificates,
}

impl PostgresServer {
    /// Starts a new server. Panics if PostgreSQL 15 is not installed or the server fails to start.
    pub fn start() -> PostgresServer {
        Self::launch(Tls::Off)
    }

    /// Starts a new server with TLS on (`ssl=on`), its certificate issued for `127.0.0.1` and
    /// `localhost` by a CA of its own: see [`PostgresServer::ca_file`]. Plain connections are
    /// still accepted, as on a default server. Panics if `openssl` is not installed.
    pub fn start_tls() -> PostgresServer {
        Self::launch(Tls::On)
    }

    /// As [`PostgresServer::start_tls`], and TCP clients must present a certificate of the same
    /// CA whose CN is the role's name (`test`), e.g. [`TestCertificates::client_cert`].
    pub fn start_mutual_tls() -> PostgresServer {
        Self::launch(Tls::ClientCertificates)
    }

    /// The certificates of a server started with TLS.
    pub fn certificates(&self) -> Option<&TestCertificates> {
        self.certificates.as_ref()
    }

    /// The PEM file of the CA that issued the server's certificate. Panics if TLS is off.
    pub fn ca_file(&self) -> &Path {
        self.certificates
            .as_ref()
            .map(TestCertificates::ca)
            .expect("the server was started without TLS")
    }

    fn launch(tls: Tls) -> PostgresServer {
        let bin = Path::new(BIN_DIR);
        if !bin.join("postgres").exists() || !bin.join("initdb").exists() {
            panic!(
                "PostgreSQL 15 is not installed ({BIN_DIR}/postgres is missing): run `bash .ci/run`, \
                 or `apt-get install postgresql`"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pg-test-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let data = dir.path().join("data");
        run(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path()));
        run(as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]));
        let mut ssl_args: Vec<String> = Vec::new();
        let mut certificates = (tls != Tls::Off).then(TestCertificates::generate);
        if let Some(certs) = &certificates {
            // PostgreSQL reads its key only if the postgres user owns it with mode 0600, and
            // cannot read the certificates' own (root's) directory: copy what it needs.
            let ssl = dir.path().join("ssl");
            std::fs::create_dir(&ssl).expect("cannot create the ssl directory");
            for (from, to) in [
                (certs.server_cert(), "server.pem"),
                (certs.server_key(), "server.key"),
                (certs.ca().to_path_buf(), "ca.pem"),
            ] {
                std::fs::copy(from, ssl.join(to)).expect("cannot copy a certificate");
            }
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&ssl));
            run(Command::new("chmod").arg("600").arg(ssl.join("server.key")));
            ssl_args.extend(["ssl=on".to_owned()]);
            for (setting, file) in [
                ("ssl_cert_file", "server.pem"),
                ("ssl_key_file", "server.key"),
                ("ssl_ca_file", "ca.pem"),
            ] {
                ssl_args.push(format!("{setting}={}", ssl.join(file).display()));
            }
        }
        if tls == Tls::ClientCertificates {
            // TCP: TLS with a certificate of the test CA whose CN is the role; the Unix socket
            // stays open to the harness as initdb set it up.
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("cannot read pg_hba.conf");
            let mut kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("host"))
                .collect();
            kept.push("hostssl all all 127.0.0.1/32 trust clientcert=verify-full");
            std::fs::write(&hba, kept.join("\n") + "\n").expect("cannot write pg_hba.conf");
        }
        // A port that was free a moment ago; another process may take it first, so retry.
        let mut last_log = String::new();
        for _ in 0..5 {
            let [port] = crate::free_ports();
            let log = dir.path().join(format!("postgres-{port}.log"));
            let log_file = std::fs::File::create(&log).expect("cannot create the server log");
            let child = as_postgres(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "max_connections=200"])
                .args(["-c", "shared_preload_libraries=pg_stat_statements"])
                .args(["-c", "pg_stat_statements.track=all"])
                .args(ssl_args.iter().flat_map(|a| ["-c", a.as_str()]))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("cannot run postgres");
            let mut server = PostgresServer {
                dir: None,
                port,
                child: Some(child),
                watcher: None,
                pid: 0,
                databases: AtomicUsize::new(0),
                certificates: None,
            };
            server.certificates = certificates.take();
            if server.wait_ready(&data) {
                server.watch(dir.path());
                server.dir = Some(dir);
                // Every database created from now on has the extension.
                server.psql("template1", "CREATE EXTENSION pg_stat_statements");
                server.psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
                return server;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            server.kill();
            certificates = server.certificates.take();
            if !last_log.contains("could not bind") && !last_log.contains("Address already in use")
            {
                break;
            }
        }
        panic!("PostgreSQL did not start; its log:\n{last_log}");
    }

    /// One server for the whole test process, started on first use and stopped when the process
    /// exits. Give each test its own database with [`PostgresServer::create_database`].
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(PostgresServer::start)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("the server was stopped")
    }

    /// `postgres://test@127.0.0.1:PORT/test`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of `database` on this server, as the `test` role (no password: trust auth).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database (with `pg_stat_statements` installed) and returns its name.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs `sql` in `database` with psql (stopping at the first error) and returns its output:
    /// unaligned, tuples only, fields separated by `|`. Panics on an error, with psql's message.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut command = Command::new(Path::new(BIN_DIR).join("psql"));
        self.client_tls_env(&mut command);
        let output = command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", database])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run psql");
        assert!(
            output.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Stops the server now (immediate shutdown) and removes its directory. Connections fail
    /// from then on; the port is not reused by this value.
    pub fn stop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            // Files are owned by `postgres`; root removes them all the same.
            let _ = dir.close();
        }
    }

    /// Makes a libpq client (psql, pg_isready) of a TLS server verify it and present the test
    /// client certificate, which a mutual-TLS server requires.
    fn client_tls_env(&self, command: &mut Command) {
        if let Some(certs) = &self.certificates {
            command
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", certs.ca())
                .env("PGSSLCERT", certs.client_cert())
                .env("PGSSLKEY", certs.client_key());
        }
    }

    fn wait_ready(&mut self, data: &Path) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if self.pid == 0
                && let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid"))
            {
                self.pid = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
            }
            let mut command = Command::new(Path::new(BIN_DIR).join("pg_isready"));
            self.client_tls_env(&mut command);
            let ready = command
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", USER, "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready && self.pid != 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Starts a process that stops the server and removes its directory once our end of its
    /// stdin closes, which happens when this process exits however it exits.
    fn watch(&mut self, dir: &Path) {
        let script = format!(
            "cat >/dev/null; kill -QUIT {pid} 2>/dev/null; \
             for i in $(seq 50); do kill -0 {pid} 2>/dev/null || break; sleep 0.1; done; \
             rm -rf '{dir}'",
            pid = self.pid,
            dir = dir.display()
        );
        let mut watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the server's watcher");
        let stdin = watcher.stdin.take();
        self.watcher = Some((watcher, stdin));
    }

    /// Immediate shutdown (SIGQUIT to the postmaster), waiting for it to exit.
    fn kill(&mut self) {
        if self.pid != 0 {
            let _ = Command::new("kill")
                .args(["-QUIT", &self.pid.to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10)
                && Command::new("kill")
                    .args(["-0", &self.pid.to_string()])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.pid = 0;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The watcher has nothing left to do: end it before closing its stdin, so it cannot
        // signal a process that has since taken the postmaster's pid.
        if let Some((mut child, stdin)) = self.watcher.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and the certificates it issued, made with the `openssl` command-line tool in a temporary
/// directory (removed on drop), for TLS test servers: a server certificate for `127.0.0.1` and
/// `localhost`, a client certificate with CN `test` (the PostgreSQL role of these servers), and an
/// unrelated second CA to show that a certificate from elsewhere is refused. Keys are P-256, in
/// PKCS#8 PEM; everything is valid for 30 days from its creation.
#[derive(Debug)]
pub struct TestCertificates {
    dir: tempfile::TempDir,
    /// `ca.pem` in `dir`, kept to be lent out as a `&Path`.
    ca: PathBuf,
}

impl TestCertificates {
    /// Generates every file. Panics, naming the Debian package, if `openssl` is not installed.
    pub fn generate() -> TestCertificates {
        let dir = tempfile::Builder::new()
            .prefix("test-certs-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let ca = dir.path().join("ca.pem");
        let certs = TestCertificates { dir, ca };
        certs.self_signed_ca("ca", "feature-gateway test CA");
        certs.self_signed_ca("other-ca", "an unrelated CA");
        certs.issue(
            "server",
            "localhost",
            "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
        );
        certs.issue("client", USER, "extendedKeyUsage = clientAuth\n");
        certs
    }

    /// The CA's certificate (PEM): the root to trust.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Another CA's certificate, which issued nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The server's certificate, for `127.0.0.1` and `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A client certificate, CN `test`.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client certificate's private key (mode 0600: libpq refuses a key others can read).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    fn self_signed_ca(&self, name: &str, common_name: &str) {
        let config = self.config(
            name,
            common_name,
            "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n",
        );
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "30",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-config",
            &config,
            "-extensions",
            "ext",
        ]);
    }

    /// Issues a client certificate `NAME.pem` / `NAME.key` for the DNS name `dns_name`, signed
    /// by `ca` (`"ca"`, or `"other-ca"` for one no server here trusts); returns (cert, key).
    pub fn issue_client(&self, name: &str, dns_name: &str, ca: &str) -> (PathBuf, PathBuf) {
        self.issue_by(
            name,
            dns_name,
            &format!("extendedKeyUsage = clientAuth\nsubjectAltName = DNS:{dns_name}\n"),
            ca,
        );
        (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        )
    }

    /// Issues a server certificate `NAME.pem` / `NAME.key` for `localhost` and `127.0.0.1`,
    /// signed by `ca`; returns (cert, key).
    pub fn issue_server(&self, name: &str, ca: &str) -> (PathBuf, PathBuf) {
        self.issue_by(
            name,
            "localhost",
            "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
            ca,
        );
        (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        )
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn issue(&self, name: &str, common_name: &str, extensions: &str) {
        self.issue_by(name, common_name, extensions, "ca");
    }

    fn issue_by(&self, name: &str, common_name: &str, extensions: &str, ca: &str) {
        let config = self.config(
            name,
            common_name,
            &format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature, keyEncipherment\n{extensions}"
            ),
        );
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-config",
            &config,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "30",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &config,
            "-extensions",
            "ext",
        ]);
    }

    fn key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]);
        run(Command::new("chmod")
            .arg("600")
            .arg(self.dir.path().join(format!("{name}.key"))));
    }

    /// A config file naming the subject, with the extensions in section `ext`.
    fn config(&self, name: &str, common_name: &str, extensions: &str) -> String {
        let file = format!("{name}.cnf");
        std::fs::write(
            self.dir.path().join(&file),
            format!(
                "[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = {common_name}\n\
                 [ext]\n{extensions}"
            ),
        )
        .expect("cannot write an openssl config");
        file
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `openssl` ({e}): install the Debian package `openssl` \
                     (`apt-get install openssl`)"
                )
            });
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
