//! A `sluiced` for the harness, as a separate process (so its CPU time can
//! be measured apart from the producers'), without a separate build step:
//! `sluice-bench` runs its own binary again with the hidden subcommand
//! `daemon`, which runs the same code as `sluiced`'s `main` (see
//! [`run_hidden`]).
//!
//! The child binds free loopback ports (port 0) and prints the bound
//! addresses on its stdout; the parent reads them, then waits until the
//! admin port answers. It is stopped with SIGTERM (a clean drain), killed if
//! the [`DaemonProcess`] is dropped without that, and stops by itself if the
//! harness dies (its stdin, a pipe from the harness, reaches EOF).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sluice_daemon::config::Args;
use sluice_daemon::metrics::scrape::Scrape;

/// The line the child prints on stdout once it takes data.
const READY: &str = "sluice-bench-daemon ready";

/// The hidden subcommand's flag: stop when stdin reaches EOF (the harness
/// that started us is gone).
pub const STOP_ON_STDIN_EOF: &str = "--stop-on-stdin-eof";

/// How to start a daemon for a run.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The data folder (`--spool-dir`).
    pub dir: PathBuf,
    /// `always`, `interval` or `never`.
    pub fsync: String,
    /// More `sluiced` flags, appended last (they win), e.g.
    /// `["--data-credit", "8192"]`.
    pub extra_args: Vec<String>,
    /// `--log-level` (the child's logs go to the harness's stderr).
    pub log_level: String,
}

impl DaemonSpec {
    pub fn new(dir: &Path, fsync: &str) -> Self {
        DaemonSpec {
            dir: dir.to_path_buf(),
            fsync: fsync.to_owned(),
            extra_args: Vec::new(),
            log_level: "warn".into(),
        }
    }

    /// The `sluiced` flags this spec stands for.
    pub fn sluiced_args(&self) -> Vec<String> {
        let mut v = vec![
            "--spool-dir".into(),
            self.dir.display().to_string(),
            "--data-listen".into(),
            "127.0.0.1:0".into(),
            "--quic-listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--spool-fsync".into(),
            self.fsync.clone(),
            // Benchmark machines can have little free disk; the floor is not
            // what is measured here.
            "--spool-min-free-bytes".into(),
            "0".into(),
            "--log-level".into(),
            self.log_level.clone(),
        ];
        v.extend(self.extra_args.iter().cloned());
        v
    }

    /// Starts the daemon (this executable's hidden `daemon` subcommand) and
    /// waits until it answers on its admin port.
    pub fn start(&self) -> std::io::Result<DaemonProcess> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("daemon")
            .arg(STOP_ON_STDIN_EOF)
            .arg("--")
            .args(self.sluiced_args());
        // The run is described by its flags alone, not by whatever SLUICED_*
        // variables the caller's shell happens to hold.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLUICED_") {
                cmd.env_remove(k);
            }
        }
        DaemonProcess::spawn(cmd, Duration::from_secs(30))
    }
}

/// A running daemon started by the harness.
pub struct DaemonProcess {
    child: Child,
    /// Held open: the child stops when it closes (we are gone).
    _stdin: Option<ChildStdin>,
    pub data: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
}

impl DaemonProcess {
    fn spawn(mut cmd: Command, within: Duration) -> std::io::Result<DaemonProcess> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the ready line on a thread, so a child that hangs cannot hang
        // us; the rest of its stdout is drained there too.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            let _ = lines.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        let fail = |child: &mut Child, msg: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other(msg))
        };
        let line = match rx.recv_timeout(within) {
            Ok(l) => l,
            Err(_) => {
                return fail(
                    &mut child,
                    format!("the daemon did not report ready within {within:?}"),
                )
            }
        };
        let Some((data, quic, admin)) = parse_ready(&line) else {
            let status = child.wait()?;
            return Err(std::io::Error::other(format!(
                "the daemon did not start ({status}); its stderr above says why"
            )));
        };
        let mut d = DaemonProcess {
            child,
            _stdin: stdin,
            data,
            quic,
            admin,
        };
        let deadline = Instant::now() + within;
        while TcpStream::connect_timeout(&d.admin, Duration::from_millis(200)).is_err() {
            if let Some(status) = d.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "the daemon exited during start-up: {status}"
                )));
            }
            if Instant::now() >= deadline {
                return fail(
                    &mut d.child,
                    format!("the daemon's admin port {} did not answer", d.admin),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system, all threads) the daemon used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::cpu::process_seconds(self.pid())
    }

    /// SIGTERM (a clean stop: the batches in flight are finished), then
    /// waits at most `within` before killing it.
    pub fn terminate(mut self, within: Duration) -> std::io::Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                let _ = self.child.wait();
                return Err(std::io::Error::other(format!(
                    "the daemon did not stop within {within:?} of SIGTERM; killed"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The (data, quic, admin) addresses of a ready line.
fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix(READY)?;
    let (mut data, mut quic, mut admin) = (None, None, None);
    for word in rest.split_whitespace() {
        if let Some(a) = word.strip_prefix("data=") {
            data = a.parse().ok();
        } else if let Some(a) = word.strip_prefix("quic=") {
            quic = a.parse().ok();
        } else if let Some(a) = word.strip_prefix("admin=") {
            admin = a.parse().ok();
        }
    }
    Some((data?, quic?, admin?))
}

/// GETs `path` from an admin endpoint (HTTP/1.0, no keep-alive) and returns
/// the body.
pub fn http_get(admin: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("GET {path}: no HTTP header")))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(std::io::Error::other(format!("GET {path}: {status}")));
    }
    Ok(body.to_owned())
}

/// A daemon's metrics now.
pub fn scrape(admin: SocketAddr) -> std::io::Result<Scrape> {
    http_get(admin, "/metrics").map(|t| Scrape::parse(&t))
}

/// The hidden `sluice-bench daemon [--stop-on-stdin-eof] -- <sluiced flags>`:
/// what `sluiced`'s `main` does, stopping on SIGTERM or SIGINT (or, with
/// `--stop-on-stdin-eof`, when stdin closes), and printing the bound
/// addresses on stdout once ready.
pub fn run_hidden(stop_on_stdin_eof: bool, sluiced_args: Vec<OsString>) -> ExitCode {
    let args = Args::parse_from(std::iter::once(OsString::from("sluiced")).chain(sluiced_args));
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
    sluice_daemon::launch::main(args, stdin_closed, |bound| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{READY} data={} quic={} admin={}",
            bound.data, bound.quic, bound.admin
        );
        let _ = out.flush();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let line =
            format!("{READY} data=127.0.0.1:4000 quic=127.0.0.1:4002 admin=127.0.0.1:4001\n");
        let (d, q, a) = parse_ready(&line).unwrap();
        assert_eq!(d.port(), 4000);
        assert_eq!(q.port(), 4002);
        assert_eq!(a.port(), 4001);
        assert!(parse_ready("something else").is_none());
    }
}
