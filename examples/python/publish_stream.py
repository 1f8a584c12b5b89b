"""Publish to sluiced over gRPC's PublishStream from Python: one producer on
a long-lived stream, acked once durable, within the daemon's credit, exactly
once across reconnects and restarts.

Generate the stubs as for publish.py (see there), then:

    SLUICE_TOKEN=... python examples/python/publish_stream.py orders 42 < lines.txt

Each line of stdin is one message and its line number (from 1) its seq, for
producer id 42. The daemon's first answer (`opened`) says the highest seq it
already holds durably for that producer; the client sends from the next one.
So after a broken connection, UNAVAILABLE or RESOURCE_EXHAUSTED it reopens
and goes on, and the same input sent again stores nothing twice.
"""

import os
import queue
import sys
import time

import grpc

from sluice.v1 import sluice_pb2 as pb
from sluice.v1 import sluice_pb2_grpc as rpc

RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class Session:
    """One open PublishStream: requests go through a queue, answers come
    from the call; `durable` and the credit are the latest answer's."""

    def __init__(self, stub, stream, producer_id, metadata, timeout=None):
        self.requests = queue.Queue()
        self.requests.put(pb.PublishStreamRequest(open=pb.PublishStreamOpen(stream=stream, producer_id=producer_id)))
        self.call = stub.PublishStream(iter(self.requests.get, None), metadata=metadata, timeout=timeout)
        self.update(next(self.call).opened)

    def update(self, answer):
        self.durable = answer.durable_seq
        self.credit_messages, self.credit_bytes = answer.credit_messages, answer.credit_bytes

    def send(self, seq, payloads):
        self.requests.put(pb.PublishStreamRequest(batch=pb.PublishBatch(seq=seq, payloads=payloads)))

    def wait(self):
        """Blocks for the next status (the daemon answers when the durable
        seq or the credit changes)."""
        answer = next(self.call, None)
        if answer is None:
            raise RuntimeError("the daemon ended the stream before acking everything")
        self.update(answer.status)

    def close(self):
        """Half-closes; the call ends OK once everything sent is durable."""
        self.requests.put(None)
        for _ in self.call:
            pass


def publish_stream(address, stream, producer_id, payloads, metadata=(), batch=100, attempts=10, timeout=None):
    """Stores payloads[i] under seq i + 1, each once. Returns the durable seq
    the daemon first said it held, and the last one (len(payloads) or more)."""
    # ends[k]: the payload bytes of seqs 1..k, to keep within the byte credit.
    ends = [0]
    for p in payloads:
        ends.append(ends[-1] + len(p))
    held = None
    for attempt in range(attempts):
        s = None
        # A new channel each attempt, with a connection of its own: gRPC's
        # connection to an address, shared by default, keeps failing for
        # seconds after a refused connect, even once sluiced is back.
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            s = Session(rpc.PublisherStub(channel), stream, producer_id, metadata, timeout)
            held = s.durable if held is None else held
            sent = s.durable  # what is durable is never sent again
            while s.durable < len(payloads):
                # Pipelined: send as far as the credit goes, then wait.
                while sent < len(payloads):
                    n = 0
                    while (n < batch and sent + n < len(payloads) and sent + n < s.durable + s.credit_messages
                           # one message past the durable seq always goes
                           and (ends[sent + n + 1] - ends[s.durable] <= s.credit_bytes or sent + n == s.durable)):
                        n += 1
                    if n == 0:
                        break
                    s.send(sent + 1, payloads[sent:sent + n])
                    sent += n
                s.wait()
            s.close()
            return held, s.durable
        except grpc.RpcError as e:
            if e.code() not in RETRY:
                raise
            print(f"reopening after {e.code().name}: {e.details()}", file=sys.stderr)
            time.sleep(min(2 ** attempt * 0.1, 5))  # then reopen: `opened` says where to go on
        finally:
            if s is not None:
                s.requests.put(None)  # ends the request iterator's thread
            channel.close()
    raise RuntimeError("sluiced is not taking messages")


def main():
    if len(sys.argv) != 3 or not sys.argv[2].isdigit() or int(sys.argv[2]) == 0:
        sys.exit("usage: publish_stream.py STREAM PRODUCER_ID < lines (PRODUCER_ID: a number, not 0)")
    stream, producer_id = sys.argv[1], int(sys.argv[2])
    payloads = [line.rstrip("\n").encode() for line in sys.stdin]
    address = os.environ.get("SLUICE_GRPC", "127.0.0.1:7402")
    token = os.environ.get("SLUICE_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    held, durable = publish_stream(address, stream, producer_id, payloads, metadata)
    print(f"{len(payloads)} messages; the daemon held seqs up to {held}, now durable up to seq {durable}")


if __name__ == "__main__":
    main()
