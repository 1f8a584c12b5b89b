//! What a reload (SIGHUP) does to the forwards: the `[[forward]]` entries
//! in force against those of the file, by name.

use super::config::{Auth, ForwardConfig};

/// One forward's step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// New in the file: started.
    Start(ForwardConfig),
    /// Gone from the file: stopped (its group stays).
    Stop(String),
    /// Changed: stopped, then started with the new settings, from its
    /// group's acked position. `what` names the changes (no secret).
    Restart { config: ForwardConfig, what: String },
    /// Changed, added or removed, but not applied: why (a restart of the
    /// daemon applies it).
    Refused { name: String, why: String },
}

/// The steps that turn `old` into `new` (unchanged forwards take none):
/// removals, then changes, then additions, each in the file's order.
pub fn plan(old: &[ForwardConfig], new: &[ForwardConfig]) -> Vec<Step> {
    let find =
        |list: &'_ [ForwardConfig], name: &str| list.iter().find(|f| f.name == name).cloned();
    let mut steps = Vec::new();
    for o in old {
        if find(new, &o.name).is_none() {
            steps.push(if o.replicated {
                refused(&o.name, "removed")
            } else {
                Step::Stop(o.name.clone())
            });
        }
    }
    for n in new {
        if let Some(o) = find(old, &n.name) {
            if o == *n {
                continue;
            }
            let what = describe(&o, n);
            steps.push(if o.replicated || n.replicated {
                refused(&n.name, &format!("changed ({what})"))
            } else {
                Step::Restart {
                    config: n.clone(),
                    what,
                }
            });
        }
    }
    for n in new {
        if find(old, &n.name).is_none() {
            steps.push(if n.replicated {
                refused(&n.name, "added")
            } else {
                Step::Start(n.clone())
            });
        }
    }
    steps
}

/// A forward with `ack = "replicated"` (before or after) is not changed
/// live: producers' acks wait for it (forward/confirm.rs knows the
/// replicated forwards from the start), so one removed would hold them
/// for ever, and one added or changed would not be waited for.
fn refused(name: &str, what: &str) -> Step {
    Step::Refused {
        name: name.to_owned(),
        why: format!(
            "{what}, with ack = \"replicated\": producers' acks wait for its confirmations, set up at start; needs a restart"
        ),
    }
}

/// The changed settings of a forward, old → new, but for credentials:
/// named only.
pub fn describe(old: &ForwardConfig, new: &ForwardConfig) -> String {
    let mut parts = Vec::new();
    let mut shown = |key: &str, a: String, b: String| {
        if a != b {
            parts.push(format!("{key} {a} → {b}"));
        }
    };
    shown("streams", old.streams.join(","), new.streams.join(","));
    shown("servers", old.servers.join(","), new.servers.join(","));
    shown("subject", old.subject.clone(), new.subject.clone());
    shown(
        "target_stream",
        old.target_stream.clone(),
        new.target_stream.clone(),
    );
    shown(
        "create",
        format!("{:?}", old.create),
        format!("{:?}", new.create),
    );
    shown(
        "tls_ca",
        format!("{:?}", old.tls_ca),
        format!("{:?}", new.tls_ca),
    );
    shown(
        "max_in_flight",
        old.max_in_flight.to_string(),
        new.max_in_flight.to_string(),
    );
    shown(
        "ack",
        ack(old.replicated).into(),
        ack(new.replicated).into(),
    );
    if old.auth != new.auth {
        parts.push(format!(
            "credentials ({} → {})",
            auth_kind(&old.auth),
            auth_kind(&new.auth)
        ));
    }
    parts.join(", ")
}

fn ack(replicated: bool) -> &'static str {
    if replicated {
        "replicated"
    } else {
        "local"
    }
}

/// How a forward authenticates, without the secret.
fn auth_kind(a: &Auth) -> &'static str {
    match a {
        Auth::None => "none",
        Auth::Token(_) => "token",
        Auth::UserPassword { .. } => "user and password",
        Auth::CredsFile(_) => "creds_file",
        Auth::NKeyFile(_) => "nkey_file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(name: &str) -> ForwardConfig {
        ForwardConfig {
            name: name.into(),
            streams: vec!["orders".into()],
            servers: vec!["nats://127.0.0.1:4222".into()],
            subject: "sluice.{stream}.{producer}".into(),
            target_stream: "ORDERS".into(),
            create: None,
            auth: Auth::None,
            tls_ca: None,
            max_in_flight: 1024,
            replicated: false,
        }
    }

    #[test]
    fn nothing_changed_takes_no_step() {
        let list = [forward("a"), forward("b")];
        assert!(plan(&list, &list).is_empty());
    }

    #[test]
    fn added_removed_and_changed_forwards_by_name() {
        let old = [forward("gone"), forward("same"), forward("moved")];
        let mut moved = forward("moved");
        moved.subject = "other.{stream}".into();
        let new = [forward("same"), moved.clone(), forward("new")];
        assert_eq!(
            plan(&old, &new),
            [
                Step::Stop("gone".into()),
                Step::Restart {
                    config: moved,
                    what: "subject sluice.{stream}.{producer} → other.{stream}".into()
                },
                Step::Start(forward("new")),
            ]
        );
    }

    #[test]
    fn credentials_are_named_never_shown() {
        let old = forward("a");
        let mut new = forward("a");
        new.auth = Auth::Token("s3cret-token".into());
        new.max_in_flight = 8;
        let what = describe(&old, &new);
        assert_eq!(what, "max_in_flight 1024 → 8, credentials (none → token)");
        let mut newer = new.clone();
        newer.auth = Auth::UserPassword {
            user: "u".into(),
            password: "hunter2".into(),
        };
        let what = describe(&new, &newer);
        assert!(
            !what.contains("s3cret") && !what.contains("hunter2"),
            "{what}"
        );
    }

    #[test]
    fn a_replicated_forward_is_never_changed_live() {
        let mut r = forward("r");
        r.replicated = true;
        // Added, changed, removed: each refused, with why.
        for (old, new) in [
            (vec![], vec![r.clone()]),
            (vec![r.clone()], vec![]),
            (vec![forward("r")], vec![r.clone()]),
        ] {
            let steps = plan(&old, &new);
            assert!(
                matches!(&steps[..], [Step::Refused { name, why }] if name == "r" && why.contains("needs a restart")),
                "{steps:?}"
            );
        }
    }
}
