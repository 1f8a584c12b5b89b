//! `ack = "replicated"`: what JetStream has confirmed of each producer of a
//! replicated stream, and who waits for it.
//!
//! A stream is replicated when a `[[forward]]` with `ack = "replicated"`
//! forwards it. Its producers' acks (the durable mark of a session, the
//! answer to an HTTP or gRPC publish) wait until every replicated forward
//! of the stream has its messages PubAcked: stored by a quorum of the
//! JetStream stream.
//!
//! Per (forward, stream, producer) the forwarder tells what it sends
//! ([`ForwardConfirm::sending`]) and what JetStream acknowledged
//! ([`ForwardConfirm::forwarded`]). The producer's confirmed seq is the
//! highest seq PubAcked, held below the lowest seq still in flight: a
//! publish that failed and waits for its retry keeps the later ones of
//! its producer unconfirmed even if their PubAcks came first. This is
//! right because the forward's group delivers a stream in offset order and
//! a producer's seqs rise with the offset: every earlier record of the
//! producer was sent before (and is in flight or PubAcked), or was
//! PubAcked and acked to the group before a restart.
//!
//! A second rule covers what was PubAcked before a restart (and is not
//! published again, so never confirmed per producer): each forward also
//! keeps its floor, the offset below which every record of the stream is
//! in JetStream (the group's floor when the forward joined, then the
//! lowest offset in flight, or past the highest sent). A waiter records the
//! stream's durable end when its batch was durable; once the floor reaches
//! it, the batch (and any duplicate in it, stored earlier) is in JetStream.
//!
//! A forward's `streams` may be patterns: a stream is replicated when a
//! replicated forward takes it, whenever it was made; its confirmations
//! are set up at its first use (by the forward's run or a producer's ack),
//! with every forward's floor at 0, so nothing is confirmed before the
//! forward has joined the stream's group.
//!
//! Confirmations live in memory: after a restart every producer starts
//! confirmed at 0 (see [`Confirmations::durable_at_open`] for what a new
//! session is told) and its acks come by either rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::config::ForwardConfig;
use crate::histogram::Histogram;

/// What to do once a producer's seq is confirmed (it runs without the
/// lock held; it must not block: it sends a durable mark or a wake-up).
pub type Then = Box<dyn FnOnce() + Send>;

/// Every replicated stream's confirmations, shared by the forwarders (who
/// confirm) and the ingest planes (who wait).
pub struct Confirmations {
    /// The forwards with `ack = "replicated"`.
    replicated: Vec<ForwardConfig>,
    /// Replicated streams met so far (a stream only once a replicated
    /// forward takes it: at most the daemon's streams).
    streams: RwLock<HashMap<String, Arc<StreamConfirm>>>,
    stats: Arc<WaitStats>,
}

/// What `/metrics` shows of the waits.
#[derive(Debug)]
pub struct WaitStats {
    /// Messages stored locally whose ack waits for JetStream.
    pub waiting: AtomicU64,
    /// From locally durable to confirmed, microseconds.
    pub wait: Histogram,
}

struct StreamConfirm {
    /// The replicated forwards of this stream, by name: a producer's seq is
    /// confirmed when each of them has PubAcked it.
    forwards: Vec<String>,
    state: Mutex<StreamState>,
    stats: Arc<WaitStats>,
}

#[derive(Default)]
struct StreamState {
    /// Per forward.
    floors: Vec<Floor>,
    producers: HashMap<u64, Producer>,
}

/// What one forward has in JetStream of the stream, by offset.
#[derive(Default)]
struct Floor {
    /// Offsets in flight → (producer, seq).
    in_flight: BTreeMap<u64, (u64, u64)>,
    /// The group's floor when the forward joined (acked before: in
    /// JetStream), then past every offset sent.
    below: u64,
}

impl Floor {
    /// Every record below it is in JetStream: the group delivers a
    /// stream's offsets in order, so below the lowest in flight all were
    /// PubAcked (now, or before a restart).
    fn floor(&self) -> u64 {
        match self.in_flight.keys().next() {
            Some(&o) => o.min(self.below),
            None => self.below,
        }
    }
}

