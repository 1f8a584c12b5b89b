"""Publish to sluiced over gRPC from Python, exactly once across retries.

Generate the stubs from the .proto first (grpcio-tools):

    pip install grpcio grpcio-tools
    python -m grpc_tools.protoc -I proto -I "$(python -c 'import grpc_tools, os; print(os.path.dirname(grpc_tools.__file__))')/_proto" \
        --python_out=examples/python --grpc_python_out=examples/python proto/sluice/v1/sluice.proto
    SLUICE_TOKEN=... python examples/python/publish.py orders "hello"

A request names itself with an idempotency key: sent again after a
timeout, a lost connection or RESOURCE_EXHAUSTED (backpressure), it is
stored once, and the answer is the original one.
"""

import os
import sys
import time
import uuid

import grpc

from sluice.v1 import sluice_pb2 as pb
from sluice.v1 import sluice_pb2_grpc as rpc


def publish(stub, stream, payloads, key, token, attempts=10):
    request = pb.PublishRequest(stream=stream, payloads=payloads, idempotency_key=key)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    for attempt in range(attempts):
        try:
            return stub.Publish(request, metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            # Unknown outcome or backpressure: the same request, same key.
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED):
                time.sleep(min(2 ** attempt * 0.1, 5))
                continue
            raise
    raise RuntimeError("sluiced is not taking messages")


def main():
    stream, text = sys.argv[1], sys.argv[2]
    address = os.environ.get("SLUICE_GRPC", "127.0.0.1:7402")
    with grpc.insecure_channel(address) as channel:
        answer = publish(rpc.PublisherStub(channel), stream, [text.encode()],
                         key=str(uuid.uuid4()), token=os.environ.get("SLUICE_TOKEN"))
    m = answer.messages[0]
    print(f"stored at offset {m.offset} (producer {answer.producer_id}, seq {m.seq}); replayed: {answer.replayed}")


if __name__ == "__main__":
    main()
