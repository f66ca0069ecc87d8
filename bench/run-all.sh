#!/usr/bin/env bash
# Every keel-bench workload, RUNS times each (default 3), against a release
# stack on this machine, then the median of each figure. The API runs with
# rate limits off and a high per-user task cap; worker fleets are started by
# the benches themselves on their own Redis prefixes. Raw JSON lines are kept
# in $OUT (default target/bench/).
#
#   ./bench/run-all.sh            # about 25 minutes on 2 cores, 3 runs
#   RUNS=1 ./bench/run-all.sh     # one pass
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/local/services.sh"
ensure_services
cd "$KEEL_ROOT"

RUNS=${RUNS:-3}
OUT=${OUT:-$KEEL_ROOT/target/bench}
BENCH_DB=${BENCH_DATABASE_URL:-$(printf '%s' "$KEEL_ADMIN_DATABASE_URL" | sed -E 's#/postgres$#/keel_bench#')}
PORT=${BENCH_PORT:-18080}
URL="http://127.0.0.1:$PORT"
export DATABASE_URL=$BENCH_DB RUST_LOG=warn

say "building the release binaries"
cargo build --release -q -p keel-api -p keel-worker -p keel-scheduler -p keel-bench
bin=$KEEL_ROOT/target/release
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl
"$bin/keel-api" migrate >/dev/null

pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

prefix=bench-$RANDOM$RANDOM
RATE_LIMIT_ENABLED=false MAX_UNFINISHED_TASKS_PER_USER=0 REDIS_PREFIX=$prefix \
  PORT=$PORT HOST=127.0.0.1 "$bin/keel-api" &
api=$!; pids+=("$api")
REDIS_PREFIX=$prefix METRICS_PORT=0 "$bin/keel-worker" &
pids+=("$!"); worker=$!
REDIS_PREFIX=$prefix METRICS_PORT=0 "$bin/keel-scheduler" &
pids+=("$!"); scheduler=$!
for _ in $(seq 1 100); do curl -fs "$URL/ready" >/dev/null 2>&1 && break; sleep 0.2; done

# Idle memory: the three processes started, nothing asked of them for 10 s.
sleep 10
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
idle_api=$(rss_kib "$api"); idle_worker=$(rss_kib "$worker"); idle_scheduler=$(rss_kib "$scheduler")
awk -v a="$idle_api" -v w="$idle_worker" -v s="$idle_scheduler" 'BEGIN {
  printf "{\"api_kib\": %d, \"worker_kib\": %d, \"scheduler_kib\": %d, \"total_mib\": %.1f}\n", a, w, s, (a + w + s) / 1024
}' >"$OUT/idle_rss.jsonl"
# The fleet for the idle RSS reading is not needed by the benches.
kill -TERM "$worker" "$scheduler"; wait "$worker" "$scheduler" 2>/dev/null || true

last_json() { tail -n 1; }
for run in $(seq 1 "$RUNS"); do
  say "run $run of $RUNS"
  "$bin/keel-bench" ceilings --json | tee -a /dev/stderr | last_json >>"$OUT/ceilings.jsonl"
  "$bin/keel-bench" e2e --tasks 10000 --workers 1,2,4 --json | tee -a /dev/stderr | last_json >>"$OUT/e2e.jsonl"
  "$bin/keel-bench" burn-down --tasks 50000 --workers 1 --json | tee -a /dev/stderr | last_json >>"$OUT/burn_down.jsonl"
  "$bin/keel-bench" burn-down --tasks 50000 --workers 2 --json | tee -a /dev/stderr | last_json >>"$OUT/burn_down_2.jsonl"
  "$bin/keel-bench" burn-down --tasks 50000 --workers 1 --concurrency 1024 --json | tee -a /dev/stderr | last_json >>"$OUT/burn_down_c1024.jsonl"
  "$bin/keel-bench" burn-down --tasks 50000 --workers 2 --concurrency 1024 --json | tee -a /dev/stderr | last_json >>"$OUT/burn_down_2_c1024.jsonl"
  "$bin/keel-bench" schedule --tasks 1000 --workers 1 --json | tee -a /dev/stderr | last_json >>"$OUT/schedule.jsonl"
  "$bin/keel-bench" schedule --tasks 1000 --workers 1 --concurrency 1024 --json | tee -a /dev/stderr | last_json >>"$OUT/schedule_c1024.jsonl"
  "$bin/keel-bench" login --url "$URL" --duration 10 --json | tee -a /dev/stderr | last_json >>"$OUT/login.jsonl"
  "$bin/keel-bench" http --url "$URL" --duration 10 --connections 64 --rate 1000 --json | tee -a /dev/stderr | last_json >>"$OUT/http.jsonl"
done

say "medians of $RUNS runs (raw lines in $OUT)"
python3 - "$OUT" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
def flat(key, value, into):
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{key}.{k}" if key else k, v, into)
    elif isinstance(value, list):
        for item in value:
            name = item.get("endpoint") or f"workers={item.get('workers')}"
            flat(f"{key}[{name}]", item, into)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        into.setdefault(key, []).append(value)
for path in sorted(out.glob("*.jsonl")):
    figures = {}
    for line in path.read_text().splitlines():
        flat("", json.loads(line), figures)
    print(f"\n{path.stem}")
    for key, values in figures.items():
        runs = ", ".join(f"{v:g}" for v in values)
        print(f"  {key:<56} {statistics.median(values):>12.2f}   ({runs})")
PY
