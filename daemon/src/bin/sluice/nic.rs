//! `sluice nic`: a NIC as sluiced's AF_XDP path sees it (`show`), and the
//! commands that prepare it for given queues (`plan`). Reads only; runs
//! nothing on the system.

use std::time::Duration;

use sluice_daemon::metrics::scrape::Scrape;
use sluice_xdp::nic::plan::Level;
use sluice_xdp::nic::{self, PlanInput, QueueCounters};

use crate::{AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Driver, queues, channels, rings, ntuple filters, XDP support and
    /// programs, IRQs, and the running sluiced's AF_XDP counters.
    #[command(after_help = SHOW_FIELDS)]
    Show(ShowArgs),
    /// The ethtool and IRQ commands that steer the data port to chosen
    /// queues, checks of what would go wrong, and the matching [xdp]
    /// config. Prints only; runs nothing.
    #[command(after_help = PLAN_NOTES)]
    Plan(PlanArgs),
}

const SHOW_FIELDS: &str = "\
Fields:
  state     up/down (configured), running (carrier), operstate, link speed
  mtu       largest IP packet; with 2048-byte AF_XDP frames at most 1774
  driver    driver name and version, firmware (ethtool -i)
  bus       PCI address; none for virtual devices (veth, bridges, lo)
  queues    RX and TX queues the kernel made (/sys/class/net/IF/queues)
  channels  current/max RX, TX, other and combined channels (ethtool -l);
            '-' for a kind the driver does not have
  rings     current/max descriptors per RX and TX ring (ethtool -g)
  ntuple    flow-steering filters on/off ([fixed]: cannot be switched on)
            and rules installed (ethtool -k, ethtool -n)
  rss       size of the RSS indirection table that spreads flows over
            the queues (ethtool -x)
  xdp       native: XDP in the driver, the fast mode; generic: on socket
            buffers, always possible; zero-copy: AF_XDP without a copy;
            redirect target: can receive redirected frames
  programs  attached XDP programs: id, name, mode, sluice's or foreign
  irqs      each queue interrupt: number, queue, allowed CPUs, count
            (from /proc/interrupts; virtual devices have none)
Then the AF_XDP counters of each queue sluiced serves on the interface
(XDP_STATISTICS, from its /metrics): rx_dropped (no free frame or too
large), rx_invalid_descs (bad descriptors: a bug), rx_ring_full (read too
slowly), fill_ring_empty (refilled too slowly), tx_ring_empty (woken with
nothing to send), with a hint for each that is not zero.
A query the driver does not implement shows as 'not supported by driver'.
Runs in the current network namespace (ip netns exec NS sluice nic ...).";

const PLAN_NOTES: &str = "\
One ntuple rule steers a port to one queue; for several queues the plan
makes an RSS context over them and points the port's rules at it.
Exit status: 0 when the plan can work (its checks are ok or WARN); 1 when
a check FAILs (the whole plan is printed all the same: read the FAIL
lines); 2 for bad usage.";

#[derive(clap::Args)]
struct ShowArgs {
    /// Interface name, e.g. eth0.
    iface: String,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print one JSON object instead of text, for scripts: `nic` (what the
    /// kernel tells; a field the driver does not answer is null),
    /// `counters` (per queue, or null) and `counters_missing` (why not).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PlanArgs {
    /// Interface name, e.g. eth0.
    iface: String,
    /// sluiced's UDP data port.
    #[arg(long, default_value_t = 7401)]
    port: u16,
    /// Queues sluiced will serve, comma-separated: 0,1.
    #[arg(long, required = true, value_delimiter = ',')]
    queues: Vec<u32>,
    /// The CPU of each queue's thread, in the order of --queues (default:
    /// queue q on CPU q modulo the CPUs online).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// AF_XDP frame size (default: the smallest that holds the MTU).
    #[arg(long, value_parser = frame_size)]
    frame_size: Option<u32>,
    /// Print the plan as one JSON object (checks with their level, steps,
    /// the [xdp] section) instead of text; the exit status is the same.
    #[arg(long)]
    json: bool,
}

fn frame_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(f) if nic::plan::FRAME_SIZES.contains(&f) => Ok(f),
        _ => Err("2048 or 4096".into()),
    }
}

pub fn run(a: Args) -> Res {
    match a.cmd {
        Cmd::Show(s) => show(s),
        Cmd::Plan(p) => plan(p),
    }
}

