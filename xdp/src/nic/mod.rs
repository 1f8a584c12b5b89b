//! What `sluice nic` shows and plans: a NIC as the AF_XDP path sees it.
//!
//! [`inspect`] gathers what the kernel tells about one interface (driver,
//! channels, rings, ntuple filters, queues, IRQs, XDP support and attached
//! programs) in the caller's network namespace; [`plan()`] turns that into
//! the commands that steer the data port to chosen queues, checks of what
//! could go wrong, and the matching `[xdp]` config. Reading needs no
//! privilege; nothing here changes the system.
//!
//! A driver that does not implement a query leaves its field `None`
//! ("not supported by driver"): drivers differ widely, and a missing answer
//! is information, not a failure.

pub mod ethtool;
pub mod irq;
pub mod plan;
pub mod show;

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;

use thiserror::Error;

pub use ethtool::{ChannelCounts, DriverInfo, Feature, RingSizes};
pub use irq::Irq;
pub use plan::{plan, plan_with, Check, Level, Plan, PlanInput, Step};
pub use show::{counter_hints, render_counters, QueueCounters};

#[derive(Debug, Error)]
pub enum NicError {
    #[error("no network interface named {0:?} in this network namespace (see `ip link`)")]
    NoSuchInterface(String),
    #[error("interface name {0:?}: {1}")]
    BadName(String, String),
    #[error("cannot open a socket for ioctls: {0}")]
    Socket(#[source] io::Error),
    #[error("{iface}: {what}: {source}")]
    Query {
        iface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The XDP abilities a driver declares (the kernel's netdev "xdp-features",
/// Linux 6.3 and later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpSupport {
    /// XDP_PASS/DROP/ABORTED in the driver: native (driver) mode.
    pub basic: bool,
    /// XDP_REDIRECT in the driver, which AF_XDP needs in native mode.
    pub redirect: bool,
    /// The device can be a redirect target (ndo_xdp_xmit).
    pub ndo_xmit: bool,
    /// AF_XDP sockets can bind in zero-copy mode.
    pub xsk_zerocopy: bool,
    /// Offload of the program to the NIC itself.
    pub hw_offload: bool,
    /// Frames larger than one buffer (multi-buffer) on receive.
    pub rx_sg: bool,
    /// Buffers per zero-copy AF_XDP packet, when the driver says.
    pub zc_max_segs: Option<u32>,
}

/// One XDP program attached to the interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct XdpProgram {
    pub id: u32,
    /// Empty when it could not be read (bpf(2) needs privilege).
    pub name: String,
    /// "native", "generic", "offload", as the kernel reports the attachment.
    pub mode: String,
    /// Whether it is sluiced's redirect program (or somebody else's).
    pub ours: bool,
}

/// Facts of the host that IRQ pinning depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    pub cpus_online: usize,
    /// A running irqbalance, which rewrites IRQ affinities.
    pub irqbalance_pid: Option<u32>,
}

/// What the kernel tells about one interface.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NicInfo {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// IFF_UP: configured up.
    pub up: bool,
    /// IFF_RUNNING: up with a carrier.
    pub running: bool,
    /// /sys/class/net/IF/operstate ("up", "down", "unknown", ...).
    pub operstate: Option<String>,
    /// Link speed in Mb/s, when the driver knows it and the link is up.
    pub speed_mbps: Option<u32>,
    /// No device behind it (veth, bridge, loopback): no PCI address, no
    /// interrupts of its own.
    pub virtual_device: bool,
    pub driver: Option<DriverInfo>,
    pub channels: Option<ChannelCounts>,
    pub rings: Option<RingSizes>,
    pub ntuple: Option<Feature>,
    /// Flow-steering rules installed now (`ethtool -n`).
    pub ntuple_rules: Option<u32>,
    /// Entries of the RSS indirection table (`ethtool -x`); `None` when the
    /// driver has none to configure.
    pub rss_table: Option<u32>,
    /// Queues the kernel made for the device (/sys/class/net/IF/queues).
    pub rx_queues: Option<u32>,
    pub tx_queues: Option<u32>,
    pub irqs: Vec<Irq>,
    /// `None` when the kernel cannot tell (before 6.3, or no answer).
    pub xdp_features: Option<XdpSupport>,
    pub xdp_programs: Vec<XdpProgram>,
    pub host: Host,
    /// What could not be read, and why (shown after the rest).
    pub notes: Vec<String>,
}

