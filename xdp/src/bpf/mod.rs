//! The XDP program that hands sluice's UDP ports to AF_XDP sockets, and
//! everything around it, over raw bpf(2) (no clang, no libbpf):
//!
//! - [`insn`]: an eBPF instruction encoder and a label-resolving assembler;
//! - [`RedirectProgram`]: the program (Ethernet → IPv4/IPv6 → UDP to one
//!   of our ports → `bpf_redirect_map(xskmap, rx_queue_index, XDP_PASS)`)
//!   and its XSKMAP; [`Program::test_run`] runs it on hand-made frames;
//! - [`Attachment`]: the program attached by a bpf_link (gone when the
//!   process is);
//! - [`xdp_state`] / [`clear_stale`]: what is on an interface, and removing
//!   what an earlier run or another tool left there by netlink.
//!
//! Needs CAP_BPF and CAP_NET_ADMIN (or root); on 5.11+ kernels no
//! RLIMIT_MEMLOCK change (BPF memory is charged to the memory cgroup).

pub mod insn;
mod link;
mod program;
mod state;
mod sys;

use std::io;

pub use crate::netlink::AttachMode;
pub use link::{Attachment, Mode};
pub use program::{load_raw, Program, RedirectProgram, MAX_PORTS, PROGRAM_NAME};
pub use state::{clear_stale, ifindex, ifname, is_ours, prog_info, xdp_state, Attached, ProgInfo};

/// XDP actions: what a program returns.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The name of XDP action `action`, for messages.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown XDP action",
    }
}

fn errno_text(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A system call failed; `what` says which and on what.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The verifier refused a program; `log` is its account (the tail, if
    /// it was longer than the buffer).
    #[error(
        "the kernel's verifier rejected XDP program {name:?} ({}); verifier log:\n{log}",
        errno_text(*errno)
    )]
    Verifier {
        name: String,
        errno: i32,
        log: String,
    },

    /// Arguments we refuse before asking the kernel.
    #[error("{0}")]
    Invalid(String),

    /// No interface of that name (in this thread's network namespace).
    #[error("network interface {name:?}: {source}")]
    Interface {
        name: String,
        #[source]
        source: io::Error,
    },

    /// BPF_LINK_CREATE failed; `hint` says what the errno means here.
    #[error(
        "attaching XDP program {prog_id} to interface index {ifindex} ({}) in {mode} mode: {source}{}{hint}",
        ifname(*ifindex),
        if hint.is_empty() { "" } else { ": " }
    )]
    Attach {
        ifindex: u32,
        mode: Mode,
        prog_id: u32,
        #[source]
        source: io::Error,
        hint: String,
    },

    /// Another tool's program is attached, and we were not told to replace
    /// it.
    #[error(
        "interface {iface} (index {ifindex}) has another XDP program attached in {mode} mode: \
         id {id}, name {name:?}. Remove it with `ip link set dev {iface} {} off`, or set \
         xdp.replace_foreign = true to let sluiced replace it",
        mode.ip_keyword()
    )]
    Foreign {
        ifindex: u32,
        iface: String,
        mode: AttachMode,
        id: u32,
        name: String,
    },

    /// The program is held by a bpf_link of a live process: netlink cannot
    /// remove it (EBUSY).
    #[error(
        "interface {iface} (index {ifindex}): XDP program {id} ({name:?}, {mode} mode) is held \
         by a bpf_link of another process (perhaps a running sluiced), so it cannot be removed \
         here: stop that process ({source})"
    )]
    Held {
        ifindex: u32,
        iface: String,
        mode: AttachMode,
        id: u32,
        name: String,
        #[source]
        source: io::Error,
    },
}

impl BpfError {
    pub(crate) fn sys(what: impl Into<String>, source: io::Error) -> BpfError {
        BpfError::Sys {
            what: what.into(),
            source,
        }
    }

    /// The errno behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BpfError::Sys { source, .. }
            | BpfError::Interface { source, .. }
            | BpfError::Attach { source, .. } => crate::netlink::errno(source),
            BpfError::Held { .. } => Some(libc::EBUSY),
            BpfError::Verifier { errno, .. } => Some(*errno),
            BpfError::Invalid(_) | BpfError::Foreign { .. } => None,
        }
    }
}
