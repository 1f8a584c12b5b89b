//! The configuration checked, once, at load: every value that the types
//! do not already rule out, and the runtime settings built from them. A
//! bad value is an error naming its key and why.

use std::time::Duration;

use super::values::{Conflate, FsyncMode, LogFormat, Size, XdpBind, XdpMode};
use super::{invalid, Config, ConfigError};
use crate::api::serve::AdminLimits;
use crate::auth::Authenticator;
use crate::consume::budget::ConsumerLimits;
use crate::consume::group::GroupConfig;
use crate::consume::service::{
    parse_key_rule, parse_start, ConsumersConfig, GroupSettings, OnBacklog,
};
use crate::consume::store::check_group_name;
use crate::credit::CreditPolicy;
use crate::forward::config::{check_subject, group_name, Auth, Create, ForwardConfig, Storage};
use crate::identity::{self, AdminTls};
use crate::pattern::is_pattern;
use crate::spool::keys::KeyLimits;
use crate::spool::scrub::ScrubConfig;
use crate::spool::{FsyncPolicy, LogConfig, Recovery, SpoolConfig};
use sluice_transport::quic::control::StartAt;
use sluice_transport::quic::tls;
use sluice_xdp::bpf::Mode;
use sluice_xdp::datapath::XdpSetup;
use sluice_xdp::xsk::{BindMode, BusyPoll, XskConfig, XskError};

/// What the daemon runs on, built from a checked [`Config`] (which stays
/// the source of the plain values: addresses, folders, counts).
#[derive(Debug)]
pub struct Settings {
    pub authenticator: Authenticator,
    /// Every listener on a loopback address: with no principals, local
    /// clients may act anonymously (the embedded default).
    pub loopback_only: bool,
    pub spool: SpoolConfig,
    pub consumers: ConsumersConfig,
    pub scrub: ScrubConfig,
    pub credit: CreditPolicy,
    /// The AF_XDP path; None when it is off.
    pub xdp: Option<XdpSetup>,
    pub admin: AdminLimits,
    /// Whether the admin port speaks HTTPS, and with what certificate.
    pub admin_tls: AdminTls,
    /// SO_RCVBUF asked of the data socket (0: the kernel's default).
    pub recv_buffer: usize,
    /// Forwards into NATS JetStream (`[[forward]]`).
    pub forwards: Vec<ForwardConfig>,
}

/// How the daemon logs (`[log]`), set up before it runs.
#[derive(Debug)]
pub struct Logging {
    /// What the log shows (`log.level`).
    pub filter: tracing_subscriber::EnvFilter,
    /// Lines as JSON, not text.
    pub json: bool,
}

/// What a configuration that passed [`Config::check`] gives.
#[derive(Debug)]
pub struct Checked {
    pub settings: Settings,
    pub logging: Logging,
}

/// `key` at least `min`.
fn at_least<T: PartialOrd>(
    key: &'static str,
    value: T,
    min: T,
    shown: &str,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {shown}")));
    }
    Ok(())
}

/// A size of at least `min` (said with its unit: `64KiB`).
fn min_size(key: &'static str, value: Size, min: Size) -> Result<(), ConfigError> {
    at_least(key, value, min, &min.to_string())
}

/// A count that must not be zero.
fn not_zero(key: &'static str, value: u64) -> Result<(), ConfigError> {
    at_least(key, value, 1, "1")
}

/// A size as a `usize` (no loss on the machines sluice runs on, but said
/// rather than truncated).
fn to_usize(key: &'static str, bytes: u64) -> Result<usize, ConfigError> {
    usize::try_from(bytes).map_err(|_| invalid(key, "too large for this machine"))
}

