//! `sluice nic plan`: from what [`inspect`](super::inspect) saw, the
//! commands that steer the data port to the queues sluiced will serve, pin
//! their interrupts, and the checks of what would otherwise go wrong.
//!
//! Pure: it reads only its arguments (the host facts it needs are in
//! [`NicInfo::host`]), so it can be tested on a made-up NIC, and it runs
//! nothing: the operator reads and runs the commands.

use std::collections::BTreeSet;
use std::fmt;

use super::NicInfo;

/// Bytes the kernel keeps free before the packet in every AF_XDP frame
/// (XDP_PACKET_HEADROOM): room for the XDP program to push headers.
pub const XDP_HEADROOM: u32 = 256;
/// What comes on top of the MTU in a frame: the Ethernet header and one
/// VLAN tag.
pub const L2_OVERHEAD: u32 = 14 + 4;
/// The UMEM frame sizes sluiced uses: in aligned mode a frame is a power
/// of two between 2048 and the page size.
pub const FRAME_SIZES: [u32; 2] = [2048, 4096];

/// The largest MTU whose packets fit in a frame of `frame_size` bytes.
pub fn max_mtu(frame_size: u32) -> u32 {
    frame_size.saturating_sub(XDP_HEADROOM + L2_OVERHEAD)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub level: Level,
    pub message: String,
}

/// One command for the operator to run, with why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub command: String,
    pub comment: String,
    /// `Some(reason)` for a command shown for completeness that cannot or
    /// need not run here (printed commented out, with the reason).
    pub skip: Option<String>,
}

/// What to ask for.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The UDP data port (sluiced's `[data] listen` port).
    pub port: u16,
    /// The queues sluiced will serve, one AF_XDP socket each.
    pub queues: &'a [u32],
    /// The CPU of each queue's thread, in the order of `queues`; `None`:
    /// queue q on CPU q modulo the CPUs online.
    pub cpus: Option<&'a [usize]>,
    /// The UMEM frame size; `None`: the smallest that holds the MTU.
    pub frame_size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub iface: String,
    pub port: u16,
    pub queues: Vec<u32>,
    /// The CPU of each queue, as `queues`.
    pub cpus: Vec<usize>,
    pub frame_size: u32,
    /// The `[xdp] mode` to configure.
    pub mode: &'static str,
    pub checks: Vec<Check>,
    pub steps: Vec<Step>,
    /// The `[xdp]` section for sluiced's config file.
    pub config: String,
}

impl Plan {
    /// The worst level among the checks.
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }
}

/// The plan for serving UDP `port` on `queues` of the NIC, with frames
/// sized for its MTU.
pub fn plan(info: &NicInfo, port: u16, queues: &[u32], cpus: Option<&[usize]>) -> Plan {
    plan_with(
        info,
        &PlanInput {
            port,
            queues,
            cpus,
            frame_size: None,
        },
    )
}

/// [`plan`] with every choice spelled out.
pub fn plan_with(info: &NicInfo, input: &PlanInput<'_>) -> Plan {
    let mut b = Builder {
        info,
        iface: &info.name,
        checks: Vec::new(),
        steps: Vec::new(),
        resized: false,
    };
    let queues = b.queues(input.queues);
    let cpus = b.cpus(&queues, input.cpus);
    let frame_size = b.frame_size(input.frame_size);
    let mode = b.xdp_mode();
    b.programs();
    // What resets the NIC's queues (channels, rings) comes first: rules,
    // RSS tables and IRQ affinity set before it may not survive it.
    let channels = (!queues.is_empty()).then(|| b.channels(&queues)).flatten();
    b.rings();
    if !queues.is_empty() {
        b.steering(input.port, &queues, channels);
        b.irqs(&queues, &cpus);
    }
    b.link();
    let config = config(&info.name, input.port, &queues, &cpus, mode, frame_size);
    Plan {
        iface: info.name.clone(),
        port: input.port,
        queues,
        cpus,
        frame_size,
        mode,
        checks: b.checks,
        steps: b.steps,
        config,
    }
}

