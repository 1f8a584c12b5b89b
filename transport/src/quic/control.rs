//! Messages of the QUIC plane. Each is one frame: a type byte, then its
//! fields (integers big-endian; strings as a u16 length and UTF-8 bytes).
//!
//! A connection's first bidirectional stream is its control stream: the
//! client sends [`Control::Auth`] and the daemon answers [`Control::AuthOk`]
//! (or closes the connection with `AUTH_FAILED` and the reason). Every later
//! bidirectional stream starts with [`Control::Open`]: to publish over that
//! stream (sluice datagrams follow as frames, the ordinary protocol), or to
//! lease a raw-UDP session (the answer is [`Control::Lease`], renewed with
//! [`Control::Renew`] on the same stream). A refusal is [`Control::Refused`]
//! and ends the stream.
//!
//! A consumer's stream starts with [`Control::Subscribe`] instead; after the
//! daemon's [`Control::Subscribed`] both directions of that stream carry
//! long frames of the messages in [`consume`](super::consume).

use std::net::SocketAddr;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Client → daemon, on the control stream. An empty token: none (the
    /// client relies on its certificate).
    Auth { token: String },
    /// Daemon → client: who the client is to the daemon.
    AuthOk { principal: String },
    /// Client → daemon, first frame of a stream.
    Open {
        purpose: Purpose,
        stream: String,
        producer_id: u64,
    },
    /// Daemon → client: publishing on this stream may begin.
    Opened,
    /// Daemon → client: a raw-UDP lease, granted or renewed. Keys come from
    /// the TLS exporter with the lease id as context.
    Lease {
        lease_id: u64,
        /// Where to send the sealed datagrams.
        data_addr: SocketAddr,
        /// Milliseconds until the lease expires unless renewed.
        expires_in_ms: u64,
    },
    /// Client → daemon, on a lease stream: extend the lease.
    Renew,
    /// Daemon → client: the request is refused; the stream ends.
    Refused { code: RefuseCode, reason: String },
    /// Client → daemon, first frame of a consumer's stream: join `group`
    /// of `stream` as a new member.
    Subscribe {
        stream: String,
        group: String,
        /// Where a group that does not exist yet starts; an existing group
        /// continues from its durable state.
        start: StartAt,
        mode: ConsumeMode,
        /// The credit window: the most messages, and bytes of payload,
        /// delivered to this member and not yet acked or nacked (push mode).
        max_messages: u32,
        max_bytes: u64,
    },
    /// Daemon → client: the member is in the group; long frames follow in
    /// both directions.
    Subscribed {
        /// This member's id (for logs and the daemon's metrics).
        member: u64,
        /// A delivery not acked within this is delivered again.
        ack_deadline_ms: u64,
        /// After this many deliveries a message goes to the dead-letter
        /// stream.
        max_deliveries: u32,
    },
}

/// Where a new consumer group starts reading its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still retained.
    Earliest,
    /// Only records appended after the group is created.
    Latest,
    /// The record at this offset (or the oldest retained after it).
    Offset(u64),
    /// The first record stored at or after this time (unix microseconds).
    Time(u64),
}

/// How a consumer receives its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeMode {
    /// The daemon sends deliveries as long as the credit window allows.
    Push,
    /// The daemon sends deliveries only in answer to a fetch.
    Pull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Sluice datagrams ride this QUIC stream.
    Publish,
    /// Lease an authenticated raw-UDP session.
    Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The principal may not do this on this stream.
    Forbidden,
    /// No such stream (and streams are not created on first publish).
    NoSuchStream,
    /// Not available now (fast path off, daemon stopping, too many leases).
    Unavailable,
    /// The request made no sense.
    BadRequest,
    Other(u8),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("empty control message")]
    Empty,
    #[error("unknown control message type {0}")]
    UnknownType(u8),
    #[error("control message cut short")]
    Truncated,
    #[error("control message has {0} bytes too many")]
    TrailingBytes(usize),
    #[error("malformed control message: {0}")]
    Malformed(&'static str),
}

const AUTH: u8 = 1;
const AUTH_OK: u8 = 2;
const OPEN: u8 = 3;
const OPENED: u8 = 4;
const LEASE: u8 = 5;
const RENEW: u8 = 6;
const REFUSED: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBSCRIBED: u8 = 9;

