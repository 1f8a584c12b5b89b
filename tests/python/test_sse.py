"""The server-sent-events consumer (GET /streams/{s}/groups/{g}/events)
against a real sluiced, with httpx and httpx-sse: deliveries as events
acked over POST .../ack, resuming with Last-Event-ID (nothing lost),
max_outstanding, conflation for a client that fell behind, and heartbeats
that keep a quiet stream open past the admin port's idle timeout."""

import base64
import json
import socket

import httpx
from httpx_sse import connect_sse

from conftest import READER, Sluiced, auth
from push_helpers import Reader, ack, group, publish, publish_count, wait_until


class Events:
    """An event stream read by a thread: `take(n)` waits for n events."""

    def __init__(self, d, stream, grp, token=READER, headers=None, **params):
        self.client = httpx.Client(base_url=d.base, timeout=httpx.Timeout(20.0, read=60.0))
        self.status = None
        self.sock = None
        self.beats = 0
        h = dict(auth(token))
        h.update(headers or {})
        url = f"/streams/{stream}/groups/{grp}/events"

        def produce(put):
            with connect_sse(self.client, "GET", url, params=params, headers=h) as es:
                self.status = es.response.status_code
                self.sock = es.response.extensions["network_stream"].get_extra_info("socket")
                if self.status != 200:
                    es.response.read()
                    put(("error", self.status, es.response.text))
                    return
                for e in es.iter_sse():
                    if not e.data:
                        # httpx-sse hands a heartbeat comment (": heartbeat",
                        # then a blank line) over as an event without data
                        # once an id has been seen.
                        self.beats += 1
                        continue
                    put(("event", e.id, json.loads(e.data)))

        self.reader = Reader(produce)

    def take(self, n, within=10.0):
        got = self.reader.take(n, within)
        for g in got:
            assert g[0] == "event", g
            _, ident, m = g
            assert ident == str(m["offset"]), g
        return [m for _, _, m in got]

    def none_within(self, seconds):
        self.reader.none_within(seconds)

    def close(self):
        """Hangs up: the socket is shut down under the reading thread (an
        httpx client closed from another thread leaves it open)."""
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
        self.reader.thread.join(10)
        self.client.close()


def refused(d, stream, grp, token=READER, **params):
    r = httpx.get(f"{d.base}/streams/{stream}/groups/{grp}/events", params=params, headers=auth(token), timeout=10.0)
    return r.status_code, r.text


def test_deliveries_come_as_events_and_are_acked_over_http(sluiced):
    lines = [f"m{i}" for i in range(20)]
    publish(sluiced, "jobs", lines)
    ev = Events(sluiced, "jobs", "w")
    got = ev.take(20)
    assert sorted(m["offset"] for m in got) == list(range(20))
    assert sorted(base64.b64decode(m["payload"]).decode() for m in got) == sorted(lines)
    assert all(m["delivery"] == 1 and m["producer"] == 1 and m["deadline_ms"] > 0 for m in got)
    assert ack(sluiced, "jobs", "w", range(20)) == {"acked": 20}
    g = group(sluiced, "jobs", "w")
    assert (g["backlog_messages"], g["out"], g["members"]) == (0, 0, 1), g
    ev.none_within(0.5)
    ev.close()
    wait_until("the member left", lambda: group(sluiced, "jobs", "w")["members"] == 0)
    assert group(sluiced, "jobs", "w")["redelivered"] == 0


def test_a_resumed_stream_loses_nothing(sluiced):
    publish(sluiced, "jobs", [f"m{i}" for i in range(10)])
    ev = Events(sluiced, "jobs", "w")
    first = ev.take(10)
    assert sorted(m["offset"] for m in first) == list(range(10))
    ack(sluiced, "jobs", "w", range(5))
    ev.close()
    wait_until("the member left", lambda: group(sluiced, "jobs", "w")["members"] == 0)
    # As a browser's EventSource reconnects: with the last id it saw. The
    # daemon acks nothing for it: what was not acked comes again.
    ev = Events(sluiced, "jobs", "w", headers={"Last-Event-ID": "9"})
    again = ev.take(5)
    ev.none_within(1.0)
    assert sorted(m["offset"] for m in again) == [5, 6, 7, 8, 9]
    assert all(m["delivery"] == 2 for m in again)
    ack(sluiced, "jobs", "w", range(5, 10))
    assert group(sluiced, "jobs", "w")["backlog_messages"] == 0
    ev.close()


