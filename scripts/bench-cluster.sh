#!/usr/bin/env bash
# Cluster benchmark: what the NATS backbone costs, on this machine.
#
#   scripts/bench-cluster.sh                         # every mode x every shape, DURATION=10
#   DURATION=5 ROUNDS=2 scripts/bench-cluster.sh
#   MODES="local cross" SHAPES="fanout-1k-16t" scripts/bench-cluster.sh
#   STORAGE=file scripts/bench-cluster.sh            # JetStream file storage (default: memory)
#   BUILD=0 QUIET_WAIT=0 NATS_CORE=1 ...             # no cargo build, no idle wait, NATS pinned
#
# Modes (a fresh NATS server and fresh gateway processes for every run):
#   single  one gateway, no backbone; subscribers and publisher on it (the baseline)
#   local   NATS + node A (--backbone); subscribers and publisher on A (the JetStream round trip)
#   cross   NATS + nodes A and B; publisher on A, subscribers on B (cross-node fan-out)
# Shapes (subsocket-bench arguments, payload 64 B):
#   latency        open loop 1000 msg/s, 1000 subscribers of 1 topic (1M deliveries/s)
#   latency-light  open loop  100 msg/s, 1000 subscribers of 1 topic
#   fanout-1k      closed loop (window 32), 1000 subscribers of 1 topic
#   fanout-1k-16t  closed loop (window 64), 1000 subscribers over 16 topics (1 each): JetStream
#                  stores one topic's messages one round trip at a time, so 16 topics in parallel
#   msgs-16t       closed loop (window 64), 160 subscribers over 16 topics: little fan-out, so the
#                  message rate is bound by the backbone, not by deliveries
# Placement: gateway node(s) pinned to GATEWAY_CORE (0; in `cross` A and B share it), the load
# generator to LOAD_CORE (1), NATS unpinned unless NATS_CORE is set (its CPU per core is reported).
# Results: one JSON line per run (the load generator's line plus a "cluster" object: CPU of each
# node and of NATS over the measured window, backbone counters, sampled store round trips)
# appended to target/bench/results.jsonl (scenarios cluster-single-*, cluster-local-*,
# cluster-cross-*), and a Markdown table printed (and written to target/bench/cluster-summary.md).
# Bounded: every run has a hard time cap; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-1}"
STORAGE="${STORAGE:-memory}"
MODES="${MODES:-single local cross}"
SHAPES="${SHAPES:-latency latency-light fanout-1k fanout-1k-16t msgs-16t}"
GATEWAY_CORE="${GATEWAY_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"
NATS_CORE="${NATS_CORE:-}"
BUILD="${BUILD:-1}"
# Before each run wait (at most this many seconds) for the host to be idle (< 15 % busy over
# 1 s): other processes on a 2-core machine distort everything. Each result says how much CPU
# others took during its window ("other CPU %").
QUIET_WAIT="${QUIET_WAIT:-20}"
case $STORAGE in memory | file) ;; *) echo "STORAGE must be memory or file" >&2; exit 2 ;; esac
[[ $# -eq 0 ]] || { sed -n '2,28p' "$0"; exit 2; }

OUT=target/bench
WORK="$OUT/cluster"
mkdir -p "$WORK"
RESULTS="$OUT/results.jsonl"
RUN_ID="cluster-$(date +%s)"
THIS_RUN="$OUT/$RUN_ID.jsonl"
: >"$THIS_RUN"

if [[ $BUILD == 1 ]]; then cargo build --profile ci -p subsocket -p subsocket-bench --bins -q; fi
# A private copy of the binaries: a rebuild of target/ci during the run (other work in the same
# checkout) cannot swap them between runs. Which source they came from goes into every result.
mkdir -p "$WORK/bin"
cp target/ci/subsocket target/ci/subsocket-bench "$WORK/bin/"
BIN="$WORK/bin/subsocket"
BENCH="$WORK/bin/subsocket-bench"
BUILD_INFO="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+uncommitted') binary $(sha256sum "$BIN" | cut -c1-12)"
NATS_BIN=""
if [[ " $MODES " == *" local "* || " $MODES " == *" cross "* ]]; then NATS_BIN=$(scripts/nats.sh path); fi

# ---- processes: every one started here is in PIDS and stopped by stop_all (and on exit) ----
PIDS=()
STORE_DIR=""
stop_all() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ -n $STORE_DIR ]]; then rm -rf "$STORE_DIR"; STORE_DIR=""; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# A free TCP port below the ephemeral range (so no client socket holds it).
free_port() {
    python3 -c '
import random, socket
while True:
    p = random.randint(10000, 30000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError:
        s.close()'
}

# start_nats -> NATS_PID, NATS_PORT, NATS_MON
start_nats() {
    NATS_PORT=$(free_port)
    NATS_MON=$(free_port)
    STORE_DIR="$WORK/js-$RUN_ID-$$"
    rm -rf "$STORE_DIR"
    mkdir -p "$STORE_DIR"
    local pin=()
    [[ -z $NATS_CORE ]] || pin=(taskset -c "$NATS_CORE")
    ${pin[@]+"${pin[@]}"} "$NATS_BIN" -js -sd "$STORE_DIR" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" \
        >"$WORK/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    for _ in $(seq 100); do
        if curl -sf "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" >/dev/null 2>&1; then return 0; fi
        kill -0 "$NATS_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/nats.log" >&2
    echo "nats-server did not start" >&2
    exit 1
}

# start_node NAME [cluster] -> NODE_PID, NODE_PORT
start_node() {
    local name=$1 cluster=${2:-} log="$WORK/node-$1.log"
    NODE_PORT=$(free_port)
    local extra=()
    if [[ -n $cluster ]]; then
        local cfg="$WORK/node-$name.toml"
        printf '[cluster]\nbackbone = "nats://127.0.0.1:%s"\nstorage = "%s"\n' "$NATS_PORT" "$STORAGE" >"$cfg"
        extra=(-c "$cfg" --backbone "nats://127.0.0.1:$NATS_PORT" --node-name "$name")
    fi
    taskset -c "$GATEWAY_CORE" "$BIN" ${extra[@]+"${extra[@]}"} --bind "127.0.0.1:$NODE_PORT" \
        --cores "$GATEWAY_CORE," --max-backlog-bytes 8388608 --log warn >"$log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    local ok=""
    for _ in $(seq 150); do
        if grep -q "listening on" "$log" 2>/dev/null; then
            if [[ -z $cluster ]]; then ok=1; break; fi
            if curl -sf "http://127.0.0.1:$NODE_PORT/stats" 2>/dev/null | grep -q '"connected":true'; then ok=1; break; fi
        fi
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $ok ]]; then
        cat "$log" >&2
        echo "node $name did not start (or its backbone did not connect)" >&2
        exit 1
    fi
}

