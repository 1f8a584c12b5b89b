//! The permission matrix: every way into a real `sluiced` (each HTTP route
//! of the admin port, each QUIC action, each CLI command) tried with every
//! kind of principal (publish only, consume only, admin only, publish and
//! consume, all three) and with no principal (an unknown token, no token).
//!
//! [`RIGHTS`] is the one place that says what each request needs; the
//! expected answer of every try is derived from it, and README's table of
//! rights ("Security") must say the same (`readme_says_what_each_right_allows`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::auth::{hash_token, new_token};
use sluice_tests::consume::{get, post, publish, Answer};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::{sluice_bin, sluiced_bin};
use sluice_transport::client::{
    Consumer, ConsumerError, ConsumerOptions, Producer, ProducerError, ProducerOptions, Transport,
};
use sluice_transport::quic::control::RefuseCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Right {
    Publish,
    Consume,
    Admin,
}

impl Right {
    fn word(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Consume => "consume",
            Right::Admin => "admin",
        }
    }
}

use Right::{Admin, Consume, Publish};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing: anyone who reaches the port.
    Open,
    /// Any principal (what it shows depends on its rights).
    Principal,
    /// A principal with every one of these rights on the stream.
    Rights(&'static [Right]),
}

/// One request and what it needs; `key` is its first cell in README's
/// table of rights, `cli` the command that makes it (second cell).
struct Rule {
    key: &'static str,
    cli: Option<&'static str>,
    needs: Needs,
}

const fn rule(key: &'static str, cli: Option<&'static str>, needs: Needs) -> Rule {
    Rule { key, cli, needs }
}

/// What each right allows: the one table of this test.
const RIGHTS: &[Rule] = &[
    rule(
        "QUIC: publish over a QUIC stream",
        Some("sluice publish --transport quic"),
        Needs::Rights(&[Publish]),
    ),
    rule(
        "QUIC: lease the fast path",
        Some("sluice publish"),
        Needs::Rights(&[Publish]),
    ),
    rule(
        "QUIC: subscribe",
        Some("sluice consume"),
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`POST /streams/{s}/messages`",
        Some("sluice publish --transport http"),
        Needs::Rights(&[Publish]),
    ),
    rule(
        "`GET /streams/{s}/records`",
        Some("sluice read"),
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`POST /streams/{s}/groups/{g}/fetch`",
        None,
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`POST /streams/{s}/groups/{g}/ack`",
        None,
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`POST /streams/{s}/groups/{g}/nack`",
        None,
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`POST /streams/{s}/groups/{g}/extend`",
        None,
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`GET /streams/{s}/groups/{g}/ws`",
        Some("sluice consume --transport ws"),
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`GET /streams/{s}/groups/{g}/events`",
        Some("sluice consume --transport sse"),
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`GET /streams/{s}/dlq`",
        Some("sluice dlq list"),
        Needs::Rights(&[Consume]),
    ),
    rule(
        "`POST /streams/{s}/dlq/replay`",
        Some("sluice dlq replay"),
        Needs::Rights(&[Consume, Publish]),
    ),
    rule(
        "`POST /streams/{s}/dlq/replay` with `\"purge\": true`",
        Some("sluice dlq replay --purge"),
        Needs::Rights(&[Consume, Publish, Admin]),
    ),
    rule(
        "`POST /streams/{s}/dlq/purge`",
        Some("sluice dlq purge"),
        Needs::Rights(&[Admin]),
    ),
    rule(
        "`POST /streams/{s}/groups/{g}/reset`",
        Some("sluice group reset"),
        Needs::Rights(&[Admin]),
    ),
    rule(
        "`DELETE /streams/{s}/groups/{g}`",
        Some("sluice group delete"),
        Needs::Rights(&[Admin]),
    ),
    rule(
        "`POST /spool/verify`",
        Some("sluice spool verify"),
        Needs::Rights(&[Admin]),
    ),
    rule(
        "`PUT /streams/{s}`",
        Some("sluice stream create"),
        Needs::Rights(&[Admin]),
    ),
    rule(
        "`DELETE /streams/{s}`",
        Some("sluice stream delete"),
        Needs::Rights(&[Admin]),
    ),
    rule(
        "`POST /streams/{s}/purge`",
        Some("sluice stream purge"),
        Needs::Rights(&[Admin]),
    ),
    rule("`GET /streams`", Some("sluice stream ls"), Needs::Principal),
    rule(
        "`GET /streams/{s}`",
        Some("sluice stream info"),
        Needs::Rights(&[Consume]),
    ),
    rule("`GET /groups`", Some("sluice group list"), Needs::Open),
    rule(
        "`GET /sessions`",
        Some("sluice stat --sessions"),
        Needs::Open,
    ),
    rule("`GET /metrics`", Some("sluice stat"), Needs::Open),
    rule("`GET /health`", None, Needs::Open),
    rule("`GET /openapi.json`", None, Needs::Open),
];

