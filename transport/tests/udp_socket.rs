//! Socket setup: the buffer sizes asked for are in force, or the error names
//! the sysctl that caps them.

use sluice_transport::udp::{self, RecvBatch, SendBatch, SocketOptions, UdpError};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn buffers_are_applied_or_the_cap_is_named() {
    // Far above the usual default cap (net.core.rmem_max = 212992).
    let want = 8 << 20;
    let opts = SocketOptions {
        recv_buffer: Some(want),
        send_buffer: Some(want),
        allow_smaller_buffers: false,
    };
    match udp::bind("127.0.0.1:0".parse().unwrap(), &opts) {
        Ok(s) => {
            let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
            assert!(got >= want, "asked for {want}, got {got}");
        }
        Err(UdpError::BufferCapped {
            sysctl, requested, ..
        }) => {
            assert!(!is_root(), "root can force the size past the cap");
            assert_eq!(requested, want);
            assert_eq!(sysctl, "net.core.rmem_max");
            let msg = udp::bind("127.0.0.1:0".parse().unwrap(), &opts)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("sysctl -w net.core.rmem_max"), "{msg}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn batches_move_many_datagrams_per_call_with_their_senders() {
    let a = udp::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
    let b = udp::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
    let mut out = SendBatch::new();
    for i in 0..50u8 {
        out.push(b.local_addr().unwrap(), &[i; 100]);
    }
    assert_eq!(out.send(&a).await.unwrap(), 0);
    assert!(out.is_empty());
    let mut inbox = RecvBatch::new(64, 2048);
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), inbox.recv(&b))
            .await
            .expect("datagrams arrive")
            .unwrap();
        for i in 0..n {
            let (data, from) = inbox.get(i);
            assert_eq!(from, Some(a.local_addr().unwrap()));
            assert_eq!(data.len(), 100);
            assert!(!inbox.truncated(i));
            seen.push(data[0]);
        }
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    // A datagram larger than the slot is reported as truncated, not cut silently.
    let mut small = RecvBatch::new(4, 64);
    a.send_to(&[9u8; 500], b.local_addr().unwrap())
        .await
        .unwrap();
    let n = small.recv(&b).await.unwrap();
    assert_eq!(n, 1);
    assert!(small.truncated(0));
}

/// A run of same-sized datagrams goes out as one GSO message, and a socket
/// with GRO takes it in one buffer: the batch hands the datagrams out one by
/// one again, in order, the shorter last one and another sender's too.
#[tokio::test]
async fn gso_runs_arrive_whole_and_gro_buffers_are_split_again() {
    let a = udp::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
    let c = udp::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
    let b = udp::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
    assert!(udp::enable_gro(&b), "UDP_GRO (Linux 5.0) is refused");
    let to = b.local_addr().unwrap();
    let mut out = SendBatch::new();
    for i in 0..40u8 {
        out.push(to, &[i; 1000]);
    }
    out.push(to, &[40; 300]);
    assert_eq!(out.send(&a).await.unwrap(), 0);
    out.push(to, &[41; 1000]);
    assert_eq!(out.send(&c).await.unwrap(), 0);
    assert!(udp::gso_enabled(), "the kernel refused GSO on loopback");

    let mut inbox = RecvBatch::new(8, udp::GRO_SLOT);
    let mut seen = Vec::new();
    let mut fewest_buffers = usize::MAX;
    while seen.len() < 42 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), inbox.recv(&b))
            .await
            .expect("datagrams arrive")
            .unwrap();
        fewest_buffers = fewest_buffers.min(inbox.buffers());
        for i in 0..n {
            let (data, from) = inbox.get(i);
            let sender = if data[0] == 41 { &c } else { &a };
            assert_eq!(from, Some(sender.local_addr().unwrap()));
            let want = if data[0] == 40 { 300 } else { 1000 };
            assert_eq!(data.len(), want, "datagram {}", data[0]);
            assert!(data.iter().all(|&x| x == data[0]));
            seen.push(data[0]);
        }
    }
    assert_eq!(seen, (0..42).collect::<Vec<_>>());
    // The 41 datagrams of `a` came in one buffer (or a few), not 41.
    assert!(
        fewest_buffers < 5,
        "no coalescing: {fewest_buffers} buffers"
    );
}

#[tokio::test]
async fn a_capped_buffer_can_be_accepted_and_read_back() {
    // More than any cap a test machine has; as root it is forced.
    let want = 64 << 20;
    let opts = SocketOptions {
        recv_buffer: Some(want),
        send_buffer: None,
        allow_smaller_buffers: true,
    };
    let s = udp::bind("127.0.0.1:0".parse().unwrap(), &opts).expect("a capped size is accepted");
    let (recv, _) = udp::buffer_sizes(&s).unwrap();
    if is_root() {
        assert!(recv >= want, "root forces the size: got {recv}");
    } else {
        assert!(recv > 0 && recv < want, "got {recv}");
    }
}
