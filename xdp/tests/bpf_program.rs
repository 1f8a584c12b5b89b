//! The XDP redirect program and its plumbing, against the running kernel:
//! the program's decisions on hand-made frames (BPF_PROG_TEST_RUN, no
//! network), the verifier's log on a bad program, and, in network
//! namespaces with a veth pair, attaching, detaching, leftovers and
//! foreign programs, and the driver's XDP features.
//!
//! Everything needs root; each test says so and skips without it (and
//! fails under CI=true).
//!
//! The programs are loaded with miss action XDP_DROP: a matching packet on
//! a queue without a socket is then dropped rather than passed, so "ours"
//! (DROP) is visible apart from "not ours" (PASS) without a socket.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use sluice_testkit::testnet::{self, require_netns, require_root};
use sluice_xdp::bpf::insn::{self, R0, R1, R2};
use sluice_xdp::bpf::{
    self, clear_stale, ifindex, is_ours, load_raw, prog_info, xdp_state, AttachMode, Attachment,
    BpfError, Mode, RedirectProgram, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use sluice_xdp::netlink::{self, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};

const PORT: u16 = 4433;
const ETH: usize = 14;

// --- A small frame builder: just the header fields the program reads;
// checksums stay zero (the program never looks at them). ---

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header with `ihl` words (options are NOPs) and `frag` as the
/// flags/fragment-offset field, then `payload`.
fn ipv4(proto: u8, ihl: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let hlen = usize::from(ihl) * 4;
    let mut h = vec![0u8; hlen.max(20)];
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 0, 0, 1]);
    h[16..20].copy_from_slice(&[10, 0, 0, 2]);
    for b in h.iter_mut().skip(20) {
        *b = 1; // IPOPT_NOP
    }
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8] = 0xfd;
    h[24] = 0xfd;
    h[39] = 2;
    h.extend_from_slice(payload);
    h
}

fn udp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&src.to_be_bytes());
    h.extend_from_slice(&dst.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn tcp(dst: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dst.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02; // SYN
    h
}

const UDP: u8 = 17;
const TCP: u8 = 6;
const ICMP: u8 = 1;
const HOPOPTS: u8 = 0;
const IPV6_FRAG: u8 = 44;
const ETH_IP: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

fn udp4(dst: u16) -> Vec<u8> {
    eth(ETH_IP, &ipv4(UDP, 5, 0, &udp(50000, dst, b"sluice")))
}

fn udp6(dst: u16) -> Vec<u8> {
    eth(ETH_IPV6, &ipv6(UDP, &udp(50000, dst, b"sluice")))
}

fn name(action: u32) -> &'static str {
    bpf::action_name(action)
}

/// Runs `frame` and checks the action, naming the case on failure.
fn expect(p: &RedirectProgram, case: &str, frame: &[u8], want: u32) {
    let got = p
        .test_run(frame, 0)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(got, want, "{case}: got {}, want {}", name(got), name(want));
}

fn test_program(ports: &[u16]) -> RedirectProgram {
    RedirectProgram::load_with_miss(ports, 1, XDP_DROP).expect("load")
}

#[test]
fn udp_to_our_port_is_ours_and_nothing_else() {
    if !require_root("udp_to_our_port_is_ours_and_nothing_else") {
        return;
    }
    let p = test_program(&[PORT]);
    expect(&p, "IPv4 UDP to our port", &udp4(PORT), XDP_DROP);
    expect(&p, "IPv4 UDP to another port", &udp4(PORT + 1), XDP_PASS);
    expect(&p, "IPv4 UDP to port 53", &udp4(53), XDP_PASS);
    // The source port does not count.
    let from_ours = eth(ETH_IP, &ipv4(UDP, 5, 0, &udp(PORT, 9999, b"x")));
    expect(&p, "IPv4 UDP from our port", &from_ours, XDP_PASS);
    // Byte order: the port with its bytes swapped is another port.
    expect(&p, "swapped port", &udp4(PORT.swap_bytes()), XDP_PASS);
    // DF alone is not a fragment.
    let df = eth(ETH_IP, &ipv4(UDP, 5, 0x4000, &udp(1, PORT, b"x")));
    expect(&p, "IPv4 UDP with DF", &df, XDP_DROP);
    // A UDP header with nothing after it is still ours.
    let empty = eth(ETH_IP, &ipv4(UDP, 5, 0, &udp(1, PORT, b"")));
    expect(&p, "IPv4 UDP without payload", &empty, XDP_DROP);
}

