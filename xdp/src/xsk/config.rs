//! What an AF_XDP socket is made with, checked before any syscall.

use super::XskError;

/// How to bind the socket to its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy if the driver has it, else copy.
    #[default]
    Auto,
    /// The NIC DMAs straight into UMEM; fails on drivers without it (veth).
    ZeroCopy,
    /// The kernel copies each frame between its buffers and UMEM: works on
    /// every driver with XDP, generic mode included.
    Copy,
}

impl BindMode {
    /// For metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BindMode::Auto => "auto",
            BindMode::ZeroCopy => "zerocopy",
            BindMode::Copy => "copy",
        }
    }
}

/// Busy polling: the socket's syscalls run the driver's NAPI loop instead
/// of waiting for interrupts (needs the queue's NAPI to be set up for it:
/// `napi_defer_hard_irqs` and `gro_flush_timeout` on the interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// SO_BUSY_POLL: how long a blocking call may spin, in µs.
    pub usecs: u32,
    /// SO_BUSY_POLL_BUDGET: packets per NAPI poll.
    pub budget: u32,
}

/// Sizes and modes of one AF_XDP socket.
///
/// The UMEM has `frame_count` frames: `fill_ring` of them circulate on the
/// receive side (fill ring → kernel → RX ring → back to the fill ring, so
/// the fill ring can always take back every receive frame), the remaining
/// `frame_count - fill_ring` on the transmit side.
///
/// A socket may go one way only: `tx_ring: 0` makes it receive-only (no
/// transmit frames; worth it in copy mode, where every poll(2) on a socket
/// with a TX ring also runs the kernel's transmit path), `rx_ring: 0`
/// transmit-only (no receive frames; it cannot be put in an XSKMAP). The
/// fill and completion rings exist either way: the kernel requires both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame: 2048 or 4096 (frames above ~1.8 KB, after the
    /// kernel's 256-byte headroom, need 4096).
    pub frame_size: u32,
    /// UMEM frames, a power of two, at least `fill_ring + tx_ring` (the
    /// receive term is 0 without an RX ring).
    pub frame_count: u32,
    /// Slots in each ring, powers of two; `rx_ring` or `tx_ring` may be 0
    /// (no such ring), not both.
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    pub bind: BindMode,
    /// Bind with XDP_USE_NEED_WAKEUP: the driver sleeps when idle and we
    /// wake it with a syscall only when its ring flag asks for one (saves
    /// syscalls, and lets driver and reader share a core).
    pub need_wakeup: bool,
    pub busy_poll: Option<BusyPoll>,
}

impl Default for XskConfig {
    /// 8192-entry receive rings (2048-entry rings dropped packets with two
    /// senders on a 2-vCPU VM; 8192 did not), 4096 on the transmit side,
    /// 16384 frames of 2 KiB: 32 MiB of UMEM, half per direction.
    fn default() -> Self {
        XskConfig {
            frame_size: 2048,
            frame_count: 16384,
            rx_ring: 8192,
            tx_ring: 4096,
            fill_ring: 8192,
            comp_ring: 4096,
            bind: BindMode::Auto,
            need_wakeup: true,
            busy_poll: None,
        }
    }
}

impl XskConfig {
    /// Checks sizes; the error names the field.
    pub fn validate(&self) -> Result<(), XskError> {
        let bad = |field: &'static str, problem: String| Err(XskError::Config { field, problem });
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return bad(
                "frame_size",
                format!("must be 2048 or 4096, not {}", self.frame_size),
            );
        }
        for (field, n, may_be_0) in [
            ("frame_count", self.frame_count, false),
            ("rx_ring", self.rx_ring, true),
            ("tx_ring", self.tx_ring, true),
            ("fill_ring", self.fill_ring, false),
            ("comp_ring", self.comp_ring, false),
        ] {
            if !(n.is_power_of_two() || may_be_0 && n == 0) {
                let or_0 = if may_be_0 { " (or 0 for none)" } else { "" };
                return bad(field, format!("must be a power of two{or_0}, not {n}"));
            }
        }
        if self.rx_ring == 0 && self.tx_ring == 0 {
            return bad(
                "rx_ring",
                "and tx_ring are both 0: the socket would do nothing".into(),
            );
        }
        let need = u64::from(self.rx_frames()) + u64::from(self.tx_ring);
        if u64::from(self.frame_count) < need {
            return bad(
                "frame_count",
                format!(
                    "must be at least fill_ring + tx_ring = {} + {}, not {}",
                    self.rx_frames(),
                    self.tx_ring,
                    self.frame_count
                ),
            );
        }
        if let Some(bp) = self.busy_poll {
            if bp.usecs == 0 {
                return bad("busy_poll.usecs", "must be above 0".into());
            }
            if bp.budget == 0 {
                return bad("busy_poll.budget", "must be above 0".into());
            }
        }
        Ok(())
    }

    /// Frames on the receive side: the fill ring's size, or none without
    /// an RX ring.
    pub fn rx_frames(&self) -> u32 {
        if self.rx_ring == 0 {
            0
        } else {
            self.fill_ring
        }
    }

    /// Frames on the transmit side: the rest, or none without a TX ring.
    pub fn tx_frames(&self) -> u32 {
        if self.tx_ring == 0 {
            0
        } else {
            self.frame_count.saturating_sub(self.rx_frames())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(c: &XskConfig) -> &'static str {
        match c.validate() {
            Err(XskError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn default_is_valid() {
        let c = XskConfig::default();
        c.validate().unwrap();
        assert_eq!(c.rx_frames() + c.tx_frames(), c.frame_count);
        assert!(c.tx_frames() >= c.tx_ring);
    }

    #[test]
    fn one_way_sockets() {
        let rx_only = XskConfig {
            frame_count: 8192,
            tx_ring: 0,
            ..XskConfig::default()
        };
        rx_only.validate().unwrap();
        assert_eq!((rx_only.rx_frames(), rx_only.tx_frames()), (8192, 0));
        let tx_only = XskConfig {
            frame_count: 4096,
            rx_ring: 0,
            fill_ring: 1,
            ..XskConfig::default()
        };
        tx_only.validate().unwrap();
        assert_eq!((tx_only.rx_frames(), tx_only.tx_frames()), (0, 4096));
    }

    #[test]
    fn errors_name_the_field() {
        let d = XskConfig::default();
        type Edit = fn(&mut XskConfig);
        let cases: [(&str, Edit); 10] = [
            ("frame_size", |c| c.frame_size = 3000),
            ("frame_count", |c| c.frame_count = 0),
            ("rx_ring", |c| c.rx_ring = 1000),
            ("tx_ring", |c| c.tx_ring = 3),
            ("fill_ring", |c| c.fill_ring = 0),
            ("comp_ring", |c| c.comp_ring = 6),
            ("frame_count", |c| c.frame_count = 8192),
            ("rx_ring", |c| (c.rx_ring, c.tx_ring) = (0, 0)),
            ("busy_poll.usecs", |c| {
                c.busy_poll = Some(BusyPoll {
                    usecs: 0,
                    budget: 64,
                })
            }),
            ("busy_poll.budget", |c| {
                c.busy_poll = Some(BusyPoll {
                    usecs: 50,
                    budget: 0,
                })
            }),
        ];
        for (field, edit) in cases {
            let mut c = d.clone();
            edit(&mut c);
            assert_eq!(field_of(&c), field, "{c:?}");
        }
        let msg = XskConfig { rx_ring: 1000, ..d }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("rx_ring") && msg.contains("1000"), "{msg}");
    }
}
