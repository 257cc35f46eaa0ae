#!/usr/bin/env bash
# Real-browser check: Debian's Chromium, driven by playwright-core, subscribes
# over /ws and /ws/sub/{topic} on a 2-core gateway and receives HTTP publishes
# (tests/browser/check.mjs says exactly what is checked).
#
# Installs, only when missing: Debian's chromium (apt) and tests/browser's
# node_modules (npm ci from the committed package-lock.json).
# Env: SUBSOCKET_BIN (default target/release/subsocket, built if missing or stale).
# Logs: target/browser-check/gateway.{stdout,stderr}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=target/browser-check
log() { echo "[browser] $*"; }
mkdir -p "$OUT"

# --- Chromium -------------------------------------------------------------------
if [[ ! -x /usr/bin/chromium ]]; then
    log "installing Debian's chromium (apt-get)"
    start=$SECONDS
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >"$OUT/apt.log" 2>&1; then
        log "apt-get install chromium failed:"
        tail -n 40 "$OUT/apt.log"
        exit 1
    fi
    log "chromium installed in $((SECONDS - start))s"
fi

# --- playwright-core --------------------------------------------------------------
want=$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "try { require('./tests/browser/node_modules/playwright-core/package.json').version } catch { '' }")
if [[ "$have" != "$want" ]]; then
    log "npm ci in tests/browser (playwright-core $want)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# --- the gateway -------------------------------------------------------------------
if [[ -z "${SUBSOCKET_BIN:-}" ]]; then
    cargo build --release --bins -q
    SUBSOCKET_BIN=target/release/subsocket
fi
[[ -x "$SUBSOCKET_BIN" ]] || { log "no gateway binary at $SUBSOCKET_BIN"; exit 1; }

GW_LOG="$OUT/gateway.stdout"
GW_ERR="$OUT/gateway.stderr"
GW_PID=""
GW_STATUS=""
# SIGTERM, then SIGKILL after 10 s. Sets GW_STATUS (0 = clean exit).
stop_gateway() {
    [[ -n "$GW_PID" ]] || return 0
    local pid=$GW_PID rc=0
    GW_PID=""
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
on_exit() {
    local rc=$?
    stop_gateway
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$SUBSOCKET_BIN" --bind 127.0.0.1:0 --cores 2 >"$GW_LOG" 2>"$GW_ERR" &
GW_PID=$!

line=""
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
hostport=$(sed -E 's#^subsocket listening on ws://([^ /]+).*#\1#' <<<"$line")
PORT=${hostport##*:}
[[ "$PORT" =~ ^[0-9]+$ ]] || { log "cannot parse the port from: $line"; exit 1; }
log "gateway: $line"

# --- the check ------------------------------------------------------------------
rc=0
timeout -k 5 70 node tests/browser/check.mjs "$PORT" || rc=$?
[[ $rc == 124 || $rc == 137 ]] && log "check.mjs ran past 70 s and was stopped"

if ! kill -0 "$GW_PID" 2>/dev/null; then
    log "the gateway died during the check; its stderr:"
    tail -n 30 "$GW_ERR"
    stop_gateway
    exit 1
fi
stop_gateway
if [[ "$GW_STATUS" != 0 ]]; then
    log "the gateway did not shut down cleanly on SIGTERM: $GW_STATUS; its stderr:"
    tail -n 30 "$GW_ERR"
    [[ $rc == 0 ]] && rc=1
fi
[[ $rc == 0 ]] && log "passed"
exit "$rc"
