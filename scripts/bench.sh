#!/usr/bin/env bash
# Standard benchmark scenarios. The gateway runs pinned to one core, the load generator on another.
#
#   scripts/bench.sh SCENARIO [SCENARIO...]     e.g. scripts/bench.sh fanout-1k fanout-10k
#   SERVERS="subsocket bun" scripts/bench.sh fanout-1k          # also the Bun reference peer
#   WRITE_PATHS="uring send" scripts/bench.sh fanout-1k         # both subsocket write paths
#   DURATION=10 GATEWAY_CORE=0 LOAD_CORE=1 scripts/bench.sh latency
#   ROUNDS=3 scripts/bench.sh guarantees                        # auth and QoS 1 cost, 3 rounds
#
# Scenarios: fanout-1k fanout-10k many-topics latency latency-light churn scaling burst deflate sse all
#   floor-1k floor-10k: the write floor (subsocket-floor: 32 pre-built frames per write(2) to
#   1,000 / 10,000 sockets, no gateway), the reference of issue 14
#   write-floor: ROUNDS x (floor-1k, fanout-1k, floor-10k, fanout-10k) on every SERVERS, and a
#   ratio table (each server against the floor and against bun, medians) — issue 14's targets
#   fanout-1k-auth fanout-1k-qos1 guarantees (subsocket only: JWT auth, QoS 1 with acks)
#   burst: healthy and stalled subscribers under bursts, per slow-consumer policy (scripts/bench-burst.sh)
#   deflate: permessage-deflate on vs off (issue 15): JSON price ticks of 64 B, 1 KiB and 16 KiB
#   to 1,000 subscribers, ROUNDS x interleaved on every SERVERS (bun with perMessageDeflate);
#   bytes on the wire and server CPU per delivery, and a ratio table. PAYLOADS="1024" for one size
#   sse: the same fan-out to 1,000 WebSocket subscribers vs 1,000 Server-Sent Events streams
#   (subsocket only: the Bun peer has no SSE), 64 B and 1 KiB ticks, ROUNDS x interleaved
# Results: one JSON line per run appended to target/bench/results.jsonl, and a Markdown table
# of this invocation's runs printed at the end (and written to target/bench/summary.md).
# Every run is bounded (the load generator has a hard time cap) and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVERS="${SERVERS:-subsocket}"
WRITE_PATHS="${WRITE_PATHS:-uring}"
DURATION="${DURATION:-10}"
NCPU=$(nproc)
GATEWAY_CORE="${GATEWAY_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-$((NCPU > 1 ? 1 : 0))}"
OUT=target/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
RUN_ID="run-$(date +%s)"
THIS_RUN="$OUT/$RUN_ID.jsonl"
: >"$THIS_RUN"

[[ $# -gt 0 ]] || { sed -n '2,14p' "$0"; exit 2; }
ROUNDS="${ROUNDS:-1}"

# JWT authentication for the *-auth scenarios: a fresh HS256 secret per invocation, in a config
# file the gateway reads (--config; the flags below override everything else in it), and the
# same secret given to the load generator, which signs its own token (sub "bench", read/write
# "*") and sends it as ?token= on every upgrade.
AUTH_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
AUTH_CONFIG="$OUT/auth.toml"
printf '[auth]\nmode = "jwt"\nhs256_secret = "%s"\n' "$AUTH_SECRET" >"$AUTH_CONFIG"
# Extra gateway arguments of the scenario being run (set around one for_each_* call), and the
# Bun reference peer's.
GW_ARGS=()
BUN_ARGS=()

cargo build --release -p subsocket -p subsocket-bench --bins -q
BIN=target/release/subsocket
BENCH=target/release/subsocket-bench
FLOOR=target/release/subsocket-floor

ensure_bun() {
    if [[ ! -x benches/peers/node_modules/.bin/bun ]]; then
        (cd benches/peers && npm ci --silent --no-audit --no-fund)
    fi
}

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

# start_gateway SERVER WRITE_PATH CORES -> sets GW_PID and PORT
start_gateway() {
    local server=$1 wp=$2 cores=$3 log="$OUT/gateway.log"
    # Below the ephemeral range (32768+), so a client socket never holds the port we want.
    PORT=$((10000 + RANDOM % 20000))
    local list=$cores
    [[ $list == *[-,]* ]] || list="$list-$list"   # a single id must be a list for --cores
    case $server in
        subsocket)
            taskset -c "$cores" "$BIN" ${GW_ARGS[@]+"${GW_ARGS[@]}"} --bind "127.0.0.1:$PORT" --cores "$list" \
                --write-path "$wp" --max-backlog-bytes 8388608 --log warn >"$log" 2>&1 &
            GW_PID=$!
            ;;
        bun)
            ensure_bun
            taskset -c "$cores" benches/peers/node_modules/.bin/bun benches/peers/bun-peer.js --port "$PORT" \
                ${BUN_ARGS[@]+"${BUN_ARGS[@]}"} >"$log" 2>&1 &
            GW_PID=$!
            ;;
        *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    wait_listening "$log"
}

