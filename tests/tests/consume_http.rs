//! The consumer HTTP API on the admin port, against real daemons: fetch
//! with long polling, ack, nack, redelivery after the ack deadline, the
//! answers to bad requests and missing tokens, and dead letters (listed,
//! replayed and purged over HTTP and with `sluice dlq`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_daemon::auth::{hash_token, new_token};
use sluice_daemon::consume::dead_letter::replay_producer_id;
use sluice_tests::consume::{get, post, publish, succeeded, text, Answer};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::{sluice_bin, sluiced_bin};

const FETCH: &str = "/streams/jobs/groups/workers/fetch";
const ACK: &str = "/streams/jobs/groups/workers/ack";
const NACK: &str = "/streams/jobs/groups/workers/nack";

fn start(dir: &Path, args: &[&str]) -> (DaemonSpec, Daemon) {
    let mut spec = DaemonSpec::new(sluiced_bin!(), dir);
    for a in args {
        spec = spec.arg(*a);
    }
    let d = spec.start();
    (spec, d)
}

fn ok(a: Answer) -> Value {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// The messages of a fetch answer, by offset: (offset, delivery, payload).
fn messages(body: &Value) -> Vec<(u64, u64, String)> {
    let mut v: Vec<(u64, u64, String)> = body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["delivery"].as_u64().unwrap(),
                text(&m["payload"]),
            )
        })
        .collect();
    v.sort();
    v
}

fn fetch(d: &Daemon, body: Value) -> Vec<(u64, u64, String)> {
    messages(&ok(post(d.admin, FETCH, &body.to_string(), None)))
}

/// Fetches until `n` messages came (at most 10 s).
fn fetch_all(d: &Daemon, n: usize) -> Vec<(u64, u64, String)> {
    let limit = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < limit {
        got.extend(fetch(d, json!({"max": 10, "wait_ms": 1000})));
    }
    got.sort();
    got
}

fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin!())
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ADMIN")
        .output()
        .expect("run sluice")
}

#[test]
fn a_nack_delay_past_the_longest_extension_is_cut_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &["--consumers-max-ack-extension", "1s"]);
    publish(sluice_bin!(), &spec, "jobs", 1, &["a"], None);
    assert_eq!(
        fetch(&d, json!({"max": 1, "wait_ms": 5000})),
        [(0, 1, "a".into())]
    );
    // 2^64 - 1 ms: some 584 million years, uncapped.
    let nack = json!({"offsets": [0], "delay_ms": u64::MAX}).to_string();
    assert_eq!(ok(post(d.admin, NACK, &nack, None)), json!({"nacked": 1}));
    let asked = Instant::now();
    assert_eq!(
        fetch(&d, json!({"max": 1, "wait_ms": 20000})),
        [(0, 2, "a".into())],
        "the nacked message comes back after the longest extension"
    );
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(10),
        "came back after {waited:?}"
    );
}

