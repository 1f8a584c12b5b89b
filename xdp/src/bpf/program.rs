//! The redirect program: its instructions, loading it (with the verifier's
//! log on refusal), its XSKMAP, and running it on test frames.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::insn::*;
use super::sys::{self, xdp_md, XdpMd};
use super::{BpfError, XDP_ABORTED, XDP_PASS, XDP_TX};

/// The name every sluice redirect program is loaded with: how a program
/// left on an interface is recognised as ours.
pub const PROGRAM_NAME: &str = "sluice_redirect";

/// Most UDP ports one program matches (each costs one compare).
pub const MAX_PORTS: usize = 8;

/// The helper `long bpf_redirect_map(map, key, flags)`.
const BPF_FUNC_REDIRECT_MAP: i32 = 51;

/// The verifier log on a failed load: enough for programs of our size; a
/// longer log keeps its tail (the kernel rotates it), where the reason is.
const LOG_SIZE: usize = 64 * 1024;

const LICENSE: &CStr = c"GPL";

// Frame layout.
const ETH_HLEN: i32 = 14;
const ETH_TYPE: i16 = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_MIN: i32 = 20;
const IPV6_LEN: i32 = 40;
const UDP_LEN: i32 = 8;
const IPPROTO_UDP: i32 = 17;

/// The value a host-order 16-bit load of big-endian (network) bytes gives:
/// the program compares loaded fields against these, so it needs no byte
/// swaps and works on either host byte order.
fn net16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// The redirect program's instructions: UDP to one of `ports` →
/// `bpf_redirect_map(xskmap, rx_queue_index, miss)`; anything else →
/// XDP_PASS.
///
/// Registers: R6 the context (kept across the checks), R2/R3 the packet
/// start/end, R7 the UDP header, R4/R5 scratch. Every load from the packet
/// comes after a comparison of (pointer + bytes needed) with data_end; the
/// verifier insists, and a runt must not be read past its end anyway.
pub fn redirect_insns(ports: &[u16], map_fd: RawFd, miss: u32) -> Result<Vec<Insn>, String> {
    let mut a = Asm::new();
    let pass = a.label();
    let ipv6 = a.label();
    let port = a.label();
    let hit = a.label();

    a.push(mov64_reg(R6, R1));
    a.push(ldx_w(R2, R6, xdp_md::DATA));
    a.push(ldx_w(R3, R6, xdp_md::DATA_END));

    // Ethernet without a VLAN tag (a tagged frame's type is 0x8100: it
    // passes like any other non-IP type).
    a.push(mov64_reg(R4, R2)).push(add64_imm(R4, ETH_HLEN));
    a.jmp_reg(Jmp::Gt, R4, R3, pass);
    a.push(ldx_h(R5, R2, ETH_TYPE));
    a.jmp_imm(Jmp::Ne, R5, net16(ETH_P_IP), ipv6);

    // IPv4: the fixed 20 bytes, then version 4, IHL >= 5, UDP, and not a
    // fragment (MF clear, offset 0; only a first, whole datagram carries
    // the UDP header, and reassembly is the kernel's job).
    let ip = ETH_HLEN as i16;
    a.push(mov64_reg(R4, R2))
        .push(add64_imm(R4, ETH_HLEN + IPV4_MIN));
    a.jmp_reg(Jmp::Gt, R4, R3, pass);
    a.push(ldx_b(R5, R2, ip));
    a.push(mov64_reg(R4, R5)).push(alu64_imm(Alu::Rsh, R4, 4));
    a.jmp_imm(Jmp::Ne, R4, 4, pass);
    a.push(ldx_b(R4, R2, ip + 9));
    a.jmp_imm(Jmp::Ne, R4, IPPROTO_UDP, pass);
    a.push(ldx_h(R4, R2, ip + 6));
    a.push(alu64_imm(Alu::And, R4, net16(0x3fff)));
    a.jmp_imm(Jmp::Ne, R4, 0, pass);
    // Header length in bytes: the verifier needs the scalar bounded
    // (5..=15 words, so 20..=60) before it is added to a packet pointer.
    a.push(alu64_imm(Alu::And, R5, 0xf));
    a.jmp_imm(Jmp::Lt, R5, 5, pass);
    a.push(alu64_imm(Alu::Lsh, R5, 2));
    // R7 = UDP header; check it lies inside the frame after the
    // variable-length IP header (a check before it proves nothing here).
    a.push(mov64_reg(R7, R2)).push(add64_reg(R7, R5));
    a.push(add64_imm(R7, ETH_HLEN));
    a.push(mov64_reg(R4, R7)).push(add64_imm(R4, UDP_LEN));
    a.jmp_reg(Jmp::Gt, R4, R3, pass);
    a.push(ldx_h(R5, R7, 2));
    a.ja(port);

    // IPv6: UDP as the first next header only. Extension headers and
    // fragments go to the kernel: rare on a data path, and walking them
    // would need a bounded loop for little gain.
    a.bind(ipv6);
    a.jmp_imm(Jmp::Ne, R5, net16(ETH_P_IPV6), pass);
    a.push(mov64_reg(R4, R2));
    a.push(add64_imm(R4, ETH_HLEN + IPV6_LEN + UDP_LEN));
    a.jmp_reg(Jmp::Gt, R4, R3, pass);
    a.push(ldx_b(R4, R2, ip)).push(alu64_imm(Alu::Rsh, R4, 4));
    a.jmp_imm(Jmp::Ne, R4, 6, pass);
    a.push(ldx_b(R4, R2, ip + 6));
    a.jmp_imm(Jmp::Ne, R4, IPPROTO_UDP, pass);
    a.push(ldx_h(R5, R2, ip + IPV6_LEN as i16 + 2));

    // R5 = UDP destination port, as loaded.
    a.bind(port);
    for &p in ports {
        a.jmp_imm(Jmp::Eq, R5, net16(p), hit);
    }

    a.bind(pass);
    a.push(mov64_imm(R0, XDP_PASS as i32)).push(exit());

    // The XSKMAP entry for this receive queue: XDP_REDIRECT if a socket is
    // there, else `miss` (the helper returns its flags' action bits).
    a.bind(hit);
    a.push(ldx_w(R2, R6, xdp_md::RX_QUEUE_INDEX));
    a.extend(ld_map_fd(R1, map_fd));
    a.push(mov64_imm(R3, miss as i32));
    a.push(call(BPF_FUNC_REDIRECT_MAP));
    a.push(exit());

    a.finish()
}

