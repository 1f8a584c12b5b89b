//! A real `sluiced` process for a test: started on free loopback ports with
//! its own data folder, stopped with SIGTERM or killed with SIGKILL.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::{QuicOptions, Transport};
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};
use sluice_xdp::testnet::{self, Netns};

/// Where and how producers reach a daemon.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// A free UDP port on loopback (bound, then released for the daemon).
pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// A free TCP port on loopback.
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
}

/// How to start a daemon; `start` can be called again after a kill, on the
/// same ports and folder, as a restart.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub data: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    /// More flags, e.g. `["--spool-fsync", "never"]`.
    pub args: Vec<String>,
}

impl DaemonSpec {
    /// Free loopback ports, the test's folder, `fsync = always`.
    pub fn new(bin: &Path, dir: &Path) -> Self {
        DaemonSpec {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            data: free_udp(),
            quic: free_udp(),
            admin: free_tcp(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
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
        QuicOptions {
            tls: ClientTls {
                trust: ServerTrust::Fingerprint(self.fingerprint()),
                client_cert: None,
                server_name: None,
            },
            token,
        }
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

    /// The command line, for tests that run it some other way (in a
    /// network namespace).
    pub fn command_line(&self) -> Vec<String> {
        let mut v = vec![
            self.bin.display().to_string(),
            "--spool-dir".into(),
            self.dir.display().to_string(),
            "--data-listen".into(),
            self.data.to_string(),
            "--quic-listen".into(),
            self.quic.to_string(),
            "--admin-listen".into(),
            self.admin.to_string(),
            "--log-level".into(),
            std::env::var("SLUICED_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ];
        // Test machines can have little disk; the floor is tested apart.
        if !self.args.iter().any(|a| a == "--spool-min-free-bytes") {
            v.extend(["--spool-min-free-bytes".into(), "0".into()]);
        }
        v.extend(self.args.iter().cloned());
        v
    }

    /// Starts the daemon and waits until it answers on its admin port.
    pub fn start(&self) -> Daemon {
        let line = self.command_line();
        self.start_with(Command::new(&line[0]).args(&line[1..]))
    }

    /// Runs the daemon expecting it to stop by itself within `within` (a
    /// refusal to start, a bad configuration): its exit status and stderr.
    /// If it is still running then, it is killed and this panics with what
    /// it wrote.
    pub fn run_to_exit(&self, within: Duration) -> Exited {
        let line = self.command_line();
        let mut child = Command::new(&line[0])
            .args(&line[1..])
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

    /// Starts `cmd` (which must run this spec's daemon) and waits for it.
    pub fn start_with(&self, cmd: &mut Command) -> Daemon {
        self.spawn(cmd, None)
    }

    /// Starts the daemon inside the network namespace `ns` (its addresses
    /// must be ones that exist there); the handle talks to its admin port
    /// from inside the namespace.
    pub fn start_in(&self, ns: &Netns) -> Daemon {
        let line = self.command_line();
        let d = self.spawn(ns.command(&line[0]).args(&line[1..]), Some(ns.name()));
        // `ip netns exec` execs the program: signals reach the daemon.
        let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid())).expect("its exe");
        assert_eq!(
            exe.file_name(),
            self.bin.file_name(),
            "`ip netns exec` did not exec the daemon"
        );
        d
    }

    fn spawn(&self, cmd: &mut Command, netns: Option<&str>) -> Daemon {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        let mut d = Daemon {
            child,
            data: self.data,
            admin: self.admin,
            netns: netns.map(str::to_owned),
        };
        d.wait_ready(Duration::from_secs(30));
        d
    }
}

/// A daemon that stopped by itself: how, and what it wrote to stderr.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

pub struct Daemon {
    child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    /// The network namespace it runs in, if not ours.
    netns: Option<String>,
}

impl Daemon {
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on sluiced") {
                panic!("sluiced exited during start-up: {status}");
            }
            let admin = self.admin;
            // An HTTP answer (200, or 503 while acks are held), not just a
            // connection: the port listens before the daemon is set up.
            let up = self.here(move || {
                let health = ureq::get(&format!("http://{admin}/health"))
                    .timeout(Duration::from_millis(500))
                    .call();
                matches!(health, Ok(_) | Err(ureq::Error::Status(..)))
            });
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluiced did not come up within {within:?}"
            );
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

    /// SIGTERM, then waits (at most `within`) for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait on sluiced") {
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("sluiced did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's metrics now.
    pub fn metrics(&self) -> Scrape {
        Scrape::parse(&self.get("/metrics"))
    }

    /// GETs an admin path and returns the body (panics on errors).
    pub fn get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        self.here(move || {
            ureq::get(&url)
                .timeout(Duration::from_secs(10))
                .call()
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .into_string()
                .expect("a text body")
        })
    }

    /// Runs `f` where the daemon's addresses are reachable: in its network
    /// namespace, if it has one.
    fn here<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
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
        // A failed test must not leave a daemon behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
