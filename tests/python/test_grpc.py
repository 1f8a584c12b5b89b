"""The gRPC plane from Python, with stubs generated from the .proto by
grpcio-tools: exactly once across publisher retries and a kill -9 of
sluiced (idempotency keys), and the status codes a client meets."""

import base64
import threading
import time

import grpc
import httpx

from conftest import READER, WRITER
from grpc_stubs import pb, rpc


def channel(d):
    return grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}")


def token(t):
    return (("authorization", f"Bearer {t}"),)


def publish(stub, stream, payloads, key=None, t=WRITER, timeout=20):
    req = pb.PublishRequest(stream=stream, payloads=payloads)
    if key is not None:
        req.idempotency_key = key
    return stub.Publish(req, metadata=token(t), timeout=timeout)


def test_a_key_sent_three_times_is_stored_once_and_codes_are_clear(sluiced):
    with channel(sluiced) as ch:
        stub = rpc.PublisherStub(ch)
        answers = [publish(stub, "orders", [b"a", b"b"], key="req-1") for _ in range(3)]
        assert [a.replayed for a in answers] == [False, True, True]
        assert all([m.offset for m in a.messages] == [0, 1] for a in answers)
        try:
            publish(stub, "orders", [b"other"], key="req-1")
            raise AssertionError("a key reused with other payloads was taken")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e
        for t, code in [(READER, grpc.StatusCode.PERMISSION_DENIED), ("nobody", grpc.StatusCode.UNAUTHENTICATED)]:
            try:
                publish(stub, "orders", [b"x"], t=t)
                raise AssertionError(f"{t} could publish")
            except grpc.RpcError as e:
                assert e.code() == code, e
        try:
            publish(stub, "orders", [])
            raise AssertionError("an empty request was taken")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert len(sluiced.records("orders")) == 2


def test_exactly_once_across_retries_and_kill_9(sluiced):
    """8 threads publish with keys and retry (same key) until answered;
    the daemon is killed (kill -9) and started again twice meanwhile. Each
    request is stored once, where its answer says."""
    answered = {}
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w):
        n = 0
        while not stop.is_set() and n < 400:
            key = f"w{w}-{n}"
            body = key.encode()
            deadline = time.monotonic() + 60
            while True:
                try:
                    with channel(sluiced) as ch:
                        a = publish(rpc.PublisherStub(ch), "crash", [body], key=key, timeout=5)
                    with lock:
                        answered[key] = a.messages[0].offset
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, f"{key}: no answer for 60 s"
                    time.sleep(0.05)  # the daemon is down or restarting: same key again
            n += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for _ in range(2):
        time.sleep(0.5)
        sluiced.kill9()
        time.sleep(0.2)
        sluiced.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(120)
    by_key = {}
    for r in sluiced.records("crash"):
        by_key.setdefault(base64.b64decode(r["payload"]).decode(), []).append(r["offset"])
    dups = {k: v for k, v in by_key.items() if len(v) > 1}
    assert not dups, f"stored more than once: {list(dups.items())[:5]}"
    for key, offset in answered.items():
        assert by_key.get(key) == [offset], (key, offset, by_key.get(key))
    assert len(answered) > 100, f"only {len(answered)} requests answered"


