//! `sluiced` with the AF_XDP receive path, end to end: the daemon in one
//! network namespace with its XDP program on its veth end, producers in
//! another, publishing over the authenticated fast path. Needs root (and
//! `ip`): without it each test says why it skips; with `CI=true` a skip
//! fails. The namespaces are the tests' own (named after the pid) and are
//! removed again, also when a test fails; nothing is sent outside them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_testkit::daemon::write_token_config;
use sluice_testkit::testnet::{self, require_netns, Link, Netns};
use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::{Daemon, DaemonSpec, Target};
use sluice_tests::load::{self, plans};
use sluice_transport::client::Transport;
use sluice_xdp::bpf::{self, insn};

/// The namespaces are the test's own, so fixed ports cannot clash.
const DATA_PORT: u16 = 7401;
const QUIC_PORT: u16 = 7400;
const ADMIN_PORT: u16 = 7480;

/// A daemon for `net.b` with XDP on its veth end, a token for `stream`, and
/// `extra` flags.
fn spec(net: &Link, dir: &Path, stream: &str, extra: &[&str]) -> (DaemonSpec, String) {
    let mut spec = DaemonSpec::new(sluice_tests::sluiced_bin!(), dir);
    spec.data = format!("{}:{DATA_PORT}", net.b.ip).parse().unwrap();
    spec.quic = format!("{}:{QUIC_PORT}", net.b.ip).parse().unwrap();
    spec.admin = format!("127.0.0.1:{ADMIN_PORT}").parse().unwrap();
    let (token, config) = token_config(dir, stream);
    let mut spec = spec
        .arg("--config")
        .arg(config)
        .arg("--xdp-interface")
        .arg(&net.b.iface);
    for a in extra {
        spec = spec.arg(*a);
    }
    (spec, token)
}

fn target(spec: &DaemonSpec, token: &str) -> Target {
    Target {
        addr: spec.quic,
        transport: Transport::FastPath(spec.quic_options(Some(token.to_owned()))),
    }
}

/// Runs `count` producers of `each` messages in `ns` (every socket made
/// there), within `limit`.
fn produce_in(
    ns: &Netns,
    target: &Target,
    stream: &str,
    count: u64,
    each: u64,
    limit: Duration,
) -> Acked {
    run_plans_in(ns, plans(target, stream, count, each, 1_000), limit)
}

/// Runs `plans` in `ns`, within `limit`.
fn run_plans_in(ns: &Netns, plans: Vec<load::Plan>, limit: Duration) -> Acked {
    ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(load::run_all(plans, limit))
    })
}

/// Programs attached to `iface` in `ns`.
fn attached(ns: &Netns, iface: &str) -> Vec<bpf::Attached> {
    let iface = iface.to_owned();
    ns.enter(move || {
        let index = bpf::ifindex(&iface).expect("the interface exists");
        bpf::xdp_state(index).expect("read the interface's XDP state")
    })
}

fn xdp_frames(d: &Daemon, iface: &str) -> f64 {
    d.metrics().value(
        "sluice_xdp_rx_frames_total",
        &[("interface", iface), ("queue", "0")],
    )
}

fn assert_stored_once(dir: &Path, stream: &str, acked: &Acked, total: u64) {
    let stored = check::stored(dir, stream);
    assert_eq!(stored.len() as u64, total, "records stored");
    check::exactly_once(&stored, acked);
}

