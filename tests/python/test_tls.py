"""The admin port over HTTPS (admin.tls) from Python: httpx verifies the
daemon's self-signed certificate (<spool>/tls/server.crt, made at first
start), a client that trusts only the public CAs is refused, plain HTTP
to the port gets a 400 that says why, and publishing and reading work as
over plain HTTP."""

import asyncio
import base64
import json
import shutil
import ssl
import subprocess

import httpx
import pytest

from conftest import ADMIN, WRITER


def test_httpx_verifies_the_daemons_certificate(make_sluiced):
    d = make_sluiced("--admin-tls", "true")
    assert d.base.startswith("https://")
    # verify= trusting exactly the certificate the daemon wrote.
    trust = ssl.create_default_context(cafile=str(d.cert))
    r = httpx.get(f"{d.base}/health", verify=trust, timeout=10.0)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"
    assert r.http_version == "HTTP/1.1"

    # The system's CAs know nothing of a self-signed certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{d.base}/health", timeout=10.0)

    # Publishing and reading back, over HTTPS.
    with d.client(WRITER) as c:
        for i in range(3):
            a = c.post("/streams/tls/messages", content=f"m{i}".encode(), headers={"Idempotency-Key": f"k{i}"})
            assert a.status_code == 200, a.text
    assert [base64.b64decode(r["payload"]) for r in d.records("tls")] == [b"m0", b"m1", b"m2"]


def test_plain_http_to_the_https_port_is_told_and_the_daemon_serves_on(make_sluiced):
    d = make_sluiced("--admin-tls", "true")
    plain = d.base.replace("https://", "http://")
    r = httpx.get(f"{plain}/health", timeout=10.0)
    assert r.status_code == 400
    assert "https://" in r.text
    with d.client(ADMIN) as c:
        assert c.get("/health").status_code == 200
        m = c.get("/metrics").text
    assert 'sluice_admin_tls_handshake_failures_total{reason="not_tls"} 1' in m, m


def test_the_curl_example_of_http_md(make_sluiced):
    assert shutil.which("curl"), "no curl (scripts/setup.sh installs it)"
    d = make_sluiced("--admin-tls", "true")
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(d.cert), f"{d.base}/health"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert '"ok"' in out.stdout
    # A token goes in its header as over plain HTTP.
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(d.cert), "-H", f"Authorization: Bearer {ADMIN}", f"{d.base}/streams"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def test_a_websocket_consumer_over_tls(make_sluiced):
    """wss://: the push route over the TLS port, trusting the daemon's
    certificate; what it acks is not delivered again."""
    import websockets

    d = make_sluiced("--admin-tls", "true")
    with d.client(WRITER) as c:
        for i in range(5):
            assert c.post("/streams/wss/messages", content=f"w{i}".encode()).status_code == 200
    url = d.base.replace("https://", "wss://") + "/streams/wss/groups/g/ws?max_messages=2"
    trust = ssl.create_default_context(cafile=str(d.cert))

    async def consume():
        got = []
        async with websockets.connect(
            url, ssl=trust, additional_headers={"Authorization": f"Bearer {WRITER}"}
        ) as ws:
            while len(got) < 5:
                m = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if "offset" in m:
                    got.append(base64.b64decode(m["payload"]))
                    await ws.send(json.dumps({"ack": [m["offset"]]}))
            await ws.send(json.dumps({"sync": 1}))
            while "synced" not in json.loads(await asyncio.wait_for(ws.recv(), 20)):
                pass
        return got

    assert asyncio.run(consume()) == [f"w{i}".encode() for i in range(5)]
    groups = {(g["stream"], g["group"]): g for g in httpx.get(f"{d.base}/groups", verify=d.verify).json()["groups"]}
    assert groups[("wss", "g")]["floor"] == 5, groups[("wss", "g")]