#[test]
fn ipv4_options_are_skipped() {
    if !require_root("ipv4_options_are_skipped") {
        return;
    }
    let p = test_program(&[PORT]);
    for ihl in 6..=15u8 {
        let f = eth(ETH_IP, &ipv4(UDP, ihl, 0, &udp(1, PORT, b"data")));
        expect(&p, &format!("IHL {ihl} to our port"), &f, XDP_DROP);
        let f = eth(ETH_IP, &ipv4(UDP, ihl, 0, &udp(1, PORT + 1, b"data")));
        expect(&p, &format!("IHL {ihl} to another port"), &f, XDP_PASS);
    }
    // Our port number at the offset a fixed 20-byte header would put it,
    // but the header has options: the real destination is elsewhere.
    let mut f = eth(ETH_IP, &ipv4(UDP, 6, 0, &udp(1, 7, b"")));
    f[ETH + 20 + 2..ETH + 20 + 4].copy_from_slice(&PORT.to_be_bytes());
    expect(&p, "IHL 6, our port where IHL 5 would look", &f, XDP_PASS);
}

#[test]
fn fragments_and_other_protocols_pass() {
    if !require_root("fragments_and_other_protocols_pass") {
        return;
    }
    let p = test_program(&[PORT]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "first fragment (MF)",
            eth(ETH_IP, &ipv4(UDP, 5, 0x2000, &udp(1, PORT, b"x"))),
        ),
        (
            "later fragment (offset 100)",
            eth(ETH_IP, &ipv4(UDP, 5, 100, &udp(1, PORT, b"x"))),
        ),
        (
            "middle fragment (MF, offset 1)",
            eth(ETH_IP, &ipv4(UDP, 5, 0x2001, &udp(1, PORT, b"x"))),
        ),
        (
            "last fragment, DF set too",
            eth(ETH_IP, &ipv4(UDP, 5, 0x4000 | 0x1fff, &udp(1, PORT, b"x"))),
        ),
        ("TCP to our port", eth(ETH_IP, &ipv4(TCP, 5, 0, &tcp(PORT)))),
        (
            "ICMP echo",
            eth(ETH_IP, &ipv4(ICMP, 5, 0, &[8, 0, 0, 0, 0, 1, 0, 1])),
        ),
        ("ARP request", eth(0x0806, &[0u8; 28])),
        (
            "VLAN-tagged UDP to our port",
            eth(
                0x8100,
                &[
                    &[0, 5, 0x08, 0x00][..],
                    &ipv4(UDP, 5, 0, &udp(1, PORT, b"x")),
                ]
                .concat(),
            ),
        ),
        (
            "IPv6 TCP to our port",
            eth(ETH_IPV6, &ipv6(TCP, &tcp(PORT))),
        ),
        (
            "IPv6 hop-by-hop then UDP",
            eth(
                ETH_IPV6,
                &ipv6(
                    HOPOPTS,
                    &[&[UDP, 0, 1, 4, 0, 0, 0, 0][..], &udp(1, PORT, b"x")].concat(),
                ),
            ),
        ),
        (
            "IPv6 fragment header then UDP",
            eth(
                ETH_IPV6,
                &ipv6(
                    IPV6_FRAG,
                    &[&[UDP, 0, 0, 1, 0, 0, 0, 7][..], &udp(1, PORT, b"x")].concat(),
                ),
            ),
        ),
    ];
    for (case, frame) in &cases {
        expect(&p, case, frame, XDP_PASS);
    }
    // IPv4 ethertype but the version says 6; IPv6 ethertype, version 4.
    let mut f = udp4(PORT);
    f[ETH] = 0x65;
    expect(&p, "IPv4 ethertype, version 6", &f, XDP_PASS);
    let mut f = udp6(PORT);
    f[ETH] = 0x40;
    expect(&p, "IPv6 ethertype, version 4", &f, XDP_PASS);
}

#[test]
fn ipv6_udp_to_our_port_is_ours() {
    if !require_root("ipv6_udp_to_our_port_is_ours") {
        return;
    }
    let p = test_program(&[PORT]);
    expect(&p, "IPv6 UDP to our port", &udp6(PORT), XDP_DROP);
    expect(&p, "IPv6 UDP to another port", &udp6(PORT - 1), XDP_PASS);
}

