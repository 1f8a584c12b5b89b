//! Relay mode: a `sluiced` on loopback (started from this binary), and for
//! each row a fresh impairment relay in front of the port the producers
//! publish to (the data port for `udp`, the QUIC port for `quic`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice_daemon::metrics::scrape::Scrape;
use sluice_testkit::daemon::{Daemon, DaemonSpec};
use sluice_testkit::relay::{self as impairment, Impairment, RelayHandle, RelayStats};
use sluice_transport::client::{ProducerOptions, Transport};

use super::{admin, producer_options, quic_options, Bed, Impaired, Load, LossConfig};
use crate::load::Outcome;
use crate::measure::Mark;

pub(super) struct RelayBed {
    daemon: Option<Daemon>,
    /// The relay's own runtime: one worker thread, apart from the
    /// producers' runtime.
    rt: tokio::runtime::Runtime,
    relay: Option<RelayHandle>,
    upstream: SocketAddr,
    to_daemon: Impairment,
    to_producers: Impairment,
    seed: u64,
    options: ProducerOptions,
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

impl RelayBed {
    pub(super) fn start(c: &LossConfig, work: &Path) -> Result<RelayBed, String> {
        let data = work.join("data");
        let mut spec = DaemonSpec::this_exe(&data)
            .map_err(|e| e.to_string())?
            .fsync(&c.fsync);
        let udp = c.path == "udp";
        if udp {
            spec = spec.insecure_lan();
        }
        let d = spec
            .try_start()
            .map_err(|e| format!("starting the daemon: {e}"))?;
        let (upstream, transport) = if udp {
            (d.data, Transport::Udp)
        } else {
            let q = quic_options(&data.join("tls/server.crt"), None)?;
            (d.quic, Transport::Quic(q))
        };
        let to_daemon = Impairment {
            loss: 0.0,
            reorder: c.reorder / 100.0,
            reorder_delay: ms(c.reorder_delay_ms),
            duplicate: c.duplicate / 100.0,
            delay: ms(c.delay_ms),
            jitter: ms(c.jitter_ms),
            ..Impairment::default()
        };
        let to_producers = if c.directions == "both" {
            to_daemon.clone()
        } else {
            Impairment::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay")
            .enable_all()
            .build()
            .map_err(|e| format!("the relay's runtime: {e}"))?;
        Ok(RelayBed {
            daemon: Some(d),
            rt,
            relay: None,
            upstream,
            to_daemon,
            to_producers,
            seed: c.seed,
            options: producer_options(transport),
        })
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running until finish")
    }
}

impl Bed for RelayBed {
    fn impair(&mut self, row: usize, loss_percent: f64) -> Result<SocketAddr, String> {
        let loss = loss_percent / 100.0;
        let to_daemon = Impairment {
            loss,
            ..self.to_daemon.clone()
        };
        let mut to_producers = self.to_producers.clone();
        if to_producers != Impairment::default() {
            to_producers.loss = loss;
        }
        let relay = self
            .rt
            .block_on(impairment::start(
                "127.0.0.1:0".parse().expect("literal"),
                self.upstream,
                to_daemon,
                to_producers,
                self.seed.wrapping_add(row as u64),
            ))
            .map_err(|e| format!("the relay: {e}"))?;
        let addr = relay.local_addr();
        self.relay = Some(relay);
        Ok(addr)
    }

    fn clear(&mut self) -> Option<Impaired> {
        let relay = self.relay.take()?;
        let s = relay.stats();
        let get = RelayStats::get;
        let (forwarded, dropped, duplicated) =
            (get(&s.forwarded), get(&s.dropped), get(&s.duplicated));
        // Each datagram the relay took was dropped or forwarded (twice if
        // duplicated).
        let datagrams = (forwarded + dropped).saturating_sub(duplicated);
        Some(Impaired {
            by: "relay",
            datagrams,
            dropped,
            duplicated,
            reordered: get(&s.reordered),
            dropped_fraction: dropped as f64 / datagrams.max(1) as f64,
        })
    }

    fn producers(&self, load: &Load) -> Result<Outcome<Mark>, String> {
        load(&self.options)
    }

    fn scrape(&self) -> Option<Scrape> {
        self.daemon().scrape().ok()
    }

    fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    fn udp_rcvbuf_errors(&self) -> Option<u64> {
        crate::measure::Machine::now().map(|m| m.udp_rcvbuf_errors)
    }

    fn stored(&self, stream: &str) -> Result<u64, String> {
        // Anonymous: every listener is on loopback.
        admin::stored(self.daemon().admin, None, stream)
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.relay = None;
        let d = self.daemon.take().expect("finished once");
        match d.try_terminate(Duration::from_secs(30)) {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("the daemon did not stop cleanly: {s}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
