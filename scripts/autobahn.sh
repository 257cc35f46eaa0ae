#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn TestSuite cases (via kosoku, a native
# re-implementation from PyPI) against the gateway's /echo endpoint.
#
#   scripts/autobahn.sh            # every case, 12.* and 13.* (permessage-deflate) included
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
# shellcheck source=scripts/lib/gateway.sh
source scripts/lib/gateway.sh
# No heartbeat pings during the run: the cases count every frame the server sends, and an
# Autobahn case that receives a ping it did not ask for ends there (its `finishWhenDone` sends
# the close), which reads as "did not finish" (9.7.x/9.8.x) or "events differ" (6.4.x). The
# default interval spreads each connection's first ping over 25 s, so on a loaded machine a few
# runs in ten lost a case that way.
gateway_start "$OUT" --cores 1 --echo --ping-interval-ms 3600000 --idle-timeout-ms 7200000

# --- the suite ------------------------------------------------------------------
URL="ws://127.0.0.1:$PORT/echo"
log "kosoku $URL -p $PARALLELISM (timeout ${TIMEOUT}s)"
start=$SECONDS
krc=0
timeout -k 10 "$TIMEOUT" "$VENV/bin/kosoku" "$URL" -p "$PARALLELISM" -o "$OUT" || krc=$?
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

gateway_finish "$krc"
