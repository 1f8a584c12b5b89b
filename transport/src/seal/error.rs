use thiserror::Error;

/// Why a datagram was not accepted as a sealed packet. Every variant is a drop
/// reason that the daemon counts; none of them says anything about the inner
/// packet, which is never looked at unless the open succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum OpenError {
    #[error("datagram too short to be a sealed packet")]
    Truncated,
    #[error("not a sealed packet (bad magic)")]
    NotSealed,
    #[error("unsupported sealed-packet version")]
    BadVersion,
    #[error("sealed packet travels in the wrong direction")]
    WrongDirection,
    #[error("sealed packet names another lease")]
    WrongLease,
    #[error("packet number is older than the replay window")]
    TooOld,
    #[error("packet number was already accepted")]
    Replayed,
    #[error("authentication failed: forged, damaged, or sealed with other keys")]
    AuthFailed,
}

impl OpenError {
    /// Every reason, so that metrics can register each label up front.
    pub const ALL: [OpenError; 8] = [
        OpenError::Truncated,
        OpenError::NotSealed,
        OpenError::BadVersion,
        OpenError::WrongDirection,
        OpenError::WrongLease,
        OpenError::TooOld,
        OpenError::Replayed,
        OpenError::AuthFailed,
    ];

    /// A stable snake_case name, used as the metrics label: never rename one.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::NotSealed => "not_sealed",
            OpenError::BadVersion => "bad_version",
            OpenError::WrongDirection => "wrong_direction",
            OpenError::WrongLease => "wrong_lease",
            OpenError::TooOld => "too_old",
            OpenError::Replayed => "replayed",
            OpenError::AuthFailed => "auth_failed",
        }
    }
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SealError {
    /// This lease's key has sealed all it safely can: every packet number is
    /// used (reusing one would reuse a nonce, which breaks AES-GCM), or it has
    /// encrypted [`MAX_BLOCKS_PER_KEY`](super::MAX_BLOCKS_PER_KEY) blocks.
    /// The lease must be replaced.
    #[error("this lease's key is used up: lease a new session")]
    Exhausted,
    /// The sealed packet would not fit in one UDP datagram.
    #[error("inner datagram of {len} bytes is too large to seal into one UDP datagram")]
    TooLarge { len: usize },
}
