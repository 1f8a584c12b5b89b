//! Loss on a real network path: the producers and `sluiced` run in two
//! network namespaces joined by a veth pair, and nftables drops 5 % of the
//! producers' datagrams at random as they leave the producers' veth end. The
//! promise holds all the same: every message is acked, and every acked
//! (producer, seq) is in the spool exactly once, in order, with its payload.
//!
//! The same runs twice: with the daemon on the kernel's socket path, and
//! with its AF_XDP receive path on the veth end (the loss then happens
//! before the XDP program sees the frame).
//!
//! Needs root, `ip` and `nft`. The test makes its namespaces (named after
//! its pid) and removes them again, also when it fails; it sends nothing
//! outside them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_testkit::testnet::{require_netns, Link, Loss, Netns};
use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::{DaemonSpec, Target};
use sluice_transport::client::{Producer, Transport};

const TEST: &str = "netns_loss";
const STREAM: &str = "lossy";
const PRODUCERS: u64 = 4;
const MESSAGES: usize = 20_000;
const BATCH: usize = 250;
const LOSS_PERCENT: f64 = 5.0;
/// The namespaces are the test's own, so fixed ports cannot clash.
const DATA_PORT: u16 = 7401;
const QUIC_PORT: u16 = 7400;
const ADMIN_PORT: u16 = 7480;
/// Bound on the producers' work, all of it together.
const PRODUCE_WITHIN: Duration = Duration::from_secs(120);

/// The message `i` of `producer`: mostly small, and every 97th spans a few
/// datagrams, so that lost fragments must be recovered too.
fn payload(producer: u64, i: usize) -> Bytes {
    let len = if i.is_multiple_of(97) {
        4000
    } else {
        40 + i % 200
    };
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
fn produce_all(producers: &Netns, target: &Target) -> BTreeMap<u64, BTreeMap<u64, usize>> {
    producers.enter(|| {
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
    lossy_veth(false);
}

#[test]
fn lossy_veth_into_af_xdp_keeps_exactly_once() {
    lossy_veth(true);
}

fn lossy_veth(xdp: bool) {
    let test = if xdp { "netns_loss_xdp" } else { TEST };
    if !require_netns(test, true) {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Producers on `a`, the daemon on `b`; the loss on the producers'
    // egress, before the daemon's side sees the frame.
    let net = Link::create(if xdp { "nx" } else { "nl" }, 1);
    let loss = Loss::add(&net.a.ns, &net.a.iface, DATA_PORT, LOSS_PERCENT);
    let mut spec = DaemonSpec::new(sluice_tests::sluiced_bin!(), dir.path());
    spec.data = format!("{}:{DATA_PORT}", net.b.ip).parse().unwrap();
    spec.quic = format!("{}:{QUIC_PORT}", net.b.ip).parse().unwrap();
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
    let mut spec = spec.arg("--config").arg(config.display().to_string());
    if xdp {
        spec = spec.arg("--xdp-interface").arg(&net.b.iface);
    }
    // Dropped before `net`: the daemon is gone before its namespace is.
    let daemon = spec.start_in(&net.b.ns);
    eprintln!(
        "{test}: producers at {} → sluiced at {}, {LOSS_PERCENT} % dropped",
        net.a.ip, spec.data
    );

    let produce_started = Instant::now();
    let target = Target {
        addr: spec.quic,
        transport: Transport::FastPath(spec.quic_options(Some(token))),
    };
    let sent = produce_all(&net.a.ns, &target);
    let produce_took = produce_started.elapsed();

    let metrics = daemon.metrics();
    let (datagrams, dropped) = loss
        .counters()
        .expect("the two counting rules of the loss table");
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
        "{test}: {total} messages in {produce_took:.1?} ({:.0}/s); {dropped} of {datagrams} \
         datagrams dropped ({:.2} %); daemon sent {nacks} NACKs, received {retransmits} \
         gap repairs, {duplicates} messages again; {:.1?} in all",
        total as f64 / produce_took.as_secs_f64(),
        loss * 100.0,
        started.elapsed()
    );
    let want = LOSS_PERCENT / 100.0;
    assert!(
        dropped > 0 && (want / 2.0..want * 2.0).contains(&loss),
        "nftables dropped {dropped} of {datagrams} datagrams, not about {LOSS_PERCENT} %"
    );
    assert!(nacks > 0.0, "the daemon sent no NACK despite the loss");
    let frames = metrics.value(
        "sluice_xdp_rx_frames_total",
        &[("interface", &net.b.iface), ("queue", "0")],
    );
    if xdp {
        assert!(
            frames > (total / BATCH) as f64,
            "only {frames} frames came through AF_XDP"
        );
    } else {
        assert_eq!(frames, 0.0, "AF_XDP frames without XDP configured");
    }
    assert!(
        retransmits > 0.0,
        "the daemon received no retransmission despite the loss"
    );
}
