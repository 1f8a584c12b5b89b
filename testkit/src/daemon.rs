//! A real `sluiced` process for a test or a benchmark run: started on free
//! loopback ports (or given addresses inside a network namespace) with its
//! own data folder, ready once its admin port answers HTTP, stopped with
//! SIGTERM or killed with SIGKILL, and killed on drop if still running (a
//! failed test or run leaves no daemon behind).
//!
//! The program is the caller's: `CARGO_BIN_EXE_*` exists only in the
//! calling crate's tests, so the tests pass their own build of `sluiced`
//! ([`DaemonSpec::new`]) and the bench harness runs itself again with the
//! hidden subcommand that calls [`serve`] ([`DaemonSpec::this_exe`]), so
//! the daemon's CPU time is measured apart from the producers'.
//!
//! The daemon's flags are the spec's alone: `SLUICED_*` variables of the
//! caller's environment are not passed on. Its stdin is a pipe held by the
//! handle, so a daemon run by [`serve`] with [`STOP_ON_STDIN_EOF`] stops by
//! itself when its starter dies.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice_daemon::config::Args;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::{QuicOptions, Transport};
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};

use crate::testnet::{self, Netns};

/// The flag of [`serve`]'s subcommand: stop when stdin reaches EOF.
pub const STOP_ON_STDIN_EOF: &str = "--stop-on-stdin-eof";

/// The ports of [`DaemonSpec::in_netns`].
pub const NS_DATA_PORT: u16 = 7401;
pub const NS_QUIC_PORT: u16 = 7400;
pub const NS_ADMIN_PORT: u16 = 7480;
pub const NS_GRPC_PORT: u16 = 7402;

/// How long a daemon may take to answer on its admin port.
const START_WITHIN: Duration = Duration::from_secs(30);

/// Where and how producers reach a daemon.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
}

pub use crate::ports::{free_tcp, free_udp};

/// How to start a daemon; `start` can be called again after a kill, on the
/// same ports and folder, as a restart.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The program.
    pub bin: PathBuf,
    /// Words between the program and the daemon's flags (for the harness:
    /// `daemon --stop-on-stdin-eof --`).
    pub pre_args: Vec<String>,
    pub dir: PathBuf,
    pub data: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    /// The gRPC plane's TCP address (plaintext unless `--grpc-tls true`).
    pub grpc: SocketAddr,
    /// `--log-level` (the daemon's logs go to our stderr).
    pub log_level: String,
    /// More flags, last, e.g. `["--spool-fsync", "never"]`.
    pub args: Vec<String>,
    /// Where the daemon's stderr (its logs) goes instead of ours, appended
    /// to: for tests that check what it said.
    pub log_file: Option<PathBuf>,
    /// The admin port speaks HTTPS with this certificate (PEM), which the
    /// handle's requests trust ([`DaemonSpec::admin_tls`]).
    pub admin_trust: Option<PathBuf>,
}

