//! A minimal netlink client: just enough rtnetlink to see and change an
//! interface's XDP programs, and generic netlink's "netdev" family to read
//! what XDP features a driver has.
//!
//! Messages are built and parsed here (nlmsghdr, ifinfomsg, genlmsghdr,
//! nested attributes), one request at a time, each acknowledged: every
//! request carries NLM_F_ACK, so the kernel always ends its answer with an
//! NLMSG_ERROR whose code is 0 (done) or the errno. Extended acks are
//! requested, so a refusal comes with the kernel's reason text (e.g.
//! "Can't replace active BPF XDP link"), kept in a [`NetlinkError`]; the
//! errno stays reachable through [`errno`].
//!
//! Sockets belong to the network namespace of the thread that opens them,
//! so these functions see the interfaces of the calling thread's namespace.

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// --- Constants from the uapi headers (linux/netlink.h, rtnetlink.h,
// if_link.h, genetlink.h, netdev.h). ---

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
/// In an ack: the original request was cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an ack: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP |
/// NUD_PERMANENT: an entry whose address can be used.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_FAMILY_VERSION: u8 = 1;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;

/// XDP attach flags (`XDP_FLAGS_*`), for [`set_link_xdp_fd`] and
/// BPF_LINK_CREATE.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
pub const XDP_FLAGS_HW_MODE: u32 = 8;

/// How a program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// In the driver ("drv", native XDP).
    Native,
    /// After the driver, on socket buffers ("skb", generic XDP).
    Generic,
    /// Offloaded to the NIC ("hw").
    Offload,
}

impl AttachMode {
    /// The XDP_FLAGS_* mode bit that names this mode.
    pub fn flags(self) -> u32 {
        match self {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
            AttachMode::Offload => XDP_FLAGS_HW_MODE,
        }
    }

    /// The `ip link set dev IF <word> off` keyword for this mode.
    pub fn ip_keyword(self) -> &'static str {
        match self {
            AttachMode::Native => "xdpdrv",
            AttachMode::Generic => "xdpgeneric",
            AttachMode::Offload => "xdpoffload",
        }
    }
}

impl AttachMode {
    /// "native", "generic" or "offload".
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offload => "offload",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The XDP programs on an interface, one per mode at most.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkXdp {
    /// (mode, program id). Whether a bpf_link holds a program is not
    /// visible here.
    pub programs: Vec<(AttachMode, u32)>,
}

/// A refusal from the kernel: the errno and, when the kernel gave one, its
/// extended-ack text.
#[derive(Debug, Clone)]
pub struct NetlinkError {
    pub errno: i32,
    pub op: &'static str,
    pub message: Option<String>,
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.op,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if let Some(m) = &self.message {
            write!(f, " (kernel: {m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetlinkError {}

impl NetlinkError {
    fn into_io(self) -> io::Error {
        let kind = io::Error::from_raw_os_error(self.errno).kind();
        io::Error::new(kind, self)
    }
}

/// The errno behind an error from this module (or any OS error).
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<NetlinkError>())
            .map(|n| n.errno)
    })
}