impl Config {
    /// Checks every value and builds the runtime settings; the error names
    /// the key.
    pub fn check(&self) -> Result<Checked, ConfigError> {
        let d = &self.data;
        if !(256..=65_507).contains(&d.max_datagram) {
            return Err(invalid("data.max_datagram", "must be within 256..=65507"));
        }
        not_zero("data.credit", d.credit.into())?;
        not_zero("data.max_sessions", d.max_sessions as u64)?;
        at_least("data.lease_seconds", d.lease_seconds, 5, "5")?;
        for (key, v) in [
            ("data.max_sessions_per_source", d.max_sessions_per_source),
            ("quic.max_connections", self.quic.max_connections),
            (
                "quic.max_connections_per_principal",
                self.quic.max_connections_per_principal,
            ),
            ("admin.max_connections", self.admin.max_connections),
            (
                "admin.max_connections_per_source",
                self.admin.max_connections_per_source,
            ),
            ("admin.max_page_requests", self.admin.max_page_requests),
            ("grpc.max_connections", self.grpc.max_connections),
            (
                "grpc.max_streams_per_connection",
                self.grpc.max_streams_per_connection as usize,
            ),
            (
                "grpc.max_streams_per_principal",
                self.grpc.max_streams_per_principal,
            ),
            ("consumers.max_groups", self.consumers.max_groups),
            ("streams.max_streams", self.streams.max_streams),
        ] {
            not_zero(key, v as u64)?;
        }
        let admin = self.admin_limits()?;
        // Below a second, pings would cost more than the idle connections
        // they find.
        at_least(
            "grpc.keepalive",
            self.grpc.keepalive.get(),
            Duration::from_secs(1),
            "1s",
        )?;
        // One largest message must fit, else it could never be read.
        const _: () = assert!(crate::grpc::MAX_REQUEST_TAKE as u64 <= Size::mib(17).bytes());
        min_size(
            "grpc.max_request_bytes",
            self.grpc.max_request_bytes,
            Size::mib(17),
        )?;
        at_least(
            "grpc.message_timeout",
            self.grpc.message_timeout.get(),
            Duration::from_secs(1),
            "1s",
        )?;
        let admin_tls = self.admin_tls()?;
        if self.quic.cert.as_os_str().is_empty() != self.quic.key.as_os_str().is_empty() {
            let missing = if self.quic.cert.as_os_str().is_empty() {
                "quic.cert"
            } else {
                "quic.key"
            };
            return Err(invalid(missing, "quic.cert and quic.key go together"));
        }
        let authenticator =
            Authenticator::new(&self.auth).map_err(|e| ConfigError::Auth(e.to_string()))?;
        let loopback_only = self.loopback_only();
        if authenticator.is_empty() && !loopback_only {
            let why = if self.xdp_off_machine() {
                "while xdp.interface takes packets from a NIC (from off the machine)"
            } else {
                "while listening beyond loopback"
            };
            return Err(invalid(
                "auth",
                format!(
                    "no principals (auth.tokens, auth.clients) {why}: anonymous clients are \
                     allowed only when nothing can reach the daemon from off the machine; mint a \
                     token with `sluice token new`"
                ),
            ));
        }
        min_size("data.window_bytes", d.window_bytes, Size::kib(64))?;
        let s = &self.spool;
        min_size("spool.max_backlog_bytes", s.max_backlog_bytes, Size::mib(1))?;
        let spool = self.spool_config()?;
        let scrub = self.scrub_config()?;
        for n in &self.streams.names {
            crate::spool::writer::check_name(n)
                .map_err(|e| invalid("streams.names", e.to_string()))?;
        }
        let xdp = self.xdp_setup()?;
        let mut consumers = self.consumers_config()?;
        let forwards = self.forward_config(&mut consumers)?;
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        let settings = Settings {
            authenticator,
            loopback_only,
            spool,
            consumers,
            scrub,
            credit: CreditPolicy {
                max_credit: d.credit,
                window_bytes: d.window_bytes.bytes(),
                backlog_limit: s.max_backlog_bytes.bytes(),
            },
            xdp,
            admin,
            admin_tls,
            recv_buffer: to_usize("data.recv_buffer", d.recv_buffer.bytes())?,
            forwards,
        };
        let logging = Logging {
            filter,
            json: self.log.format == LogFormat::Json,
        };
        Ok(Checked { settings, logging })
    }

