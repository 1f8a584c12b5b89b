//! Loss on a real network path: the producers and `sluiced` run in two
//! network namespaces joined by a veth pair, and nftables drops 5 % of the
//! producers' datagrams at random as they leave the producers' veth end. The
//! promise holds all the same: every message is acked, and every acked
//! (producer, seq) is in the spool exactly once, in order, with its payload.
//!
//! Needs root, `ip` and `nft`. The test makes its namespaces (named after
//! its pid) and removes them again, also when it fails; it sends nothing
//! outside them.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::{DaemonSpec, Target};
use sluice_tests::privilege::{has_tool, require, require_root};
use sluice_transport::client::{Producer, Transport};

const TEST: &str = "netns_loss";
const STREAM: &str = "lossy";
const PRODUCERS: u64 = 4;
const MESSAGES: usize = 20_000;
const BATCH: usize = 250;
const LOSS_PERCENT: u32 = 5;
/// The namespaces are the test's own, so fixed ports cannot clash.
const DATA_PORT: u16 = 7401;
const QUIC_PORT: u16 = 7400;
const ADMIN_PORT: u16 = 7480;
/// Bound on the producers' work, all of it together.
const PRODUCE_WITHIN: Duration = Duration::from_secs(120);
const NFT_TABLE: &str = "sluice_loss";
const VETH_P: &str = "veth-p";
const VETH_D: &str = "veth-d";
/// Fixed (locally administered) MACs, so the neighbour entries can be
/// permanent: no ARP exchange in the way of the first datagrams.
const MAC_P: &str = "02:5c:00:00:00:01";
const MAC_D: &str = "02:5c:00:00:00:02";

/// Runs a command to its end; panics with its stderr unless it succeeds.
fn run(args: &[&str]) -> String {
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

/// A network namespace of this test, deleted on drop (and with it its veth
/// end and its nftables table).
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        // A run killed under the same pid can have left it behind.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    /// `ip -n NAME CMD` (`cmd` is split on whitespace).
    fn ip(&self, cmd: &str) {
        run(&[&["ip", "-n", &self.name], &words(cmd)[..]].concat());
    }

    /// Runs `cmd` (split on whitespace) inside the namespace.
    fn exec(&self, cmd: &str) -> String {
        run(&[&["ip", "netns", "exec", &self.name], &words(cmd)[..]].concat())
    }

    /// Runs `f` on a thread of its own that has entered the namespace:
    /// setns(CLONE_NEWNET) moves only the calling thread, so the rest of the
    /// test process (and other tests) stay where they are. Sockets keep the
    /// namespace they were made in.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns(2) on a namespace fd we hold open; it changes
                // only this thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("{TEST}: could not delete network namespace {}", self.name);
        }
    }
}

/// The producers' namespace, the daemon's, and the lossy link between them.
struct Net {
    producer: Netns,
    daemon: Netns,
    producer_ip: String,
    daemon_ip: String,
}

impl Net {
    fn create() -> Net {
        let pid = std::process::id();
        let producer = Netns::create(format!("sluice-p-{pid}"));
        let daemon = Netns::create(format!("sluice-d-{pid}"));
        // The addresses are private to the namespaces; a subnet per pid
        // only keeps runs apart in captures and logs.
        let subnet = format!("10.199.{}", pid % 200 + 20);
        let (producer_ip, daemon_ip) = (format!("{subnet}.1"), format!("{subnet}.2"));
        // Each end is made inside its namespace, with one queue pair. TX
        // checksum offload stays on: the daemon's kernel UDP socket accepts
        // veth's partial checksums (only an AF_XDP receiver would not).
        producer.ip(&format!(
            "link add {VETH_P} numtxqueues 1 numrxqueues 1 address {MAC_P} type veth \
             peer name {VETH_D} netns {} numtxqueues 1 numrxqueues 1 address {MAC_D}",
            daemon.name
        ));
        for (ns, dev, ip, peer_ip, peer_mac) in [
            (&producer, VETH_P, &producer_ip, &daemon_ip, MAC_D),
            (&daemon, VETH_D, &daemon_ip, &producer_ip, MAC_P),
        ] {
            ns.ip(&format!("addr add {ip}/24 dev {dev}"));
            ns.ip(&format!("link set {dev} up"));
            ns.ip("link set lo up");
            ns.ip(&format!(
                "neigh replace {peer_ip} lladdr {peer_mac} dev {dev} nud permanent"
            ));
        }
        // The loss: on the producers' egress, before the daemon's side sees
        // the frame (so the producers get no send error either). The first
        // rule counts every datagram to the data port, the second the drops.
        producer.exec(&format!("nft add table netdev {NFT_TABLE}"));
        producer.exec(&format!(
            "nft add chain netdev {NFT_TABLE} egress \
             {{ type filter hook egress device {VETH_P} priority 0 ; }}"
        ));
        producer.exec(&format!(
            "nft add rule netdev {NFT_TABLE} egress udp dport {DATA_PORT} counter"
        ));
        producer.exec(&format!(
            "nft add rule netdev {NFT_TABLE} egress udp dport {DATA_PORT} \
             numgen random mod 100 < {LOSS_PERCENT} counter drop"
        ));
        Net {
            producer,
            daemon,
            producer_ip,
            daemon_ip,
        }
    }