struct Builder<'a> {
    info: &'a NicInfo,
    iface: &'a str,
    checks: Vec<Check>,
    steps: Vec<Step>,
    /// The plan changes the channel count: the IRQs seen now are not the
    /// ones there will be.
    resized: bool,
}

impl Builder<'_> {
    fn check(&mut self, level: Level, message: impl Into<String>) {
        self.checks.push(Check {
            level,
            message: message.into(),
        });
    }

    fn step(&mut self, command: impl Into<String>, comment: impl Into<String>) {
        self.steps.push(Step {
            command: command.into(),
            comment: comment.into(),
            skip: None,
        });
    }

    fn skipped(&mut self, command: impl Into<String>, comment: impl Into<String>, why: &str) {
        self.steps.push(Step {
            command: command.into(),
            comment: comment.into(),
            skip: Some(why.to_owned()),
        });
    }

    /// The queues, sorted and without repeats.
    fn queues(&mut self, asked: &[u32]) -> Vec<u32> {
        let set: BTreeSet<u32> = asked.iter().copied().collect();
        if asked.is_empty() {
            self.check(Level::Fail, "no queues given (--queues 0,1,...)");
        } else if set.len() != asked.len() {
            self.check(Level::Fail, "a queue is given twice: one socket per queue");
        }
        // Keep the order given: cpus pair with it.
        let mut seen = BTreeSet::new();
        asked.iter().copied().filter(|q| seen.insert(*q)).collect()
    }

    fn cpus(&mut self, queues: &[u32], asked: Option<&[usize]>) -> Vec<usize> {
        let online = self.info.host.cpus_online.max(1);
        let cpus: Vec<usize> = match asked {
            Some(c) if c.len() == queues.len() => c.to_vec(),
            Some(c) => {
                self.check(
                    Level::Fail,
                    format!(
                        "--cpus gives {} CPUs for {} queues: one per queue, in the same order",
                        c.len(),
                        queues.len()
                    ),
                );
                queues.iter().map(|&q| q as usize % online).collect()
            }
            None => queues.iter().map(|&q| q as usize % online).collect(),
        };
        for &c in &cpus {
            if c >= online {
                self.check(
                    Level::Fail,
                    format!("CPU {c} is not online: this host has CPUs 0-{}", online - 1),
                );
            }
        }
        let distinct: BTreeSet<usize> = cpus.iter().copied().collect();
        if distinct.len() < cpus.len() {
            self.check(
                Level::Warn,
                format!(
                    "queues share CPUs ({}): their threads take turns, each polling for the other",
                    list(&cpus)
                ),
            );
        }
        cpus
    }

    fn frame_size(&mut self, asked: Option<u32>) -> u32 {
        let mtu = self.info.mtu;
        let iface = self.iface;
        let fits = |f: u32| mtu <= max_mtu(f);
        let largest = FRAME_SIZES[FRAME_SIZES.len() - 1];
        let chosen = match asked {
            Some(f) if !FRAME_SIZES.contains(&f) => {
                self.check(
                    Level::Fail,
                    format!("frame size {f}: sluiced's frames are 2048 or 4096 bytes"),
                );
                f
            }
            Some(f) => f,
            None => FRAME_SIZES
                .into_iter()
                .find(|&f| fits(f))
                .unwrap_or(largest),
        };
        if fits(chosen) {
            self.check(
                Level::Ok,
                format!(
                    "MTU {mtu} fits {chosen}-byte frames (they hold MTU up to {}: \
                     {XDP_HEADROOM} bytes of XDP headroom, Ethernet and VLAN headers)",
                    max_mtu(chosen)
                ),
            );
        } else if fits(largest) {
            self.check(
                Level::Fail,
                format!(
                    "MTU {mtu} does not fit {chosen}-byte frames (they hold MTU up to {}): \
                     larger packets are dropped (rx_dropped); use frame_size = {largest}, \
                     or lower the MTU: ip link set {iface} mtu {}",
                    max_mtu(chosen),
                    max_mtu(chosen)
                ),
            );
        } else {
            self.check(
                Level::Fail,
                format!(
                    "MTU {mtu} does not fit even {largest}-byte frames (MTU up to {}): \
                     lower it: ip link set {iface} mtu {}",
                    max_mtu(largest),
                    max_mtu(largest)
                ),
            );
        }
        chosen
    }

    /// Whether the driver runs XDP itself, and the mode to configure.
    fn xdp_mode(&mut self) -> &'static str {
        let iface = self.iface;
        let veth = self.info.driver_name() == "veth";
        match self.info.xdp_features {
            Some(f) if f.basic && f.redirect => {
                self.check(
                    Level::Ok,
                    format!(
                        "{iface} runs XDP in its driver (native mode) and can redirect to AF_XDP"
                    ),
                );
                if f.xsk_zerocopy {
                    self.check(
                        Level::Ok,
                        "AF_XDP zero-copy: frames land in sluiced's memory without a copy",
                    );
                } else if veth {
                    self.check(
                        Level::Ok,
                        format!(
                            "{iface} is a veth: native XDP with copying sockets, \
                             good for tests, not a benchmark of a real NIC"
                        ),
                    );
                } else {
                    self.check(
                        Level::Warn,
                        format!(
                            "no AF_XDP zero-copy on {iface}: sockets bind in copy mode \
                             (one copy per frame, still past the UDP stack)"
                        ),
                    );
                }
                "native"
            }
            Some(_) => {
                self.check(
                    Level::Warn,
                    format!(
                        "{iface}'s driver has no native XDP redirect: only generic (skb) mode, \
                         which runs after the kernel built an skb and gains little over the \
                         UDP socket path"
                    ),
                );
                "generic"
            }
            None => {
                self.check(
                    Level::Warn,
                    format!(
                        "cannot tell whether {iface} has native XDP (the kernel does not \
                         report XDP features before Linux 6.3): mode = \"auto\" tries native \
                         and falls back to generic"
                    ),
                );
                "auto"
            }
        }
    }

    fn programs(&mut self) {
        let iface = self.iface;
        for p in &self.info.xdp_programs {
            if p.name.is_empty() {
                self.check(
                    Level::Warn,
                    format!(
                        "an XDP program is attached to {iface} (id {}, {} mode): \
                         run as root to see whose",
                        p.id, p.mode
                    ),
                );
            } else if p.ours {
                self.check(
                    Level::Ok,
                    format!(
                        "sluiced's XDP program is attached to {iface} (id {}, {} mode): \
                         a sluiced serves it now",
                        p.id, p.mode
                    ),
                );
            } else {
                self.check(
                    Level::Warn,
                    format!(
                        "another XDP program is attached to {iface} (id {}, {:?}, {} mode): \
                         sluiced will not replace it unless told to (replace_foreign); \
                         find its owner first (bpftool net)",
                        p.id, p.name, p.mode
                    ),
                );
            }
        }
    }

    /// Enough receive channels for the highest queue; returns the number
    /// of receive channels once the plan's commands have run.
    fn channels(&mut self, queues: &[u32]) -> Option<u32> {
        let iface = self.iface;
        let top = *queues.iter().max()?;
        let need = top + 1;
        let Some(have) = self.info.rx_channels() else {
            self.check(
                Level::Warn,
                format!("{iface}: channel and queue counts unknown: check `ethtool -l {iface}`"),
            );
            return None;
        };
        if top < have {
            self.check(
                Level::Ok,
                if have == 1 {
                    format!("{iface} has 1 receive channel: queue 0")
                } else {
                    format!("{iface} has {have} receive channels: queues 0-{}", have - 1)
                },
            );
            return Some(have);
        }
        match self.info.channels {
            Some(c) if need <= c.max_rx_capable() => {
                // Combined channels (an RX and a TX queue sharing one IRQ)
                // where the driver has them, else RX-only ones.
                let (kind, count) = if c.max_combined > 0 {
                    (
                        "combined",
                        need.saturating_sub(c.rx)
                            .max(c.combined)
                            .min(c.max_combined),
                    )
                } else {
                    ("rx", need)
                };
                self.check(
                    Level::Warn,
                    format!(
                        "{iface} has {have} receive channels, queue {top} needs {need} \
                         (at most {}): see the ethtool -L command",
                        c.max_rx_capable()
                    ),
                );
                self.step(
                    format!("ethtool -L {iface} {kind} {count}"),
                    format!(
                        "{need} receive channels, so that queue {top} exists. The NIC \
                         resets its queues: traffic pauses briefly, and rules or RSS \
                         tables set earlier may be reset. Its queues' IRQs change too: \
                         run this plan again afterwards to pin them"
                    ),
                );
                self.resized = true;
                Some(need)
            }
            Some(c) => {
                self.check(
                    Level::Fail,
                    format!(
                        "{iface} has at most {} receive channels: queue {top} does not exist",
                        c.max_rx_capable()
                    ),
                );
                Some(have)
            }
            None => {
                self.check(
                    Level::Fail,
                    format!(
                        "{iface} has {have} receive queues and its driver cannot change \
                         them: queue {top} does not exist"
                    ),
                );
                Some(have)
            }
        }
    }

    /// The ntuple rules (one queue) or RSS context (several) that bring
    /// the port's packets to the queues; without ntuple filters, the NIC's
    /// main RSS table over just those queues (all traffic goes there).
    fn steering(&mut self, port: u16, queues: &[u32], channels: Option<u32>) {
        let iface = self.iface;
        // Every receive queue served: whatever queue a packet lands on has
        // a socket (the program passes other traffic to the kernel), so
        // steering is only a nicety.
        let all = channels.is_some_and(|n| (0..n).all(|q| queues.contains(&q)));
        let rss = self.info.rss_table.is_some_and(|n| n > 0);
        let no_rss = format!("{iface} has no RSS table to configure (ethtool -x)");
        // Why ntuple rules cannot be used here, if they cannot.
        let no_ntuple = match self.info.ntuple {
            Some(f) if f.enabled => {
                self.check(Level::Ok, format!("{iface} has ntuple filters on"));
                None
            }
            Some(f) if f.changeable != Some(false) => {
                self.check(
                    Level::Warn,
                    format!("{iface} has ntuple filters off: see the ethtool -K command"),
                );
                self.step(
                    format!("ethtool -K {iface} ntuple on"),
                    "ntuple filters on: the NIC then picks queues by rules on headers",
                );
                None
            }
            Some(_) => Some(format!(
                "{iface} has no ntuple filters (rx-ntuple-filter off [fixed])"
            )),
            None => Some(format!(
                "the driver of {iface} does not report ntuple filters"
            )),
        };
        if let Some(n) = self.info.ntuple_rules.filter(|&n| n > 0) {
            self.check(
                Level::Warn,
                format!(
                    "{iface} already has {n} ntuple rule(s): check none sends port {port} \
                     elsewhere (ethtool -n {iface}; ethtool -N {iface} delete ID)"
                ),
            );
        }
        let several = queues.len() > 1;
        let (rules_skip, table_only) = match (&no_ntuple, all) {
            (None, true) => {
                self.check(
                    Level::Ok,
                    format!(
                        "the queues are all of {iface}'s receive queues: steering below is \
                         optional (it keeps the port on them if channels are added later)"
                    ),
                );
                (None, false)
            }
            (None, false) => (None, false),
            (Some(why), true) => {
                self.check(
                    Level::Ok,
                    format!(
                        "{why}, but the queues are all of {iface}'s receive queues: \
                         every packet reaches a socket without steering"
                    ),
                );
                (Some(why.clone()), false)
            }
            (Some(why), false) if rss => {
                self.check(
                    Level::Warn,
                    format!(
                        "{why}: the port cannot be steered on its own; the plan points \
                         {iface}'s RSS table at queues {} instead, so ALL its traffic \
                         arrives there (what is not for sluiced goes on to the kernel)",
                        list(queues)
                    ),
                );
                (Some(why.clone()), true)
            }
            (Some(why), false) => {
                let top = channels.map_or("N-1".to_owned(), |n| n.saturating_sub(1).to_string());
                self.check(
                    Level::Fail,
                    format!(
                        "{why}, and {no_rss}: the port cannot be steered to chosen \
                         queues. Serve all receive queues (queues = [0..{top}]) instead"
                    ),
                );
                (Some(why.clone()), false)
            }
        };
        if several && no_ntuple.is_none() && !rss && !all {
            self.check(
                Level::Warn,
                format!(
                    "{no_rss}: one ntuple rule can send the port to one queue only, so \
                     it cannot be spread over queues {}",
                    list(queues)
                ),
            );
        }
        // A pair of commands, IPv4 then IPv6, the comment on the first.
        let pair =
            |b: &mut Self, cmd: &dyn Fn(&str) -> String, comment: String, skip: &Option<String>| {
                for (family, comment) in [("udp4", comment), ("udp6", String::new())] {
                    match skip {
                        Some(why) => b.skipped(cmd(family), comment, why),
                        None => b.step(cmd(family), comment),
                    }
                }
            };
        if several {
            let skip = (!rss).then(|| no_rss.clone());
            pair(
                self,
                &|f| format!("ethtool -N {iface} rx-flow-hash {f} sdfn"),
                "hash UDP on addresses and ports (s d f n): many NICs hash UDP on \
                 addresses only, which puts all producers of one host on one queue. \
                 Device-wide: other UDP traffic is hashed the same way"
                    .to_owned(),
                &skip,
            );
        }
        if table_only {
            self.step(
                format!("ethtool -X {iface} {}", spread(queues)),
                format!(
                    "the main RSS table over queues {} only: every flow, the port's and \
                     all others, lands on them (`ethtool -X {iface} default` undoes it)",
                    list(queues)
                ),
            );
            return;
        }
        if !several {
            let q = queues[0];
            pair(
                self,
                &|f| format!("ethtool -N {iface} flow-type {f} dst-port {port} action {q}"),
                format!(
                    "every UDP packet to port {port} (IPv4, then IPv6) to queue {q}, \
                     whatever the NIC's hash would choose"
                ),
                &rules_skip,
            );
            return;
        }
        // One ntuple rule sends a port to one queue. To spread one port
        // over several, the rule names an RSS context instead: a hash
        // table of its own over just these queues, leaving the NIC's main
        // table (all other traffic) alone.
        let context_skip = rules_skip.or_else(|| (!rss).then(|| no_rss.clone()));
        let command = format!("ethtool -X {iface} context new {}", spread(queues));
        let comment = format!(
            "a new RSS context over queues {} only; it prints its number \
             (\"New RSS context is 1\"): put that number in the two rules below. \
             A NIC without extra contexts: `ethtool -X {iface} {}` spreads ALL \
             traffic over these queues instead, and then the rules are not needed",
            list(queues),
            spread(queues)
        );
        match &context_skip {
            Some(why) => self.skipped(command, comment, why),
            None => self.step(command, comment),
        }
        pair(
            self,
            &|f| format!("ethtool -N {iface} flow-type {f} dst-port {port} context 1"),
            format!(
                "UDP to port {port} (IPv4, then IPv6) to that context, whose hash \
                 picks one of its queues per flow (one rule with `action Q` could \
                 name only one queue)"
            ),
            &context_skip,
        );
    }

    /// IRQ affinity: each queue's interrupt on its thread's CPU.
    fn irqs(&mut self, queues: &[u32], cpus: &[usize]) {
        let iface = self.iface;
        let info = self.info;
        if info.irqs.is_empty() {
            if info.virtual_device {
                self.check(
                    Level::Ok,
                    format!(
                        "{iface} is a virtual device without interrupts of its own: \
                         nothing to pin but the queue threads (cpus)"
                    ),
                );
            } else {
                self.check(
                    Level::Warn,
                    format!(
                        "no interrupts of {iface} found in /proc/interrupts: find its queue \
                         IRQs (grep on the driver's name) and pin them by hand"
                    ),
                );
            }
            return;
        }
        let mut moved = false;
        for (&q, &cpu) in queues.iter().zip(cpus) {
            let mine: Vec<_> = info.irqs.iter().filter(|i| i.queue == Some(q)).collect();
            if mine.is_empty() {
                self.check(
                    Level::Warn,
                    format!("no interrupt of {iface} named for queue {q}: pin it by hand"),
                );
            }
            for i in mine {
                let now = i.affinity.as_deref().and_then(super::irq::parse_cpu_list);
                if now.as_deref() == Some(&[cpu][..]) {
                    self.check(
                        Level::Ok,
                        format!(
                            "IRQ {} ({}) of queue {q} is on CPU {cpu} already",
                            i.irq, i.name
                        ),
                    );
                    continue;
                }
                let command = format!("echo {cpu} > /proc/irq/{}/smp_affinity_list", i.irq);
                let comment = format!(
                    "IRQ {} ({}) of queue {q} to CPU {cpu}, where the queue's thread runs \
                     (now: {}): the interrupt, the driver's poll and the thread share \
                     that CPU's cache",
                    i.irq,
                    i.name,
                    i.affinity.as_deref().unwrap_or("unknown")
                );
                if self.resized {
                    self.skipped(
                        command,
                        comment,
                        "ethtool -L above renumbers the IRQs: plan again after it",
                    );
                } else {
                    moved = true;
                    self.step(command, comment);
                }
            }
        }
        if let Some(pid) = info.host.irqbalance_pid {
            self.check(
                Level::Warn,
                format!(
                    "irqbalance is running (pid {pid}): it will override the IRQ affinity \
                     set here within seconds; stop it or make it leave these IRQs alone \
                     (IRQBALANCE_BANNED_CPULIST, --banirq)"
                ),
            );
            if moved {
                self.step(
                    "systemctl stop irqbalance",
                    "before pinning: irqbalance would move the IRQs back",
                );
                // Pinning must come after stopping it.
                let at = self.steps.len() - 1;
                let first_echo = self
                    .steps
                    .iter()
                    .position(|s| s.command.starts_with("echo "))
                    .unwrap_or(at);
                let stop = self.steps.remove(at);
                self.steps.insert(first_echo, stop);
            }
        }
    }

    fn rings(&mut self) {
        let iface = self.iface;
        match self.info.rings {
            Some(r) if r.rx_max > 0 && r.rx < r.rx_max => {
                self.check(
                    Level::Warn,
                    format!(
                        "{iface}'s RX ring holds {} of at most {} descriptors",
                        r.rx, r.rx_max
                    ),
                );
                self.step(
                    format!("ethtool -G {iface} rx {}", r.rx_max),
                    "the largest RX ring: it absorbs bursts while a queue thread is off \
                     its CPU, at the cost of memory and some cache locality. Many \
                     drivers restart the interface for it",
                );
            }
            Some(r) => self.check(
                Level::Ok,
                format!("{iface}'s RX ring is at its maximum ({})", r.rx),
            ),
            None => self.check(
                Level::Ok,
                format!("{iface}: ring sizes not supported by driver (nothing to tune)"),
            ),
        }
    }

    fn link(&mut self) {
        let iface = self.iface;
        if !self.info.up {
            self.check(
                Level::Warn,
                format!("{iface} is down: ip link set {iface} up"),
            );
        }
    }
}

/// `start Q equal N` for consecutive queues, else `weight` with 1 for each
/// chosen queue and 0 for the others up to the highest.
fn spread(queues: &[u32]) -> String {
    let mut sorted = queues.to_vec();
    sorted.sort_unstable();
    let first = sorted.first().copied().unwrap_or(0);
    if sorted.windows(2).all(|w| w[1] == w[0] + 1) {
        return format!("start {first} equal {}", sorted.len());
    }
    let top = sorted.last().copied().unwrap_or(0);
    let weights: Vec<&str> = (0..=top)
        .map(|q| if sorted.contains(&q) { "1" } else { "0" })
        .collect();
    format!("weight {}", weights.join(" "))
}

fn list<T: fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn config(
    iface: &str,
    port: u16,
    queues: &[u32],
    cpus: &[usize],
    mode: &str,
    frame: u32,
) -> String {
    format!(
        "# with [data] listen on UDP port {port}\n\
         [xdp]\n\
         interface = \"{iface}\"\n\
         queues = [{}]\n\
         cpus = [{}]\n\
         mode = \"{mode}\"\n\
         frame_size = {frame}\n",
        list(queues),
        list(cpus)
    )
}

mod render;
#[cfg(test)]
mod tests;