/// RTM_GETLINK for `ifindex`: its XDP programs, by mode.
pub fn link_xdp(ifindex: u32) -> io::Result<LinkXdp> {
    let mut sock = Socket::open(libc::NETLINK_ROUTE)?;
    let mut msg = Msg::new(RTM_GETLINK, 0);
    msg.put(&ifinfomsg(ifindex));
    let replies = sock.request(msg, "RTM_GETLINK")?;
    let reply = replies
        .iter()
        .find(|(ty, _)| *ty == RTM_NEWLINK)
        .ok_or_else(|| io::Error::other("RTM_GETLINK: no RTM_NEWLINK in the answer"))?;
    let body = reply.1.get(IFINFOMSG_LEN..).unwrap_or_default();
    let mut out = LinkXdp::default();
    let Some(xdp) = attrs(body).find(|(ty, _)| *ty == IFLA_XDP).map(|(_, v)| v) else {
        return Ok(out);
    };
    let (mut attached, mut prog_id) = (0u8, 0u32);
    for (ty, v) in attrs(xdp) {
        let mode = match ty {
            IFLA_XDP_ATTACHED => {
                attached = v.first().copied().unwrap_or(0);
                continue;
            }
            IFLA_XDP_PROG_ID => {
                prog_id = read_u32(v).unwrap_or(0);
                continue;
            }
            IFLA_XDP_DRV_PROG_ID => AttachMode::Native,
            IFLA_XDP_SKB_PROG_ID => AttachMode::Generic,
            IFLA_XDP_HW_PROG_ID => AttachMode::Offload,
            _ => continue,
        };
        if let Some(id) = read_u32(v).filter(|&id| id != 0) {
            out.programs.push((mode, id));
        }
    }
    // Kernels before the per-mode ids (4.19) give one mode and one id.
    if out.programs.is_empty() && prog_id != 0 {
        let mode = match attached {
            XDP_ATTACHED_DRV => Some(AttachMode::Native),
            XDP_ATTACHED_SKB => Some(AttachMode::Generic),
            XDP_ATTACHED_HW => Some(AttachMode::Offload),
            _ => None,
        };
        out.programs.extend(mode.map(|m| (m, prog_id)));
    }
    Ok(out)
}