# The per-run driver: runs the load generator, snapshots the CPU of every process and the nodes'
# /stats at the first and the last progress line of the measured phase (so CPU, messages and
# deliveries cover the same window), samples the backbone's storeUs / receiveLagUs every 200 ms
# in that window, and appends the load generator's JSON line plus a "cluster" object.
read -r -d '' DRIVER <<'PYEOF' || true
import json, os, re, subprocess, sys, threading, time, urllib.request

a = json.loads(sys.argv[1])
cmd = sys.argv[2:]
HZ = os.sysconf("SC_CLK_TCK")
procs = a["procs"]            # name -> pid (nodes and nats)
nodes = a["nodes"]            # name -> port
pub_node, sub_node = a["pub_node"], a["sub_node"]

def cpu_s(pid):
    try:
        f = open(f"/proc/{pid}/stat").read()
        f = f[f.rfind(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / HZ
    except Exception:
        return None

def threads(pid):
    """tid -> (cpu seconds, core it last ran on)."""
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                f = open(f"/proc/{pid}/task/{tid}/stat").read()
                f = f[f.rfind(")") + 2:].split()
                out[tid] = ((int(f[11]) + int(f[12])) / HZ, int(f[36]))
            except Exception:
                pass
    except Exception:
        pass
    return out

def stats(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None

def host_cpu():
    """cpu line of /proc/stat -> (busy seconds, total seconds) over all cores, and per core."""
    out = {}
    for line in open("/proc/stat"):
        if not line.startswith("cpu"):
            break
        f = line.split()
        v = [int(x) for x in f[1:9]]
        total = sum(v)
        out[f[0]] = ((total - v[3] - v[4]) / HZ, total / HZ)
    return out

def snap():
    s = {"t": time.monotonic(), "cpu": {n: cpu_s(p) for n, p in procs.items()}, "stats": {},
         "host": host_cpu(), "client": cpu_s(bench.pid)}
    for n, port in nodes.items():
        v = stats(port) or {}
        s["stats"][n] = {"backbone": v.get("backbone") or {},
                         **{k: v.get(k) for k in ("deliveries", "writes", "bytesOut", "publishesIn")}}
    return s

# Timestamped, so that only what falls inside the measured window counts.
samples = []      # (t, "storeUs" | "receiveLagUs", value)
nats_core = []    # (t, core, NATS CPU seconds spent since the previous sample on that core)
active = threading.Event()
done = threading.Event()

def sampler():
    nats_pid = procs.get("nats")
    prev = threads(nats_pid) if nats_pid else {}
    while not done.wait(0.2):
        if not active.is_set():
            prev = threads(nats_pid) if nats_pid else {}
            continue
        got = {}
        for node in dict.fromkeys((pub_node, sub_node)):
            v = stats(nodes[node]) if nodes.get(node) else None
            got[node] = (v or {}).get("backbone") or {}
        t = time.monotonic()
        for key, node in (("storeUs", pub_node), ("receiveLagUs", sub_node), ("pendingPublishes", pub_node)):
            if got[node] and got[node].get(key) is not None and (got[node][key] or key == "pendingPublishes"):
                samples.append((t, key, got[node][key]))
        if nats_pid:
            cur = threads(nats_pid)
            t = time.monotonic()
            for tid, (c, core) in cur.items():
                d = c - prev.get(tid, (c, core))[0]
                if d > 0:
                    nats_core.append((t, core, d))
            prev = cur

th = threading.Thread(target=sampler, daemon=True)
th.start()
prog = re.compile(r"t=\s*([\d.]+)s\s+(\d+) deliveries/s\s+published (\d+)")
first = last = None
window_deliveries = 0
log = open(a["log"], "w")
bench = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
for line in bench.stderr:
    log.write(line)
    m = prog.search(line)
    if m:
        s = snap()
        s["published"] = int(m.group(3))
        if first is None:
            first = s
            active.set()
        else:
            window_deliveries += int(m.group(2))
            last = s
    elif not line.startswith("  connecting") and not line.startswith("  subscribing"):
        sys.stderr.write("    " + line)
rc = bench.wait()
active.clear()
done.set()
th.join()

res = {}
try:
    with open(a["bench_json"]) as f:
        lines = [l for l in f if l.strip()]
    res = json.loads(lines[-1]) if lines else {}
except FileNotFoundError:
    pass
res.setdefault("scenario", a["scenario"])

def pct(v, q):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]

c = {"mode": a["mode"], "shape": a["shape"], "build": a["build"], "storage": a["storage"] if a["mode"] != "single" else None,
     "gateway_core": a["gateway_core"], "load_core": a["load_core"], "nats_core": a["nats_core"] or "unpinned",
     "pub_node": pub_node, "sub_node": sub_node, "bench_rc": rc}
if first and last and last["t"] > first["t"]:
    w = last["t"] - first["t"]
    msgs = last["published"] - first["published"]
    c["window_s"] = w
    c["msgs_per_s"] = msgs / w
    c["deliveries_per_s"] = window_deliveries / w
    c["cpu_util"], c["cpu_us_per_msg"] = {}, {}
    for n in procs:
        a0, a1 = first["cpu"].get(n), last["cpu"].get(n)
        if a0 is not None and a1 is not None:
            c["cpu_util"][n] = (a1 - a0) / w
            c["cpu_us_per_msg"][n] = (a1 - a0) * 1e6 / msgs if msgs else None
    node_names = [n for n in procs if n != "nats"]
    c["gateway_core_util"] = sum(c["cpu_util"].get(n, 0) for n in node_names)
    c["gateway_us_per_msg"] = (sum(c["cpu_us_per_msg"].get(n) or 0 for n in node_names) if msgs else None)
    c["nats_util"] = c["cpu_util"].get("nats")
    c["nats_us_per_msg"] = c["cpu_us_per_msg"].get("nats")
    inside = lambda t: first["t"] < t <= last["t"]
    per_core = {}
    for t, core, d in nats_core:
        if inside(t):
            per_core[core] = per_core.get(core, 0.0) + d
    # Where NATS ran (a thread's time since the previous 200 ms sample goes to the core it is
    # on at the sample): an approximation, scaled to the process's own CPU over the window.
    tot = sum(per_core.values())
    nu_w = c["nats_util"] or 0
    # The whole host over the window: busy cores, and what processes not ours took (builds,
    # other benchmarks): noise to keep in mind when it is not near 0.
    h0, h1 = first["host"], last["host"]
    c["host_busy_by_core"] = {k[3:]: (h1[k][0] - h0[k][0]) / w for k in h1 if k != "cpu" and k in h0}
    host_busy = (h1["cpu"][0] - h0["cpu"][0]) / w
    c["host_busy"] = host_busy
    ours = sum(c["cpu_util"].values())
    if first["client"] is not None and last["client"] is not None:
        ours += (last["client"] - first["client"]) / w
    c["other_util"] = max(0.0, host_busy - ours)
    c["nats_util_by_core"] = {str(k): (v / tot) * nu_w for k, v in sorted(per_core.items())} if tot else {}
    store = [v for t, k, v in samples if k == "storeUs" and inside(t)]
    lag = [v for t, k, v in samples if k == "receiveLagUs" and inside(t)]
    bb = {}
    for n in nodes:
        b0, b1 = first["stats"][n]["backbone"], last["stats"][n]["backbone"]
        if b1:
            # Counters: their increase over the window; gauges: the last value.
            gauges = {"pendingPublishes", "oldestPendingMs", "subscriptions", "receiveLagUs", "storeUs"}
            bb[n] = {k: (v if k in gauges else v - b0.get(k, 0)) for k, v in b1.items()
                     if isinstance(v, int) and not isinstance(v, bool)}
    c["backbone"] = bb
    # Each node's own counters over the window; deliveries per write = how many frames one
    # write to a subscriber carried on average (batching of the fan-out).
    c["node_counters"] = {}
    for n in nodes:
        s0, s1 = first["stats"][n], last["stats"][n]
        d = {k: s1[k] - s0[k] for k in ("deliveries", "writes", "bytesOut", "publishesIn")
             if isinstance(s1.get(k), int) and isinstance(s0.get(k), int)}
        if d.get("writes"):
            d["deliveries_per_write"] = d.get("deliveries", 0) / d["writes"]
        c["node_counters"][n] = d
    c["store_us"] = {"p50": pct(store, 0.5), "p90": pct(store, 0.9), "max": max(store, default=None),
                     "samples": len(store)}
    c["receive_lag_us"] = {"p50": pct(lag, 0.5), "max": max(lag, default=None), "samples": len(lag)}
    pend = [v for t, k, v in samples if k == "pendingPublishes" and inside(t)]
    c["pending_publishes"] = {"p50": pct(pend, 0.5), "max": max(pend, default=None), "samples": len(pend)}
    # What bounds this run. A core counts as saturated at >= 90 % busy (the host's own per-core
    # accounting); what ran there is named (NATS's share of each core is an approximation).
    gw, cl, nu = c["gateway_core_util"], res.get("client_cpu_util") or 0, c["nats_util"] or 0
    nats_on = lambda core: c["nats_util_by_core"].get(str(core), 0.0)
    busy_g = c["host_busy_by_core"].get(str(a["gateway_core"]), 0.0)
    busy_l = c["host_busy_by_core"].get(str(a["load_core"]), 0.0)
    why = []
    if busy_g >= 0.9:
        who = "A+B" if len(node_names) > 1 else "gateway"
        extra = f", NATS {100 * nats_on(a['gateway_core']):.0f}%" if nats_on(a["gateway_core"]) >= 0.05 else ""
        why.append(f"gateway core {a['gateway_core']} saturated ({100 * busy_g:.0f}% busy: {who} {100 * gw:.0f}%{extra})")
    if busy_l >= 0.9:
        extra = f", NATS {100 * nats_on(a['load_core']):.0f}%" if nats_on(a["load_core"]) >= 0.05 else ""
        why.append(f"load generator core {a['load_core']} saturated ({100 * busy_l:.0f}% busy: load generator {100 * cl:.0f}%{extra})")
    if res.get("rate", 0) > 0 and c["msgs_per_s"] < 0.95 * res["rate"]:
        why.append(f"open loop fell behind ({c['msgs_per_s']:.0f} of {res['rate']:.0f} msg/s)")
    # Closed loop: where do the window's messages wait? In the publishing node's queue for
    # JetStream (pendingPublishes: the store path, one store round trip, or atomic batch, at a
    # time per topic) or in the fan-out.
    pe = c["pending_publishes"]["p50"]
    win = res.get("window") or 0
    if a["mode"] != "single" and res.get("rate", 0) == 0 and pe is not None and win:
        where = "JetStream store path" if pe >= 0.5 * win else "store path"
        why.append(f"{where}: {pe} of the window's {win} messages typically waiting for a store "
                   f"(store RTT p50 {c['store_us']['p50']}us, NATS {100 * nu:.0f}% CPU)")
    if not why:
        if res.get("rate", 0) > 0:
            why.append(f"none saturated (open loop {res['rate']:.0f} msg/s; cores {100 * busy_g:.0f}%/{100 * busy_l:.0f}% busy)")
        else:
            why.append(f"none saturated (cores {100 * busy_g:.0f}%/{100 * busy_l:.0f}% busy): closed-loop window x end-to-end latency")
    elif all(w.startswith("store path") for w in why):
        why.insert(0, f"none saturated (cores {100 * busy_g:.0f}%/{100 * busy_l:.0f}% busy): closed-loop window x end-to-end latency")
    if c["other_util"] >= 0.25:
        why.insert(0, f"HOST CONTENDED: other processes took {100 * c['other_util']:.0f}% of a core")
    c["bottleneck"] = "; ".join(why)
else:
    c["error"] = "no measured window (the load generator failed early?)"
res["cluster"] = c
with open(a["out"], "a") as f:
    f.write(json.dumps(res) + "\n")
if rc != 0:
    print(f"!!! {a['scenario']}: load generator exit {rc} (see {a['log']})", file=sys.stderr)
PYEOF

# shape_args SHAPE -> ARGS
shape_args() {
    local common=(--payload 64 --duration "$DURATION")
    case $1 in
        latency) ARGS=(--conns 1000 --topics 1 --rate 1000 "${common[@]}") ;;
        latency-light) ARGS=(--conns 1000 --topics 1 --rate 100 "${common[@]}") ;;
        fanout-1k) ARGS=(--conns 1000 --topics 1 --rate 0 --window 32 "${common[@]}") ;;
        fanout-1k-16t) ARGS=(--conns 1000 --topics 16 --topics-per-conn 1 --rate 0 --window 64 "${common[@]}") ;;
        msgs-16t) ARGS=(--conns 160 --topics 16 --topics-per-conn 1 --rate 0 --window 64 "${common[@]}") ;;
        *) echo "unknown shape: $1" >&2; exit 2 ;;
    esac
}

