//! AF_XDP sockets against the running kernel, over a veth pair between two
//! network namespaces: receiving through the XDP redirect program (copy
//! mode: veth has no zero-copy), transmitting frames built with
//! `frame::write_udp` to a normal UDP socket (so the receiving kernel
//! checks our checksums), recycling frames past the UMEM's size, one-way
//! sockets, busy polling, and the errors for a queue that does not exist,
//! for zero-copy on veth, for a busy queue and for a low RLIMIT_MEMLOCK;
//! `rx_rate_single_sender` prints a rough receive rate.
//!
//! Everything needs root; each test says so and skips without it (and
//! fails under CI=true). Every loop is bounded by a count and a deadline.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sluice_testkit::testnet::{self, require_netns, End, Link};
use sluice_xdp::bpf::{self, Attachment, Mode, RedirectProgram};
use sluice_xdp::frame::{self, parse_udp, udp_checksum_ok, write_udp};
use sluice_xdp::xsk::{BindMode, BusyPoll, XskConfig, XskError, XskSocket};

const PORT: u16 = 4790;
const SENDER_PORT: u16 = 4791;
const DEADLINE: Duration = Duration::from_secs(20);

/// A small UMEM (64 frames: 32 receive, 32 transmit) so that a few hundred
/// packets go round every frame many times.
fn small() -> XskConfig {
    XskConfig {
        frame_count: 64,
        rx_ring: 32,
        tx_ring: 16,
        fill_ring: 32,
        comp_ring: 32,
        ..XskConfig::default()
    }
}

/// A veth pair between two namespaces (ready: `Link::create` waits until
/// both ends pass traffic).
fn new_link(tag: &str, queues: u32) -> Link {
    Link::create(tag, queues)
}

