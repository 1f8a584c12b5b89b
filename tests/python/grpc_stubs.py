"""Python stubs of proto/sluice/v1/sluice.proto, generated with grpcio-tools
(as a client in another language would), once per test run, into a temporary
folder put on sys.path: `from grpc_stubs import pb, rpc`."""

import importlib
import pathlib
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
_out = pathlib.Path(tempfile.mkdtemp(prefix="sluice-grpc-stubs-"))
_well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
_status = protoc.main(
    [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{_well_known}",
        f"--python_out={_out}",
        f"--grpc_python_out={_out}",
        str(ROOT / "proto/sluice/v1/sluice.proto"),
    ]
)
if _status != 0:
    raise RuntimeError(f"grpc_tools.protoc failed ({_status}) on proto/sluice/v1/sluice.proto")
sys.path.insert(0, str(_out))
pb = importlib.import_module("sluice.v1.sluice_pb2")
rpc = importlib.import_module("sluice.v1.sluice_pb2_grpc")
