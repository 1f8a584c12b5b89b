//! Network namespaces and veth pairs for tests and benchmarks: two hosts
//! on one machine, joined by a veth link, made with iproute2 and removed on
//! drop (also when a test panics). Everything here needs root; tests check
//! with [`require_root`] first, which skips with a reason outside CI and
//! fails under `CI=true`.
//!
//! Traffic goes only to addresses inside the namespaces made here
//! (10.199.x.y/24, x chosen per process).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this run is CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `true` when `test` may run; otherwise prints why it is skipped and
/// returns `false`, or panics under CI (a skip there would hide a failure).
pub fn require(test: &str, what: &str, available: bool, why_not: &str) -> bool {
    if available {
        return true;
    }
    let msg = format!("{test}: needs {what}, skipped: {why_not}");
    assert!(!in_ci(), "{msg} (CI=true: a skip is a failure)");
    eprintln!("{msg}");
    false
}

/// `true` when root; see [`require`].
pub fn require_root(test: &str) -> bool {
    require(test, "root", is_root(), "not running as root")
}

/// Whether `tool` is on the PATH.
pub fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Root, `ip` and (if `nft`) nftables: what namespace tests need.
pub fn require_netns(test: &str, nft: bool) -> bool {
    require_root(test)
        && require(test, "ip", has_tool("ip"), "iproute2 is not installed")
        && (!nft || require(test, "nft", has_tool("nft"), "nftables is not installed"))
}

/// Runs a command to its end; panics with its stderr unless it succeeds.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn words(cmd: &str) -> Vec<&str> {
    cmd.split_whitespace().collect()
}