/// RTM_SETLINK with IFLA_XDP { FD, FLAGS }: attaches `prog_fd` to
/// `ifindex` (the old netlink way, which stays until removed), or with
/// `prog_fd` -1 removes the program of the mode in `flags` (no mode bit:
/// native if the driver has it, else generic). A program held by a
/// bpf_link cannot be removed this way: EBUSY.
pub fn set_link_xdp_fd(ifindex: u32, prog_fd: i32, flags: u32) -> io::Result<()> {
    let mut sock = Socket::open(libc::NETLINK_ROUTE)?;
    let mut msg = Msg::new(RTM_SETLINK, 0);
    msg.put(&ifinfomsg(ifindex));
    let nest = msg.nest_start(IFLA_XDP);
    msg.attr(IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    if flags != 0 {
        msg.attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    }
    msg.nest_end(nest);
    sock.request(msg, "RTM_SETLINK IFLA_XDP").map(drop)
}

/// Where the kernel would send a packet to `to` (RTM_GETROUTE): the
/// route's gateway (None when `to` is on the link) and output interface.
pub fn route_to(to: IpAddr) -> io::Result<(Option<IpAddr>, u32)> {
    let mut sock = Socket::open(libc::NETLINK_ROUTE)?;
    let mut msg = Msg::new(RTM_GETROUTE, 0);
    let (family, bytes) = family_and_bytes(to);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags (u32).
    let mut rtmsg = [0u8; 12];
    rtmsg[0] = family;
    rtmsg[1] = (bytes.len() * 8) as u8;
    msg.put(&rtmsg);
    msg.attr(RTA_DST, &bytes);
    let replies = sock.request(msg, "RTM_GETROUTE")?;
    let (_, body) = replies
        .iter()
        .find(|(ty, _)| *ty == RTM_NEWROUTE)
        .ok_or_else(|| io::Error::other("RTM_GETROUTE: no RTM_NEWROUTE in the answer"))?;
    let (mut gateway, mut oif) = (None, 0);
    for (ty, v) in attrs(body.get(rtmsg.len()..).unwrap_or_default()) {
        match ty {
            RTA_GATEWAY => gateway = ip_from(v),
            RTA_OIF => oif = read_u32(v).unwrap_or(0),
            _ => {}
        }
    }
    Ok((gateway, oif))
}

/// The link-layer address the kernel holds for `ip` on `ifindex`
/// (RTM_GETNEIGH), if its entry is usable; None while unresolved or absent.
pub fn neighbour(ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
    let mut sock = Socket::open(libc::NETLINK_ROUTE)?;
    let mut msg = Msg::new(RTM_GETNEIGH, 0);
    let (family, bytes) = family_and_bytes(ip);
    // struct ndmsg: family, pad, pad (u16), ifindex (i32), state (u16),
    // flags, type.
    let mut ndmsg = [0u8; 12];
    ndmsg[0] = family;
    ndmsg[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    msg.put(&ndmsg);
    msg.attr(NDA_DST, &bytes);
    let replies = match sock.request(msg, "RTM_GETNEIGH") {
        Ok(r) => r,
        Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some((_, body)) = replies.iter().find(|(ty, _)| *ty == RTM_NEWNEIGH) else {
        return Ok(None);
    };
    let state = read_u16(body.get(8..).unwrap_or_default()).unwrap_or(0);
    if state & NUD_VALID == 0 {
        return Ok(None);
    }
    let mac = attrs(body.get(ndmsg.len()..).unwrap_or_default())
        .find(|(ty, _)| *ty == NDA_LLADDR)
        .and_then(|(_, v)| <[u8; 6]>::try_from(v).ok());
    Ok(mac)
}

fn family_and_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// What a driver says it can do with XDP (NETDEV_A_DEV_XDP_FEATURES, the
/// `NETDEV_XDP_ACT_*` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpFeatures {
    pub bits: u64,
    /// Fragments per zero-copy AF_XDP packet the driver takes, when it
    /// reports it.
    pub zc_max_segs: Option<u32>,
}

const FEATURE_NAMES: [(u64, &str); 7] = [
    (1, "basic"),
    (2, "redirect"),
    (4, "ndo-xmit"),
    (8, "xsk-zerocopy"),
    (16, "hw-offload"),
    (32, "rx-sg"),
    (64, "ndo-xmit-sg"),
];

impl XdpFeatures {
    /// XDP_ABORTED, DROP, PASS and TX.
    pub fn basic(&self) -> bool {
        self.bits & 1 != 0
    }
    /// XDP_REDIRECT (what AF_XDP receive needs).
    pub fn redirect(&self) -> bool {
        self.bits & 2 != 0
    }
    /// Can be the target of a redirect (ndo_xdp_xmit).
    pub fn ndo_xmit(&self) -> bool {
        self.bits & 4 != 0
    }
    /// AF_XDP zero-copy.
    pub fn xsk_zerocopy(&self) -> bool {
        self.bits & 8 != 0
    }
    pub fn hw_offload(&self) -> bool {
        self.bits & 16 != 0
    }
    /// Multi-buffer (jumbo) frames on receive.
    pub fn rx_sg(&self) -> bool {
        self.bits & 32 != 0
    }
    pub fn ndo_xmit_sg(&self) -> bool {
        self.bits & 64 != 0
    }

    /// Names of the bits set (unknown bits as hex).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| self.bits & bit != 0)
            .map(|(_, n)| (*n).to_owned())
            .collect();
        let unknown = self.bits & !127;
        if unknown != 0 {
            out.push(format!("{unknown:#x}"));
        }
        out
    }
}

impl fmt::Display for XdpFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")?;
        } else {
            f.write_str(&names.join(" "))?;
        }
        if let Some(n) = self.zc_max_segs {
            write!(f, " (zc-max-segs {n})")?;
        }
        Ok(())
    }
}

/// The driver's XDP features from generic netlink's "netdev" family, or
/// `None` when the kernel has no such family (before 6.3).
pub fn xdp_features(ifindex: u32) -> io::Result<Option<XdpFeatures>> {
    let mut sock = Socket::open(libc::NETLINK_GENERIC)?;
    let Some(family) = genl_family(&mut sock, "netdev")? else {
        return Ok(None);
    };
    let mut msg = Msg::new(family, 0);
    msg.put(&genlmsghdr(NETDEV_CMD_DEV_GET, NETDEV_FAMILY_VERSION));
    msg.attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
    let replies = sock.request(msg, "netdev DEV_GET")?;
    let reply = replies
        .iter()
        .find(|(ty, _)| *ty == family)
        .ok_or_else(|| io::Error::other("netdev DEV_GET: no answer"))?;
    let mut out = XdpFeatures {
        bits: 0,
        zc_max_segs: None,
    };
    for (ty, v) in attrs(reply.1.get(GENLMSGHDR_LEN..).unwrap_or_default()) {
        match ty {
            NETDEV_A_DEV_XDP_FEATURES => out.bits = read_u64(v).unwrap_or(0),
            NETDEV_A_DEV_XDP_ZC_MAX_SEGS => out.zc_max_segs = read_u32(v),
            _ => {}
        }
    }
    Ok(Some(out))
}

