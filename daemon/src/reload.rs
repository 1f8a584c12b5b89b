//! SIGHUP: the configuration read again (the file, under the flags and
//! environment the daemon started with) and what can change safely put in
//! force without stopping anything:
//!
//! - `[auth]` (tokens and client-certificate principals): every credential
//!   checked from then on meets the new principals; connections and
//!   sessions admitted before keep theirs until they close.
//! - `log.level` and `log.format`.
//! - Consumer group settings (`[[consumers.groups]]`, and the defaults
//!   `consumers.ack_deadline`, `max_ack_extension`, `max_deliveries`,
//!   `read_ahead`, `read_ahead_bytes`, `max_groups`): a running group
//!   takes its new settings through its task (`Consumers::reconfigure`;
//!   messages out with members keep the deadline they were given), a
//!   newly configured group is created, a group removed from the file
//!   runs on and is named in a warning (its state goes only by `sluice
//!   group delete`). A group's `conflate` changes at its next start.
//! - Forwards (`[[forward]]`): a new one starts, a removed one stops (its
//!   group stays, named), a changed one stops and starts again from its
//!   group's acked position (`Forwarders::reconfigure`). Those with
//!   `ack = "replicated"` change only at a restart.
//!
//! Every other changed key is named in a warning as needing a restart and
//! keeps its running value (listeners, the spool, the consumers' credit
//! limits...). A file that does not load or check changes nothing: the
//! daemon runs on, on its old settings, and logs why.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::auth::AuthConfig;
use crate::config::{Args, Config, ConfigError};
use crate::consume::changes::{joined, Applies};
use crate::consume::service::{Consumers, ConsumersConfig};
use crate::forward::{ForwardConfig, Forwarders};
use crate::gate::Gate;
use crate::logging::LogHandle;

/// Keys a reload applies; any other changed key needs a restart.
const RELOADABLE: [&str; 12] = [
    "auth.tokens",
    "auth.clients",
    "log.level",
    "log.format",
    "consumers.groups",
    "consumers.ack_deadline",
    "consumers.max_ack_extension",
    "consumers.max_deliveries",
    "consumers.read_ahead",
    "consumers.read_ahead_bytes",
    "consumers.max_groups",
    "forward",
];

/// A `consumers.` key a reload applies: the groups and their defaults
/// (not the consumers' credit limits).
fn is_group_setting(key: &str) -> bool {
    key.starts_with("consumers.") && RELOADABLE.contains(&key)
}

/// What a reload changes in the running daemon.
pub struct Live {
    /// Whom it admits.
    pub gate: Arc<Gate>,
    pub consumers: Arc<Consumers>,
    pub forwarders: Arc<Forwarders>,
}

/// What one reload did (also logged, a line per key).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys now in force.
    pub applied: Vec<String>,
    /// Keys that changed in the file but keep their running value.
    pub need_restart: Vec<String>,
}

/// The configuration in force and how to read it again.
pub struct Reloader {
    args: Args,
    running: Config,
    log: Option<LogHandle>,
}

impl Reloader {
    /// `running` is what the daemon started with from `args`; `log` the
    /// log's handle, if this process set the log up.
    pub fn new(args: Args, running: Config, log: Option<LogHandle>) -> Reloader {
        Reloader { args, running, log }
    }

