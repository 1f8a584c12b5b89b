//! The AF_XDP path's counters in `/metrics`: per queue, labelled by
//! interface and queue, as `sluice nic show` reads them back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sluice_xdp::datapath::{QueueStats, XdpStats};
use sluice_xdp::frame::FrameError;

use super::exposition::{Exposition, Kind};
use super::Collect;

/// Reads one counter of a queue.
type Field = fn(&QueueStats) -> &AtomicU64;

/// Per-queue counters: (metric, help, field).
const COUNTERS: &[(&str, &str, Field)] = &[
    (
        "sluice_xdp_rx_frames_total",
        "Frames taken off the queue's AF_XDP RX ring.",
        |q| &q.rx_frames,
    ),
    ("sluice_xdp_rx_bytes_total", "Bytes of those frames.", |q| {
        &q.rx_bytes
    }),
    (
        "sluice_xdp_rx_dropped_total",
        "Frames the kernel dropped for this socket (XDP_STATISTICS rx_dropped).",
        |q| &q.rx_dropped,
    ),
    (
        "sluice_xdp_rx_invalid_descs_total",
        "Invalid RX descriptors (XDP_STATISTICS).",
        |q| &q.rx_invalid_descs,
    ),
    (
        "sluice_xdp_rx_ring_full_total",
        "Frames dropped because the RX ring was full: the queue thread reads too slowly.",
        |q| &q.rx_ring_full,
    ),
    (
        "sluice_xdp_fill_ring_empty_total",
        "Times the kernel found the fill ring empty: frames are not given back fast enough.",
        |q| &q.fill_ring_empty,
    ),
    (
        "sluice_xdp_tx_ring_empty_total",
        "Times the kernel found the TX ring empty (XDP_STATISTICS).",
        |q| &q.tx_ring_empty,
    ),
    (
        "sluice_xdp_tx_invalid_descs_total",
        "Invalid TX descriptors (XDP_STATISTICS).",
        |q| &q.tx_invalid_descs,
    ),
    (
        "sluice_xdp_endpoint_full_total",
        "Times a queue thread waited because the endpoint had not taken its batches.",
        |q| &q.endpoint_full,
    ),
];

impl Collect for XdpStats {
    fn collect(&self, e: &mut Exposition) {
        render(e, self);
    }
}

fn render(e: &mut Exposition, x: &XdpStats) {
    e.family(
        "sluice_xdp_info",
        Kind::Gauge,
        "The AF_XDP receive path: interface, attach mode and socket bind mode.",
    )
    .sample(
        "sluice_xdp_info",
        &[
            ("interface", &x.interface),
            ("mode", x.mode),
            ("bind", x.bind),
        ],
        1,
    );
    let queues: Vec<(String, &QueueStats)> =
        x.queues.iter().map(|q| (q.queue.to_string(), q)).collect();
    for (name, help, field) in COUNTERS {
        e.family(name, Kind::Counter, help);
        for (queue, q) in &queues {
            e.sample(
                name,
                &[("interface", &x.interface), ("queue", queue)],
                field(q).load(Relaxed),
            );
        }
    }
    let name = "sluice_xdp_rx_invalid_total";
    e.family(
        name,
        Kind::Counter,
        "Frames on the queue that were not a well-formed UDP datagram to the data port, by reason.",
    );
    for (queue, q) in &queues {
        for reason in FrameError::ALL {
            e.sample(
                name,
                &[
                    ("interface", &x.interface),
                    ("queue", queue),
                    ("reason", reason.as_str()),
                ],
                q.invalid[reason as usize].load(Relaxed),
            );
        }
    }
    let name = "sluice_xdp_thread_cpu_seconds_total";
    e.family(name, Kind::Counter, "CPU time of the queue's thread.");
    for (queue, q) in &queues {
        e.sample(
            name,
            &[("interface", &x.interface), ("queue", queue)],
            q.cpu_nanos.load(Relaxed) as f64 / 1e9,
        );
    }
}
