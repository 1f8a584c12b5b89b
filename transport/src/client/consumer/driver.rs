//! The task that owns a consumer's connection: it subscribes (again after
//! a loss), hands deliveries to the caller, and sends what the caller and
//! its deliveries say.

use super::acks::{merge_ranges, put_acks, TakeUpTo};
use super::delivery::{after, micros, millis, DeadlineCell, Inbox, Op};
use super::*;

/// One subscription: a QUIC connection and the consumer's stream on it.
pub(super) struct Subscription {
    session: QuicSession,
    send: SendStream,
    recv: FramedRecv,
    since: Instant,
}

/// Someone waiting for a Synced.
enum SyncWaiter {
    Sync(Reply<()>),
    /// [`Consumer::close`] (or the consumer was dropped: `None`).
    Close(Option<oneshot::Sender<()>>),
}

/// The fetch in progress (pull mode).
struct Fetch {
    id: u64,
    max: u32,
    /// When the daemon's wait ends.
    wait_until: Instant,
    got: Vec<Delivery>,
    reply: Reply<Vec<Delivery>>,
}

/// What the driver pushes to [`Consumer::next`]: the deliveries of one
/// turn, as one message.
pub(super) enum Pushed {
    One(Delivery),
    Many(Vec<Delivery>),
}

/// Why a turn of the driver ended the loop.
enum Stop {
    /// The connection or stream is gone: subscribe again.
    Lost(ConsumerError),
    /// Give up.
    Fatal(ConsumerError),
    /// Closed as asked.
    Done,
}

/// What woke the driver.
enum Wake {
    Frame(std::io::Result<Option<Bytes>>),
    Command(Command),
    /// Deliveries put something in the inbox.
    Ops,
    Timer,
    Dropped,
}

/// Polls `fut` once: its output if it is ready now. For cancel-safe
/// futures only (it is dropped when not ready).
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    // The driver is woken by the next `select!` anyway: no waker needed.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The task that owns the connection.
pub(super) struct Driver {
    addr: SocketAddr,
    stream: String,
    /// The credit window in here is the latest one set.
    pub(super) options: ConsumerOptions,
    /// Keeps `commands` open: its `recv` never says `None`.
    _commands_tx: mpsc::UnboundedSender<Command>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// What the deliveries say; closed when the driver goes.
    inbox: Arc<Inbox>,
    /// The inbox taken, kept for its capacity.
    ops: Vec<Op>,
    deliveries: mpsc::UnboundedSender<Pushed>,
    /// Push mode: deliveries of this turn, sent to the caller at its end.
    pushed: Vec<Delivery>,
    pub(super) shared: Arc<Shared>,
    /// `None` only between a loss and the next subscription.
    sub: Option<Subscription>,
    /// Counts subscriptions.
    epoch: u64,
    /// Offsets delivered on this subscription and not settled yet.
    outstanding: OffsetSet,
    /// The acks of this turn, and as ranges: kept for their capacity.
    acks: Vec<u64>,
    ranges: Vec<Range<u64>>,
    /// Acks sent and not yet known durable, as ranges in order sent (an ack
    /// following the one before merges with it), each with the id of the
    /// first Sync sent after it.
    unsynced: VecDeque<(u64, Range<u64>)>,
    /// Of those, how many offsets no Sync has been sent after yet, and
    /// since when.
    unsynced_new: usize,
    unsynced_since: Option<Instant>,
    next_sync: u64,
    /// Waiting for `Synced { id }` with id at least theirs.
    syncs: Vec<(u64, SyncWaiter)>,
    fetch: Option<Fetch>,
    next_fetch: u64,
    /// Pull mode: deliveries that came when no fetch asked for them.
    spare: VecDeque<Delivery>,
    /// Give up waiting for the last Synced at this time when closing.
    closing: Option<Instant>,
    backoff: Duration,
    /// Frames to write at the end of the turn.
    out: Vec<u8>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Acks and the rest from now on go nowhere, as they did to a
        // closed channel.
        self.inbox.close();
    }
}