# Waits (at most QUIET_WAIT s) until the host is under 15 % busy over one second.
wait_quiet() {
    local end=$((SECONDS + QUIET_WAIT)) a b busy total
    while ((SECONDS < end)); do
        read -ra a </proc/stat
        sleep 1
        read -ra b </proc/stat
        busy=$(( (b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8]) ))
        total=$(( busy + (b[4] + b[5]) - (a[4] + a[5]) ))
        ((total > 0 && busy * 100 / total < 15)) && return 0
    done
    echo "    (host still busy after ${QUIET_WAIT}s: running anyway; see \"other CPU %\")" >&2
}

# run_one MODE SHAPE
run_one() {
    local mode=$1 shape=$2 scenario label
    shape_args "$shape"
    wait_quiet
    local procs nodes pub sub sub_pid
    case $mode in
        single)
            start_node a
            procs="{\"a\": $NODE_PID}"; nodes="{\"a\": $NODE_PORT}"
            pub=a; sub=a; PUB_PORT=$NODE_PORT; SUB_PORT=$NODE_PORT; sub_pid=$NODE_PID
            label=subsocket
            ;;
        local)
            start_nats
            start_node a cluster
            procs="{\"a\": $NODE_PID, \"nats\": $NATS_PID}"; nodes="{\"a\": $NODE_PORT}"
            pub=a; sub=a; PUB_PORT=$NODE_PORT; SUB_PORT=$NODE_PORT; sub_pid=$NODE_PID
            label="subsocket+nats-$STORAGE"
            ;;
        cross)
            start_nats
            start_node a cluster
            local a_pid=$NODE_PID a_port=$NODE_PORT
            start_node b cluster
            procs="{\"a\": $a_pid, \"b\": $NODE_PID, \"nats\": $NATS_PID}"
            nodes="{\"a\": $a_port, \"b\": $NODE_PORT}"
            pub=a; sub=b; PUB_PORT=$a_port; SUB_PORT=$NODE_PORT; sub_pid=$NODE_PID
            label="subsocket+nats-$STORAGE"
            ;;
        *) echo "unknown mode: $mode (single, local, cross)" >&2; exit 2 ;;
    esac
    scenario="cluster-$mode-$shape"
    echo "--- $scenario (nodes on core $GATEWAY_CORE, load generator on core $LOAD_CORE, NATS ${NATS_CORE:-unpinned}, storage $STORAGE)" >&2
    local bench_json="$WORK/bench-last.jsonl"
    rm -f "$bench_json"
    local meta
    meta=$(printf '{"procs": %s, "nodes": %s, "pub_node": "%s", "sub_node": "%s", "mode": "%s", "shape": "%s", "storage": "%s", "gateway_core": "%s", "load_core": "%s", "nats_core": "%s", "scenario": "%s", "bench_json": "%s", "out": "%s", "log": "%s", "build": "%s"}' \
        "$procs" "$nodes" "$pub" "$sub" "$mode" "$shape" "$STORAGE" "$GATEWAY_CORE" "$LOAD_CORE" "$NATS_CORE" \
        "$scenario" "$bench_json" "$THIS_RUN" "$WORK/bench-$scenario.log" "$BUILD_INFO")
    timeout $((DURATION + 150)) python3 -c "$DRIVER" "$meta" \
        taskset -c "$LOAD_CORE" "$BENCH" --target "127.0.0.1:$SUB_PORT" --publish-target "127.0.0.1:$PUB_PORT" \
        --pid "$sub_pid" --scenario "$scenario" --server "$label" --json "$bench_json" \
        --max-seconds $((DURATION + 60)) --phase-seconds 30 --progress "${ARGS[@]}" ||
        echo "!!! $scenario: driver exit $?" >&2
    stop_all
}