# bench NAME SERVER WP GATEWAY_CORES LOAD_CORES [bench args...]
bench() {
    local name=$1 server=$2 wp=$3 gcores=$4 lcore=$5
    shift 5
    local label=$server
    [[ $server == subsocket ]] && label="subsocket-$wp"
    start_gateway "$server" "$wp" "$gcores"
    echo "--- $name on $label (gateway cores $gcores, load core $lcore)" >&2
    local rc=0
    taskset -c "$lcore" "$BENCH" --target "127.0.0.1:$PORT" --pid "$GW_PID" --scenario "$name" \
        --server "$label" --json "$THIS_RUN" --max-seconds 300 "$@" >/dev/null || rc=$?
    stop_gateway
    [[ $rc == 0 ]] || echo "!!! $name on $label: load generator exit $rc" >&2
}

for_each_server() {
    local name=$1
    shift
    for server in $SERVERS; do
        if [[ $server == subsocket ]]; then
            for wp in $WRITE_PATHS; do bench "$name" subsocket "$wp" "$GATEWAY_CORE" "$LOAD_CORE" "$@"; done
        else
            bench "$name" "$server" - "$GATEWAY_CORE" "$LOAD_CORE" "$@"
        fi
    done
}

# Scenarios only subsocket can run (auth, QoS 1): every write path, no reference peer.
for_each_write_path() {
    local name=$1
    shift
    for wp in $WRITE_PATHS; do bench "$name" subsocket "$wp" "$GATEWAY_CORE" "$LOAD_CORE" "$@"; done
}

scenario_load fanout-1k
FANOUT_1K=("${LOAD[@]}")