impl Driver {
    pub(super) fn new(
        addr: SocketAddr,
        stream: &str,
        options: ConsumerOptions,
        commands_tx: mpsc::UnboundedSender<Command>,
        commands: mpsc::UnboundedReceiver<Command>,
        deliveries: mpsc::UnboundedSender<Pushed>,
    ) -> Driver {
        Driver {
            addr,
            stream: stream.to_owned(),
            options,
            _commands_tx: commands_tx,
            commands,
            inbox: Arc::new(Inbox::new()),
            ops: Vec::new(),
            deliveries,
            pushed: Vec::new(),
            shared: Arc::new(Shared {
                info: Mutex::new(SubscriptionInfo {
                    member: 0,
                    ack_deadline: Duration::ZERO,
                    max_deliveries: 0,
                }),
                failure: Mutex::new(None),
            }),
            sub: None,
            epoch: 0,
            outstanding: OffsetSet::default(),
            acks: Vec::new(),
            ranges: Vec::new(),
            unsynced: VecDeque::new(),
            unsynced_new: 0,
            unsynced_since: None,
            next_sync: 1,
            syncs: Vec::new(),
            fetch: None,
            next_fetch: 1,
            spare: VecDeque::new(),
            closing: None,
            backoff: BACKOFF_MIN,
            out: Vec::new(),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let stop = match self.turn().await {
                Ok(()) => continue,
                Err(stop) => stop,
            };
            match stop {
                Stop::Done => return,
                Stop::Fatal(e) => return self.fail(e),
                Stop::Lost(e) => {
                    if let Err(e) = self.resubscribe(e).await {
                        return self.fail(e);
                    }
                }
            }
        }
    }

