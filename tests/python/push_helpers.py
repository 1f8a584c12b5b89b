"""What the push tests (test_ws.py, test_sse.py) share: putting messages
into a stream with the sluice CLI (over QUIC: there is no HTTP publish
yet), reading a group's figures, and a reader thread that turns a blocking
stream of deliveries into a queue a test can wait on with a timeout."""

import os
import queue
import subprocess
import threading
import time

import httpx

from conftest import ADMIN, WRITER, auth


def sluice_bin():
    b = os.environ.get("SLUICE_BIN")
    if not b:
        raise RuntimeError("SLUICE_BIN is not set: run these tests through cargo test (tests/tests/python_clients.rs)")
    return b


def _publish_args(d, stream, producer):
    return [
        sluice_bin(),
        "publish",
        "-s",
        stream,
        "--transport",
        "quic",
        "--to",
        f"127.0.0.1:{d.quic_port}",
        "--server-cert",
        str(d.spool / "tls" / "server.crt"),
        "--producer",
        str(producer),
        "--token",
        WRITER,
    ]


def publish(d, stream, lines, producer=1):
    """Publishes `lines` (str) to `stream` and waits until they are durable."""
    out = subprocess.run(
        _publish_args(d, stream, producer),
        input="".join(f"{line}\n" for line in lines).encode(),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, f"sluice publish failed: {out.stderr.decode()}"


def publish_count(d, stream, count, size, producer=1, timeout=120):
    """Publishes `count` generated messages of `size` bytes."""
    out = subprocess.run(
        _publish_args(d, stream, producer) + ["--count", str(count), "--size", str(size)],
        capture_output=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"sluice publish failed: {out.stderr.decode()}"


def group(d, stream, name):
    """The group's figures from GET /groups (None if it does not run)."""
    r = httpx.get(d.base + "/groups", timeout=10.0)
    r.raise_for_status()
    for g in r.json()["groups"]:
        if g["stream"] == stream and g["group"] == name:
            return g
    return None


def ack(d, stream, name, offsets, token=WRITER):
    r = httpx.post(
        f"{d.base}/streams/{stream}/groups/{name}/ack",
        json={"offsets": list(offsets)},
        headers=auth(token),
        timeout=20.0,
    )
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(what, check, within=10.0):
    deadline = time.monotonic() + within
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)


class Reader:
    """Runs `produce(put)` in a thread; what it puts can be taken with a
    timeout. The thread ends when `produce` returns or raises (kept in
    `error`)."""

    def __init__(self, produce):
        self.q = queue.Queue()
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self.thread.start()

    def _run(self, produce):
        try:
            produce(self.q.put)
        except Exception as e:  # noqa: BLE001 - kept for the test to see
            self.error = e

    def take(self, n, within=10.0):
        """Exactly `n` items, within `within` seconds in all."""
        deadline = time.monotonic() + within
        got = []
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.q.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError(f"got {len(got)} of {n} within {within} s (reader error: {self.error!r})")
        return got

    def none_within(self, seconds):
        """Asserts nothing more comes within `seconds`."""
        try:
            extra = self.q.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"something more came: {extra!r}")


__all__ = ["ADMIN", "Reader", "ack", "group", "publish", "publish_count", "wait_until"]
