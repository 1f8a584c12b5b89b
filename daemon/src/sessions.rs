//! The producer sessions open now, one line each, as `/sessions` and
//! `sluice stat --sessions` show them (what Aeron's LossStat shows of its
//! images): who sends, from where, how fast, how much of it needed repair,
//! the credit it has and the round trip to it.
//!
//! The ingest endpoints write their sessions' figures here on their tick
//! (every 50 ms, with the endpoint in hand) and remove a session when it
//! closes; readers take a copy. The table holds open sessions only:
//! at most the daemon's `data.max_sessions`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How long a rate is averaged over.
const RATE_EVERY: Duration = Duration::from_secs(1);

/// One producer session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub session_id: u64,
    pub stream: String,
    pub producer: u64,
    /// The producer's address (its latest: it may move).
    pub peer: String,
    /// `udp` (raw UDP or the fast path's sealed UDP) or `quic` (a QUIC
    /// stream).
    pub via: String,
    /// When the session opened, Unix seconds.
    pub opened_unix: f64,
    /// Messages and payload bytes taken since it opened.
    pub messages: u64,
    pub bytes: u64,
    /// Messages a second, over about the last second.
    pub messages_per_sec: f64,
    /// Highest seq durable (acked), and highest received in order.
    pub durable_seq: u64,
    pub received_seq: u64,
    /// How far past its durable seq the producer may send, messages.
    pub credit: u32,
    /// NACKs sent to the producer, and the messages they brought back.
    pub nacks_sent: u64,
    pub repaired: u64,
    /// Copies of messages already received (retransmissions that crossed).
    pub duplicates: u64,
    /// Messages sent beyond the credit granted (dropped).
    pub over_credit: u64,
    /// Smoothed round-trip time to the producer, microseconds.
    pub rtt_us: u64,
}

/// What an endpoint knows of a session at its tick.
pub struct Reading<'a> {
    pub session_id: u64,
    pub stream: &'a str,
    pub producer: u64,
    pub peer: Option<SocketAddr>,
    pub via: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub durable_seq: u64,
    pub received_seq: u64,
    pub credit: u32,
    pub nacks_sent: u64,
    pub repaired: u64,
    pub duplicates: u64,
    pub over_credit: u64,
    pub rtt: Duration,
}

struct Entry {
    view: SessionView,
    /// Messages and time when the rate was last taken.
    rate_from: (u64, Instant),
}

/// The open sessions of every ingest endpoint.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<u64, Entry>>,
}

impl Sessions {
    /// Writes what an endpoint read of a session now.
    pub fn update(&self, r: Reading<'_>, now: Instant) {
        let mut open = self.open.lock().unwrap();
        let e = open.entry(r.session_id).or_insert_with(|| Entry {
            view: SessionView {
                session_id: r.session_id,
                stream: r.stream.to_owned(),
                producer: r.producer,
                peer: String::new(),
                via: r.via.to_owned(),
                opened_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                messages: 0,
                bytes: 0,
                messages_per_sec: 0.0,
                durable_seq: 0,
                received_seq: 0,
                credit: 0,
                nacks_sent: 0,
                repaired: 0,
                duplicates: 0,
                over_credit: 0,
                rtt_us: 0,
            },
            rate_from: (r.messages, now),
        });
        let (from, at) = e.rate_from;
        let span = now.saturating_duration_since(at);
        if span >= RATE_EVERY {
            e.view.messages_per_sec = r.messages.saturating_sub(from) as f64 / span.as_secs_f64();
            e.rate_from = (r.messages, now);
        }
        let v = &mut e.view;
        if let Some(p) = r.peer {
            v.peer = p.to_string();
        }
        v.messages = r.messages;
        v.bytes = r.bytes;
        v.durable_seq = r.durable_seq;
        v.received_seq = r.received_seq;
        v.credit = r.credit;
        v.nacks_sent = r.nacks_sent;
        v.repaired = r.repaired;
        v.duplicates = r.duplicates;
        v.over_credit = r.over_credit;
        v.rtt_us = r.rtt.as_micros() as u64;
    }

    /// A session closed.
    pub fn remove(&self, session_id: u64) {
        self.open.lock().unwrap().remove(&session_id);
    }

    /// Every open session, by stream, then producer.
    pub fn list(&self) -> Vec<SessionView> {
        let mut all: Vec<SessionView> = self
            .open
            .lock()
            .unwrap()
            .values()
            .map(|e| e.view.clone())
            .collect();
        all.sort_by(|a, b| {
            (&a.stream, a.producer, a.session_id).cmp(&(&b.stream, b.producer, b.session_id))
        });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: u64, messages: u64) -> Reading<'static> {
        Reading {
            session_id: id,
            stream: "orders",
            producer: 7,
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            via: "udp",
            messages,
            bytes: messages * 100,
            durable_seq: messages,
            received_seq: messages,
            credit: 64,
            nacks_sent: 1,
            repaired: 1,
            duplicates: 0,
            over_credit: 0,
            rtt: Duration::from_micros(250),
        }
    }

    #[test]
    fn a_session_shows_its_rate_over_a_second_and_goes_when_closed() {
        let s = Sessions::default();
        let t0 = Instant::now();
        s.update(reading(1, 0), t0);
        s.update(reading(1, 500), t0 + Duration::from_millis(500));
        assert_eq!(s.list()[0].messages_per_sec, 0.0, "not a second yet");
        s.update(reading(1, 2_000), t0 + Duration::from_secs(2));
        let v = &s.list()[0];
        assert_eq!(v.messages_per_sec, 1_000.0);
        assert_eq!((v.messages, v.bytes, v.rtt_us), (2_000, 200_000, 250));
        assert_eq!(v.peer, "127.0.0.1:4000");
        s.update(reading(2, 0), t0);
        assert_eq!(s.list().len(), 2);
        s.remove(1);
        assert_eq!(s.list()[0].session_id, 2);
    }
}
