//! `sluice stat --sessions`: one line per producer session (from
//! `/sessions`), as Aeron's LossStat shows its images: where each producer
//! sends from, how fast, how much needed repair, its credit and round trip.

use std::fmt::Write as _;

use sluice_daemon::sessions::SessionView;

use super::human;

pub fn render(o: &mut String, sessions: &[SessionView]) {
    if sessions.is_empty() {
        let _ = writeln!(o, "no producer sessions open");
        return;
    }
    let _ = writeln!(
        o,
        "{:<16} {:>8} {:<22} {:<4} {:>9} {:>9} {:>8} {:>7} {:>7} {:>6} {:>8} {:>8}",
        "stream",
        "producer",
        "peer",
        "via",
        "msgs/s",
        "messages",
        "durable",
        "nacks",
        "repairs",
        "dups",
        "credit",
        "rtt ms"
    );
    for s in sessions {
        let _ = writeln!(
            o,
            "{:<16} {:>8} {:<22} {:<4} {:>9} {:>9} {:>8} {:>7} {:>7} {:>6} {:>8} {:>8.2}",
            s.stream,
            s.producer,
            s.peer,
            s.via,
            human(s.messages_per_sec),
            human(s.messages as f64),
            s.durable_seq,
            human(s.nacks_sent as f64),
            human(s.repaired as f64),
            human(s.duplicates as f64),
            human(f64::from(s.credit)),
            s.rtt_us as f64 / 1e3,
        );
        if s.over_credit > 0 {
            let _ = writeln!(
                o,
                "  ! {}/{}: {} message(s) sent past the credit (dropped)",
                s.stream,
                s.producer,
                human(s.over_credit as f64)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_one_line_with_its_figures() {
        let mut o = String::new();
        render(&mut o, &[]);
        assert_eq!(o, "no producer sessions open\n");
        let v = SessionView {
            session_id: 9,
            stream: "orders".into(),
            producer: 42,
            peer: "127.0.0.1:5000".into(),
            via: "udp".into(),
            opened_unix: 0.0,
            messages: 1_500,
            bytes: 150_000,
            messages_per_sec: 250.0,
            durable_seq: 1_500,
            received_seq: 1_500,
            credit: 64,
            nacks_sent: 3,
            repaired: 2,
            duplicates: 0,
            over_credit: 5,
            rtt_us: 1_250,
        };
        let mut o = String::new();
        render(&mut o, &[v]);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines.len(), 3, "{o}");
        assert!(lines[0].contains("producer") && lines[0].contains("rtt ms"));
        let f: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(f[..4], ["orders", "42", "127.0.0.1:5000", "udp"], "{o}");
        assert!(lines[1].ends_with("1.25"), "{o}");
        assert!(lines[2].contains("orders/42: 5 message(s) sent past the credit"));
    }
}
