//! The push routes of the admin port (WebSocket and server-sent events)
//! against real daemons: `sluice consume --transport ws|sse` end to end
//! (print, ack, nack and redelivery with --exec), and a WebSocket driven
//! by hand (tokio-tungstenite): the credit window never exceeded,
//! redelivery after a disconnect, bad messages closed with a code, and the
//! rights checked before the upgrade.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_daemon::auth::{hash_token, new_token};
use sluice_tests::consume::{get, publish, succeeded};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::{sluice_bin, sluiced_bin};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn start(dir: &Path, args: &[&str]) -> (DaemonSpec, Daemon) {
    let mut spec = DaemonSpec::new(sluiced_bin!(), dir);
    for a in args {
        spec = spec.arg(*a);
    }
    let d = spec.start();
    (spec, d)
}

/// A group's figures from `/groups`.
fn group(d: &Daemon, stream: &str, name: &str) -> Value {
    let groups = get(d.admin, "/groups", None).body;
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["stream"] == stream && g["group"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no group {stream}/{name} in {groups}"))
}

/// `sluice consume` over `transport` that must end by itself within 30 s.
fn consume(d: &Daemon, transport: &str, args: &[&str]) -> Output {
    let child = Command::new(sluice_bin!())
        .args(["consume", "jobs", "--group", "w", "--transport", transport])
        .args(["--admin", &d.admin.to_string()])
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ADMIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice consume");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("sluice consume output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("sluice consume --transport {transport} did not finish within 30 s");
        }
    }
}

/// (offset, delivery, payload) of `--print line` output, sorted.
fn lines(out: &str) -> Vec<(u64, u32, String)> {
    let mut v: Vec<(u64, u32, String)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "{l:?}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[4].to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_cli_consumes_over_ws_and_sse_and_its_acks_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &[]);
    let words = ["a", "b", "c", "d", "e", "f"];
    publish(sluice_bin!(), &spec, "jobs", 1, &words, None);
    // ws takes the first three (a window of 3: no more out than it needs).
    let out = succeeded(&consume(&d, "ws", &["--count", "3", "--print", "line"]));
    assert_eq!(
        lines(&out),
        [(0, 1, "a".into()), (1, 1, "b".into()), (2, 1, "c".into())]
    );
    let g = group(&d, "jobs", "w");
    assert_eq!(
        (g["acked"].as_u64(), g["backlog_messages"].as_u64()),
        (Some(3), Some(3)),
        "{g}"
    );
    assert_eq!(g["redelivered"].as_u64(), Some(0), "{g}");
    // sse the rest, acked over HTTP.
    let out = succeeded(&consume(&d, "sse", &["--count", "3", "--print", "line"]));
    assert_eq!(
        lines(&out),
        [(3, 1, "d".into()), (4, 1, "e".into()), (5, 1, "f".into())]
    );
    let g = group(&d, "jobs", "w");
    assert_eq!(g["backlog_messages"].as_u64(), Some(0), "{g}");
    // Durable: after a kill -9, nothing comes again.
    d.kill9();
    let d = spec.start();
    publish(sluice_bin!(), &spec, "jobs", 1, &["g"], None);
    let out = succeeded(&consume(&d, "ws", &["--count", "1", "--print", "line"]));
    assert_eq!(lines(&out), [(6, 1, "g".into())]);
}

#[test]
fn a_failed_exec_nacks_and_the_message_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &[]);
    publish(sluice_bin!(), &spec, "jobs", 1, &["a"], None);
    for transport in ["ws", "sse"] {
        let out = consume(
            &d,
            transport,
            &[
                "--count",
                "1",
                "--print",
                "line",
                "--exec",
                // Fails on a first delivery, succeeds on the next.
                "test \"$SLUICE_DELIVERY\" -gt 1 && test \"$(cat)\" = a",
                "--nack-delay",
                "200ms",
            ],
        );
        let text = succeeded(&out);
        let got = lines(&text);
        assert_eq!(got.len(), 2, "{transport}: {text}");
        assert_eq!(got[0].0, got[1].0, "{transport}: the same message twice");
        assert_eq!(got[1].1, got[0].1 + 1, "{transport}: {text}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nacked"),
            "{transport}"
        );
        if transport == "ws" {
            publish(sluice_bin!(), &spec, "jobs", 2, &["a"], None);
        }
    }
    let g = group(&d, "jobs", "w");
    assert_eq!(
        (g["nacked"].as_u64(), g["acked"].as_u64()),
        (Some(2), Some(2)),
        "{g}"
    );
}

