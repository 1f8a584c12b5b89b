//! `sluiced` in a network namespace, started from this binary (the `xdp`
//! and `loss --netns` scenarios).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice_daemon::metrics::scrape::Scrape;
use sluice_xdp::testnet::Netns;

use crate::daemon;

/// The daemon's ports in its namespace (the run's own namespace, so fixed
/// ports cannot clash with anything).
pub const DATA_PORT: u16 = 7401;
pub const QUIC_PORT: u16 = 7400;
pub const ADMIN_PORT: u16 = 7480;

/// The admin address, as seen from inside the daemon's namespace.
pub fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT))
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

/// The flags of a benchmark daemon in a namespace: `config`, `spool`, data
/// and QUIC listeners on `ip`, the admin listener, `fsync`.
pub fn flags(config: &Path, spool: &Path, ip: IpAddr, fsync: &str) -> Vec<String> {
    vec![
        "--config".into(),
        config.display().to_string(),
        "--spool-dir".into(),
        spool.display().to_string(),
        "--data-listen".into(),
        SocketAddr::new(ip, DATA_PORT).to_string(),
        "--quic-listen".into(),
        SocketAddr::new(ip, QUIC_PORT).to_string(),
        "--admin-listen".into(),
        admin_addr().to_string(),
        "--spool-fsync".into(),
        fsync.into(),
        // Benchmark machines can have little free disk.
        "--spool-min-free-bytes".into(),
        "0".into(),
        "--log-level".into(),
        // Not the warning that a self-signed certificate is served beyond
        // loopback: the producers pin it.
        "warn,sluice_daemon::identity=error".into(),
    ]
}

/// A daemon started in a namespace: `ip netns exec NS <this binary> daemon
/// --stop-on-stdin-eof -- FLAGS` (ip execs it, so the child is the daemon
/// and signals reach it). Killed on drop unless stopped; stops by itself
/// if we die (its stdin closes).
pub struct NsDaemon {
    child: Child,
    _stdin: Option<ChildStdin>,
    admin: SocketAddr,
}

impl NsDaemon {
    pub fn start(ns: &Netns, flags: &[String], admin: SocketAddr) -> Result<NsDaemon, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
        let mut cmd = ns.command(&exe.to_string_lossy());
        cmd.arg("daemon")
            .arg(daemon::STOP_ON_STDIN_EOF)
            .arg("--")
            .args(flags);
        // The run is described by its flags alone.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLUICED_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the daemon in {}: {e}", ns.name()))?;
        let stdin = child.stdin.take();
        let mut d = NsDaemon {
            child,
            _stdin: stdin,
            admin,
        };
        let within = Duration::from_secs(30);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!(
                    "the daemon exited during start-up ({status}); its stderr above says why"
                ));
            }
            if ns.enter(|| daemon::http_get(admin, "/metrics")).is_ok() {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the daemon's admin port {admin} in {} did not answer within {within:?}",
                    ns.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its metrics, read from inside `ns`.
    pub fn scrape(&self, ns: &Netns) -> Option<Scrape> {
        let admin = self.admin;
        ns.enter(move || daemon::scrape(admin).ok())
    }

    /// SIGTERM (a clean drain), then at most `within` before a kill.
    pub fn terminate(mut self, within: Duration) -> Result<ExitStatus, String> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for the daemon: {e}")),
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the daemon did not stop within {within:?} of SIGTERM; killed"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