fn needs(key: &str) -> Needs {
    RIGHTS
        .iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("{key:?} is not in RIGHTS"))
        .needs
}

/// A client of the matrix: a configured principal with these rights, or
/// none (`rights: None`: an unknown token, or no token at all).
struct Who {
    name: &'static str,
    rights: Option<&'static [Right]>,
    token: Option<String>,
}

/// Every kind of client, and the `[auth]` section that makes them.
fn clients() -> (Vec<Who>, String) {
    let principals: [(&str, &[Right]); 5] = [
        ("publisher", &[Publish]),
        ("consumer", &[Consume]),
        ("operator", &[Admin]),
        ("worker", &[Publish, Consume]),
        ("all", &[Publish, Consume, Admin]),
    ];
    let mut who = Vec::new();
    let mut auth = String::new();
    for (name, rights) in principals {
        let token = new_token();
        let list = |r: Right| {
            if rights.contains(&r) && name == "all" {
                // Also the streams made to be purged and deleted: set up,
                // and looked at afterwards, as "all".
                "[\"orders\", \"*-del-*\", \"cli-*\"]"
            } else if rights.contains(&r) {
                "[\"orders\"]"
            } else {
                "[]"
            }
        };
        auth.push_str(&format!(
            "[[auth.tokens]]\nname = \"{name}\"\nhash = \"{}\"\npublish = {}\nconsume = {}\nadmin = {}\n\n",
            hash_token(&token),
            list(Publish),
            list(Consume),
            rights.contains(&Admin),
        ));
        who.push(Who {
            name,
            rights: Some(rights),
            token: Some(token),
        });
    }
    who.push(Who {
        name: "unknown",
        rights: None,
        token: Some(new_token()),
    });
    who.push(Who {
        name: "none",
        rights: None,
        token: None,
    });
    (who, auth)
}

/// What must happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// No principal: 401, "invalid token" / "no credentials".
    Unauthenticated,
    /// A principal without the right: 403, "may not".
    Forbidden,
}

fn expected(needs: Needs, who: &Who) -> Outcome {
    match (needs, who.rights) {
        (Needs::Open, _) => Outcome::Allowed,
        (_, None) => Outcome::Unauthenticated,
        (Needs::Principal, Some(_)) => Outcome::Allowed,
        (Needs::Rights(need), Some(has)) => {
            if need.iter().all(|r| has.contains(r)) {
                Outcome::Allowed
            } else {
                Outcome::Forbidden
            }
        }
    }
}

/// What an unauthenticated client is told.
fn unauthenticated_says(who: &Who) -> &'static str {
    match who.token {
        Some(_) => "invalid token",
        None => "no credentials",
    }
}

/// A daemon with the matrix's principals, stream `orders` holding
/// messages, and the groups the tries need.
struct Setup {
    _dir: tempfile::TempDir,
    spec: DaemonSpec,
    daemon: Daemon,
    who: Vec<Who>,
}

