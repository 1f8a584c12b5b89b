//! `sluice stat`'s forwards: per forward and stream, whether it is
//! connected, what it forwarded, its lag (messages, bytes, age of the
//! oldest message not forwarded), publishes awaiting their PubAck and the
//! PubAck latency; under it, each forward's server or outage and its
//! errors by kind. All from `/metrics` (the sluice_forward_* families).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sluice_daemon::metrics::scrape::Scrape;

use super::{age, bytes, human};

/// Appends the forwards' table; nothing when the daemon forwards nothing.
pub(super) fn render(o: &mut String, prev: &Scrape, now: &Scrape, secs: f64) {
    let pairs: BTreeSet<(String, String)> = now
        .samples
        .iter()
        .filter(|s| {
            s.name == "sluice_forward_lag_messages" || s.name == "sluice_forward_messages_total"
        })
        .filter_map(|s| {
            Some((
                s.labels.get("forward")?.clone(),
                s.labels.get("stream")?.clone(),
            ))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "{:<12} {:<16} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>15}",
        "forward",
        "stream",
        "conn",
        "fwd/s",
        "forwarded",
        "lag",
        "lag bytes",
        "oldest",
        "flight",
        "puback p50/p99"
    );
    for (f, s) in &pairs {
        let fl = [("forward", f.as_str())];
        let l = [("forward", f.as_str()), ("stream", s.as_str())];
        let total = now.value("sluice_forward_messages_total", &l);
        let rate = (total - prev.value("sluice_forward_messages_total", &l)).max(0.0) / secs;
        // The PubAck latency is the forward's (all its streams), over the
        // refresh; `-` when nothing was acked in it.
        let puback = |q| {
            now.quantile_since(prev, "sluice_forward_puback_seconds", &fl, q)
                .map_or("-".to_owned(), |v| format!("{:.1}", v * 1e3))
        };
        let _ = writeln!(
            o,
            "{:<12} {:<16} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>12} ms",
            f,
            s,
            if now.value("sluice_forward_connected", &fl) > 0.0 {
                "yes"
            } else {
                "no"
            },
            human(rate),
            human(total),
            human(now.value("sluice_forward_lag_messages", &l)),
            bytes(now.value("sluice_forward_lag_bytes", &l)),
            age(now.value("sluice_forward_lag_seconds", &l)),
            human(now.value("sluice_forward_in_flight", &l)),
            format!("{}/{}", puback(0.5), puback(0.99)),
        );
    }
    let forwards: BTreeSet<&String> = pairs.iter().map(|(f, _)| f).collect();
    for f in forwards {
        let fl = [("forward", f.as_str())];
        let errors: Vec<String> = now
            .label_values("sluice_forward_errors_total", "kind")
            .into_iter()
            .filter_map(|k| {
                let v = now.value(
                    "sluice_forward_errors_total",
                    &[("forward", f), ("kind", &k)],
                );
                (v > 0.0).then(|| format!("{k} {v}"))
            })
            .collect();
        let errors = if errors.is_empty() {
            String::new()
        } else {
            format!("; errors since start: {}", errors.join(", "))
        };
        if now.value("sluice_forward_connected", &fl) > 0.0 {
            let server = now
                .samples
                .iter()
                .find(|s| {
                    s.name == "sluice_forward_server_info" && s.labels.get("forward") == Some(f)
                })
                .map(|s| {
                    let get = |k: &str| s.labels.get(k).map_or("?", String::as_str);
                    format!(
                        " to {} ({} {})",
                        get("server"),
                        get("server_name"),
                        get("version")
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(o, "  forward {f}: connected{server}{errors}");
        } else {
            let down = now.value("sluice_forward_disconnected_seconds", &fl);
            let _ = writeln!(
                o,
                "  ! forward {f}: NATS cluster unreachable for {}, messages wait in the spool{errors}",
                age(down)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "\
sluice_forward_connected{forward=\"js\"} 1
sluice_forward_disconnected_seconds{forward=\"js\"} 0
sluice_forward_server_info{forward=\"js\",server=\"127.0.0.1:4222\",server_name=\"n1\",version=\"2.15.1\"} 1
sluice_forward_errors_total{forward=\"js\",kind=\"unreachable\"} 3
sluice_forward_errors_total{forward=\"js\",kind=\"timeout\"} 0
sluice_forward_messages_total{forward=\"js\",stream=\"orders\"} 1500
sluice_forward_in_flight{forward=\"js\",stream=\"orders\"} 12
sluice_forward_lag_messages{forward=\"js\",stream=\"orders\"} 40
sluice_forward_lag_bytes{forward=\"js\",stream=\"orders\"} 4096
sluice_forward_lag_seconds{forward=\"js\",stream=\"orders\"} 2.5
sluice_forward_puback_seconds_bucket{forward=\"js\",le=\"0.001\"} 0
sluice_forward_puback_seconds_bucket{forward=\"js\",le=\"0.002\"} 1000
sluice_forward_puback_seconds_bucket{forward=\"js\",le=\"+Inf\"} 1000
";

    #[test]
    fn a_line_per_forward_and_stream_then_its_connection() {
        let now = Scrape::parse(UP);
        let mut o = String::new();
        render(&mut o, &Scrape::default(), &now, 1.0);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines.len(), 3, "{o}");
        assert!(
            lines[0].contains("lag bytes") && lines[0].contains("puback"),
            "{o}"
        );
        let f: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            f,
            [
                "js", "orders", "yes", "1500", "1500", "40", "4.0", "KiB", "2.5s", "12", "2.0/2.0",
                "ms"
            ],
            "{o}"
        );
        assert!(
            lines[2].contains("connected to 127.0.0.1:4222 (n1 2.15.1)"),
            "{o}"
        );
        assert!(
            lines[2].contains("errors since start: unreachable 3"),
            "{o}"
        );
        assert!(!lines[2].contains("timeout"), "{o}");
    }

    #[test]
    fn a_disconnected_forward_says_so() {
        let down = UP
            .replace("connected{forward=\"js\"} 1", "connected{forward=\"js\"} 0")
            .replace(
                "disconnected_seconds{forward=\"js\"} 0",
                "disconnected_seconds{forward=\"js\"} 75",
            );
        let now = Scrape::parse(&down);
        let mut o = String::new();
        render(&mut o, &now, &now, 1.0);
        let row: Vec<&str> = o.lines().nth(1).unwrap().split_whitespace().collect();
        // No PubAck between the two scrapes: no latency, no rate.
        assert_eq!((row[2], row[3], row[10]), ("no", "0", "-/-"), "{o}");
        assert!(
            o.contains("! forward js: NATS cluster unreachable for 1m15s"),
            "{o}"
        );
    }

    #[test]
    fn nothing_without_forwards() {
        let mut o = String::new();
        let s = Scrape::parse("sluice_sessions 1\n");
        render(&mut o, &s, &s, 1.0);
        assert!(o.is_empty());
    }
}