    /// Waits for one thing to happen, handles it, and writes what it asks.
    async fn turn(&mut self) -> Result<(), Stop> {
        let Some(sub) = self.sub.as_mut() else {
            return Err(Stop::Lost(ConsumerError::Io("not subscribed".into())));
        };
        let timer = [
            self.unsynced_since.map(|t| t + AUTO_SYNC_AFTER),
            self.fetch.as_ref().map(|f| f.wait_until + FETCH_SLACK),
            self.closing,
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match timer {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            f = sub.recv.next() => Wake::Frame(f),
            // The driver holds a sender itself: never `None`.
            Some(c) = self.commands.recv() => Wake::Command(c),
            _ = self.inbox.wake.notified() => Wake::Ops,
            _ = sleep => Wake::Timer,
            _ = self.deliveries.closed(), if self.closing.is_none() => Wake::Dropped,
        };
        let r = match wake {
            Wake::Frame(f) => self.on_frames(f),
            Wake::Command(c) => {
                self.on_commands(Some(c));
                Ok(())
            }
            Wake::Ops => {
                self.on_commands(None);
                Ok(())
            }
            Wake::Timer => self.on_timer(),
            // Nobody is left to receive: leave as close() would, after
            // sending what the deliveries said before.
            Wake::Dropped => {
                while let Ok(c) = self.commands.try_recv() {
                    self.on_commands(Some(c));
                }
                self.on_commands(None);
                self.closing_waiter(None);
                self.send_sync();
                Ok(())
            }
        };
        self.push_deliveries();
        r?;
        self.auto_sync(Instant::now());
        self.flush().await
    }

    /// Hands the deliveries of this turn to [`Consumer::next`], in one go.
    fn push_deliveries(&mut self) {
        let d = match self.pushed.len() {
            0 => return,
            1 => Pushed::One(self.pushed.pop().expect("one")),
            n => Pushed::Many(std::mem::replace(&mut self.pushed, Vec::with_capacity(n))),
        };
        // Nobody reads any more: the daemon delivers them again.
        let _ = self.deliveries.send(d);
    }

    /// Handles `first`, then every frame already arrived (up to
    /// [`FRAMES_PER_TURN`]): a chunk read from the stream holds many.
    fn on_frames(&mut self, first: std::io::Result<Option<Bytes>>) -> Result<(), Stop> {
        // One clock reading for the lot: they all arrived by now.
        let now = Instant::now();
        self.on_frame(first, now)?;
        for _ in 1..FRAMES_PER_TURN {
            let Some(sub) = self.sub.as_mut() else {
                break;
            };
            match ready_now(sub.recv.next()) {
                Some(f) => self.on_frame(f, now)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Connects, authenticates and subscribes.
    pub(super) async fn subscribe(
        &self,
    ) -> Result<(Subscription, SubscriptionInfo), ConsumerError> {
        let addr = self.addr;
        let o = &self.options;
        let session = link::quic_session(addr, &o.quic, KEEP_ALIVE, o.bind)
            .await
            .map_err(ConsumerError::from_link)?;
        let conn = &session.conn;
        let stream_error =
            |e: std::io::Error| ConsumerError::from_link(link::stream_error(addr, conn, e));
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ConsumerError::from_link(link::connection_error(addr, e)))?;
        let mut recv = FramedRecv::new(recv);
        let subscribe = Control::Subscribe {
            stream: self.stream.clone(),
            group: o.group.clone(),
            start: o.start,
            mode: o.mode,
            max_messages: o.max_messages,
            max_bytes: o.max_bytes,
        };
        frame::write(&mut send, &subscribe.encode())
            .await
            .map_err(stream_error)?;
        let reply = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, recv.next()).await {
            Err(_) => {
                return Err(ConsumerError::Unreachable {
                    addr,
                    reason: format!("no answer to the subscription within {SUBSCRIBE_TIMEOUT:?}"),
                })
            }
            Ok(Ok(Some(f))) => Control::decode(&f)
                .map_err(|e| ConsumerError::Protocol(format!("answer to Subscribe: {e}")))?,
            Ok(Ok(None)) => {
                return Err(stream_error(std::io::Error::other(
                    "the daemon ended the stream without answering",
                )))
            }
            Ok(Err(e)) => return Err(stream_error(e)),
        };
        match reply {
            Control::Subscribed {
                member,
                ack_deadline_ms,
                max_deliveries,
            } => {
                // The daemon's next bytes on this stream are long frames:
                // switch before reading any.
                recv.set_long();
                let info = SubscriptionInfo {
                    member,
                    ack_deadline: Duration::from_millis(ack_deadline_ms),
                    max_deliveries,
                };
                let sub = Subscription {
                    session,
                    send,
                    recv,
                    since: Instant::now(),
                };
                Ok((sub, info))
            }
            Control::Refused { code, reason } => Err(ConsumerError::Refused { code, reason }),
            other => Err(ConsumerError::Protocol(format!(
                "unexpected answer to Subscribe: {other:?}"
            ))),
        }
    }

    pub(super) fn install(&mut self, sub: Subscription, info: SubscriptionInfo) {
        info!(
            stream = %self.stream,
            group = %self.options.group,
            member = info.member,
            ack_deadline = ?info.ack_deadline,
            max_deliveries = info.max_deliveries,
            "subscribed"
        );
        *self.shared.info.lock().unwrap_or_else(|e| e.into_inner()) = info;
        self.sub = Some(sub);
        self.epoch += 1;
        self.outstanding.clear();
    }

    /// The subscription was lost: subscribe again, with backoff, until
    /// `reconnect_timeout`; then send again what it may have lost.
    async fn resubscribe(&mut self, cause: ConsumerError) -> Result<(), ConsumerError> {
        warn!(stream = %self.stream, group = %self.options.group, error = %cause, "subscription lost; reconnecting");
        if let Some(old) = self.sub.take() {
            if old.since.elapsed() >= HEALTHY {
                self.backoff = BACKOFF_MIN;
            }
            old.session
                .conn
                .close(close_code::DONE.into(), b"reconnecting");
        }
        let started = Instant::now();
        let mut last = cause;
        loop {
            let left = self
                .options
                .reconnect_timeout
                .saturating_sub(started.elapsed());
            if left.is_zero() {
                let last = match last {
                    ConsumerError::Unreachable { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(ConsumerError::Unreachable {
                    addr: self.addr,
                    reason: format!(
                        "{last}; gave up after {:?} of reconnecting",
                        self.options.reconnect_timeout
                    ),
                });
            }
            tokio::time::sleep(self.backoff.min(left)).await;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            let left = self
                .options
                .reconnect_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1));
            match tokio::time::timeout(left, self.subscribe()).await {
                Ok(Ok((sub, info))) => {
                    self.install(sub, info);
                    self.replay();
                    match self.flush().await {
                        Ok(()) => return Ok(()),
                        Err(Stop::Lost(e)) => {
                            debug!(error = %e, "lost again at once");
                            self.sub = None;
                            last = e;
                        }
                        Err(Stop::Fatal(e)) => return Err(e),
                        Err(Stop::Done) => return Err(ConsumerError::Closed),
                    }
                }
                Ok(Err(e)) if e.is_permanent() => return Err(e),
                Ok(Err(e)) => {
                    debug!(error = %e, "reconnect attempt failed");
                    last = e;
                }
                Err(_) => {}
            }
        }
    }

    /// On a new subscription, before anything else: every ack not known
    /// durable (the daemon takes acks for any offset idempotently), a Sync
    /// for whoever waits for one, and the fetch in progress.
    fn replay(&mut self) {
        let mut ranges: Vec<Range<u64>> = self.unsynced.drain(..).map(|(_, r)| r).collect();
        merge_ranges(&mut ranges);
        self.unsynced_new = 0;
        self.unsynced_since = None;
        self.send_acks(&ranges, Instant::now());
        if !self.unsynced.is_empty() || !self.syncs.is_empty() {
            let id = self.send_sync();
            for (waits_for, _) in &mut self.syncs {
                *waits_for = id;
            }
        }
        let Some(mut f) = self.fetch.take() else {
            return;
        };
        if !f.got.is_empty() {
            return self.answer_fetch(f);
        }
        f.id = self.next_fetch;
        self.next_fetch += 1;
        let wait = f.wait_until.saturating_duration_since(Instant::now());
        FromConsumer::Fetch {
            id: f.id,
            max: f.max,
            wait_ms: millis(wait),
        }
        .put_frame(&mut self.out);
        self.fetch = Some(f);
    }

    fn on_frame(&mut self, f: std::io::Result<Option<Bytes>>, now: Instant) -> Result<(), Stop> {
        let body = match f {
            Ok(Some(body)) => body,
            Ok(None) => return Err(self.lost("the daemon ended the subscription's stream")),
            // A frame over the limit: the daemon is broken.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Stop::Fatal(ConsumerError::Protocol(e.to_string())))
            }
            Err(e) => return Err(self.lost(&e.to_string())),
        };
        let m = ToConsumer::decode_owned(body)
            .map_err(|e| Stop::Fatal(ConsumerError::Protocol(format!("from the daemon: {e}"))))?;
        match m {
            ToConsumer::Deliver(d) => self.on_deliver(d, now),
            ToConsumer::FetchDone { id } => {
                if self.fetch.as_ref().is_some_and(|f| f.id == id) {
                    let f = self.fetch.take().expect("a fetch");
                    self.answer_fetch(f);
                }
            }
            ToConsumer::Synced { id } => return self.on_synced(id),
            ToConsumer::Error { reason } => return Err(Stop::Fatal(ConsumerError::Ended(reason))),
        }
        Ok(())
    }

    fn on_deliver(&mut self, d: consume::Delivery, received: Instant) {
        self.outstanding.insert(d.offset);
        let delivery = Delivery {
            offset: d.offset,
            delivery: d.delivery,
            timestamp_us: d.timestamp_us,
            producer: d.producer,
            seq: d.seq,
            payload: d.payload,
            inbox: self.inbox.clone(),
            epoch: self.epoch,
            received,
            deadline_us: Mutex::new(DeadlineCell::Own(micros(Duration::from_millis(
                d.deadline_ms,
            )))),
        };
        match self.options.mode {
            // Nobody reads after close(): the daemon delivers it again.
            ConsumeMode::Push if self.closing.is_some() => {}
            ConsumeMode::Push => self.pushed.push(delivery),
            ConsumeMode::Pull => match &mut self.fetch {
                Some(f) => f.got.push(delivery),
                None => self.spare.push_back(delivery),
            },
        }
    }

    /// Answers a fetch; if its caller went away, what it got waits for the
    /// next one.
    fn answer_fetch(&mut self, f: Fetch) {
        if let Err(Ok(got)) = f.reply.send(Ok(f.got)) {
            self.spare.extend(got);
        }
    }

    fn on_synced(&mut self, id: u64) -> Result<(), Stop> {
        while self.unsynced.front().is_some_and(|(s, _)| *s <= id) {
            self.unsynced.pop_front();
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.syncs)
            .into_iter()
            .partition(|(s, _)| *s <= id);
        self.syncs = waiting;
        let mut close = Vec::new();
        for (_, w) in done {
            match w {
                SyncWaiter::Sync(reply) => {
                    let _ = reply.send(Ok(()));
                }
                SyncWaiter::Close(reply) => close.push(reply),
            }
        }
        if close.is_empty() {
            return Ok(());
        }
        self.finish_close(close);
        Err(Stop::Done)
    }

    /// Takes what the deliveries said, in order: acks, nacks, extends.
    fn take_ops(
        &mut self,
        nacks: &mut BTreeMap<u64, Vec<u64>>,
        extends: &mut BTreeMap<u64, Vec<u64>>,
    ) {
        let mut ops = std::mem::take(&mut self.ops);
        self.inbox.take(&mut ops);
        for op in ops.drain(..) {
            match op {
                Op::Ack { offset } => {
                    // Sent whatever the bookkeeping says (the daemon takes
                    // acks idempotently): an ack from an earlier
                    // subscription still counts, and so does one for a
                    // redelivery whose first delivery was nacked.
                    self.outstanding.remove(&offset);
                    self.acks.push(offset);
                }
                Op::Nack {
                    offset,
                    epoch,
                    delay_ms,
                } => {
                    if epoch == self.epoch && self.outstanding.remove(&offset) {
                        nacks.entry(delay_ms).or_default().push(offset);
                    }
                }
                Op::Extend { offset, epoch, ms } => {
                    if epoch == self.epoch && self.outstanding.contains(&offset) {
                        extends.entry(ms).or_default().push(offset);
                    }
                }
            }
        }
        self.ops = ops;
    }

    /// Handles `first` and the commands queued after it, and everything in
    /// the inbox; queues the frames they ask for.
    fn on_commands(&mut self, first: Option<Command>) {
        let now = Instant::now();
        debug_assert!(self.acks.is_empty());
        let mut up_to = None;
        let mut nacks: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut extends: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut credit = None;
        let mut sync = false;
        let mut next = first;
        let mut taken = 0;
        while let Some(c) = next.take() {
            taken += 1;
            // What deliveries said before this command was sent comes
            // before it (a sync covers every ack made before it).
            self.take_ops(&mut nacks, &mut extends);
            match c {
                Command::AckUpTo { offset } => {
                    // What the daemon will ack, remembered one by one: a
                    // new member has other messages outstanding, so only
                    // these offsets may be sent again after a reconnect.
                    let covered = ranges_of(&self.outstanding.take_up_to(offset));
                    self.remember_acks(&covered, now);
                    up_to = up_to.max(Some(offset));
                }
                Command::Credit {
                    max_messages,
                    max_bytes,
                } => {
                    self.options.max_messages = max_messages;
                    self.options.max_bytes = max_bytes;
                    credit = Some((max_messages, max_bytes));
                }
                Command::Fetch { max, wait, reply } => self.start_fetch(max, wait, reply, now),
                Command::Sync { reply } => {
                    self.syncs.push((self.next_sync, SyncWaiter::Sync(reply)));
                    sync = true;
                }
                Command::Close { reply } => {
                    self.closing_waiter(Some(reply));
                    sync = true;
                }
            }
            if taken < COMMANDS_PER_TURN {
                next = self.commands.try_recv().ok();
            }
        }
        self.take_ops(&mut nacks, &mut extends);
        // Extends first: a delivery extended and then acked in one turn
        // ends up acked.
        for (ms, offsets) in extends {
            for chunk in offsets.chunks(MAX_OFFSETS) {
                FromConsumer::Extend {
                    offsets: chunk.to_vec(),
                    ms,
                }
                .put_frame(&mut self.out);
            }
        }
        if !self.acks.is_empty() {
            // Reuses the buffers: no allocation per turn.
            let mut ranges = std::mem::take(&mut self.ranges);
            ranges_into(&mut self.acks, &mut ranges);
            self.acks.clear();
            self.send_acks(&ranges, now);
            ranges.clear();
            self.ranges = ranges;
        }
        if let Some(offset) = up_to {
            FromConsumer::AckUpTo { offset }.put_frame(&mut self.out);
        }
        for (delay_ms, offsets) in nacks {
            for chunk in offsets.chunks(MAX_OFFSETS) {
                FromConsumer::Nack {
                    offsets: chunk.to_vec(),
                    delay_ms,
                }
                .put_frame(&mut self.out);
            }
        }
        if let Some((max_messages, max_bytes)) = credit {
            FromConsumer::Credit {
                max_messages,
                max_bytes,
            }
            .put_frame(&mut self.out);
        }
        // Last, so that it covers everything above.
        if sync {
            self.send_sync();
        }
    }

    fn start_fetch(&mut self, max: u32, wait: Duration, reply: Reply<Vec<Delivery>>, now: Instant) {
        // A fetch whose caller gave up leaves what it got to this one.
        if let Some(old) = self.fetch.take() {
            self.spare.extend(old.got);
        }
        let take = self.spare.len().min(max as usize);
        let got: Vec<Delivery> = self.spare.drain(..take).collect();
        let f = Fetch {
            id: self.next_fetch,
            max,
            wait_until: after(now, wait),
            got,
            reply,
        };
        self.next_fetch += 1;
        if !f.got.is_empty() {
            return self.answer_fetch(f);
        }
        FromConsumer::Fetch {
            id: f.id,
            max,
            wait_ms: millis(wait),
        }
        .put_frame(&mut self.out);
        self.fetch = Some(f);
    }

    /// Leaves once every ack is durable: the close waits for the Synced of
    /// the next Sync (at most `reconnect_timeout`).
    fn closing_waiter(&mut self, reply: Option<oneshot::Sender<()>>) {
        self.syncs.push((self.next_sync, SyncWaiter::Close(reply)));
        if self.closing.is_none() {
            self.closing = Some(after(Instant::now(), self.options.reconnect_timeout));
        }
    }

    fn on_timer(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        if self.closing.is_some_and(|t| t <= now) {
            warn!(stream = %self.stream, "closing without every ack confirmed durable: the daemon did not answer");
            let close = self
                .syncs
                .drain(..)
                .filter_map(|(_, w)| match w {
                    SyncWaiter::Sync(reply) => {
                        let _ = reply.send(Err(ConsumerError::Closed));
                        None
                    }
                    SyncWaiter::Close(reply) => Some(reply),
                })
                .collect();
            self.finish_close(close);
            return Err(Stop::Done);
        }
        if self
            .fetch
            .as_ref()
            .is_some_and(|f| f.wait_until + FETCH_SLACK <= now)
        {
            debug!("no FetchDone from the daemon; the fetch returns what it has");
            let f = self.fetch.take().expect("a fetch");
            self.answer_fetch(f);
        }
        Ok(())
    }

    /// Sends a Sync of its own when acks have waited long enough for one.
    fn auto_sync(&mut self, now: Instant) {
        let due = self
            .unsynced_since
            .is_some_and(|t| t + AUTO_SYNC_AFTER <= now);
        if due || self.unsynced_new >= MAX_OFFSETS {
            self.send_sync();
        }
    }

    /// Queues Ack frames for `ranges` (sorted, apart) and remembers them
    /// until synced.
    fn send_acks(&mut self, ranges: &[Range<u64>], now: Instant) {
        put_acks(&mut self.out, ranges);
        self.remember_acks(ranges, now);
    }

    fn remember_acks(&mut self, ranges: &[Range<u64>], now: Instant) {
        let tag = self.next_sync;
        let mut added = 0;
        for r in ranges {
            added += (r.end - r.start) as usize;
            match self.unsynced.back_mut() {
                // Acks in order, between the same Syncs: one range.
                Some((t, last)) if *t == tag && last.end == r.start => last.end = r.end,
                _ => self.unsynced.push_back((tag, r.clone())),
            }
        }
        if added > 0 {
            self.unsynced_new += added;
            self.unsynced_since.get_or_insert(now);
        }
    }

    /// Queues a Sync covering everything queued so far; returns its id.
    fn send_sync(&mut self) -> u64 {
        let id = self.next_sync;
        self.next_sync += 1;
        FromConsumer::Sync { id }.put_frame(&mut self.out);
        self.unsynced_new = 0;
        self.unsynced_since = None;
        id
    }

    /// Writes the frames queued this turn.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(sub) = self.sub.as_mut() else {
            // Nothing to write to: what matters is replayed on the next one.
            self.out.clear();
            return Ok(());
        };
        let r = sub.send.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|e| self.lost(&e.to_string()))
    }

    /// What a failed stream means: the connection's reason when it closed.
    fn lost(&self, what: &str) -> Stop {
        let reason = self
            .sub
            .as_ref()
            .and_then(|s| s.session.conn.close_reason());
        let e = match reason {
            Some(ConnectionError::ApplicationClosed(c))
                if u64::from(c.error_code) == u64::from(close_code::PROTOCOL) =>
            {
                return Stop::Fatal(ConsumerError::Protocol(format!(
                    "sluiced closed the connection: {}",
                    String::from_utf8_lossy(&c.reason)
                )));
            }
            Some(reason) => ConsumerError::from_link(link::connection_error(self.addr, reason)),
            None => ConsumerError::Io(what.to_owned()),
        };
        if e.is_permanent() {
            Stop::Fatal(e)
        } else {
            Stop::Lost(e)
        }
    }

    /// Closes the connection as done, and tells whoever waits for that.
    fn finish_close(&mut self, replies: Vec<Option<oneshot::Sender<()>>>) {
        let endpoint = self.sub.take().map(|sub| {
            sub.session.conn.close(close_code::DONE.into(), b"done");
            sub.session.endpoint.clone()
        });
        self.settle_all(ConsumerError::Closed);
        // `close()` returns once the close has reached the daemon (or after
        // a second): a process that exits right after is no longer a member
        // there, and nothing more is pushed to it.
        tokio::spawn(async move {
            if let Some(endpoint) = endpoint {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(());
            }
        });
        debug!(stream = %self.stream, group = %self.options.group, "consumer closed");
    }

    /// The end: says why to everyone still waiting.
    fn fail(mut self, e: ConsumerError) {
        warn!(stream = %self.stream, group = %self.options.group, error = %e, "consumer failed");
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        if let Some(sub) = self.sub.take() {
            let (code, reason): (u32, &[u8]) = match e {
                ConsumerError::Protocol(_) => (close_code::PROTOCOL, b"protocol error"),
                _ => (close_code::DONE, b"consumer stopped"),
            };
            sub.session.conn.close(code.into(), reason);
        }
        self.settle_all(e);
    }

    /// Answers every fetch and sync still waiting with `e`.
    fn settle_all(&mut self, e: ConsumerError) {
        if let Some(f) = self.fetch.take() {
            let _ = f.reply.send(Err(e.clone()));
        }
        for (_, w) in self.syncs.drain(..) {
            match w {
                SyncWaiter::Sync(reply) => {
                    let _ = reply.send(Err(e.clone()));
                }
                SyncWaiter::Close(Some(reply)) => {
                    let _ = reply.send(());
                }
                SyncWaiter::Close(None) => {}
            }
        }
    }
}