/// Namespaces, and ethtool to turn off veth's TX checksum offload where
/// a test checks UDP checksums of frames a normal socket sent.
fn require_netns_and_ethtool(test: &str) -> bool {
    require_netns(test, false)
        && testnet::require(
            test,
            "ethtool",
            testnet::has_tool("ethtool"),
            "not installed",
        )
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    m
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// The i-th test payload: its index, then a pattern, at a length that
/// varies from 8 to ~1400 bytes.
fn payload(i: u32) -> Vec<u8> {
    let len = 8 + (i as usize * 37) % 1400;
    let mut p: Vec<u8> = (0..len).map(|j| (j as u8) ^ (i as u8)).collect();
    p[..4].copy_from_slice(&i.to_le_bytes());
    p
}

fn index_of(p: &[u8]) -> u32 {
    u32::from_le_bytes(p[..4].try_into().expect("4 bytes"))
}

fn ifindex(end: &End) -> u32 {
    let iface = end.iface.clone();
    end.ns
        .enter(move || bpf::ifindex(&iface).expect("veth ifindex"))
}

/// The receive side in `b`'s namespace: a socket on queue 0 of its veth
/// and the redirect program for `PORT` pointing at it, attached natively.
/// Returned together: dropping the attachment detaches the program.
fn receiver(end: &End, config: &XskConfig) -> (XskSocket, RedirectProgram, Attachment) {
    let ifindex = ifindex(end);
    let config = config.clone();
    end.ns.enter(move || {
        let xsk = XskSocket::open(ifindex, 0, &config).expect("open AF_XDP socket");
        let prog = RedirectProgram::load(&[PORT], 1).expect("load redirect program");
        prog.set_socket(0, xsk.fd()).expect("XSKMAP entry");
        let link = Attachment::attach(&prog, ifindex, Mode::Native).expect("attach XDP");
        (xsk, prog, link)
    })
}

/// A UDP socket bound in `end`'s namespace (sockets keep the namespace
/// they were made in).
fn udp_socket(end: &End, bind: SocketAddr) -> UdpSocket {
    end.ns.enter(move || {
        let s = UdpSocket::bind(bind).expect("bind UDP socket");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        // 4 MiB past rmem_max (we are root): a window of full-size
        // datagrams must not overflow the receive buffer.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with an int of its size on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        s
    })
}

/// Sends payloads `0..n` from `sock` to `to`, never more than `window`
/// ahead of `received` (so that small rings and socket buffers are not
/// overrun and loss cannot pass for a bug, or hide one).
fn send_paced(sock: &UdpSocket, to: SocketAddr, n: u32, received: &AtomicUsize, window: usize) {
    let deadline = Instant::now() + DEADLINE;
    for i in 0..n {
        while i as usize >= received.load(Relaxed) + window {
            assert!(Instant::now() < deadline, "receiver stalled at {i} of {n}");
            std::thread::sleep(Duration::from_micros(50));
        }
        sock.send_to(&payload(i), to).expect("send_to");
    }
}

/// Takes frames off `xsk` until `want` have been seen or the deadline,
/// calling `on` with each; returns how many frames came.
fn receive_frames(xsk: &mut XskSocket, want: usize, mut on: impl FnMut(&[u8])) -> usize {
    let deadline = Instant::now() + DEADLINE;
    let mut got = 0;
    while got < want && Instant::now() < deadline {
        if !xsk.wait_rx(Duration::from_millis(50)).expect("wait_rx") {
            continue;
        }
        got += xsk.recv(64, &mut on);
    }
    if got < want {
        eprintln!(
            "receive_frames: {got} of {want}; {:?}",
            xsk.statistics().expect("XDP_STATISTICS")
        );
    }
    got
}

/// What the namespaces saw, for a failure message: UDP counters (a frame
/// the program passed to the stack shows as NoPorts) and link counters.
fn diagnose(link: &Link) -> String {
    let mut out = String::new();
    for end in [&link.a, &link.b] {
        let snmp = end.ns.exec("cat /proc/net/snmp");
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        out += &format!("--- {}:\n{}\n", end.ns.name(), udp.join("\n"));
        out += &end.ns.exec(&format!("ip -s -d link show {}", end.iface));
        out += &end
            .ns
            .exec(&format!("ethtool -k {}", end.iface))
            .lines()
            .filter(|l| {
                l.contains("segmentation")
                    || l.contains("checksum")
                    || l.contains("receive-offload")
            })
            .collect::<Vec<_>>()
            .join("\n");
        out += "\n";
    }
    out
}

/// Receives payloads `0..n` through the XSK and checks each: addresses,
/// payload bytes, UDP checksum; every index exactly once.
fn check_rx(
    link: &Link,
    xsk: &mut XskSocket,
    from: SocketAddr,
    to: SocketAddr,
    n: u32,
    received: &AtomicUsize,
) {
    let mut seen = vec![false; n as usize];
    let mut bad = Vec::new();
    receive_frames(xsk, n as usize, |f| {
        let Ok(udp) = parse_udp(f) else {
            bad.push(format!("unparsable frame of {} bytes", f.len()));
            return;
        };
        if udp.dst.port() != PORT {
            return; // not one of ours (cannot happen: the program filters)
        }
        let i = index_of(udp.payload);
        if udp.src != from || udp.dst != to {
            bad.push(format!("#{i}: {} -> {}", udp.src, udp.dst));
        }
        if udp.payload != payload(i).as_slice() {
            bad.push(format!("#{i}: payload differs"));
        }
        if !udp_checksum_ok(f) {
            bad.push(format!("#{i}: bad UDP checksum"));
        }
        if std::mem::replace(&mut seen[i as usize], true) {
            bad.push(format!("#{i}: twice"));
        }
        received.fetch_add(1, Relaxed);
    });
    assert!(bad.is_empty(), "bad frames: {bad:?}");
    let missing: Vec<_> = (0..n).filter(|&i| !seen[i as usize]).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} missing, first {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        diagnose(link)
    );
}

#[test]
fn rx_receives_datagrams_in_copy_mode() {
    let name = "rx_receives_datagrams_in_copy_mode";
    if !require_netns_and_ethtool(name) {
        return;
    }
    let link = new_link("xskrx", 1);
    // veth offloads TX checksums: without this the frames carry partial
    // UDP checksums and udp_checksum_ok would (rightly) fail.
    link.a
        .ns
        .exec(&format!("ethtool -K {} tx off", link.a.iface));
    let (mut xsk, _prog, _attached) = receiver(&link.b, &XskConfig::default());
    assert_eq!(
        xsk.bound_mode(),
        BindMode::Copy,
        "veth has no zero-copy: Auto falls back"
    );
    assert_eq!(xsk.queue(), 0);

    let from = addr(&link.a.ip, SENDER_PORT);
    let to = addr(&link.b.ip, PORT);
    let sender = udp_socket(&link.a, from);
    let n = 2000;
    let received = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| send_paced(&sender, to, n, &received, 1000));
        check_rx(&link, &mut xsk, from, to, n, &received);
    });

    let stats = xsk.statistics().expect("XDP_STATISTICS");
    assert_eq!(stats.rx_dropped, 0, "{stats:?}");
    assert_eq!(stats.rx_ring_full, 0, "{stats:?}");
    assert_eq!(stats.rx_invalid_descs, 0, "{stats:?}");
}