echo "JetStream storage: $STORAGE$([[ $STORAGE == memory ]] && echo ' (STORAGE=file for file storage)'); duration $DURATION s x $ROUNDS round(s); build $BUILD_INFO" >&2
for _ in $(seq "$ROUNDS"); do
    for shape in $SHAPES; do
        for mode in $MODES; do run_one "$mode" "$shape"; done
    done
done

cat "$THIS_RUN" >>"$RESULTS"
python3 - "$THIS_RUN" "$STORAGE" "$GATEWAY_CORE" "$LOAD_CORE" "${NATS_CORE:-unpinned}" "$BUILD_INFO" <<'EOF' | tee "$OUT/cluster-summary.md"
import json, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
storage, gcore, lcore, ncore, build = sys.argv[2:7]
def f(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)
def pc(v):
    return "-" if v is None else f"{100 * v:.0f}"
print(f"Build {build}. JetStream storage: **{storage}**. Gateway node(s) pinned to core {gcore} (in cross-node A and B share it), "
      f"load generator on core {lcore}, NATS {ncore} (its CPU per core in brackets). Latency: publish "
      "timestamp (in the payload) to delivery, at the load generator. CPU over the measured window (100 % = one core); "
      "other CPU % = host CPU not used by the nodes, NATS or the load generator (noise from other processes). "
      "Store RTT: the publishing node's /stats storeUs (JetStream store round trip of the last publish) sampled every 200 ms; "
      "pend: its pendingPublishes (publishes waiting for JetStream), median of the samples. "
      "deliv/write: deliveries per socket write on the subscribers' node (fan-out batching).")