impl Setup {
    fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (who, auth) = clients();
        let config = dir.path().join("sluiced.toml");
        std::fs::write(&config, auth).unwrap();
        let spec = DaemonSpec::new(sluiced_bin!(), &dir.path().join("data"))
            .arg("--config")
            .arg(config.display().to_string())
            .arg("--spool-fsync")
            .arg("never");
        let daemon = spec.start();
        let s = Setup {
            _dir: dir,
            spec,
            daemon,
            who,
        };
        let lines: Vec<String> = (0..40).map(|i| format!("order {i}")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        publish(sluice_bin!(), &s.spec, "orders", 1, &lines, Some(s.all()));
        // The groups: one all share, and one to delete per client and way.
        let mut groups = vec!["g".to_owned()];
        for w in &s.who {
            groups.push(format!("del-{}", w.name));
            groups.push(format!("cli-del-{}", w.name));
        }
        // The streams to purge and delete, per client and way, each
        // holding a message (made with `PUT /streams/{s}`).
        for w in &s.who {
            for name in [
                format!("purged-del-{}", w.name),
                format!("gone-del-{}", w.name),
                format!("cli-purged-{}", w.name),
                format!("cli-gone-{}", w.name),
            ] {
                let a = put(s.daemon.admin, &format!("/streams/{name}"), Some(s.all()));
                assert_eq!(a.status, 201, "creating stream {name}: {:?}", a.body);
                let a = post(
                    s.daemon.admin,
                    &format!("/streams/{name}/messages"),
                    "m",
                    Some(s.all()),
                );
                assert_eq!(a.status, 200, "publishing to {name}: {:?}", a.body);
            }
        }
        for g in groups {
            let a = post(
                s.daemon.admin,
                &format!("/streams/orders/groups/{g}/fetch"),
                r#"{"max": 1}"#,
                Some(s.all()),
            );
            assert_eq!(a.status, 200, "creating group {g}: {:?}", a.body);
        }
        s
    }

    fn all(&self) -> &str {
        self.who
            .iter()
            .find(|w| w.name == "all")
            .and_then(|w| w.token.as_deref())
            .unwrap()
    }
}

/// The failures of a matrix, gathered to be reported all at once.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self, matrix: &str, tries: usize) {
        assert!(
            self.0.is_empty(),
            "{} of {tries} tries of the {matrix} matrix went wrong:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
        eprintln!("{matrix} matrix: {tries} tries as expected");
    }
}

// ---------------------------------------------------------------- HTTP

/// One HTTP request: which rule, method, path (`{g}`: a group of the
/// client's own), body.
struct Route {
    key: &'static str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
}