#[test]
fn runts_and_bad_headers_pass() {
    if !require_root("runts_and_bad_headers_pass") {
        return;
    }
    let p = test_program(&[PORT]);
    for (what, full) in [("IPv4", udp4(PORT)), ("IPv6", udp6(PORT))] {
        let headers = full.len() - b"sluice".len();
        // The kernel's test run refuses anything shorter than an Ethernet
        // header: check it still does, so this test notices when the
        // shorter runts become testable.
        for len in 0..ETH {
            let err = p
                .test_run(&full[..len], 0)
                .expect_err("runt below 14 bytes");
            assert_eq!(err.errno(), Some(libc::EINVAL), "{what} {len} bytes: {err}");
        }
        // Every cut short of the UDP header: ethertype, IP header, UDP
        // header partly there.
        for len in ETH..headers {
            expect(
                &p,
                &format!("{what} cut to {len} bytes"),
                &full[..len],
                XDP_PASS,
            );
        }
        expect(
            &p,
            &format!("{what} headers only"),
            &full[..headers],
            XDP_DROP,
        );
    }
    // IHL pointing past the end of the frame (and past the UDP header).
    for ihl in [6u8, 10, 15] {
        let mut f = eth(ETH_IP, &ipv4(UDP, 5, 0, &udp(1, PORT, b"")));
        f[ETH] = 0x40 | ihl;
        expect(&p, &format!("IHL {ihl} past the end"), &f, XDP_PASS);
    }
    // Options present, the UDP header cut one byte short.
    let f = eth(ETH_IP, &ipv4(UDP, 15, 0, &udp(1, PORT, b"")));
    expect(&p, "IHL 15, UDP header cut", &f[..f.len() - 1], XDP_PASS);
    expect(&p, "IHL 15, whole UDP header", &f, XDP_DROP);
    // IHL below 5 is malformed, even with our port just where that IHL
    // would put the UDP destination (inside the IP header).
    for ihl in 0..5u8 {
        let mut f = udp4(PORT);
        let at = ETH + usize::from(ihl) * 4 + 2;
        f[at..at + 2].copy_from_slice(&PORT.to_be_bytes());
        f[ETH] = 0x40 | ihl;
        expect(&p, &format!("IHL {ihl}"), &f, XDP_PASS);
    }
}

#[test]
fn several_ports_each_match() {
    if !require_root("several_ports_each_match") {
        return;
    }
    let ports = [1u16, 53, 443, 4433, 8080, 9999, 40000, 65535];
    let p = test_program(&ports);
    assert_eq!(p.ports(), ports);
    for &port in &ports {
        expect(&p, &format!("IPv4 port {port}"), &udp4(port), XDP_DROP);
        expect(&p, &format!("IPv6 port {port}"), &udp6(port), XDP_DROP);
    }
    for port in [2u16, 52, 54, 442, 444, 4432, 4434, 8081, 65534] {
        expect(&p, &format!("IPv4 port {port}"), &udp4(port), XDP_PASS);
        expect(&p, &format!("IPv6 port {port}"), &udp6(port), XDP_PASS);
    }
    // Duplicates fold into one compare.
    let p = test_program(&[PORT, PORT, 9]);
    assert_eq!(p.ports(), [9, PORT]);
    expect(&p, "duplicate port", &udp4(PORT), XDP_DROP);
}