    /// The AF_XDP path takes the data port's packets from a NIC's queues:
    /// from off the machine, whatever data.listen says (but on loopback's).
    fn xdp_off_machine(&self) -> bool {
        !self.xdp.interface.is_empty() && self.xdp.interface != "lo"
    }

    /// Whether every listener is on a loopback address.
    fn loopback_only(&self) -> bool {
        !self.xdp_off_machine()
            && [self.data.listen, self.quic.listen, self.admin.listen]
                .iter()
                .chain(self.grpc.enabled.then_some(&self.grpc.listen))
                .all(|a| a.ip().is_loopback())
    }

    fn admin_limits(&self) -> Result<AdminLimits, ConfigError> {
        let a = &self.admin;
        let timeout = |key: &'static str, d: Duration| {
            at_least(key, d, Duration::from_millis(100), "100ms").map(|()| d)
        };
        min_size("admin.page_bytes", a.page_bytes, Size::kib(64))?;
        Ok(AdminLimits {
            max_connections: a.max_connections,
            max_connections_per_source: a.max_connections_per_source,
            header_timeout: timeout("admin.header_timeout", a.header_timeout.get())?,
            idle_timeout: timeout("admin.idle_timeout", a.idle_timeout.get())?,
            page_bytes: a.page_bytes.bytes(),
            max_page_requests: a.max_page_requests,
        })
    }

    /// `admin.tls`: its own certificate is read and checked now, so that a
    /// missing file or a key of another certificate is a configuration
    /// error naming its key.
    fn admin_tls(&self) -> Result<AdminTls, ConfigError> {
        let a = &self.admin;
        let (no_cert, no_key) = (
            a.tls_cert.as_os_str().is_empty(),
            a.tls_key.as_os_str().is_empty(),
        );
        if no_cert != no_key {
            let missing = if no_cert {
                "admin.tls_cert"
            } else {
                "admin.tls_key"
            };
            return Err(invalid(
                missing,
                "admin.tls_cert and admin.tls_key go together",
            ));
        }
        if !a.tls {
            if !no_cert {
                // An operator who names a certificate expects HTTPS:
                // serving plain HTTP instead would be a silent surprise.
                return Err(invalid(
                    "admin.tls_cert",
                    "given while admin.tls is off: set admin.tls = true to serve HTTPS, or leave it empty",
                ));
            }
            return Ok(AdminTls::Off);
        }
        if no_cert {
            return Ok(AdminTls::QuicIdentity);
        }
        let chain =
            tls::load_certs(&a.tls_cert).map_err(|e| invalid("admin.tls_cert", e.to_string()))?;
        let key = tls::load_key(&a.tls_key).map_err(|e| invalid("admin.tls_key", e.to_string()))?;
        let config = identity::https_config(chain, key).map_err(|e| {
            let (k, c) = (a.tls_key.display(), a.tls_cert.display());
            invalid(
                "admin.tls_key",
                match e {
                    rustls::Error::InconsistentKeys(_) => {
                        format!("{k} is not the key of the certificate {c} (admin.tls_cert)")
                    }
                    e => format!("{k} with the certificate {c}: {e}"),
                },
            )
        })?;
        Ok(AdminTls::Own(config))
    }

    fn spool_config(&self) -> Result<SpoolConfig, ConfigError> {
        let s = &self.spool;
        let fsync = match s.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Never => FsyncPolicy::Never,
            FsyncMode::Interval => {
                let d = s.fsync_interval.get();
                if d.is_zero() {
                    return Err(invalid("spool.fsync_interval", "must be more than zero"));
                }
                FsyncPolicy::Interval(d)
            }
        };
        min_size("spool.segment_bytes", s.segment_bytes, Size::mib(1))?;
        min_size("spool.max_batch_bytes", s.max_batch_bytes, Size::kib(64))?;
        at_least(
            "spool.idempotency_window",
            s.idempotency_window.get(),
            Duration::from_secs(1),
            "1s",
        )?;
        not_zero("spool.idempotency_keys", s.idempotency_keys)?;
        let retention_bytes = s.retention_bytes.bytes();
        Ok(SpoolConfig {
            log: LogConfig {
                segment_bytes: s.segment_bytes.bytes(),
                max_batch_bytes: to_usize("spool.max_batch_bytes", s.max_batch_bytes.bytes())?,
                recovery: if s.repair {
                    Recovery::Repair
                } else {
                    Recovery::Recover
                },
                keys: KeyLimits {
                    window_us: s.idempotency_window.get().as_micros() as u64,
                    max: to_usize("spool.idempotency_keys", s.idempotency_keys)?,
                },
                ..LogConfig::default()
            },
            fsync,
            min_free_bytes: s.min_free_bytes.bytes(),
            retention_bytes: (retention_bytes > 0).then_some(retention_bytes),
            retention_age: s.retention_age.get(),
            max_streams: self.streams.max_streams,
        })
    }

    fn scrub_config(&self) -> Result<ScrubConfig, ConfigError> {
        let interval = self.spool.scrub_interval.get();
        at_least(
            "spool.scrub_interval",
            interval,
            Duration::from_secs(1),
            "1s",
        )?;
        Ok(ScrubConfig {
            bytes_per_sec: self.spool.scrub_bytes_per_sec.bytes(),
            interval,
        })
    }

    fn xdp_setup(&self) -> Result<Option<XdpSetup>, ConfigError> {
        let x = &self.xdp;
        if x.interface.is_empty() {
            return Ok(None);
        }
        if x.rx_linger_us > 1_000 {
            return Err(invalid(
                "xdp.rx_linger_us",
                "at most 1000: it adds up to this much latency to every packet",
            ));
        }
        if x.queues.is_empty() {
            return Err(invalid("xdp.queues", "name at least one queue"));
        }
        let mut sorted = x.queues.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != x.queues.len() {
            return Err(invalid("xdp.queues", "a queue is named twice"));
        }
        if !x.cpus.is_empty() && x.cpus.len() != x.queues.len() {
            return Err(invalid(
                "xdp.cpus",
                format!(
                    "{} CPUs for {} queues: give one per queue, in the order of xdp.queues, or none",
                    x.cpus.len(),
                    x.queues.len()
                ),
            ));
        }
        let socket = XskConfig {
            frame_size: x.frame_size,
            frame_count: x.frame_count,
            rx_ring: x.rx_ring,
            tx_ring: x.tx_ring,
            fill_ring: x.fill_ring,
            comp_ring: x.fill_ring.max(x.tx_ring),
            bind: match x.bind {
                XdpBind::Auto => BindMode::Auto,
                XdpBind::Zerocopy => BindMode::ZeroCopy,
                XdpBind::Copy => BindMode::Copy,
            },
            need_wakeup: true,
            busy_poll: x.busy_poll.then_some(BusyPoll {
                usecs: 20,
                budget: 64,
            }),
        };
        socket.validate().map_err(|e| match e {
            XskError::Config { field, problem } => invalid(xdp_key(field), problem),
            other => invalid("xdp", other.to_string()),
        })?;
        Ok(Some(XdpSetup {
            interface: x.interface.clone(),
            queues: x.queues.clone(),
            cpus: x.cpus.clone(),
            mode: match x.mode {
                XdpMode::Auto => Mode::Auto,
                XdpMode::Native => Mode::Native,
                XdpMode::Generic => Mode::Generic,
            },
            socket,
            replace_foreign: x.replace_foreign,
            rx_linger: Duration::from_micros(x.rx_linger_us),
        }))
    }

    fn consumers_config(&self) -> Result<ConsumersConfig, ConfigError> {
        let c = &self.consumers;
        let positive = |key: &'static str, d: Duration| {
            if d.is_zero() {
                return Err(invalid(key, "must be more than zero"));
            }
            Ok(d)
        };
        not_zero("consumers.max_deliveries", c.max_deliveries.into())?;
        not_zero("consumers.read_ahead", c.read_ahead as u64)?;
        let defaults = GroupSettings {
            machine: GroupConfig {
                ack_deadline: positive("consumers.ack_deadline", c.ack_deadline.get())?,
                max_ack_extension: positive(
                    "consumers.max_ack_extension",
                    c.max_ack_extension.get(),
                )?,
                max_deliveries: c.max_deliveries,
                read_ahead: c.read_ahead,
                read_ahead_bytes: c.read_ahead_bytes.bytes().max(1),
                conflate: None,
            },
            retain_until_acked: false,
            start: StartAt::Earliest,
            max_backlog: 0,
            on_backlog: OnBacklog::Hold,
            no_reset: None,
        };
        let mut groups: Vec<(String, String, GroupSettings)> = Vec::new();
        for g in &c.groups {
            let at = |reason: String| {
                invalid(
                    "consumers.groups",
                    format!("group {:?} of stream {:?}: {reason}", g.group, g.stream),
                )
            };
            crate::spool::writer::check_name(&g.stream).map_err(|e| at(e.to_string()))?;
            check_group_name(&g.group).map_err(at)?;
            if groups
                .iter()
                .any(|(s, n, _)| *s == g.stream && *n == g.group)
            {
                return Err(at("named twice".into()));
            }
            let mut machine = defaults.machine.clone();
            if let Some(d) = g.ack_deadline.get() {
                if d.is_zero() {
                    return Err(at("ack_deadline: must be more than zero".into()));
                }
                machine.ack_deadline = d;
            }
            if g.max_deliveries > 0 {
                machine.max_deliveries = g.max_deliveries;
            }
            machine.conflate = match g.conflate {
                Conflate::None => None,
                Conflate::LatestPerKey => Some(
                    parse_key_rule(&g.conflate_key)
                        .map_err(|e| at(format!("conflate_key: {e}")))?,
                ),
            };
            let start = parse_start(&g.start).map_err(|e| at(format!("start: {e}")))?;
            drop_needs_a_limit(g.on_backlog, g.max_backlog).map_err(at)?;
            groups.push((
                g.stream.clone(),
                g.group.clone(),
                GroupSettings {
                    machine,
                    retain_until_acked: g.retain_until_acked,
                    start,
                    max_backlog: g.max_backlog,
                    on_backlog: g.on_backlog,
                    no_reset: None,
                },
            ));
        }
        for (key, v) in [
            ("consumers.max_member_bytes", c.max_member_bytes.bytes()),
            (
                "consumers.max_connection_bytes",
                c.max_connection_bytes.bytes(),
            ),
            ("consumers.max_out_bytes", c.max_out_bytes.bytes()),
            (
                "consumers.max_member_messages",
                c.max_member_messages.into(),
            ),
        ] {
            not_zero(key, v)?;
        }
        Ok(ConsumersConfig {
            limits: ConsumerLimits {
                max_member_messages: c.max_member_messages,
                max_member_bytes: c.max_member_bytes.bytes(),
                max_connection_bytes: c.max_connection_bytes.bytes(),
                max_out_bytes: c.max_out_bytes.bytes(),
                max_groups: c.max_groups,
            },
            defaults,
            groups,
        })
    }
}

