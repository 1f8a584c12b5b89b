#!/usr/bin/env bash
# sluice -> NATS JetStream against the NATS client alone (issue 21's
# target: forwarded msgs/s >= 0.8 x the better of the client's two ways),
# `sluice-bench forward` run ROUNDS times (each its own cluster and
# daemon: one slow spell of the machine lands in one round), then each
# figure's median (min .. max) over the rounds: the rates, the ratio, and
# the PubAck and producer -> ack latencies (ack = replicated and local).
#
#   benches/scripts/forward.sh                      # 3 rounds, 200,000 msgs
#   ROUNDS=5 MESSAGES=500000 benches/scripts/forward.sh
#   ARGS="--nodes 1" benches/scripts/forward.sh     # more forward flags
#   BENCH=/path/to/sluice-bench OUT=dir benches/scripts/forward.sh
#
# BENCH: a sluice-bench to run (default: a release build of this tree);
# OUT: keep every run's table and JSON there (default: a temporary folder).
# Needs nats-server (scripts/setup.sh installs it in target/pyenv).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BENCH:-}" ]; then
  cargo build --release --locked -p sluice-bench
  BENCH=${CARGO_TARGET_DIR:-target}/release/sluice-bench
fi
out=${OUT:-$(mktemp -d)}
rounds=${ROUNDS:-3}
messages=${MESSAGES:-200000}
for i in $(seq 1 "$rounds"); do
  # shellcheck disable=SC2086 # ARGS is words on purpose
  "$BENCH" forward --messages "$messages" --quiet ${ARGS:-} --dir "$out" \
    --json "$out/forward-$i.json" > "$out/forward-$i.txt" 2> "$out/forward-$i.err"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{out}/forward-{i}.json")) for i in range(1, rounds + 1)]
def spread(xs, fmt):
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))} .. {fmt(max(xs))})"
n = lambda x: f"{x:.0f}"
r = lambda x: f"{x:.3f}"
c = runs[0]["config"]
print(f"forward: {c['producers'] * (c['messages'] // c['producers'])} msgs x {c['size']} B, "
      f"{c['replicas']} replica(s), {c['storage']}; {rounds} rounds: median (min .. max)")
for key in ["forwarded", "sluice_ingest", "direct", "fast"]:
    print(f"  {runs[0][key]['name']:<30} {spread([x[key]['msgs_per_sec'] for x in runs], n)} msgs/s")
ratios = [x["ratio"] for x in runs]
print(f"  forwarded ÷ best NATS client alone: {spread(ratios, r)}x; "
      f"target >= {runs[0]['target_ratio']}: {'met' if statistics.median(ratios) >= runs[0]['target_ratio'] else 'NOT met'}")
for key, name in [("direct_puback_latency", "direct PubAck, window full"),
                  ("single_puback_latency", "direct PubAck, one at a time")]:
    print(f"  {name:<30} p50 {spread([x[key]['p50_us'] for x in runs], n)} us, "
          f"p99 {spread([x[key]['p99_us'] for x in runs], n)} us")
for k, row in enumerate(runs[0]["ack_latency"]):
    w = "one at a time" if row["window"] == 1 else f"{row['window']} in flight"
    for mode in ["replicated", "local", "direct"]:
        name = f"{'direct PubAck' if mode == 'direct' else 'ack = ' + mode}, {w}"
        print(f"  {name:<33} p50 {spread([x['ack_latency'][k][mode]['p50_us'] for x in runs], n)} us, "
              f"p99 {spread([x['ack_latency'][k][mode]['p99_us'] for x in runs], n)} us")
    print(f"    replicated ÷ direct: p50 {spread([x['ack_latency'][k]['replicated_over_direct_p50'] for x in runs], r)}x, "
          f"p99 {spread([x['ack_latency'][k]['replicated_over_direct_p99'] for x in runs], r)}x; "
          f"replicated ÷ local p50 {spread([x['ack_latency'][k]['replicated_over_local_p50'] for x in runs], r)}x")
PY
