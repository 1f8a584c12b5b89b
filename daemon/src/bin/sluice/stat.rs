//! `sluice stat`: a live view of a running daemon, from its `/metrics`
//! and its consumer groups (`/groups`); with `--sessions`, its producer
//! sessions too (`/sessions`).

mod forwards;
mod sessions;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use sluice_daemon::api::consume::GroupList;
use sluice_daemon::api::SessionList;
use sluice_daemon::consume::service::GroupStats;
use sluice_daemon::metrics::scrape::Scrape;

use crate::{AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    admin: AdminAddr,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    every: f64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Also one line per producer session: peer, rate, NACKs, repairs,
    /// credit, round trip (like Aeron's LossStat).
    #[arg(long)]
    sessions: bool,
    /// One JSON object a line per refresh instead of tables: `at`, the
    /// daemon's rates, `streams` (rates, credit, sessions, fsync p50/p99,
    /// backlog), `groups` (as /groups), `sessions` (with --sessions).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Res {
    let every = Duration::from_secs_f64(a.every.max(0.1));
    let scrape = || -> Result<Scrape, Box<dyn std::error::Error>> {
        Ok(Scrape::parse(&a.admin.get("/metrics")?))
    };
    // On a terminal each refresh replaces the last; piped, refreshes
    // follow one another (each under its time) for a log or a grep.
    let tty = std::io::stdout().is_terminal();
    let mut prev = scrape()?;
    let mut at = Instant::now();
    let mut n = 0;
    loop {
        std::thread::sleep(every);
        let now = scrape()?;
        let groups: GroupList = serde_json::from_str(&a.admin.get("/groups")?)?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let sessions = if a.sessions {
            let list: SessionList = serde_json::from_str(&a.admin.get("/sessions")?)?;
            Some(list.sessions)
        } else {
            None
        };
        if a.json {
            let mut line = json_frame(&prev, &now, secs, SystemTime::now());
            line["groups"] = serde_json::to_value(&groups.groups)?;
            if let Some(s) = sessions {
                line["sessions"] = serde_json::to_value(s)?;
            }
            println!("{line}");
        } else {
            let mut out = render(&a.admin.admin.to_string(), &prev, &now, secs);
            render_groups(&mut out, &groups.groups);
            forwards::render(&mut out, &prev, &now, secs);
            if let Some(s) = &sessions {
                sessions::render(&mut out, s);
            }
            out.push('\n');
            print!("{}", frame(&out, tty, SystemTime::now()));
        }
        prev = now;
        n += 1;
        if a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}

/// One refresh for `--json`: the daemon's and each stream's figures (rates
/// over the `secs` between the two scrapes).
fn json_frame(prev: &Scrape, now: &Scrape, secs: f64, at: SystemTime) -> serde_json::Value {
    let rate = |name: &str, labels: &[(&str, &str)]| {
        (now.value(name, labels) - prev.value(name, labels)).max(0.0) / secs
    };
    let streams: Vec<serde_json::Value> = now
        .label_values("sluice_durable_acks_total", "stream")
        .into_iter()
        .map(|s| {
            let l = [("stream", s.as_str())];
            let fsync = |q| now.quantile_since(prev, "sluice_spool_fsync_seconds", &l, q);
            serde_json::json!({
                "stream": s,
                "messages_per_sec": rate("sluice_messages_in_total", &l),
                "bytes_per_sec": rate("sluice_bytes_in_total", &l),
                "acks_per_sec": rate("sluice_durable_acks_total", &l),
                "duplicates_per_sec": rate("sluice_duplicates_total", &l),
                "nacks_per_sec": rate("sluice_nacks_sent_total", &l),
                "retransmits_per_sec": rate("sluice_retransmits_received_total", &l),
                "credit": now.value("sluice_credit", &l),
                "sessions": now.value("sluice_sessions", &l),
                "fsync_p50_seconds": fsync(0.5),
                "fsync_p99_seconds": fsync(0.99),
                "backlog_bytes": now.value("sluice_spool_backlog_bytes", &l),
                "disk_full": now.value("sluice_spool_disk_full", &l) > 0.0,
                "damage": now.value("sluice_spool_damage", &l),
            })
        })
        .collect();
    serde_json::json!({
        "at": humantime::format_rfc3339_seconds(at).to_string(),
        "sessions": now.value("sluice_sessions", &[]),
        "datagrams_in_per_sec": rate("sluice_datagrams_in_total", &[]),
        "datagrams_out_per_sec": rate("sluice_datagrams_out_total", &[]),
        "datagrams_dropped_per_sec": rate("sluice_datagrams_dropped_total", &[]),
        "streams": streams,
    })
}

/// What one refresh prints: under its time (UTC, to the second); on a
/// terminal after clearing the screen, so that it redraws in place.
fn frame(out: &str, tty: bool, at: SystemTime) -> String {
    let clear = if tty { "\x1b[H\x1b[2J" } else { "" };
    format!("{clear}{}\n{out}", humantime::format_rfc3339_seconds(at))
}

/// One refresh: rates are over the `secs` between the two scrapes.
fn render(admin: &str, prev: &Scrape, now: &Scrape, secs: f64) -> String {
    let rate = |name: &str, labels: &[(&str, &str)]| {
        (now.value(name, labels) - prev.value(name, labels)).max(0.0) / secs
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "sluiced {admin}   sessions {}   datagrams in {}/s out {}/s   dropped {}/s   refused sessions {}",
        now.value("sluice_sessions", &[]),
        human(rate("sluice_datagrams_in_total", &[])),
        human(rate("sluice_datagrams_out_total", &[])),
        human(rate("sluice_datagrams_dropped_total", &[])),
        now.value("sluice_sessions_rejected_total", &[]),
    );
    let _ = writeln!(
        o,
        "{:<16} {:>9} {:>8} {:>9} {:>7} {:>7} {:>7} {:>8} {:>5} {:>15} {:>7} {:>9}",
        "stream",
        "msgs/s",
        "MB/s",
        "acks/s",
        "dups/s",
        "nacks/s",
        "retx/s",
        "credit",
        "sess",
        "fsync p50/p99",
        "batch",
        "backlog"
    );
    for s in now.label_values("sluice_durable_acks_total", "stream") {
        let l = [("stream", s.as_str())];
        let fsync = |q| {
            now.quantile_since(prev, "sluice_spool_fsync_seconds", &l, q)
                .map_or("-".to_owned(), |v| format!("{:.1}", v * 1e3))
        };
        let commits = now.value("sluice_spool_batch_records_count", &l)
            - prev.value("sluice_spool_batch_records_count", &l);
        let records = now.value("sluice_spool_batch_records_sum", &l)
            - prev.value("sluice_spool_batch_records_sum", &l);
        let batch = if commits > 0.0 {
            human(records / commits)
        } else {
            "-".into()
        };
        let _ = writeln!(
            o,
            "{:<16} {:>9} {:>8.1} {:>9} {:>7} {:>7} {:>7} {:>8} {:>5} {:>12} ms {:>7} {:>9}",
            s,
            human(rate("sluice_messages_in_total", &l)),
            rate("sluice_bytes_in_total", &l) / 1e6,
            human(rate("sluice_durable_acks_total", &l)),
            human(rate("sluice_duplicates_total", &l)),
            human(rate("sluice_nacks_sent_total", &l)),
            human(rate("sluice_retransmits_received_total", &l)),
            human(now.value("sluice_credit", &l)),
            now.value("sluice_sessions", &l),
            format!("{}/{}", fsync(0.5), fsync(0.99)),
            batch,
            bytes(now.value("sluice_spool_backlog_bytes", &l)),
        );
        if now.value("sluice_spool_disk_full", &l) > 0.0 {
            let _ = writeln!(o, "  ! {s}: disk full, acks held");
        }
        let damage = now.value("sluice_spool_damage", &l);
        if damage > 0.0 {
            let _ = writeln!(
                o,
                "  ! {s}: damage found in the spool ({damage} finding(s)): see /health, `sluice spool verify`"
            );
        }
        let lost = now.value("sluice_spool_lost_offsets", &l);
        if lost > 0.0 {
            let _ = writeln!(
                o,
                "  ! {s}: {lost} offset(s) given up by repairs (see /streams)"
            );
        }
    }
    let drops: Vec<String> = now
        .label_values("sluice_datagrams_dropped_total", "reason")
        .into_iter()
        .filter_map(|r| {
            let v = now.value("sluice_datagrams_dropped_total", &[("reason", &r)]);
            (v > 0.0).then(|| format!("{r} {v}"))
        })
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(o, "dropped since start: {}", drops.join(", "));
    }
    o
}