def test_the_python_example_publishes(sluiced):
    """examples/python/publish.py, as the README shows it, against a real
    daemon (its stubs: the ones generated for these tests)."""
    import os
    import subprocess
    import sys

    import grpc_stubs

    out = subprocess.run(
        [sys.executable, str(grpc_stubs.ROOT / "examples/python/publish.py"), "example", "hello"],
        env={**os.environ, "PYTHONPATH": str(grpc_stubs._out), "SLUICE_GRPC": f"127.0.0.1:{sluiced.grpc_port}",
             "SLUICE_TOKEN": WRITER},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("stored at offset 0 "), out.stdout
    assert [base64.b64decode(r["payload"]) for r in sluiced.records("example")] == [b"hello"]


class Pull:
    """A StreamingPull from Python: requests fed from a queue, responses
    read from the call's iterator."""

    def __init__(self, ch, stream, group, max_messages, t=WRITER):
        import queue

        self.q = queue.Queue()
        self.q.put(pb.StreamingPullRequest(stream=stream, group=group, max_outstanding_messages=max_messages,
                                           max_outstanding_bytes=1 << 20, consumer_name="python"))
        self.call = rpc.SubscriberStub(ch).StreamingPull(iter(self.q.get, None), metadata=token(t))
        first = next(self.call)
        assert first.HasField("subscribed"), first
        self.subscribed = first.subscribed

    def messages(self):
        for r in self.call:
            yield from r.messages

    def send(self, **fields):
        self.q.put(pb.StreamingPullRequest(**fields))

    def close(self):
        self.call.cancel()
        self.q.put(None)


def test_a_python_streaming_pull_acks_gets_redeliveries_and_its_window_holds(make_sluiced):
    d = make_sluiced("--consumers-ack-deadline", "1s")
    with channel(d) as ch:
        publish(rpc.PublisherStub(ch), "pull", [f"m{i}".encode() for i in range(20)])
        p = Pull(ch, "pull", "py", max_messages=5)
        assert p.subscribed.max_outstanding_messages == 5
        out, seen, most = set(), [], 0
        it = p.messages()
        while len(seen) < 20:
            m = next(it)
            assert m.delivery_attempt == 1, m
            out.add(m.offset)
            seen.append(m.offset)
            most = max(most, len(out))
            assert len(out) <= 5, f"{len(out)} unacked out, the window is 5"
            if len(out) == 5:
                time.sleep(0.05)  # a slow consumer: the daemon must wait for it
                p.send(ack_offsets=sorted(out))
                out.clear()
        p.send(ack_offsets=sorted(out))
        assert sorted(seen) == list(range(20)) and most == 5
        # One more, not acked: after the 1 s deadline it comes again.
        publish(rpc.PublisherStub(ch), "pull", [b"late"])
        m = next(it)
        assert (m.offset, m.delivery_attempt, m.payload) == (20, 1, b"late")
        again = next(it)
        assert (again.offset, again.delivery_attempt) == (20, 2), again
        p.send(ack_offsets=[20])
        # Every ack reached the group (acks are not confirmed on the stream
        # yet: the group's figures tell), then the pull ends.
        group = lambda: next(g for g in httpx.get(f"{d.base}/groups").json()["groups"] if g["group"] == "py")
        deadline = time.monotonic() + 10
        while group()["floor"] != 21 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group()["floor"] == 21 and group()["acked"] == 21, group()
        p.close()


class Producer:
    """A PublishStream from Python, driven by hand: requests fed from a
    queue, answers read from the call's iterator."""

    def __init__(self, ch, stream, producer_id, t=WRITER):
        import queue

        self.q = queue.Queue()
        self.q.put(pb.PublishStreamRequest(open=pb.PublishStreamOpen(stream=stream, producer_id=producer_id)))
        self.call = rpc.PublisherStub(ch).PublishStream(iter(self.q.get, None), metadata=token(t), timeout=60)
        first = next(self.call)
        assert first.HasField("opened"), first
        self.opened = first.opened

    def send(self, seq, payloads):
        self.q.put(pb.PublishStreamRequest(batch=pb.PublishBatch(seq=seq, payloads=payloads)))

    def status(self):
        answer = next(self.call)
        assert answer.HasField("status"), answer
        return answer.status

    def close(self):
        """Half-closes: the call must end OK."""
        self.q.put(None)
        rest = list(self.call)
        assert all(a.HasField("status") for a in rest), rest
        assert self.call.code() == grpc.StatusCode.OK, self.call.code()


def stream_payloads(producer_id, seqs):
    return [f"{producer_id}:{s}".encode() for s in seqs]


def test_a_python_publish_stream_gets_durable_acks_in_order_within_credit(sluiced):
    """500 messages in pipelined batches of 50, never past the credit: the
    acks go forward to the last seq, and the messages are stored once each,
    in seq order."""
    with channel(sluiced) as ch:
        p = Producer(ch, "pstream", 11)
        assert p.opened.producer_id == 11 and p.opened.durable_seq == 0, p.opened
        assert p.opened.credit_messages > 0 and p.opened.credit_bytes > 0, p.opened
        durable, credit, sent, statuses = 0, p.opened.credit_messages, 0, []
        while durable < 500:
            while sent < 500 and sent + 50 <= durable + credit:
                p.send(sent + 1, stream_payloads(11, range(sent + 1, sent + 51)))
                sent += 50
            s = p.status()
            assert s.durable_seq >= durable and s.durable_seq <= sent, (s, durable, sent)
            durable, credit = s.durable_seq, s.credit_messages
            statuses.append(s)
        p.close()
    assert statuses[-1].durable_seq == 500 and statuses[-1].credit_messages > 0, statuses[-1]
    records = sluiced.records("pstream")
    assert [base64.b64decode(r["payload"]) for r in records] == stream_payloads(11, range(1, 501))
    assert [(r["producer"], r["seq"]) for r in records] == [(11, s) for s in range(1, 501)], records[:3]


def test_a_seq_resent_after_a_reconnect_is_stored_once(sluiced):
    """Seqs 1..20 acked, the call broken (cancelled, no half-close); the
    reopened stream says 20 are durable, and a resend of 11..20 with the
    new 21..30 stores only the new ones. A gap past what was sent ends the
    stream with INVALID_ARGUMENT."""
    with channel(sluiced) as ch:
        p = Producer(ch, "resend", 12)
        p.send(1, stream_payloads(12, range(1, 21)))
        while p.status().durable_seq < 20:
            pass
        p.call.cancel()
        p.q.put(None)
    with channel(sluiced) as ch:
        p = Producer(ch, "resend", 12)
        assert p.opened.durable_seq == 20, p.opened
        p.send(11, stream_payloads(12, range(11, 31)))
        while (s := p.status()).durable_seq < 30:
            pass
        assert s.durable_seq == 30, s
        p.send(40, [b"gap"])
        try:
            while True:
                p.status()
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        finally:
            p.q.put(None)
    records = sluiced.records("resend")
    assert [base64.b64decode(r["payload"]) for r in records] == stream_payloads(12, range(1, 31))


def test_the_python_publish_stream_example_is_exactly_once_when_run_again(sluiced):
    """examples/python/publish_stream.py as the README shows it: the same
    input by the same producer id, sent twice, is stored once (the second
    run learns from `opened` that all of it is durable)."""
    import os
    import subprocess
    import sys

    import grpc_stubs

    lines = "".join(f"line {i}\n" for i in range(1, 251))

    def run():
        out = subprocess.run(
            [sys.executable, str(grpc_stubs.ROOT / "examples/python/publish_stream.py"), "lines", "42"],
            input=lines, env={**os.environ, "PYTHONPATH": str(grpc_stubs._out),
                              "SLUICE_GRPC": f"127.0.0.1:{sluiced.grpc_port}", "SLUICE_TOKEN": WRITER},
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run() == "250 messages; the daemon held seqs up to 0, now durable up to seq 250"
    assert run() == "250 messages; the daemon held seqs up to 250, now durable up to seq 250"
    records = sluiced.records("lines")
    assert [base64.b64decode(r["payload"]) for r in records] == [f"line {i}".encode() for i in range(1, 251)]


def test_the_python_publish_stream_example_goes_on_after_a_kill_9(sluiced):
    """The example streaming 100,000 lines; sluiced is killed (kill -9) once
    some are durable and started again: the example reopens, learns the
    durable seq from `opened`, resends from there, and every line is stored
    exactly once, in order."""
    import os
    import subprocess
    import sys

    import grpc_stubs

    n = 100_000
    proc = subprocess.Popen(
        [sys.executable, str(grpc_stubs.ROOT / "examples/python/publish_stream.py"), "crashy", "43"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(grpc_stubs._out), "SLUICE_GRPC": f"127.0.0.1:{sluiced.grpc_port}",
             "SLUICE_TOKEN": WRITER},
    )
    try:
        proc.stdin.write("".join(f"line {i}\n" for i in range(1, n + 1)))
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while True:
            r = httpx.get(f"{sluiced.base}/streams/crashy/records", params={"limit": 1},
                          headers={"authorization": f"Bearer {WRITER}"})
            if r.status_code == 200 and r.json()["durable_end"] > 1000:
                break
            assert time.monotonic() < deadline, "the example stored nothing within 30 s"
            time.sleep(0.01)
        assert proc.poll() is None, "the example finished before the kill: nothing was tested"
        sluiced.kill9()
        time.sleep(0.3)
        sluiced.start()
        proc.wait(120)  # its output is one line: the pipes do not fill
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0, err + "\nsluiced.log:\n" + sluiced.log.read_text()[-3000:]
    assert out.strip() == f"{n} messages; the daemon held seqs up to 0, now durable up to seq {n}", out
    records = sluiced.records("crashy")
    assert len(records) == n, f"{len(records)} records for {n} lines"
    assert [base64.b64decode(r["payload"]) for r in records] == [f"line {i}".encode() for i in range(1, n + 1)]
