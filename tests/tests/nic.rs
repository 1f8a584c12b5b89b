//! `sluice nic` on real interfaces: loopback in the test's own namespace
//! (no privilege needed), and a veth end in a namespace of its own (root),
//! where what `show` says is checked against `ethtool`, and where a
//! sluiced with its AF_XDP path runs for `show` to read its program and
//! per-queue counters.

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sluice_testkit::testnet::{has_tool, require, require_netns, Link, Netns};
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::{sluice_bin, sluiced_bin};

/// An admin address nothing listens on: `show` must say so in one line.
const NO_DAEMON: &str = "127.0.0.1:1";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin!())
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .output()
        .expect("run sluice")
}

fn sluice_in(ns: &Netns, args: &[&str]) -> Output {
    ns.command(sluice_bin!().to_str().expect("UTF-8 path"))
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .env_remove("SLUICE_TOKEN")
        .output()
        .expect("run sluice in the namespace")
}

/// The value column of `show`'s line for `field`.
fn field<'a>(shown: &'a str, name: &str) -> &'a str {
    shown
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{shown}"))
}

#[test]
fn show_loopback_needs_no_privilege_and_no_daemon() {
    let out = sluice(&["nic", "show", "lo", "--admin", NO_DAEMON]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}{}", shown, text(&out.stderr));
    assert!(shown.starts_with("lo (ifindex "), "{shown}");
    assert!(field(&shown, "mtu").parse::<u32>().is_ok(), "{shown}");
    // Loopback has no driver to ask: the answer is shown, not an error.
    let driver = field(&shown, "driver");
    assert!(!driver.is_empty(), "{shown}");
    assert_eq!(field(&shown, "rings"), "not supported by driver", "{shown}");
    assert_eq!(field(&shown, "programs"), "none attached", "{shown}");
    assert!(field(&shown, "irqs").starts_with("none: lo is a virtual device"));
    assert!(
        shown.contains(&format!(
            "no AF_XDP counters: sluiced at {NO_DAEMON} not reachable"
        )),
        "{shown}"
    );
}