const ROUTES: &[Route] = &[
    Route {
        key: "`POST /streams/{s}/messages`",
        method: "POST",
        path: "/streams/orders/messages",
        body: "by http",
    },
    Route {
        key: "`GET /streams/{s}/records`",
        method: "GET",
        path: "/streams/orders/records?limit=5",
        body: "",
    },
    Route {
        key: "`POST /streams/{s}/groups/{g}/fetch`",
        method: "POST",
        path: "/streams/orders/groups/g/fetch",
        body: r#"{"max": 2}"#,
    },
    Route {
        key: "`POST /streams/{s}/groups/{g}/ack`",
        method: "POST",
        path: "/streams/orders/groups/g/ack",
        body: r#"{"offsets": [0]}"#,
    },
    Route {
        key: "`POST /streams/{s}/groups/{g}/nack`",
        method: "POST",
        path: "/streams/orders/groups/g/nack",
        body: r#"{"offsets": [1], "delay_ms": 10}"#,
    },
    Route {
        key: "`POST /streams/{s}/groups/{g}/extend`",
        method: "POST",
        path: "/streams/orders/groups/g/extend",
        body: r#"{"offsets": [2], "ms": 1000}"#,
    },
    Route {
        key: "`GET /streams/{s}/dlq`",
        method: "GET",
        path: "/streams/orders/dlq",
        body: "",
    },
    Route {
        key: "`POST /streams/{s}/dlq/replay`",
        method: "POST",
        path: "/streams/orders/dlq/replay",
        body: "{}",
    },
    Route {
        key: "`POST /streams/{s}/dlq/replay` with `\"purge\": true`",
        method: "POST",
        path: "/streams/orders/dlq/replay",
        body: r#"{"purge": true}"#,
    },
    Route {
        key: "`POST /streams/{s}/dlq/purge`",
        method: "POST",
        path: "/streams/orders/dlq/purge",
        body: "",
    },
    Route {
        key: "`POST /streams/{s}/groups/{g}/reset`",
        method: "POST",
        path: "/streams/orders/groups/g/reset",
        body: r#"{"start": "earliest"}"#,
    },
    Route {
        key: "`DELETE /streams/{s}/groups/{g}`",
        method: "DELETE",
        path: "/streams/orders/groups/{own}",
        body: "",
    },
    Route {
        key: "`POST /spool/verify`",
        method: "POST",
        path: "/spool/verify",
        body: "",
    },
    Route {
        key: "`PUT /streams/{s}`",
        method: "PUT",
        path: "/streams/new-{own}",
        body: "",
    },
    Route {
        key: "`POST /streams/{s}/purge`",
        method: "POST",
        path: "/streams/purged-{own}/purge?force=true",
        body: "",
    },
    Route {
        key: "`DELETE /streams/{s}`",
        method: "DELETE",
        path: "/streams/gone-{own}?force=true",
        body: "",
    },
    Route {
        key: "`GET /streams`",
        method: "GET",
        path: "/streams",
        body: "",
    },
    Route {
        key: "`GET /streams/{s}`",
        method: "GET",
        path: "/streams/orders",
        body: "",
    },
    Route {
        key: "`GET /groups`",
        method: "GET",
        path: "/groups",
        body: "",
    },
    Route {
        key: "`GET /sessions`",
        method: "GET",
        path: "/sessions",
        body: "",
    },
    Route {
        key: "`GET /metrics`",
        method: "GET",
        path: "/metrics",
        body: "",
    },
    Route {
        key: "`GET /health`",
        method: "GET",
        path: "/health",
        body: "",
    },
    Route {
        key: "`GET /openapi.json`",
        method: "GET",
        path: "/openapi.json",
        body: "",
    },
];

fn delete(admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> Answer {
    call("DELETE", admin, path, token)
}

fn put(admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> Answer {
    call("PUT", admin, path, token)
}

/// A request without a body.
fn call(method: &str, admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let mut r =
        ureq::request(method, &format!("http://{admin}{path}")).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        r = r.set("authorization", &format!("Bearer {t}"));
    }
    let (status, text) = match r.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    }
}

