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
                    c.set_client(client.clone());
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
                    "nkey_file {}: not a user NKey seed (a user seed starts with SU; a public key, U..., will not do)",
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
        tls_ca: f.tls_ca.clone(),
        // Other events: a line a second at most.
        limit: Mutex::new(LogLimit::new(1)),
        outage: Mutex::new(Outage::default()),
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

/// While the cluster stays unreachable, a line this often (the first at
/// once): the outage is said once, then reminded, not logged at every
/// reconnect attempt.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// What the client reports about its connection.
struct Events {
    forward: String,
    servers: String,
    counters: Arc<ForwardCounters>,
    /// The forward's `tls_ca`: named when an attempt fails, since the
    /// client reports a server certificate that CA did not sign as a bare
    /// "IO error", as it does a server that is down.
    tls_ca: Option<std::path::PathBuf>,
    limit: Mutex<LogLimit>,
    outage: Mutex<Outage>,
}

/// What was said of the current outage.
#[derive(Default)]
struct Outage {
    /// When the last line about it was logged (None: none yet).
    said_at: Option<Instant>,
    /// Disconnections and failed attempts since it began.
    failures: u64,
}

impl Outage {
    /// Whether to log now: the first failure of an outage, then one every
    /// [`REMIND_EVERY`].
    fn say(&mut self, now: Instant) -> bool {
        self.failures += 1;
        let due = self
            .said_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REMIND_EVERY);
        if due {
            self.said_at = Some(now);
        }
        due
    }
}

impl Events {
    fn on(&self, e: Event) {
        let f = &self.forward;
        match e {
            Event::Connected => {
                self.counters.connected.store(1, Relaxed);
                let was = self.counters.down_since.lock().unwrap().take();
                let failures = std::mem::take(&mut *self.outage.lock().unwrap()).failures;
                info!(forward = %f, servers = %self.servers, down_for = ?was.map(|t| t.elapsed()),
                      failures, "connected to the NATS cluster");
            }
            Event::Disconnected => self.unreachable("the connection dropped"),
            Event::ServerError(ServerError::AuthorizationViolation) => self.refused(),
            // A connect refused for its credentials comes as a client
            // error that names it.
            Event::ClientError(e) if refused_credentials(&e.to_string()) => self.refused(),
            Event::ClientError(e) => self.unreachable(&e.to_string()),
            // A reload stops the forward: its connection is drained.
            Event::Draining => {
                info!(forward = %f, "NATS connection draining (the forward stops)");
            }
            // The client is dropped or drained: sluiced or the forward
            // stops.
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

    /// The connection dropped or an attempt failed: counted each time
    /// (errors{kind="unreachable"}), said once per outage and then every
    /// [`REMIND_EVERY`], with the servers tried.
    fn unreachable(&self, why: &str) {
        self.counters.connected.store(0, Relaxed);
        self.counters.error(ErrorKind::Unreachable);
        let since = *self
            .counters
            .down_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        let now = Instant::now();
        let mut o = self.outage.lock().unwrap();
        if !o.say(now) {
            return;
        }
        let f = &self.forward;
        let tls = match &self.tls_ca {
            Some(ca) => format!(
                "; if the servers are up, check that tls_ca {} signed their certificates",
                ca.display()
            ),
            None => String::new(),
        };
        if o.failures == 1 {
            warn!(forward = %f, servers = %self.servers,
                  "the NATS cluster is unreachable ({why}{tls}): messages wait in the spool (sluice_forward_connected 0, lag in sluice_forward_lag_*); connecting again until it is back");
        } else {
            warn!(forward = %f, servers = %self.servers, down_for = ?now.saturating_duration_since(since),
                  failures = o.failures,
                  "the NATS cluster is still unreachable ({why}{tls}): messages wait in the spool; connecting again until it is back");
        }
    }

    fn refused(&self) {
        self.counters.error(ErrorKind::Auth);
        if let Some(n) = self.limit.lock().unwrap().allow(Instant::now()) {
            error!(forward = %self.forward, servers = %self.servers, suppressed = n,
                   "the NATS servers refuse the forward's credentials (authorization violation): check token, user/password, creds_file or nkey_file; messages wait in the spool");
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
    use super::*;

    #[test]
    fn an_outage_is_said_once_then_reminded() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert!(o.say(t0), "the first failure is said");
        for i in 1..100 {
            assert!(!o.say(t0 + Duration::from_millis(i * 500)), "attempt {i}");
        }
        assert!(o.say(t0 + REMIND_EVERY), "reminded");
        assert!(!o.say(t0 + REMIND_EVERY + Duration::from_secs(1)));
        assert_eq!(o.failures, 102);
    }

    #[test]
    fn refused_credentials_are_told_from_other_connect_errors() {
        // As async-nats 0.46 words them (ConnectErrorKind's Display).
        assert!(refused_credentials("authorization violation"));
        assert!(refused_credentials("failed signing nonce"));
        assert!(!refused_credentials("nats: IO error"));
        assert!(!refused_credentials("timed out"));
    }
}