#[derive(Default)]
struct Producer {
    /// Per forward.
    tracks: Vec<Track>,
    /// By seq awaited.
    waiters: BTreeMap<u64, Vec<Waiter>>,
}

#[derive(Default)]
struct Track {
    /// The highest seq PubAcked.
    acked: u64,
    /// Seqs sent and not PubAcked yet (a failed one stays until its retry
    /// is PubAcked).
    outstanding: BTreeSet<u64>,
}

impl Track {
    fn confirmed(&self) -> u64 {
        match self.outstanding.first() {
            Some(&s) => self.acked.min(s - 1),
            None => self.acked,
        }
    }
}

struct Waiter {
    /// The stream's durable end when the batch was durable: past it.
    end: u64,
    /// The session whose ack this is (None: a request that waits itself).
    session: Option<u64>,
    messages: u64,
    since: Instant,
    then: Then,
}

impl Producer {
    fn confirmed(&self, forwards: usize) -> u64 {
        if self.tracks.len() < forwards {
            return 0;
        }
        self.tracks.iter().map(Track::confirmed).min().unwrap_or(0)
    }

    /// Whether every replicated forward has `seq` (stored before `end`):
    /// per producer, or by its floor.
    fn has(&self, floors: &[Floor], seq: u64, end: u64) -> bool {
        floors.iter().enumerate().all(|(i, f)| {
            f.floor() >= end || self.tracks.get(i).is_some_and(|t| t.confirmed() >= seq)
        })
    }
}

impl Confirmations {
    /// The replicated streams of `forwards`: every stream of a forward with
    /// `ack = "replicated"` (a stream in several forwards waits for each
    /// replicated one; a `local` forward of it confirms nothing).
    pub fn new(forwards: &[ForwardConfig]) -> Confirmations {
        Confirmations {
            replicated: forwards.iter().filter(|f| f.replicated).cloned().collect(),
            streams: RwLock::new(HashMap::new()),
            stats: Arc::new(WaitStats {
                waiting: AtomicU64::new(0),
                wait: Histogram::latency(),
            }),
        }
    }

    /// Stream `name`'s confirmations, set up at its first use; None when
    /// no replicated forward takes it.
    fn stream(&self, name: &str) -> Option<Arc<StreamConfirm>> {
        if let Some(s) = self.streams.read().unwrap().get(name) {
            return Some(s.clone());
        }
        let mut forwards: Vec<String> = Vec::new();
        for f in self.replicated.iter().filter(|f| f.takes(name)) {
            if !forwards.contains(&f.name) {
                forwards.push(f.name.clone());
            }
        }
        if forwards.is_empty() {
            return None;
        }
        let mut streams = self.streams.write().unwrap();
        let s = streams.entry(name.to_owned()).or_insert_with(|| {
            let state = StreamState {
                floors: (0..forwards.len()).map(|_| Floor::default()).collect(),
                producers: HashMap::new(),
            };
            Arc::new(StreamConfirm {
                forwards,
                state: Mutex::new(state),
                stats: self.stats.clone(),
            })
        });
        Some(s.clone())
    }

    pub fn is_replicated(&self, stream: &str) -> bool {
        self.stream(stream).is_some()
    }

    pub fn stats(&self) -> Arc<WaitStats> {
        self.stats.clone()
    }

    /// The handle forward `forward` confirms `stream` through; None when
    /// that forward does not replicate the stream.
    pub fn forward(&self, forward: &str, stream: &str) -> Option<ForwardConfirm> {
        let s = self.stream(stream)?;
        let index = s.forwards.iter().position(|f| f == forward)?;
        Some(ForwardConfirm {
            stream: s.clone(),
            index,
        })
    }

    /// The highest seq of `producer` every replicated forward of `stream`
    /// has in JetStream (u64::MAX for a stream that is not replicated).
    pub fn confirmed(&self, stream: &str, producer: u64) -> u64 {
        let Some(s) = self.stream(stream) else {
            return u64::MAX;
        };
        let st = s.state.lock().unwrap();
        st.producers
            .get(&producer)
            .map_or(0, |p| p.confirmed(s.forwards.len()))
    }

