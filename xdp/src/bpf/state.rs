//! What is attached to an interface, whose it is, and removing leftovers:
//! netlink says which program ids are on the interface; bpf(2) says what
//! those programs are called.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;

use super::program::PROGRAM_NAME;
use super::sys;
use super::BpfError;
use crate::netlink::{self, AttachMode};

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32, BpfError> {
    let c = CString::new(name)
        .map_err(|_| BpfError::Invalid(format!("interface name {name:?} contains a NUL")))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(BpfError::Interface {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

/// The name of interface `index`, for messages ("#index" if it has none).
pub fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A loaded program, as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    /// The name given at load (at most 15 bytes); empty if none.
    pub name: String,
    /// Hash of the instructions (what `bpftool prog` shows as the tag).
    pub tag: [u8; 8],
    /// BPF_PROG_TYPE_* (6 for XDP).
    pub prog_type: u32,
}

/// The program with kernel id `id`.
pub fn prog_info(id: u32) -> Result<ProgInfo, BpfError> {
    let fd = sys::prog_fd_by_id(id).map_err(|e| {
        BpfError::sys(
            format!("opening BPF program id {id} (BPF_PROG_GET_FD_BY_ID)"),
            e,
        )
    })?;
    let raw = sys::prog_info(fd.as_raw_fd())
        .map_err(|e| BpfError::sys(format!("BPF_OBJ_GET_INFO_BY_FD of program id {id}"), e))?;
    let end = raw
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.name.len());
    Ok(ProgInfo {
        id: raw.id,
        name: String::from_utf8_lossy(&raw.name[..end]).into_owned(),
        tag: raw.tag,
        prog_type: raw.prog_type,
    })
}

/// Whether `info` is a sluice redirect program (by its load name).
pub fn is_ours(info: &ProgInfo) -> bool {
    info.name == PROGRAM_NAME
}

/// One program on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub mode: AttachMode,
    pub id: u32,
    pub name: String,
    pub ours: bool,
}

/// The XDP programs on `ifindex`, with their names.
pub fn xdp_state(ifindex: u32) -> Result<Vec<Attached>, BpfError> {
    let link = netlink::link_xdp(ifindex).map_err(|e| {
        BpfError::sys(
            format!("reading XDP state of {} (index {ifindex})", ifname(ifindex)),
            e,
        )
    })?;
    let mut out = Vec::new();
    for (mode, id) in link.programs {
        let name = match prog_info(id) {
            Ok(info) => info.name,
            // Detached and freed between the two questions: it is gone.
            Err(BpfError::Sys { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                continue
            }
            Err(e) => return Err(e),
        };
        out.push(Attached {
            mode,
            id,
            ours: name == PROGRAM_NAME,
            name,
        });
    }
    Ok(out)
}

/// Removes programs left attached to `ifindex` by netlink: ours always
/// (a sluiced that did not shut down cleanly, or an old netlink attach),
/// others only with `replace_foreign`; returns what was removed.
///
/// Nothing is removed if a foreign program is there and `replace_foreign`
/// is false ([`BpfError::Foreign`]). A program held by a bpf_link belongs
/// to a live process and cannot be removed: [`BpfError::Held`].
pub fn clear_stale(ifindex: u32, replace_foreign: bool) -> Result<Vec<Attached>, BpfError> {
    let state = xdp_state(ifindex)?;
    if !replace_foreign {
        if let Some(f) = state.iter().find(|a| !a.ours) {
            return Err(BpfError::Foreign {
                ifindex,
                iface: ifname(ifindex),
                mode: f.mode,
                id: f.id,
                name: f.name.clone(),
            });
        }
    }
    let mut removed = Vec::new();
    for a in state {
        match netlink::set_link_xdp_fd(ifindex, -1, a.mode.flags()) {
            Ok(()) => removed.push(a),
            Err(e) if netlink::errno(&e) == Some(libc::EBUSY) => {
                return Err(BpfError::Held {
                    ifindex,
                    iface: ifname(ifindex),
                    mode: a.mode,
                    id: a.id,
                    name: a.name,
                    source: e,
                })
            }
            Err(e) => {
                return Err(BpfError::sys(
                    format!(
                        "removing XDP program {} ({:?}, {} mode) from {} (index {ifindex})",
                        a.id,
                        a.name,
                        a.mode,
                        ifname(ifindex)
                    ),
                    e,
                ))
            }
        }
    }
    Ok(removed)
}
