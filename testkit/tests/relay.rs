//! The impairment relay itself: it forwards faithfully when told to, drops
//! what it is told to, rejects nonsense settings, and repeats its decisions
//! for the same seed.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_testkit::relay::{self, Impairment, RelayStats};
use tokio::net::UdpSocket;

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An upstream that echoes every datagram back to its sender.
async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind(lo()).await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, task)
}

/// Sends `n` numbered datagrams through `relay` from one socket and returns
/// the numbers that came back, sorted. The relay sees them in send order (one
/// socket over loopback keeps order), so its seeded decisions do not depend
/// on timing; the replies are collected until the line has been quiet a while.
async fn round_trips(relay: SocketAddr, n: u32) -> Vec<u32> {
    let c = UdpSocket::bind(lo()).await.unwrap();
    for i in 0..n {
        c.send_to(&i.to_be_bytes(), relay).await.unwrap();
    }
    let mut back = Vec::new();
    let mut buf = [0u8; 16];
    while let Ok(Ok((4, _))) =
        tokio::time::timeout(Duration::from_millis(300), c.recv_from(&mut buf)).await
    {
        back.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
    }
    back.sort_unstable();
    back
}

#[tokio::test]
async fn forwards_everything_both_ways_when_unimpaired() {
    let (up, _echo) = echo().await;
    let r = relay::start(lo(), up, Impairment::default(), Impairment::default(), 1)
        .await
        .unwrap();
    let back = round_trips(r.local_addr(), 200).await;
    assert_eq!(back, (0..200).collect::<Vec<_>>());
    assert_eq!(RelayStats::get(&r.stats().forwarded), 400);
}

#[tokio::test]
async fn drops_what_it_is_told_to_and_repeats_itself_per_seed() {
    let (up, _echo) = echo().await;
    let lossy = Impairment {
        loss: 0.3,
        ..Default::default()
    };
    let a = relay::start(lo(), up, lossy.clone(), Impairment::default(), 42)
        .await
        .unwrap();
    let first = round_trips(a.local_addr(), 300).await;
    let b = relay::start(lo(), up, lossy, Impairment::default(), 42)
        .await
        .unwrap();
    let second = round_trips(b.local_addr(), 300).await;
    assert_eq!(first, second, "same seed, same decisions");
    let lost = 300 - first.len();
    assert!((50..130).contains(&lost), "lost {lost} of 300 at 30 %");
    assert_eq!(RelayStats::get(&a.stats().dropped), lost as u64);
}

#[tokio::test]
async fn corrupts_truncates_and_duplicates_on_request() {
    let (up, _echo) = echo().await;
    let bad = Impairment {
        corrupt: 1.0,
        ..Default::default()
    };
    let r = relay::start(lo(), up, bad, Impairment::default(), 7)
        .await
        .unwrap();
    let c = UdpSocket::bind(lo()).await.unwrap();
    let sent = [0u8; 64];
    c.send_to(&sent, r.local_addr()).await.unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 64);
    let flipped: u32 = buf[..64].iter().map(|b| b.count_ones()).sum();
    assert_eq!(flipped, 1, "exactly one bit flipped");

    let dup = Impairment {
        duplicate: 1.0,
        truncate: 1.0,
        ..Default::default()
    };
    let r = relay::start(lo(), up, dup, Impairment::default(), 7)
        .await
        .unwrap();
    c.send_to(&[9u8; 100], r.local_addr()).await.unwrap();
    for _ in 0..2 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n < 100, "truncated copy");
    }
    assert_eq!(RelayStats::get(&r.stats().duplicated), 1);
}

#[tokio::test]
async fn rejects_probabilities_outside_zero_to_one() {
    let bad = Impairment {
        loss: 1.5,
        ..Default::default()
    };
    let e = relay::start(lo(), lo(), bad, Impairment::default(), 0).await;
    assert!(e.is_err());
    assert!(e.err().unwrap().to_string().contains("loss"));
}