#[test]
fn every_http_route_answers_every_principal_as_its_rights_say() {
    let s = Setup::start();
    let admin = s.daemon.admin;
    let mut failures = Failures::default();
    let mut tries = 0;
    for w in &s.who {
        for r in ROUTES {
            let path = r.path.replace("{own}", &format!("del-{}", w.name));
            let token = w.token.as_deref();
            // /metrics is text: its body is not JSON.
            let a = match r.method {
                "GET" => get(admin, &path, token),
                "POST" => post(admin, &path, r.body, token),
                "DELETE" => delete(admin, &path, token),
                "PUT" => put(admin, &path, token),
                m => unreachable!("{m}"),
            };
            tries += 1;
            let want = expected(needs(r.key), w);
            let what = || format!("{} {path} as {}: {} {}", r.method, w.name, a.status, a.body);
            let error = a.body["error"].as_str().unwrap_or("");
            match want {
                // A creation answers 201.
                Outcome::Allowed => failures.check(matches!(a.status, 200 | 201), || {
                    format!("{} (expected 200 or 201)", what())
                }),
                Outcome::Unauthenticated => failures.check(
                    a.status == 401 && error.contains(unauthenticated_says(w)),
                    || format!("{} (expected 401, {:?})", what(), unauthenticated_says(w)),
                ),
                Outcome::Forbidden => failures.check(
                    a.status == 403 && error.contains(&format!("principal {:?} may not", w.name)),
                    || format!("{} (expected 403, \"may not\")", what()),
                ),
            }
        }
    }
    // What the principals were allowed did happen: the groups of those
    // allowed to delete are gone, the others' are not.
    let groups = get(admin, "/groups", None).body;
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    for w in &s.who {
        let deleted = expected(needs("`DELETE /streams/{s}/groups/{g}`"), w) == Outcome::Allowed;
        let own = format!("del-{}", w.name);
        failures.check(names.contains(&own.as_str()) != deleted, || {
            format!("group {own} of {} exists: {}", w.name, !deleted)
        });
    }
    // And the streams of those allowed to create, purge and delete were
    // created, emptied and deleted; the others' were not.
    let streams = get(admin, "/streams", Some(s.all())).body.to_string();
    for w in &s.who {
        let may = expected(needs("`PUT /streams/{s}`"), w) == Outcome::Allowed;
        let (new, gone) = (
            format!("new-del-{}", w.name),
            format!("gone-del-{}", w.name),
        );
        failures.check(streams.contains(&format!("\"{new}\"")) == may, || {
            format!("stream {new} exists: {}", !may)
        });
        failures.check(streams.contains(&format!("\"{gone}\"")) != may, || {
            format!("stream {gone} exists: {may}")
        });
        let purged = get(
            admin,
            &format!("/streams/purged-del-{}", w.name),
            Some(s.all()),
        )
        .body;
        failures.check((purged["first_offset"] == 1) == may, || {
            format!("stream purged-del-{} purged: {}: {purged}", w.name, !may)
        });
    }
    // Every refusal was counted, by reason.
    let m = s.daemon.metrics();
    let denied = |reason: &str| m.value("sluice_auth_denied_total", &[("reason", reason)]);
    failures.check(denied("forbidden") > 0.0, || "no forbidden counted".into());
    failures.check(denied("bad_token") > 0.0, || "no bad_token counted".into());
    failures.check(denied("no_credentials") > 0.0, || {
        "no no_credentials counted".into()
    });
    failures.assert_none("HTTP", tries);
}

// ---------------------------------------------------------------- QUIC

/// The producer id of client `i`'s publish `k` (0: QUIC, 1: fast path).
fn producer(i: usize, k: u64) -> u64 {
    100 + 2 * i as u64 + k
}