    /// The durable seq a new session of `producer` is told, given the
    /// spool's `highest` seq of it and the HELLO's `first_seq` (0: the
    /// producer asks where it stands; else it resumes and holds every seq
    /// from `first_seq` on).
    ///
    /// A resuming producer is told at most what JetStream confirmed (after
    /// a restart: nothing yet): it resends what it holds, the spool stores
    /// those once (duplicates), and their acks wait for the confirmation
    /// like any. A producer that asks where it stands (a new process) holds
    /// nothing: it is told the spool's highest seq, because it numbers its
    /// messages after what it is told, and a lower number would land on
    /// seqs the spool has and be dropped as duplicates. Those earlier
    /// messages are forwarded from the spool all the same; the new
    /// process's own messages are acked once confirmed.
    pub fn durable_at_open(
        &self,
        stream: &str,
        producer: u64,
        highest: u64,
        first_seq: u64,
    ) -> u64 {
        if first_seq == 0 {
            return highest;
        }
        highest.min(self.confirmed(stream, producer))
    }

    /// Runs `then` once `producer`'s `seq` in `stream` is confirmed: now
    /// (in this thread) if it is already or the stream is not replicated.
    /// `end` is the stream's durable end once the seq's batch was durable
    /// (read after it was); `messages` is what waits (for the gauge);
    /// `session` lets [`Confirmations::session_closed`] drop the wait.
    #[allow(clippy::too_many_arguments)]
    pub fn when(
        &self,
        stream: &str,
        producer: u64,
        seq: u64,
        end: u64,
        messages: u64,
        session: Option<u64>,
        then: Then,
    ) {
        let Some(s) = self.stream(stream) else {
            return then();
        };
        {
            let mut guard = s.state.lock().unwrap();
            let st = &mut *guard;
            let p = st.producers.entry(producer).or_default();
            if !p.has(&st.floors, seq, end) {
                p.waiters.entry(seq).or_default().push(Waiter {
                    end,
                    session,
                    messages,
                    since: Instant::now(),
                    then,
                });
                self.stats.waiting.fetch_add(messages, Relaxed);
                return;
            }
        }
        self.stats.wait.observe(0);
        then()
    }

    /// Waits until `producer`'s `seq` in `stream` is confirmed (at once for
    /// a stream that is not replicated). For publish requests, which bound
    /// it with their own timeout (the wait is dropped with the future's
    /// receiver: its callback then finds no one).
    pub async fn confirmed_to(
        &self,
        stream: &str,
        producer: u64,
        seq: u64,
        end: u64,
        messages: u64,
    ) {
        if !self.is_replicated(stream) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.when(
            stream,
            producer,
            seq,
            end,
            messages,
            None,
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        let _ = rx.await;
    }

    /// A session ended: its acks waiting here are dropped (its producer
    /// resends from its durable seq on a new session).
    pub fn session_closed(&self, stream: &str, producer: u64, session: u64) {
        let Some(s) = self.stream(stream) else {
            return;
        };
        let mut st = s.state.lock().unwrap();
        let Some(p) = st.producers.get_mut(&producer) else {
            return;
        };
        let mut dropped = 0;
        p.waiters.retain(|_, ws| {
            ws.retain(|w| {
                let keep = w.session != Some(session);
                if !keep {
                    dropped += w.messages;
                }
                keep
            });
            !ws.is_empty()
        });
        self.stats.waiting.fetch_sub(dropped, Relaxed);
    }
}

/// One replicated forward of one stream: what its forwarder calls.
#[derive(Clone)]
pub struct ForwardConfirm {
    stream: Arc<StreamConfirm>,
    index: usize,
}

impl ForwardConfirm {
    /// The forward joined its group, whose floor is `floor`: every offset
    /// below was PubAcked (before a restart too).
    pub fn joined(&self, floor: u64) {
        let mut st = self.stream.state.lock().unwrap();
        let f = &mut st.floors[self.index];
        f.below = f.below.max(floor);
        drop(st);
        self.wake();
    }