run_scenario() {
    case $1 in
        fanout-1k) for_each_server fanout-1k "${FANOUT_1K[@]}" --duration "$DURATION" ;;
        fanout-1k-auth)
            # fanout-1k with `[auth] mode = "jwt"`: every connection authenticated by ?token=,
            # every subscribe and publish checked against the token's rules (QoS 0 topics).
            GW_ARGS=(--config "$AUTH_CONFIG")
            for_each_write_path fanout-1k-auth "${FANOUT_1K[@]}" --duration "$DURATION" --hs256-secret "$AUTH_SECRET"
            GW_ARGS=()
            ;;
        fanout-1k-qos1)
            # fanout-1k with QoS 1 publishes: every delivery tracked until its subscriber acks it
            # (the load generator acks each one, batched per read), no authentication.
            for_each_write_path fanout-1k-qos1 "${FANOUT_1K[@]}" --duration "$DURATION" --qos 1 ;;
        guarantees)
            # The three back to back, ROUNDS times interleaved; the summary compares each one's
            # server CPU per delivery with plain fanout-1k (medians over the rounds).
            local g
            for _ in $(seq "$ROUNDS"); do
                for g in fanout-1k fanout-1k-auth fanout-1k-qos1; do run_scenario "$g"; done
            done
            ;;
        fanout-10k | many-topics | latency | latency-light)
            scenario_load "$1"
            for_each_server "$1" "${LOAD[@]}" --duration "$DURATION" ;;
        churn) for_each_server churn --conns 1000 --topics 1 --payload 64 --rate 200 --duration 60 \
            --churn-rate 100 --churn-topics 20 ;;
        scaling)
            # Split the machine: the first half of the cores (from 1) to the gateway in steps of
            # 1, 2, 4, …; the load generator gets core 0 and the remaining cores. On a 2-core
            # machine this is the single step 1 (gateway on core 1, load on core 0).
            local max=$(( NCPU / 2 )); [[ $max -ge 1 ]] || max=1
            local n=1
            while [[ $n -le $max ]]; do
                local g="1-$n" l="0,$((n + 1))-$((NCPU - 1))"
                [[ $((n + 1)) -gt $((NCPU - 1)) ]] && l="0"
                for wp in $WRITE_PATHS; do
                    bench "scaling-$n" subsocket "$wp" "$g" "$l" --conns $((1000 * n)) --topics 1 --payload 64 \
                        --window 32 --duration "$DURATION"
                done
                n=$((n * 2))
            done
            ;;
        floor-1k | floor-10k)
            # No gateway: the server side is subsocket-floor's own thread on the gateway core.
            local n=1000; [[ $1 == floor-10k ]] && n=10000
            echo "--- $1 (write floor, server core $GATEWAY_CORE, readers on core $LOAD_CORE)" >&2
            "$FLOOR" --scenario "$1" --conns "$n" --frames-per-write 32 --payload 64 \
                --seconds "$DURATION" --server-core "$GATEWAY_CORE" --client-core "$LOAD_CORE" >>"$THIS_RUN" ;;
        write-floor)
            local r
            for r in $(seq "$ROUNDS"); do
                for g in floor-1k fanout-1k floor-10k fanout-10k; do run_scenario "$g"; done
            done
            ;;
        deflate)
            # Issue 15: the same closed-loop fan-out (1,000 subscribers of one topic, window 32)
            # with realistic payloads, compression off and on. subsocket compresses once per
            # publish ([deflate] is on by default; off means the subscribers do not offer it);
            # bun gets `perMessageDeflate` and publishes with compress=true only in the "on" runs.
            local r size
            for r in $(seq "$ROUNDS"); do
                for size in ${PAYLOADS:-64 1024 16384}; do
                    for_each_server "deflate-${size}B-off" --conns 1000 --topics 1 --payload "$size" \
                        --payload-kind ticks --window 32 --duration "$DURATION"
                    BUN_ARGS=(--deflate)
                    for_each_server "deflate-${size}B-on" --conns 1000 --topics 1 --payload "$size" \
                        --payload-kind ticks --window 32 --duration "$DURATION" --deflate
                    BUN_ARGS=()
                done
            done
            ;;
        sse)
            # Issue 15: what an event stream costs against a WebSocket subscriber, per delivery.
            local r size
            for r in $(seq "$ROUNDS"); do
                for size in ${PAYLOADS:-64 1024}; do
                    for_each_write_path "sse-${size}B-ws" --conns 1000 --topics 1 --payload "$size" \
                        --payload-kind ticks --window 32 --duration "$DURATION"
                    for_each_write_path "sse-${size}B-sse" --conns 1000 --topics 1 --payload "$size" \
                        --payload-kind ticks --window 32 --duration "$DURATION" --sse
                done
            done
            ;;
        burst)
            # Issue 13: healthy and stalled subscribers under bursts, per slow-consumer policy
            # (its own harness: scripts/bench-burst.sh, POLICIES/PAYLOADS/BURSTS there).
            scripts/bench-burst.sh ;;
        all) for s in fanout-1k fanout-10k latency latency-light many-topics churn; do run_scenario "$s"; done ;;
        *) echo "unknown scenario: $1" >&2; exit 2 ;;
    esac
}

for s in "$@"; do run_scenario "$s"; done

