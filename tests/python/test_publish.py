"""Publishing over HTTP from Python (httpx): idempotency keys, the
producer-id/seq form beside the fast path, batches, and bad input."""

import base64
import json
import os
import struct
import subprocess
import threading
import time

import httpx

from conftest import ADMIN, READER, WRITER, auth


def post(d, stream, body=b"", headers=None, token=WRITER):
    h = dict(auth(token))
    h.update(headers or {})
    return httpx.post(f"{d.base}/streams/{stream}/messages", content=body, headers=h, timeout=30.0)


def payloads(d, stream):
    """The stream's payloads; none if the stream does not exist (a kill
    before its first message was durable leaves no stream: auto-created
    streams are made by their first write)."""
    try:
        records = d.records(stream)
    except httpx.HTTPStatusError as e:
        if e.response.status_code == 404:
            return []
        raise
    return [base64.b64decode(r["payload"]) for r in records]


def test_the_same_key_three_times_stores_one_record(sluiced):
    answers = [post(sluiced, "orders", b"order 42", {"Idempotency-Key": "order-42"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    first, *retries = [a.json() for a in answers]
    assert first["duplicate"] is False and first["offset"] == 0
    for r in retries:
        # The original answer: same offset, producer and seq.
        assert r == dict(first, duplicate=True)
    assert "idempotent-replayed" not in answers[0].headers
    assert answers[1].headers["idempotent-replayed"] == "true"
    # The same key with another body is refused and stores nothing.
    other = post(sluiced, "orders", b"order 43", {"Idempotency-Key": "order-42"})
    assert other.status_code == 422, other.text
    assert "Idempotency-Key" in other.json()["error"]
    # Another key is another request.
    assert post(sluiced, "orders", b"order 43", {"Idempotency-Key": "order-43"}).json()["offset"] == 1
    assert payloads(sluiced, "orders") == [b"order 42", b"order 43"]
    # Requests without a key are each stored.
    post(sluiced, "orders", b"no key")
    post(sluiced, "orders", b"no key")
    assert payloads(sluiced, "orders")[2:] == [b"no key", b"no key"]
    # Operators see the retries and the conflict.
    m = httpx.get(f"{sluiced.base}/metrics").text
    assert 'sluice_idempotency_key_repeats_total{stream="orders"} 2' in m, m
    assert 'sluice_idempotency_key_conflicts_total{stream="orders"} 1' in m, m
    assert 'sluice_http_publish_requests_total{stream="orders"} 7' in m, m


def test_keys_survive_kill_9_between_the_durable_write_and_the_answer(sluiced):
    """Keyed requests from 16 threads; the daemon is killed (kill -9) while
    they are in flight, started again, and every request is sent again with
    its key until answered. Each key's message must be stored exactly once.
    The cycle repeats until some request was durable but unanswered when
    the daemon died (the window the key exists for), at most 30 times."""
    sent = {}  # key -> body
    answered = {}  # key -> offset
    lock = threading.Lock()
    hit_window = 0
    cycle = 0
    for cycle in range(30):
        stop = threading.Event()
        in_flight = set()

        def worker(w):
            n = 0
            with httpx.Client(base_url=sluiced.base, headers=auth(WRITER), timeout=10.0) as c:
                while not stop.is_set():
                    key = f"c{cycle}-w{w}-{n}"
                    body = f"message {key}".encode()
                    n += 1
                    with lock:
                        sent[key] = body
                        in_flight.add(key)
                    try:
                        r = c.post("/streams/crash/messages", content=body, headers={"Idempotency-Key": key})
                    except httpx.TransportError:
                        return
                    if r.status_code != 200:
                        return
                    with lock:
                        answered[key] = r.json()["offset"]
                        in_flight.discard(key)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.2 + 0.05 * (cycle % 5))
        sluiced.kill9()
        stop.set()
        for t in threads:
            t.join(20)
        sluiced.start()
        stored = {}
        for b in payloads(sluiced, "crash"):
            key = b.decode().removeprefix("message ")
            stored[key] = stored.get(key, 0) + 1
        # Stored but never answered: durable before the kill, answer lost.
        hit_window += len([k for k in in_flight if k in stored])
        # Retry every request not answered, with its key.
        with httpx.Client(base_url=sluiced.base, headers=auth(WRITER), timeout=20.0) as c:
            for key in sorted(set(sent) - set(answered)):
                r = c.post("/streams/crash/messages", content=sent[key], headers={"Idempotency-Key": key})
                assert r.status_code == 200, r.text
                if key in stored:
                    assert r.json()["duplicate"] is True, (key, r.text)
                answered[key] = r.json()["offset"]
        if hit_window and cycle >= 2:
            break
    records = sluiced.records("crash")
    by_key = {}
    for r in records:
        key = base64.b64decode(r["payload"]).decode().removeprefix("message ")
        by_key.setdefault(key, []).append(r["offset"])
    assert set(by_key) == set(sent), "every request sent is stored"
    dups = {k: v for k, v in by_key.items() if len(v) != 1}
    assert not dups, f"stored more than once: {dict(list(dups.items())[:5])}"
    for key, offset in answered.items():
        assert by_key[key] == [offset], (key, offset, by_key[key])
    print(f"kills: {cycle + 1}, durable and unanswered: {hit_window}, requests: {len(sent)}")
    assert hit_window > 0, f"in {cycle + 1} kills no request was durable and unanswered: the window was never tested"


def test_producer_seqs_are_the_fast_paths_idempotence(sluiced):
    sluice = os.environ.get("SLUICE_BIN")
    assert sluice, "SLUICE_BIN is not set: run through cargo test (tests/tests/python_clients.rs)"
    h = lambda seq: {"Sluice-Producer-Id": "4242", "Sluice-Seq": str(seq)}
    for seq in (1, 2, 3):
        r = post(sluiced, "mixed", f"http {seq}".encode(), h(seq))
        assert r.status_code == 200 and r.json()["seq"] == seq and not r.json()["duplicate"], r.text
    # A resend of seq 2 over HTTP: a duplicate, stored nothing.
    r = post(sluiced, "mixed", b"http 2", h(2))
    assert r.json()["duplicate"] is True and r.json()["offset"] is None, r.text
    # The same producer id over the fast path (sealed UDP, leased over
    # QUIC) continues from the durable seq (4, 5).
    out = subprocess.run(
        [sluice, "publish", "--stream", "mixed", "--transport", "fast", "--producer", "4242",
         "--to", f"127.0.0.1:{sluiced.quic_port}", "--token", WRITER,
         "--server-cert", str(sluiced.spool / "tls" / "server.crt")],
        input=b"quic 4\nquic 5\n", capture_output=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    # HTTP seq 5 was stored by the fast path: a duplicate; 6 is new.
    assert post(sluiced, "mixed", b"http 5", h(5)).json()["duplicate"] is True
    r = post(sluiced, "mixed", b"http 6", h(6)).json()
    assert r["duplicate"] is False and r["offset"] == 5
    recs = sluiced.records("mixed")
    assert [(r["producer"], r["seq"]) for r in recs] == [(4242, s) for s in range(1, 7)]
    assert [base64.b64decode(r["payload"]) for r in recs] == [
        b"http 1", b"http 2", b"http 3", b"quic 4", b"quic 5", b"http 6"]


def test_batches_are_stored_together_in_order(sluiced):
    lines = "\n".join([json.dumps({"data": "one"}), json.dumps({"base64": base64.b64encode(b"\x00\xfftwo").decode()}), ""])
    r = post(sluiced, "batch", lines.encode(), {"Content-Type": "application/x-ndjson", "Idempotency-Key": "b1"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert [m["offset"] for m in a["messages"]] == [0, 1] and a["duplicate"] is False
    again = post(sluiced, "batch", lines.encode(), {"Content-Type": "application/x-ndjson", "Idempotency-Key": "b1"}).json()
    assert again["messages"] == [dict(m, duplicate=True) for m in a["messages"]] and again["duplicate"] is True
    frames = b"".join(struct.pack(">I", len(p)) + p for p in [b"three", b"", b"five"])
    r = post(sluiced, "batch", frames, {"Content-Type": "application/vnd.sluice.frames"})
    assert [m["offset"] for m in r.json()["messages"]] == [2, 3, 4], r.text
    assert payloads(sluiced, "batch") == [b"one", b"\x00\xfftwo", b"three", b"", b"five"]


def test_bad_input_gets_a_clear_4xx_and_stores_nothing(make_sluiced):
    d = make_sluiced("--streams-auto-create", "false", "--streams", "s")
    ok = post(d, "s", b"first")
    assert ok.status_code == 200, ok.text
    cases = [
        ("no token", dict(token="", body=b"x"), 401),
        ("a reader may not publish", dict(token=READER, body=b"x"), 403),
        ("producer id without seq", dict(headers={"Sluice-Producer-Id": "7"}), 400),
        ("seq without producer id", dict(headers={"Sluice-Seq": "7"}), 400),
        ("garbage seq", dict(headers={"Sluice-Producer-Id": "7", "Sluice-Seq": "seven"}), 400),
        ("negative producer id", dict(headers={"Sluice-Producer-Id": "-1", "Sluice-Seq": "1"}), 400),
        ("seq 0", dict(headers={"Sluice-Producer-Id": "7", "Sluice-Seq": "0"}), 400),
        ("key and producer", dict(headers={"Idempotency-Key": "k", "Sluice-Producer-Id": "7", "Sluice-Seq": "1"}), 400),
        ("key too long", dict(headers={"Idempotency-Key": "k" * 256}), 400),
        ("key with a space", dict(headers={"Idempotency-Key": "a b"}), 400),
        ("a form", dict(headers={"Content-Type": "application/x-www-form-urlencoded"}, body=b"a=b"), 415),
        ("multipart", dict(headers={"Content-Type": "multipart/form-data; boundary=x"}, body=b"--x--"), 415),
        ("ndjson not json", dict(headers={"Content-Type": "application/x-ndjson"}, body=b"{nope\n"), 400),
        ("ndjson bad base64", dict(headers={"Content-Type": "application/x-ndjson"}, body=b'{"base64":"!!"}\n'), 400),
        ("ndjson both fields", dict(headers={"Content-Type": "application/x-ndjson"}, body=b'{"data":"a","base64":"YQ=="}\n'), 400),
        ("ndjson unknown field", dict(headers={"Content-Type": "application/x-ndjson"}, body=b'{"text":"a"}\n'), 400),
        ("empty batch", dict(headers={"Content-Type": "application/x-ndjson"}, body=b"\n"), 400),
        ("frame cut short", dict(headers={"Content-Type": "application/vnd.sluice.frames"}, body=b"\x00\x00\x00\x09abc"), 400),
        ("huge body", dict(body=b"x" * (16 * 1024 * 1024 + 1)), 413),
    ]
    for name, kw, status in cases:
        token = kw.get("token", WRITER)
        h = dict(auth(token)) if token else {}
        h.update(kw.get("headers", {}))
        r = httpx.post(f"{d.base}/streams/s/messages", content=kw.get("body", b"x"), headers=h, timeout=30.0)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["error"], name
    # An unknown stream (auto_create off): 404, and no stream made.
    r = post(d, "nope", b"x")
    assert r.status_code == 404, r.text
    assert payloads(d, "s") == [b"first"]
    streams = [s["name"] for s in httpx.get(f"{d.base}/streams", headers=auth(ADMIN)).json()["streams"]]
    assert "nope" not in streams


def test_the_cli_publishes_over_http(sluiced, tmp_path):
    sluice = os.environ.get("SLUICE_BIN")
    assert sluice, "SLUICE_BIN is not set: run through cargo test (tests/tests/python_clients.rs)"
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"line {i}\n" for i in range(1000)))
    out = subprocess.run(
        [sluice, "publish", "--stream", "cli", "--transport", "http", "--admin", f"127.0.0.1:{sluiced.admin_port}",
         "--token", WRITER, "--batch", "64", "--file", str(lines)],
        capture_output=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert "published 1000 messages" in out.stderr.decode()
    assert payloads(sluiced, "cli") == [f"line {i}".encode() for i in range(1000)]
    # A reader may not: the daemon's 403 is said, with a failing status.
    out = subprocess.run(
        [sluice, "publish", "--stream", "cli", "--transport", "http", "--admin", f"127.0.0.1:{sluiced.admin_port}",
         "--token", READER, "--file", str(lines)],
        capture_output=True, timeout=60,
    )
    assert out.returncode != 0 and "403" in out.stderr.decode(), out.stderr.decode()


def test_a_full_disk_answers_503_and_a_keyed_retry_stores_once(tmp_path):
    from conftest import Sluiced

    # The free-space floor above any disk: the spool holds appends as on a
    # full disk.
    d = Sluiced(tmp_path, ["--spool-min-free-bytes", str(1 << 62)]).start()
    try:
        # The first request is held (no answer while the disk is full).
        try:
            r = post_timeout(d, b"held", {"Idempotency-Key": "k1"}, 2.0)
            assert r.status_code == 503, r.text
        except httpx.TimeoutException:
            pass
        # Now the daemon knows: later requests are turned away at once.
        deadline = time.monotonic() + 10
        while True:
            r = post_timeout(d, b"later", {"Idempotency-Key": "k2"}, 5.0)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "disk full" in r.json()["error"]
    finally:
        # A held batch holds a stop too (nothing is dropped): killed, as
        # an operator out of patience would.
        d.kill9()
    # Space returns: the held request was never stored; a retry with its
    # key stores it, and another retry stores nothing.
    d = Sluiced(tmp_path, []).start()
    try:
        for _ in range(2):
            assert post_timeout(d, b"held", {"Idempotency-Key": "k1"}, 20.0).status_code == 200
            assert post_timeout(d, b"later", {"Idempotency-Key": "k2"}, 20.0).status_code == 200
        assert sorted(payloads(d, "full")) == [b"held", b"later"]
    finally:
        d.stop()


def post_timeout(d, body, headers, timeout):
    h = dict(auth(WRITER))
    h.update(headers)
    return httpx.post(f"{d.base}/streams/full/messages", content=body, headers=h, timeout=timeout)


def test_many_large_requests_at_once_are_turned_away_before_their_bodies_are_read(sluiced):
    """40 clients send 8 MiB each at once (320 MiB): the daemon takes room
    for a body before reading it, so it holds about one at a time, turns
    the others away with 503 + Retry-After, and its memory stays bounded;
    a retry of each stores it once."""
    body = lambda i: bytes([i]) * (8 << 20)
    start_rss = sluiced.rss_kib()
    peak = [start_rss]
    answers = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], sluiced.rss_kib())
            time.sleep(0.005)

    def send(i):
        r = httpx.post(f"{sluiced.base}/streams/big/messages", content=body(i),
                       headers={**auth(WRITER), "Idempotency-Key": f"big-{i}"}, timeout=60.0)
        answers[i] = (r.status_code, r.headers.get("retry-after"), r.text)

    w = threading.Thread(target=watch)
    w.start()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    w.join()
    busy = [i for i, a in answers.items() if a[0] == 503]
    assert len(answers) == 40 and all(a[0] in (200, 503) for a in answers.values()), answers
    assert busy, "40 large requests at once, none turned away"
    assert all(answers[i][1] == "1" and "bytes of publish requests" in answers[i][2] for i in busy)
    grew_mib = (peak[0] - start_rss) / 1024
    assert grew_mib < 120, f"the daemon's memory grew {grew_mib:.0f} MiB with 320 MiB sent at once"
    # Each turned-away request, sent again with its key, is stored once.
    for i in busy:
        assert post(sluiced, "big", body(i), {"Idempotency-Key": f"big-{i}"}).status_code == 200
    recs = sluiced.records("big")
    assert sorted(base64.b64decode(r["payload"])[0] for r in recs) == list(range(40))