    /// Reads and checks the configuration again and applies what can
    /// change to `live` and the log. Logs one line per key (or group, or
    /// forward) applied, one per key that needs a restart, and an error
    /// (changing nothing) if the configuration is invalid, which is also
    /// returned.
    pub async fn reload(&mut self, live: &Live) -> Result<Outcome, ConfigError> {
        let gate = &live.gate;
        let (new, checked) = match Config::load(&self.args) {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(error = %e, "reload refused: the configuration is invalid; running on the previous settings");
                return Err(e);
            }
        };
        let mut outcome = Outcome::default();
        let changed = changed_keys(&self.running, &new);
        if changed.is_empty() {
            info!("reload: the configuration is unchanged");
            return Ok(outcome);
        }
        if changed.iter().any(|k| k.starts_with("auth.")) {
            match gate.replace(checked.settings.authenticator) {
                Ok(()) => {
                    info!(
                        change = %auth_change(&self.running.auth, &new.auth),
                        "reload: auth applied (credentials checked from now on; connections already admitted keep their principal)"
                    );
                    self.running.auth = new.auth.clone();
                    outcome
                        .applied
                        .extend(changed.iter().filter(|k| k.starts_with("auth.")).cloned());
                }
                Err(why) => {
                    error!(
                        reason = why.0,
                        "reload: auth not applied; the previous principals stay in force"
                    );
                }
            }
        }
        if changed
            .iter()
            .any(|k| k == "forward" || is_group_setting(k))
        {
            self.groups_and_forwards(
                live,
                &new,
                checked.settings.consumers,
                checked.settings.forwards,
                &changed,
                &mut outcome,
            )
            .await;
        }
        let log_keys: Vec<&String> = changed.iter().filter(|k| k.starts_with("log.")).collect();
        if !log_keys.is_empty() {
            match &self.log {
                Some(handle) => {
                    // Said before the switch, under the filter and format
                    // that the reader of the log knows so far (a level
                    // raised to `warn` would hide the lines otherwise).
                    for k in &log_keys {
                        let value = if k.as_str() == "log.level" {
                            new.log.level.clone()
                        } else {
                            new.log.format.to_string()
                        };
                        info!(key = %k, value, "reload: applied");
                    }
                    match handle.apply(checked.logging) {
                        Ok(()) => {
                            self.running.log = new.log.clone();
                            outcome.applied.extend(log_keys.into_iter().cloned());
                        }
                        Err(e) => {
                            error!(error = %e, "reload: the log settings were not applied after all")
                        }
                    }
                }
                None => warn!(
                    "reload: log settings changed, but this process's log was set up by its host program and cannot be changed"
                ),
            }
        }
        for k in changed
            .iter()
            .filter(|k| !RELOADABLE.contains(&k.as_str()))
            .cloned()
        {
            warn!(key = %k, "reload: changed, needs a restart to take effect (the running value stays)");
            outcome.need_restart.push(k);
        }
        Ok(outcome)
    }
}

impl Reloader {
    /// Applies the consumer group settings, then the forwards (whose
    /// groups are configured ones, so they exist by then).
    async fn groups_and_forwards(
        &mut self,
        live: &Live,
        new: &Config,
        consumers: ConsumersConfig,
        forwards: Vec<ForwardConfig>,
        changed: &[String],
        outcome: &mut Outcome,
    ) {
        // The defaults, said once each (the groups that take them say
        // what changed for them below).
        let (old_c, new_c) = (
            toml::Value::try_from(&self.running.consumers).ok(),
            toml::Value::try_from(&new.consumers).ok(),
        );
        for k in changed
            .iter()
            .filter(|k| is_group_setting(k) && *k != "consumers.groups")
        {
            let field = &k["consumers.".len()..];
            let show = |v: &Option<toml::Value>| {
                v.as_ref()
                    .and_then(|v| v.get(field))
                    .map_or_else(String::new, |v| {
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    })
            };
            info!(key = %k, change = %format!("{} → {}", show(&old_c), show(&new_c)),
                  "reload: applied (to every running group that takes the default)");
        }
        let done = live.consumers.reconfigure(consumers).await;
        for ((stream, group), list) in &done.changed {
            let now = joined(list, Applies::Now);
            if !now.is_empty() {
                info!(stream, group, change = %now,
                      "reload: consumer group settings applied (messages out with members keep the deadline they were given; deliveries from now on take the new one)");
            }
            let created = joined(list, Applies::AtCreation);
            if !created.is_empty() {
                info!(stream, group, change = %created,
                      "reload: where a group starts matters only when it is created; this one exists and goes on from its state");
            }
            let later = joined(list, Applies::AtRestart);
            if !later.is_empty() {
                warn!(stream, group, change = %later,
                      "reload: changed, needs a restart to take effect (the running value stays)");
                outcome
                    .need_restart
                    .push(format!("consumers.groups[{stream}/{group}].conflate"));
            }
        }
        for (stream, group, opened) in &done.created {
            info!(
                stream,
                group, opened, "reload: consumer group configured and started"
            );
        }
        for (stream, group, why) in &done.failed {
            error!(stream, group, error = %why, "reload: a newly configured consumer group could not be started");
        }
        for (stream, group) in &done.unconfigured {
            warn!(stream, group,
                  "reload: consumer group no longer configured: it runs on with its settings and state (and holds back retention if it did); `sluice group delete` removes it");
        }
        // What runs now, but for the consumers' credit limits (sized at
        // start).
        let (r, n) = (&mut self.running.consumers, &new.consumers);
        r.groups = n.groups.clone();
        r.ack_deadline = n.ack_deadline;
        r.max_ack_extension = n.max_ack_extension;
        r.max_deliveries = n.max_deliveries;
        r.read_ahead = n.read_ahead;
        r.read_ahead_bytes = n.read_ahead_bytes;
        r.max_groups = n.max_groups;
        outcome
            .applied
            .extend(changed.iter().filter(|k| is_group_setting(k)).cloned());
        if !changed.iter().any(|k| k == "forward") {
            return;
        }
        let (applied, refused) = live.forwarders.reconfigure(forwards).await;
        // The entries in force: the file's, but those refused as they run.
        let mut entries = new.forward.clone();
        for name in &refused {
            entries.retain(|f| &f.name != name);
            if let Some(old) = self.running.forward.iter().find(|f| &f.name == name) {
                entries.push(old.clone());
            }
            outcome.need_restart.push(format!("forward.{name}"));
        }
        self.running.forward = entries;
        // Applied also when only its group settings changed (above).
        if applied > 0 || refused.is_empty() {
            outcome.applied.push("forward".into());
        }
    }
}

