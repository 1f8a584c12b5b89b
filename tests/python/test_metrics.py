"""/metrics as Prometheus itself reads it: the whole exposition of a daemon
that has done real work (publishes over the fast path and HTTP, a consumer
group with messages out and acked, histograms with samples), parsed by
prometheus_client's own parser. No family may come out twice (the parser
names a counter's family without its `_total`, so a gauge `x` and a
counter `x_total` collide), every sample's family has HELP and TYPE, bucket
bounds are short decimals, counters end in `_total`.
"""

import re
import subprocess

import httpx
from conftest import ADMIN, WRITER
from prometheus_client.parser import text_string_to_metric_families
from push_helpers import sluice_bin, wait_until

# A histogram family's own sample suffixes in the text format.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A bound: an integer or a decimal of at most nine places (microseconds of
# seconds), never an exponent nor a long binary remainder.
SHORT_DECIMAL = re.compile(r"^(\+Inf|\d+(\.\d{1,9})?)$")


def publish_fast(d, stream, lines, producer=1):
    """Publishes `lines` over the fast path (sealed UDP under a lease the
    CLI takes over QUIC) and closes cleanly; returns once all is durable."""
    out = subprocess.run(
        [sluice_bin(), "publish", "--stream", stream, "--transport", "fast", "--producer", str(producer),
         "--to", f"127.0.0.1:{d.quic_port}", "--token", WRITER, "--server-cert", str(d.spool / "tls" / "server.crt")],
        input="".join(f"{line}\n" for line in lines).encode(),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()


def scrape(d):
    r = httpx.get(d.base + "/metrics", timeout=10.0)
    assert r.status_code == 200, r.text
    return r.text


def worked(d):
    """Puts the daemon to work on every plane these metrics cover."""
    # The fast path: sealed UDP under a lease the CLI takes over QUIC; the
    # producer closes cleanly at the end of its input.
    publish_fast(d, "fast", [f"fast {i}" for i in range(200)])
    # HTTP, one message a request and a batch.
    with d.client(WRITER) as c:
        for i in range(20):
            r = c.post("/streams/orders/messages", content=f"http {i}".encode())
            assert r.status_code == 200, r.text
        lines = "".join(f'{{"data": "batch {i}"}}\n' for i in range(30))
        r = c.post("/streams/orders/messages", content=lines.encode(), headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 200, r.text
    # A consumer group with ten messages out and five of them acked.
    with d.client(ADMIN) as c:
        r = c.post("/streams/orders/groups/billing/fetch", json={"max": 10})
        assert r.status_code == 200, r.text
        offsets = [m["offset"] for m in r.json()["messages"]]
        assert len(offsets) == 10
        r = c.post("/streams/orders/groups/billing/ack", json={"offsets": offsets[:5]})
        assert r.status_code == 200, r.text


def families_in_text(text):
    """The families the text declares: name -> {"help", "type"}."""
    declared = {}
    for line in text.splitlines():
        m = re.match(r"^# (HELP|TYPE) (\S+) ?(.*)$", line)
        if m:
            declared.setdefault(m.group(2), {})[m.group(1).lower()] = m.group(3)
    return declared


def family_of(sample_name, declared):
    """The declared family a sample belongs to (None if none)."""
    if sample_name in declared:
        return sample_name
    for suffix in HISTOGRAM_SUFFIXES:
        base = sample_name[: -len(suffix)]
        if sample_name.endswith(suffix) and declared.get(base, {}).get("type") == "histogram":
            return base
    return None


def test_the_whole_exposition_parses_cleanly(sluiced):
    worked(sluiced)
    text = scrape(sluiced)
    families = list(text_string_to_metric_families(text))
    assert len(families) > 50, f"only {len(families)} families"

    # No family twice, as the parser names them.
    seen = {}
    for f in families:
        seen.setdefault(f.name, []).append(f.type)
    dups = {n: t for n, t in seen.items() if len(t) > 1}
    assert not dups, f"families that come out twice: {dups}"

    # Every family has help text and a type the parser knows.
    for f in families:
        assert f.documentation, f"{f.name} has no HELP"
        assert f.type in ("counter", "gauge", "histogram", "info"), f"{f.name} is {f.type}"

    # Every sample line belongs to a family declared with HELP and TYPE.
    declared = families_in_text(text)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", line).group(1)
        fam = family_of(name, declared)
        assert fam, f"sample {name} has no family declared"
        assert "help" in declared[fam] and "type" in declared[fam], f"{fam}: {declared[fam]}"

    # Counters end in _total (in the text: the parser strips it).
    for name, d in declared.items():
        if d["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} does not end in _total"
        else:
            assert not name.endswith("_total"), f"{d['type']} {name} ends in _total"

    # Bucket bounds are short decimals, and there are buckets with samples.
    counted = 0
    for f in families:
        for s in f.samples:
            if s.name.endswith("_bucket"):
                le = s.labels["le"]
                assert SHORT_DECIMAL.match(le), f"{s.name} le={le!r}"
            if f.type == "histogram" and s.name.endswith("_count"):
                counted += s.value
    assert counted > 0, "no histogram has samples"
    assert 'le="0.00005"' in text


def values(text, name):
    """name's samples as {frozenset(labels): value}."""
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name:
                out[frozenset(s.labels.items())] = s.value
    return out


def one(text, name, **labels):
    v = values(text, name).get(frozenset(labels.items()))
    assert v is not None, f"no {name}{labels}"
    return v


def test_a_clean_close_counts_no_drop(sluiced):
    for producer in range(1, 6):
        publish_fast(sluiced, "closing", [f"m {producer} {i}" for i in range(20)], producer=producer)

    def ended():
        t = scrape(sluiced)
        return t if one(t, "sluice_leases") == 0 else None

    # Leases drain a moment after their producers close.
    text = wait_until("leases ended", ended)
    assert one(text, "sluice_leases_granted_total") == 5
    drops = values(text, "sluice_fastpath_dropped_total")
    assert drops, "no sluice_fastpath_dropped_total samples"
    assert all(v == 0 for v in drops.values()), drops


def test_disk_latency_process_and_build_figures(sluiced):
    worked(sluiced)
    text = scrape(sluiced)
    for stream, records in (("fast", 200), ("orders", 50)):
        assert one(text, "sluice_spool_disk_bytes", stream=stream) > 0
        assert one(text, "sluice_spool_first_offset", stream=stream) == 0
        # Every batch acked durable was timed from its receipt.
        assert one(text, "sluice_publish_ack_seconds_count", stream=stream) > 0
        assert one(text, "sluice_durable_acks_total", stream=stream) == records
        # The stages of the group commit that made them durable.
        commits = one(text, "sluice_spool_fdatasync_seconds_count", stream=stream)
        assert commits > 0
        assert one(text, "sluice_spool_write_seconds_count", stream=stream) == commits
        assert one(text, "sluice_spool_queue_seconds_count", stream=stream) >= commits
    # The fast path's acks were timed to their STATUS; HTTP has none.
    assert one(text, "sluice_fastpath_status_seconds_count", stream="fast") > 0
    assert one(text, "sluice_fastpath_status_seconds_count", stream="orders") == 0
    assert one(text, "sluice_spool_fs_free_bytes") > 0
    assert one(text, "sluice_spool_fs_size_bytes") >= one(text, "sluice_spool_fs_free_bytes")
    assert one(text, "process_resident_memory_bytes") > 1 << 20
    assert one(text, "process_cpu_seconds_total") > 0
    assert 0 < one(text, "process_open_fds") < one(text, "process_max_fds")
    assert one(text, "process_start_time_seconds") > 1.6e9
    build = values(text, "sluice_build_info")
    assert len(build) == 1 and list(build.values()) == [1.0], build
    labels = dict(next(iter(build)))
    assert re.match(r"^\d+\.\d+\.\d+", labels["version"]), labels
