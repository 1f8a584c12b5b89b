//! A forward's connection to its NATS servers: the credentials, TLS,
//! connecting in the background (retried until the cluster answers, and
//! again after every disconnection) and what the connection's events say,
//! logged and counted.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use async_nats::{ConnectOptions, Event, ServerAddr, ServerError};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::{Auth, ForwardConfig};
use super::metrics::{ErrorKind, ForwardCounters};
use crate::log_limit::LogLimit;

/// How long a publish waits for its PubAck before it counts as failed (and
/// its message is nacked, to be sent again).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects in the background; the receiver holds the JetStream context
/// once the client exists (it reconnects by itself from then on).
pub fn connect(f: Arc<ForwardConfig>, c: Arc<ForwardCounters>) -> watch::Receiver<Option<Context>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(500);
        loop {
            match try_connect(&f, c.clone()).await {
                Ok(client) => {
                    let js = jetstream::ContextBuilder::new()
                        .timeout(ACK_TIMEOUT)
                        .max_ack_inflight(f.max_in_flight as usize * f.streams.len())
                        .backpressure_on_inflight(true)
                        .build(client);
                    let _ = tx.send(Some(js));
                    return;
                }
                Err(e) => {
                    // Only a setting the client refuses before any
                    // connection (a credentials file it cannot read, a
                    // bad CA file) ends here: said, counted, tried again.
                    c.error(ErrorKind::Config);
                    error!(forward = %f.name, "cannot set up the connection to NATS: {e}; trying again in {wait:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    rx
}

async fn try_connect(
    f: &ForwardConfig,
    c: Arc<ForwardCounters>,
) -> Result<async_nats::Client, String> {
    let mut o = ConnectOptions::new()
        .name(format!("sluiced forward {}", f.name))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(ACK_TIMEOUT));
    o = match &f.auth {
        Auth::None => o,
        Auth::Token(t) => o.token(t.clone()),
        Auth::UserPassword { user, password } => {
            o.user_and_password(user.clone(), password.clone())
        }
        Auth::CredsFile(p) => o
            .credentials_file(p)
            .await
            .map_err(|e| format!("creds_file {}: {e}", p.display()))?,
        Auth::NKeyFile(p) => {
            let seed = std::fs::read_to_string(p)
                .map_err(|e| format!("nkey_file {}: {e}", p.display()))?;
            let seed = seed.trim().to_owned();
            if !seed.starts_with("SU") {
                return Err(format!(
                    "nkey_file {}: not a user NKey seed (it starts with SU)",
                    p.display()
                ));
            }
            o.nkey(seed)
        }
    };
    if let Some(ca) = &f.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    let events = Arc::new(Events {
        forward: f.name.clone(),
        servers: f.servers.join(","),
        counters: c,
        // A line a second while the cluster stays away.
        limit: Mutex::new(LogLimit::new(1)),
        down_since: Mutex::new(Some(Instant::now())),
    });
    o = o.event_callback(move |e| {
        let events = events.clone();
        async move { events.on(e) }
    });
    let addrs: Vec<ServerAddr> = f
        .servers
        .iter()
        .map(|u| u.parse().map_err(|e| format!("server {u:?}: {e}")))
        .collect::<Result<_, _>>()?;
    o.connect(addrs).await.map_err(|e| e.to_string())
}

/// What the client reports about its connection.
struct Events {
    forward: String,
    servers: String,
    counters: Arc<ForwardCounters>,
    limit: Mutex<LogLimit>,
    /// Since when the connection is down (None: up).
    down_since: Mutex<Option<Instant>>,
}

impl Events {
    fn on(&self, e: Event) {
        let f = &self.forward;
        match e {
            Event::Connected => {
                self.counters.connected.store(1, Relaxed);
                let was = self.down_since.lock().unwrap().take();
                info!(forward = %f, servers = %self.servers, down_for = ?was.map(|t| t.elapsed()),
                      "connected to the NATS cluster");
            }
            Event::Disconnected => {
                self.counters.connected.store(0, Relaxed);
                self.down_since
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
                self.counters.error(ErrorKind::Unreachable);
                warn!(forward = %f, servers = %self.servers,
                      "the NATS cluster is unreachable: messages wait in the spool until it is back");
            }
            Event::ServerError(ServerError::AuthorizationViolation) => self.refused(),
            // A connect refused for its credentials comes as a client
            // error that names it.
            Event::ClientError(e) if refused_credentials(&e.to_string()) => self.refused(),
            Event::ClientError(e) => {
                self.counters.error(ErrorKind::Unreachable);
                if let Some(n) = self.limit.lock().unwrap().allow(Instant::now()) {
                    warn!(forward = %f, servers = %self.servers, suppressed = n,
                          "the NATS cluster is unreachable ({e}); messages wait in the spool, connecting again");
                }
            }
            // The client is dropped: sluiced stops.
            Event::Closed => {
                self.counters.connected.store(0, Relaxed);
                info!(forward = %f, "NATS connection closed");
            }
            other => {
                if let Some(n) = self.limit.lock().unwrap().allow(Instant::now()) {
                    warn!(forward = %f, suppressed = n, "NATS connection: {other}");
                }
            }
        }
    }

    fn refused(&self) {
        self.counters.error(ErrorKind::Auth);
        if let Some(n) = self.limit.lock().unwrap().allow(Instant::now()) {
            error!(forward = %self.forward, servers = %self.servers, suppressed = n,
                   "the NATS servers refuse the forward's credentials (authorization violation): check token, user/password or creds_file; messages wait in the spool");
        }
    }
}

/// Whether a connection error says the credentials were refused.
fn refused_credentials(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    // "failed signing nonce": a creds file's seed that cannot sign.
    e.contains("authorization violation") || e.contains("failed signing nonce")
}

#[cfg(test)]
mod tests {
    use super::refused_credentials;

    #[test]
    fn refused_credentials_are_told_from_other_connect_errors() {
        // As async-nats 0.46 words them (ConnectErrorKind's Display).
        assert!(refused_credentials("authorization violation"));
        assert!(refused_credentials("failed signing nonce"));
        assert!(!refused_credentials("nats: IO error"));
        assert!(!refused_credentials("timed out"));
    }
}
