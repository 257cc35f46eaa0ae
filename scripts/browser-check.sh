#!/usr/bin/env bash
# Real-browser check: Debian's Chromium, driven by playwright-core, subscribes
# over /ws and /ws/sub/{topic} on a 2-core gateway and receives HTTP publishes,
# runs the browser client (clients/js, served at /client/microsocket.js) through
# network cuts, and clicks through the /docs playground
# (tests/browser/check.mjs says exactly what is checked), then curl on an event stream
# (/sse/sub/{topic}, live and again with Last-Event-ID).
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

# shellcheck source=scripts/lib/gateway.sh
source scripts/lib/gateway.sh
# History for every topic: the client-module step recovers what a network cut missed.
cat >"$OUT/gateway.toml" <<'TOML'
[history]
[[history.rules]]
pattern = "*"
max_messages = 1000
TOML
gateway_start "$OUT" --cores 2 --config "$OUT/gateway.toml"

# --- the check ------------------------------------------------------------------
rc=0
timeout -k 5 110 node tests/browser/check.mjs "$PORT" || rc=$?
[[ $rc == 124 || $rc == 137 ]] && log "check.mjs ran past 110 s and was stopped"

# --- Server-Sent Events with curl --------------------------------------------------
# The way an operator tries it: curl -N on /sse/sub/{topic} gets each publish as an event with
# its seqNo as id; again with Last-Event-ID it gets exactly what came after that id.
sse_curl() {
    local t="curl-sse-$RANDOM$RANDOM" base="http://127.0.0.1:$PORT" out="$OUT/sse-curl"
    curl -sN --max-time 3 "$base/sse/sub/$t" >"$out.1" &
    local bg=$!
    sleep 0.5
    for i in 1 2 3; do
        curl -sf -XPOST "$base/publish/$t" -d "{\"i\":$i}" >/dev/null || { log "curl: publish $i failed"; return 1; }
    done
    wait "$bg" || true
    curl -sN --max-time 1 -H 'Last-Event-ID: 1' "$base/sse/sub/$t" >"$out.2" || true
    local ids1 ids2
    ids1=$(grep '^id: ' "$out.1" | tr '\n' ' ')
    ids2=$(grep '^id: ' "$out.2" | tr '\n' ' ')
    if [[ "$ids1" != "id: 1 id: 2 id: 3 " || "$ids2" != "id: 2 id: 3 " ]]; then
        log "curl: FAILED: live ids [$ids1] (expected 1 2 3), after Last-Event-ID 1 [$ids2] (expected 2 3)"
        sed -n '1,40p' "$out.1" "$out.2"
        return 1
    fi
    grep -q '^data: {"type":"message","topic":"'"$t"'","seqNo":3,' "$out.1" ||
        { log "curl: FAILED: no message JSON in the events"; cat "$out.1"; return 1; }
    log "curl: /sse/sub/$t gave ids 1 2 3; with Last-Event-ID: 1, ids 2 3"
}
if [[ $rc == 0 ]]; then
    command -v curl >/dev/null || { { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; } >"$OUT/apt-curl.log" 2>&1 || log "apt-get install curl failed (see $OUT/apt-curl.log)"; }
    sse_curl || rc=1
fi

gateway_finish "$rc"