#[test]
fn rx_recycles_frames_past_the_umem_size() {
    if !require_netns("rx_recycles_frames_past_the_umem_size", false) {
        return;
    }
    let link = new_link("xskrr", 1);
    let (mut xsk, _prog, _attached) = receiver(&link.b, &small());
    let from = addr(&link.a.ip, SENDER_PORT);
    let to = addr(&link.b.ip, PORT);
    let sender = udp_socket(&link.a, from);
    // 1000 datagrams through 32 receive frames, at most 16 in flight.
    let n = 1000;
    let received = AtomicUsize::new(0);
    let mut lens = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| send_paced(&sender, to, n, &received, 16));
        let got = receive_frames(&mut xsk, n as usize, |f| {
            let udp = parse_udp(f).expect("our datagram");
            assert_eq!(udp.payload, payload(index_of(udp.payload)).as_slice());
            lens.push(udp.payload.len());
            received.fetch_add(1, Relaxed);
        });
        assert_eq!(got, n as usize, "{}", diagnose(&link));
    });
    assert_eq!(lens.len(), n as usize);
    let stats = xsk.statistics().unwrap();
    assert_eq!(stats.rx_dropped, 0, "{stats:?}");
}

/// Busy polling set (SO_PREFER_BUSY_POLL, SO_BUSY_POLL,
/// SO_BUSY_POLL_BUDGET) and no need_wakeup: wait_rx spins on recvfrom
/// instead of poll, and everything still arrives.
#[test]
fn rx_with_busy_poll_and_without_need_wakeup() {
    if !require_netns_and_ethtool("rx_with_busy_poll_and_without_need_wakeup") {
        return;
    }
    let link = new_link("xskbp", 1);
    let config = XskConfig {
        busy_poll: Some(BusyPoll {
            usecs: 50,
            budget: 64,
        }),
        need_wakeup: false,
        tx_ring: 0,
        ..small()
    };
    let (mut xsk, _prog, _attached) = receiver(&link.b, &config);
    link.a
        .ns
        .exec(&format!("ethtool -K {} tx off", link.a.iface));
    let from = addr(&link.a.ip, SENDER_PORT);
    let to = addr(&link.b.ip, PORT);
    let sender = udp_socket(&link.a, from);
    let n = 300;
    let received = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| send_paced(&sender, to, n, &received, 16));
        check_rx(&link, &mut xsk, from, to, n, &received);
    });
    assert!(
        !xsk.tx_frame(|_| 60),
        "a receive-only socket has no TX ring"
    );
    assert_eq!(xsk.tx_capacity(), 0);
}

#[test]
fn rx_ipv6() {
    if !require_netns_and_ethtool("rx_ipv6") {
        return;
    }
    let link = new_link("xskr6", 1);
    let (a6, b6) = ipv6_addresses(&link);
    let (mut xsk, _prog, _attached) = receiver(&link.b, &XskConfig::default());
    let from = addr(&format!("[{a6}]"), SENDER_PORT);
    let to = addr(&format!("[{b6}]"), PORT);
    let sender = udp_socket(&link.a, from);
    let n = 300;
    let received = AtomicUsize::new(0);
    link.a
        .ns
        .exec(&format!("ethtool -K {} tx off", link.a.iface));
    std::thread::scope(|s| {
        s.spawn(|| send_paced(&sender, to, n, &received, 100));
        check_rx(&link, &mut xsk, from, to, n, &received);
    });
}

/// Gives both ends IPv6 addresses (no duplicate detection, so they are
/// usable at once) and permanent neighbour entries.
fn ipv6_addresses(link: &Link) -> (String, String) {
    let net = format!("fd5c:{:x}", std::process::id() & 0xffff);
    let (a6, b6) = (format!("{net}::1"), format!("{net}::2"));
    for (end, me, peer) in [
        (&link.a, &a6, (&b6, &link.b.mac)),
        (&link.b, &b6, (&a6, &link.a.mac)),
    ] {
        end.ns
            .ip(&format!("-6 addr add {me}/64 dev {} nodad", end.iface));
        end.ns.ip(&format!(
            "-6 neigh replace {} lladdr {} dev {} nud permanent",
            peer.0, peer.1, end.iface
        ));
    }
    (a6, b6)
}

