//! The SIOCETHTOOL ioctls `sluice nic` reads: driver, channels, rings,
//! features and the number of flow-steering rules.
//!
//! The structs below follow `include/uapi/linux/ethtool.h` field for field;
//! `#[repr(C)]` gives them the kernel's layout on the target. Only "get"
//! commands are used: they need no privilege, so `sluice nic show` works
//! for any user.
//!
//! A command the driver does not implement fails with EOPNOTSUPP; callers
//! see that as `Ok(None)`, since "this driver cannot tell" is an answer,
//! not an error.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETHTOOL_GRINGPARAM: u32 = 0x10;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GRXCLSRLCNT: u32 = 0x2e;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GRXFHINDIR: u32 = 0x38;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GFLAGS: u32 = 0x25;

/// String set of the netdev feature names (`ethtool -k`).
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// The legacy flag for ntuple filters (ETHTOOL_GFLAGS), used when the
/// feature strings cannot be read.
const ETH_FLAG_NTUPLE: u32 = 1 << 27;
/// The name of the ntuple feature in the ETH_SS_FEATURES string set.
const NTUPLE_FEATURE: &str = "rx-ntuple-filter";

#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
#[derive(Default)]
struct Channels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

#[repr(C)]
#[derive(Default)]
struct RingParam {
    cmd: u32,
    rx_max_pending: u32,
    rx_mini_max_pending: u32,
    rx_jumbo_max_pending: u32,
    tx_max_pending: u32,
    rx_pending: u32,
    rx_mini_pending: u32,
    rx_jumbo_pending: u32,
    tx_pending: u32,
}

