"""The WebSocket push consumer (GET /streams/{s}/groups/{g}/ws) against a
real sluiced, with the `websockets` client: acks, nacks, the credit window,
redelivery after a disconnect, bad client messages, and a client that
stops reading (the daemon's memory stays bounded, other groups go on)."""

import base64
import json
import os
import socket
import struct
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import READER, auth
from push_helpers import Reader, group, publish, publish_count, wait_until


def ws_url(d, stream, grp, **query):
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"ws://127.0.0.1:{d.admin_port}/streams/{stream}/groups/{grp}/ws" + (f"?{q}" if q else "")


def open_ws(d, stream, grp, token=READER, **query):
    ws = connect(ws_url(d, stream, grp, **query), additional_headers=auth(token), open_timeout=10, max_size=4 << 20)
    hello = json.loads(ws.recv(timeout=10))
    assert "subscribed" in hello, hello
    return ws


def recv_json(ws, timeout=10):
    return json.loads(ws.recv(timeout=timeout))


def deliveries(ws, n, timeout=10):
    """`n` deliveries (frames with an offset; answers to syncs are skipped)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        m = recv_json(ws, max(deadline - time.monotonic(), 0.01))
        if "offset" in m:
            got.append(m)
    return got


def nothing_within(ws, seconds):
    try:
        m = ws.recv(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {m}")


def sync(ws, ident=1):
    ws.send(json.dumps({"sync": ident}))
    deadline = time.monotonic() + 10
    while True:
        m = recv_json(ws, max(deadline - time.monotonic(), 0.01))
        if m.get("synced") == ident:
            return
        assert "offset" in m, m


def test_a_consumer_that_acks_gets_every_message_once(sluiced):
    lines = [f"m{i}" for i in range(50)]
    publish(sluiced, "jobs", lines)
    ws = open_ws(sluiced, "jobs", "w", max_messages=10)
    seen = []
    while len(seen) < 50:
        m = deliveries(ws, 1)[0]
        seen.append(m)
        ws.send(json.dumps({"ack": [m["offset"]]}))
    sync(ws)
    nothing_within(ws, 0.5)
    ws.close()
    assert sorted(m["offset"] for m in seen) == list(range(50))
    assert all(m["delivery"] == 1 for m in seen)
    assert sorted(base64.b64decode(m["payload"]).decode() for m in seen) == sorted(lines)
    m = seen[0]
    assert m["producer"] == 1 and m["seq"] >= 1 and m["timestamp_us"] > 0 and m["deadline_ms"] > 0
    g = group(sluiced, "jobs", "w")
    assert (g["backlog_messages"], g["acked"], g["redelivered"]) == (0, 50, 0), g


def test_ranges_ack_at_once(sluiced):
    publish(sluiced, "jobs", [f"m{i}" for i in range(20)])
    ws = open_ws(sluiced, "jobs", "w", max_messages=20)
    got = deliveries(ws, 20)
    ws.send(json.dumps({"ack": [[0, 9], [10, 19]]}))
    sync(ws)
    ws.close()
    assert sorted(m["offset"] for m in got) == list(range(20))
    assert group(sluiced, "jobs", "w")["backlog_messages"] == 0


def test_a_nacked_message_comes_again_after_its_delay(sluiced):
    publish(sluiced, "jobs", ["a"])
    ws = open_ws(sluiced, "jobs", "w")
    (m,) = deliveries(ws, 1)
    assert (m["offset"], m["delivery"]) == (0, 1)
    nacked = time.monotonic()
    ws.send(json.dumps({"nack": [0], "delay_ms": 1000}))
    (again,) = deliveries(ws, 1, timeout=10)
    waited = time.monotonic() - nacked
    assert (again["offset"], again["delivery"]) == (0, 2)
    assert 0.8 <= waited < 8, waited
    ws.send(json.dumps({"ack": [0]}))
    sync(ws)
    ws.close()
    g = group(sluiced, "jobs", "w")
    assert (g["nacked"], g["acked"], g["backlog_messages"]) == (1, 1, 0), g


def test_the_credit_window_is_never_exceeded(sluiced):
    publish(sluiced, "jobs", [f"m{i}" for i in range(60)])
    ws = open_ws(sluiced, "jobs", "w", max_messages=5)
    first = deliveries(ws, 5)
    nothing_within(ws, 1.0)
    # Two acks free two places: exactly two more.
    ws.send(json.dumps({"ack": [first[0]["offset"], first[1]["offset"]]}))
    more = deliveries(ws, 2)
    nothing_within(ws, 1.0)
    # A larger window: up to 12 out; 5 are out now.
    ws.send(json.dumps({"credit": {"max_messages": 12, "max_bytes": 1 << 20}}))
    more += deliveries(ws, 7)
    nothing_within(ws, 1.0)
    out = {m["offset"] for m in first[2:] + more}
    assert len(out) == 12
    assert group(sluiced, "jobs", "w")["out"] == 12
    # A window of 2 bytes holds one message: nothing more until all but one are acked.
    ws.send(json.dumps({"credit": {"max_messages": 100, "max_bytes": 2}}))
    ws.send(json.dumps({"ack": sorted(out)[:11]}))
    nothing_within(ws, 1.0)
    ws.send(json.dumps({"ack": [sorted(out)[11]]}))
    one = deliveries(ws, 1)
    nothing_within(ws, 1.0)
    assert one[0]["offset"] not in out
    ws.close()


def test_what_a_consumer_held_comes_again_after_it_disconnects(sluiced):
    publish(sluiced, "jobs", ["a", "b", "c"])
    ws = open_ws(sluiced, "jobs", "w")
    held = deliveries(ws, 3)
    assert all(m["delivery"] == 1 for m in held)
    ws.close()
    ws = open_ws(sluiced, "jobs", "w")
    again = deliveries(ws, 3)
    ws.close()
    assert sorted(m["offset"] for m in again) == [0, 1, 2]
    assert all(m["delivery"] == 2 for m in again)


def test_binary_frames(sluiced):
    publish(sluiced, "jobs", ["hello"])
    ws = open_ws(sluiced, "jobs", "w", format="binary")
    f = ws.recv(timeout=10)
    assert isinstance(f, bytes)
    offset, delivery, deadline_ms, ts, producer, seq = struct.unpack_from("<QIIQQQ", f)
    assert (offset, delivery, producer, seq) == (0, 1, 1, 1)
    assert deadline_ms > 0 and ts > 0
    assert f[40:] == b"hello"
    ws.close()


@pytest.mark.parametrize(
    "bad,code",
    [
        ("not json", 1007),
        ('{"frobnicate": 1}', 1008),
        ('{"ack": "all"}', 1008),
        ('{"ack": [1], "nack": [2]}', 1008),
        ('{"credit": {"max_messages": 1}}', 1008),
        ('{"nack": [[0, 1000000000]]}', 1008),
        (b"\x00\x01", 1003),
    ],
)
def test_a_bad_client_message_closes_with_a_code_and_a_reason(sluiced, bad, code):
    publish(sluiced, "jobs", ["a"])
    ws = open_ws(sluiced, "jobs", "w", max_messages=1)
    deliveries(ws, 1)
    ws.send(bad)
    with pytest.raises(ConnectionClosed) as e:
        while True:
            ws.recv(timeout=10)
    assert e.value.rcvd is not None, "no close frame"
    assert e.value.rcvd.code == code, e.value.rcvd
    assert e.value.rcvd.reason
    # The daemon goes on: what the closed one held comes again.
    ws = open_ws(sluiced, "jobs", "w")
    assert deliveries(ws, 1)[0]["delivery"] == 2
    ws.close()


def test_tokens_streams_and_parameters_are_checked_before_the_upgrade(sluiced):
    publish(sluiced, "jobs", ["a"])
    for token, stream, query, status in [
        ("wrong-token", "jobs", {}, 401),
        (READER, "nosuch", {}, 404),
        (READER, "jobs", {"max_messages": "0"}, 400),
        (READER, "jobs", {"start": "sometime"}, 400),
        (READER, "jobs", {"format": "xml"}, 400),
        (READER, "jobs", {"colour": "red"}, 400),
        (READER, "jobs", {"conflate": "latest_per_key"}, 409),
    ]:
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url(sluiced, stream, "w", **query), additional_headers=auth(token), open_timeout=10)
        assert e.value.response.status_code == status, (token, stream, query)


def _stuck_ws(d, stream, grp):
    """A WebSocket client that never reads: a raw socket with a small
    receive buffer, upgraded and then left alone."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", d.admin_port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /streams/{stream}/groups/{grp}/ws?max_messages=100000&max_bytes=4000000000 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {READER}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_a_client_that_stops_reading_holds_no_memory_and_nobody_back(sluiced):
    size, count = 64 << 10, 5000  # about 310 MiB
    publish(sluiced, "big", ["first"])
    stuck = _stuck_ws(sluiced, "big", "stuck")
    live = open_ws(sluiced, "big", "live", max_messages=200)

    def consume(put):
        while True:
            m = recv_json(live, 60)
            if "offset" in m:
                live.send(json.dumps({"ack": [m["offset"]]}))
                put(m["offset"])

    reader = Reader(consume)
    reader.take(1)
    wait_until("the stuck group holds its window", lambda: (group(sluiced, "big", "stuck") or {}).get("out") == 1)
    before = sluiced.rss_kib()
    peak = before
    sampling = threading.Event()

    def sample():
        nonlocal peak
        while not sampling.is_set():
            peak = max(peak, sluiced.rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    publish_count(sluiced, "big", count, size, producer=2, timeout=300)
    got = reader.take(count, within=120)
    sampling.set()
    sampler.join()
    assert sorted(got) == list(range(1, count + 1)), "the live group got every message"
    g = group(sluiced, "big", "stuck")
    # The stuck member holds what its window (clamped by the daemon's
    # per-member limit, 16 MiB by default) let out, and no more.
    assert g["out"] <= (16 << 20) // size + 1, g
    assert g["backlog_messages"] == count + 1, g
    grew_mib = (peak - before) / 1024
    print(f"RSS before {before} KiB, peak {peak} KiB; stuck group {g}")
    published_mib = count * size / (1 << 20)
    assert grew_mib < 120, f"RSS grew {grew_mib:.0f} MiB while {published_mib:.0f} MiB were published"
    stuck.close()
    live.close()


def _metric(d, name):
    for line in httpx.get(d.base + "/metrics", timeout=10.0).text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no {name} in /metrics")


def _try_metric(d, name):
    try:
        return _metric(d, name) is not None
    except httpx.TransportError:
        return False


def _admin_connections(d):
    return _metric(d, "sluice_admin_connections")


def test_websockets_count_against_the_connection_limits_while_open(make_sluiced):
    d = make_sluiced("--admin-max-connections-per-source", "4")
    publish(d, "jobs", ["a"])
    socks = [open_ws(d, "jobs", f"g{i}") for i in range(4)]
    for ws in socks:
        assert deliveries(ws, 1)[0]["offset"] == 0
    # A fifth from the same address: over the limit, and none of the four
    # is idle to make room, so the new one is closed at once (were the
    # upgraded sockets no longer counted, it would be let in).
    with pytest.raises((OSError, ConnectionClosed, InvalidStatus, Exception)) as e:
        connect(ws_url(d, "jobs", "g4"), additional_headers=auth(READER), open_timeout=5)
    assert not isinstance(e.value, AssertionError)
    # The four go on; once one is closed, there is room (for /metrics).
    for i, ws in enumerate(socks):
        sync(ws, i)
    socks[0].close()
    wait_until("a place is free", lambda: _try_metric(d, 'sluice_admin_connections_refused_total{reason="source"}'))
    assert _metric(d, 'sluice_admin_connections_refused_total{reason="source"}') >= 1
    for ws in socks[1:]:
        ws.close()
    wait_until("the WebSockets are forgotten", lambda: _admin_connections(d) <= 1)


def test_a_stopping_daemon_closes_with_going_away(sluiced):
    publish(sluiced, "jobs", ["a"])
    ws = open_ws(sluiced, "jobs", "w")
    deliveries(ws, 1)
    events = httpx.Client(base_url=sluiced.base, headers=auth(READER), timeout=20.0)
    with events.stream("GET", "/streams/jobs/groups/e/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        began = time.monotonic()
        sluiced.stop()
        assert time.monotonic() - began < 10, "the push connections held the stop up"
        # The event stream ended; the WebSocket got a close frame.
        list(r.iter_bytes())
    with pytest.raises(ConnectionClosed) as e:
        while True:
            ws.recv(timeout=10)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1001, e.value
    events.close()


def test_an_extension_moves_the_deadline(make_sluiced):
    d = make_sluiced("--consumers-ack-deadline", "1s")
    publish(d, "jobs", ["a"])
    ws = open_ws(d, "jobs", "w")
    (m,) = deliveries(ws, 1)
    assert m["deadline_ms"] <= 1000
    ws.send(json.dumps({"extend": [0], "ms": 3000}))
    # Past the 1 s deadline, within the extension: not delivered again.
    nothing_within(ws, 2.0)
    (again,) = deliveries(ws, 1, timeout=5)
    assert (again["offset"], again["delivery"]) == (0, 2)
    ws.close()
    assert group(d, "jobs", "w")["expired"] == 1


def test_unacked_deliveries_never_pass_max_messages(sluiced):
    import random

    rng = random.Random(19)
    n, window = 200, 7
    publish(sluiced, "jobs", [f"m{i}" for i in range(n)])
    ws = open_ws(sluiced, "jobs", "w", max_messages=window)
    unacked, seen, most = set(), set(), 0
    while len(seen) < n or unacked:
        if unacked and (len(unacked) == window or len(seen) == n or rng.random() < 0.3):
            # Ack a random part of what is held (at least one).
            part = rng.sample(sorted(unacked), rng.randint(1, len(unacked)))
            unacked.difference_update(part)
            ws.send(json.dumps({"ack": part}))
            continue
        (m,) = deliveries(ws, 1)
        assert m["offset"] not in unacked, m
        unacked.add(m["offset"])
        seen.add(m["offset"])
        most = max(most, len(unacked))
        assert len(unacked) <= window, f"{len(unacked)} unacked deliveries with a window of {window}"
    sync(ws)
    ws.close()
    assert seen == set(range(n)) and most == window
    assert group(sluiced, "jobs", "w")["backlog_messages"] == 0