impl DaemonSpec {
    /// `bin` on free loopback ports with the data folder `dir`, `fsync =
    /// always`, logging at `$SLUICED_TEST_LOG` (default `warn`).
    pub fn new(bin: &Path, dir: &Path) -> Self {
        DaemonSpec {
            bin: bin.to_path_buf(),
            pre_args: Vec::new(),
            dir: dir.to_path_buf(),
            data: free_udp(),
            quic: free_udp(),
            admin: free_tcp(),
            grpc: free_tcp(),
            log_level: std::env::var("SLUICED_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            args: Vec::new(),
            log_file: None,
            admin_trust: None,
        }
    }

    /// This executable's hidden subcommand `daemon`, which calls [`serve`]
    /// and stops when we do.
    pub fn this_exe(dir: &Path) -> std::io::Result<Self> {
        let mut spec = DaemonSpec::new(&std::env::current_exe()?, dir);
        spec.pre_args = vec!["daemon".into(), STOP_ON_STDIN_EOF.into(), "--".into()];
        spec.log_level = "warn".into();
        Ok(spec)
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// The admin port over HTTPS (`admin.tls`) with the daemon's
    /// self-signed certificate (the QUIC plane's, made at first start),
    /// which the handle's requests then trust.
    pub fn admin_tls(mut self) -> Self {
        self.admin_trust = Some(self.server_cert());
        self.arg("--admin-tls").arg("true")
    }

    /// The admin port's base URL: `http://ADDR`, or `https://ADDR`.
    pub fn admin_url(&self) -> String {
        admin_url(self.admin, self.admin_trust.is_some())
    }

    /// `--spool-fsync`: `always`, `interval` or `never`.
    pub fn fsync(self, policy: &str) -> Self {
        self.arg("--spool-fsync").arg(policy)
    }

    /// For a namespace of its own, where fixed ports clash with nothing:
    /// data and QUIC on `ip` at [`NS_DATA_PORT`] and [`NS_QUIC_PORT`], admin
    /// on the namespace's loopback at [`NS_ADMIN_PORT`]. Not the warning
    /// that a self-signed certificate is served beyond loopback: the
    /// producers pin it.
    pub fn in_netns(mut self, ip: IpAddr) -> Self {
        self.data = SocketAddr::new(ip, NS_DATA_PORT);
        self.quic = SocketAddr::new(ip, NS_QUIC_PORT);
        self.admin = SocketAddr::from(([127, 0, 0, 1], NS_ADMIN_PORT));
        self.grpc = SocketAddr::from(([127, 0, 0, 1], NS_GRPC_PORT));
        self.log_level = format!("{},sluice_daemon::identity=error", self.log_level);
        self
    }

    /// Raw UDP from anyone, unsealed (`data.insecure_lan`): for tests of
    /// the protocol itself over [`DaemonSpec::udp`].
    pub fn insecure_lan(self) -> Self {
        self.arg("--data-insecure-lan").arg("true")
    }

    /// Publishing over sealed raw UDP after authenticating over QUIC (the
    /// default path), trusting the daemon's self-signed certificate by its
    /// fingerprint. Call once the daemon has started (it makes the
    /// certificate).
    pub fn fast_path(&self) -> Target {
        Target {
            addr: self.quic,
            transport: Transport::FastPath(self.quic_options(None)),
        }
    }

    /// Publishing over a QUIC stream.
    pub fn quic_path(&self) -> Target {
        Target {
            addr: self.quic,
            transport: Transport::Quic(self.quic_options(None)),
        }
    }

    /// Raw UDP, unsealed: needs [`DaemonSpec::insecure_lan`].
    pub fn udp(&self) -> Target {
        Target {
            addr: self.data,
            transport: Transport::Udp,
        }
    }

    /// QUIC options that pin the daemon's certificate, with `token`.
    pub fn quic_options(&self, token: Option<String>) -> QuicOptions {
        pinned(&self.server_cert(), token).expect("the daemon's certificate (start it first)")
    }

    /// The daemon's certificate file (self-signed, in its data folder).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("tls/server.crt")
    }

    /// SHA-256 of the daemon's certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        let certs = tls::load_certs(&self.server_cert())
            .expect("the daemon's certificate (start it first)");
        tls::fingerprint(&certs[0])
    }

    /// The command line, program first, for callers that run it some other
    /// way.
    pub fn command_line(&self) -> Vec<String> {
        let mut v = vec![self.bin.display().to_string()];
        v.extend(self.pre_args.iter().cloned());
        v.extend([
            "--spool-dir".into(),
            self.dir.display().to_string(),
            "--data-listen".into(),
            self.data.to_string(),
            "--quic-listen".into(),
            self.quic.to_string(),
            "--admin-listen".into(),
            self.admin.to_string(),
            "--grpc-listen".into(),
            self.grpc.to_string(),
            "--log-level".into(),
            self.log_level.clone(),
        ]);
        // Test and bench machines can have little disk; the floor is
        // tested apart.
        if !self.args.iter().any(|a| a == "--spool-min-free-bytes") {
            v.extend(["--spool-min-free-bytes".into(), "0".into()]);
        }
        v.extend(self.args.iter().cloned());
        v
    }

