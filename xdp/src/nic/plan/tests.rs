//! `plan` on made-up NICs.

use super::super::{
    ChannelCounts, DriverInfo, Feature, Host, Irq, RingSizes, XdpProgram, XdpSupport,
};
use super::render::wrap;
use super::*;

/// A 4-queue NIC with flow steering: ntuple on, rings at half, two
/// queue IRQs on all CPUs, 8 CPUs, no irqbalance.
fn nic() -> NicInfo {
    NicInfo {
        name: "eth9".into(),
        ifindex: 3,
        mtu: 1500,
        up: true,
        running: true,
        operstate: Some("up".into()),
        speed_mbps: Some(25000),
        virtual_device: false,
        driver: Some(DriverInfo {
            driver: "ice".into(),
            version: "1.0".into(),
            firmware: "4.2".into(),
            bus_info: "0000:3b:00.0".into(),
        }),
        channels: Some(ChannelCounts {
            max_combined: 8,
            combined: 4,
            max_other: 1,
            other: 1,
            ..Default::default()
        }),
        rings: Some(RingSizes {
            rx: 2048,
            rx_max: 8192,
            tx: 2048,
            tx_max: 8192,
            ..Default::default()
        }),
        ntuple: Some(Feature {
            enabled: true,
            changeable: Some(true),
        }),
        ntuple_rules: Some(0),
        rss_table: Some(128),
        rx_queues: Some(4),
        tx_queues: Some(4),
        irqs: (0..4)
            .map(|q| Irq {
                irq: 40 + q,
                name: format!("eth9-TxRx-{q}"),
                queue: Some(q),
                affinity: Some("0-7".into()),
                count: 0,
            })
            .collect(),
        xdp_features: Some(XdpSupport {
            basic: true,
            redirect: true,
            ndo_xmit: true,
            xsk_zerocopy: true,
            ..Default::default()
        }),
        xdp_programs: Vec::new(),
        host: Host {
            cpus_online: 8,
            irqbalance_pid: None,
        },
        notes: Vec::new(),
    }
}

fn commands(p: &Plan) -> Vec<&str> {
    p.steps
        .iter()
        .filter(|s| s.skip.is_none())
        .map(|s| s.command.as_str())
        .collect()
}

fn has_check(p: &Plan, level: Level, needle: &str) -> bool {
    p.checks
        .iter()
        .any(|c| c.level == level && c.message.contains(needle))
}

#[test]
fn one_queue_gets_one_rule_per_family_and_its_irq_pinned() {
    let p = plan(&nic(), 7401, &[2], Some(&[5]));
    let cmds = commands(&p);
    assert!(cmds.contains(&"ethtool -N eth9 flow-type udp4 dst-port 7401 action 2"));
    assert!(cmds.contains(&"ethtool -N eth9 flow-type udp6 dst-port 7401 action 2"));
    assert!(cmds.contains(&"echo 5 > /proc/irq/42/smp_affinity_list"));
    assert!(
        !cmds.iter().any(|c| c.contains("-K")),
        "ntuple is on: {cmds:?}"
    );
    assert!(
        !cmds.iter().any(|c| c.contains("-X")),
        "no RSS for one queue: {cmds:?}"
    );
    assert_eq!(p.worst(), Level::Warn, "only the ring: {:?}", p.checks);
    assert_eq!(p.mode, "native");
    assert_eq!(p.frame_size, 2048);
}

#[test]
fn ntuple_off_adds_the_command_that_enables_it() {
    let mut n = nic();
    n.ntuple = Some(Feature {
        enabled: false,
        changeable: Some(true),
    });
    let p = plan(&n, 7401, &[0], None);
    let cmds = commands(&p);
    assert!(cmds.contains(&"ethtool -K eth9 ntuple on"), "{cmds:?}");
    let k = cmds.iter().position(|c| c.contains("-K")).unwrap();
    let rule = cmds.iter().position(|c| c.contains("dst-port")).unwrap();
    assert!(k < rule, "enable before adding rules: {cmds:?}");
    assert!(has_check(&p, Level::Warn, "ntuple filters off"));
}