print()
print("| scenario | msgs/s published | deliveries/s | p50 us | p99 us | max us | gateway CPU % (A/B) | NATS CPU % | load gen CPU % | other CPU % | store RTT us p50/max (pend) | gw us/msg | NATS us/msg | deliv/write | backbone pub/recv (batches, gapFilled) | lost/gaps | bottleneck |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    c = r.get("cluster", {})
    l = r.get("latency_us") or {}
    if "error" in c:
        print(f"| {r['scenario']} | {c['error']} |" + " |" * 16)
        continue
    u = c.get("cpu_util", {})
    ab = "/".join(pc(u.get(n)) for n in ("a", "b") if n in u)
    gw = pc(c.get("gateway_core_util")) + (f" ({ab})" if "b" in u else "")
    by = c.get("nats_util_by_core") or {}
    nats = "-" if c.get("nats_util") is None else pc(c["nats_util"]) + " [" + ", ".join(f"c{k}:{100 * v:.0f}" for k, v in by.items()) + "]"
    st = c.get("store_us") or {}
    pe = (c.get("pending_publishes") or {}).get("p50")
    store = "-" if st.get("p50") is None else f"{st['p50']}/{st['max']}" + ("" if pe is None else f" ({pe})")
    bb = c.get("backbone") or {}
    pubn, subn = c.get("pub_node"), c.get("sub_node")
    bp, bs = bb.get(pubn, {}), bb.get(subn, {})
    dpw = f((c.get("node_counters", {}).get(subn) or {}).get("deliveries_per_write"), "{:.2f}")
    bbs = "-" if not bb else (f"{bp.get('published', '-')}/{bs.get('received', '-')} "
                              f"({bp.get('batches', '-')}, {bs.get('gapFilled', '-')})")
    print(f"| {r['scenario']} | {f(c.get('msgs_per_s'))} | {f(c.get('deliveries_per_s'))} | {f(l.get('p50'))} | {f(l.get('p99'))} | "
          f"{f(l.get('max'))} | {gw} | {nats} | {pc(r.get('client_cpu_util'))} | {pc(c.get('other_util'))} | {store} | {f(c.get('gateway_us_per_msg'), '{:.1f}')} | "
          f"{f(c.get('nats_us_per_msg'), '{:.1f}')} | {dpw} | {bbs} | {r.get('lost', '-')}/{r.get('gaps', '-')} | {c.get('bottleneck', '-')} |")

# Backbone CPU per message: gateway CPU per published message in a cluster mode minus the same
# shape on a single node (same fan-out per message, so the difference is the backbone's), and
# the NATS server's own CPU per message. Medians over rounds.
by = {}
for r in rows:
    c = r.get("cluster", {})
    if c.get("gateway_us_per_msg") is not None:
        by.setdefault((c["shape"], c["mode"]), []).append(c)
shapes = list(dict.fromkeys(k[0] for k in by))
if any(m != "single" for (_, m) in by):
    print()
    print("Backbone CPU per published message (gateway us/msg in cluster mode minus single-node us/msg for the same shape; NATS server us/msg), medians:")
    print()
    print("| shape | mode | msgs/s | gateway us/msg | single us/msg | backbone extra on gateway(s) us/msg | NATS us/msg | total backbone us/msg |")
    print("|---|---|---|---|---|---|---|---|")
    for s in shapes:
        base = by.get((s, "single"))
        b = median(x["gateway_us_per_msg"] for x in base) if base else None
        for m in ("local", "cross"):
            xs = by.get((s, m))
            if not xs:
                continue
            g = median(x["gateway_us_per_msg"] for x in xs)
            n = median(x["nats_us_per_msg"] or 0 for x in xs)
            extra = None if b is None else g - b
            tot = None if extra is None else extra + n
            print(f"| {s} | {m} | {median(x['msgs_per_s'] for x in xs):.0f} | {g:.1f} | {f(b, '{:.1f}')} | {f(extra, '{:.1f}')} | {n:.1f} | {f(tot, '{:.1f}')} |")
EOF
echo "results: $THIS_RUN (appended to $RESULTS)" >&2
