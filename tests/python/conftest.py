"""A real sluiced for the Python client tests.

The daemon binary comes from $SLUICED_BIN (tests/tests/python_clients.rs
sets it to the sluiced cargo built for the tests). Each test gets its own
daemon, spool folder and loopback ports; `kill9()` and `start()` let a test
crash it and start it again on the same spool.

With "--admin-tls", "true" among its flags the daemon serves HTTPS with
its self-signed certificate (<spool>/tls/server.crt, made at its first
start): `base` is then https:// and `verify` (for httpx's `verify=`) an SSL
context trusting exactly that certificate.

Three tokens are configured:
- WRITER publishes to and consumes from every stream,
- READER only consumes,
- ADMIN may do everything (admin operations included).
"""

import hashlib
import itertools
import os
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest

WRITER = "writer-token-0123456789abcdef0123456789abcdef"
READER = "reader-token-0123456789abcdef0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef0123456789abcdef0"


def _hash(token):
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports below the kernel's ephemeral range: one the kernel hands out (bind
# to port 0) is given up before sluiced binds it, and in between any
# outgoing connection may take it as its source port. Below the range only
# another picker could; this one hands each port out once per process, from
# a start that differs between processes (as testkit/src/daemon.rs does).
_FIRST = 10000
_SPAN = max(_ephemeral_start(), _FIRST + 1000) - _FIRST
_next = itertools.count((os.getpid() * 7919) % _SPAN)


def _free_port(kind):
    for _ in range(_SPAN):
        port = _FIRST + next(_next) % _SPAN
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def auth(token):
    return {"Authorization": f"Bearer {token}"}


class Sluiced:
    def __init__(self, tmp_path, extra_args=()):
        self.bin = os.environ.get("SLUICED_BIN")
        if not self.bin:
            raise RuntimeError("SLUICED_BIN is not set: run these tests through cargo test (tests/tests/python_clients.rs)")
        self.dir = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.spool = tmp_path / "spool"
        self.config = tmp_path / "sluiced.toml"
        self.log = tmp_path / "sluiced.log"
        self.extra_args = list(extra_args)
        self.admin_port = _free_port(socket.SOCK_STREAM)
        self.data_port = _free_port(socket.SOCK_DGRAM)
        self.quic_port = _free_port(socket.SOCK_DGRAM)
        self.grpc_port = _free_port(socket.SOCK_STREAM)
        args = self.extra_args
        self.tls = any(a == "--admin-tls" and args[i + 1 : i + 2] == ["true"] for i, a in enumerate(args))
        self.cert = self.spool / "tls" / "server.crt"
        self.base = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.admin_port}"
        self._verify = None
        self.config.write_text(
            "".join(
                f'[[auth.tokens]]\nname = "{name}"\nhash = "{_hash(tok)}"\n{rights}\n'
                for name, tok, rights in [
                    ("writer", WRITER, 'publish = ["*"]\nconsume = ["*"]'),
                    ("reader", READER, 'consume = ["*"]'),
                    ("admin", ADMIN, 'publish = ["*"]\nconsume = ["*"]\nadmin = true'),
                ]
            )
        )
        self.proc = None

    def command(self):
        return [
            self.bin,
            "--config",
            str(self.config),
            "--spool-dir",
            str(self.spool),
            "--data-listen",
            f"127.0.0.1:{self.data_port}",
            "--quic-listen",
            f"127.0.0.1:{self.quic_port}",
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            "--grpc-listen",
            f"127.0.0.1:{self.grpc_port}",
            *([] if "--spool-min-free-bytes" in self.extra_args else ["--spool-min-free-bytes", "0"]),
            # Segments are preallocated: at the default 256 MiB, the daemons
            # of one run would take gigabytes of the CI machine's disk.
            *([] if "--spool-segment-bytes" in self.extra_args else ["--spool-segment-bytes", "8MiB"]),
            "--log-level",
            os.environ.get("SLUICED_TEST_LOG", "warn"),
            *self.extra_args,
        ]

    @property
    def verify(self):
        """httpx's `verify=`: the default, or (admin.tls) trust in exactly
        the daemon's certificate, once it has made it."""
        if not self.tls:
            return True
        if self._verify is None:
            self._verify = ssl.create_default_context(cafile=str(self.cert))
        return self._verify

    def start(self, within=30.0):
        assert self.proc is None, "already running"
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if self.tls and not self.cert.exists():
                time.sleep(0.05)
                continue
            try:
                if httpx.get(self.base + "/health", timeout=1.0, verify=self.verify).status_code in (200, 503):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sluiced did not answer /health within {within} s:\n{self.log.read_text()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self.proc = None

    def client(self, token=WRITER, timeout=20.0):
        return httpx.Client(base_url=self.base, headers=auth(token), timeout=timeout, verify=self.verify)

    def records(self, stream, start=0):
        """Every durable record of `stream` from `start` (the admin records
        route, page after page)."""
        out = []
        while True:
            r = httpx.get(
                f"{self.base}/streams/{stream}/records",
                params={"from": start, "limit": 10_000},
                headers=auth(ADMIN),
                timeout=20.0,
                verify=self.verify,
            )
            r.raise_for_status()
            page = r.json()
            out.extend(page["records"])
            if not page["records"] or page["next"] >= page["durable_end"]:
                return out
            start = page["next"]

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@pytest.fixture
def sluiced(tmp_path):
    d = Sluiced(tmp_path).start()
    yield d
    d.stop()


@pytest.fixture
def make_sluiced(tmp_path):
    """Starts a daemon with extra flags: make_sluiced("--spool-fsync", "never")."""
    made = []

    def make(*args):
        d = Sluiced(tmp_path / f"d{len(made)}", args)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()