impl NicInfo {
    /// The driver's name, or "" when it does not say.
    pub fn driver_name(&self) -> &str {
        self.driver.as_ref().map_or("", |d| d.driver.as_str())
    }

    /// Channels that receive now: from ethtool, else the kernel's queues.
    pub fn rx_channels(&self) -> Option<u32> {
        self.channels
            .map(|c| c.rx_capable())
            .filter(|&n| n > 0)
            .or(self.rx_queues)
    }
}

/// Reads what the kernel tells about `iface`, in the calling thread's
/// network namespace.
pub fn inspect(iface: &str) -> Result<NicInfo, NicError> {
    let name = CString::new(iface)
        .map_err(|_| NicError::BadName(iface.to_owned(), "contains a NUL byte".into()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(NicError::NoSuchInterface(iface.to_owned()));
    }
    let e = ethtool::Ethtool::open().map_err(NicError::Socket)?;
    // The interface can vanish between the look-up and any query: that is
    // "no such interface" too, not an odd ioctl failure.
    let fail = |what: &'static str| {
        move |source: io::Error| {
            if source.raw_os_error() == Some(libc::ENODEV) {
                NicError::NoSuchInterface(iface.to_owned())
            } else {
                NicError::Query {
                    iface: iface.to_owned(),
                    what,
                    source,
                }
            }
        }
    };
    let flags = e.flags(iface).map_err(fail("SIOCGIFFLAGS"))?;
    let sys = Path::new("/sys/class/net").join(iface);
    // /sys shows the namespace it was mounted in, which need not be ours
    // (a thread that only called setns): then its entry of that name is
    // another device, and none of it may be used.
    let sys_ours = read_sys(&sys.join("ifindex")) == Some(ifindex.to_string());
    let sys_read = |file: &str| sys_ours.then(|| read_sys(&sys.join(file))).flatten();
    let mut info = NicInfo {
        name: iface.to_owned(),
        ifindex,
        mtu: e.mtu(iface).map_err(fail("SIOCGIFMTU"))?,
        up: flags & libc::IFF_UP as u32 != 0,
        running: flags & libc::IFF_RUNNING as u32 != 0,
        operstate: sys_read("operstate"),
        // Reading it fails (EINVAL) on a link that is down.
        speed_mbps: sys_read("speed")
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|&s| s > 0)
            .map(|s| s as u32),
        virtual_device: sys_ours && !sys.join("device").exists(),
        host: Host {
            cpus_online: irq::cpus_online(),
            irqbalance_pid: irq::irqbalance_pid(),
        },
        ..NicInfo::default()
    };
    // Drivers answer what they do not implement with odd errors too
    // (EINVAL, the kernel-internal ENOTSUPP): such an answer is a note,
    // and the rest of the report still comes.
    let notes = &mut info.notes;
    info.driver = optional(e.driver(iface), "ETHTOOL_GDRVINFO", iface, notes)?;
    info.channels = optional(e.channels(iface), "ETHTOOL_GCHANNELS", iface, notes)?;
    info.rings = optional(e.rings(iface), "ETHTOOL_GRINGPARAM", iface, notes)?;
    info.ntuple = optional(e.ntuple(iface), "ETHTOOL_GFEATURES", iface, notes)?;
    info.ntuple_rules = optional(e.ntuple_rules(iface), "ETHTOOL_GRXCLSRLCNT", iface, notes)?;
    info.rss_table = optional(e.rss_table(iface), "ETHTOOL_GRXFHINDIR", iface, notes)?;
    if !sys_ours {
        info.notes.push(format!(
            "{} is not this interface (/sys was mounted in another network namespace): \
             state, speed and queue counts unknown",
            sys.display()
        ));
    } else {
        match count_queues(&sys.join("queues")) {
            Ok((rx, tx)) => {
                info.rx_queues = Some(rx);
                info.tx_queues = Some(tx);
            }
            Err(err) => info.notes.push(format!(
                "cannot read {}: {err}",
                sys.join("queues").display()
            )),
        }
    }
    let bus = info
        .driver
        .as_ref()
        .map_or(String::new(), |d| d.bus_info.clone());
    let device = sys.join("device");
    info.irqs = irq::for_interface(iface, &bus, sys_ours.then_some(device.as_path()));
    let (features, programs) = xdp_details(ifindex, &mut info.notes);
    info.xdp_features = features;
    info.xdp_programs = programs;
    Ok(info)
}