    /// The command line as a command, in `ns` if given, without the
    /// caller's `SLUICED_*` variables.
    fn command(&self, ns: Option<&Netns>) -> Command {
        let line = self.command_line();
        let mut cmd = match ns {
            Some(ns) => ns.command(&line[0]),
            None => Command::new(&line[0]),
        };
        cmd.args(&line[1..]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLUICED_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Starts the daemon and waits until it answers on its admin port.
    pub fn start(&self) -> Daemon {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`DaemonSpec::start`], for callers that report errors.
    pub fn try_start(&self) -> std::io::Result<Daemon> {
        self.spawn(&mut self.command(None), None)
    }

    /// Starts `cmd` (which must run this spec's daemon) and waits for it.
    pub fn start_with(&self, cmd: &mut Command) -> Daemon {
        self.spawn(cmd, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon inside the network namespace `ns` (its addresses
    /// must be ones that exist there); the handle talks to its admin port
    /// from inside the namespace.
    pub fn start_in(&self, ns: &Netns) -> Daemon {
        self.try_start_in(ns).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`DaemonSpec::start_in`], for callers that report errors.
    pub fn try_start_in(&self, ns: &Netns) -> std::io::Result<Daemon> {
        let d = self.spawn(&mut self.command(Some(ns)), Some(ns.name()))?;
        // `ip netns exec` execs the program: signals reach the daemon.
        let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid()))?;
        if exe.file_name() != self.bin.file_name() {
            return Err(std::io::Error::other(
                "`ip netns exec` did not exec the daemon",
            ));
        }
        Ok(d)
    }

    /// Runs the daemon expecting it to stop by itself within `within` (a
    /// refusal to start, a bad configuration): its exit status and stderr.
    /// If it is still running then, it is killed and this panics with what
    /// it wrote.
    pub fn run_to_exit(&self, within: Duration) -> Exited {
        let mut child = self
            .command(None)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
            s
        });
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait on sluiced") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = reader.join().expect("stderr reader");
        match status {
            Some(status) => Exited { status, stderr },
            None => panic!(
                "sluiced was still running {within:?} after its start (killed); it wrote:\n{stderr}"
            ),
        }
    }

    fn spawn(&self, cmd: &mut Command, netns: Option<&str>) -> std::io::Result<Daemon> {
        let stderr = match &self.log_file {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Stdio::inherit(),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| std::io::Error::other(format!("start {}: {e}", self.bin.display())))?;
        let stdin = child.stdin.take();
        let mut d = Daemon {
            child,
            _stdin: stdin,
            data: self.data,
            quic: self.quic,
            admin: self.admin,
            grpc: self.grpc,
            admin_trust: self.admin_trust.clone(),
            netns: netns.map(str::to_owned),
        };
        d.wait_ready(START_WITHIN)?;
        Ok(d)
    }
}

/// A daemon that stopped by itself: how, and what it wrote to stderr.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

/// A running daemon; killed on drop unless stopped.
pub struct Daemon {
    child: Child,
    /// Held open: a daemon run by [`serve`] stops when it closes.
    _stdin: Option<ChildStdin>,
    pub data: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    /// The certificate its HTTPS admin port is trusted by, if it has one.
    admin_trust: Option<PathBuf>,
    /// The network namespace it runs in, if not ours.
    netns: Option<String>,
}

impl Daemon {
    fn wait_ready(&mut self, within: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "sluiced exited during start-up ({status}); its stderr above says why"
                )));
            }
            let admin = self.admin;
            let trust = self.admin_trust.clone();
            // An HTTP answer (200, or 503 while acks are held), not just a
            // connection: the port listens before the daemon is set up.
            // Over HTTPS, the certificate may not be made yet.
            let up = self.here(move || {
                let Ok(agent) = admin_agent(trust.as_deref()) else {
                    return false;
                };
                let url = admin_url(admin, trust.is_some());
                let health = agent
                    .get(&format!("{url}/health"))
                    .timeout(Duration::from_millis(500))
                    .call();
                matches!(health, Ok(_) | Err(ureq::Error::Status(..)))
            });
            if up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(std::io::Error::other(format!(
                    "sluiced did not answer on {admin} within {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL sluiced");
        self.child.wait().expect("reap sluiced");
    }

    /// SIGTERM, then waits (at most `within`) for the exit status; panics
    /// if it does not stop.
    pub fn terminate(self, within: Duration) -> ExitStatus {
        self.try_terminate(within).unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGTERM (a clean stop: the batches in flight are finished), then at
    /// most `within` before a kill, which is an error.
    pub fn try_terminate(mut self, within: Duration) -> std::io::Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(std::io::Error::other(format!(
                    "sluiced did not stop within {within:?} of SIGTERM; killed"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's metrics now (panics on errors).
    pub fn metrics(&self) -> Scrape {
        Scrape::parse(&self.get("/metrics"))
    }

    /// The daemon's metrics now.
    pub fn scrape(&self) -> std::io::Result<Scrape> {
        self.try_get("/metrics").map(|t| Scrape::parse(&t))
    }

    /// GETs an admin path and returns the body (panics on errors).
    pub fn get(&self, path: &str) -> String {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.admin_url()))
    }

    /// GETs an admin path (over HTTPS if the port speaks it); any status
    /// but 200 is an error.
    pub fn try_get(&self, path: &str) -> std::io::Result<String> {
        let (admin, trust) = (self.admin, self.admin_trust.clone());
        self.here(move || match trust {
            None => http_get(admin, path),
            Some(trust) => get_with(&admin_agent(Some(&trust))?, &admin_url(admin, true), path),
        })
    }

    /// The admin port's base URL: `http://ADDR`, or `https://ADDR`.
    pub fn admin_url(&self) -> String {
        admin_url(self.admin, self.admin_trust.is_some())
    }

    /// Runs `f` where the daemon's addresses are reachable: in its network
    /// namespace, if it has one.
    pub fn here<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            Some(ns) => testnet::enter_named(ns, f),
            None => f(),
        }
    }

    /// Peak resident memory of the process so far (VmHWM), bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// Resident memory of the process now (VmRSS), bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// File descriptors the process has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// QUIC options that trust the (self-signed) certificate in the file
/// `cert` by its fingerprint, with `token`.
pub fn pinned(cert: &Path, token: Option<String>) -> Result<QuicOptions, String> {
    let certs = tls::load_certs(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?;
    Ok(QuicOptions {
        tls: ClientTls {
            trust: ServerTrust::Fingerprint(tls::fingerprint(first)),
            client_cert: None,
            server_name: None,
        },
        token,
    })
}

/// `http://ADDR`, or `https://ADDR`.
pub fn admin_url(admin: SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{admin}")
}

/// An HTTP client that, given `trust` (a PEM file), speaks HTTPS trusting
/// exactly its certificates.
pub fn admin_agent(trust: Option<&Path>) -> std::io::Result<ureq::Agent> {
    let mut agent = ureq::AgentBuilder::new();
    if let Some(trust) = trust {
        let config = sluice_daemon::identity::https_client(trust).map_err(std::io::Error::other)?;
        agent = agent.tls_config(config);
    }
    Ok(agent.build())
}

/// GETs `path` from an admin endpoint and returns the body; any status
/// but 200 is an error.
pub fn http_get(admin: SocketAddr, path: &str) -> std::io::Result<String> {
    get_with(&ureq::agent(), &admin_url(admin, false), path)
}

/// GETs `path` under the base URL `base` with `agent`; any status but 200
/// is an error.
pub fn get_with(agent: &ureq::Agent, base: &str, path: &str) -> std::io::Result<String> {
    let resp = agent
        .get(&format!("{base}{path}"))
        .timeout(Duration::from_secs(10))
        .call()
        .map_err(|e| std::io::Error::other(format!("GET {path}: {e}")))?;
    if resp.status() != 200 {
        return Err(std::io::Error::other(format!(
            "GET {path}: {} {}",
            resp.status(),
            resp.status_text()
        )));
    }
    resp.into_string()
}

/// A daemon's metrics now.
pub fn scrape(admin: SocketAddr) -> std::io::Result<Scrape> {
    http_get(admin, "/metrics").map(|t| Scrape::parse(&t))
}

/// Writes a daemon config at `path` that admits the API token `token`
/// with `rights` (the TOML keys of its table after the hash, e.g.
/// `publish = ["s"]`).
pub fn write_token_config(path: &Path, token: &str, rights: &str) -> Result<(), String> {
    std::fs::write(
        path,
        format!(
            "[[auth.tokens]]\nname = \"bench\"\nhash = \"{}\"\n{rights}",
            sluice_daemon::auth::hash_token(token)
        ),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// What `sluiced`'s `main` does, for a harness's hidden subcommand `daemon
/// [--stop-on-stdin-eof] -- <sluiced flags>`: stops on SIGTERM or SIGINT
/// or, with `stop_on_stdin_eof`, when stdin closes (its starter is gone).
pub fn serve(stop_on_stdin_eof: bool, sluiced_args: Vec<OsString>) -> ExitCode {
    let args =
        Args::parse_args_from(std::iter::once(OsString::from("sluiced")).chain(sluiced_args));
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    if stop_on_stdin_eof {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = eof_tx.send(());
        });
    }
    let stdin_closed = async move {
        // Without the option the sender is dropped unused: wait forever.
        if eof_rx.await.is_ok() {
            tracing::warn!("the harness is gone (stdin closed): stopping");
        } else {
            std::future::pending::<()>().await;
        }
    };
    sluice_daemon::launch::main(args, stdin_closed, |_| {})
}