/// The consumer groups: backlog, the age of the oldest unacked message,
/// members and their credit, what is out with them, and (since the daemon
/// started) redeliveries and dead letters.
pub(crate) fn render_groups(o: &mut String, groups: &[GroupStats]) {
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "{:<16} {:<16} {:>9} {:>10} {:>9} {:>7} {:>7} {:>7} {:>8} {:>6}",
        "stream",
        "group",
        "backlog",
        "bytes",
        "oldest",
        "members",
        "credit",
        "out",
        "redeliv",
        "dead"
    );
    for g in groups {
        let _ = writeln!(
            o,
            "{:<16} {:<16} {:>9} {:>10} {:>9} {:>7} {:>7} {:>7} {:>8} {:>6}",
            g.stream,
            g.group,
            human(g.backlog_messages as f64),
            bytes(g.backlog_bytes as f64),
            age(g.oldest_unacked_seconds),
            g.members,
            human(g.credit as f64),
            human(g.out as f64),
            human(g.counters.redelivered as f64),
            human(g.counters.dead_lettered as f64),
        );
        if g.counters.dropped > 0 {
            let _ = writeln!(
                o,
                "  ! {}/{}: {} dropped unacked at max_backlog (on_backlog = \"drop_oldest\")",
                g.stream,
                g.group,
                human(g.counters.dropped as f64)
            );
        }
        if let Some(d) = &g.stopped_at_damage {
            let _ = writeln!(
                o,
                "  ! {}/{}: stopped reading at damage: {d}",
                g.stream, g.group
            );
        }
    }
}

