#!/usr/bin/env bash
# Consumers over the API port's push routes and the gRPC port's
# StreamingPull against QUIC, measured in one run on this machine (issue
# 19's target: WebSocket delivery to one group >= 0.5 of QUIC delivery;
# issue 20's: gRPC StreamingPull delivery to one group >= 0.5 of QUIC
# delivery): `sluice-bench e2e` once per consumer path (quic, ws, sse,
# grpc), one group, each its own daemon; then each path's delivery
# (producers publishing) and backlog drain (no producers) as medians
# (min .. max) of the rounds, and ÷ the QUIC run's medians; and the CPU
# per delivery (daemon, consumer) while one group drains the backlog.
#
#   benches/scripts/e2e-push.sh                    # 3 rounds of 10 s windows
#   REPEAT=2 SECS=8 benches/scripts/e2e-push.sh
#   BENCH=/path/to/sluice-bench OUT=dir benches/scripts/e2e-push.sh
#
# BENCH: a sluice-bench to run (default: a release build of this tree);
# OUT: keep every run's table and JSON there (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BENCH:-}" ]; then
  cargo build --release --locked -p sluice-bench
  BENCH=${CARGO_TARGET_DIR:-target}/release/sluice-bench
fi
out=${OUT:-$(mktemp -d)}
secs=${SECS:-10}
repeat=${REPEAT:-3}
for p in quic ws sse grpc; do
  "$BENCH" e2e --consume-path "$p" --parts ingest,delivery --groups 1 \
    --seconds "$secs" --repeat "$repeat" --drain-timeout 600 --no-baselines \
    --dir "$out" --json "$out/e2e-$p.json" > "$out/e2e-$p.txt" 2> "$out/e2e-$p.err"
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
paths = ["quic", "ws", "sse", "grpc"]
runs = {p: json.load(open(f"{out}/e2e-{p}.json")) for p in paths}
r = {p: runs[p]["repeats"] for p in paths}
def s(x): return f"{x['median']:>9.0f} ({x['min']:.0f} .. {x['max']:.0f})"
def f(x): return f"{x['median']:.3f} ({x['min']:.3f} .. {x['max']:.3f})"
q = r["quic"]
print("path  ingest alone msgs/s          delivery, 1 group msgs/s     ÷ ingest alone          backlog drain msgs/s         ÷ QUIC delivery  ÷ QUIC drain")
for p, x in r.items():
    d = x["delivery"][0]
    print(f"{p:<5} {s(x['ingest_published_per_sec'])} {s(d['delivered_per_sec_per_group'])} "
          f"{f(d['delivered_per_group_per_ingest'])} {s(x['backlog_drain_per_sec'])} "
          f"{d['delivered_per_sec_per_group']['median'] / q['delivery'][0]['delivered_per_sec_per_group']['median']:.3f}x "
          f"{x['backlog_drain_per_sec']['median'] / q['backlog_drain_per_sec']['median']:.3f}x")
def us(x): return "-" if x is None else f"{x:.2f} us"
print("\nCPU per delivery while one group drains the backlog (first round):")
print("       daemon     consumer")
for p in paths:
    d = runs[p]["ingest_alone"]["backlog_drain"]
    print(f"{p:<6} {us(d.get('daemon_us_per_delivery')):<10} {us(d.get('consumer_us_per_delivery'))}")
def vs_quic(p): return r[p]["delivery"][0]["delivered_per_sec_per_group"]["median"] / q["delivery"][0]["delivered_per_sec_per_group"]["median"]
print()
for p, name in [("ws", "WebSocket"), ("grpc", "gRPC StreamingPull")]:
    x = vs_quic(p)
    print(f"{name} delivery ÷ QUIC delivery, one group: {x:.3f}; target >= 0.5: {'met' if x >= 0.5 else 'NOT met'}")
PY
