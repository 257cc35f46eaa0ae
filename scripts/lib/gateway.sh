# shellcheck shell=bash disable=SC2034  # GW_STATUS, PORT, GW_LOG, GW_ERR are read by the sourcing script
# Sourced by the test scripts: start the gateway on a free port, wait for it, stop it cleanly.
#
#   source scripts/lib/gateway.sh
#   gateway_start OUTDIR ARGS...    # sets GW_PID, PORT, GW_LOG, GW_ERR; exits 1 if it fails
#   gateway_stop                    # SIGTERM, SIGKILL after 10 s; sets GW_STATUS (0 = clean exit)
#
# Needs: SUBSOCKET_BIN (built by the caller) and a `log` function. Installs an EXIT trap that
# stops the gateway, so a failing script never leaves one behind.

GW_PID=""
GW_STATUS=""

gateway_stop() {
    [[ -n "$GW_PID" ]] || return 0
    local pid=$GW_PID rc=0
    GW_PID=""
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || rc=$?
        if [[ $rc == 0 ]]; then GW_STATUS=0; else GW_STATUS="died early (exit $rc)"; fi
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        GW_STATUS="still running 10 s after SIGTERM (killed)"
        return 0
    fi
    wait "$pid" 2>/dev/null || rc=$?
    if [[ $rc == 0 ]]; then GW_STATUS=0; else GW_STATUS="exit $rc after SIGTERM"; fi
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
_gateway_on_exit() {
    local rc=$?
    gateway_stop
    exit "$rc"
}
trap _gateway_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# gateway_start OUTDIR ARGS...: runs "$SUBSOCKET_BIN" --bind 127.0.0.1:0 ARGS... and waits (30 s at
# most) for its line "subsocket listening on ws://HOST:PORT (N cores)".
gateway_start() {
    local out=$1
    shift
    [[ -x "${SUBSOCKET_BIN:-}" ]] || { log "no gateway binary at ${SUBSOCKET_BIN:-<unset>}"; exit 1; }
    GW_LOG="$out/gateway.stdout"
    GW_ERR="$out/gateway.stderr"
    "$SUBSOCKET_BIN" --bind 127.0.0.1:0 "$@" >"$GW_LOG" 2>"$GW_ERR" &
    GW_PID=$!
    local line=""
    for _ in $(seq 300); do
        line=$(grep -m1 -E '^subsocket listening on ws://' "$GW_LOG" || true)
        [[ -n "$line" ]] && break
        if ! kill -0 "$GW_PID" 2>/dev/null; then
            log "the gateway exited before listening; its stderr:"
            tail -n 30 "$GW_ERR"
            exit 1
        fi
        sleep 0.1
    done
    if [[ -z "$line" ]]; then
        log "the gateway printed no 'subsocket listening on ws://HOST:PORT' line within 30 s; its stderr:"
        tail -n 30 "$GW_ERR"
        exit 1
    fi
    local hostport
    hostport=$(sed -E 's#^subsocket listening on ws://([^ /]+).*#\1#' <<<"$line")
    PORT=${hostport##*:}
    [[ "$PORT" =~ ^[0-9]+$ ]] || { log "cannot parse the port from: $line"; exit 1; }
    log "gateway: $line"
}

# gateway_finish RC: the gateway must have survived the run and must stop cleanly on SIGTERM.
# Exits with RC, or with 1 when RC was 0 and the gateway died or did not stop cleanly.
gateway_finish() {
    local rc=$1
    if ! kill -0 "$GW_PID" 2>/dev/null; then
        log "the gateway died during the run; its stderr:"
        tail -n 30 "$GW_ERR"
        gateway_stop
        exit 1
    fi
    gateway_stop
    if [[ "$GW_STATUS" != 0 ]]; then
        log "the gateway did not shut down cleanly on SIGTERM: $GW_STATUS; its stderr:"
        tail -n 30 "$GW_ERR"
        [[ $rc == 0 ]] && rc=1
    fi
    [[ $rc == 0 ]] && log "passed"
    exit "$rc"
}