#[test]
fn fetch_ack_nack_redelivery_and_long_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &["--consumers-ack-deadline", "1s"]);
    publish(sluice_bin!(), &spec, "jobs", 1, &["a", "b", "c"], None);

    // Two of three, first deliveries, with their deadline.
    let body = ok(post(d.admin, FETCH, r#"{"max": 2, "wait_ms": 0}"#, None));
    let m = &body["messages"][0];
    assert_eq!(
        (m["producer"].as_u64(), m["seq"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(m["timestamp_us"].as_u64().unwrap() > 0);
    let deadline = m["deadline_ms"].as_u64().unwrap();
    assert!((1..=1000).contains(&deadline), "{body}");
    assert_eq!(messages(&body), [(0, 1, "a".into()), (1, 1, "b".into())]);
    // Ack one, nack the other: the nacked one comes again at once, with
    // the third.
    assert_eq!(
        ok(post(d.admin, ACK, r#"{"offsets": [0]}"#, None)),
        json!({"acked": 1})
    );
    assert_eq!(
        ok(post(
            d.admin,
            NACK,
            r#"{"offsets": [1], "delay_ms": 0}"#,
            None
        )),
        json!({"nacked": 1})
    );
    assert_eq!(fetch_all(&d, 2), [(1, 2, "b".into()), (2, 1, "c".into())]);
    // Ack 1 only: 2 comes back once its deadline (1 s) has passed.
    ok(post(d.admin, ACK, r#"{"offsets": [1]}"#, None));
    let asked = Instant::now();
    let again = fetch(&d, json!({"max": 10, "wait_ms": 10000}));
    assert_eq!(again, [(2, 2, "c".into())]);
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    ok(post(d.admin, ACK, r#"{"offsets": [2]}"#, None));

    // Nothing is left: a long poll waits its time, then answers empty;
    // acked messages do not come back after their deadline either.
    let asked = Instant::now();
    assert_eq!(fetch(&d, json!({"max": 10, "wait_ms": 1500})), []);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
        "an empty long poll of 1.5 s took {waited:?}"
    );

    // A message published during a long poll ends it promptly.
    let admin = d.admin;
    let poll = std::thread::spawn(move || {
        let asked = Instant::now();
        let a = post(admin, FETCH, r#"{"max": 10, "wait_ms": 25000}"#, None);
        (a, Instant::now(), asked)
    });
    std::thread::sleep(Duration::from_millis(300));
    publish(sluice_bin!(), &spec, "jobs", 1, &["d"], None);
    let published = Instant::now();
    let (a, answered, asked) = poll.join().unwrap();
    assert_eq!(messages(&ok(a)), [(3, 1, "d".into())]);
    let after = answered.saturating_duration_since(published);
    assert!(
        after < Duration::from_secs(2) && answered - asked < Duration::from_secs(20),
        "the long poll answered {after:?} after the publish ({:?} after it began)",
        answered - asked
    );
    ok(post(d.admin, ACK, r#"{"offsets": [3]}"#, None));

    // The group's figures: in /groups, /metrics and `sluice stat`.
    let groups = ok(get(d.admin, "/groups", None));
    let g = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["stream"] == "jobs" && g["group"] == "workers")
        .unwrap_or_else(|| panic!("no jobs/workers in {groups}"))
        .clone();
    assert_eq!(g["acked"], 4, "{g}");
    assert_eq!(g["redelivered"], 2, "{g}");
    assert_eq!(g["backlog_messages"], 0, "{g}");
    let l = [("stream", "jobs"), ("group", "workers")];
    let m = d.metrics();
    assert_eq!(m.value("sluice_group_acked_total", &l), 4.0);
    assert_eq!(m.value("sluice_group_nacked_total", &l), 1.0);
    assert_eq!(m.value("sluice_group_expired_total", &l), 1.0);
    assert_eq!(m.value("sluice_group_backlog_messages", &l), 0.0);
    let admin = d.admin.to_string();
    let stat = succeeded(&sluice(&[
        "stat", "--admin", &admin, "--count", "1", "--every", "0.2",
    ]));
    let line = stat
        .lines()
        .find(|l| l.starts_with("jobs") && l.contains("workers"))
        .unwrap_or_else(|| panic!("no group line in sluice stat:\n{stat}"));
    assert!(
        stat.contains("oldest") && stat.contains("redeliv"),
        "{stat}"
    );
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[2], "0", "backlog: {line}");

    // A new group that starts at the end gets only what comes after.
    let latest = "/streams/jobs/groups/late/fetch";
    let body = r#"{"start": "latest", "wait_ms": 0}"#;
    assert_eq!(messages(&ok(post(d.admin, latest, body, None))), []);
    publish(sluice_bin!(), &spec, "jobs", 1, &["e"], None);
    let body = r#"{"start": "earliest", "wait_ms": 5000}"#;
    assert_eq!(
        messages(&ok(post(d.admin, latest, body, None))),
        [(4, 1, "e".into())],
        "start applies to new groups only"
    );
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn bad_requests_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &[]);
    publish(sluice_bin!(), &spec, "jobs", 1, &["a"], None);
    for (path, body, field) in [
        (FETCH, r#"{"max": "ten"}"#, "\"max\""),
        (FETCH, r#"{"max": 0}"#, "\"max\""),
        (FETCH, r#"{"wait_ms": -5}"#, "\"wait_ms\""),
        (FETCH, r#"{"start": "yesterday"}"#, "\"start\""),
        (FETCH, r#"{"maks": 3}"#, "\"maks\""),
        (FETCH, r#"{"max": 3"#, "not JSON"),
        (FETCH, "[1, 2]", "object"),
        (ACK, r#"{}"#, "\"offsets\""),
        (ACK, r#"{"offsets": ["one"]}"#, "\"offsets\""),
        (ACK, r#"{"offsets": 3}"#, "\"offsets\""),
        (
            NACK,
            r#"{"offsets": [0], "delay_ms": "soon"}"#,
            "\"delay_ms\"",
        ),
        (
            "/streams/jobs/groups/workers/extend",
            r#"{"offsets": [0], "ms": 1.5}"#,
            "\"ms\"",
        ),
        ("/streams/jobs/groups/.hidden/fetch", "{}", "group"),
        (
            "/streams/jobs/dlq/replay",
            r#"{"purge": "yes"}"#,
            "\"purge\"",
        ),
    ] {
        let a = post(d.admin, path, body, None);
        assert_eq!(a.status, 400, "POST {path} {body}: {}", a.body);
        let msg = a.body["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field),
            "POST {path} {body}: {msg:?} lacks {field}"
        );
    }
    // Missing streams and groups.
    for (path, body) in [
        ("/streams/nope/groups/workers/fetch", "{}"),
        ("/streams/jobs/groups/never/ack", r#"{"offsets": [0]}"#),
        ("/streams/jobs/groups/never/nack", r#"{"offsets": [0]}"#),
        ("/streams/nope/dlq/replay", "{}"),
    ] {
        let a = post(d.admin, path, body, None);
        assert_eq!(a.status, 404, "POST {path}: {}", a.body);
        assert!(a.body["error"].as_str().is_some(), "{}", a.body);
    }
    assert_eq!(get(d.admin, "/streams/nope/dlq", None).status, 404);
    // An empty body is an empty object: defaults.
    let a = ok(post(d.admin, FETCH, "", None));
    assert_eq!(messages(&a), [(0, 1, "a".into())]);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn the_api_needs_a_token_allowed_to_consume() {
    let dir = tempfile::tempdir().unwrap();
    let (consumer, producer) = (new_token(), new_token());
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"worker\"\nhash = \"{}\"\npublish = [\"jobs\"]\nconsume = [\"jobs\"]\n\n\
             [[auth.tokens]]\nname = \"ingest\"\nhash = \"{}\"\npublish = [\"jobs\"]\n",
            hash_token(&consumer),
            hash_token(&producer)
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (spec, d) = start(&dir.path().join("data"), &["--config", &config]);
    publish(sluice_bin!(), &spec, "jobs", 1, &["a"], Some(&producer));
    let (c, p) = (Some(consumer.as_str()), Some(producer.as_str()));
    for (path, body) in [
        (FETCH, "{}"),
        (ACK, r#"{"offsets": [0]}"#),
        ("/streams/jobs/dlq/purge", "{}"),
        ("/streams/jobs/dlq/replay", "{}"),
    ] {
        assert_eq!(post(d.admin, path, body, None).status, 401, "{path}");
        assert_eq!(
            post(d.admin, path, body, Some("sl_nonsense")).status,
            401,
            "{path}"
        );
        assert_eq!(post(d.admin, path, body, p).status, 403, "{path}");
    }
    assert_eq!(get(d.admin, "/streams/jobs/dlq", None).status, 401);
    assert_eq!(get(d.admin, "/streams/jobs/dlq", p).status, 403);
    // The right token works; /groups is open, as /metrics.
    assert_eq!(
        messages(&ok(post(d.admin, FETCH, "{}", c))),
        [(0, 1, "a".into())]
    );
    assert_eq!(
        ok(post(d.admin, ACK, r#"{"offsets": [0]}"#, c)),
        json!({"acked": 1})
    );
    assert_eq!(
        ok(get(d.admin, "/streams/jobs/dlq", c))["dead_letters"],
        json!([])
    );
    assert_eq!(ok(get(d.admin, "/groups", None))["groups"][0]["acked"], 1);
    assert!(d.terminate(Duration::from_secs(15)).success());
}

/// Fetches (without acking) until `offset`, delivered `before` times
/// already, has been delivered `times` times in all, then waits for it to
/// show in the dead-letter stream.
fn kill_message(d: &Daemon, offset: u64, before: u64, times: u64) -> Value {
    let limit = Instant::now() + Duration::from_secs(30);
    let mut seen = before;
    while seen < times {
        assert!(
            Instant::now() < limit,
            "{offset} delivered {seen} times only"
        );
        for (o, delivery, _) in fetch(d, json!({"max": 10, "wait_ms": 2000})) {
            if o == offset {
                seen += 1;
                assert_eq!(delivery, seen);
            }
        }
    }
    loop {
        let page = ok(get(d.admin, "/streams/jobs/dlq", None));
        let found = page["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source_offset"] == offset)
            .cloned();
        if let Some(l) = found {
            return l;
        }
        assert!(
            Instant::now() < limit,
            "{offset} not dead-lettered within 30 s: {page}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dead_letters_are_listed_replayed_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--consumers-ack-deadline",
        "300ms",
        "--consumers-max-deliveries",
        "2",
    ];
    let (spec, d) = start(dir.path(), &args);
    let admin = d.admin.to_string();
    publish(sluice_bin!(), &spec, "jobs", 5, &["poison", "fine"], None);
    assert_eq!(
        fetch(&d, json!({"wait_ms": 5000}))[0],
        (0, 1, "poison".into())
    );
    ok(post(d.admin, ACK, r#"{"offsets": [1]}"#, None));
    // Delivered once already: once more, and it is dead.
    let l = kill_message(&d, 0, 1, 2);
    assert_eq!(l["offset"], 0, "{l}");
    assert_eq!(l["group"], "workers");
    assert_eq!(l["deliveries"], 2);
    assert_eq!(
        (l["producer"].as_u64(), l["seq"].as_u64()),
        (Some(5), Some(1))
    );
    assert_eq!(text(&l["payload"]), "poison");
    assert!(l["reason"].as_str().unwrap().len() > 3, "{l}");
    let history = l["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{l}");
    for a in history {
        assert_eq!(a["outcome"], "deadline-expired", "{l}");
        assert!(a["at_us"].as_u64().unwrap() >= l["timestamp_us"].as_u64().unwrap());
    }
    assert_eq!(
        ok(get(d.admin, "/groups", None))["groups"][0]["dead_lettered"],
        1
    );

    // sluice dlq list: text and JSON.
    let list = succeeded(&sluice(&["dlq", "list", "jobs", "--admin", &admin]));
    for needle in [
        "dead letter 0",
        "jobs offset 0, producer 5 seq 1",
        "group       workers",
        "deliveries  2",
        "deadline-expired",
        "(6 bytes, text) poison",
    ] {
        assert!(list.contains(needle), "{needle:?} not in:\n{list}");
    }
    let json_list = succeeded(&sluice(&[
        "dlq", "list", "jobs", "--admin", &admin, "--json",
    ]));
    let lines: Vec<Value> = json_list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, std::slice::from_ref(&l));

    // Replay: the payload is back in the stream, as the replay producer;
    // the group gets it as a new message.
    let r = succeeded(&sluice(&["dlq", "replay", "jobs", "--admin", &admin]));
    assert!(r.contains("replayed 1 dead letter into jobs"), "{r}");
    let records = ok(get(d.admin, "/streams/jobs/records?from=2", None));
    let rec = &records["records"][0];
    assert_eq!(text(&rec["payload"]), "poison");
    assert_eq!(rec["producer"].as_u64(), Some(replay_producer_id("jobs")));
    assert_eq!(rec["seq"], 1);
    assert_eq!(
        fetch(&d, json!({"wait_ms": 5000})),
        [(2, 1, "poison".into())]
    );
    ok(post(d.admin, ACK, r#"{"offsets": [2]}"#, None));
    // Again: nothing stored twice.
    let again = succeeded(&sluice(&[
        "dlq", "replay", "jobs", "--admin", &admin, "--json",
    ]));
    let again: Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["replayed"], 0, "{again}");
    assert_eq!(again["duplicates"], 1, "{again}");
    assert_eq!(
        ok(get(d.admin, "/streams/jobs/records?from=3", None))["records"],
        json!([])
    );

    // Purge: gone from lists and replays.
    let p = succeeded(&sluice(&["dlq", "purge", "jobs", "--admin", &admin]));
    assert!(p.contains("purged 1 dead letter of jobs"), "{p}");
    let page = ok(get(d.admin, "/streams/jobs/dlq", None));
    assert_eq!(page["dead_letters"], json!([]), "{page}");
    assert_eq!(page["purged_to"], 1);
    let r = ok(post(d.admin, "/streams/jobs/dlq/replay", "{}", None));
    assert_eq!(
        r,
        json!({"replayed": 0, "duplicates": 0, "skipped": 0, "purged_to": 1})
    );

    // Replay with purge: a second dead letter, replayed and purged at once.
    publish(sluice_bin!(), &spec, "jobs", 5, &["poison again"], None);
    kill_message(&d, 3, 0, 2);
    let r = succeeded(&sluice(&[
        "dlq", "replay", "jobs", "--purge", "--admin", &admin, "--json",
    ]));
    let r: Value = serde_json::from_str(r.trim()).unwrap();
    assert_eq!(
        r,
        json!({"replayed": 1, "duplicates": 0, "skipped": 0, "purged_to": 2})
    );
    let list = sluice(&["dlq", "list", "jobs", "--admin", &admin]);
    assert_eq!(succeeded(&list), "");
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("0 dead letters in jobs.dlq"),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );

    // The purge mark is durable.
    assert!(d.terminate(Duration::from_secs(15)).success());
    let d = spec.start();
    let page = ok(get(d.admin, "/streams/jobs/dlq", None));
    assert_eq!(page["purged_to"], 2, "{page}");
    assert_eq!(page["dead_letters"], json!([]), "{page}");
    assert_eq!(page["durable_end"], 2, "{page}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}
