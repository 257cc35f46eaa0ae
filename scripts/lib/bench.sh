# shellcheck shell=bash disable=SC2034  # LOAD and PORT are read by the sourcing script
# Sourced by the benchmark scripts (bench.sh, bench-ab.sh, bench-scale.sh): the load of each
# fixed scenario, and starting and stopping one gateway (or reference peer) per run.
#
#   source scripts/lib/bench.sh
#   scenario_load NAME              # sets LOAD=(load-generator arguments); returns 1 if unknown
#   GW_PID=$!; wait_listening LOG   # after starting a server in the background: wait for it
#   stop_gateway                    # SIGTERM, SIGKILL after STOP_TENTHS/10 s (default 5 s)
#
# Installs an EXIT trap that stops the server, so a failing script never leaves one behind.

# The fixed scenarios' load, the same in every script so that their numbers compare: one topic
# fanned out closed-loop (at most 32 messages published and not yet delivered to every
# subscriber), many topics, and open-loop latency. Durations are the caller's (--duration).
scenario_load() {
    case $1 in
        fanout-1k) LOAD=(--conns 1000 --topics 1 --payload 64 --window 32) ;;
        fanout-10k) LOAD=(--conns 10000 --topics 1 --payload 64 --window 32) ;;
        many-topics) LOAD=(--conns 10000 --topics 100000 --topics-per-conn 100 --payload 64 --window 256
            --subscribe-batch 100) ;;
        latency) LOAD=(--conns 1000 --topics 1 --payload 64 --rate 1000) ;;
        latency-light) LOAD=(--conns 1000 --topics 1 --payload 64 --rate 100) ;;
        *) return 1 ;;
    esac
}

GW_PID=""

# wait_listening LOG: the server started as GW_PID prints "listening on" to LOG within 10 s, or
# the script exits with LOG shown.
wait_listening() {
    local log=$1
    for _ in $(seq 100); do
        if grep -q "listening on" "$log" 2>/dev/null; then return 0; fi
        kill -0 "$GW_PID" 2>/dev/null || { cat "$log"; echo "gateway exited" >&2; exit 1; }
        sleep 0.1
    done
    cat "$log"; echo "gateway did not start" >&2; exit 1
}

stop_gateway() {
    if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        for _ in $(seq "${STOP_TENTHS:-50}"); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    GW_PID=""
}
trap stop_gateway EXIT