async fn connect(d: &Daemon, query: &str, token: Option<&str>) -> Result<Ws, u16> {
    let url = format!("ws://{}/streams/jobs/groups/w/ws?{query}", d.admin);
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let hello = next_json(&mut ws).await.expect("a first frame");
            assert!(hello.get("subscribed").is_some(), "{hello}");
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// The next text frame as JSON, `None` after `wait`.
async fn next_json_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("unexpected: {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    next_json_within(ws, Duration::from_secs(10)).await
}

/// `n` deliveries' offsets (and their delivery counts).
async fn take(ws: &mut Ws, n: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = next_json(ws)
            .await
            .unwrap_or_else(|| panic!("{} of {n} deliveries", got.len()));
        got.push((
            m["offset"].as_u64().unwrap(),
            m["delivery"].as_u64().unwrap(),
        ));
    }
    got
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_holds_and_a_disconnect_hands_back() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &[]);
    let words: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| publish(sluice_bin!(), &spec, "jobs", 1, &words, None));
    let mut ws = connect(&d, "max_messages=4", None).await.unwrap();
    let first = take(&mut ws, 4).await;
    assert!(
        next_json_within(&mut ws, Duration::from_secs(1))
            .await
            .is_none(),
        "more than the window"
    );
    // Over the sessions's acks and the HTTP route's alike, a window frees.
    send(&mut ws, json!({"ack": [first[0].0]})).await;
    let one = take(&mut ws, 1).await;
    let ack = sluice_tests::consume::post(
        d.admin,
        "/streams/jobs/groups/w/ack",
        &json!({"offsets": [first[1].0]}).to_string(),
        None,
    );
    assert_eq!(ack.status, 200);
    let two = take(&mut ws, 1).await;
    assert!(next_json_within(&mut ws, Duration::from_secs(1))
        .await
        .is_none());
    assert_eq!(group(&d, "jobs", "w")["out"].as_u64(), Some(4));
    // Gone without acking: what it held comes to the next one again.
    drop(ws);
    let mut held: Vec<u64> = first[2..]
        .iter()
        .chain(&one)
        .chain(&two)
        .map(|m| m.0)
        .collect();
    held.sort();
    let mut ws = connect(&d, "max_messages=10", None).await.unwrap();
    let mut again = take(&mut ws, 10).await;
    again.sort();
    let redelivered: Vec<u64> = again.iter().filter(|m| m.1 == 2).map(|m| m.0).collect();
    assert_eq!(redelivered, held);
    // A bad message: closed with 1008 and a reason, the daemon goes on.
    send(&mut ws, json!({"ack": "everything"})).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("offset"), "{}", close.reason);
    assert_eq!(
        group(&d, "jobs", "w")["backlog_messages"].as_u64(),
        Some(38)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_are_checked_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let (consumer, producer) = (new_token(), new_token());
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"worker\"\nhash = \"{}\"\npublish = [\"jobs\"]\nconsume = [\"jobs\", \"nosuch\"]\n\n\
             [[auth.tokens]]\nname = \"ingest\"\nhash = \"{}\"\npublish = [\"jobs\", \"other\"]\n",
            hash_token(&consumer),
            hash_token(&producer)
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (spec, d) = start(&dir.path().join("data"), &["--config", &config]);
    tokio::task::block_in_place(|| {
        publish(sluice_bin!(), &spec, "jobs", 1, &["a"], Some(&producer))
    });
    assert_eq!(connect(&d, "", None).await.err(), Some(401));
    assert_eq!(connect(&d, "", Some("sl_nonsense")).await.err(), Some(401));
    assert_eq!(connect(&d, "", Some(&producer)).await.err(), Some(403));
    assert_eq!(
        connect(&d, "max_messages=0", Some(&consumer)).await.err(),
        Some(400)
    );
    let mut ws = connect(&d, "", Some(&consumer)).await.unwrap();
    assert_eq!(take(&mut ws, 1).await, [(0, 1)]);
    // The event stream answers the same.
    let events = |token: Option<&str>| {
        get(
            d.admin,
            "/streams/jobs/groups/w/events?max_outstanding=1",
            token,
        )
        .status
    };
    let (p, nosuch) = (producer.clone(), consumer.clone());
    let (none, forbidden, missing) = tokio::task::block_in_place(|| {
        (
            events(None),
            events(Some(&p)),
            get(d.admin, "/streams/nosuch/groups/w/events", Some(&nosuch)).status,
        )
    });
    assert_eq!((none, forbidden, missing), (401, 403, 404));
}

#[test]
fn a_slow_command_does_not_lose_the_connection() {
    // Pings every second, a client silent for 3 s is taken for gone, and
    // an event stream that takes nothing for 2 s is closed: the CLI reads
    // on while its command runs.
    let dir = tempfile::tempdir().unwrap();
    let (spec, d) = start(dir.path(), &["--admin-idle-timeout", "2s"]);
    publish(sluice_bin!(), &spec, "jobs", 1, &["a", "b", "c", "d"], None);
    for transport in ["ws", "sse"] {
        let out = consume(
            &d,
            transport,
            &["--count", "2", "--print", "line", "--exec", "sleep 4"],
        );
        let got = lines(&succeeded(&out));
        assert_eq!(got.len(), 2, "{transport}: {got:?}");
        assert!(got.iter().all(|m| m.1 == 1), "{transport}: {got:?}");
    }
    let g = group(&d, "jobs", "w");
    assert_eq!(
        (g["acked"].as_u64(), g["redelivered"].as_u64()),
        (Some(4), Some(0)),
        "{g}"
    );
}