#[test]
fn a_million_messages_over_af_xdp_stored_exactly_once() {
    const TEST: &str = "xdp_million";
    if !require_netns(TEST, false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two queue pairs: a socket and a pinned thread for each.
    let net = Link::create("xm", 2);
    let (spec, token) = spec(
        &net,
        dir.path(),
        "events",
        &["--xdp-queues", "0,1", "--xdp-cpus", "0,1"],
    );
    let d = spec.start_in(&net.b.ns);
    let programs = attached(&net.b.ns, &net.b.iface);
    assert!(
        programs.len() == 1 && programs[0].ours,
        "sluice's program is attached while it runs: {programs:?}"
    );
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 250_000;
    let started = Instant::now();
    let acked = produce_in(
        &net.a.ns,
        &target(&spec, &token),
        "events",
        PRODUCERS,
        EACH,
        Duration::from_secs(600),
    );
    let took = started.elapsed();
    let m = d.metrics();
    let frames = xdp_frames(&d, &net.b.iface);
    let frames_1 = m.value(
        "sluice_xdp_rx_frames_total",
        &[("interface", &net.b.iface), ("queue", "1")],
    );
    assert_eq!(
        m.label_values("sluice_xdp_rx_frames_total", "queue"),
        ["0", "1"],
        "a socket on each queue"
    );
    let frames = frames + frames_1;
    let to_socket = m.value("sluice_datagrams_in_total", &[]);
    assert_eq!(
        m.value("sluice_durable_acks_total", &[("stream", "events")]),
        (PRODUCERS * EACH) as f64
    );
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "sluiced exited with {status}");
    assert_stored_once(dir.path(), "events", &acked, PRODUCERS * EACH);
    // The data came off the AF_XDP queue, not through the kernel's stack:
    // at 1,000 messages a batch that is well over a thousand frames.
    assert!(
        frames > 1_000.0,
        "only {frames} frames came through AF_XDP (the socket saw {to_socket})"
    );
    assert!(
        attached(&net.b.ns, &net.b.iface).is_empty(),
        "a clean stop leaves no XDP program on the interface"
    );
    eprintln!(
        "{TEST}: {} messages durable in {took:.1?} ({:.0}/s, test build); {frames} AF_XDP frames ({frames_1} on queue 1)",
        PRODUCERS * EACH,
        (PRODUCERS * EACH) as f64 / took.as_secs_f64()
    );
}

/// Runs `f` on a thread inside `ns`.
fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    ns.enter(f)
}