/// A rough receive rate with one unpaced sender (sendmmsg, 64-byte
/// payloads), printed: for a socket with both directions and for a
/// receive-only one (no TX ring, so poll(2) skips the kernel's copy-mode
/// transmit path). Loose check only: a 2-vCPU VM running other tests.
#[test]
fn rx_rate_single_sender() {
    if !require_netns("rx_rate_single_sender", false) {
        return;
    }
    let rx_only = XskConfig {
        tx_ring: 0,
        frame_count: 8192,
        ..XskConfig::default()
    };
    for (what, config) in [("rx+tx", XskConfig::default()), ("rx only", rx_only)] {
        let link = new_link("xskrate", 1);
        let (mut xsk, _prog, _attached) = receiver(&link.b, &config);
        let from = addr(&link.a.ip, SENDER_PORT);
        let to = addr(&link.b.ip, PORT);
        let sender = udp_socket(&link.a, from);
        sender.connect(to).expect("connect");
        let n: u32 = 200_000;
        let msg = [7u8; 64];
        let mut got = 0usize;
        let mut cpu = Duration::ZERO;
        let start = Instant::now();
        let mut last = start;
        std::thread::scope(|s| {
            s.spawn(|| send_burst(&sender, &msg, n));
            let cpu0 = sluice_xdp::xsk::thread_cpu_time();
            let deadline = start + DEADLINE;
            while got < n as usize && Instant::now() < deadline {
                if !xsk.wait_rx(Duration::from_millis(200)).unwrap() {
                    // Nothing for 200 ms: the sender is done, the rest lost.
                    break;
                }
                got += xsk.recv(256, |f| {
                    std::hint::black_box(f.len());
                });
                last = Instant::now();
            }
            cpu = sluice_xdp::xsk::thread_cpu_time() - cpu0;
        });
        let secs = (last - start).as_secs_f64();
        let stats = xsk.statistics().unwrap();
        eprintln!(
            "rx_rate_single_sender ({what}): {got} of {n} in {secs:.3} s = {:.0} packets/s; \
             receiver CPU {:.2} µs/packet; {stats:?}",
            got as f64 / secs,
            cpu.as_secs_f64() * 1e6 / got.max(1) as f64
        );
        assert!(
            got >= n as usize / 2,
            "only {got} of {n} arrived: {stats:?}"
        );
    }
}

/// Sends `msg` `n` times on a connected socket, 64 datagrams per
/// sendmmsg(2): the sender then costs less than the receiver.
fn send_burst(sock: &UdpSocket, msg: &[u8], n: u32) {
    const BATCH: usize = 64;
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // SAFETY: mmsghdr is plain data; zeroed is "no name, no control".
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u32;
    let deadline = Instant::now() + DEADLINE;
    while sent < n && Instant::now() < deadline {
        let want = BATCH.min((n - sent) as usize);
        // SAFETY: `want` headers, each pointing at one live iovec over `msg`.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), want as u32, 0) };
        if rc > 0 {
            sent += rc as u32;
        }
    }
}