/// A loaded XDP program: its fd (the program lives while it is open, or
/// while attached) and identity.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
    id: u32,
    name: String,
}

/// Loads `insns` as an XDP program named `name` (at most 15 bytes of
/// `[A-Za-z0-9_.]`, as the kernel demands). On refusal the verifier's log
/// is in [`BpfError::Verifier`].
pub fn load_raw(name: &str, insns: &[Insn]) -> Result<Program, BpfError> {
    if name.len() >= sys::BPF_OBJ_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(BpfError::Invalid(format!(
            "program name {name:?}: at most 15 characters of A-Z a-z 0-9 _ ."
        )));
    }
    if insns.is_empty() {
        return Err(BpfError::Invalid("program without instructions".into()));
    }
    // First without a log: the verifier runs faster without writing one,
    // and a good program needs none.
    let first = match sys::prog_load_xdp(insns, name, LICENSE, 0, &mut []) {
        Ok(fd) => return Program::new(fd, name),
        Err(e) => e,
    };
    let errno = first.raw_os_error().unwrap_or(0);
    let mut log = vec![0u8; LOG_SIZE];
    let retry = sys::prog_load_xdp(insns, name, LICENSE, 1, &mut log);
    if let Ok(fd) = retry {
        // Refused once, accepted with a log: only if memory was short.
        return Program::new(fd, name);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).trim_end().to_owned();
    if text.is_empty() {
        // Not the verifier: no permission, bad attributes, no memory.
        return Err(BpfError::sys(
            format!("loading XDP program {name:?} (BPF_PROG_LOAD)"),
            first,
        ));
    }
    Err(BpfError::Verifier {
        name: name.to_owned(),
        errno,
        log: text,
    })
}

