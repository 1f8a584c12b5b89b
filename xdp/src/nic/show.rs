//! `sluice nic show`: the human text of a [`NicInfo`], and of the per-queue
//! AF_XDP counters (XDP_STATISTICS, as the daemon exports them) with a hint
//! for each kind of trouble they show.

use std::fmt::{self, Write as _};

use super::NicInfo;

const UNSUPPORTED: &str = "not supported by driver";

/// How the value of a query reads: the driver may not answer it.
fn or_unsupported<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| UNSUPPORTED.to_owned(), f)
}

/// `current/max`, with `-` for a kind the driver does not have.
fn pair(now: u32, max: u32) -> String {
    if now == 0 && max == 0 {
        "-".into()
    } else {
        format!("{now}/{max}")
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for NicInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o = String::new();
        let row = |o: &mut String, k: &str, v: &str| {
            let _ = writeln!(o, "{k:<10} {v}");
        };
        let _ = writeln!(o, "{} (ifindex {})", self.name, self.ifindex);
        let mut state = vec![if self.up { "up" } else { "down" }];
        if self.running {
            state.push("running");
        }
        let mut state = state.join(", ");
        if let Some(op) = &self.operstate {
            let _ = write!(state, "; operstate {op}");
        }
        if let Some(s) = self.speed_mbps {
            let _ = write!(state, "; {s} Mb/s");
        }
        row(&mut o, "state", &state);
        row(&mut o, "mtu", &self.mtu.to_string());
        row(
            &mut o,
            "driver",
            &or_unsupported(self.driver.as_ref(), |d| {
                let mut s = d.driver.clone();
                if !d.version.is_empty() {
                    let _ = write!(s, " {}", d.version);
                }
                if !d.firmware.is_empty() && d.firmware != "N/A" {
                    let _ = write!(s, ", firmware {}", d.firmware);
                }
                s
            }),
        );
        let bus = match &self.driver {
            Some(d) if !d.bus_info.is_empty() => d.bus_info.clone(),
            _ if self.virtual_device => "none (virtual device)".into(),
            _ => "-".into(),
        };
        row(&mut o, "bus", &bus);
        row(
            &mut o,
            "queues",
            &match (self.rx_queues, self.tx_queues) {
                (Some(rx), Some(tx)) => format!("rx {rx}, tx {tx}"),
                _ => "unknown".into(),
            },
        );
        row(
            &mut o,
            "channels",
            &or_unsupported(self.channels, |c| {
                format!(
                    "rx {}, tx {}, other {}, combined {} (current/max)",
                    pair(c.rx, c.max_rx),
                    pair(c.tx, c.max_tx),
                    pair(c.other, c.max_other),
                    pair(c.combined, c.max_combined)
                )
            }),
        );
        row(
            &mut o,
            "rings",
            &or_unsupported(self.rings, |r| {
                format!(
                    "rx {}, tx {} (current/max)",
                    pair(r.rx, r.rx_max),
                    pair(r.tx, r.tx_max)
                )
            }),
        );
        let mut ntuple = or_unsupported(self.ntuple, |n| {
            let fixed = if n.changeable == Some(false) {
                " [fixed]"
            } else {
                ""
            };
            format!("{}{fixed}", if n.enabled { "on" } else { "off" })
        });
        if let Some(n) = self.ntuple_rules {
            let _ = write!(ntuple, ", {n} rule(s)");
        }
        row(&mut o, "ntuple", &ntuple);
        row(
            &mut o,
            "rss",
            &or_unsupported(self.rss_table, |n| {
                format!("indirection table of {n} entries")
            }),
        );
        match &self.xdp_features {
            Some(x) => {
                let native = x.basic && x.redirect;
                row(
                    &mut o,
                    "xdp",
                    &format!(
                        "native {}, generic yes, zero-copy {}, redirect target {}{}",
                        yes(native),
                        yes(x.xsk_zerocopy),
                        yes(x.ndo_xmit),
                        if x.hw_offload { ", offload yes" } else { "" }
                    ),
                );
            }
            None => row(
                &mut o,
                "xdp",
                "native unknown (kernel does not report XDP features), generic yes",
            ),
        }
        if self.xdp_programs.is_empty() {
            row(&mut o, "programs", "none attached");
        }
        for (i, p) in self.xdp_programs.iter().enumerate() {
            let text = if p.name.is_empty() {
                format!(
                    "id {}, {} mode, name and owner unknown (needs root)",
                    p.id, p.mode
                )
            } else {
                let whose = if p.ours { "sluice's" } else { "foreign" };
                format!("id {} {:?}, {} mode, {whose}", p.id, p.name, p.mode)
            };
            row(&mut o, if i == 0 { "programs" } else { "" }, &text);
        }
        if self.irqs.is_empty() {
            let why = if self.virtual_device {
                format!(
                    "none: {} is a virtual device, without interrupts of its own",
                    self.name
                )
            } else {
                format!(
                    "none found in /proc/interrupts under {}'s name or bus address",
                    self.name
                )
            };
            row(&mut o, "irqs", &why);
        }
        for (i, irq) in self.irqs.iter().enumerate() {
            let queue = irq.queue.map_or("-".to_owned(), |q| q.to_string());
            row(
                &mut o,
                if i == 0 { "irqs" } else { "" },
                &format!(
                    "{:>5}  queue {queue:>3}  cpus {:<8} {:>10} interrupts  {}",
                    irq.irq,
                    irq.affinity.as_deref().unwrap_or("?"),
                    irq.count,
                    irq.name
                ),
            );
        }
        if let Some(pid) = self.host.irqbalance_pid {
            row(
                &mut o,
                "",
                &format!("irqbalance runs (pid {pid}): it moves these IRQs"),
            );
        }
        for n in &self.notes {
            row(&mut o, "note", n);
        }
        f.write_str(&o)
    }
}

