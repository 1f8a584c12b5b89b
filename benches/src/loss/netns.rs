//! Netns mode (root): namespaces `sluice-lsa-PID` (producers) and
//! `sluice-lsb-PID` (`sluiced`) joined by a veth pair with private
//! addresses (10.199.x.1 and .2), and for each row an nftables table on the
//! producers' veth end that drops the given share of their datagrams to
//! the daemon's port at random on egress, before the daemon's side sees
//! them (the sender gets no error).
//!
//! The daemon is this binary's hidden `daemon` subcommand run with `ip
//! netns exec` (as `sluice-bench xdp`'s durable part does); its listeners
//! are beyond loopback, so it gets one token for the run's streams. The
//! producers run on a thread that entered namespace a, where their runtime
//! and sockets are made. Everything is removed by guards when the bed is
//! dropped: the nftables table, the daemon, then the namespaces (which
//! takes the veth pair with them), also when the run fails or panics.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use sluice_daemon::metrics::scrape::Scrape;
use sluice_testkit::daemon::{self as launcher, Daemon, DaemonSpec, NS_DATA_PORT, NS_QUIC_PORT};
use sluice_testkit::testnet::{self, Link, Loss, Netns};
use sluice_transport::client::{ProducerOptions, Transport};

use super::{admin, producer_options, quic_options, Bed, Impaired, Load, LossConfig};
use crate::load::Outcome;
use crate::measure::Mark;

pub(super) struct NetnsBed {
    // Dropped in this order: the rule, the daemon, then the namespaces.
    loss: Option<Loss>,
    daemon: Option<Daemon>,
    link: Link,
    token: String,
    options: ProducerOptions,
    quic: SocketAddr,
    loss_port: u16,
    admin: SocketAddr,
}

impl NetnsBed {
    pub(super) fn start(c: &LossConfig, work: &Path) -> Result<NetnsBed, String> {
        if !testnet::is_root() {
            return Err(
                "--netns needs root (it makes network namespaces and nftables rules); \
                        without root, leave out --netns to run through the impairment relay"
                    .into(),
            );
        }
        for tool in ["ip", "nft"] {
            if !testnet::has_tool(tool) {
                return Err(format!(
                    "--netns needs `{tool}` (packages iproute2 and nftables)"
                ));
            }
        }
        let link = Link::create("ls", 1);
        eprintln!(
            "loss: namespaces {} (producers, {}) and {} (sluiced, {})",
            link.a.ns.name(),
            link.a.ip,
            link.b.ns.name(),
            link.b.ip
        );
        let token = sluice_daemon::auth::new_token();
        let config = work.join("sluiced.toml");
        launcher::write_token_config(
            &config,
            &token,
            "publish = [\"loss-*\"]\nconsume = [\"loss-*\"]\n",
        )?;
        let b_ip: IpAddr = link
            .b
            .ip
            .parse()
            .map_err(|e| format!("address {}: {e}", link.b.ip))?;
        let data = work.join("data");
        let d = DaemonSpec::this_exe(&data)
            .and_then(|s| {
                let s = s.in_netns(b_ip).fsync(&c.fsync).arg("--config");
                s.arg(config.display().to_string()).try_start_in(&link.b.ns)
            })
            .map_err(|e| format!("the daemon in {}: {e}", link.b.ns.name()))?;
        let admin = d.admin;
        let quic = quic_options(&data.join("tls/server.crt"), Some(token.clone()))?;
        let (transport, loss_port) = if c.path == "quic" {
            (Transport::Quic(quic), NS_QUIC_PORT)
        } else {
            (Transport::FastPath(quic), NS_DATA_PORT)
        };
        Ok(NetnsBed {
            loss: None,
            daemon: Some(d),
            link,
            token,
            options: producer_options(transport),
            quic: SocketAddr::new(b_ip, NS_QUIC_PORT),
            loss_port,
            admin,
        })
    }
}

impl Bed for NetnsBed {
    fn impair(&mut self, _row: usize, loss_percent: f64) -> Result<SocketAddr, String> {
        self.loss = None;
        let a = &self.link.a;
        self.loss = Some(Loss::add(&a.ns, &a.iface, self.loss_port, loss_percent));
        Ok(self.quic)
    }

    fn clear(&mut self) -> Option<Impaired> {
        let loss = self.loss.take()?;
        let (datagrams, dropped) = loss.counters()?;
        Some(Impaired {
            by: "nftables",
            datagrams,
            dropped,
            duplicated: 0,
            reordered: 0,
            dropped_fraction: dropped as f64 / datagrams.max(1) as f64,
        })
    }

    fn producers(&self, load: &Load) -> Result<Outcome<Mark>, String> {
        let options = &self.options;
        self.link.a.ns.enter(|| load(options))
    }

    fn scrape(&self) -> Option<Scrape> {
        self.daemon.as_ref()?.scrape().ok()
    }

    fn daemon_pid(&self) -> Option<u32> {
        // `ip netns exec` execs the daemon: the child is the daemon.
        self.daemon.as_ref().map(|d| d.pid())
    }

    fn udp_rcvbuf_errors(&self) -> Option<u64> {
        let count = |ns: &Netns| ns.enter(|| testnet::udp_counter("RcvbufErrors"));
        Some(count(&self.link.a.ns)? + count(&self.link.b.ns)?)
    }

    fn stored(&self, stream: &str) -> Result<u64, String> {
        let (admin, token) = (self.admin, self.token.as_str());
        self.link
            .b
            .ns
            .enter(move || admin::stored(admin, Some(token), stream))
    }

    fn finish(mut self: Box<Self>) -> Result<(), String> {
        self.loss = None;
        let d = self.daemon.take().expect("finished once");
        // The namespaces go when `self` is dropped.
        match d
            .try_terminate(Duration::from_secs(30))
            .map_err(|e| e.to_string())?
        {
            s if s.success() => Ok(()),
            s => Err(format!("the daemon did not stop cleanly: {s}")),
        }
    }
}
