use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::consume::service::{parse_start, OnBacklog};
use crate::spool::FsyncPolicy;
use sluice_transport::quic::control::StartAt;

fn parse(text: &str) -> Result<Config, String> {
    let c = Config::from_toml(text)?;
    c.check().map_err(|e| e.to_string())?;
    Ok(c)
}

fn checked(text: &str) -> Settings {
    Config::from_toml(text).unwrap().check().unwrap().settings
}

/// Every key of the file, as `section.key`, but the tables of the file
/// only (`[auth]`, `consumers.groups`).
fn keys_of_the_file() -> BTreeSet<String> {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = BTreeSet::new();
    for (section, table) in defaults.as_table().unwrap() {
        if section == "auth" {
            continue;
        }
        for key in table.as_table().unwrap().keys() {
            if section == "consumers" && key == "groups" {
                continue;
            }
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

fn args(line: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_args_from(std::iter::once("sluiced").chain(line.iter().copied()))
}

#[test]
fn every_option_names_a_key_of_the_configuration_and_help_shows_its_default() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let command = Args::command();
    let mut named = 0;
    for a in command.get_arguments() {
        let id = a.get_id().as_str();
        let Some((section, key)) = id.split_once('.') else {
            continue;
        };
        named += 1;
        let long = a.get_long().unwrap_or_default();
        assert!(
            defaults.get(section).and_then(|t| t.get(key)).is_some(),
            "--{long} names [{id}], which the configuration lacks"
        );
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(
            help.starts_with(&format!("[{id}] ")),
            "--{long}'s help does not start with its key: {help}"
        );
        assert!(help.contains("[default: "), "{help}");
        assert!(
            !help.contains('\n'),
            "-h shows one line for --{long}: {help}"
        );
        assert!(
            a.get_help_heading()
                .is_some_and(|h| h.ends_with(&format!("[{section}]"))),
            "--{long} is not under its section's heading"
        );
    }
    assert!(named > 50, "only {named} options name a key");
}

#[test]
fn every_key_has_one_flag_and_one_variable_named_by_the_rule() {
    let command = Args::command();
    let mut flags = BTreeSet::new();
    let mut longs = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for a in command.get_arguments() {
        let id = a.get_id().as_str();
        if !id.contains('.') {
            continue;
        }
        assert!(flags.insert(id.to_owned()), "{id} has two flags");
        let long = a.get_long().expect("a long flag");
        let env = a
            .get_env()
            .expect("a variable")
            .to_string_lossy()
            .into_owned();
        // The two exceptions, kept from before the rule.
        let (want_long, want_env) = match id {
            "streams.names" => ("streams".to_owned(), "SLUICED_STREAMS".to_owned()),
            "spool.repair" => ("repair".to_owned(), "SLUICED_SPOOL_REPAIR".to_owned()),
            _ => (flag_name(id), env_name(id)),
        };
        assert_eq!(long, want_long, "{id}");
        assert_eq!(env, want_env, "{id}");
        assert!(longs.insert(long.to_owned()), "--{long} twice");
        assert!(envs.insert(env.clone()), "{env} twice");
    }
    assert_eq!(
        flags,
        keys_of_the_file(),
        "keys without a flag, or flags without a key"
    );
    assert_eq!(
        flag_name("data.max_sessions_per_source"),
        "data-max-sessions-per-source"
    );
    assert_eq!(env_name("xdp.rx_linger_us"), "SLUICED_XDP_RX_LINGER_US");
}

#[test]
fn defaults_are_valid_and_round_trip() {
    let c = Config::default();
    c.check().unwrap();
    assert_eq!(parse(&c.to_toml()).unwrap(), c);
    assert_eq!(c.data.listen.to_string(), "127.0.0.1:7401");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:7480");
}

#[test]
fn the_sample_configuration_is_valid() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/sluiced.toml");
    let c = Config::from_file(std::path::Path::new(sample)).unwrap();
    let s = c.check().unwrap().settings;
    assert_eq!(c.spool.dir, PathBuf::from("/var/lib/sluice"));
    assert_eq!(s.spool.retention_age, Some(Duration::from_secs(7 * 86400)));
    assert!(c.check().unwrap().logging.json);
}

#[test]
fn errors_name_the_key() {
    let e = parse("[spool]\nfsync = \"sometimes\"\n").unwrap_err();
    assert!(e.contains("spool.fsync") && e.contains("sometimes"), "{e}");
    assert!(
        e.contains("always") && e.contains("interval") && e.contains("never"),
        "the allowed words are named: {e}"
    );
    let e = parse("[data]\ncredit = 0\n").unwrap_err();
    assert!(e.contains("data.credit"), "{e}");
    let e = parse("[data]\nlisten = \"not an address\"\n").unwrap_err();
    assert!(e.contains("data.listen"), "{e}");
    let e = parse("[spool]\nretention_age = \"soon\"\n").unwrap_err();
    assert!(e.contains("spool.retention_age"), "{e}");
    let e = parse("[spool]\nfsnyc = \"always\"\n").unwrap_err();
    assert!(e.contains("fsnyc"), "unknown keys are named: {e}");
    let e = parse("[spool]\nsegment_bytes = \"64 parsecs\"\n").unwrap_err();
    assert!(
        e.contains("spool.segment_bytes") && e.contains("MiB"),
        "{e}"
    );
    let e = parse("[admin]\npage_bytes = -5\n").unwrap_err();
    assert!(e.contains("admin.page_bytes"), "{e}");
    let e = parse("\n[log]\nformat = \"xml\"\n").unwrap_err();
    assert!(
        e.contains("log.format") && e.contains("line 3") && e.contains("json"),
        "{e}"
    );
    let e = parse("[xdp]\nmode = \"fast\"\n").unwrap_err();
    assert!(e.contains("xdp.mode") && e.contains("generic"), "{e}");
    let e = parse("[log]\nlevel = \"info,[\"\n").unwrap_err();
    assert!(e.contains("log.level"), "{e}");
}

#[test]
fn sizes_take_units_and_print_as_integers() {
    let c = parse("[spool]\nsegment_bytes = \"64MiB\"\nmin_free_bytes = \"1 GiB\"\nretention_bytes = 5000000\n[admin]\npage_bytes = \"100KB\"\n").unwrap();
    assert_eq!(c.spool.segment_bytes, Size(64 << 20));
    assert_eq!(c.spool.min_free_bytes, Size(1 << 30));
    assert_eq!(c.spool.retention_bytes, Size(5_000_000));
    assert_eq!(c.admin.page_bytes, Size(100_000));
    let printed = c.to_toml();
    assert!(printed.contains("segment_bytes = 67108864"), "{printed}");
    assert!(printed.contains("min_free_bytes = 1073741824"), "{printed}");
    assert!(printed.contains("page_bytes = 100000"), "{printed}");
    assert_eq!(parse(&printed).unwrap(), c);
    let s = c.check().unwrap().settings;
    assert_eq!(s.spool.log.segment_bytes, 64 << 20);
    assert_eq!(s.spool.retention_bytes, Some(5_000_000));
    assert_eq!(s.admin.page_bytes, 100_000);
    // And from flags.
    let a = args(&["--spool-segment-bytes", "2MiB", "--data-recv-buffer", "0"]).unwrap();
    let mut c = Config::default();
    c.apply(&a);
    assert_eq!(c.spool.segment_bytes, Size(2 << 20));
    assert_eq!(c.data.recv_buffer, Size(0));
}

#[test]
fn durations_are_typed_and_round_trip() {
    let c = parse("[admin]\nidle_timeout = \"90s\"\n[spool]\nfsync = \"interval\"\nfsync_interval = \"250ms\"\nretention_age = \"7d\"\nscrub_interval = \"36h\"\n[consumers]\nack_deadline = \"1m\"\n").unwrap();
    let printed = c.to_toml();
    for line in [
        "idle_timeout = \"90s\"",
        "fsync_interval = \"250ms\"",
        "retention_age = \"7d\"",
        "scrub_interval = \"36h\"",
        "ack_deadline = \"60s\"",
        "header_timeout = \"10s\"",
        "max_ack_extension = \"12h\"",
    ] {
        assert!(printed.contains(line), "{line}:\n{printed}");
    }
    assert_eq!(parse(&printed).unwrap(), c);
    let s = c.check().unwrap().settings;
    assert_eq!(s.admin.idle_timeout, Duration::from_secs(90));
    assert_eq!(
        s.spool.fsync,
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    assert_eq!(s.spool.retention_age, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(s.scrub.interval, Duration::from_secs(36 * 3600));
    assert_eq!(
        s.consumers.defaults.machine.ack_deadline,
        Duration::from_secs(60)
    );
    // "Keep all": the empty string, printed back as such.
    let c = Config::default();
    assert!(c.to_toml().contains("retention_age = \"\""));
    assert_eq!(c.check().unwrap().settings.spool.retention_age, None);
    for (text, key) in [
        (
            "[admin]\nheader_timeout = \"50ms\"\n",
            "admin.header_timeout",
        ),
        ("[spool]\nscrub_interval = \"\"\n", "spool.scrub_interval"),
        (
            "[spool]\nfsync = \"interval\"\nfsync_interval = \"0s\"\n",
            "spool.fsync_interval",
        ),
        (
            "[consumers]\nmax_ack_extension = \"0s\"\n",
            "consumers.max_ack_extension",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn xdp_settings_are_checked_with_their_keys() {
    // A token: an XDP interface takes packets from off the machine.
    let on = "[[auth.tokens]]\nname = \"t\"\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n[xdp]\ninterface = \"eth1\"\n";
    let setup = checked(&format!("{on}mode = \"generic\"\nbind = \"zerocopy\"\n"))
        .xdp
        .unwrap();
    assert_eq!(setup.mode, sluice_xdp::bpf::Mode::Generic);
    assert_eq!(setup.socket.bind, sluice_xdp::xsk::BindMode::ZeroCopy);
    assert!(
        Config::default().check().unwrap().settings.xdp.is_none(),
        "off by default"
    );
    for (extra, key) in [
        ("mode = \"fast\"", "xdp.mode"),
        ("bind = \"maybe\"", "xdp.bind"),
        ("queues = []", "xdp.queues"),
        ("queues = [1, 1]", "xdp.queues"),
        ("queues = [0, 1]\ncpus = [3]", "xdp.cpus"),
        ("frame_size = 3000", "xdp.frame_size"),
        ("rx_ring = 1000", "xdp.rx_ring"),
        ("frame_count = 1024", "xdp.frame_count"),
        ("rx_linger_us = 5000", "xdp.rx_linger_us"),
    ] {
        let e = parse(&format!("{on}{extra}\n")).unwrap_err();
        assert!(e.contains(key), "{extra}: {e}");
    }
}

#[test]
fn consumer_settings_are_checked_with_their_keys() {
    let g = "[[consumers.groups]]\nstream = \"orders\"\ngroup = \"billing\"\n";
    let s = checked(&format!("{g}conflate = \"latest_per_key\"\nconflate_key = \"delimiter:=\"\nmax_deliveries = 2\nstart = \"offset:7\"\nack_deadline = \"5m\"\n"));
    let (_, _, s) = &s.consumers.groups[0];
    assert_eq!(s.machine.max_deliveries, 2);
    assert_eq!(s.start, StartAt::Offset(7));
    assert!(s.machine.conflate.is_some());
    assert_eq!(s.machine.ack_deadline, Duration::from_secs(300));
    assert_eq!(s.on_backlog, OnBacklog::Hold);
    let s = checked(&format!(
        "{g}max_backlog = 100\non_backlog = \"drop_oldest\"\n"
    ));
    assert_eq!(s.consumers.groups[0].2.on_backlog, OnBacklog::DropOldest);
    // An empty ack_deadline keeps the consumers' one.
    let s = checked(&format!("{g}ack_deadline = \"\"\n"));
    assert_eq!(
        s.consumers.groups[0].2.machine.ack_deadline,
        Duration::from_secs(30)
    );
    for (text, key) in [
        (
            "[consumers]\nack_deadline = \"soon\"\n".to_owned(),
            "consumers.ack_deadline",
        ),
        (
            "[consumers]\nmax_deliveries = 0\n".to_owned(),
            "consumers.max_deliveries",
        ),
        (format!("{g}conflate = \"sometimes\"\n"), "conflate"),
        (format!("{g}conflate = \"sometimes\"\n"), "latest_per_key"),
        (
            format!("{g}conflate = \"latest_per_key\"\nconflate_key = \"prefix:x\"\n"),
            "conflate_key",
        ),
        (format!("{g}start = \"yesterday\"\n"), "start"),
        (format!("{g}ack_deadline = \"0s\"\n"), "ack_deadline"),
        (
            "[[consumers.groups]]\nstream = \"s\"\ngroup = \"../x\"\n".to_owned(),
            "consumers.groups",
        ),
        (format!("{g}{g}"), "named twice"),
        (
            format!("{g}on_backlog = \"drop_oldest\"\n"),
            "needs max_backlog",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        assert!(e.contains(key), "{text}: {e}");
    }
    assert!(parse_start("time:2026-12-01T10:00:00Z").is_ok());
}

#[test]
fn an_xdp_interface_refuses_anonymous_clients() {
    let e = parse("[xdp]\ninterface = \"eth1\"\n").unwrap_err();
    assert!(e.contains("auth") && e.contains("xdp.interface"), "{e}");
    // On loopback's own interface nothing comes from off the machine.
    parse("[xdp]\ninterface = \"lo\"\n").unwrap();
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "[data]\ncredit = 10\nmax_sessions = 7\n[spool]\ndir = \"/from/file\"\nfsync = \"never\"\n",
    )
    .unwrap();
    let a = args(&[
        "--config",
        path.to_str().unwrap(),
        "--spool-dir",
        "/from/flag",
        "--data-credit",
        "30",
        "--xdp-queues",
        "2,3",
        "--xdp-queues",
        "5",
        "--streams",
        "a,b",
        "--spool-fsync",
        "interval",
    ])
    .unwrap();
    let (c, _) = Config::load(&a).unwrap();
    assert_eq!(c.data.credit, 30);
    assert_eq!(c.data.max_sessions, 7, "the file's value stays");
    assert_eq!(c.spool.dir, PathBuf::from("/from/flag"));
    assert_eq!(c.spool.fsync, FsyncMode::Interval);
    assert_eq!(c.xdp.queues, vec![2, 3, 5]);
    assert_eq!(c.streams.names, vec!["a".to_owned(), "b".to_owned()]);
    // Built by hand, as a program running the daemon may.
    let a = Args {
        config: Some(path),
        spool: SpoolFlags {
            dir: Some("/by/hand".into()),
            ..SpoolFlags::default()
        },
        ..Args::default()
    };
    let (c, _) = Config::load(&a).unwrap();
    assert_eq!(c.spool.dir, PathBuf::from("/by/hand"));
    assert_eq!(c.data.credit, 10);
}

#[test]
fn repair_is_a_switch_that_only_turns_repair_on() {
    let dir = tempfile::tempdir().unwrap();
    let on = dir.path().join("on.toml");
    std::fs::write(&on, "[spool]\nrepair = true\n").unwrap();
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[spool]\nrepair = false\n").unwrap();
    let repair = |line: &[&str]| {
        let (c, checked) = Config::load(&args(line).unwrap()).unwrap();
        let recovery = checked.settings.spool.log.recovery;
        assert_eq!(
            c.spool.repair,
            recovery == crate::spool::Recovery::Repair,
            "{line:?}"
        );
        c.spool.repair
    };
    assert!(!repair(&[]), "off by default");
    assert!(repair(&["--repair"]));
    assert!(
        repair(&["--config", on.to_str().unwrap()]),
        "absent: the file's value"
    );
    assert!(repair(&["--config", off.to_str().unwrap(), "--repair"]));
    assert!(!repair(&["--config", off.to_str().unwrap()]));
    assert!(args(&["--repair", "true"]).is_err(), "it takes no value");
    assert!(args(&["--spool-repair"]).is_err(), "its name is --repair");
}

#[test]
fn bad_words_after_flags_name_the_flag_the_key_and_the_words() {
    for (line, key, word) in [
        (["--spool-fsync", "sometimes"], "spool.fsync", "interval"),
        (["--xdp-bind", "maybe"], "xdp.bind", "zerocopy"),
        (["--log-format", "xml"], "log.format", "json"),
    ] {
        let e = args(&line).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        let shown = e.to_string();
        assert!(
            shown.contains(line[0]) && shown.contains(key) && shown.contains(word),
            "{shown}"
        );
        assert!(shown.contains(&env_name(key)), "{shown}");
    }
    let e = args(&["--admin-idle-timeout", "soon"]).unwrap_err();
    assert!(e.to_string().contains("admin.idle_timeout"), "{e}");
    let e = args(&["--data-window-bytes", "lots"]).unwrap_err();
    assert!(e.to_string().contains("KiB"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn help_shows_defaults_as_one_writes_them() {
    let command = Args::command();
    let help = |id: &str| {
        let a = command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("no flag for {id}"));
        // A switch takes no value, whatever name clap keeps for one.
        let placeholder = match a.get_action().takes_values() {
            true => a.get_value_names().map(|v| v.join(" ")).unwrap_or_default(),
            false => String::new(),
        };
        (a.get_help().unwrap().to_string(), placeholder)
    };
    for (id, shown, placeholder) in [
        ("data.listen", "[default: 127.0.0.1:7401]", "ADDR"),
        ("data.recv_buffer", "[default: 8MiB]", "SIZE"),
        ("spool.fsync", "[default: always]", "WHEN"),
        ("spool.scrub_interval", "[default: 24h]", "DURATION"),
        ("spool.retention_age", "[default: \"\"]", "DURATION"),
        ("quic.cert", "[default: \"\"]", "PATH"),
        ("xdp.queues", "[default: 0]", "LIST"),
        ("xdp.cpus", "[default: none]", "LIST"),
        ("spool.repair", "[default: false]", ""),
    ] {
        let (text, name) = help(id);
        assert!(text.ends_with(shown), "{id}: {text}");
        assert_eq!(name, placeholder, "{id}");
    }
}

#[test]
fn admin_tls_takes_the_quic_identity_or_its_own_checked_files() {
    use crate::identity::AdminTls;
    assert!(matches!(checked("").admin_tls, AdminTls::Off));
    assert!(matches!(
        checked("[admin]\ntls = true\n").admin_tls,
        AdminTls::QuicIdentity
    ));
    let e = parse("[admin]\ntls = true\ntls_cert = \"a.crt\"\n").unwrap_err();
    assert!(e.contains("admin.tls_key") && e.contains("together"), "{e}");
    let e = parse("[admin]\ntls_cert = \"a.crt\"\ntls_key = \"a.key\"\n").unwrap_err();
    assert!(
        e.contains("admin.tls_cert") && e.contains("admin.tls = true"),
        "{e}"
    );
    let e = parse("[admin]\ntls = true\ntls_cert = \"/nonexistent/a.crt\"\ntls_key = \"/nonexistent/a.key\"\n")
        .unwrap_err();
    assert!(
        e.contains("admin.tls_cert") && e.contains("/nonexistent/a.crt"),
        "{e}"
    );

    // A certificate with its key; then with the key of another one.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    };
    let ((a_cert, a_key), (_, b_key)) = (write("a"), write("b"));
    let conf = |cert: &str, key: &str| {
        format!("[admin]\ntls = true\ntls_cert = {cert:?}\ntls_key = {key:?}\n")
    };
    let own = checked(&conf(&a_cert, &a_key)).admin_tls;
    let AdminTls::Own(config) = own else {
        panic!("{own:?}")
    };
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    let e = parse(&conf(&a_cert, &b_key)).unwrap_err();
    assert!(e.contains("admin.tls_key") && e.contains(&b_key), "{e}");
}

#[test]
fn forward_entries_are_checked_and_make_their_consumer_groups() {
    let f = "[[forward]]\nname = \"js\"\nstreams = [\"orders\", \"audit\"]\nservers = [\"nats://127.0.0.1:4222\"]\ntarget_stream = \"SLUICE\"\n";
    let s = checked(&format!(
        "{f}create = true\nreplicas = 3\nstorage = \"memory\"\nmax_backlog = 500\ntoken = \"t\"\n"
    ));
    let fw = &s.forwards[0];
    assert_eq!(fw.group(), "forward.js");
    assert_eq!(fw.subject_for("orders", 7), "sluice.orders.7");
    assert_eq!(fw.subjects_of("orders"), "sluice.orders.*");
    assert_eq!(fw.max_in_flight, 1024);
    assert_eq!(
        fw.create,
        Some(crate::forward::config::Create {
            replicas: 3,
            storage: crate::forward::config::Storage::Memory
        })
    );
    assert_eq!(fw.auth, crate::forward::config::Auth::Token("t".into()));
    assert!(!fw.replicated, "ack = \"local\" is the default");
    let r = checked(&format!("{f}ack = \"replicated\"\n"));
    assert!(r.forwards[0].replicated);
    // Patterns may be replicated (streams made later too).
    let p = checked(
        &(f.replace(
            "streams = [\"orders\", \"audit\"]",
            "streams = [\"orders-*\"]",
        ) + "ack = \"replicated\"\n"),
    );
    assert!(p.forwards[0].replicated);
    assert!(
        p.consumers
            .groups
            .iter()
            .all(|(_, _, g)| g.no_reset.is_some()),
        "a replicated forward's group is never reset"
    );
    assert!(s
        .consumers
        .groups
        .iter()
        .all(|(_, _, g)| g.no_reset.is_none()));
    let d = checked(&format!(
        "{f}max_backlog = 9\non_backlog = \"drop_oldest\"\n"
    ));
    assert!(d
        .consumers
        .groups
        .iter()
        .filter(|(_, g, _)| g == "forward.js")
        .all(|(_, _, g)| g.on_backlog == OnBacklog::DropOldest));
    // One group per stream, retaining what is not forwarded, never
    // dead-lettering, with the entry's backpressure.
    let groups: Vec<_> = s
        .consumers
        .groups
        .iter()
        .filter(|(_, g, _)| g == "forward.js")
        .collect();
    assert_eq!(groups.len(), 2);
    for (_, _, g) in groups {
        assert!(g.retain_until_acked);
        assert_eq!(g.max_backlog, 500);
        assert_eq!(g.on_backlog, OnBacklog::Hold);
        assert_eq!(g.machine.max_deliveries, u32::MAX);
    }
    // Not written by --print-config when there is none.
    assert!(!Config::default().to_toml().contains("forward"));
    // Secrets are not printed.
    let c = parse(&format!("{f}user = \"u\"\npassword = \"hunter2\"\n")).unwrap();
    let printed = c.to_toml();
    assert!(
        !printed.contains("hunter2") && printed.contains(super::REDACTED),
        "{printed}"
    );
    let c = parse(&format!("{f}token = \"s3cret\"\n")).unwrap();
    assert!(!c.to_toml().contains("s3cret"));
    for (extra, says) in [
        ("ack = \"sometimes\"\n", "ack"),
        ("ack = \"replicated\"\nretain = false\n", "retain = true"),
        (
            "ack = \"replicated\"\nmax_backlog = 9\non_backlog = \"drop_oldest\"\n",
            "cannot go with on_backlog",
        ),
        ("on_backlog = \"drop_oldest\"\n", "needs max_backlog"),
        ("create = true\nreplicas = 7\n", "replicas"),
        ("create = true\nstorage = \"tape\"\n", "storage"),
        ("token = \"t\"\nuser = \"u\"\n", "one of token"),
        ("password = \"p\"\n", "without user"),
        ("max_in_flight = 0\n", "max_in_flight"),
        ("subject = \"sluice.all\"\n", "{stream}"),
        ("subject = \"sluice.*.{stream}\"\n", "subject"),
    ] {
        let e = parse(&format!("{f}{extra}")).unwrap_err();
        assert!(e.contains("`forward`") && e.contains(says), "{extra}: {e}");
    }
    for (text, says) in [
        (f.replace("name = \"js\"", "name = \"a/b\""), "name"),
        (
            f.replace("streams = [\"orders\", \"audit\"]", "streams = []"),
            "streams",
        ),
        (f.replace("[\"nats://127.0.0.1:4222\"]", "[]"), "servers"),
        (
            f.replace("[\"nats://127.0.0.1:4222\"]", "[\"http://x y\"]"),
            "servers",
        ),
        (f.replace("\"SLUICE\"", "\"a.b\""), "target_stream"),
        (format!("{f}{f}"), "named twice"),
        (
            f.replace(
                "streams = [\"orders\", \"audit\"]",
                "streams = [\"or ders*\"]",
            ),
            "not a stream name or a pattern",
        ),
        (
            f.replace(
                "streams = [\"orders\", \"audit\"]",
                "streams = [\"orders-*\"]",
            ) + "subject = \"{stream}.x\"\n",
            "fixed start",
        ),
        (
            format!("{f}[[consumers.groups]]\nstream = \"orders\"\ngroup = \"forward.js\"\n"),
            "consumers.groups",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[test]
fn a_forward_takes_one_credential_and_says_which_ones_clash() {
    use crate::forward::config::Auth;
    let f = "[[forward]]\nname = \"js\"\nstreams = [\"orders\"]\nservers = [\"nats://127.0.0.1:4222\"]\ntarget_stream = \"SLUICE\"\n";
    // Each alone is taken, as what it is.
    for (keys, auth) in [
        ("", Auth::None),
        ("token = \"t\"\n", Auth::Token("t".into())),
        (
            "user = \"u\"\npassword = \"p\"\n",
            Auth::UserPassword {
                user: "u".into(),
                password: "p".into(),
            },
        ),
        (
            "creds_file = \"/etc/fw.creds\"\n",
            Auth::CredsFile("/etc/fw.creds".into()),
        ),
        (
            "nkey_file = \"/etc/fw.nk\"\n",
            Auth::NKeyFile("/etc/fw.nk".into()),
        ),
    ] {
        assert_eq!(
            checked(&format!("{f}{keys}")).forwards[0].auth,
            auth,
            "{keys}"
        );
    }
    let tls = checked(&format!(
        "{f}nkey_file = \"/etc/fw.nk\"\ntls_ca = \"/etc/ca.pem\"\n"
    ));
    assert_eq!(tls.forwards[0].tls_ca, Some(PathBuf::from("/etc/ca.pem")));
    // Two or more: refused, naming the keys given.
    for (keys, named) in [
        (
            "token = \"t\"\nnkey_file = \"/etc/fw.nk\"\n",
            "token, nkey_file are all given",
        ),
        (
            "user = \"u\"\npassword = \"p\"\ncreds_file = \"/etc/fw.creds\"\n",
            "user, creds_file are all given",
        ),
        (
            "creds_file = \"/etc/fw.creds\"\nnkey_file = \"/etc/fw.nk\"\n",
            "creds_file, nkey_file are all given",
        ),
        (
            "token = \"t\"\nuser = \"u\"\ncreds_file = \"/c\"\nnkey_file = \"/n\"\n",
            "token, user, creds_file, nkey_file are all given",
        ),
    ] {
        let e = parse(&format!("{f}{keys}")).unwrap_err();
        assert!(
            e.contains("`forward`")
                && e.contains("forward \"js\"")
                && e.contains(named)
                && e.contains("give one of token, user (with password), creds_file, nkey_file"),
            "{keys}: {e}"
        );
    }
    // A password is a user's: beside a token it is refused, not dropped.
    let e = parse(&format!("{f}token = \"t\"\npassword = \"p\"\n")).unwrap_err();
    assert!(e.contains("password: given without user"), "{e}");
}

#[test]
fn a_guessed_or_sectionless_flag_is_told_the_right_one() {
    for (line, tips) in [
        // A guess from other daemons: clap alone would offer --data-credit.
        (
            &["--data-dir", "/x"][..],
            &["--spool-dir (`spool.dir`", "SLUICED_SPOOL_DIR"][..],
        ),
        (&["--data_dir=/x"][..], &["--spool-dir"][..]),
        (&["--dir", "/x"][..], &["--spool-dir"][..]),
        (
            &["--fsync", "never"][..],
            &["--spool-fsync (`spool.fsync`"][..],
        ),
        (
            &["--listen", "0.0.0.0:7401"][..],
            &[
                "one of",
                "--data-listen [data.listen],",
                "--quic-listen",
                "--admin-listen",
                "--grpc-listen",
            ][..],
        ),
        (
            &["--spool_fsync", "never"][..],
            &["did you mean --spool-fsync"][..],
        ),
    ] {
        let e = args(line).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::UnknownArgument,
            "{line:?}"
        );
        assert_eq!(e.exit_code(), 2);
        let shown = e.to_string();
        for tip in tips {
            assert!(shown.contains(tip), "{line:?}: no {tip} in {shown}");
        }
        assert!(!shown.contains("--data-credit"), "{shown}");
    }
    // The usage line names the flag offered, not clap's nearest spelling.
    let shown = args(&["--data-dir", "/x"]).unwrap_err().to_string();
    assert!(
        shown.contains("Usage: sluiced --spool-dir <PATH>"),
        "{shown}"
    );
    // A plain typo keeps clap's suggestion.
    let shown = args(&["--spool-fsinc", "never"]).unwrap_err().to_string();
    assert!(
        shown.contains("a similar argument exists: '--spool-fsync'"),
        "{shown}"
    );
}