/// The ack deadline of a forward's group: a day (see `forward_config`).
const FORWARD_ACK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Config {
    /// The `[[forward]]` entries checked; each adds its consumer group
    /// (`forward.<name>`) on each of its streams to `consumers`, with the
    /// entry's retention and backpressure.
    fn forward_config(
        &self,
        consumers: &mut ConsumersConfig,
    ) -> Result<Vec<ForwardConfig>, ConfigError> {
        let mut out: Vec<ForwardConfig> = Vec::new();
        for f in &self.forward {
            let at = |reason: String| invalid("forward", format!("forward {:?}: {reason}", f.name));
            check_group_name(&group_name(&f.name))
                .map_err(|e| at(format!("name: {e} (the name makes group forward.<name>)")))?;
            if out.iter().any(|o| o.name == f.name) {
                return Err(at("named twice".into()));
            }
            if f.streams.is_empty() {
                return Err(at("streams: name at least one stream".into()));
            }
            for s in &f.streams {
                // A pattern: `*` for any run of a stream name's characters.
                let sample = s.replace('*', "x");
                crate::spool::writer::check_name(&sample).map_err(|_| {
                    at(format!(
                        "streams: {s:?} is not a stream name or a pattern (letters, digits, `.`, `_`, `-`, and `*` for any run of them)"
                    ))
                })?;
                let rendered = f
                    .subject
                    .replace("{stream}", &sample)
                    .replace("{producer}", "1");
                check_subject(&rendered).map_err(|e| at(format!("subject: {e}")))?;
            }
            let patterns = f.streams.iter().any(|s| is_pattern(s));
            if patterns && f.subject.starts_with("{stream}") {
                return Err(at(
                    "subject: with a pattern in streams, the subject needs a fixed start before `{stream}` (a created stream takes `<start>.>`)".into(),
                ));
            }
            if (f.streams.len() > 1 || patterns) && !f.subject.contains("{stream}") {
                return Err(at(
                    "subject: several streams need `{stream}` in the subject (their messages would mix)".into(),
                ));
            }
            if f.servers.is_empty() {
                return Err(at(
                    "servers: name at least one, e.g. nats://127.0.0.1:4222".into()
                ));
            }
            for u in &f.servers {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| at(format!("servers: {u:?} is not a NATS URL: {e}")))?;
            }
            if f.target_stream.is_empty()
                || f.target_stream
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
            {
                return Err(at(format!(
                    "target_stream: {:?} is not a JetStream stream name (no spaces, dots, wildcards or slashes)",
                    f.target_stream
                )));
            }
            let create = if f.create {
                if !(1..=5).contains(&f.replicas) {
                    return Err(at(format!("replicas: {} is not within 1..=5", f.replicas)));
                }
                let storage = match f.storage.as_str() {
                    "file" => Storage::File,
                    "memory" => Storage::Memory,
                    other => {
                        return Err(at(format!("storage: {other:?} is not one of file, memory")))
                    }
                };
                Some(Create {
                    replicas: f.replicas,
                    storage,
                })
            } else {
                None
            };
            let given = |p: &std::path::PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
            // Said before the match below: a password beside a token (no
            // user) would otherwise be taken for nothing.
            if !f.password.is_empty() && f.user.is_empty() {
                return Err(at("password: given without user".into()));
            }
            let credentials: Vec<&str> = [
                ("token", !f.token.is_empty()),
                ("user", !f.user.is_empty()),
                ("creds_file", given(&f.creds_file).is_some()),
                ("nkey_file", given(&f.nkey_file).is_some()),
            ]
            .into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect();
            if credentials.len() > 1 {
                return Err(at(format!(
                    "{} are all given: give one of token, user (with password), creds_file, nkey_file",
                    credentials.join(", ")
                )));
            }
            let auth = match (
                f.token.is_empty(),
                f.user.is_empty(),
                given(&f.creds_file),
                given(&f.nkey_file),
            ) {
                (true, true, None, None) => Auth::None,
                (false, true, None, None) => Auth::Token(f.token.clone()),
                (true, false, None, None) => Auth::UserPassword {
                    user: f.user.clone(),
                    password: f.password.clone(),
                },
                (true, true, Some(p), None) => Auth::CredsFile(p),
                (true, true, None, Some(p)) => Auth::NKeyFile(p),
                // Two or more: refused above already, with their names.
                _ => {
                    return Err(at(
                        "give one of token, user (with password), creds_file, nkey_file".into(),
                    ))
                }
            };
            drop_needs_a_limit(f.on_backlog, f.max_backlog).map_err(at)?;
            not_zero("forward", f.max_in_flight.into())
                .map_err(|_| at("max_in_flight: must be at least 1".into()))?;
            let replicated = match f.ack.as_str() {
                "local" => false,
                // What retention dropped unforwarded would pass the
                // forward's floor and count as in JetStream.
                "replicated" if !f.retain => {
                    return Err(at(
                        "ack: \"replicated\" needs retain = true (a message dropped unforwarded could not be acked)".into(),
                    ))
                }
                // The producers' acks would wait for what was dropped.
                "replicated" if f.on_backlog == OnBacklog::DropOldest => {
                    return Err(at(
                        "ack: \"replicated\" cannot go with on_backlog = \"drop_oldest\" (a producer's ack waits for JetStream to store its message, and a dropped one never is)".into(),
                    ))
                }
                "replicated" => true,
                other => {
                    return Err(at(format!(
                        "ack: {other:?} is not one of local, replicated"
                    )))
                }
            };
            let group = group_name(&f.name);
            for s in &f.streams {
                if consumers
                    .groups
                    .iter()
                    .any(|(gs, g, _)| gs == s && *g == group)
                {
                    return Err(at(format!(
                        "group {group} of stream {s:?} is also in [[consumers.groups]]"
                    )));
                }
                let mut machine = consumers.defaults.machine.clone();
                // A forward never gives a message up: a failed publish is
                // retried until the cluster takes it.
                machine.max_deliveries = u32::MAX;
                machine.conflate = None;
                // The forward holds what it sent until JetStream confirms it
                // (through an outage too) and resends it itself, in order:
                // the group has no reason to deliver it again meanwhile.
                machine.ack_deadline = FORWARD_ACK_DEADLINE;
                consumers.groups.push((
                    s.clone(),
                    group.clone(),
                    GroupSettings {
                        machine,
                        retain_until_acked: f.retain,
                        start: StartAt::Earliest,
                        max_backlog: f.max_backlog,
                        on_backlog: f.on_backlog,
                        // Below its floor the producers' acks take
                        // messages as in JetStream (forward/confirm.rs).
                        no_reset: replicated.then_some(
                            "it forwards with ack = \"replicated\": its floor says what JetStream has, and producers' acks rely on it",
                        ),
                    },
                ));
            }
            out.push(ForwardConfig {
                name: f.name.clone(),
                streams: f.streams.clone(),
                servers: f.servers.clone(),
                subject: f.subject.clone(),
                target_stream: f.target_stream.clone(),
                create,
                auth,
                tls_ca: (!f.tls_ca.as_os_str().is_empty()).then(|| f.tls_ca.clone()),
                max_in_flight: f.max_in_flight,
                replicated,
            });
        }
        Ok(out)
    }
}

/// `on_backlog = "drop_oldest"` drops at `max_backlog`: it needs one.
fn drop_needs_a_limit(on: OnBacklog, max_backlog: u64) -> Result<(), String> {
    if on == OnBacklog::DropOldest && max_backlog == 0 {
        return Err(
            "on_backlog: \"drop_oldest\" needs max_backlog (the backlog to drop at)".into(),
        );
    }
    Ok(())
}

/// The `[xdp]` key of an AF_XDP socket setting.
fn xdp_key(field: &str) -> &'static str {
    match field {
        "frame_size" => "xdp.frame_size",
        "frame_count" => "xdp.frame_count",
        "rx_ring" => "xdp.rx_ring",
        "tx_ring" => "xdp.tx_ring",
        "fill_ring" | "comp_ring" => "xdp.fill_ring",
        _ => "xdp",
    }
}