/// One queue's AF_XDP counters since the daemon bound it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounters {
    pub queue: u32,
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames the kernel could not deliver: no free frame in the fill ring,
    /// or larger than a frame.
    pub rx_dropped: u64,
    /// Descriptors on the fill or TX ring the kernel rejected.
    pub rx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: u64,
    /// Times the kernel found the TX ring empty when asked to send.
    pub tx_ring_empty: u64,
}

type Field = (&'static str, fn(&QueueCounters) -> u64);

const FIELDS: [Field; 7] = [
    ("rx_frames", |c| c.rx_frames),
    ("tx_frames", |c| c.tx_frames),
    ("rx_dropped", |c| c.rx_dropped),
    ("rx_invalid_descs", |c| c.rx_invalid_descs),
    ("rx_ring_full", |c| c.rx_ring_full),
    ("fill_ring_empty", |c| c.fill_ring_empty),
    ("tx_ring_empty", |c| c.tx_ring_empty),
];

/// The counters as a table, one row per queue, then [`counter_hints`].
pub fn render_counters(queues: &[QueueCounters]) -> String {
    let mut o = String::new();
    let _ = write!(o, "{:>5}", "queue");
    for (name, _) in FIELDS {
        let _ = write!(o, " {name:>w$}", w = width(name));
    }
    o.push('\n');
    for q in queues {
        let _ = write!(o, "{:>5}", q.queue);
        for (name, get) in FIELDS {
            let _ = write!(o, " {:>w$}", get(q), w = width(name));
        }
        o.push('\n');
    }
    for h in counter_hints(queues) {
        let _ = writeln!(o, "hint: {h}");
    }
    o
}

/// A column as wide as its name, and room for ten digits.
fn width(name: &str) -> usize {
    name.len().max(10)
}

/// One line per trouble counter that is non-zero on some queue: what it
/// means and what to change.
pub fn counter_hints(queues: &[QueueCounters]) -> Vec<String> {
    const HINTS: [(&str, &str); 5] = [
        (
            "fill_ring_empty",
            "the receive thread does not refill the fill ring fast enough: a larger \
             fill_ring or frame_count, the queue's thread pinned to a CPU of its own, \
             busy_poll on",
        ),
        (
            "rx_ring_full",
            "sluiced reads the RX ring too slowly and the kernel dropped frames: a larger \
             rx_ring, a dedicated CPU per queue, or more queues",
        ),
        (
            "rx_dropped",
            "frames dropped before the RX ring: no free frame (see fill_ring_empty) or a \
             packet larger than a frame (MTU against frame_size: sluice nic plan)",
        ),
        (
            "rx_invalid_descs",
            "the kernel rejected descriptors sluiced gave it: a bug in sluiced, please \
             report it with this output",
        ),
        (
            "tx_ring_empty",
            "the kernel was woken to send with nothing queued: harmless when small \
             next to tx_frames",
        ),
    ];
    let mut out = Vec::new();
    for (name, hint) in HINTS {
        let get = FIELDS.iter().find(|(n, _)| *n == name).map(|f| f.1);
        let Some(get) = get else { continue };
        let hit: Vec<String> = queues
            .iter()
            .filter(|q| get(q) > 0)
            .map(|q| q.queue.to_string())
            .collect();
        if hit.is_empty() {
            continue;
        }
        let total: u64 = queues.iter().map(get).sum();
        out.push(format!("{name} {total} (queue {}): {hint}", hit.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{DriverInfo, Host, Irq, XdpProgram};
    use super::*;

    #[test]
    fn unsupported_queries_read_as_such() {
        let info = NicInfo {
            name: "lo".into(),
            ifindex: 1,
            mtu: 65536,
            up: true,
            running: true,
            virtual_device: true,
            host: Host {
                cpus_online: 2,
                irqbalance_pid: None,
            },
            ..NicInfo::default()
        };
        let text = info.to_string();
        assert!(
            text.contains("driver     not supported by driver"),
            "{text}"
        );
        assert!(
            text.contains("rings      not supported by driver"),
            "{text}"
        );
        assert!(text.contains("programs   none attached"), "{text}");
        assert!(
            text.contains("irqs       none: lo is a virtual device"),
            "{text}"
        );
    }

    #[test]
    fn programs_and_irqs_are_listed() {
        let info = NicInfo {
            name: "eth1".into(),
            driver: Some(DriverInfo {
                driver: "ice".into(),
                bus_info: "0000:3b:00.0".into(),
                ..Default::default()
            }),
            xdp_programs: vec![
                XdpProgram {
                    id: 12,
                    name: "sluice_redirect".into(),
                    mode: "native".into(),
                    ours: true,
                },
                XdpProgram {
                    id: 13,
                    name: "other".into(),
                    mode: "generic".into(),
                    ours: false,
                },
            ],
            irqs: vec![Irq {
                irq: 40,
                name: "eth1-TxRx-0".into(),
                queue: Some(0),
                affinity: Some("2".into()),
                count: 99,
            }],
            ..NicInfo::default()
        };
        let text = info.to_string();
        assert!(
            text.contains("id 12 \"sluice_redirect\", native mode, sluice's"),
            "{text}"
        );
        assert!(
            text.contains("id 13 \"other\", generic mode, foreign"),
            "{text}"
        );
        assert!(text.contains("queue   0  cpus 2"), "{text}");
        assert!(text.contains("bus        0000:3b:00.0"), "{text}");
    }

    #[test]
    fn hints_only_for_counters_that_moved() {
        let q = [
            QueueCounters {
                queue: 0,
                rx_frames: 100,
                fill_ring_empty: 3,
                ..Default::default()
            },
            QueueCounters {
                queue: 1,
                rx_frames: 100,
                fill_ring_empty: 4,
                rx_ring_full: 1,
                ..Default::default()
            },
        ];
        let hints = counter_hints(&q);
        assert_eq!(hints.len(), 2, "{hints:?}");
        assert!(hints[0].starts_with("fill_ring_empty 7 (queue 0, 1): the receive thread"));
        assert!(hints[1].starts_with("rx_ring_full 1 (queue 1): sluiced reads"));
        assert!(counter_hints(&[QueueCounters::default()]).is_empty());
        let table = render_counters(&q);
        assert!(table.lines().next().unwrap().contains("fill_ring_empty"));
        assert_eq!(table.lines().filter(|l| l.starts_with("hint: ")).count(), 2);
    }
}
