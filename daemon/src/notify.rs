//! The service manager's readiness protocol (`sd_notify(3)`), spoken
//! directly: one datagram per state change to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`). Without the variable every call does nothing, so the daemon runs
//! the same under systemd (`Type=notify`), another supervisor, or a shell.
//!
//! What sluiced says: `READY=1` once every listener is bound and the spool
//! recovered; `RELOADING=1` with `MONOTONIC_USEC` (systemd 253 and later
//! want both) when SIGHUP's reload begins, then `READY=1`; `STOPPING=1`
//! when a stop begins; `WATCHDOG=1` every half of `$WATCHDOG_USEC` when the
//! unit sets `WatchdogSec=`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

/// Where notifications go; cheap to clone. [`Notifier::from_env`] without
/// `$NOTIFY_SOCKET` gives one that sends nothing.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Shown in log lines about a failed send.
    name: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; logs (and sends nothing) if the variable
    /// names no usable socket: readiness must never stop the daemon.
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier::default(),
            Some(v) => match Notifier::to(&v.to_string_lossy()) {
                Ok(n) => n,
                Err(e) => {
                    warn!(notify_socket = %v.to_string_lossy(), error = %e, "NOTIFY_SOCKET is set but unusable: the service manager will not hear readiness");
                    Notifier::default()
                }
            },
        }
    }

    /// Notifications to the socket `name`: a file-system path, or an
    /// abstract name given as `@name`.
    pub fn to(name: &str) -> std::io::Result<Notifier> {
        let addr = socket_addr(name)?;
        let socket = UnixDatagram::unbound()?;
        // Sent from the runtime's threads: a manager that does not read
        // (its queue full) costs a logged notification, never a stall.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                socket,
                addr,
                name: name.to_owned(),
            })),
        })
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`, with a status line for `systemctl status`.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=running");
    }

    /// `STOPPING=1`: the drain has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: finishing the batches in flight");
    }

    /// `RELOADING=1` with the monotonic clock's time, which systemd ≥ 253
    /// wants to tell this reload from an older one.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Sends `state` as one datagram. A failure is logged, never fatal: a
    /// supervisor that went away must not take the daemon with it.
    pub fn send(&self, state: &str) {
        let Some(t) = &self.target else { return };
        match t.socket.send_to_addr(state.as_bytes(), &t.addr) {
            Ok(_) => debug!(state, "notified the service manager"),
            Err(e) => {
                warn!(socket = %t.name, error = %e, state, "cannot notify the service manager")
            }
        }
    }

    /// Pings `WATCHDOG=1` every half of `$WATCHDOG_USEC` from a task of
    /// the current runtime (so a stuck runtime stops the pings and the
    /// manager restarts the daemon), if the variable is set and
    /// `$WATCHDOG_PID`, when set, is this process.
    pub fn spawn_watchdog(&self) {
        if !self.is_enabled() {
            return;
        }
        let Some(every) = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        ) else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.watchdog();
            }
        });
    }
}

/// The address `$NOTIFY_SOCKET` names: `@x` is the abstract name `x`.
fn socket_addr(name: &str) -> std::io::Result<SocketAddr> {
    if name.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty socket name",
        ));
    }
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(name),
    }
}

/// Half the watchdog timeout, which `sd_watchdog_enabled(3)` advises; None
/// when there is no (valid, non-zero) timeout or it is meant for another
/// process.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds: the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        n.ready();
        assert!(recv(&listener).starts_with("READY=1\n"));
        n.reloading();
        let r = recv(&listener);
        let usec: u64 = r
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC")
            .parse()
            .unwrap();
        assert!(r.starts_with("RELOADING=1\n") && usec > 0, "{r}");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        abstract_listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(&format!("@{name}")).unwrap();
        n.stopping();
        assert!(recv(&abstract_listener).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn nothing_without_a_socket() {
        let n = Notifier::default();
        assert!(!n.is_enabled());
        n.ready(); // must not panic or block
        assert!(Notifier::to("").is_err());
    }

    #[test]
    fn watchdog_at_half_the_timeout_for_this_process_only() {
        assert_eq!(
            watchdog_interval(Some("10000000"), None, 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval(Some("10000000"), Some("7"), 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(watchdog_interval(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }
}