#[test]
fn bad_arguments_are_refused_before_the_kernel() {
    if !require_root("bad_arguments_are_refused_before_the_kernel") {
        return;
    }
    let nine: Vec<u16> = (1..=9).collect();
    for (what, r) in [
        ("no ports", RedirectProgram::load(&[], 1)),
        ("nine ports", RedirectProgram::load(&nine, 1)),
        ("port 0", RedirectProgram::load(&[0], 1)),
        ("no queues", RedirectProgram::load(&[PORT], 0)),
        (
            "miss action 4",
            RedirectProgram::load_with_miss(&[PORT], 1, XDP_REDIRECT),
        ),
    ] {
        match r {
            Err(BpfError::Invalid(msg)) => eprintln!("{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn production_program_passes_on_an_empty_queue() {
    if !require_root("production_program_passes_on_an_empty_queue") {
        return;
    }
    let p = RedirectProgram::load(&[PORT], 2).unwrap();
    assert_eq!(p.queues(), 2);
    // Ours, but no socket on queue 0: to the kernel.
    expect(&p, "ours, no socket", &udp4(PORT), XDP_PASS);
    let info = prog_info(p.id()).unwrap();
    assert_eq!(info.name, "sluice_redirect");
    assert_eq!(info.prog_type, 6);
    assert_eq!(info.id, p.id());
    assert!(is_ours(&info));
    // The map refuses what is not an AF_XDP socket.
    let udp_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = p.set_socket(0, udp_sock.as_raw_fd()).unwrap_err();
    eprintln!("UDP socket in the XSKMAP: {err}");
    assert!(err.errno().is_some(), "{err}");
    assert!(matches!(
        p.set_socket(2, udp_sock.as_raw_fd()),
        Err(BpfError::Invalid(_))
    ));
    p.clear_socket(1).expect("clearing an empty entry is fine");
    // Queue 1 without an interface that has two queues: the kernel says no.
    let err = p.test_run(&udp4(PORT), 1).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
}

#[test]
fn verifier_log_is_in_the_error() {
    if !require_root("verifier_log_is_in_the_error") {
        return;
    }
    // Reads the packet without checking it against data_end.
    let unchecked = [insn::ldx_w(R2, R1, 0), insn::ldx_b(R0, R2, 0), insn::exit()];
    match load_raw("bad_unchecked", &unchecked) {
        Err(e @ BpfError::Verifier { .. }) => {
            let BpfError::Verifier { errno, log, .. } = &e else {
                unreachable!()
            };
            eprintln!("{e}");
            assert_eq!(*errno, libc::EACCES);
            assert!(log.contains("invalid access to packet"), "{log}");
            assert!(e.to_string().contains("invalid access to packet"));
        }
        other => panic!("expected a verifier error, got {other:?}"),
    }
    // Returns without setting R0.
    match load_raw("bad_no_r0", &[insn::exit()]) {
        Err(BpfError::Verifier { log, .. }) => assert!(log.contains("R0 !read_ok"), "{log}"),
        other => panic!("expected a verifier error, got {other:?}"),
    }
    // Names the kernel would refuse are refused first.
    assert!(matches!(
        load_raw("a-name-too-long-for-bpf", &[insn::exit()]),
        Err(BpfError::Invalid(_))
    ));
}

/// A program that passes everything, under another name: someone else's.
fn foreign_program() -> bpf::Program {
    load_raw(
        "other_xdp",
        &[insn::mov64_imm(R0, XDP_PASS as i32), insn::exit()],
    )
    .expect("load a trivial XDP program")
}

#[test]
fn foreign_program_is_not_ours() {
    if !require_root("foreign_program_is_not_ours") {
        return;
    }
    let f = foreign_program();
    let info = prog_info(f.id()).unwrap();
    assert_eq!(info.name, "other_xdp");
    assert!(!is_ours(&info));
    assert_eq!(f.test_run(&udp4(PORT), 0).unwrap(), XDP_PASS);
}

#[test]
fn unknown_interface_is_named() {
    if !require_root("unknown_interface_is_named") {
        return;
    }
    let err = ifindex("nosuchif0").unwrap_err();
    assert!(err.to_string().contains("nosuchif0"), "{err}");
    assert_eq!(err.errno(), Some(libc::ENODEV));
    assert_eq!(ifindex("lo").unwrap(), 1);
}

// --- With a network: namespaces and a veth pair. ---

/// The XDP programs on `ifindex`, as netlink reports them.
fn on_link(ifindex: u32) -> Vec<(AttachMode, u32)> {
    netlink::link_xdp(ifindex).expect("RTM_GETLINK").programs
}

#[test]
fn attach_native_generic_auto_and_detach() {
    if !require_netns("attach_native_generic_auto_and_detach", false) {
        return;
    }
    let link = testnet::Link::create("bpfat", 1);
    link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        let p = RedirectProgram::load(&[PORT], 1).unwrap();
        assert!(on_link(idx).is_empty());

        let a = Attachment::attach(&p, idx, Mode::Native).expect("native attach on veth");
        assert_eq!(a.attached_mode(), Mode::Native);
        assert_eq!(on_link(idx), [(AttachMode::Native, p.id())]);
        let state = xdp_state(idx).unwrap();
        assert_eq!(state.len(), 1);
        assert!(state[0].ours && state[0].name == "sluice_redirect");
        drop(a);
        assert!(on_link(idx).is_empty(), "drop detaches");

        let a = Attachment::attach(&p, idx, Mode::Generic).expect("generic attach");
        assert_eq!(a.attached_mode(), Mode::Generic);
        assert_eq!(on_link(idx), [(AttachMode::Generic, p.id())]);
        a.detach().expect("explicit detach");
        assert!(on_link(idx).is_empty(), "detach detaches");

        let a = Attachment::attach(&p, idx, Mode::Auto).expect("auto attach");
        assert_eq!(a.attached_mode(), Mode::Native, "veth has native XDP");
        assert_eq!(on_link(idx), [(AttachMode::Native, p.id())]);

        // A second program in the same mode: busy. In the other mode:
        // exists (native and generic are exclusive).
        let q = RedirectProgram::load(&[PORT], 1).unwrap();
        let busy = Attachment::attach(&q, idx, Mode::Native).unwrap_err();
        eprintln!("{busy}");
        assert_eq!(busy.errno(), Some(libc::EBUSY), "{busy}");
        assert!(busy.to_string().contains("another XDP program"), "{busy}");
        assert!(busy.to_string().contains(&format!("index {idx}")), "{busy}");
        let other = Attachment::attach(&q, idx, Mode::Generic).unwrap_err();
        eprintln!("{other}");
        assert_eq!(other.errno(), Some(libc::EEXIST), "{other}");
        // Auto does not fall back to generic over a busy native slot.
        let auto = Attachment::attach(&q, idx, Mode::Auto).unwrap_err();
        assert_eq!(auto.errno(), Some(libc::EBUSY), "{auto}");

        // Ours, but held by a live bpf_link: clear_stale cannot remove it
        // and says why.
        let held = clear_stale(idx, false).unwrap_err();
        eprintln!("{held}");
        assert!(matches!(held, BpfError::Held { .. }), "{held:?}");
        assert!(held.to_string().contains("running sluiced"), "{held}");
        assert_eq!(on_link(idx), [(AttachMode::Native, p.id())]);
        drop(a);
        assert!(on_link(idx).is_empty());
    });
}

/// A forked child holds copies of every fd, close-on-exec or not, until it
/// execs or exits (any thread's `Command::spawn` makes one for a moment).
/// Dropping the attachment must still detach at once.
#[test]
fn drop_detaches_while_a_child_holds_the_link_fd() {
    if !require_netns("drop_detaches_while_a_child_holds_the_link_fd", false) {
        return;
    }
    let link = testnet::Link::create("bpffork", 1);
    link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        let p = RedirectProgram::load(&[PORT], 1).unwrap();
        let a = Attachment::attach(&p, idx, Mode::Native).unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a 2-int array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the pipe fds are new and ours.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only calls async-signal-safe functions (close,
        // read, _exit) and waits for the write end to close: when we drop
        // it below, or when this process dies.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                libc::close(w.as_raw_fd());
                let mut b = 0u8;
                libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork: {}", std::io::Error::last_os_error());
        drop(r);
        drop(a);
        let left = on_link(idx);
        drop(w);
        let mut status = 0;
        // SAFETY: waiting for our own child, which exits on EOF.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(left.is_empty(), "still attached after drop: {left:?}");
    });
}

