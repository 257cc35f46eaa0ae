#!/usr/bin/env bash
# The burst benchmark (issue 13): one topic, subscribers of which 10 % stall (a 4 KiB receive
# buffer, nothing read until HOLD_MS after the burst), one publisher pipelining a burst as fast
# as its socket takes it, under each slow-consumer policy. Per class of subscriber: delivered,
# lost, reported (SLOW_CONSUMER ranges, REPLAY_UNAVAILABLE), disconnected; the healthy ones'
# publish-to-delivery p99; the gateway's peak RSS. A fresh gateway (default configuration but
# the policy) per run, pinned to GATEWAY_CORE; the load generator on LOAD_CORE.
#
#   scripts/bench-burst.sh                      # the matrix below (about 5 minutes)
#   POLICIES=refill PAYLOADS=1024 BURSTS=1048576:1000 scripts/bench-burst.sh
#
# BURSTS: "bytes:subscribers" pairs (20 MiB bursts go to 100 subscribers, so one core of load
# generator can read 900 healthy copies of the 1 MiB ones and 90 of the 20 MiB ones in seconds).
# Results: target/bench/burst-<time>.jsonl and a Markdown table (target/bench/burst-summary.md).
# Build first: cargo build --release -p subsocket -p subsocket-bench --bins
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

GW=${GW:-target/release/subsocket}
BURST=${BURST_BIN:-target/release/subsocket-burst}
GATEWAY_CORE=${GATEWAY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
POLICIES=${POLICIES:-disconnect drop refill}
PAYLOADS=${PAYLOADS:-64 1024 32768}
BURSTS=${BURSTS:-1048576:1000 20971520:100}
HOLD_MS=${HOLD_MS:-3000}
PORT=${PORT:-9470}
for b in "$GW" "$BURST"; do
    [[ -x $b ]] || { echo "no $b: cargo build --release -p subsocket -p subsocket-bench --bins" >&2; exit 1; }
done
mkdir -p target/bench
OUT=target/bench/burst-$(date +%s).jsonl

for burst in $BURSTS; do
    bytes=${burst%%:*} subs=${burst##*:}
    for payload in $PAYLOADS; do
        for policy in $POLICIES; do
            log=target/bench/burst-gateway.log
            taskset -c "$GATEWAY_CORE" "$GW" --bind "127.0.0.1:$PORT" --cores "$GATEWAY_CORE," \
                --slow-consumer "$policy" > "$log" 2>&1 &
            GW_PID=$!
            wait_listening "$log"
            taskset -c "$LOAD_CORE" "$BURST" --target "127.0.0.1:$PORT" --subs "$subs" \
                --payload "$payload" --burst-bytes "$bytes" --hold-ms "$HOLD_MS" \
                --gateway-pid "$GW_PID" --label "$policy" --max-seconds 120 >> "$OUT"
            stop_gateway
        done
    done
done

python3 - "$OUT" <<'PY' | tee target/bench/burst-summary.md
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| burst | payload | subs (stalled) | policy | healthy delivered / expected | healthy cut | healthy p99 ms | stalled delivered / expected | stalled lost: reported / after a cut / silent | stalled cut | gateway peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    h, s = r["healthy"], r["stalledClass"]
    mib = r["burst_bytes"] / 1048576
    print(f"| {mib:g} MiB | {r['payload']} B | {r['subs']} ({r['stalled']}) | {r['label']} | "
          f"{h['delivered']:,} / {h['expected']:,} | {h['disconnected']} | {r['healthy_latency_us']['p99'] / 1000:.0f} | "
          f"{s['delivered']:,} / {s['expected']:,} | {s['reportedLost']:,} / {s['lostAfterCut']:,} / {s['lostSilently']:,} | "
          f"{s['disconnected']} | {(r['gateway_rss_peak_kib'] or 0) / 1024:.0f} |")
PY
echo "results: $OUT"