/// The driver's XDP features and the programs attached to the interface.
/// What cannot be read becomes a note rather than an error: the rest of
/// the report is still worth having.
fn xdp_details(ifindex: u32, notes: &mut Vec<String>) -> (Option<XdpSupport>, Vec<XdpProgram>) {
    let features = match crate::netlink::xdp_features(ifindex) {
        Ok(Some(f)) => Some(XdpSupport {
            basic: f.basic(),
            redirect: f.redirect(),
            ndo_xmit: f.ndo_xmit(),
            xsk_zerocopy: f.xsk_zerocopy(),
            hw_offload: f.hw_offload(),
            rx_sg: f.rx_sg(),
            zc_max_segs: f.zc_max_segs,
        }),
        Ok(None) => None,
        Err(e) => {
            notes.push(format!("XDP features: {e}"));
            None
        }
    };
    let programs = match crate::bpf::xdp_state(ifindex) {
        Ok(attached) => attached
            .into_iter()
            .map(|a| XdpProgram {
                id: a.id,
                name: a.name,
                mode: a.mode.to_string(),
                ours: a.ours,
            })
            .collect(),
        // Names come from bpf(2), which needs CAP_SYS_ADMIN (or CAP_BPF);
        // the ids alone come from netlink, which needs nothing.
        Err(e) => match crate::netlink::link_xdp(ifindex) {
            Ok(link) => {
                if !link.programs.is_empty() {
                    notes.push(format!("XDP program names: {e} (run as root to see them)"));
                }
                link.programs
                    .into_iter()
                    .map(|(mode, id)| XdpProgram {
                        id,
                        name: String::new(),
                        mode: mode.to_string(),
                        ours: false,
                    })
                    .collect()
            }
            Err(e) => {
                notes.push(format!("attached XDP programs: {e}"));
                Vec::new()
            }
        },
    };
    (features, programs)
}

/// The answer of a query that may fail: the interface gone is an error,
/// anything else a note and no value.
fn optional<T>(
    r: io::Result<Option<T>>,
    what: &str,
    iface: &str,
    notes: &mut Vec<String>,
) -> Result<Option<T>, NicError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            Err(NicError::NoSuchInterface(iface.to_owned()))
        }
        Err(e) => {
            notes.push(format!("{what}: {e}"));
            Ok(None)
        }
    }
}

fn read_sys(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The number of `rx-N` and `tx-N` entries under /sys/class/net/IF/queues.
fn count_queues(dir: &Path) -> io::Result<(u32, u32)> {
    let (mut rx, mut tx) = (0, 0);
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("rx-") {
            rx += 1;
        } else if name.starts_with("tx-") {
            tx += 1;
        }
    }
    Ok((rx, tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_virtual_and_readable_without_privilege() {
        let lo = inspect("lo").unwrap();
        assert_eq!(lo.name, "lo");
        assert!(lo.ifindex > 0);
        assert_eq!(lo.mtu, 65536);
        assert!(lo.virtual_device);
        assert!(lo.irqs.is_empty());
        assert!(lo.host.cpus_online >= 1);
    }

    #[test]
    fn a_missing_interface_is_named_in_the_error() {
        let err = inspect("nosuchif0").unwrap_err();
        assert!(matches!(err, NicError::NoSuchInterface(_)));
        assert!(err.to_string().contains("\"nosuchif0\""), "{err}");
    }
}
