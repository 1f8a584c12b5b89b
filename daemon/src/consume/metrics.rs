//! Consumer groups in `/metrics`: per group, labelled by stream and group,
//! from the figures each group task publishes (as `sluice stat` and
//! `GET /groups` show them).

use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

use super::service::{Consumers, GroupStats};

/// Reads one figure of a group.
type Field = fn(&GroupStats) -> f64;

/// Gauges: (metric, help, field).
const GAUGES: &[(&str, &str, Field)] = &[
    (
        "sluice_group_backlog_messages",
        "Messages of the stream the group has not acked or dead-lettered yet.",
        |g| g.backlog_messages as f64,
    ),
    (
        "sluice_group_backlog_bytes",
        "Payload bytes of that backlog (unread records estimated from the stream's mean record size).",
        |g| g.backlog_bytes as f64,
    ),
    (
        "sluice_group_oldest_unacked_seconds",
        "Age of the oldest message the group has not acked (0: none).",
        |g| g.oldest_unacked_seconds,
    ),
    (
        "sluice_group_members",
        "Members in the group now (push subscribers and open fetches).",
        |g| g.members as f64,
    ),
    (
        "sluice_group_credit",
        "Messages the members may still receive before they ack (their credit left).",
        |g| g.credit as f64,
    ),
    (
        "sluice_group_out_messages",
        "Messages delivered to members and not yet acked, nacked or expired.",
        |g| g.out as f64,
    ),
    (
        "sluice_group_stopped_at_damage",
        "1 when the group met damage in the stream and reads no further (GET /groups says where; restore the files or restart with --repair), else 0.",
        |g| u8::from(g.stopped_at_damage.is_some()) as f64,
    ),
    (
        "sluice_group_queued_commands",
        "Acks, nacks, extensions and credit from consumers waiting for the group's task (clients wait at 4096).",
        |g| g.queued as f64,
    ),
];

/// Counters since the daemon started: (metric, help, field).
const COUNTERS: &[(&str, &str, Field)] = &[
    (
        "sluice_group_delivered_total",
        "Deliveries to members, first ones and redeliveries.",
        |g| g.counters.delivered as f64,
    ),
    (
        "sluice_group_redelivered_total",
        "Deliveries of a message delivered before (deadline passed, nacked, member left).",
        |g| g.counters.redelivered as f64,
    ),
    ("sluice_group_acked_total", "Messages acked.", |g| {
        g.counters.acked as f64
    }),
    (
        "sluice_group_nacked_total",
        "Messages nacked (refused) by members.",
        |g| g.counters.nacked as f64,
    ),
    (
        "sluice_group_expired_total",
        "Deliveries whose ack deadline passed.",
        |g| g.counters.expired as f64,
    ),
    (
        "sluice_group_dead_lettered_total",
        "Messages moved to the stream's dead-letter stream after max_deliveries.",
        |g| g.counters.dead_lettered as f64,
    ),
    (
        "sluice_group_conflated_total",
        "Messages skipped because a newer one of the same key superseded them (conflating groups).",
        |g| g.counters.conflated as f64,
    ),
    (
        "sluice_group_dropped_total",
        "Messages given up unacked at the group's max_backlog (on_backlog = \"drop_oldest\").",
        |g| g.counters.dropped as f64,
    ),
    (
        "sluice_group_queue_waits_total",
        "Times a consumer waited for room in the group's command queue (it was not read meanwhile).",
        |g| g.queue_waits as f64,
    ),
];

impl Collect for Consumers {
    fn collect(&self, e: &mut Exposition) {
        render(e, &self.stats());
    }
}

fn render(e: &mut Exposition, groups: &[GroupStats]) {
    for (kind, series) in [(Kind::Gauge, GAUGES), (Kind::Counter, COUNTERS)] {
        for (name, help, field) in series {
            e.family(name, kind, help);
            for g in groups {
                e.sample(
                    name,
                    &[("stream", &g.stream), ("group", &g.group)],
                    field(g),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::group::GroupCounters;
    use crate::metrics::scrape::Scrape;

    #[test]
    fn every_figure_is_a_labelled_series() {
        let g = GroupStats {
            stream: "orders".into(),
            group: "billing".into(),
            backlog_messages: 7,
            backlog_bytes: 700,
            oldest_unacked_seconds: 1.5,
            members: 2,
            credit: 30,
            out: 4,
            counters: GroupCounters {
                delivered: 11,
                redelivered: 3,
                acked: 5,
                nacked: 1,
                expired: 2,
                dead_lettered: 1,
                conflated: 6,
                lost_to_retention: 0,
                dropped: 7,
            },
            ..GroupStats::default()
        };
        let mut e = Exposition::default();
        render(&mut e, &[g]);
        let s = Scrape::parse(&e.finish());
        let l = [("stream", "orders"), ("group", "billing")];
        for (name, want) in [
            ("sluice_group_backlog_messages", 7.0),
            ("sluice_group_backlog_bytes", 700.0),
            ("sluice_group_oldest_unacked_seconds", 1.5),
            ("sluice_group_members", 2.0),
            ("sluice_group_credit", 30.0),
            ("sluice_group_out_messages", 4.0),
            ("sluice_group_stopped_at_damage", 0.0),
            ("sluice_group_delivered_total", 11.0),
            ("sluice_group_redelivered_total", 3.0),
            ("sluice_group_acked_total", 5.0),
            ("sluice_group_nacked_total", 1.0),
            ("sluice_group_expired_total", 2.0),
            ("sluice_group_dead_lettered_total", 1.0),
            ("sluice_group_conflated_total", 6.0),
            ("sluice_group_dropped_total", 7.0),
        ] {
            assert_eq!(s.value(name, &l), want, "{name}");
        }
        let stopped = GroupStats {
            stream: "orders".into(),
            group: "audit".into(),
            stopped_at_damage: Some("stream orders: damaged".into()),
            ..GroupStats::default()
        };
        let mut e = Exposition::default();
        render(&mut e, &[stopped]);
        let s = Scrape::parse(&e.finish());
        let l = [("stream", "orders"), ("group", "audit")];
        assert_eq!(s.value("sluice_group_stopped_at_damage", &l), 1.0);
    }
}