impl RefuseCode {
    fn to_u8(self) -> u8 {
        match self {
            RefuseCode::Forbidden => 1,
            RefuseCode::NoSuchStream => 2,
            RefuseCode::Unavailable => 3,
            RefuseCode::BadRequest => 4,
            RefuseCode::Other(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => RefuseCode::Forbidden,
            2 => RefuseCode::NoSuchStream,
            3 => RefuseCode::Unavailable,
            4 => RefuseCode::BadRequest,
            other => RefuseCode::Other(other),
        }
    }
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Control::Auth { token } => {
                out.push(AUTH);
                put_str(&mut out, token);
            }
            Control::AuthOk { principal } => {
                out.push(AUTH_OK);
                put_str(&mut out, principal);
            }
            Control::Open {
                purpose,
                stream,
                producer_id,
            } => {
                out.push(OPEN);
                out.push(match purpose {
                    Purpose::Publish => 1,
                    Purpose::Lease => 2,
                });
                put_str(&mut out, stream);
                out.extend_from_slice(&producer_id.to_be_bytes());
            }
            Control::Opened => out.push(OPENED),
            Control::Lease {
                lease_id,
                data_addr,
                expires_in_ms,
            } => {
                out.push(LEASE);
                out.extend_from_slice(&lease_id.to_be_bytes());
                put_str(&mut out, &data_addr.to_string());
                out.extend_from_slice(&expires_in_ms.to_be_bytes());
            }
            Control::Renew => out.push(RENEW),
            Control::Refused { code, reason } => {
                out.push(REFUSED);
                out.push(code.to_u8());
                put_str(&mut out, reason);
            }
            Control::Subscribe {
                stream,
                group,
                start,
                mode,
                max_messages,
                max_bytes,
            } => {
                out.push(SUBSCRIBE);
                put_str(&mut out, stream);
                put_str(&mut out, group);
                match start {
                    StartAt::Earliest => out.push(1),
                    StartAt::Latest => out.push(2),
                    StartAt::Offset(offset) => {
                        out.push(3);
                        out.extend_from_slice(&offset.to_be_bytes());
                    }
                    StartAt::Time(us) => {
                        out.push(4);
                        out.extend_from_slice(&us.to_be_bytes());
                    }
                }
                out.push(match mode {
                    ConsumeMode::Push => 1,
                    ConsumeMode::Pull => 2,
                });
                out.extend_from_slice(&max_messages.to_be_bytes());
                out.extend_from_slice(&max_bytes.to_be_bytes());
            }
            Control::Subscribed {
                member,
                ack_deadline_ms,
                max_deliveries,
            } => {
                out.push(SUBSCRIBED);
                out.extend_from_slice(&member.to_be_bytes());
                out.extend_from_slice(&ack_deadline_ms.to_be_bytes());
                out.extend_from_slice(&max_deliveries.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Control, ControlError> {
        let (&kind, rest) = b.split_first().ok_or(ControlError::Empty)?;
        let mut r = Reader(rest);
        let c = match kind {
            AUTH => Control::Auth { token: r.string()? },
            AUTH_OK => Control::AuthOk {
                principal: r.string()?,
            },
            OPEN => {
                let purpose = match r.u8()? {
                    1 => Purpose::Publish,
                    2 => Purpose::Lease,
                    _ => return Err(ControlError::Malformed("unknown purpose")),
                };
                Control::Open {
                    purpose,
                    stream: r.string()?,
                    producer_id: r.u64()?,
                }
            }
            OPENED => Control::Opened,
            LEASE => Control::Lease {
                lease_id: r.u64()?,
                data_addr: r
                    .string()?
                    .parse()
                    .map_err(|_| ControlError::Malformed("data address"))?,
                expires_in_ms: r.u64()?,
            },
            RENEW => Control::Renew,
            REFUSED => Control::Refused {
                code: RefuseCode::from_u8(r.u8()?),
                reason: r.string()?,
            },
            SUBSCRIBE => Control::Subscribe {
                stream: r.string()?,
                group: r.string()?,
                start: match r.u8()? {
                    1 => StartAt::Earliest,
                    2 => StartAt::Latest,
                    3 => StartAt::Offset(r.u64()?),
                    4 => StartAt::Time(r.u64()?),
                    _ => return Err(ControlError::Malformed("unknown start position")),
                },
                mode: match r.u8()? {
                    1 => ConsumeMode::Push,
                    2 => ConsumeMode::Pull,
                    _ => return Err(ControlError::Malformed("unknown consume mode")),
                },
                max_messages: r.u32()?,
                max_bytes: r.u64()?,
            },
            SUBSCRIBED => Control::Subscribed {
                member: r.u64()?,
                ack_deadline_ms: r.u64()?,
                max_deliveries: r.u32()?,
            },
            other => return Err(ControlError::UnknownType(other)),
        };
        match r.0.len() {
            0 => Ok(c),
            n => Err(ControlError::TrailingBytes(n)),
        }
    }
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    // Longer strings are cut at a character boundary: only reasons and
    // tokens could be (clients refuse longer stream and group names), and
    // neither is useful at 64 KiB.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ControlError> {
        if self.0.len() < n {
            return Err(ControlError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ControlError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, ControlError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, ControlError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| ControlError::Malformed("not UTF-8"))
    }
}