/// Transmits payloads `0..n` as frames from `xsk` (in `a`) to `to`, never
/// more than `window` ahead of `received`, and waits for the completions.
fn transmit(
    xsk: &mut XskSocket,
    link: &Link,
    from: SocketAddr,
    to: SocketAddr,
    n: u32,
    received: &AtomicUsize,
    window: usize,
) {
    let (src_mac, dst_mac) = (mac(&link.a.mac), mac(&link.b.mac));
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    while i < n {
        assert!(Instant::now() < deadline, "transmit stalled at {i} of {n}");
        let mut queued = 0;
        while i < n && (i as usize) < received.load(Relaxed) + window {
            let p = payload(i);
            if !xsk.tx_frame(|buf| write_udp(buf, src_mac, dst_mac, from, to, &p).expect("fits")) {
                break;
            }
            i += 1;
            queued += 1;
        }
        xsk.flush_tx().expect("flush_tx");
        xsk.reclaim();
        if queued == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    // Let the last completions come back.
    while xsk.tx_in_flight() > 0 && Instant::now() < deadline {
        xsk.flush_tx().expect("flush_tx");
        xsk.reclaim();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reads payloads `0..n` from a UDP socket; every index exactly once.
fn check_udp_rx(sock: &UdpSocket, from: SocketAddr, n: u32, received: &AtomicUsize) {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = vec![false; n as usize];
    let mut buf = vec![0u8; 2048];
    let mut count = 0;
    while count < n && Instant::now() < deadline {
        let Ok((len, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let p = &buf[..len];
        let i = index_of(p);
        assert_eq!(peer, from);
        assert!(i < n, "index {i} out of range");
        assert_eq!(p, payload(i).as_slice(), "#{i}");
        assert!(
            !std::mem::replace(&mut seen[i as usize], true),
            "#{i} twice"
        );
        count += 1;
        received.fetch_add(1, Relaxed);
    }
    assert_eq!(
        count,
        n,
        "missing: {:?}",
        (0..n)
            .filter(|&i| !seen[i as usize])
            .take(10)
            .collect::<Vec<_>>()
    );
}

/// UDP checksum errors counted by `end`'s namespace (/proc/net/snmp or
/// snmp6).
fn csum_errors(end: &End, v6: bool) -> u64 {
    if v6 {
        let out = end.ns.exec("cat /proc/net/snmp6");
        out.lines()
            .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Udp6InCsumErrors")
    } else {
        let out = end.ns.exec("cat /proc/net/snmp");
        let udp: Vec<&str> = out.lines().filter(|l| l.starts_with("Udp:")).collect();
        let names: Vec<&str> = udp[0].split_whitespace().collect();
        let values: Vec<&str> = udp[1].split_whitespace().collect();
        let at = names
            .iter()
            .position(|&n| n == "InCsumErrors")
            .expect("InCsumErrors");
        values[at].parse().expect("number")
    }
}

/// Transmits from an XSK on `a`'s veth to a UDP socket in `b`; first one
/// frame with a broken UDP checksum, which the receiving kernel must drop
/// (so that the rest arriving shows our checksums are checked and right).
fn tx_to_udp_socket(tag: &str, v6: bool, config: &XskConfig, n: u32, window: usize) {
    let link = new_link(tag, 1);
    let (a_ip, b_ip) = if v6 {
        let (a6, b6) = ipv6_addresses(&link);
        (format!("[{a6}]"), format!("[{b6}]"))
    } else {
        (link.a.ip.clone(), link.b.ip.clone())
    };
    let from = addr(&a_ip, SENDER_PORT);
    let to = addr(&b_ip, PORT);
    let sink = udp_socket(&link.b, to);
    let ifindex = ifindex(&link.a);
    let config = config.clone();
    let mut xsk = link
        .a
        .ns
        .enter(move || XskSocket::open(ifindex, 0, &config).expect("open AF_XDP socket"));
    assert_eq!(xsk.bound_mode(), BindMode::Copy);
    assert!(xsk.tx_frame(|buf| {
        let len = write_udp(
            buf,
            mac(&link.a.mac),
            mac(&link.b.mac),
            from,
            to,
            b"corrupt!",
        )
        .unwrap();
        buf[len - 1] ^= 1; // after the checksum was computed
        len
    }));
    xsk.flush_tx().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while csum_errors(&link.b, v6) == 0 {
        assert!(
            Instant::now() < deadline,
            "the corrupted frame was never counted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let received = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| check_udp_rx(&sink, from, n, &received));
        transmit(&mut xsk, &link, from, to, n, &received, window);
    });
    assert_eq!(xsk.tx_in_flight(), 0, "every frame completed");
    assert_eq!(
        csum_errors(&link.b, v6),
        1,
        "only the corrupted frame failed"
    );
    let stats = xsk.statistics().unwrap();
    assert_eq!(stats.tx_invalid_descs, 0, "{stats:?}");
}

#[test]
fn tx_frames_reach_a_udp_socket() {
    if !require_netns("tx_frames_reach_a_udp_socket", false) {
        return;
    }
    tx_to_udp_socket("xsktx", false, &XskConfig::default(), 2000, 200);
}

#[test]
fn tx_ipv6_frames_reach_a_udp_socket() {
    if !require_netns("tx_ipv6_frames_reach_a_udp_socket", false) {
        return;
    }
    tx_to_udp_socket("xsktx6", true, &XskConfig::default(), 500, 200);
}

#[test]
fn tx_recycles_frames_past_the_umem_size() {
    if !require_netns("tx_recycles_frames_past_the_umem_size", false) {
        return;
    }
    // 1000 frames through 32 transmit frames and a 16-slot TX ring, on a
    // transmit-only socket (as a producer's).
    let tx_only = XskConfig {
        frame_count: 32,
        rx_ring: 0,
        fill_ring: 1,
        ..small()
    };
    tx_to_udp_socket("xsktxr", false, &tx_only, 1000, 24);
}

#[test]
fn queue_that_does_not_exist_is_named() {
    if !require_netns("queue_that_does_not_exist_is_named", false) {
        return;
    }
    let link = new_link("xskq5", 1);
    let ifindex = ifindex(&link.b);
    let err = link
        .b
        .ns
        .enter(move || XskSocket::open(ifindex, 5, &small()).unwrap_err());
    assert!(
        matches!(err, XskError::NoSuchQueue { queue: 5, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("ifindex {ifindex}"))
            && msg.contains("queue 5 does not exist on this interface (see `ethtool -l`)"),
        "{msg}"
    );
}

#[test]
fn zero_copy_on_veth_is_refused_with_reason() {
    if !require_netns("zero_copy_on_veth_is_refused_with_reason", false) {
        return;
    }
    let link = new_link("xskzc", 1);
    let ifindex = ifindex(&link.b);
    let config = XskConfig {
        bind: BindMode::ZeroCopy,
        ..small()
    };
    let err = link
        .b
        .ns
        .enter(move || XskSocket::open(ifindex, 0, &config).unwrap_err());
    assert!(
        matches!(err, XskError::NoZeroCopy { queue: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("driver has no zero-copy AF_XDP"),
        "{err}"
    );
}

#[test]
fn queue_rebinds_right_after_close_and_is_busy_while_bound() {
    if !require_netns(
        "queue_rebinds_right_after_close_and_is_busy_while_bound",
        false,
    ) {
        return;
    }
    let link = new_link("xskbusy", 1);
    let ifindex = ifindex(&link.b);
    link.b.ns.enter(move || {
        // The kernel releases a queue a little after close: `open` waits.
        for round in 0..5 {
            let s = XskSocket::open(ifindex, 0, &small())
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            drop(s);
        }
        let held = XskSocket::open(ifindex, 0, &small()).unwrap();
        let start = Instant::now();
        let err = XskSocket::open(ifindex, 0, &small()).unwrap_err();
        assert!(matches!(err, XskError::Busy { queue: 0, .. }), "{err:?}");
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "retried for ~1 s"
        );
        drop(held);
    });
}

#[test]
fn frame_header_len_matches_written_frames() {
    // No privileges needed: a guard that the test's frames are what the
    // helpers above assume.
    let mut buf = [0u8; 128];
    let n = write_udp(
        &mut buf,
        [0; 6],
        [0; 6],
        addr("10.0.0.1", 1),
        addr("10.0.0.2", 2),
        b"",
    )
    .unwrap();
    assert_eq!(n, frame::header_len(false));
}

/// Set in the environment of the child process that
/// `memlock_limit_error_names_the_fix` runs.
const MEMLOCK_CHILD: &str = "SLUICE_XSK_MEMLOCK_CHILD";

/// Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK, registering the
/// UMEM fails with ENOBUFS: the error must say what to raise. Runs in a
/// child process (this test binary again), since the limit is per process.
#[test]
fn memlock_limit_error_names_the_fix() {
    if !testnet::require_root("memlock_limit_error_names_the_fix") {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "memlock_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEMLOCK_CHILD, "1")
        .output()
        .expect("run the test binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("memlock child: ok"),
        "child did not run:\n{text}"
    );
}

#[test]
fn memlock_child() {
    if std::env::var_os(MEMLOCK_CHILD).is_none() {
        return;
    }
    // Drop CAP_IPC_LOCK (14) from this thread, which is what the kernel
    // checks before charging UMEM pages to RLIMIT_MEMLOCK.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and its two data words.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << 14);
        data[0].permitted &= !(1 << 14);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()), 0);
        let limit = libc::rlimit {
            rlim_cur: 64 << 10,
            rlim_max: 64 << 10,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit), 0);
    }
    let err = XskSocket::open(1, 0, &small()).unwrap_err();
    assert!(matches!(err, XskError::MemlockLimit { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("locked memory limit too low: raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK"),
        "{msg}"
    );
    println!("memlock child: ok ({msg})");
}