#[test]
fn native_refuses_a_large_mtu_and_auto_falls_back() {
    if !require_netns("native_refuses_a_large_mtu_and_auto_falls_back", false) {
        return;
    }
    let link = testnet::Link::create("bpfmtu", 1);
    // veth's native XDP checks the peer's MTU.
    link.a.ns.ip(&format!("link set {} mtu 9000", link.a.iface));
    link.b.ns.ip(&format!("link set {} mtu 9000", link.b.iface));
    link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        let p = RedirectProgram::load(&[PORT], 1).unwrap();
        let err = Attachment::attach(&p, idx, Mode::Native).unwrap_err();
        eprintln!("{err}");
        assert_eq!(err.errno(), Some(libc::ERANGE), "{err}");
        assert!(err.to_string().contains("MTU"), "{err}");
        let a = Attachment::attach(&p, idx, Mode::Auto).expect("auto falls back");
        assert_eq!(a.attached_mode(), Mode::Generic);
        assert_eq!(on_link(idx), [(AttachMode::Generic, p.id())]);
    });
}

#[test]
fn leftover_netlink_program_is_ours_and_cleared() {
    if !require_netns("leftover_netlink_program_is_ours_and_cleared", false) {
        return;
    }
    let link = testnet::Link::create("bpfleft", 1);
    link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        // A sluiced of old that attached by netlink and died: the program
        // stays after its fds are gone.
        let id = {
            let p = RedirectProgram::load(&[PORT], 1).unwrap();
            netlink::set_link_xdp_fd(idx, p.prog_fd().as_raw_fd(), XDP_FLAGS_DRV_MODE)
                .expect("netlink attach");
            p.id()
        };
        let state = xdp_state(idx).unwrap();
        assert_eq!(state.len(), 1, "{state:?}");
        assert_eq!(
            (state[0].mode, state[0].id, state[0].ours),
            (AttachMode::Native, id, true)
        );
        assert_eq!(state[0].name, "sluice_redirect");
        // A new program cannot take the slot while it is there.
        let p = RedirectProgram::load(&[PORT], 1).unwrap();
        assert!(Attachment::attach(&p, idx, Mode::Native).is_err());

        let removed = clear_stale(idx, false).expect("clear our leftover");
        assert_eq!(removed, state);
        assert!(on_link(idx).is_empty());
        assert!(clear_stale(idx, false).unwrap().is_empty(), "nothing left");
        let a = Attachment::attach(&p, idx, Mode::Native).expect("attach after clearing");
        assert_eq!(on_link(idx), [(AttachMode::Native, p.id())]);
        drop(a);
    });
}