def test_max_outstanding_holds_events_until_acks_come(sluiced):
    publish(sluiced, "jobs", [f"m{i}" for i in range(30)])
    ev = Events(sluiced, "jobs", "w", max_outstanding=5)
    first = ev.take(5)
    ev.none_within(1.0)
    assert group(sluiced, "jobs", "w")["out"] == 5
    ack(sluiced, "jobs", "w", [first[0]["offset"], first[1]["offset"]])
    more = ev.take(2)
    ev.none_within(1.0)
    assert group(sluiced, "jobs", "w")["out"] == 5
    seen = [m["offset"] for m in first + more]
    assert len(set(seen)) == 7
    # Acking everything seen lets the rest through, five at a time.
    ack(sluiced, "jobs", "w", seen)
    total = 7
    while total < 30:
        batch = ev.take(min(5, 30 - total))
        total += len(batch)
        ack(sluiced, "jobs", "w", [m["offset"] for m in batch])
    assert group(sluiced, "jobs", "w")["backlog_messages"] == 0
    ev.close()


def test_a_client_that_fell_behind_gets_the_latest_per_key(tmp_path):
    d = Sluiced(tmp_path / "c")
    with open(d.config, "a") as f:
        f.write(
            '[[consumers.groups]]\nstream = "prices"\ngroup = "latest"\n'
            'conflate = "latest_per_key"\nconflate_key = "delimiter:="\n'
        )
    d.start()
    try:
        publish(d, "prices", [f"k{i % 3}={i}" for i in range(30)])
        assert refused(d, "prices", "latest", conflate="none")[0] == 409
        assert refused(d, "prices", "other", conflate="latest_per_key")[0] == 409
        assert refused(d, "prices", "latest", conflate="sometimes")[0] == 400
        ev = Events(d, "prices", "latest", conflate="latest_per_key")
        got = ev.take(3)
        ev.none_within(1.0)
        assert sorted(base64.b64decode(m["payload"]).decode() for m in got) == ["k0=27", "k1=28", "k2=29"]
        assert group(d, "prices", "latest")["conflated"] == 27
        ack(d, "prices", "latest", [m["offset"] for m in got])
        assert group(d, "prices", "latest")["backlog_messages"] == 0
        # One that keeps up gets every message.
        publish(d, "prices", ["k0=30"], producer=2)
        assert [base64.b64decode(m["payload"]).decode() for m in ev.take(1)] == ["k0=30"]
        ev.close()
    finally:
        d.stop()


def test_heartbeats_keep_a_quiet_stream_open(make_sluiced):
    d = make_sluiced("--admin-idle-timeout", "2s")
    publish(d, "jobs", ["a"])
    ev = Events(d, "jobs", "w")
    assert ev.take(1)[0]["offset"] == 0
    # Quiet for twice the idle timeout: comments (every second) keep it.
    ev.none_within(4.0)
    assert ev.beats >= 2, ev.beats
    publish(d, "jobs", ["b"])
    assert ev.take(1)[0]["offset"] == 1
    ev.close()


def test_tokens_streams_and_parameters_are_checked(sluiced):
    publish(sluiced, "jobs", ["a"])
    assert refused(sluiced, "jobs", "w", token="wrong")[0] == 401
    assert refused(sluiced, "nosuch", "w")[0] == 404
    for params in [{"max_outstanding": "0"}, {"max_outstanding": "x"}, {"start": "never"}, {"colour": "red"}]:
        status, text = refused(sluiced, "jobs", "w", **params)
        assert status == 400 and "error" in json.loads(text), (params, text)


def test_a_client_that_stops_reading_is_disconnected_and_its_events_go_back(make_sluiced):
    d = make_sluiced("--admin-idle-timeout", "2s")
    publish(d, "big", ["first"])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", d.admin_port))
    s.sendall(
        (
            "GET /streams/big/groups/stuck/events?max_outstanding=10000&max_bytes=16777216 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {READER}\r\n\r\n"
        ).encode()
    )
    # More than the window, the socket's buffers and hyper's together:
    # the daemon's writes stall, and the stream is closed 2 s later.
    publish_count(d, "big", 512, 64 << 10, producer=2)
    wait_until("the member is out", lambda: group(d, "big", "stuck")["members"] == 0, within=30)
    g = group(d, "big", "stuck")
    assert g["out"] == 0 and g["delivered"] > 0, g
    s.close()
    closed = [line for line in httpx.get(d.base + "/metrics", timeout=10).text.splitlines()
              if line.startswith('sluice_admin_connections_closed_total{reason="write_timeout"}')]
    assert closed and float(closed[0].split()[1]) >= 1, closed