/// An age in seconds, short: `-` for none, `850ms`, `12.3s`, `4m05s`, `3h12m`.
fn age(secs: f64) -> String {
    match secs {
        s if s <= 0.0 => "-".into(),
        s if s < 1.0 => format!("{:.0}ms", s * 1e3),
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3600.0 => format!("{}m{:02}s", (s / 60.0) as u64, s as u64 % 60),
        s => format!("{}h{:02}m", (s / 3600.0) as u64, (s as u64 / 60) % 60),
    }
}

pub(crate) fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

pub(crate) fn bytes(v: f64) -> String {
    match v {
        v if v >= 1048576.0 => format!("{:.1} MiB", v / 1048576.0),
        v if v >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        v => format!("{v:.0} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_short() {
        assert_eq!(age(0.0), "-");
        assert_eq!(age(0.25), "250ms");
        assert_eq!(age(12.34), "12.3s");
        assert_eq!(age(245.0), "4m05s");
        assert_eq!(age(3.0 * 3600.0 + 12.0 * 60.0 + 5.0), "3h12m");
    }

    #[test]
    fn a_refresh_redraws_on_a_terminal_and_follows_on_when_piped() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let piped = frame("table\n", false, at);
        assert_eq!(piped, "2027-01-15T08:00:00Z\ntable\n");
        let tty = frame("table\n", true, at);
        assert!(
            tty.starts_with("\x1b[H\x1b[2J2027-01-15T08:00:00Z\n"),
            "{tty:?}"
        );
    }

    #[test]
    fn groups_show_one_line_each() {
        use sluice_daemon::consume::group::GroupCounters;
        let mut o = String::new();
        render_groups(&mut o, &[]);
        assert!(o.is_empty());
        let g = GroupStats {
            stream: "orders".into(),
            group: "billing".into(),
            backlog_messages: 12,
            backlog_bytes: 2048,
            oldest_unacked_seconds: 2.5,
            counters: GroupCounters {
                dead_lettered: 3,
                ..GroupCounters::default()
            },
            ..GroupStats::default()
        };
        render_groups(&mut o, &[g]);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines.len(), 2, "{o}");
        assert!(lines[0].contains("oldest") && lines[0].contains("dead"));
        let f: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(f[..4], ["orders", "billing", "12", "2.0"], "{o}");
        assert!(lines[1].contains("2.5s") && lines[1].ends_with(" 3"), "{o}");
        // A group that dropped messages says so under its line.
        let mut o = String::new();
        let dropping = GroupStats {
            stream: "ticks".into(),
            group: "forward.js".into(),
            counters: GroupCounters {
                dropped: 1500,
                ..GroupCounters::default()
            },
            ..GroupStats::default()
        };
        render_groups(&mut o, &[dropping]);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines.len(), 3, "{o}");
        assert!(lines[2].contains("ticks/forward.js: 1500 dropped"), "{o}");
    }
}