    /// Packets counted by the two nftables rules: (to the data port, dropped).
    fn nft_counters(&self) -> (u64, u64) {
        let json = self
            .producer
            .exec(&format!("nft -j list table netdev {NFT_TABLE}"));
        let v: serde_json::Value = serde_json::from_str(&json).expect("nft -j gives JSON");
        let counts: Vec<u64> = v["nftables"]
            .as_array()
            .expect("an nftables array")
            .iter()
            .filter_map(|item| item.get("rule"))
            .filter_map(|rule| {
                rule["expr"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e.get("counter")?.get("packets")?.as_u64())
            })
            .collect();
        match counts[..] {
            [all, dropped] => (all, dropped),
            _ => panic!("expected two counting rules in {json}"),
        }
    }
}

/// `sluiced` run by `ip netns exec`, which execs it: the child is the
/// daemon itself, so signals reach it. Killed on drop if still running.
struct NsDaemon {
    child: Child,
}

impl NsDaemon {
    fn start(spec: &DaemonSpec, ns: &Netns) -> NsDaemon {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(spec.command_line())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} in {}: {e}", spec.bin.display(), ns.name));
        let mut d = NsDaemon { child };
        d.wait_ready(spec.admin, ns, Duration::from_secs(30));
        // Else SIGTERM would go to `ip`, not to the daemon.
        let exe = std::fs::read_link(format!("/proc/{}/exe", d.child.id())).expect("its exe");
        assert_eq!(
            exe.file_name(),
            spec.bin.file_name(),
            "`ip netns exec` did not exec the daemon"
        );
        d
    }

    /// Waits until the admin port answers, from inside the namespace (the
    /// test's own namespace cannot reach it).
    fn wait_ready(&mut self, admin: SocketAddr, ns: &Netns, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on sluiced") {
                panic!("sluiced exited during start-up: {status}");
            }
            if ns.enter(|| TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluiced did not come up within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (at most `within`) for the exit status.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait on sluiced") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sluiced did not stop within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        // A failed test must leave no daemon behind (nor a busy namespace).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The message `i` of `producer`: mostly small, and every 97th spans a few
/// datagrams, so that lost fragments must be recovered too.
fn payload(producer: u64, i: usize) -> Bytes {
    let len = if i % 97 == 0 { 4000 } else { 40 + i % 200 };
    let unit = format!("p{producer} m{i} ");
    Bytes::from(unit.repeat(len / unit.len() + 1)[..len].to_owned())
}

/// Sends MESSAGES messages in batches, one batch durable before the next;
/// returns each acked seq with the index of its message.
async fn produce(target: Target, id: u64) -> Result<BTreeMap<u64, usize>, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("producer {id}: {what}: {e}");
    let options = sluice_tests::load::patient(target.transport);
    let producer = Producer::connect(target.addr, STREAM, id, options)
        .await
        .map_err(|e| fail("connect", &e))?;
    let mut acked = BTreeMap::new();
    for start in (0..MESSAGES).step_by(BATCH) {
        let idx: Range<usize> = start..(start + BATCH).min(MESSAGES);
        let seqs = producer
            .send_batch(idx.clone().map(|i| payload(id, i)).collect())
            .await
            .map_err(|e| fail("send", &e))?;
        if seqs.end - seqs.start != idx.len() as u64 {
            return Err(format!(
                "producer {id}: {} messages acked as seqs {seqs:?}",
                idx.len()
            ));
        }
        acked.extend(seqs.zip(idx));
    }
    producer.close().await.map_err(|e| fail("close", &e))?;
    Ok(acked)
}

/// Runs the producers in the producers' namespace. A current-thread runtime
/// on the thread that entered it: every socket is made there.
fn produce_all(net: &Net, target: &Target) -> BTreeMap<u64, BTreeMap<u64, usize>> {
    net.producer.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let tasks: Vec<_> = (1..=PRODUCERS)
                .map(|id| (id, tokio::spawn(produce(target.clone(), id))))
                .collect();
            let all = async {
                let mut acked = BTreeMap::new();
                for (id, task) in tasks {
                    match task.await.expect("producer task") {
                        Ok(seqs) => acked.insert(id, seqs),
                        Err(e) => panic!("{e}"),
                    };
                }
                acked
            };
            tokio::time::timeout(PRODUCE_WITHIN, all)
                .await
                .unwrap_or_else(|_| {
                    panic!("the producers did not finish within {PRODUCE_WITHIN:?}")
                })
        })
    })
}