impl Program {
    fn new(fd: OwnedFd, name: &str) -> Result<Program, BpfError> {
        let info = sys::prog_info(fd.as_raw_fd())
            .map_err(|e| BpfError::sys("BPF_OBJ_GET_INFO_BY_FD of a new program", e))?;
        Ok(Program {
            fd,
            id: info.id,
            name: name.to_owned(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel's id for the program (what `ip link`, `bpftool` and
    /// netlink show).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the program once on `frame` as if it arrived on receive queue
    /// `rx_queue` (see [`Program::test_run_on`]): the XDP action it
    /// returns. With `rx_queue` != 0 the kernel wants a real interface:
    /// use `test_run_on`.
    pub fn test_run(&self, frame: &[u8], rx_queue: u32) -> Result<u32, BpfError> {
        self.test_run_on(frame, 0, rx_queue)
    }

    /// BPF_PROG_TEST_RUN on `frame` arriving on `ingress_ifindex` (0: none)
    /// queue `rx_queue`; no network is touched and nothing is redirected.
    ///
    /// What the kernel accepts (checked on 6.18): `rx_queue` != 0 only with
    /// an `ingress_ifindex` in the calling thread's namespace that has more
    /// than `rx_queue` receive queues (else EINVAL; an unknown index is
    /// ENODEV). Frames shorter than an Ethernet header (14 bytes) are
    /// refused with EINVAL, also behind XDP metadata: the program's checks
    /// for such runts cannot be exercised here.
    pub fn test_run_on(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue: u32,
    ) -> Result<u32, BpfError> {
        let ctx = XdpMd {
            data: 0,
            data_end: frame.len() as u32,
            ingress_ifindex,
            rx_queue_index: rx_queue,
            ..Default::default()
        };
        sys::prog_test_run_xdp(self.fd.as_raw_fd(), frame, &ctx).map_err(|e| {
            let hint = if frame.len() < ETH_HLEN as usize {
                format!(" (the kernel runs no frame shorter than {ETH_HLEN} bytes)")
            } else if rx_queue != 0 {
                format!(
                    " (rx queue {rx_queue} needs an ingress interface with more than \
                     {rx_queue} receive queues; ifindex given: {ingress_ifindex})"
                )
            } else {
                String::new()
            };
            BpfError::sys(format!("BPF_PROG_TEST_RUN of {:?}{hint}", self.name), e)
        })
    }
}

/// The sluice redirect program and its XSKMAP (receive queue index →
/// AF_XDP socket).
#[derive(Debug)]
pub struct RedirectProgram {
    prog: Program,
    xsks: OwnedFd,
    queues: u32,
    ports: Vec<u16>,
}

impl RedirectProgram {
    /// Loads the program for UDP destination `ports` (1..=8) with an
    /// XSKMAP of `queues` entries; a queue without a socket passes its
    /// packets to the kernel.
    pub fn load(ports: &[u16], queues: u32) -> Result<RedirectProgram, BpfError> {
        Self::load_with_miss(ports, queues, XDP_PASS)
    }

    /// As [`load`](Self::load), with the action for a matching packet whose
    /// queue has no socket: XDP_PASS in production; tests use XDP_DROP to
    /// see "ours" apart from "not ours" without a socket.
    pub fn load_with_miss(
        ports: &[u16],
        queues: u32,
        miss_action: u32,
    ) -> Result<RedirectProgram, BpfError> {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() || ports.len() > MAX_PORTS || ports.contains(&0) {
            return Err(BpfError::Invalid(format!(
                "XDP program ports {ports:?}: give 1 to {MAX_PORTS} non-zero UDP ports"
            )));
        }
        // bpf_redirect_map takes only these as its fallback action.
        if !(XDP_ABORTED..=XDP_TX).contains(&miss_action) {
            return Err(BpfError::Invalid(format!(
                "XDP miss action {miss_action}: must be 0..=3 (aborted, drop, pass, tx)"
            )));
        }
        // Queue counts beyond this are not hardware; the bound keeps the
        // map's memory small.
        if queues == 0 || queues > 4096 {
            return Err(BpfError::Invalid(format!(
                "XSKMAP of {queues} queues: must be 1..=4096"
            )));
        }
        let xsks = sys::map_create(sys::BPF_MAP_TYPE_XSKMAP, 4, 4, queues, "sluice_xsks")
            .map_err(|e| BpfError::sys(format!("creating an XSKMAP of {queues} entries"), e))?;
        let insns =
            redirect_insns(&ports, xsks.as_raw_fd(), miss_action).map_err(BpfError::Invalid)?;
        let prog = load_raw(PROGRAM_NAME, &insns)?;
        Ok(RedirectProgram {
            prog,
            xsks,
            queues,
            ports,
        })
    }

    /// Puts AF_XDP socket `xsk_fd` on receive queue `queue`: from now on
    /// that queue's matching packets go to it.
    pub fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<(), BpfError> {
        self.check_queue(queue)?;
        sys::map_update_u32(self.xsks.as_raw_fd(), queue, xsk_fd as u32).map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                " (not an AF_XDP socket, or one without UMEM, fill and RX rings)"
            } else {
                ""
            };
            BpfError::sys(
                format!("XSKMAP: setting queue {queue} to socket fd {xsk_fd}{why}"),
                e,
            )
        })
    }

    /// Empties queue `queue`'s entry: its packets go to the kernel (or the
    /// miss action). Already empty is fine.
    pub fn clear_socket(&self, queue: u32) -> Result<(), BpfError> {
        self.check_queue(queue)?;
        match sys::map_delete_u32(self.xsks.as_raw_fd(), queue) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                Err(BpfError::sys(format!("XSKMAP: clearing queue {queue}"), e))
            }
            _ => Ok(()),
        }
    }

    fn check_queue(&self, queue: u32) -> Result<(), BpfError> {
        if queue >= self.queues {
            return Err(BpfError::Invalid(format!(
                "queue {queue}: the XSKMAP has {} entries",
                self.queues
            )));
        }
        Ok(())
    }

    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog.fd()
    }

    /// The program's kernel id.
    pub fn id(&self) -> u32 {
        self.prog.id()
    }

    /// Entries in the XSKMAP (receive queues served).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// The ports matched, sorted.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The loaded program.
    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// See [`Program::test_run`].
    pub fn test_run(&self, frame: &[u8], rx_queue: u32) -> Result<u32, BpfError> {
        self.prog.test_run(frame, rx_queue)
    }

    /// See [`Program::test_run_on`].
    pub fn test_run_on(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue: u32,
    ) -> Result<u32, BpfError> {
        self.prog.test_run_on(frame, ingress_ifindex, rx_queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shape() {
        let p = redirect_insns(&[4433, 4434], 9, XDP_PASS).unwrap();
        // Small enough to read in a log; the call is the second to last.
        assert!(p.len() < 64, "{} instructions", p.len());
        assert_eq!(p.last().unwrap().code, 0x95);
        assert_eq!(p[p.len() - 2].imm, BPF_FUNC_REDIRECT_MAP);
        // The map fd load is in the program once, as a two-slot pair.
        let at = p.iter().position(|i| i.code == 0x18).unwrap();
        assert_eq!((p[at].imm, p[at].src()), (9, BPF_PSEUDO_MAP_FD));
        assert_eq!(p[at + 1], Insn::default());
        // Every jump lands inside the program.
        for (pc, i) in p.iter().enumerate() {
            if i.code & 0x07 == 0x05 && i.code != 0x85 && i.code != 0x95 {
                let to = pc as i64 + 1 + i64::from(i.off);
                assert!((0..p.len() as i64).contains(&to), "jump at {pc} to {to}");
            }
        }
    }

    #[test]
    fn ports_compare_in_network_order() {
        let p = redirect_insns(&[0x1234], 3, XDP_PASS).unwrap();
        let want = i32::from(u16::from_ne_bytes([0x12, 0x34]));
        assert!(p.iter().any(|i| i.code == 0x15 && i.imm == want));
    }
}
