#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn TestSuite cases (via kosoku, a native
# re-implementation from PyPI) against the gateway's /echo endpoint.
#
#   scripts/autobahn.sh            # cases 1-10 (12.* and 13.* = permessage-deflate are excluded)
#
# Env: SUBSOCKET_BIN (default target/release/subsocket, built if missing or stale),
#      AUTOBAHN_TIMEOUT (seconds for the whole kosoku run, default 600),
#      AUTOBAHN_PARALLELISM (default 2).
# Report: target/autobahn/index.html (and index.json, one JSON per case).
# Exit status: kosoku's (0 = every case OK / NON-STRICT / INFORMATIONAL), or
# non-zero when the gateway failed to start, crashed, or did not shut down cleanly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KOSOKU_VERSION=0.1.0
VENV=.venv-autobahn
OUT=target/autobahn
TIMEOUT="${AUTOBAHN_TIMEOUT:-600}"
PARALLELISM="${AUTOBAHN_PARALLELISM:-2}"

log() { echo "[autobahn] $*"; }

# --- kosoku, in its own venv, installed only when missing -------------------
if ! "$VENV/bin/python" - "$KOSOKU_VERSION" >/dev/null 2>&1 <<'EOF'
import sys, importlib.metadata as m
sys.exit(m.version("kosoku") != sys.argv[1])
EOF
then
    log "installing kosoku==$KOSOKU_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kosoku==$KOSOKU_VERSION"
fi

# --- the gateway --------------------------------------------------------------
if [[ -z "${SUBSOCKET_BIN:-}" ]]; then
    cargo build --release --bins -q
    SUBSOCKET_BIN=target/release/subsocket
fi
[[ -x "$SUBSOCKET_BIN" ]] || { log "no gateway binary at $SUBSOCKET_BIN"; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
GW_LOG="$OUT/gateway.stdout"
GW_ERR="$OUT/gateway.stderr"
GW_PID=""

# Stop the gateway with SIGTERM (graceful shutdown must exit 0 within 10 s);
# SIGKILL it otherwise. Sets GW_STATUS.
GW_STATUS=""
stop_gateway() {
    [[ -n "$GW_PID" ]] || return 0
    local pid=$GW_PID
    GW_PID=""
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null && GW_STATUS=0 || GW_STATUS="died early (exit $?)"
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
    local rc=0
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

"$SUBSOCKET_BIN" --bind 127.0.0.1:0 --cores 1 --echo >"$GW_LOG" 2>"$GW_ERR" &
GW_PID=$!

# Wait (30 s at most) for: subsocket listening on ws://HOST:PORT (N cores)
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

# --- the suite ------------------------------------------------------------------
URL="ws://127.0.0.1:$PORT/echo"
log "kosoku $URL -x '12.*' -x '13.*' -p $PARALLELISM (timeout ${TIMEOUT}s)"
start=$SECONDS
krc=0
timeout -k 10 "$TIMEOUT" "$VENV/bin/kosoku" "$URL" -x '12.*' -x '13.*' \
    -p "$PARALLELISM" -o "$OUT" || krc=$?
log "kosoku exited $krc after $((SECONDS - start))s"
[[ $krc == 124 || $krc == 137 ]] && log "kosoku ran past ${TIMEOUT}s and was stopped"

# --- summary of target/autobahn/index.json ----------------------------------------
if [[ -f "$OUT/index.json" ]]; then
    "$VENV/bin/python" - "$OUT" <<'EOF' || true
import collections, json, os, sys
out = sys.argv[1]
index = json.load(open(os.path.join(out, "index.json")))
GOOD, GOOD_CLOSE = {"OK", "NON-STRICT", "INFORMATIONAL"}, {"OK", "INFORMATIONAL"}
key = lambda c: tuple(int(x) for x in c.split("."))
for agent, cases in index.items():
    beh = collections.Counter(c["behavior"] for c in cases.values())
    clo = collections.Counter(c["behaviorClose"] for c in cases.values())
    print(f"[autobahn] agent {agent!r}: {len(cases)} cases")
    print("[autobahn]   behavior:      " + ", ".join(f"{k} {v}" for k, v in sorted(beh.items())))
    print("[autobahn]   behaviorClose: " + ", ".join(f"{k} {v}" for k, v in sorted(clo.items())))
    bad = sorted((cid for cid, c in cases.items()
                  if c["behavior"] not in GOOD or c["behaviorClose"] not in GOOD_CLOSE), key=key)
    nonstrict = sorted((cid for cid, c in cases.items() if c["behavior"] == "NON-STRICT"), key=key)
    if nonstrict:
        print("[autobahn]   non-strict: " + " ".join(nonstrict))
    if bad:
        print(f"[autobahn]   FAILED ({len(bad)}): " + " ".join(bad))
        for cid in bad[:20]:
            try:
                d = json.load(open(os.path.join(out, cases[cid]["reportfile"])))
                print(f"[autobahn]     {cid}: {d['behavior']}/{d['behaviorClose']}: {d['result']} / {d['resultClose']}")
            except Exception as e:  # the summary must never hide kosoku's verdict
                print(f"[autobahn]     {cid}: (no detail: {e})")
EOF
    log "report: $OUT/index.html"
else
    log "no report was written ($OUT/index.json is missing)"
fi

# --- the gateway must still be alive, and must shut down cleanly ------------------
if ! kill -0 "$GW_PID" 2>/dev/null; then
    log "the gateway died during the run; its stderr:"
    tail -n 30 "$GW_ERR"
    stop_gateway
    exit 1
fi
stop_gateway
if [[ "$GW_STATUS" != 0 ]]; then
    log "the gateway did not shut down cleanly on SIGTERM: $GW_STATUS; its stderr:"
    tail -n 30 "$GW_ERR"
    [[ $krc == 0 ]] && krc=1
fi
exit "$krc"