#[test]
fn fixed_off_ntuple_fails_unless_every_queue_is_served() {
    let mut n = nic();
    n.ntuple = Some(Feature {
        enabled: false,
        changeable: Some(false),
    });
    // With an RSS table: all traffic to the chosen queues.
    let p = plan(&n, 7401, &[1, 2], None);
    assert!(
        has_check(&p, Level::Warn, "ALL its traffic"),
        "{:?}",
        p.checks
    );
    let cmds = commands(&p);
    assert!(
        cmds.contains(&"ethtool -X eth9 start 1 equal 2"),
        "{cmds:?}"
    );
    assert!(cmds.iter().all(|c| !c.contains("dst-port")), "{cmds:?}");
    // Without one: nothing steers.
    n.rss_table = None;
    let p = plan(&n, 7401, &[1], None);
    assert!(
        has_check(&p, Level::Fail, "cannot be steered"),
        "{:?}",
        p.checks
    );
    assert!(commands(&p).iter().all(|c| !c.contains("dst-port")));
    // Still shown, commented out, so the operator sees what was meant.
    assert!(p.to_string().contains("# ! not here"), "{p}");
    let all = plan(&n, 7401, &[0, 1, 2, 3], None);
    assert!(!has_check(&all, Level::Fail, "steer"), "{:?}", all.checks);
    assert_eq!(all.worst(), Level::Warn, "{:?}", all.checks);
}

#[test]
fn too_few_channels_asks_for_more() {
    let p = plan(&nic(), 7401, &[5], None);
    assert!(
        commands(&p).contains(&"ethtool -L eth9 combined 6"),
        "{:?}",
        p.steps
    );
    assert!(has_check(&p, Level::Warn, "queue 5 needs 6"));
    let p = plan(&nic(), 7401, &[9], None);
    assert!(has_check(&p, Level::Fail, "at most 8"), "{:?}", p.checks);
    assert!(commands(&p).iter().all(|c| !c.contains("-L")));
    // A driver with RX-only channels grows those.
    let mut n = nic();
    n.channels = Some(ChannelCounts {
        max_rx: 4,
        max_tx: 4,
        rx: 2,
        tx: 2,
        ..Default::default()
    });
    let p = plan(&n, 7401, &[3], None);
    assert!(
        commands(&p).contains(&"ethtool -L eth9 rx 4"),
        "{:?}",
        p.steps
    );
}

#[test]
fn two_queues_use_an_rss_context_and_a_port_hash() {
    let p = plan(&nic(), 7401, &[0, 1], None);
    let cmds = commands(&p);
    for want in [
        "ethtool -N eth9 rx-flow-hash udp4 sdfn",
        "ethtool -N eth9 rx-flow-hash udp6 sdfn",
        "ethtool -X eth9 context new start 0 equal 2",
        "ethtool -N eth9 flow-type udp4 dst-port 7401 context 1",
        "ethtool -N eth9 flow-type udp6 dst-port 7401 context 1",
    ] {
        assert!(cmds.contains(&want), "missing {want}: {cmds:?}");
    }
    assert!(cmds.iter().all(|c| !c.contains("action")), "{cmds:?}");
    let text = p.to_string();
    assert!(
        text.contains("one rule with `action Q` could name only one queue"),
        "{text}"
    );
    // Queues with a gap: weights.
    let p = plan(&nic(), 7401, &[1, 3], None);
    assert!(commands(&p).contains(&"ethtool -X eth9 context new weight 0 1 0 1"));
}

#[test]
fn mtu_3000_does_not_fit_2048_byte_frames() {
    let mut n = nic();
    n.mtu = 3000;
    let p = plan_with(
        &n,
        &PlanInput {
            port: 7401,
            queues: &[0],
            cpus: None,
            frame_size: Some(2048),
        },
    );
    assert!(
        has_check(&p, Level::Fail, "frame_size = 4096"),
        "{:?}",
        p.checks
    );
    assert_eq!(p.worst(), Level::Fail);
    // Left to choose, the plan takes 4096.
    let p = plan(&n, 7401, &[0], None);
    assert_eq!(p.frame_size, 4096);
    assert!(p.config.contains("frame_size = 4096"));
    assert!(!has_check(&p, Level::Fail, "MTU"));
    assert_eq!(max_mtu(2048), 1774);
    n.mtu = 9000;
    assert!(has_check(
        &plan(&n, 7401, &[0], None),
        Level::Fail,
        "lower it"
    ));
}

