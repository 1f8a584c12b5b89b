#!/usr/bin/env bash
# HTTP publish against the fast path, measured in one run on this machine
# (issue 19's targets), as ratios to the fast path's figures of the same run:
#
#   (a) HTTP batch publish, closed loop (8 producers, 256 msgs per request
#       as frames, one connection each): durable msgs/s ÷ the fast path's
#       closed loop (8 producers, 256 x 16 in flight); target >= 0.25
#   (b) HTTP, one message per request, open loop at 1,000 req/s: ack p99
#       (from the due time) ÷ the fast path's p99 at 1,000 msgs/s, one
#       message per call; target <= 2
#
# The four runs go in rounds (each once per round, one window each), so
# that other work on the machine falls on all of them alike; the summary
# gives each figure's median [min–max] over the rounds, the ratios of the
# medians, and the ratio in each round (how noisy it was).
#
#   benches/scripts/http-publish.sh                 # 3 rounds of 10 s windows
#   ROUNDS=2 SECS=5 benches/scripts/http-publish.sh
#   BENCH=/path/to/sluice-bench OUT=dir benches/scripts/http-publish.sh
#
# BENCH: a sluice-bench to run (default: a release build of this tree);
# OUT: keep every run's table and JSON there (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BENCH:-}" ]; then
  cargo build --release --locked -p sluice-bench
  BENCH=${CARGO_TARGET_DIR:-target}/release/sluice-bench
fi
rounds=${ROUNDS:-3}
secs=${SECS:-10}
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-http-publish.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=${OUT:-$work/out}
mkdir -p "$out"

names=(fast-closed http-batch fast-1000 http-1000)
declare -A flags=(
  [fast-closed]="--path fast"
  [http-batch]="--path http"
  [fast-1000]="--path fast --rate 1000"
  [http-1000]="--path http --rate 1000"
)
for name in "${names[@]}"; do
  echo "$name: sluice-bench ingest ${flags[$name]} --seconds $secs --repeat 1 --no-baselines" >&2
done
for r in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    echo "round $r of $rounds: $name" >&2
    # shellcheck disable=SC2086 # the flags are words
    "$BENCH" ingest ${flags[$name]} --dir "$work" --seconds "$secs" --repeat 1 \
      --no-baselines --quiet --json "$out/$name-$r.json" > "$out/$name-$r.txt"
  done
done

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def run(name, r):
    with open(f"{out}/{name}-{r}.json") as f:
        rep = json.load(f)
    assert rep["errors"] == 0 and rep["acked"] == rep["sent"], f"{name} round {r}: not all acked"
    x = rep["runs"][0]
    other = (x.get("machine") or {}).get("other_busy", 0) / max(x["window_seconds"], 1e-9)
    return x["acked_per_sec"], x["latency"]["p99_us"], other, x.get("http_retries") or 0
names = ["fast-closed", "http-batch", "fast-1000", "http-1000"]
figs = {n: [run(n, r) for r in range(1, rounds + 1)] for n in names}
def spread(v, fmt="{:.0f}"):
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}–{fmt.format(max(v))}]"
print(f"\n{rounds} round(s) of {len(names)} runs; median [min–max] over the rounds")
print(f"  {'run':<12} {'durable msgs/s':>28} {'ack p99 us':>26} {'other work cores':>18} {'503s':>5}")
for n in names:
    f = figs[n]
    print(f"  {n:<12} {spread([x[0] for x in f]):>28} {spread([x[1] for x in f]):>26}"
          f" {spread([x[2] for x in f], '{:.2f}'):>18} {sum(x[3] for x in f):>5}")
def ratio(num, den, k):
    per_round = [a[k] / b[k] for a, b in zip(figs[num], figs[den])]
    of_medians = statistics.median(x[k] for x in figs[num]) / statistics.median(x[k] for x in figs[den])
    return of_medians, per_round
a, a_rounds = ratio("http-batch", "fast-closed", 0)
b, b_rounds = ratio("http-1000", "fast-1000", 1)
print(f"\n  {'round':>5} {'fast msgs/s':>12} {'http msgs/s':>12} {'(a)':>6} | {'fast p99 us':>11} {'http p99 us':>11} {'(b)':>7} | other work cores, each run")
for r in range(rounds):
    f = [figs[n][r] for n in names]
    print(f"  {r + 1:>5} {f[0][0]:>12.0f} {f[1][0]:>12.0f} {a_rounds[r]:>6.3f} | {f[2][1]:>11} {f[3][1]:>11} {b_rounds[r]:>7.3f} | "
          + " ".join(f"{x[2]:.2f}" for x in f))
print(f"\n  (a) HTTP batch msgs/s ÷ fast path msgs/s: {a:.3f} (ratio of the medians; median of the rounds' {statistics.median(a_rounds):.3f}); target >= 0.25: {'met' if a >= 0.25 else 'NOT met'}")
print(f"  (b) HTTP p99 ÷ fast path p99 at 1,000/s:  {b:.3f} (ratio of the medians; median of the rounds' {statistics.median(b_rounds):.3f}); target <= 2: {'met' if b <= 2 else 'NOT met'}")
PY