#[test]
fn lossy_veth_between_namespaces_keeps_exactly_once() {
    if !require_root(TEST)
        || !require(TEST, "ip", has_tool("ip"), "iproute2 is not installed")
        || !require(TEST, "nft", has_tool("nft"), "nftables is not installed")
    {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let net = Net::create();
    let mut spec = DaemonSpec::new(sluice_tests::sluiced_bin!(), dir.path());
    spec.data = format!("{}:{DATA_PORT}", net.daemon_ip).parse().unwrap();
    spec.quic = format!("{}:{QUIC_PORT}", net.daemon_ip).parse().unwrap();
    spec.admin = format!("127.0.0.1:{ADMIN_PORT}").parse().unwrap();
    // Beyond loopback the daemon wants principals: one token, for the
    // stream under test. The producers publish over the fast path (sealed
    // raw UDP, which the nftables rule thins out) after authenticating over
    // QUIC.
    let token = sluice_daemon::auth::new_token();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"netns\"\nhash = \"{}\"\npublish = [\"{STREAM}\"]\n",
            sluice_daemon::auth::hash_token(&token)
        ),
    )
    .unwrap();
    let spec = spec.arg("--config").arg(config.display().to_string());
    // Dropped before `net`: the daemon is gone before its namespace is.
    let mut daemon = NsDaemon::start(&spec, &net.daemon);
    eprintln!(
        "{TEST}: producers at {} → sluiced at {}, {LOSS_PERCENT} % dropped",
        net.producer_ip, spec.data
    );

    let produce_started = Instant::now();
    let target = Target {
        addr: spec.quic,
        transport: Transport::FastPath(spec.quic_options(Some(token))),
    };
    let sent = produce_all(&net, &target);
    let produce_took = produce_started.elapsed();

    let admin = spec.admin;
    let metrics = net.daemon.enter(|| {
        let body = ureq::get(&format!("http://{admin}/metrics"))
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .into_string()
            .expect("a text body");
        Scrape::parse(&body)
    });
    let (datagrams, dropped) = net.nft_counters();
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "sluiced exited with {status} on SIGTERM");

    // Every message was acked, as the seqs it was sent as.
    let acked: Acked = sent
        .iter()
        .map(|(&p, seqs)| (p, seqs.keys().copied().collect()))
        .collect();
    let total = PRODUCERS as usize * MESSAGES;
    assert_eq!(
        acked.values().map(|s| s.len()).sum::<usize>(),
        total,
        "not every message was acked"
    );
    let records = check::records(dir.path(), STREAM);
    let stored: Vec<(u64, u64)> = records.iter().map(|r| (r.producer, r.seq)).collect();
    check::exactly_once(&stored, &acked);
    assert_eq!(stored.len(), total, "records stored that were never sent");
    for r in &records {
        let i = sent[&r.producer][&r.seq];
        assert!(
            r.payload == payload(r.producer, i),
            "producer {} seq {}: the payload of message {i} arrived damaged",
            r.producer,
            r.seq
        );
    }

    // The loss was real, and the protocol recovered from it.
    let labels = [("stream", STREAM)];
    let nacks = metrics.value("sluice_nacks_sent_total", &labels);
    let retransmits = metrics.value(
        "sluice_retransmits_received_total",
        &[("stream", STREAM), ("kind", "repair")],
    );
    let duplicates = metrics.value("sluice_duplicates_total", &labels);
    let loss = dropped as f64 / datagrams.max(1) as f64;
    eprintln!(
        "{TEST}: {total} messages in {produce_took:.1?} ({:.0}/s); {dropped} of {datagrams} \
         datagrams dropped ({:.2} %); daemon sent {nacks} NACKs, received {retransmits} \
         gap repairs, {duplicates} messages again; {:.1?} in all",
        total as f64 / produce_took.as_secs_f64(),
        loss * 100.0,
        started.elapsed()
    );
    let want = f64::from(LOSS_PERCENT) / 100.0;
    assert!(
        dropped > 0 && (want / 2.0..want * 2.0).contains(&loss),
        "nftables dropped {dropped} of {datagrams} datagrams, not about {LOSS_PERCENT} %"
    );
    assert!(nacks > 0.0, "the daemon sent no NACK despite the loss");
    assert!(
        retransmits > 0.0,
        "the daemon received no retransmission despite the loss"
    );
}