#[test]
fn irqbalance_is_warned_about_and_stopped_before_pinning() {
    let mut n = nic();
    n.host.irqbalance_pid = Some(812);
    let p = plan(&n, 7401, &[0, 1], Some(&[2, 3]));
    assert!(
        has_check(
            &p,
            Level::Warn,
            "irqbalance is running (pid 812): it will override"
        ),
        "{:?}",
        p.checks
    );
    let cmds = commands(&p);
    let stop = cmds
        .iter()
        .position(|c| *c == "systemctl stop irqbalance")
        .unwrap();
    let pin = cmds
        .iter()
        .position(|c| c.starts_with("echo 2 > /proc/irq/40/"))
        .unwrap();
    assert!(stop < pin, "{cmds:?}");
    assert!(cmds.contains(&"echo 3 > /proc/irq/41/smp_affinity_list"));
}

#[test]
fn irqs_already_in_place_need_no_command() {
    let mut n = nic();
    n.irqs[1].affinity = Some("3".into());
    let p = plan(&n, 7401, &[1], Some(&[3]));
    assert!(commands(&p).iter().all(|c| !c.starts_with("echo")));
    assert!(has_check(&p, Level::Ok, "on CPU 3 already"));
}

#[test]
fn default_cpus_follow_the_queue_numbers() {
    let mut n = nic();
    n.host.cpus_online = 2;
    let p = plan(&n, 7401, &[1, 2], None);
    assert_eq!(p.cpus, [1, 0]);
    let p = plan(&n, 7401, &[0, 1], Some(&[0, 4]));
    assert!(has_check(&p, Level::Fail, "CPU 4 is not online"));
    let p = plan(&n, 7401, &[0, 1], Some(&[0]));
    assert!(has_check(&p, Level::Fail, "one per queue"));
}

#[test]
fn rings_below_maximum_are_raised_before_the_rules() {
    let p = plan(&nic(), 7401, &[0], None);
    let cmds = commands(&p);
    let g = cmds.iter().position(|c| *c == "ethtool -G eth9 rx 8192");
    let rule = cmds.iter().position(|c| c.contains("dst-port"));
    assert!(g.unwrap() < rule.unwrap(), "{cmds:?}");
}

#[test]
fn irqs_are_pinned_only_once_the_channels_are_in_place() {
    let p = plan(&nic(), 7401, &[1, 5], None);
    let cmds = commands(&p);
    assert_eq!(cmds[0], "ethtool -L eth9 combined 6", "{cmds:?}");
    assert!(cmds.iter().all(|c| !c.starts_with("echo")), "{cmds:?}");
    assert!(p.to_string().contains("plan again after it"), "{p}");
}

#[test]
fn the_config_snippet_matches_the_plan() {
    let p = plan(&nic(), 7401, &[2, 3], Some(&[6, 7]));
    assert_eq!(
        p.config,
        "# with [data] listen on UDP port 7401\n[xdp]\ninterface = \"eth9\"\n\
         queues = [2, 3]\ncpus = [6, 7]\nmode = \"native\"\nframe_size = 2048\n"
    );
    assert!(p.to_string().contains("  [xdp]\n  interface = \"eth9\""));
}

#[test]
fn xdp_support_decides_the_mode() {
    let mut n = nic();
    n.xdp_features = None;
    let p = plan(&n, 7401, &[0], None);
    assert_eq!(p.mode, "auto");
    assert!(has_check(&p, Level::Warn, "cannot tell"));
    n.xdp_features = Some(XdpSupport::default());
    assert_eq!(plan(&n, 7401, &[0], None).mode, "generic");
    n.xdp_features = Some(XdpSupport {
        basic: true,
        redirect: true,
        ..Default::default()
    });
    assert!(has_check(
        &plan(&n, 7401, &[0], None),
        Level::Warn,
        "no AF_XDP zero-copy"
    ));
}

#[test]
fn a_foreign_program_is_warned_about() {
    let mut n = nic();
    n.xdp_programs.push(XdpProgram {
        id: 77,
        name: "xdp_filter".into(),
        mode: "native".into(),
        ours: false,
    });
    let p = plan(&n, 7401, &[0], None);
    assert!(
        has_check(&p, Level::Warn, "another XDP program"),
        "{:?}",
        p.checks
    );
}

#[test]
fn a_virtual_device_has_nothing_to_pin() {
    let mut n = nic();
    n.irqs.clear();
    n.virtual_device = true;
    let p = plan(&n, 7401, &[0], None);
    assert!(has_check(&p, Level::Ok, "virtual device"));
    assert!(commands(&p).iter().all(|c| !c.starts_with("echo")));
}

#[test]
fn wrap_keeps_words_whole() {
    assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
    assert_eq!(wrap("", 5), Vec::<String>::new());
}
