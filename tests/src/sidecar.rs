//! A `fetcher-sidecar` process for tests: the real binary of this checkout, started on a
//! loopback port (or a Unix socket) with an environment of the test's choosing, so a test can
//! give the sidecar a secret that the gateway's process never has.
//!
//! [`SidecarProcess::kill`] and [`SidecarProcess::restart`] let a test take the sidecar away
//! and bring it back on the same address, as a crash and a restart by a supervisor would.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Path of the `fetcher-sidecar` binary of this checkout, built on first use.
pub fn sidecar_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = crate::workspace_binaries().join("fetcher-sidecar");
        assert!(binary.exists(), "{} was not built", binary.display());
        binary
    })
}

/// Where the sidecar listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SidecarAddr {
    /// `127.0.0.1:PORT`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A running `fetcher-sidecar`, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct SidecarProcess {
    child: Option<Child>,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// Where it listens; kept across [`SidecarProcess::restart`].
    pub addr: SidecarAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    /// Runs `fetcher-sidecar --config FILE --listen 127.0.0.1:0`.
    pub fn start(config: &Path) -> SidecarProcess {
        Self::start_with_env(config, &[])
    }

    /// Like [`SidecarProcess::start`], with extra environment variables for the sidecar only.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> SidecarProcess {
        Self::launch(config, env, SidecarAddr::Tcp("127.0.0.1:0".to_owned()))
    }

    /// Runs `fetcher-sidecar --config FILE --unix-socket PATH`.
    pub fn start_unix(config: &Path, socket: &Path, env: &[(&str, &str)]) -> SidecarProcess {
        Self::launch(config, env, SidecarAddr::Unix(socket.to_owned()))
    }

    fn launch(config: &Path, env: &[(&str, &str)], addr: SidecarAddr) -> SidecarProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sidecar = SidecarProcess {
            child: None,
            config: config.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            addr,
            log: dir.path().join("sidecar.log"),
            _dir: dir,
        };
        sidecar.spawn();
        sidecar
    }

    /// Starts the process on `self.addr` and waits for its ready line; an address on port 0 is
    /// replaced by the one it picked. The log is appended to, so it spans restarts.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(sidecar_binary());
        command.arg("--config").arg(&self.config);
        match &self.addr {
            SidecarAddr::Tcp(addr) => command.args(["--listen", addr]),
            SidecarAddr::Unix(path) => command.arg("--unix-socket").arg(path),
        };
        let mut child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cannot start fetcher-sidecar");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("fetcher-sidecar ready ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ready) => ready,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "fetcher-sidecar did not become ready; its log:\n{}",
                    self.log()
                );
            }
        };
        if let Some(addr) = ready.strip_prefix("grpc=") {
            self.addr = SidecarAddr::Tcp(addr.trim().to_owned());
        }
        self.child = Some(child);
    }

    /// The URI a gateway's `sidecar` source uses for a TCP sidecar (`http://127.0.0.1:PORT`).
    pub fn uri(&self) -> String {
        match &self.addr {
            SidecarAddr::Tcp(addr) => format!("http://{addr}"),
            SidecarAddr::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Kills the process (SIGKILL, no graceful shutdown: a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, then starts it again on the same address. Retries for a
    /// while if the port is not free yet.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        loop {
            let free = match &self.addr {
                SidecarAddr::Tcp(addr) => std::net::TcpListener::bind(addr).is_ok(),
                SidecarAddr::Unix(_) => true,
            };
            if free || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn();
    }

    /// The process's log (stderr) so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