#[test]
fn show_json_says_the_same_as_the_text() {
    let text_out = sluice(&["nic", "show", "lo", "--admin", NO_DAEMON]);
    let shown = text(&text_out.stdout);
    let out = sluice(&["nic", "show", "lo", "--json", "--admin", NO_DAEMON]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let nic = &v["nic"];
    assert_eq!(nic["name"], "lo");
    assert_eq!(nic["mtu"].to_string(), field(&shown, "mtu"));
    assert_eq!(nic["virtual_device"], true);
    assert_eq!(
        nic["rings"],
        serde_json::Value::Null,
        "rings: not supported by driver"
    );
    assert_eq!(nic["xdp_programs"], serde_json::json!([]));
    assert_eq!(nic["irqs"], serde_json::json!([]));
    assert!(nic["host"]["cpus_online"].as_u64().unwrap() >= 1);
    assert_eq!(v["counters"], serde_json::Value::Null);
    assert!(
        v["counters_missing"]
            .as_str()
            .unwrap()
            .contains("not reachable"),
        "{v}"
    );
}

#[test]
fn a_missing_interface_is_named_and_fails() {
    let out = sluice(&["nic", "show", "nosuchif"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("\"nosuchif\""), "{err}");
    let out = sluice(&["nic", "plan", "nosuchif", "--queues", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("\"nosuchif\""));
}

#[test]
fn a_plan_that_cannot_work_exits_1_and_is_printed_whole() {
    // Loopback's MTU (65536) fits no AF_XDP frame: a FAIL check on any
    // machine, no privilege needed; a queue given twice is another.
    for (args, fails) in [
        (&["nic", "plan", "lo", "--queues", "0"][..], 1),
        (&["nic", "plan", "lo", "--queues", "0,0"][..], 2),
    ] {
        let out = sluice(args);
        let plan = text(&out.stdout);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {plan}{err}");
        assert_eq!(plan.matches("  FAIL  ").count(), fails, "{plan}");
        assert!(plan.contains("FAIL  MTU 65536 does not fit"), "{plan}");
        // Still the whole plan: commands and config.
        assert!(plan.contains("sluiced config:"), "{plan}");
        let s = if fails == 1 { "" } else { "s" };
        assert!(
            err.contains(&format!(
                "the plan for lo cannot work as it is: {fails} check{s} FAIL (above)"
            )),
            "{err}"
        );
    }
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["nic", "plan", "lo"][..],
        &["nic", "plan", "lo", "--queues", "0", "--frame-size", "1000"],
        &["nic", "plan", "lo", "--queues", "x"],
        &["nic", "show"],
    ] {
        let out = sluice(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn help_explains_the_fields() {
    let out = sluice(&["nic", "show", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "channels",
        "rings",
        "ntuple",
        "fill_ring_empty",
        "zero-copy",
    ] {
        assert!(help.contains(needle), "show --help lacks {needle}:\n{help}");
    }
}

/// `ethtool -l` as (current rx, max rx, current tx, max tx); "n/a" is 0.
fn ethtool_channels(ns: &Netns, iface: &str) -> (u32, u32, u32, u32) {
    let out = ns.exec(&format!("ethtool -l {iface}"));
    let (max, cur) = out
        .split_once("Current hardware settings:")
        .expect("ethtool -l shows current settings");
    let get = |part: &str, key: &str| -> u32 {
        part.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map_or(0, |v| v.trim().parse().unwrap_or(0))
    };
    (
        get(cur, "RX:"),
        get(max, "RX:"),
        get(cur, "TX:"),
        get(max, "TX:"),
    )
}

#[test]
fn show_and_plan_a_veth_end() {
    const TEST: &str = "nic_show_veth";
    if !require_netns(TEST, false)
        || !require(
            TEST,
            "ethtool",
            has_tool("ethtool"),
            "ethtool is not installed",
        )
    {
        return;
    }
    let link = Link::create("nic", 2);
    let ns = &link.b.ns;
    let iface = link.b.iface.as_str();

    let out = sluice_in(ns, &["nic", "show", iface, "--admin", NO_DAEMON]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}{}", shown, text(&out.stderr));
    eprintln!("{shown}");
    assert!(shown.starts_with(&format!("{iface} (ifindex ")), "{shown}");
    assert!(field(&shown, "driver").starts_with("veth"), "{shown}");
    assert_eq!(field(&shown, "mtu"), "1500");
    // Only "up": the carrier (running, operstate) follows a moment later.
    assert!(field(&shown, "state").starts_with("up"), "{shown}");
    assert_eq!(field(&shown, "queues"), "rx 2, tx 2");
    let (crx, mrx, ctx, mtx) = ethtool_channels(ns, iface);
    assert_eq!(
        field(&shown, "channels"),
        format!("rx {crx}/{mrx}, tx {ctx}/{mtx}, other -, combined - (current/max)"),
        "ethtool -l says otherwise"
    );
    let features = ns.exec(&format!("ethtool -k {iface}"));
    let ntuple = features
        .lines()
        .find_map(|l| l.trim().strip_prefix("ntuple-filters: "))
        .expect("ethtool -k shows ntuple-filters");
    assert!(
        field(&shown, "ntuple").starts_with(ntuple),
        "ethtool -k says ntuple {ntuple}: {shown}"
    );
    // veth has no ring parameters: ethtool -g fails, show says so.
    let rings = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-g", iface])
        .output()
        .unwrap();
    if !rings.status.success() {
        assert_eq!(field(&shown, "rings"), "not supported by driver");
    }
    assert_eq!(field(&shown, "programs"), "none attached");
    assert!(
        field(&shown, "irqs").starts_with("none: veth-b is a virtual device"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "no AF_XDP counters: sluiced at {NO_DAEMON} not reachable"
        )),
        "{shown}"
    );

    let out = sluice_in(
        ns,
        &["nic", "plan", iface, "--port", "7401", "--queues", "0,1"],
    );
    let plan = text(&out.stdout);
    assert!(out.status.success(), "{}{}", plan, text(&out.stderr));
    eprintln!("{plan}");
    for needle in [
        "ethtool -N veth-b flow-type udp4 dst-port 7401",
        "ethtool -N veth-b flow-type udp6 dst-port 7401",
        // Both queues are all of veth-b's: no steering needed, nothing fails.
        "every packet reaches a socket without steering",
        "[xdp]",
        "interface = \"veth-b\"",
        "queues = [0, 1]",
        "frame_size = 2048",
    ] {
        assert!(plan.contains(needle), "plan lacks {needle}:\n{plan}");
    }
    assert!(!plan.contains("FAIL"), "{plan}");

    let out = sluice_in(ns, &["nic", "show", "nosuchif"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("\"nosuchif\""));
}

#[test]
fn show_reads_a_running_daemons_program_and_queue_counters() {
    const TEST: &str = "nic_show_daemon";
    if !require_netns(TEST, false) {
        return;
    }
    let link = Link::create("nicd", 2);
    let ns = &link.b.ns;
    let iface = link.b.iface.as_str();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    // The namespace is the test's own: fixed ports cannot clash.
    spec.data = format!("{}:7401", link.b.ip).parse().unwrap();
    spec.quic = format!("{}:7400", link.b.ip).parse().unwrap();
    spec.admin = "127.0.0.1:7480".parse().unwrap();
    // Beyond loopback the daemon wants a principal: one token.
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"nic\"\nhash = \"{}\"\npublish = [\"s\"]\n",
            sluice_daemon::auth::hash_token(&sluice_daemon::auth::new_token())
        ),
    )
    .unwrap();
    let spec = spec
        .arg("--config")
        .arg(config.display().to_string())
        .arg("--xdp-interface")
        .arg(iface)
        .arg("--xdp-queues")
        .arg("0,1");
    let daemon = spec.start_in(ns);

    // A few datagrams to the data port, so that some frame is counted.
    let data = spec.data;
    link.a.ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..8 {
            s.send_to(b"not a sluice datagram", data).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon
        .metrics()
        .value("sluice_xdp_rx_frames_total", &[("interface", iface)])
        < 1.0
    {
        assert!(Instant::now() < deadline, "no frame reached AF_XDP");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = sluice_in(ns, &["nic", "show", iface, "--admin", "127.0.0.1:7480"]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}{}", shown, text(&out.stderr));
    eprintln!("{shown}");
    let programs = field(&shown, "programs");
    assert!(programs.ends_with("sluice's"), "{shown}");
    let counters = shown
        .split_once("AF_XDP counters (sluiced at 127.0.0.1:7480):\n")
        .unwrap_or_else(|| panic!("no counters in:\n{shown}"))
        .1;
    let mut lines = counters.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "queue",
            "rx_frames",
            "tx_frames",
            "rx_dropped",
            "rx_invalid_descs",
            "rx_ring_full",
            "fill_ring_empty",
            "tx_ring_empty"
        ]
    );
    let rows: Vec<Vec<u64>> = lines
        .take_while(|l| !l.starts_with("hint: "))
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        [0, 1],
        "{shown}"
    );
    assert!(rows.iter().map(|r| r[1]).sum::<u64>() >= 1, "{shown}");
    // The same, for scripts.
    let out = sluice_in(
        ns,
        &["nic", "show", iface, "--json", "--admin", "127.0.0.1:7480"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["nic"]["xdp_programs"][0]["ours"], true, "{v}");
    let queues: Vec<u64> = v["counters"]
        .as_array()
        .unwrap_or_else(|| panic!("counters in {v}"))
        .iter()
        .map(|q| q["queue"].as_u64().unwrap())
        .collect();
    assert_eq!(queues, [0, 1], "{v}");
    let frames: u64 = v["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["rx_frames"].as_u64().unwrap())
        .sum();
    assert!(frames >= 1, "{v}");

    let out = sluice_in(ns, &["nic", "plan", iface, "--queues", "0,1"]);
    let plan = text(&out.stdout);
    // A program of sluiced's attached is no reason to fail the plan.
    assert!(!plan.contains("FAIL"), "{plan}");
    assert!(out.status.success(), "{plan}{}", text(&out.stderr));
    assert!(
        plan.contains("sluiced's XDP program is attached to veth-b"),
        "{plan}"
    );
    // With no sluiced on that address, one line says so.
    let out = sluice_in(ns, &["nic", "show", iface, "--admin", "127.0.0.1:7481"]);
    assert!(
        text(&out.stdout).contains("no AF_XDP counters: sluiced at 127.0.0.1:7481 not reachable")
    );
    drop(daemon);
}
