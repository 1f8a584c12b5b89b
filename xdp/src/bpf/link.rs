//! Attaching the program to an interface with a bpf_link: the attachment
//! lives no longer than the link's fd, so a process that dies (even by
//! SIGKILL) leaves no program behind, and nobody can replace ours by
//! netlink while we hold it.
//!
//! Dropping an [`Attachment`] detaches with BPF_LINK_DETACH before closing
//! the fd: a close alone releases the link only when the last copy of the
//! fd goes, and a child forked by any thread holds copies (even of
//! close-on-exec fds) until it execs, so the program could outlive the
//! drop by a moment, long enough for a re-attach to fail with EBUSY.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::str::FromStr;

use super::program::RedirectProgram;
use super::sys;
use super::BpfError;
use crate::netlink::{XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};

/// Where the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Native if the driver allows, else generic.
    #[default]
    Auto,
    /// In the driver, before any socket buffer exists: the fast one.
    Native,
    /// On socket buffers after the driver: works on every interface, at
    /// about the cost of the normal stack's first steps.
    Generic,
}

impl Mode {
    fn flags(self) -> u32 {
        match self {
            Mode::Native => XDP_FLAGS_DRV_MODE,
            Mode::Generic => XDP_FLAGS_SKB_MODE,
            Mode::Auto => 0,
        }
    }
}

impl Mode {
    /// "auto", "native" or "generic": the config and log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    /// Also takes iproute2's words: "drv"/"xdpdrv", "skb"/"xdpgeneric".
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Mode::Auto),
            "native" | "drv" | "xdpdrv" | "driver" => Ok(Mode::Native),
            "generic" | "skb" | "xdpgeneric" => Ok(Mode::Generic),
            _ => Err(format!("XDP mode {s:?}: expected auto, native or generic")),
        }
    }
}

/// Why an attach in `mode` failed with `errno`, in words an operator can
/// act on.
fn attach_hint(errno: Option<i32>, mode: Mode) -> &'static str {
    match errno {
        Some(libc::EOPNOTSUPP) if mode == Mode::Native => {
            "the driver lacks native XDP (generic mode works on any interface)"
        }
        Some(libc::EBUSY) => {
            "another XDP program is attached in this mode: held by another \
             process's bpf_link (perhaps a running sluiced), or left by netlink \
             (see `ip link show`; clear_stale removes a leftover)"
        }
        Some(libc::EEXIST) => {
            "an XDP program is attached in the other mode; native and generic \
             XDP cannot be active on one interface at the same time"
        }
        Some(libc::ERANGE) => {
            "the MTU is too large for native XDP on this driver (lower the MTU, \
             or use generic mode)"
        }
        Some(libc::ENODEV) => "no such interface in this network namespace",
        Some(libc::EPERM) => "needs CAP_NET_ADMIN and CAP_BPF (or root)",
        Some(libc::EINVAL) => {
            "the driver refused the program in this mode (see dmesg: e.g. LRO \
             on, or too many queues for its XDP rings)"
        }
        _ => "",
    }
}

/// Our program attached to one interface; dropping it detaches.
#[derive(Debug)]
pub struct Attachment {
    link: OwnedFd,
    ifindex: u32,
    mode: Mode,
    prog_id: u32,
    /// Set by [`Attachment::detach`], so Drop does not detach twice.
    detached: bool,
}

impl Attachment {
    /// Attaches `prog` to interface `ifindex` in `mode` (BPF_LINK_CREATE).
    /// [`Mode::Auto`] tries native, then generic unless native failed
    /// because of another program (a fallback would not help there, and
    /// its error would hide the real one).
    pub fn attach(
        prog: &RedirectProgram,
        ifindex: u32,
        mode: Mode,
    ) -> Result<Attachment, BpfError> {
        let fd = prog.prog_fd().as_raw_fd();
        let prog_id = prog.id();
        let try_mode = |m: Mode| {
            sys::link_create_xdp(fd, ifindex, m.flags()).map(|link| Attachment {
                link,
                ifindex,
                mode: m,
                prog_id,
                detached: false,
            })
        };
        let error = |m: Mode, e: io::Error, extra: String| BpfError::Attach {
            ifindex,
            mode: m,
            prog_id,
            hint: format!("{}{extra}", attach_hint(e.raw_os_error(), m)),
            source: e,
        };
        match mode {
            Mode::Native | Mode::Generic => {
                try_mode(mode).map_err(|e| error(mode, e, String::new()))
            }
            Mode::Auto => match try_mode(Mode::Native) {
                Ok(a) => {
                    tracing::debug!(ifindex, prog_id, "XDP attached in native mode");
                    Ok(a)
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                    Err(error(Mode::Native, e, String::new()))
                }
                Err(native) => {
                    tracing::debug!(
                        ifindex,
                        prog_id,
                        "native XDP refused ({native}): {}; trying generic",
                        attach_hint(native.raw_os_error(), Mode::Native)
                    );
                    let a = try_mode(Mode::Generic).map_err(|e| {
                        error(
                            Mode::Generic,
                            e,
                            format!("; native mode failed first: {native}"),
                        )
                    })?;
                    tracing::debug!(ifindex, prog_id, "XDP attached in generic mode");
                    Ok(a)
                }
            },
        }
    }

    /// Native or Generic: the mode that took.
    pub fn attached_mode(&self) -> Mode {
        self.mode
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The id of the attached program.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// Detaches now and says whether that worked (a drop does the same but
    /// can only log a failure).
    pub fn detach(mut self) -> Result<(), BpfError> {
        self.detached = true;
        sys::link_detach(self.link.as_raw_fd()).map_err(|e| {
            BpfError::sys(
                format!("detaching XDP from interface index {}", self.ifindex),
                e,
            )
        })
        // Dropping self closes the (now empty) link.
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = sys::link_detach(self.link.as_raw_fd()) {
            // Closing the fd below still detaches, once its last copy goes.
            tracing::warn!(
                ifindex = self.ifindex,
                prog_id = self.prog_id,
                "BPF_LINK_DETACH failed ({e}); the close will detach"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_words() {
        for m in [Mode::Auto, Mode::Native, Mode::Generic] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert_eq!("xdpdrv".parse::<Mode>(), Ok(Mode::Native));
        assert_eq!("SKB".parse::<Mode>(), Ok(Mode::Generic));
        assert!("fast"
            .parse::<Mode>()
            .unwrap_err()
            .contains("auto, native or generic"));
        assert_eq!(Mode::default(), Mode::Auto);
    }
}