#[test]
fn other_traffic_still_reaches_the_kernel_and_a_clean_stop_detaches() {
    const TEST: &str = "xdp_other_traffic";
    if !require_netns(TEST, false)
        || !testnet::require(
            TEST,
            "ping",
            testnet::has_tool("ping"),
            "ping is not installed (scripts/setup.sh installs iputils-ping)",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Link::create("xo", 1);
    let (spec, token) = spec(&net, dir.path(), "events", &[]);
    let d = spec.start_in(&net.b.ns);
    let before = xdp_frames(&d, &net.b.iface);

    // ICMP.
    let ping = net
        .a
        .ns
        .exec(&format!("ping -c 3 -i 0.2 -W 2 {}", net.b.ip));
    assert!(
        ping.contains(" 0% packet loss"),
        "ping across the veth: {ping}"
    );
    // TCP: a listener on the daemon's side, a connection from the
    // producers' side, bytes both ways.
    let tcp: SocketAddr = format!("{}:9000", net.b.ip).parse().unwrap();
    let listener = inside(&net.b.ns, move || TcpListener::bind(tcp).expect("bind tcp"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(b"pong!").expect("write");
        buf
    });
    let reply = inside(&net.a.ns, move || {
        let mut s = TcpStream::connect_timeout(&tcp, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping!").expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        buf
    });
    assert_eq!(&server.join().unwrap(), b"ping!");
    assert_eq!(&reply, b"pong!");
    // UDP to another port (IPv4, same address as the data port).
    let other: SocketAddr = format!("{}:9001", net.b.ip).parse().unwrap();
    let receiver = inside(&net.b.ns, move || {
        let s = UdpSocket::bind(other).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    inside(&net.a.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..10u8 {
            s.send_to(&[i; 32], other).unwrap();
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 64];
    while got < 10 {
        match receiver.recv(&mut buf) {
            Ok(32) => got += 1,
            Ok(n) => panic!("a {n}-byte datagram arrived on port 9001"),
            Err(e) => panic!("{got} of 10 datagrams to port 9001 arrived: {e}"),
        }
    }
    assert_eq!(
        xdp_frames(&d, &net.b.iface),
        before,
        "traffic for others was taken off the queue"
    );

    // The data port still works, through AF_XDP.
    let acked = produce_in(
        &net.a.ns,
        &target(&spec, &token),
        "events",
        1,
        2_000,
        Duration::from_secs(60),
    );
    assert!(
        xdp_frames(&d, &net.b.iface) > before,
        "no frame came through AF_XDP"
    );
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "sluiced exited with {status}");
    assert_stored_once(dir.path(), "events", &acked, 2_000);
    assert!(
        attached(&net.b.ns, &net.b.iface).is_empty(),
        "a clean stop leaves no XDP program on the interface"
    );
}

/// Attaches a program by netlink in `ns` (as an old or foreign tool would:
/// it stays when its process ends): sluice's own, or another one.
fn leave_program(ns: &Netns, iface: &str, ours: bool) -> u32 {
    let iface = iface.to_owned();
    ns.enter(move || {
        let index = bpf::ifindex(&iface).unwrap();
        // Dropped at the end of the closure: the netlink attachment keeps
        // the program loaded.
        if ours {
            let prog = bpf::RedirectProgram::load(&[DATA_PORT], 1).expect("load sluice's program");
            sluice_xdp::netlink::set_link_xdp_fd(index, prog.prog_fd().as_raw_fd(), 0)
                .expect("attach by netlink");
            prog.id()
        } else {
            let pass = [
                insn::mov64_imm(insn::R0, bpf::XDP_PASS as i32),
                insn::exit(),
            ];
            let prog = bpf::load_raw("other_tool", &pass).expect("load another program");
            sluice_xdp::netlink::set_link_xdp_fd(index, prog.fd().as_raw_fd(), 0)
                .expect("attach by netlink");
            prog.id()
        }
    })
}

fn sluiced_fails(spec: &DaemonSpec, ns: &Netns) -> String {
    let line = spec.command_line();
    let out = ns
        .command(&line[0])
        .args(&line[1..])
        .output()
        .expect("run sluiced");
    assert!(!out.status.success(), "sluiced started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_restart_after_kill9_replaces_what_was_left_and_carries_on() {
    const TEST: &str = "xdp_restart";
    if !require_netns(TEST, false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Link::create("xr", 1);
    let (spec, token) = spec(&net, dir.path(), "events", &[]);
    let mut acked = Acked::new();
    let mut merge = |more: Acked| {
        for (p, seqs) in more {
            acked.entry(p).or_default().extend(seqs);
        }
    };

    let d = spec.start_in(&net.b.ns);
    // The daemon's certificate exists once it has started.
    let target = target(&spec, &token);
    merge(produce_in(
        &net.a.ns,
        &target,
        "events",
        2,
        5_000,
        Duration::from_secs(60),
    ));
    d.kill9();
    // The program was held by a bpf_link: a killed daemon leaves nothing.
    assert!(
        attached(&net.b.ns, &net.b.iface).is_empty(),
        "kill -9 left a program attached"
    );

    // A program of sluice's left by netlink (by an older sluiced, say) is
    // replaced at start.
    let stale = leave_program(&net.b.ns, &net.b.iface, true);
    let d = spec.start_in(&net.b.ns);
    let now = attached(&net.b.ns, &net.b.iface);
    assert!(
        now.len() == 1 && now[0].ours && now[0].id != stale,
        "the stale program {stale} was replaced: {now:?}"
    );
    merge(produce_in(
        &net.a.ns,
        &target,
        "events",
        2,
        5_000,
        Duration::from_secs(60),
    ));
    d.kill9();

    // Another tool's program is left alone, with an error that says what
    // to do, unless sluiced is told to replace it.
    let foreign = leave_program(&net.b.ns, &net.b.iface, false);
    let err = sluiced_fails(&spec, &net.b.ns);
    assert!(
        err.contains("other_tool") && err.contains("replace_foreign"),
        "the refusal names the program and the way out: {err}"
    );
    let still = attached(&net.b.ns, &net.b.iface);
    assert!(
        still.len() == 1 && still[0].id == foreign,
        "the foreign program stayed: {still:?}"
    );
    let spec = spec.arg("--xdp-replace-foreign").arg("true");
    let d = spec.start_in(&net.b.ns);
    merge(produce_in(
        &net.a.ns,
        &target,
        "events",
        2,
        5_000,
        Duration::from_secs(60),
    ));
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "sluiced exited with {status}");
    assert!(attached(&net.b.ns, &net.b.iface).is_empty());
    // Producers 1 and 2 went on where they were after each restart.
    assert_stored_once(dir.path(), "events", &acked, 30_000);
}

/// `[[auth.tokens]]` with one token allowed to publish to `stream`, in
/// `dir/sluiced.toml`; returns the token and the file.
fn token_config(dir: &Path, stream: &str) -> (String, String) {
    let token = sluice_daemon::auth::new_token();
    let config = dir.join("sluiced.toml");
    write_token_config(&config, &token, &format!("publish = [\"{stream}\"]\n")).unwrap();
    (token, config.display().to_string())
}

#[test]
fn xdp_errors_name_the_key_and_fallback_runs_on_the_socket() {
    // No root needed: configuration is checked, then the interface looked
    // up, before anything else.
    let dir = tempfile::tempdir().unwrap();
    // Anonymous mode with an XDP interface is refused: packets come from
    // a NIC, from off the machine, whatever the listeners' addresses.
    let anonymous = DaemonSpec::new(sluice_tests::sluiced_bin!(), dir.path())
        .arg("--xdp-interface")
        .arg("nosuchif0");
    let line = anonymous.command_line();
    let out = Command::new(&line[0]).args(&line[1..]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "anonymous with XDP: {err}");
    assert!(
        err.contains("`auth`") && err.contains("xdp.interface"),
        "the refusal names auth and xdp.interface: {err}"
    );
    let (token, config) = token_config(dir.path(), "events");
    let spec = anonymous.arg("--config").arg(&config);
    let line = spec.command_line();
    let out = Command::new(&line[0]).args(&line[1..]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sluiced started on a missing interface"
    );
    assert!(
        err.contains("xdp.interface") && err.contains("nosuchif0") && err.contains("fallback"),
        "the error names the key, the interface and the way out: {err}"
    );
    let bad = DaemonSpec::new(sluice_tests::sluiced_bin!(), dir.path())
        .arg("--config")
        .arg(&config)
        .arg("--xdp-interface")
        .arg("eth9")
        .arg("--xdp-mode")
        .arg("fast");
    let line = bad.command_line();
    let out = Command::new(&line[0]).args(&line[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad value is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("xdp.mode"));

    let spec = spec.arg("--xdp-fallback").arg("true");
    let d = spec.start();
    let acked = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(load::run_all(
            plans(&target(&spec, &token), "events", 1, 100, 50),
            Duration::from_secs(60),
        ));
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert_stored_once(dir.path(), "events", &acked, 100);
}

/// `Udp: OutDatagrams` of the namespace: what its kernel UDP stack sent.
fn udp_out_datagrams(ns: &Netns) -> u64 {
    ns.enter(|| testnet::udp_counter("OutDatagrams"))
        .expect("Udp: OutDatagrams")
}

#[test]
fn producers_can_send_through_an_af_xdp_tx_ring() {
    const TEST: &str = "xdp_producer_tx";
    if !require_netns(TEST, false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Link::create("xt", 1);
    let (spec, token) = spec(&net, dir.path(), "*", &[]);
    let d = spec.start_in(&net.b.ns);
    let target = target(&spec, &token);
    let kernel_before = udp_out_datagrams(&net.a.ns);
    let iface = net.a.iface.clone();
    let mut plans = plans(&target, "events", 4, 50_000, 1_000);
    // One provider: its links share one TX ring (a queue takes one socket).
    let provider = net.a.ns.enter(move || {
        sluice_xdp::producer::tx_provider(sluice_xdp::producer::TxSetup::new(iface, 0))
            .expect("a TX ring on the producers' veth end")
    });
    for p in &mut plans {
        p.options.tx = Some(provider.clone());
    }
    let acked = run_plans_in(&net.a.ns, plans, Duration::from_secs(120));
    let kernel_sent = udp_out_datagrams(&net.a.ns) - kernel_before;
    let received = d.metrics().value("sluice_datagrams_in_total", &[]);

    // The ring lives as long as its provider; a queue takes one socket.
    drop(provider);
    // The CLI too: `sluice publish --xdp-tx IFACE`.
    let out = net
        .a
        .ns
        .command(sluice_tests::sluice_bin!().to_str().unwrap())
        .args(["publish", "-s", "cli", "--to", &spec.quic.to_string()])
        .args(["--server-cert", &spec.server_cert().display().to_string()])
        .args(["--token", &token, "--xdp-tx", &format!("{}:0", net.a.iface)])
        .args(["--producer", "9", "--count", "5000", "--size", "100"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("published 5000 messages"),
        "sluice publish --xdp-tx: {stderr}"
    );
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "sluiced exited with {status}");
    assert_stored_once(dir.path(), "events", &acked, 200_000);
    assert_eq!(check::stored(dir.path(), "cli").len(), 5000);
    // The data went out through the ring: the producers' kernel UDP stack
    // sent a small part of what the daemon received (until a next hop is
    // known and for what does not fit the ring, the kernel sends).
    eprintln!(
        "{TEST}: daemon received {received} datagrams; the producers' kernel sent {kernel_sent}"
    );
    assert!(
        (kernel_sent as f64) < received / 4.0,
        "the producers' kernel sent {kernel_sent} of {received} datagrams"
    );
}

#[test]
fn a_missing_queue_or_unsupported_bind_mode_is_a_clear_error() {
    const TEST: &str = "xdp_clear_errors";
    if !require_netns(TEST, false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Link::create("xe", 1);
    for (extra, want) in [
        (&["--xdp-queues", "0,5"][..], "queue 5 does not exist"),
        (&["--xdp-bind", "zerocopy"][..], "zero-copy"),
    ] {
        let (spec, _) = spec(&net, dir.path(), "events", extra);
        let err = sluiced_fails(&spec, &net.b.ns);
        assert!(
            err.contains(&net.b.iface) && err.contains(want),
            "{extra:?}: the error names the interface and says {want:?}: {err}"
        );
        assert!(
            attached(&net.b.ns, &net.b.iface).is_empty(),
            "{extra:?}: a failed start leaves no program behind"
        );
    }
    // With fallback the daemon runs on the socket path, and says why.
    let (spec, token) = spec(
        &net,
        dir.path(),
        "events",
        &["--xdp-queues", "7", "--xdp-fallback", "true"],
    );
    let d = spec.start_in(&net.b.ns);
    assert!(attached(&net.b.ns, &net.b.iface).is_empty());
    let acked = produce_in(
        &net.a.ns,
        &target(&spec, &token),
        "events",
        1,
        1_000,
        Duration::from_secs(60),
    );
    assert_eq!(d.metrics().value("sluice_xdp_rx_frames_total", &[]), 0.0);
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert_stored_once(dir.path(), "events", &acked, 1_000);
}

/// The same refusal on a real interface, in the test's own namespace: a
/// daemon whose listeners are all on loopback but whose XDP program would
/// sit on a veth does not start without principals.
#[test]
fn anonymous_mode_is_refused_on_a_real_xdp_interface() {
    const TEST: &str = "xdp_anonymous";
    if !require_netns(TEST, false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Link::create("xa", 1);
    let spec = DaemonSpec::new(sluice_tests::sluiced_bin!(), dir.path())
        .arg("--xdp-interface")
        .arg(&net.b.iface);
    let line = spec.command_line();
    let out = net
        .b
        .ns
        .command(&line[0])
        .args(&line[1..])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`auth`") && err.contains("xdp.interface"),
        "{err}"
    );
    assert!(
        attached(&net.b.ns, &net.b.iface).is_empty(),
        "nothing was attached to {}",
        net.b.iface
    );
}