fn show(a: ShowArgs) -> Res {
    let info = nic::inspect(&a.iface)?;
    if a.json {
        let (counters, missing) = match counters(&a.admin, &a.iface) {
            Ok(q) => (Some(q), None),
            Err(why) => (None, Some(why)),
        };
        let shown = serde_json::json!({
            "nic": info,
            "counters": counters,
            "counters_missing": missing,
        });
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    print!("{info}");
    println!();
    match counters(&a.admin, &a.iface) {
        Ok(queues) => {
            println!("AF_XDP counters (sluiced at {}):", a.admin.admin);
            print!("{}", nic::render_counters(&queues));
        }
        Err(why) => println!("no AF_XDP counters: {why}"),
    }
    Ok(())
}

fn plan(a: PlanArgs) -> Res {
    let info = nic::inspect(&a.iface)?;
    let plan = nic::plan_with(
        &info,
        &PlanInput {
            port: a.port,
            queues: &a.queues,
            cpus: a.cpus.as_deref(),
            frame_size: a.frame_size,
        },
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{plan}");
    }
    // Scripts (and operators who skim) must not take a plan that cannot
    // work for one that can: its failed checks make the exit status 1.
    let failed = plan
        .checks
        .iter()
        .filter(|c| c.level == Level::Fail)
        .count();
    if failed > 0 {
        return Err(format!(
            "the plan for {} cannot work as it is: {failed} check{} FAIL (above)",
            plan.iface,
            if failed == 1 { "" } else { "s" }
        )
        .into());
    }
    Ok(())
}

/// The AF_XDP counters of each queue sluiced serves on `iface`, or one
/// line telling why there are none. Not an error: `show` is useful
/// without a daemon.
fn counters(admin: &AdminAddr, iface: &str) -> Result<Vec<QueueCounters>, String> {
    let addr = &admin.admin;
    let body = match admin.request("/metrics", Duration::from_secs(3))?.call() {
        Ok(r) => r
            .into_string()
            .map_err(|e| format!("reading sluiced's /metrics at {addr}: {e}"))?,
        Err(ureq::Error::Status(code, _)) => {
            return Err(format!("sluiced at {addr} answered {code} for /metrics"))
        }
        Err(_) => return Err(format!("sluiced at {addr} not reachable (see --admin)")),
    };
    let queues = queue_counters(&Scrape::parse(&body), iface);
    if queues.is_empty() {
        return Err(format!("sluiced at {addr} is not running XDP on {iface}"));
    }
    Ok(queues)
}

/// Per-queue counters of `iface` in a scrape, in queue order.
fn queue_counters(s: &Scrape, iface: &str) -> Vec<QueueCounters> {
    let mut queues: Vec<u32> = s
        .samples
        .iter()
        .filter(|x| x.name == "sluice_xdp_rx_frames_total")
        .filter(|x| x.labels.get("interface").is_some_and(|i| i == iface))
        .filter_map(|x| x.labels.get("queue")?.parse().ok())
        .collect();
    queues.sort_unstable();
    queues.dedup();
    queues
        .into_iter()
        .map(|q| {
            let qs = q.to_string();
            let get = |name: &str| {
                s.value(
                    &format!("sluice_xdp_{name}_total"),
                    &[("interface", iface), ("queue", &qs)],
                ) as u64
            };
            QueueCounters {
                queue: q,
                rx_frames: get("rx_frames"),
                tx_frames: get("tx_frames"),
                rx_dropped: get("rx_dropped"),
                rx_invalid_descs: get("rx_invalid_descs"),
                rx_ring_full: get("rx_ring_full"),
                fill_ring_empty: get("fill_ring_empty"),
                tx_ring_empty: get("tx_ring_empty"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_one_interface_by_queue() {
        let s = Scrape::parse(
            "sluice_xdp_rx_frames_total{interface=\"eth1\",queue=\"1\"} 5\n\
             sluice_xdp_rx_frames_total{interface=\"eth1\",queue=\"0\"} 7\n\
             sluice_xdp_rx_frames_total{interface=\"eth2\",queue=\"0\"} 9\n\
             sluice_xdp_fill_ring_empty_total{interface=\"eth1\",queue=\"1\"} 3\n",
        );
        let q = queue_counters(&s, "eth1");
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].queue, q[0].rx_frames), (0, 7));
        assert_eq!(
            (q[1].queue, q[1].rx_frames, q[1].fill_ring_empty),
            (1, 5, 3)
        );
        assert!(queue_counters(&s, "eth3").is_empty());
    }
}
