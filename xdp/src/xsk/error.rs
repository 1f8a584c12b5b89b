//! Why a socket could not be made, in terms an operator can act on.

use std::io;

/// Every OS-level variant names the interface index and queue; the common
/// causes get their own variant and a hint.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("XskConfig.{field}: {problem}")]
    Config {
        field: &'static str,
        problem: String,
    },

    #[error(
        "AF_XDP on ifindex {ifindex} queue {queue}: queue {queue} does not exist on this \
         interface (see `ethtool -l`)"
    )]
    NoSuchQueue { ifindex: u32, queue: u32 },

    #[error("AF_XDP on ifindex {ifindex} queue {queue}: no such interface")]
    NoSuchInterface { ifindex: u32, queue: u32 },

    #[error("AF_XDP on ifindex {ifindex} queue {queue}: driver has no zero-copy AF_XDP")]
    NoZeroCopy { ifindex: u32, queue: u32 },

    #[error(
        "AF_XDP on ifindex {ifindex} queue {queue}: registering {bytes} bytes of UMEM: locked \
         memory limit too low: raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity) or grant \
         CAP_IPC_LOCK"
    )]
    MemlockLimit {
        ifindex: u32,
        queue: u32,
        bytes: usize,
    },

    #[error(
        "AF_XDP on ifindex {ifindex} queue {queue}: queue still busy after {waited_ms} ms \
         (another AF_XDP socket is bound to it)"
    )]
    Busy {
        ifindex: u32,
        queue: u32,
        waited_ms: u64,
    },

    #[error("AF_XDP on ifindex {ifindex} queue {queue}: {step}: {source}{}", hint(.source))]
    Os {
        ifindex: u32,
        queue: u32,
        /// The call that failed, e.g. "mmap RX ring".
        step: &'static str,
        source: io::Error,
    },
}

/// A hint for errnos with a usual cause.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (AF_XDP sockets need CAP_NET_RAW; raising busy-poll limits needs CAP_NET_ADMIN)"
        }
        Some(libc::EAFNOSUPPORT) => " (this kernel has no AF_XDP: CONFIG_XDP_SOCKETS)",
        _ => "",
    }
}

impl XskError {
    pub(crate) fn os(ifindex: u32, queue: u32, step: &'static str, source: io::Error) -> XskError {
        XskError::Os {
            ifindex,
            queue,
            step,
            source,
        }
    }
}