/// Publishes one message over `transport`; the first error if any.
async fn publish_one(
    spec: &DaemonSpec,
    transport: Transport,
    producer: u64,
) -> Result<u64, ProducerError> {
    let mut options = ProducerOptions::with_transport(transport);
    options.max_reconnects = 0;
    let p = Producer::connect(spec.quic, "orders", producer, options).await?;
    let seq = p.send(Bytes::from_static(b"from the matrix")).await?;
    p.close().await?;
    Ok(seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_quic_action_answers_every_principal_as_its_rights_say() {
    let s = tokio::task::block_in_place(Setup::start);
    let mut failures = Failures::default();
    let mut tries = 0;
    for (i, w) in s.who.iter().enumerate() {
        let q = s.spec.quic_options(w.token.clone());
        for (k, key, transport) in [
            (
                0,
                "QUIC: publish over a QUIC stream",
                Transport::Quic(q.clone()),
            ),
            (
                1,
                "QUIC: lease the fast path",
                Transport::FastPath(q.clone()),
            ),
        ] {
            tries += 1;
            let got = publish_one(&s.spec, transport, producer(i, k)).await;
            let what = || format!("{key} as {}: {got:?}", w.name);
            match expected(needs(key), w) {
                Outcome::Allowed => failures.check(got.is_ok(), what),
                Outcome::Unauthenticated => failures.check(
                    matches!(&got, Err(ProducerError::AuthFailed(r)) if r.contains(unauthenticated_says(w))),
                    what,
                ),
                Outcome::Forbidden => failures.check(
                    matches!(&got, Err(ProducerError::Forbidden(r))
                        if r.contains(&format!("principal {:?} may not publish", w.name))),
                    what,
                ),
            }
        }
        let key = "QUIC: subscribe";
        tries += 1;
        let mut options = ConsumerOptions::new(q, format!("quic-{}", w.name));
        options.reconnect_timeout = Duration::from_secs(5);
        let got = match Consumer::connect(s.spec.quic, "orders", options).await {
            Ok(mut c) => {
                // Allowed means delivered to, too.
                let first = tokio::time::timeout(Duration::from_secs(10), c.next()).await;
                c.close().await;
                match first {
                    Ok(Ok(Some(d))) => Ok(d.offset),
                    other => Err(ConsumerError::Io(format!("no delivery: {other:?}"))),
                }
            }
            Err(e) => Err(e),
        };
        let what = || format!("{key} as {}: {got:?}", w.name);
        match expected(needs(key), w) {
            Outcome::Allowed => failures.check(got == Ok(0), what),
            Outcome::Unauthenticated => failures.check(
                matches!(&got, Err(ConsumerError::Auth(r)) if r.contains(unauthenticated_says(w))),
                what,
            ),
            Outcome::Forbidden => failures.check(
                matches!(&got, Err(ConsumerError::Refused { code: RefuseCode::Forbidden, reason })
                    if reason.contains(&format!("principal {:?} may not consume", w.name))),
                what,
            ),
        }
    }
    failures.assert_none("QUIC", tries);
    // Exactly the allowed publishers' messages were stored.
    let Setup {
        daemon, spec, who, ..
    } = s;
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    let mut stored: Vec<u64> = sluice_tests::check::stored(&spec.dir, "orders")
        .into_iter()
        .map(|(p, _)| p)
        .filter(|&p| p >= 100)
        .collect();
    stored.sort_unstable();
    let mut want: Vec<u64> = Vec::new();
    for (i, w) in who.iter().enumerate() {
        for (k, key) in [
            (0, "QUIC: publish over a QUIC stream"),
            (1, "QUIC: lease the fast path"),
        ] {
            if expected(needs(key), w) == Outcome::Allowed {
                want.push(producer(i, k));
            }
        }
    }
    assert_eq!(stored, want, "what the matrix stored (producer ids)");
}

// ---------------------------------------------------------------- CLI

/// One CLI command: which rule, its arguments (`{admin}`, `{quic}`,
/// `{cert}`, `{own}`: the client's own group to delete, `{who}`: its name),
/// and stdin.
struct CliCase {
    key: &'static str,
    args: &'static [&'static str],
    stdin: &'static str,
}

const QUIC_ARGS: &[&str] = &["--to", "{quic}", "--server-cert", "{cert}"];

const CLI: &[CliCase] = &[
    CliCase {
        key: "QUIC: publish over a QUIC stream",
        args: &[
            "publish",
            "-s",
            "orders",
            "--transport",
            "quic",
            "--producer",
            "{quic_producer}",
        ],
        stdin: "by quic\n",
    },
    CliCase {
        key: "`POST /streams/{s}/messages`",
        args: &[
            "publish",
            "-s",
            "orders",
            "--transport",
            "http",
            "--admin",
            "{admin}",
        ],
        stdin: "by http\n",
    },
    CliCase {
        key: "QUIC: lease the fast path",
        args: &["publish", "-s", "orders", "--producer", "{udp_producer}"],
        stdin: "by the fast path\n",
    },
    CliCase {
        key: "QUIC: subscribe",
        args: &["consume", "orders", "-g", "cli-{who}", "--count", "1"],
        stdin: "",
    },
    // The push routes, tried through the CLI: a route that streams (or
    // upgrades) answers no 200 with a body the HTTP table could wait for.
    CliCase {
        key: "`GET /streams/{s}/groups/{g}/ws`",
        args: &[
            "consume",
            "orders",
            "-g",
            "ws-{who}",
            "--count",
            "1",
            "--transport",
            "ws",
            "--admin",
            "{admin}",
        ],
        stdin: "",
    },
    CliCase {
        key: "`GET /streams/{s}/groups/{g}/events`",
        args: &[
            "consume",
            "orders",
            "-g",
            "sse-{who}",
            "--count",
            "1",
            "--transport",
            "sse",
            "--admin",
            "{admin}",
        ],
        stdin: "",
    },
    CliCase {
        key: "`GET /streams/{s}/records`",
        args: &["read", "-s", "orders", "-n", "3", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`GET /streams/{s}/dlq`",
        args: &["dlq", "list", "orders", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`POST /streams/{s}/dlq/replay`",
        args: &["dlq", "replay", "orders", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`POST /streams/{s}/dlq/replay` with `\"purge\": true`",
        args: &["dlq", "replay", "orders", "--purge", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`POST /streams/{s}/dlq/purge`",
        args: &["dlq", "purge", "orders", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`POST /streams/{s}/groups/{g}/reset`",
        args: &[
            "group", "reset", "orders", "g", "--start", "earliest", "--admin", "{admin}",
        ],
        stdin: "",
    },
    CliCase {
        key: "`DELETE /streams/{s}/groups/{g}`",
        args: &["group", "delete", "orders", "{own}", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`POST /spool/verify`",
        args: &["spool", "verify", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`PUT /streams/{s}`",
        args: &["stream", "create", "cli-new-{who}", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`POST /streams/{s}/purge`",
        args: &[
            "stream",
            "purge",
            "cli-purged-{who}",
            "--force",
            "--admin",
            "{admin}",
        ],
        stdin: "",
    },
    CliCase {
        key: "`DELETE /streams/{s}`",
        args: &[
            "stream",
            "delete",
            "-s",
            "cli-gone-{who}",
            "--force",
            "--admin",
            "{admin}",
        ],
        stdin: "",
    },
    CliCase {
        key: "`GET /groups`",
        args: &["group", "list", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`GET /metrics`",
        args: &["stat", "--count", "1", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`GET /streams`",
        args: &["stream", "ls", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`GET /streams/{s}`",
        args: &["stream", "info", "orders", "--admin", "{admin}"],
        stdin: "",
    },
    CliCase {
        key: "`GET /sessions`",
        args: &["stat", "--sessions", "--count", "1", "--admin", "{admin}"],
        stdin: "",
    },
];

/// Runs `sluice` with `args` (and `stdin`), killed after `limit`: exit
/// code and stderr.
fn run_cli(
    args: &[String],
    token: Option<&str>,
    stdin: &str,
    limit: Duration,
) -> (Option<i32>, String) {
    let mut cmd = Command::new(sluice_bin!());
    cmd.args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_TOKEN_FILE")
        .env_remove("SLUICE_ADDR")
        .env_remove("SLUICE_ADMIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let mut child = cmd.spawn().expect("start sluice");
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (
                None,
                format!(
                    "killed after {limit:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_cli_command_answers_every_principal_as_its_rights_say() {
    let s = Setup::start();
    let cert = s.spec.server_cert().display().to_string();
    let (quic, admin) = (s.spec.quic.to_string(), s.daemon.admin.to_string());
    // One thread per client: the tries of one client run in order.
    let failures: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = s
            .who
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let (cert, quic, admin) = (&cert, &quic, &admin);
                // Each client publishes as producers of its own: two
                // processes sending as one producer at once replace each
                // other's sessions (a misuse, and a race in this test).
                let (quic_producer, udp_producer) = (producer(i, 0), producer(i, 1));
                scope.spawn(move || {
                    let mut failures = Failures::default();
                    for c in CLI {
                        let quic_args = c.args[0] == "publish" || c.args[0] == "consume";
                        let args: Vec<String> = c
                            .args
                            .iter()
                            .chain(if quic_args { QUIC_ARGS } else { &[] })
                            .map(|a| {
                                a.replace("{admin}", admin)
                                    .replace("{quic}", quic)
                                    .replace("{cert}", cert)
                                    .replace("{own}", &format!("cli-del-{}", w.name))
                                    .replace("{who}", w.name)
                                    .replace("{quic_producer}", &quic_producer.to_string())
                                    .replace("{udp_producer}", &udp_producer.to_string())
                            })
                            .collect();
                        let (code, stderr) =
                            run_cli(&args, w.token.as_deref(), c.stdin, Duration::from_secs(30));
                        let what = || {
                            format!(
                                "sluice {} as {}: exit {code:?}: {}",
                                c.args.join(" "),
                                w.name,
                                stderr.trim()
                            )
                        };
                        match expected(needs(c.key), w) {
                            Outcome::Allowed => failures.check(code == Some(0), what),
                            Outcome::Unauthenticated => failures.check(
                                code == Some(1) && stderr.contains(unauthenticated_says(w)),
                                what,
                            ),
                            Outcome::Forbidden => failures.check(
                                code == Some(1)
                                    && stderr
                                        .contains(&format!("principal \"{}\" may not", w.name)),
                                what,
                            ),
                        }
                    }
                    failures.0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    Failures(failures.into_iter().flatten().collect()).assert_none("CLI", s.who.len() * CLI.len());
}

// ---------------------------------------------------------------- README

/// README's table of rights, as (first cell, CLI cell, needs cell).
fn readme_rows() -> Vec<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("| request | CLI | needs |"));
    assert!(
        lines.next().is_some(),
        "no table of rights (`| request | CLI | needs |`) in README.md"
    );
    lines
        .skip(1) // |---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            // Cells may hold `|` only inside backticks: none of ours do.
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            assert_eq!(cells.len(), 3, "{l:?}");
            (cells[0].clone(), cells[1].clone(), cells[2].clone())
        })
        .collect()
}

/// What README's needs cell says: rights in backticks, "any principal",
/// or "open".
fn readme_needs(cell: &str) -> Needs {
    let mut rights = Vec::new();
    for r in [Publish, Consume, Admin] {
        if cell.contains(&format!("`{}`", r.word())) {
            rights.push(r);
        }
    }
    if !rights.is_empty() {
        return Needs::Rights(Vec::leak(rights));
    }
    if cell.contains("any principal") {
        return Needs::Principal;
    }
    assert!(
        cell.contains("open"),
        "README needs cell {cell:?}: no right, principal or open"
    );
    Needs::Open
}

fn same_needs(a: Needs, b: Needs) -> bool {
    match (a, b) {
        (Needs::Rights(x), Needs::Rights(y)) => {
            x.len() == y.len() && x.iter().all(|r| y.contains(r))
        }
        _ => a == b,
    }
}

#[test]
fn readme_says_what_each_right_allows() {
    let rows = readme_rows();
    let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for rule in RIGHTS {
        let Some((_, cli, need)) = rows.iter().find(|r| r.0 == rule.key) else {
            panic!(
                "README's table of rights has no row {:?} (it has {keys:?})",
                rule.key
            );
        };
        let said = readme_needs(need);
        assert!(
            same_needs(said, rule.needs),
            "README says {:?} needs {said:?} ({need:?}); it needs {:?}",
            rule.key,
            rule.needs
        );
        let want_cli = rule.cli.map_or("—".to_owned(), |c| format!("`{c}`"));
        assert_eq!(*cli, want_cli, "README's CLI cell of {:?}", rule.key);
    }
    assert_eq!(
        rows.len(),
        RIGHTS.len(),
        "README's table has rows the test does not know: {keys:?}"
    );
    // Every rule is tried one way or more.
    for rule in RIGHTS {
        let tried =
            ROUTES.iter().any(|r| r.key == rule.key) || CLI.iter().any(|c| c.key == rule.key);
        assert!(tried, "{:?} is never tried", rule.key);
    }
}