/// CTRL_CMD_GETFAMILY: the id of generic netlink family `name`, `None` if
/// the kernel does not have it.
fn genl_family(sock: &mut Socket, name: &str) -> io::Result<Option<u16>> {
    let mut msg = Msg::new(GENL_ID_CTRL, 0);
    msg.put(&genlmsghdr(CTRL_CMD_GETFAMILY, 1));
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    msg.attr(CTRL_ATTR_FAMILY_NAME, &cname);
    let replies = match sock.request(msg, "CTRL_CMD_GETFAMILY") {
        Ok(r) => r,
        Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(replies.iter().find_map(|(_, body)| {
        attrs(body.get(GENLMSGHDR_LEN..)?)
            .find(|(ty, _)| *ty == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
    }))
}

// --- Message building. ---

const NLMSGHDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const GENLMSGHDR_LEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `struct ifinfomsg` naming one interface (family AF_UNSPEC, no flag
/// changes).
fn ifinfomsg(ifindex: u32) -> [u8; IFINFOMSG_LEN] {
    let mut b = [0u8; IFINFOMSG_LEN];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

fn genlmsghdr(cmd: u8, version: u8) -> [u8; GENLMSGHDR_LEN] {
    [cmd, version, 0, 0]
}

/// One netlink message under construction: header, family header,
/// attributes, each padded to 4 bytes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; NLMSGHDR_LEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg { buf }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.put(value);
    }

    /// Starts a nested attribute; its length is written by `nest_end`.
    fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.attr(ty | NLA_F_NESTED, &[]);
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

// --- Parsing. ---

fn read_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?))
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?))
}

/// The attributes in `buf`: (type without the nested/byte-order flags,
/// payload). Stops at the first malformed one rather than trusting it.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = read_u16(buf)? as usize;
        let ty = read_u16(buf.get(2..)?)? & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = buf.get(align4(len)..).unwrap_or_default();
        Some((ty, value))
    })
}

/// Header fields of one received message we care about.
struct Header {
    ty: u16,
    flags: u16,
    seq: u32,
}

/// The messages in one datagram: (header, payload after the header).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (Header, &[u8])> {
    std::iter::from_fn(move || {
        let len = read_u32(buf)? as usize;
        if len < NLMSGHDR_LEN || len > buf.len() {
            return None;
        }
        let h = Header {
            ty: read_u16(&buf[4..])?,
            flags: read_u16(&buf[6..])?,
            seq: read_u32(&buf[8..])?,
        };
        let body = &buf[NLMSGHDR_LEN..len];
        buf = buf.get(align4(len)..).unwrap_or_default();
        Some((h, body))
    })
}

/// The errno and extended-ack text of an NLMSG_ERROR payload (errno 0 is
/// an ack).
fn parse_error(flags: u16, body: &[u8]) -> (i32, Option<String>) {
    let errno = read_u32(body).map(|e| -(e as i32)).unwrap_or(libc::EPROTO);
    if flags & NLM_F_ACK_TLVS == 0 {
        return (errno, None);
    }
    // After the errno comes the request's header, and its payload too
    // unless the kernel capped it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSGHDR_LEN
    } else {
        body.get(4..)
            .and_then(read_u32)
            .map_or(NLMSGHDR_LEN, |l| align4(l as usize))
    };
    let message = body
        .get(4 + echoed..)
        .and_then(|tlvs| attrs(tlvs).find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG))
        .map(|(_, v)| {
            let v = v.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(v).into_owned()
        });
    (errno, message)
}

// --- The socket. ---

struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open(protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Reason texts, and acks without our request echoed back: both
        // best effort (kernels before 4.12 lack them).
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // SAFETY: an int option of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        // The kernel answers synchronously; a timeout only guards against
        // a bug here turning into a hang.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a timeval option of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // A time-based sequence start, so answers to an earlier socket
        // with the same port id could never be taken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() | 1);
        Ok(Socket { fd, seq })
    }

    /// Sends `msg` and collects the answer up to the kernel's ack:
    /// (message type, payload) of every message before it.
    fn request(&mut self, msg: Msg, op: &'static str) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = msg.finish(seq);
        // SAFETY: an all-zero sockaddr_nl is valid; we set the family.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buf and the address outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        // Each datagram holds one or more messages; a well-behaved kernel
        // ends within a handful. The bound turns a parser bug into an
        // error instead of a loop.
        for _ in 0..1024 {
            let dgram = self.recv()?;
            for (h, body) in messages(&dgram) {
                if h.seq != seq {
                    continue;
                }
                match h.ty {
                    NLMSG_ERROR => {
                        let (errno, message) = parse_error(h.flags, body);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError { errno, op, message }.into_io());
                    }
                    NLMSG_DONE => return Ok(out),
                    ty => out.push((ty, body.to_vec())),
                }
            }
        }
        Err(io::Error::other(format!("{op}: no ack from the kernel")))
    }

    /// One datagram, whatever its size (a link with many VFs answers with
    /// tens of KiB): peek at its length first.
    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut probe = [0u8; 1];
        loop {
            // SAFETY: MSG_TRUNC makes recv return the full length while
            // writing at most the 1 byte we give it.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    probe.as_mut_ptr().cast(),
                    probe.len(),
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut buf = vec![0u8; n as usize];
            // SAFETY: buf has room for n bytes.
            let got =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.truncate(got as usize);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_with_nested_attribute() {
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.put(&ifinfomsg(7));
        let n = m.nest_start(IFLA_XDP);
        m.attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
        m.attr(IFLA_XDP_FLAGS, &2u32.to_ne_bytes());
        m.nest_end(n);
        let b = m.finish(42);
        assert_eq!(b.len(), 16 + 16 + 4 + 8 + 8);
        let (h, body) = messages(&b).next().unwrap();
        assert_eq!((h.ty, h.seq), (RTM_SETLINK, 42));
        assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(read_u32(&body[4..]), Some(7));
        let (ty, xdp) = attrs(&body[16..]).next().unwrap();
        assert_eq!(ty, IFLA_XDP);
        let inner: Vec<_> = attrs(xdp).collect();
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[0], (IFLA_XDP_FD, &(-1i32).to_ne_bytes()[..]));
        assert_eq!(inner[1].0, IFLA_XDP_FLAGS);
    }

    #[test]
    fn malformed_attributes_stop_parsing() {
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[200, 0, 1, 0, 0, 0]).count(), 0);
        assert_eq!(attrs(&[5, 0, 1, 0, 9]).count(), 1);
    }

    #[test]
    fn features_display() {
        let f = XdpFeatures {
            bits: 1 | 2 | 4 | 32 | 64,
            zc_max_segs: Some(1),
        };
        assert!(f.redirect() && !f.xsk_zerocopy());
        assert_eq!(
            f.to_string(),
            "basic redirect ndo-xmit rx-sg ndo-xmit-sg (zc-max-segs 1)"
        );
    }

    #[test]
    fn error_with_extended_ack() {
        // errno -16, capped header, then NLMSGERR_ATTR_MSG "busy\0".
        let mut body = (-16i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; 16]);
        body.extend_from_slice(&[9, 0, 1, 0, b'b', b'u', b's', b'y', 0, 0, 0, 0]);
        let (e, m) = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &body);
        assert_eq!(e, 16);
        assert_eq!(m.as_deref(), Some("busy"));
        let err = NetlinkError {
            errno: e,
            op: "x",
            message: m,
        }
        .into_io();
        assert_eq!(errno(&err), Some(libc::EBUSY));
    }
}
