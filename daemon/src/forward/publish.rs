//! One forwarded stream: the member of group `forward.<name>` that sends
//! each delivery to JetStream and acks it to the group once JetStream has
//! it. In order through fast-ingest batches (ordered.rs) when the server
//! and the target stream take them; else one publish per message, many in
//! flight (each.rs: servers before 2.14, or a stream without
//! `allow_batched`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::Context;
use sluice_transport::quic::control::StartAt;
use tracing::{error, info, warn};

use super::config::Storage;
use super::metrics::ErrorKind;
use super::ordered::{End, Ordered};
use super::run::{Run, MAX_BACKOFF, MIN_BACKOFF};
use crate::consume::group::Credit;
use crate::log_limit::LogLimit;

/// JetStream's duplicate window for a stream the forward creates: resends
/// after a restart of sluiced come within seconds (and beyond it, with
/// `{producer}` in the subject, the target's standing says what it has).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The first server version with fast-ingest batches.
const BATCHES_SINCE: (u64, u64) = (2, 14);

impl Run {
    pub async fn run(mut self) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = self.forward_all() => {}
        }
        self.stats.in_flight(&self.stream).store(0, Relaxed);
    }

    async fn forward_all(&mut self) {
        let f = self.forward.clone();
        let js = match self.js.wait_for(|c| c.is_some()).await {
            Ok(c) => c.clone().expect("waited for it"),
            Err(_) => return,
        };
        // The server's version decides how to publish: wait for a
        // connection (said in the log meanwhile by connect.rs).
        while self.stats.connected.load(Relaxed) == 0 {
            tokio::time::sleep(MIN_BACKOFF).await;
        }
        let batches = takes_batches(&js.client().server_info().version);
        if f.create.is_some() {
            self.create_stream(&js, batches).await;
        }
        let name = format!("forward {} to {}", f.name, f.target_stream);
        // In batches, twice the batch's window: while `max_in_flight`
        // messages await the server's acks, the next deliveries are at
        // hand, so the forward waits in the batch's flow control (which
        // reads those acks) and not for deliveries that the unread acks
        // hold back. One publish per message: one each.
        let credit = |messages| Credit::Window {
            messages,
            bytes: u64::MAX,
        };
        let window = if batches {
            f.max_in_flight.saturating_mul(2)
        } else {
            f.max_in_flight
        };
        let mut member = match self
            .consumers
            .join(
                &self.stream,
                &f.group(),
                StartAt::Earliest,
                name,
                credit(window),
                SocketAddr::from(([0, 0, 0, 0], 0)),
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                error!(forward = %f.name, stream = %self.stream, "cannot join the forward's consumer group: {e}");
                return;
            }
        };
        // ack = "replicated": below the group's floor all is in JetStream.
        if let Some(c) = &self.confirm {
            c.joined(member.group.stats().floor)
        }
        if batches {
            let target = self.target(&js).await;
            info!(forward = %f.name, stream = %self.stream, subject = %f.subjects_of(&self.stream),
                  "forwarding in order (fast-ingest batches)");
            match Ordered::new(self, js.clone(), target)
                .forward(&mut member)
                .await
            {
                End::Stopped => return,
                End::NotEnabled => {
                    warn!(forward = %f.name, target = %f.target_stream,
                        "the JetStream stream does not allow batched publishes (allow_batched): forwarding one publish at a time; a producer's order is not kept across failures (daemon/FORWARD.md)");
                    member.set_credit(credit(f.max_in_flight));
                }
            }
        } else {
            warn!(forward = %f.name, version = %js.client().server_info().version,
                  "the NATS server is older than 2.14 (no fast-ingest batches): forwarding one publish at a time; a producer's order is not kept across failures (daemon/FORWARD.md)");
        }
        super::each::forward(self, &js, &mut member).await;
    }

    /// The target stream's handle (for reading where producers stand),
    /// once the cluster says it exists; until then the forward waits, and
    /// says why.
    async fn target(&self, js: &Context) -> async_nats::jetstream::stream::Stream<()> {
        let f = &self.forward;
        let mut wait = MIN_BACKOFF;
        let mut limit = LogLimit::new(1);
        loop {
            let e = match js.get_stream(&f.target_stream).await {
                Ok(_) => match js.get_stream_no_info(&f.target_stream).await {
                    Ok(s) => return s,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let missing = matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND);
            let kind = if missing {
                ErrorKind::NoStream
            } else if self.stats.connected.load(Relaxed) == 0 {
                ErrorKind::Unreachable
            } else {
                ErrorKind::Other
            };
            self.stats.error(kind);
            if let Some(n) = limit.allow(Instant::now()) {
                if missing {
                    error!(forward = %f.name, stream = %self.stream, suppressed = n,
                           "JetStream stream {} is missing (target_stream; create = false): the messages wait in the spool until it exists", f.target_stream);
                } else {
                    warn!(forward = %f.name, target = %f.target_stream, suppressed = n,
                          "cannot look up the JetStream stream: {e}; trying again");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    /// Creates the target stream if it is missing, retrying until the
    /// cluster answers.
    async fn create_stream(&self, js: &Context, batches: bool) {
        let f = &self.forward;
        let Some(c) = &f.create else { return };
        let config = StreamConfig {
            name: f.target_stream.clone(),
            subjects: {
                let mut subjects: Vec<String> =
                    f.streams.iter().map(|s| f.subjects_of(s)).collect();
                subjects.sort();
                subjects.dedup();
                subjects
            },
            num_replicas: c.replicas,
            storage: match c.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            duplicate_window: DUPLICATE_WINDOW,
            allow_batch_publish: batches,
            ..Default::default()
        };
        let mut wait = MIN_BACKOFF;
        let mut limit = LogLimit::new(1);
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    let down = self.stats.connected.load(Relaxed) == 0;
                    self.stats.error(if down {
                        ErrorKind::Unreachable
                    } else {
                        ErrorKind::CreateStream
                    });
                    if let Some(n) = limit.allow(Instant::now()) {
                        if down {
                            warn!(forward = %f.name, servers = ?f.servers, suppressed = n,
                                  "the NATS cluster is unreachable: cannot create the JetStream stream {} yet ({e}); messages wait in the spool", f.target_stream);
                        } else {
                            warn!(forward = %f.name, target = %f.target_stream, suppressed = n,
                                  "cannot create or find the JetStream stream: {e}; trying again");
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Whether a server of this version (`2.14.0`, `2.15.1-beta`) takes
/// fast-ingest batches.
fn takes_batches(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= BATCHES_SINCE
}

#[cfg(test)]
mod tests {
    use super::takes_batches;

    #[test]
    fn batches_come_with_2_14() {
        assert!(takes_batches("2.14.0"));
        assert!(takes_batches("2.15.1"));
        assert!(takes_batches("3.0.0-beta.1"));
        assert!(!takes_batches("2.9.10"));
        assert!(!takes_batches("2.12.8"));
        assert!(!takes_batches(""));
    }
}