/// What differs between two `[auth]` sections, by principal name (never
/// a hash): `tokens +a -b ~c; clients +x`.
fn auth_change(old: &AuthConfig, new: &AuthConfig) -> String {
    fn diff<T: PartialEq>(
        old: &[T],
        new: &[T],
        name: impl Fn(&T) -> &str,
        what: &str,
    ) -> Option<String> {
        let find = |list: &'_ [T], n: &str| list.iter().position(|e| name(e) == n);
        let mut parts = Vec::new();
        for e in new {
            match find(old, name(e)) {
                None => parts.push(format!("+{}", name(e))),
                Some(i) if old[i] != *e => parts.push(format!("~{}", name(e))),
                Some(_) => {}
            }
        }
        for e in old {
            if find(new, name(e)).is_none() {
                parts.push(format!("-{}", name(e)));
            }
        }
        (!parts.is_empty()).then(|| format!("{what} {}", parts.join(" ")))
    }
    let parts: Vec<String> = [
        diff(&old.tokens, &new.tokens, |t| &t.name, "tokens"),
        diff(&old.clients, &new.clients, |c| &c.common_name, "clients"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        // Same names and entries, another order.
        "order only".into()
    } else {
        parts.join("; ")
    }
}

/// Every key (`section.key`, or a whole array such as `forward`) whose
/// value differs between `old` and `new`, sorted.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(old)), Ok(toml::Value::Table(new))) =
        (toml::Value::try_from(old), toml::Value::try_from(new))
    else {
        // Both are configurations that loaded: they serialize.
        return vec!["(the whole configuration)".into()];
    };
    let mut keys = Vec::new();
    for section in union(&old, &new) {
        match (old.get(&section), new.get(&section)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                for key in union(a, b) {
                    if a.get(&key) != b.get(&key) {
                        keys.push(format!("{section}.{key}"));
                    }
                }
            }
            (a, b) if a != b => keys.push(section),
            _ => {}
        }
    }
    keys
}

/// The keys of `a` then those only in `b`.
fn union(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> = a.keys().cloned().collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_token, new_token, TokenEntry};

    fn token(name: &str, token: &str) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            hash: hash_token(token),
            publish: vec!["*".into()],
            consume: vec![],
            admin: false,
        }
    }

    #[test]
    fn changed_keys_name_section_and_key() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).is_empty());
        new.log.level = "debug".into();
        new.spool.dir = "/elsewhere".into();
        new.auth.tokens.push(token("a", &new_token()));
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, ["auth.tokens", "log.level", "spool.dir"]);
    }

    #[test]
    fn group_and_forward_changes_are_applied_but_credit_limits_need_a_restart() {
        use crate::config::{ForwardEntry, GroupEntry, Size};
        let old = Config::default();
        let mut new = old.clone();
        new.consumers.groups.push(GroupEntry {
            stream: "jobs".into(),
            group: "workers".into(),
            ..GroupEntry::default()
        });
        new.consumers.max_deliveries = 2;
        new.consumers.max_out_bytes = Size::mib(1);
        new.forward.push(ForwardEntry {
            name: "js".into(),
            ..ForwardEntry::default()
        });
        let keys = changed_keys(&old, &new);
        assert_eq!(
            keys,
            [
                "consumers.groups",
                "consumers.max_deliveries",
                "consumers.max_out_bytes",
                "forward"
            ]
        );
        let restart: Vec<&String> = keys
            .iter()
            .filter(|k| !RELOADABLE.contains(&k.as_str()))
            .collect();
        assert_eq!(restart, ["consumers.max_out_bytes"]);
    }

    #[test]
    fn auth_changes_by_name() {
        let (a, b) = (new_token(), new_token());
        let old = AuthConfig {
            tokens: vec![token("a", &a), token("keep", &b)],
            clients: vec![],
        };
        let mut new = old.clone();
        new.tokens[1].admin = true;
        new.tokens.remove(0);
        new.tokens.push(token("b", &new_token()));
        assert_eq!(auth_change(&old, &new), "tokens ~keep +b -a");
    }
}
