#!/usr/bin/env bash
# Interleaved A/B of two gateway binaries: did a change cost anything? The same load generator
# drives both, the gateway pinned to GATEWAY_CORE and the load generator to LOAD_CORE, and the
# runs alternate A B A B … so that this VM's drift (10-20 % between runs) hits both alike.
#
#   scripts/bench-ab.sh A_BIN B_BIN [SCENARIO...]          default scenario: fanout-1k
#   ROUNDS=5 DURATION=10 scripts/bench-ab.sh /tmp/old/subsocket target/release/subsocket fanout-1k fanout-10k
#   BENCH=target/release/subsocket-bench (default)          the load generator used for both
#
# Scenarios (scripts/lib/bench.sh, the same load as scripts/bench.sh): fanout-1k fanout-10k
# many-topics latency latency-light
# Build the binaries first: `cargo build --release -p subsocket -p subsocket-bench --bins` (for an old
# commit: `git worktree add /tmp/old REV && (cd /tmp/old && cargo build --release)`).
# Results: one JSON line per run in target/bench/ab-<time>.jsonl (field `ab`: A or B), and a
# Markdown table (medians per side, B/A ratios) printed and written to target/bench/ab-summary.md.
# Every run is bounded (the load generator's --max-seconds) and stops its gateway afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $# -ge 2 ]] || { sed -n '2,16p' "$0"; exit 2; }
A_BIN=$1
B_BIN=$2
shift 2
SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(fanout-1k)
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
NCPU=$(nproc)
GATEWAY_CORE="${GATEWAY_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-$((NCPU > 1 ? 1 : 0))}"
BENCH="${BENCH:-target/release/subsocket-bench}"
for b in "$A_BIN" "$B_BIN" "$BENCH"; do
    [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 2; }
done
OUT=target/bench
mkdir -p "$OUT"
THIS_RUN="$OUT/ab-$(date +%s).jsonl"
: >"$THIS_RUN"

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
for s in "${SCENARIOS[@]}"; do scenario_load "$s" || { echo "unknown scenario: $s" >&2; exit 2; }; done


# run SIDE BIN SCENARIO ROUND
run() {
    local side=$1 bin=$2 scen=$3 round=$4 log="$OUT/ab-gateway.log" rc=0
    PORT=$((10000 + RANDOM % 20000))
    taskset -c "$GATEWAY_CORE" "$bin" --bind "127.0.0.1:$PORT" --cores "$GATEWAY_CORE-$GATEWAY_CORE" \
        --max-backlog-bytes 8388608 --log warn >"$log" 2>&1 &
    GW_PID=$!
    wait_listening "$log"
    echo "--- $scen round $round: $side ($bin)" >&2
    local tmp="$OUT/ab-one.jsonl"
    : >"$tmp"
    scenario_load "$scen"
    taskset -c "$LOAD_CORE" "$BENCH" --target "127.0.0.1:$PORT" --pid "$GW_PID" --scenario "$scen" \
        --server "subsocket-$side" --json "$tmp" --max-seconds 300 --duration "$DURATION" \
        "${LOAD[@]}" >/dev/null || rc=$?
    stop_gateway
    [[ $rc == 0 ]] || echo "!!! $scen $side: load generator exit $rc" >&2
    python3 - "$tmp" "$side" "$bin" "$round" >>"$THIS_RUN" <<'EOF'
import json, sys
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l)
        r.update(ab=sys.argv[2], binary=sys.argv[3], round=int(sys.argv[4]))
        print(json.dumps(r))
EOF
}

for scen in "${SCENARIOS[@]}"; do
    for round in $(seq "$ROUNDS"); do
        # Alternate which side goes first, so neither always runs on a machine just warmed up.
        if (( round % 2 )); then
            run A "$A_BIN" "$scen" "$round"; run B "$B_BIN" "$scen" "$round"
        else
            run B "$B_BIN" "$scen" "$round"; run A "$A_BIN" "$scen" "$round"
        fi
    done
done

python3 - "$THIS_RUN" "$A_BIN" "$B_BIN" <<'EOF' | tee "$OUT/ab-summary.md"
import json, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"A = `{sys.argv[2]}`, B = `{sys.argv[3]}`; results in `{sys.argv[1]}`")
print()
print("| scenario | side | runs | server ns/delivery (each run) | median ns | deliveries/s (median) | deliveries/write (median) | server util | client util | p50 us | p99 us | lost/gaps/reordered | bottleneck |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
ratios = []
for scen in dict.fromkeys(r["scenario"] for r in rows):
    med = {}
    for side in ("A", "B"):
        rs = [r for r in rows if r["scenario"] == scen and r["ab"] == side]
        if not rs:
            continue
        ns = [r["server_cpu_ns_per_delivery"] for r in rs if r.get("server_cpu_ns_per_delivery") is not None]
        dps = median(r["deliveries_per_s"] for r in rs)
        med[side] = (median(ns) if ns else None, dps)
        bad = sum((r.get("lost") or 0) + (r.get("gaps") or 0) + (r.get("reordered") or 0) for r in rs)
        bott = sorted({r.get("bottleneck") or "-" for r in rs})
        dpw = [r["deliveries_per_write"] for r in rs if r.get("deliveries_per_write") is not None]
        print(f"| {scen} | {side} | {len(rs)} | {', '.join(f'{v:.0f}' for v in ns)} | "
              f"{'-' if not ns else f'{median(ns):.0f}'} | {dps:,.0f} | "
              f"{'-' if not dpw else f'{median(dpw):.1f}'} | "
              f"{median(r['server_cpu_util'] for r in rs):.2f} | {median(r['client_cpu_util'] for r in rs):.2f} | "
              f"{median(r['latency_us']['p50'] for r in rs):.0f} | {median(r['latency_us']['p99'] for r in rs):.0f} | "
              f"{bad} | {'; '.join(bott)} |")
    if "A" in med and "B" in med and med["A"][0] and med["B"][0]:
        ratios.append((scen, med["B"][0] / med["A"][0], med["B"][1] / med["A"][1]))
print()
for scen, ns, dps in ratios:
    print(f"- {scen}: B/A server ns per delivery {ns:.3f}, B/A deliveries/s {dps:.3f}")
EOF