#[test]
fn foreign_program_is_kept_unless_replace_foreign() {
    if !require_netns("foreign_program_is_kept_unless_replace_foreign", false) {
        return;
    }
    let link = testnet::Link::create("bpffor", 1);
    link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        let f = foreign_program();
        netlink::set_link_xdp_fd(idx, f.fd().as_raw_fd(), XDP_FLAGS_SKB_MODE)
            .expect("netlink attach, generic");
        let state = xdp_state(idx).unwrap();
        assert_eq!(state.len(), 1);
        assert_eq!(
            (state[0].mode, state[0].id, state[0].ours),
            (AttachMode::Generic, f.id(), false)
        );
        assert_eq!(state[0].name, "other_xdp");

        let err = clear_stale(idx, false).unwrap_err();
        eprintln!("{err}");
        match &err {
            BpfError::Foreign {
                ifindex, id, name, ..
            } => assert_eq!((*ifindex, *id, name.as_str()), (idx, f.id(), "other_xdp")),
            other => panic!("expected Foreign, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("ip link set dev {} xdpgeneric off", link.b.iface)),
            "{msg}"
        );
        assert!(msg.contains("xdp.replace_foreign = true"), "{msg}");
        assert_eq!(on_link(idx), [(AttachMode::Generic, f.id())], "kept");

        let removed = clear_stale(idx, true).expect("replace_foreign removes it");
        assert_eq!(removed, state);
        assert!(on_link(idx).is_empty());
    });
}

#[test]
fn xdp_features_of_veth() {
    if !require_netns("xdp_features_of_veth", false) {
        return;
    }
    let link = testnet::Link::create("bpffeat", 1);
    let alone = link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        let f = netlink::xdp_features(idx)
            .expect("netdev DEV_GET")
            .expect("kernel 6.3+ has the netdev family");
        eprintln!("veth XDP features: {f} (bits {:#x})", f.bits);
        assert!(f.basic() && f.redirect(), "{f}");
        assert!(f.rx_sg(), "{f}");
        assert!(!f.xsk_zerocopy() && !f.hw_offload(), "{f}");
        // lo has no XDP of its own.
        let lo = netlink::xdp_features(1).unwrap().unwrap();
        assert_eq!(lo.bits, 0, "{lo}");
        let err = netlink::xdp_features(99_999).unwrap_err();
        assert_eq!(netlink::errno(&err), Some(libc::ENODEV), "{err}");
        f
    });
    // veth can be a redirect target (ndo_xdp_xmit) only once its peer runs
    // XDP (or GRO): then the features change.
    let peer = link.a.ns.enter(|| {
        let idx = ifindex(&link.a.iface).unwrap();
        let p = RedirectProgram::load(&[PORT], 1).unwrap();
        let _a = Attachment::attach(&p, idx, Mode::Native).unwrap();
        link.b.ns.enter(|| {
            let idx = ifindex(&link.b.iface).unwrap();
            netlink::xdp_features(idx).unwrap().unwrap()
        })
    });
    eprintln!(
        "veth XDP features, peer running XDP: {peer} (bits {:#x})",
        peer.bits
    );
    assert!(!alone.ndo_xmit() && !alone.ndo_xmit_sg(), "{alone}");
    assert!(peer.ndo_xmit() && peer.ndo_xmit_sg(), "{peer}");
    assert_eq!(peer.bits & !(4 | 64), alone.bits, "{alone} / {peer}");
}