    /// The forwarder publishes the record at `offset`: `producer`'s `seq`.
    /// Sent again after a failure, it is the same record.
    pub fn sending(&self, offset: u64, producer: u64, seq: u64) {
        let s = &self.stream;
        let n = s.forwards.len();
        let mut guard = s.state.lock().unwrap();
        let st = &mut *guard;
        st.floors[self.index]
            .in_flight
            .insert(offset, (producer, seq));
        let p = st.producers.entry(producer).or_default();
        p.tracks.resize_with(n, Track::default);
        p.tracks[self.index].outstanding.insert(seq);
    }

    /// JetStream PubAcked the records at `offsets` (as a duplicate too: it
    /// has them). Wakes whoever waits for what is confirmed now.
    pub fn forwarded(&self, offsets: &[u64]) {
        let s = &self.stream;
        let n = s.forwards.len();
        {
            let mut guard = s.state.lock().unwrap();
            let st = &mut *guard;
            let floor = &mut st.floors[self.index];
            for o in offsets {
                let Some((producer, seq)) = floor.in_flight.remove(o) else {
                    continue;
                };
                floor.below = floor.below.max(o + 1);
                let p = st.producers.entry(producer).or_default();
                p.tracks.resize_with(n, Track::default);
                let t = &mut p.tracks[self.index];
                t.outstanding.remove(&seq);
                t.acked = t.acked.max(seq);
            }
        }
        self.wake();
    }

