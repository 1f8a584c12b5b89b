"""The gRPC plane from Python, with stubs generated from the .proto by
grpcio-tools: exactly once across publisher retries and a kill -9 of
sluiced (idempotency keys), and the status codes a client meets."""

import base64
import threading
import time

import grpc

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
