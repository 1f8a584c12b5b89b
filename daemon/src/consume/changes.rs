//! Which of a group's settings differ between two configurations, and
//! when each difference can take effect on a running group: what a reload
//! (SIGHUP) applies and what it says about the rest.

use std::fmt::Debug;

use super::handle::GroupSettings;

/// When a changed setting takes effect on a group that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// At once (the group's task takes it: `GroupTask::reconfigure`).
    Now,
    /// Only where a group is created: an existing one goes on from its
    /// state (`start`).
    AtCreation,
    /// At the group's next start (`conflate`: the records read ahead were
    /// conflated under the old rule).
    AtRestart,
}

/// One setting that differs: its key as in `[[consumers.groups]]`, the
/// old and new values as shown in the log (none is secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub old: String,
    pub new: String,
    pub applies: Applies,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {}", self.key, self.old, self.new)
    }
}

/// Every setting that differs between `old` and `new`, in a fixed order.
pub fn changes(old: &GroupSettings, new: &GroupSettings) -> Vec<Change> {
    let mut out = Vec::new();
    let mut add = |key, a: String, b: String, applies| {
        if a != b {
            out.push(Change {
                key,
                old: a,
                new: b,
                applies,
            });
        }
    };
    let span = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let (a, b) = (&old.machine, &new.machine);
    add(
        "ack_deadline",
        span(a.ack_deadline),
        span(b.ack_deadline),
        Applies::Now,
    );
    add(
        "max_ack_extension",
        span(a.max_ack_extension),
        span(b.max_ack_extension),
        Applies::Now,
    );
    add(
        "max_deliveries",
        a.max_deliveries.to_string(),
        b.max_deliveries.to_string(),
        Applies::Now,
    );
    add(
        "read_ahead",
        a.read_ahead.to_string(),
        b.read_ahead.to_string(),
        Applies::Now,
    );
    add(
        "read_ahead_bytes",
        a.read_ahead_bytes.to_string(),
        b.read_ahead_bytes.to_string(),
        Applies::Now,
    );
    add(
        "retain_until_acked",
        old.retain_until_acked.to_string(),
        new.retain_until_acked.to_string(),
        Applies::Now,
    );
    add(
        "max_backlog",
        old.max_backlog.to_string(),
        new.max_backlog.to_string(),
        Applies::Now,
    );
    add(
        "on_backlog",
        debug(&old.on_backlog),
        debug(&new.on_backlog),
        Applies::Now,
    );
    add(
        "conflate",
        debug(&a.conflate),
        debug(&b.conflate),
        Applies::AtRestart,
    );
    add(
        "start",
        debug(&old.start),
        debug(&new.start),
        Applies::AtCreation,
    );
    out
}

fn debug(v: &impl Debug) -> String {
    format!("{v:?}")
}

/// The changes in `list` that take effect on `applies`, joined for a log
/// line (empty: none).
pub fn joined(list: &[Change], applies: Applies) -> String {
    list.iter()
        .filter(|c| c.applies == applies)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::group::KeyRule;
    use crate::consume::service::{OnBacklog, StartAt};
    use std::time::Duration;

    #[test]
    fn the_same_settings_differ_in_nothing() {
        let s = GroupSettings::default();
        assert!(changes(&s, &s.clone()).is_empty());
    }

    #[test]
    fn each_changed_setting_is_named_with_old_and_new_and_when_it_applies() {
        let old = GroupSettings::default();
        let mut new = old.clone();
        new.machine.ack_deadline = Duration::from_secs(5);
        new.machine.max_deliveries = 2;
        new.max_backlog = 100;
        new.on_backlog = OnBacklog::DropOldest;
        new.machine.conflate = Some(KeyRule::Producer);
        new.start = StartAt::Latest;
        let got = changes(&old, &new);
        let keys: Vec<(&str, Applies)> = got.iter().map(|c| (c.key, c.applies)).collect();
        assert_eq!(
            keys,
            [
                ("ack_deadline", Applies::Now),
                ("max_deliveries", Applies::Now),
                ("max_backlog", Applies::Now),
                ("on_backlog", Applies::Now),
                ("conflate", Applies::AtRestart),
                ("start", Applies::AtCreation),
            ]
        );
        assert_eq!(
            joined(&got, Applies::Now),
            "ack_deadline 30s → 5s, max_deliveries 5 → 2, max_backlog 0 → 100, on_backlog Hold → DropOldest"
        );
        assert_eq!(
            joined(&got, Applies::AtRestart),
            "conflate None → Some(Producer)"
        );
    }

    #[test]
    fn why_a_group_must_not_be_reset_is_no_setting() {
        // It follows from a forward's `ack`, which the forward's own
        // change names; the group's settings are the same.
        let old = GroupSettings::default();
        let mut new = old.clone();
        new.no_reset = Some("replicated");
        assert!(changes(&old, &new).is_empty());
    }
}