    /// Runs every waiter whose seq is confirmed now (a scan of the
    /// stream's waiters: a few per producer session, as many as its
    /// batches in flight).
    fn wake(&self) {
        let s = &self.stream;
        let mut ready = Vec::new();
        {
            let mut guard = s.state.lock().unwrap();
            let st = &mut *guard;
            for p in st.producers.values_mut() {
                if p.waiters.is_empty() {
                    continue;
                }
                let mut keep = BTreeMap::new();
                for (seq, ws) in std::mem::take(&mut p.waiters) {
                    for w in ws {
                        if p.has(&st.floors, seq, w.end) {
                            ready.push(w);
                        } else {
                            keep.entry(seq).or_insert_with(Vec::new).push(w);
                        }
                    }
                }
                p.waiters = keep;
            }
        }
        let now = Instant::now();
        for w in ready {
            s.stats.waiting.fetch_sub(w.messages, Relaxed);
            s.stats
                .wait
                .observe(now.duration_since(w.since).as_micros() as u64);
            (w.then)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn forward(name: &str, streams: &[&str], replicated: bool) -> ForwardConfig {
        ForwardConfig {
            name: name.into(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            servers: vec!["nats://127.0.0.1:4222".into()],
            subject: "sluice.{stream}".into(),
            target_stream: "T".into(),
            create: None,
            auth: super::super::config::Auth::None,
            tls_ca: None,
            max_in_flight: 8,
            replicated,
        }
    }

    fn flag() -> (Arc<AtomicBool>, Then) {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        (f, Box::new(move || g.store(true, Relaxed)))
    }

    #[test]
    fn local_streams_are_not_held() {
        let c = Confirmations::new(&[forward("a", &["s"], false)]);
        assert!(!c.is_replicated("s"));
        let (done, then) = flag();
        c.when("s", 1, 10, 11, 1, None, then);
        assert!(done.load(Relaxed));
    }

    #[test]
    fn an_ack_waits_for_the_puback_and_for_earlier_failed_ones() {
        let c = Confirmations::new(&[forward("a", &["s"], true)]);
        let f = c.forward("a", "s").unwrap();
        let (done, then) = flag();
        c.when("s", 7, 2, 102, 2, Some(1), then);
        assert!(!done.load(Relaxed));
        assert_eq!(c.stats.waiting.load(Relaxed), 2);
        f.sending(100, 7, 1);
        f.sending(101, 7, 2);
        // Seq 2's PubAck first, seq 1 failed: 2 is not confirmed yet.
        f.forwarded(&[101]);
        assert!(!done.load(Relaxed));
        assert_eq!(c.confirmed("s", 7), 0);
        // Seq 1's retry is PubAcked.
        f.sending(100, 7, 1);
        f.forwarded(&[100]);
        assert!(done.load(Relaxed));
        assert_eq!(c.confirmed("s", 7), 2);
        assert_eq!(c.stats.waiting.load(Relaxed), 0);
        // Already confirmed: at once.
        let (done, then) = flag();
        c.when("s", 7, 2, 102, 1, None, then);
        assert!(done.load(Relaxed));
    }

    #[test]
    fn a_pattern_replicates_the_streams_it_takes_whenever_they_are_made() {
        let c = Confirmations::new(&[forward("a", &["s-*"], true), forward("b", &["*"], false)]);
        assert!(!c.is_replicated("t"), "only a local forward takes it");
        assert!(
            !c.is_replicated("s-x.dlq"),
            "a dead-letter stream by its name only"
        );
        // A producer's ack on a stream made now waits until the forward
        // has joined and JetStream has the message.
        let (done, then) = flag();
        c.when("s-x", 3, 1, 1, 1, None, then);
        assert!(c.is_replicated("s-x"));
        assert!(!done.load(Relaxed));
        let f = c.forward("a", "s-x").expect("forward a takes s-x");
        f.joined(0);
        assert!(
            !done.load(Relaxed),
            "joined at floor 0: nothing is in JetStream"
        );
        f.sending(0, 3, 1);
        f.forwarded(&[0]);
        assert!(done.load(Relaxed));
        assert!(c.forward("b", "s-x").is_none(), "b is a local forward");
    }

    #[test]
    fn a_stream_in_two_replicated_forwards_waits_for_both() {
        let c = Confirmations::new(&[
            forward("a", &["s"], true),
            forward("b", &["s", "t"], true),
            forward("c", &["s"], false),
        ]);
        assert!(c.forward("c", "s").is_none());
        let (a, b) = (c.forward("a", "s").unwrap(), c.forward("b", "s").unwrap());
        let (done, then) = flag();
        c.when("s", 1, 1, 1, 1, None, then);
        a.sending(0, 1, 1);
        a.forwarded(&[0]);
        assert!(!done.load(Relaxed));
        b.sending(0, 1, 1);
        b.forwarded(&[0]);
        assert!(done.load(Relaxed));
    }

    #[test]
    fn a_closed_session_drops_its_waits_and_opening_tells_no_more_than_confirmed() {
        let c = Confirmations::new(&[forward("a", &["s"], true)]);
        let (done, then) = flag();
        c.when("s", 1, 5, 5, 5, Some(9), then);
        c.session_closed("s", 1, 9);
        assert_eq!(c.stats.waiting.load(Relaxed), 0);
        let f = c.forward("a", "s").unwrap();
        f.sending(4, 1, 5);
        f.forwarded(&[4]);
        assert!(!done.load(Relaxed), "dropped with its session");
        // Resuming: no more than confirmed; asking: the spool's highest.
        assert_eq!(c.durable_at_open("s", 1, 8, 6), 5);
        assert_eq!(c.durable_at_open("s", 1, 8, 0), 8);
        assert_eq!(c.durable_at_open("s", 2, 8, 3), 0);
        assert_eq!(c.durable_at_open("other", 2, 8, 3), 8);
    }

    #[test]
    fn what_the_group_acked_before_a_restart_is_confirmed_by_the_floor() {
        let c = Confirmations::new(&[forward("a", &["s"], true)]);
        let f = c.forward("a", "s").unwrap();
        // After a restart a producer resends seqs the spool had (stored
        // before offset 40); nothing of them is published again.
        let (done, then) = flag();
        c.when("s", 3, 9, 40, 2, Some(1), then);
        assert!(!done.load(Relaxed));
        // The forward joins its group, whose floor is 50.
        f.joined(50);
        assert!(done.load(Relaxed));
        // A batch stored up to 60 waits for offsets 50..60: 55 in flight.
        let (done, then) = flag();
        c.when("s", 4, 1, 60, 1, None, then);
        f.sending(55, 5, 1);
        f.sending(56, 5, 2);
        f.forwarded(&[56]);
        assert!(!done.load(Relaxed), "55 is not PubAcked");
        f.forwarded(&[55]);
        assert!(!done.load(Relaxed), "56..60 were not sent yet");
        f.sending(59, 4, 1);
        f.forwarded(&[59]);
        assert!(done.load(Relaxed));
    }
}