/// A network namespace, deleted on drop (and with it its veth end and its
/// nftables tables).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes `name` afresh (a run killed earlier may have left it behind).
    pub fn create(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME CMD` (`cmd` is split on whitespace).
    pub fn ip(&self, cmd: &str) {
        run(&[&["ip", "-n", &self.name], &words(cmd)[..]].concat());
    }

    /// Runs `cmd` (split on whitespace) inside the namespace.
    pub fn exec(&self, cmd: &str) -> String {
        run(&[&["ip", "netns", "exec", &self.name], &words(cmd)[..]].concat())
    }

    /// `ip netns exec NAME` and `program args`, for a process to spawn
    /// (ip execs it: the child is the program itself, so signals reach it).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread of its own that has entered the namespace: see
    /// [`enter_named`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter_named(&self.name, f)
    }

    /// Moves the calling thread into the namespace for good: for a thread
    /// spawned for that purpose.
    pub fn enter_this_thread(&self) {
        setns(&self.name);
    }
}

/// Runs `f` on a thread of its own that has entered the namespace `name`:
/// setns(CLONE_NEWNET) moves only the calling thread, so the rest of the
/// process (and other tests) stay where they are. Sockets keep the
/// namespace they were made in.
pub fn enter_named<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(name);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn setns(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns(2) on a namespace fd we hold open; it changes only this
    // thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {name}: {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// One end of a [`Link`].
pub struct End {
    pub ns: Netns,
    /// Interface name inside `ns`.
    pub iface: String,
    pub ip: String,
    pub mac: String,
}

/// Two namespaces joined by a veth pair: `a` (say, producers) and `b`
/// (say, the daemon), each end with fixed MACs and permanent neighbour
/// entries, so nothing waits on ARP.
pub struct Link {
    pub a: End,
    pub b: End,
}

impl Link {
    /// Makes the namespaces `sluice-{tag}a-{pid}` and `sluice-{tag}b-{pid}`
    /// and the veth pair between them, with `queues` queue pairs per end.
    pub fn create(tag: &str, queues: u32) -> Link {
        let pid = std::process::id();
        let a = Netns::create(format!("sluice-{tag}a-{pid}"));
        let b = Netns::create(format!("sluice-{tag}b-{pid}"));
        // Per process and tag, so parallel tests keep apart in captures.
        let subnet = format!(
            "10.199.{}",
            (pid as usize + tag.bytes().map(usize::from).sum::<usize>()) % 200 + 20
        );
        let a = End {
            ns: a,
            iface: "veth-a".into(),
            ip: format!("{subnet}.1"),
            mac: "02:5c:00:00:00:01".into(),
        };
        let b = End {
            ns: b,
            iface: "veth-b".into(),
            ip: format!("{subnet}.2"),
            mac: "02:5c:00:00:00:02".into(),
        };
        a.ns.ip(&format!(
            "link add {} numtxqueues {queues} numrxqueues {queues} address {} type veth \
             peer name {} netns {} numtxqueues {queues} numrxqueues {queues} address {}",
            a.iface,
            a.mac,
            b.iface,
            b.ns.name(),
            b.mac
        ));
        for (end, peer) in [(&a, &b), (&b, &a)] {
            end.ns
                .ip(&format!("addr add {}/24 dev {}", end.ip, end.iface));
            end.ns.ip(&format!("link set {} up", end.iface));
            end.ns.ip("link set lo up");
            end.ns.ip(&format!(
                "neigh replace {} lladdr {} dev {} nud permanent",
                peer.ip, peer.mac, end.iface
            ));
        }
        let link = Link { a, b };
        link.wait_until_up();
        link
    }

    /// Waits until both ends pass traffic. Until the kernel's linkwatch
    /// work has activated a new link (it batches such events, up to a
    /// second apart when many links change, as with tests in parallel), its
    /// qdisc is `noop`, which drops everything sent: the sender sees no
    /// error and the packets count as TX drops.
    fn wait_until_up(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for end in [&self.a, &self.b] {
            loop {
                let state = end.ns.exec(&format!("ip -o link show {}", end.iface));
                if state.contains("state UP") && !state.contains("qdisc noop") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never came up: {state}",
                    end.iface
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// The nftables table [`Loss`] adds.
const LOSS_TABLE: &str = "sluice_loss";
/// Loss is drawn in steps of 1/10,000 (0.01 %).
const LOSS_STEPS: u32 = 10_000;

/// Random loss on `iface`'s egress in `ns` for UDP to `port`, with counters
/// (this kernel has no netem; nftables' netdev egress hook drops before the
/// peer sees the frame, and the sender gets no error). The table is deleted
/// on drop.
pub struct Loss {
    ns: String,
}

impl Loss {
    pub fn add(ns: &Netns, iface: &str, port: u16, percent: f64) -> Loss {
        let guard = Loss {
            ns: ns.name().to_owned(),
        };
        let below = (percent / 100.0 * f64::from(LOSS_STEPS)).round() as u32;
        ns.exec(&format!("nft add table netdev {LOSS_TABLE}"));
        ns.exec(&format!(
            "nft add chain netdev {LOSS_TABLE} egress \
             {{ type filter hook egress device {iface} priority 0 ; }}"
        ));
        ns.exec(&format!(
            "nft add rule netdev {LOSS_TABLE} egress udp dport {port} counter"
        ));
        ns.exec(&format!(
            "nft add rule netdev {LOSS_TABLE} egress udp dport {port} \
             numgen random mod {LOSS_STEPS} < {below} counter drop"
        ));
        guard
    }

    /// (datagrams to the port, dropped), from the two rules' counters;
    /// `None` if they cannot be read.
    pub fn counters(&self) -> Option<(u64, u64)> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "list", "table", "netdev", LOSS_TABLE,
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let counts: Vec<u64> = text
            .lines()
            .filter_map(|l| {
                let at = l.find("packets ")? + "packets ".len();
                l[at..].split_whitespace().next()?.parse().ok()
            })
            .collect();
        match counts[..] {
            [all, dropped] => Some((all, dropped)),
            _ => None,
        }
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "netdev", LOSS_TABLE,
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // The namespace's deletion takes the table with it.
            eprintln!(
                "loss: could not delete nftables table {LOSS_TABLE} in {}",
                self.ns
            );
        }
    }
}

/// A value of the `Udp:` line of the calling thread's network namespace
/// (/proc/thread-self/net/snmp), e.g. `RcvbufErrors` or `OutDatagrams`.
pub fn udp_counter(name: &str) -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let i = names.iter().position(|x| *x == name)?;
    values.get(i)?.parse().ok()
}