#[repr(C)]
#[derive(Default)]
struct Value {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_rxfh_indir` with no room for the table: asked with
/// size 0, the kernel only writes the table's size.
#[repr(C)]
#[derive(Default)]
struct RxfhIndir {
    cmd: u32,
    size: u32,
}

/// `struct ethtool_sset_info` asking for exactly one string set, so its
/// trailing array has one element.
#[repr(C)]
#[derive(Default)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

/// `struct ethtool_flow_ext`.
#[repr(C)]
#[derive(Default)]
struct FlowExt {
    padding: [u8; 2],
    h_dest: [u8; 6],
    vlan_etype: u16,
    vlan_tci: u16,
    data: [u32; 2],
}

/// `struct ethtool_rx_flow_spec`; the two header unions are 52 bytes of
/// 4-byte alignment, which `[u32; 13]` reproduces.
#[repr(C)]
#[derive(Default)]
struct FlowSpec {
    flow_type: u32,
    h_u: [u32; 13],
    h_ext: FlowExt,
    m_u: [u32; 13],
    m_ext: FlowExt,
    ring_cookie: u64,
    location: u32,
}

/// `struct ethtool_rxnfc` without its trailing `rule_locs[]` (not needed
/// for counting rules; the kernel copies only the fixed part).
#[repr(C)]
#[derive(Default)]
struct Rxnfc {
    cmd: u32,
    flow_type: u32,
    data: u64,
    fs: FlowSpec,
    rule_cnt: u32,
}

// The kernel copies sizeof(struct ethtool_rxnfc) bytes in and out: a
// smaller struct here would let it write past ours.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Rxnfc>() == 192);
const _: () = assert!(std::mem::size_of::<DrvInfo>() == 196);

/// What ETHTOOL_GDRVINFO tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriverInfo {
    pub driver: String,
    pub version: String,
    pub firmware: String,
    pub bus_info: String,
}

/// Channel counts (ETHTOOL_GCHANNELS); 0 means the driver has no channels
/// of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelCounts {
    pub max_rx: u32,
    pub max_tx: u32,
    pub max_other: u32,
    pub max_combined: u32,
    pub rx: u32,
    pub tx: u32,
    pub other: u32,
    pub combined: u32,
}

impl ChannelCounts {
    /// Channels that receive: combined ones plus rx-only ones.
    pub fn rx_capable(&self) -> u32 {
        self.combined + self.rx
    }

    /// The most channels that can be set to receive.
    pub fn max_rx_capable(&self) -> u32 {
        self.max_combined + self.max_rx
    }
}

/// Descriptor ring sizes (ETHTOOL_GRINGPARAM), current and maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RingSizes {
    pub rx: u32,
    pub rx_max: u32,
    pub rx_mini: u32,
    pub rx_mini_max: u32,
    pub rx_jumbo: u32,
    pub rx_jumbo_max: u32,
    pub tx: u32,
    pub tx_max: u32,
}

/// One netdev feature: whether it is on, and whether it can be switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    pub enabled: bool,
    /// `false` for a feature the driver fixes ("[fixed]" in `ethtool -k`).
    /// `None` when only the legacy flags could be read, which do not say.
    pub changeable: Option<bool>,
}

/// An AF_INET datagram socket: the handle SIOCETHTOOL and the SIOCGIF*
/// ioctls go through (any socket of the namespace would do; this one needs
/// no privilege).
pub struct Ethtool {
    fd: OwnedFd,
}

impl Ethtool {
    pub fn open() -> io::Result<Ethtool> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(Ethtool {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// An ifreq naming `iface`, the rest zeroed.
    fn ifreq(iface: &str) -> io::Result<libc::ifreq> {
        let name = CString::new(iface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        let bytes = name.as_bytes();
        if bytes.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name longer than 15 bytes",
            ));
        }
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        Ok(req)
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid ifreq for the duration of the call; the
        // requests used here read the name and write only inside the ifreq
        // or inside the buffer its ifr_data points to, which the caller
        // keeps alive and sized for the command.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, req as *mut libc::ifreq) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// SIOCETHTOOL with `cmd` (whose first field is the command number) as
    /// ifr_data.
    fn ethtool<T>(&self, iface: &str, cmd: &mut T) -> io::Result<()> {
        let mut req = Self::ifreq(iface)?;
        req.ifr_ifru.ifru_data = (cmd as *mut T).cast();
        self.ioctl(libc::SIOCETHTOOL as _, &mut req)
    }

    /// SIOCETHTOOL over a buffer of 32-bit words, for the commands whose
    /// struct ends in an array sized at run time.
    fn ethtool_words(&self, iface: &str, words: &mut [u32]) -> io::Result<()> {
        let mut req = Self::ifreq(iface)?;
        req.ifr_ifru.ifru_data = words.as_mut_ptr().cast();
        self.ioctl(libc::SIOCETHTOOL as _, &mut req)
    }

    /// The MTU (SIOCGIFMTU).
    pub fn mtu(&self, iface: &str) -> io::Result<u32> {
        let mut req = Self::ifreq(iface)?;
        self.ioctl(libc::SIOCGIFMTU as _, &mut req)?;
        // SAFETY: SIOCGIFMTU filled the ifru_mtu member.
        Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
    }

    /// The interface flags (SIOCGIFFLAGS): IFF_UP, IFF_RUNNING, ...
    pub fn flags(&self, iface: &str) -> io::Result<u32> {
        let mut req = Self::ifreq(iface)?;
        self.ioctl(libc::SIOCGIFFLAGS as _, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the ifru_flags member.
        Ok(unsafe { req.ifr_ifru.ifru_flags } as u16 as u32)
    }

    pub fn driver(&self, iface: &str) -> io::Result<Option<DriverInfo>> {
        // SAFETY: DrvInfo is plain old data; all-zero is valid.
        let mut d: DrvInfo = unsafe { std::mem::zeroed() };
        d.cmd = ETHTOOL_GDRVINFO;
        if unsupported(self.ethtool(iface, &mut d))? {
            return Ok(None);
        }
        Ok(Some(DriverInfo {
            driver: c_text(&d.driver),
            version: c_text(&d.version),
            firmware: c_text(&d.fw_version),
            bus_info: c_text(&d.bus_info),
        }))
    }

    pub fn channels(&self, iface: &str) -> io::Result<Option<ChannelCounts>> {
        let mut c = Channels {
            cmd: ETHTOOL_GCHANNELS,
            ..Default::default()
        };
        if unsupported(self.ethtool(iface, &mut c))? {
            return Ok(None);
        }
        Ok(Some(ChannelCounts {
            max_rx: c.max_rx,
            max_tx: c.max_tx,
            max_other: c.max_other,
            max_combined: c.max_combined,
            rx: c.rx_count,
            tx: c.tx_count,
            other: c.other_count,
            combined: c.combined_count,
        }))
    }

    pub fn rings(&self, iface: &str) -> io::Result<Option<RingSizes>> {
        let mut r = RingParam {
            cmd: ETHTOOL_GRINGPARAM,
            ..Default::default()
        };
        if unsupported(self.ethtool(iface, &mut r))? {
            return Ok(None);
        }
        Ok(Some(RingSizes {
            rx: r.rx_pending,
            rx_max: r.rx_max_pending,
            rx_mini: r.rx_mini_pending,
            rx_mini_max: r.rx_mini_max_pending,
            rx_jumbo: r.rx_jumbo_pending,
            rx_jumbo_max: r.rx_jumbo_max_pending,
            tx: r.tx_pending,
            tx_max: r.tx_max_pending,
        }))
    }

    /// The number of ntuple (flow steering) rules installed
    /// (ETHTOOL_GRXCLSRLCNT); `None` for drivers without flow steering.
    pub fn ntuple_rules(&self, iface: &str) -> io::Result<Option<u32>> {
        let mut n = Rxnfc {
            cmd: ETHTOOL_GRXCLSRLCNT,
            ..Default::default()
        };
        if unsupported(self.ethtool(iface, &mut n))? {
            return Ok(None);
        }
        Ok(Some(n.rule_cnt))
    }

    /// The size of the RSS indirection table (ETHTOOL_GRXFHINDIR); `None`
    /// when the driver has no table to configure.
    pub fn rss_table(&self, iface: &str) -> io::Result<Option<u32>> {
        let mut r = RxfhIndir {
            cmd: ETHTOOL_GRXFHINDIR,
            size: 0,
        };
        if unsupported(self.ethtool(iface, &mut r))? {
            return Ok(None);
        }
        Ok(Some(r.size).filter(|&n| n > 0))
    }

    /// The ntuple feature ("rx-ntuple-filter"): from the feature strings
    /// and ETHTOOL_GFEATURES, which also tell whether it can be switched
    /// on; failing that, from the legacy ETHTOOL_GFLAGS.
    pub fn ntuple(&self, iface: &str) -> io::Result<Option<Feature>> {
        if let Some(f) = self.feature(iface, NTUPLE_FEATURE)? {
            return Ok(Some(f));
        }
        let mut v = Value {
            cmd: ETHTOOL_GFLAGS,
            data: 0,
        };
        if unsupported(self.ethtool(iface, &mut v))? {
            return Ok(None);
        }
        Ok(Some(Feature {
            enabled: v.data & ETH_FLAG_NTUPLE != 0,
            changeable: None,
        }))
    }

    /// One feature by name; `None` when the kernel's feature strings do not
    /// name it or cannot be read.
    fn feature(&self, iface: &str, name: &str) -> io::Result<Option<Feature>> {
        let names = match self.strings(iface, ETH_SS_FEATURES)? {
            Some(n) => n,
            None => return Ok(None),
        };
        let Some(bit) = names.iter().position(|n| n == name) else {
            return Ok(None);
        };
        // Enough 32-bit blocks for every named feature; the kernel writes
        // at most as many as `size` says.
        let blocks = names.len().div_ceil(32);
        let mut words = vec![0u32; 2 + 4 * blocks];
        words[0] = ETHTOOL_GFEATURES;
        words[1] = blocks as u32;
        if unsupported(self.ethtool_words(iface, &mut words))? {
            return Ok(None);
        }
        // Each block: available, requested, active, never_changed.
        let block = &words[2 + 4 * (bit / 32)..][..4];
        let mask = 1u32 << (bit % 32);
        Ok(Some(Feature {
            enabled: block[2] & mask != 0,
            changeable: Some(block[0] & mask != 0),
        }))
    }

    /// The strings of one string set (ETHTOOL_GSSET_INFO for its length,
    /// then ETHTOOL_GSTRINGS).
    fn strings(&self, iface: &str, set: u32) -> io::Result<Option<Vec<String>>> {
        let mut info = SsetInfo {
            cmd: ETHTOOL_GSSET_INFO,
            sset_mask: 1 << set,
            ..Default::default()
        };
        if unsupported(self.ethtool(iface, &mut info))? {
            return Ok(None);
        }
        // The kernel clears the bits of sets it does not have.
        if info.sset_mask & (1 << set) == 0 {
            return Ok(None);
        }
        let count = info.data[0] as usize;
        let mut words = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
        words[0] = ETHTOOL_GSTRINGS;
        words[1] = set;
        words[2] = count as u32;
        if unsupported(self.ethtool_words(iface, &mut words))? {
            return Ok(None);
        }
        let count = (words[2] as usize).min(count);
        let bytes: Vec<u8> = words[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(Some(
            bytes
                .chunks(ETH_GSTRING_LEN)
                .take(count)
                .map(c_text)
                .collect(),
        ))
    }
}

/// `Ok(true)` when the driver does not implement the command.
fn unsupported(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(true),
        Err(e) => Err(e),
    }
}

/// A NUL-terminated (or full) C string field as text.
fn c_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_the_ioctls_that_need_no_driver() {
        let e = Ethtool::open().unwrap();
        assert_eq!(e.mtu("lo").unwrap(), 65536);
        assert_ne!(e.flags("lo").unwrap() & libc::IFF_LOOPBACK as u32, 0);
        // The feature strings are the core's, present on every device.
        let ntuple = e.ntuple("lo").unwrap().expect("lo has features");
        assert!(!ntuple.enabled);
        assert_eq!(ntuple.changeable, Some(false));
    }

    #[test]
    fn a_missing_interface_is_an_error_not_unsupported() {
        let e = Ethtool::open().unwrap();
        let err = e.driver("nosuchif0").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn c_text_stops_at_the_first_nul() {
        assert_eq!(c_text(b"veth\0\0junk"), "veth");
        assert_eq!(c_text(b"full"), "full");
    }
}