cat "$THIS_RUN" >>"$RESULTS"
python3 - "$THIS_RUN" <<'EOF' | tee "$OUT/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def f(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)
print("| scenario | server | deliveries/s | server ns/delivery | deliveries/write | server util | client util | p50 us | p99 us | p99.9 us | max us | lost | gaps | reordered | subs/s | RSS/sub B | bottleneck |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l = r["latency_us"]
    print(f"| {r['scenario']} | {r['server']} | {f(r['deliveries_per_s'])} | {f(r['server_cpu_ns_per_delivery'])} | "
          f"{f(r.get('deliveries_per_write'), '{:.1f}')} | "
          f"{f(r['server_cpu_util'], '{:.2f}')} | {f(r['client_cpu_util'], '{:.2f}')} | {f(l['p50'])} | {f(l['p99'])} | "
          f"{f(l['p999'])} | {f(l['max'])} | {r['lost']} | {r['gaps']} | {r['reordered']} | {f(r['subscriptions_per_s'])} | "
          f"{f(r['rss_per_subscription_bytes'])} | {r['bottleneck']} |")

# Guarantees cost: server CPU per delivery of fanout-1k with auth / with QoS 1, relative to plain
# fanout-1k on the same server (median over this invocation's rounds). The issue's bar: auth on
# with QoS 0 topics may raise the cost per delivery by at most 5 %; QoS 1 is reported apart.
from statistics import median
GUAR = ["fanout-1k", "fanout-1k-auth", "fanout-1k-qos1"]
by = {}
for r in rows:
    if r["scenario"] in GUAR and r.get("server_cpu_ns_per_delivery") is not None:
        by.setdefault((r["server"], r["scenario"]), []).append(r)
if any(s != "fanout-1k" for (_, s) in by):
    print()
    print("Guarantees cost (server CPU per delivery relative to fanout-1k, median of runs):")
    print()
    print("| scenario | server | runs | server ns/delivery | vs fanout-1k | deliveries/s | lost | gaps | reordered | acks sent | redelivered | gateway qos1Acks | gateway qos1Unacked | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for server in sorted({k[0] for k in by}):
        base = by.get((server, "fanout-1k"))
        base_ns = median(r["server_cpu_ns_per_delivery"] for r in base) if base else None
        for scen in GUAR:
            rs = by.get((server, scen))
            if not rs:
                continue
            ns = median(r["server_cpu_ns_per_delivery"] for r in rs)
            rel = ns / base_ns if base_ns else None
            st = [r.get("stats_end") or {} for r in rs]
            if scen == "fanout-1k":
                verdict = "baseline"
            elif rel is None:
                verdict = "no fanout-1k baseline in this invocation"
            elif scen == "fanout-1k-auth":
                verdict = "ok (<= +5 %)" if rel <= 1.05 else "OVER +5 %"
            else:
                verdict = "reported (no bar)"
            def tot(key):
                return sum(r.get(key) or 0 for r in rs)
            if tot("lost") or tot("gaps") or tot("reordered"):
                verdict = "DELIVERY PROBLEMS; " + verdict
            def stat(key):
                vals = [s.get(key) for s in st if s.get(key) is not None]
                return "-" if not vals else str(sum(vals))
            print(f"| {scen} | {server} | {len(rs)} | {ns:.0f} | {'-' if rel is None else f'{rel:.3f}'} | "
                  f"{median(r['deliveries_per_s'] for r in rs):.0f} | {tot('lost')} | {tot('gaps')} | {tot('reordered')} | "
                  f"{tot('acks_sent')} | {tot('redelivered')} | {stat('qos1Acks')} | {stat('qos1Unacked')} | {verdict} |")
EOF

# Issue 14: each server against the write floor and against bun, medians of this invocation.
python3 - "$THIS_RUN" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(scen, server, key):
    v = [r[key] for r in rows if r["scenario"] == scen and r["server"] == server and r.get(key) is not None]
    return median(v) if v else None
out = []
for n in ("1k", "10k"):
    floor = med(f"floor-{n}", "floor", "server_cpu_ns_per_delivery")
    bun = med(f"fanout-{n}", "bun", "server_cpu_ns_per_delivery")
    bun_dps = med(f"fanout-{n}", "bun", "deliveries_per_s")
    for server in sorted({r["server"] for r in rows if r["scenario"] == f"fanout-{n}"}):
        ns = med(f"fanout-{n}", server, "server_cpu_ns_per_delivery")
        dps = med(f"fanout-{n}", server, "deliveries_per_s")
        dpw = med(f"fanout-{n}", server, "deliveries_per_write")
        runs = sum(1 for r in rows if r["scenario"] == f"fanout-{n}" and r["server"] == server)
        r = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}"
        out.append(f"| fanout-{n} | {server} | {runs} | {'-' if ns is None else f'{ns:.0f}'} | "
                   f"{'-' if floor is None else f'{floor:.0f}'} | {r(ns, floor)} | {r(ns, bun)} | "
                   f"{r(dps, bun_dps)} | {'-' if dpw is None else f'{dpw:.1f}'} |")
if out:
    print()
    print("Write floor (issue 14; medians of this invocation; targets: <= 1.3x the floor, <= 0.7x bun's CPU, >= 1.2x bun's deliveries/s on fanout-10k, >= 28 deliveries/write):")
    print()
    print("| scenario | server | runs | server ns/delivery | floor ns/frame | vs floor | vs bun (CPU) | vs bun (deliveries/s) | deliveries/write |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(out))
EOF

# Issue 15: compression on vs off, per server and payload size (medians of this invocation).
python3 - "$THIS_RUN" <<'EOF' | tee -a "$OUT/summary.md"
import json, re, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    m = re.fullmatch(r"deflate-(\d+)B-(on|off)", r["scenario"])
    if m:
        groups.setdefault((int(m.group(1)), r["server"], m.group(2)), []).append(r)
if groups:
    def med(rs, key):
        v = [r[key] for r in rs if r.get(key) is not None]
        return median(v) if v else None
    print()
    print("permessage-deflate (issue 15; medians; targets for 1 KiB: >= 3x fewer bytes on the wire, server CPU per delivery <= 1.2x off):")
    print()
    print("| payload | server | runs | wire B/delivery off | on | off/on | server ns/delivery off | on | on/off | deliveries/s off | on | lost | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, server in sorted({(k[0], k[1]) for k in groups}):
        off, on = groups.get((size, server, "off"), []), groups.get((size, server, "on"), [])
        wb_off, wb_on = med(off, "wire_bytes_per_delivery"), med(on, "wire_bytes_per_delivery")
        ns_off, ns_on = med(off, "server_cpu_ns_per_delivery"), med(on, "server_cpu_ns_per_delivery")
        ratio_b = wb_off / wb_on if wb_off and wb_on else None
        ratio_c = ns_on / ns_off if ns_off and ns_on else None
        lost = sum((r.get("lost") or 0) + (r.get("gaps") or 0) for r in off + on)
        verdict = "-"
        if size == 1024 and ratio_b and ratio_c:
            verdict = ("bytes ok" if ratio_b >= 3 else "bytes UNDER 3x") + ", " + ("CPU ok" if ratio_c <= 1.2 else "CPU OVER 1.2x")
        if lost:
            verdict = "DELIVERY PROBLEMS; " + verdict
        f = lambda v, fmt="{:.0f}": "-" if v is None else fmt.format(v)
        print(f"| {size} B | {server} | {len(off)}+{len(on)} | {f(wb_off)} | {f(wb_on)} | {f(ratio_b, '{:.2f}')} | "
              f"{f(ns_off)} | {f(ns_on)} | {f(ratio_c, '{:.2f}')} | {f(med(off, 'deliveries_per_s'))} | "
              f"{f(med(on, 'deliveries_per_s'))} | {lost} | {verdict} |")
EOF

# Issue 15: an event stream against a WebSocket subscriber (medians of this invocation).
python3 - "$THIS_RUN" <<'EOF' | tee -a "$OUT/summary.md"
import json, re, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    m = re.fullmatch(r"sse-(\d+)B-(ws|sse)", r["scenario"])
    if m:
        groups.setdefault((int(m.group(1)), r["server"], m.group(2)), []).append(r)
if groups:
    def med(rs, key):
        v = [r[key] for r in rs if r.get(key) is not None]
        return median(v) if v else None
    f = lambda v, fmt="{:.0f}": "-" if v is None else fmt.format(v)
    print()
    print("Server-Sent Events vs WebSocket subscribers (issue 15; medians):")
    print()
    print("| payload | server | runs | server ns/delivery ws | sse | sse/ws | deliveries/s ws | sse | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, server in sorted({(k[0], k[1]) for k in groups}):
        ws, sse = groups.get((size, server, "ws"), []), groups.get((size, server, "sse"), [])
        a, b = med(ws, "server_cpu_ns_per_delivery"), med(sse, "server_cpu_ns_per_delivery")
        lost = sum((r.get("lost") or 0) + (r.get("gaps") or 0) for r in ws + sse)
        print(f"| {size} B | {server} | {len(ws)}+{len(sse)} | {f(a)} | {f(b)} | {f(b / a if a and b else None, '{:.2f}')} | "
              f"{f(med(ws, 'deliveries_per_s'))} | {f(med(sse, 'deliveries_per_s'))} | {lost} |")
EOF

# PNG charts of this invocation's runs (latency CDF, deliveries/s timeline, server comparison).
target/release/subsocket-plot --input "$THIS_RUN" --out target/bench/plots ||
    echo "!!! subsocket-plot failed; the results are in $THIS_RUN" >&2