// --- A real AF_XDP socket in the map, to see XDP_REDIRECT. ---

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_RX_RING: libc::c_int = 2;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_COPY: u16 = 2;

#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// The least AF_XDP socket the XSKMAP takes: UMEM, fill, completion and
/// RX rings, bound in copy mode to `ifindex` queue `queue`. Just enough
/// for the map; the xsk module is the real thing.
struct TestXsk {
    fd: OwnedFd,
    umem: *mut libc::c_void,
    len: usize,
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) {
    // SAFETY: v is a live T of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

impl TestXsk {
    fn new(ifindex: u32, queue: u32) -> TestXsk {
        // SAFETY: socket(2); checked below.
        let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            fd >= 0,
            "AF_XDP socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = 16 * 4096;
        // SAFETY: an anonymous private mapping, unmapped in Drop.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(umem, libc::MAP_FAILED);
        let x = TestXsk { fd, umem, len };
        let reg = UmemReg {
            addr: umem as u64,
            len: len as u64,
            chunk_size: 4096,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&x.fd, XDP_UMEM_REG, &reg);
        for opt in [XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING] {
            setsockopt(&x.fd, opt, &64u32);
        }
        let addr = SockaddrXdp {
            family: AF_XDP as u16,
            flags: XDP_COPY,
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        // SAFETY: addr is a live sockaddr_xdp of the size given.
        let rc = unsafe {
            libc::bind(
                x.fd.as_raw_fd(),
                (&addr as *const SockaddrXdp).cast(),
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind AF_XDP: {}", std::io::Error::last_os_error());
        x
    }
}

impl Drop for TestXsk {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once. The socket closes just
        // after (fields drop after this); the kernel pinned the UMEM pages
        // at registration, so unmapping them first is safe.
        unsafe { libc::munmap(self.umem, self.len) };
    }
}

#[test]
fn socket_in_the_map_redirects_its_queue_only() {
    if !require_netns("socket_in_the_map_redirects_its_queue_only", false) {
        return;
    }
    let link = testnet::Link::create("bpfxsk", 2);
    link.b.ns.enter(|| {
        let idx = ifindex(&link.b.iface).unwrap();
        let p = RedirectProgram::load_with_miss(&[PORT], 2, XDP_DROP).unwrap();
        let frame = udp4(PORT);
        // Two queues on this veth end: the kernel now takes queue 1.
        assert_eq!(p.test_run_on(&frame, idx, 1).unwrap(), XDP_DROP);
        assert_eq!(p.test_run_on(&frame, idx, 0).unwrap(), XDP_DROP);
        let err = p.test_run_on(&frame, idx, 2).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");

        let xsk = TestXsk::new(idx, 0);
        p.set_socket(0, xsk.fd.as_raw_fd())
            .expect("AF_XDP socket into the map");
        assert_eq!(
            p.test_run_on(&frame, idx, 0).unwrap(),
            XDP_REDIRECT,
            "queue 0 has a socket"
        );
        assert_eq!(
            p.test_run_on(&frame, idx, 1).unwrap(),
            XDP_DROP,
            "queue 1 has none"
        );
        assert_eq!(
            p.test_run_on(&udp4(PORT + 1), idx, 0).unwrap(),
            XDP_PASS,
            "not ours"
        );
        assert_eq!(p.test_run_on(&udp6(PORT), idx, 0).unwrap(), XDP_REDIRECT);
        p.clear_socket(0).unwrap();
        assert_eq!(p.test_run_on(&frame, idx, 0).unwrap(), XDP_DROP, "cleared");
    });
}
