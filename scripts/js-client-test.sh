#!/usr/bin/env bash
# The JavaScript client (clients/js/microsocket.js) against the real gateway, in Node:
# clients/js/test/*.test.mjs with node:test. Each test file starts its own gateways
# (two cores, history on, some with auth, QoS 1 and signing) on free ports.
#
#   scripts/js-client-test.sh                 # all files
#   scripts/js-client-test.sh recovery        # files whose name contains "recovery"
#
# Env: SUBSOCKET_BIN (default target/ci/subsocket, built when missing). Needs Node >= 20:
# Node 20 gets its WebSocket from --experimental-websocket, Node >= 22 has it built in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "[jsclient] $*"; }

command -v node >/dev/null || { log "node is not installed (Node >= 20 is needed)"; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[[ $major -ge 20 ]] || { log "Node $(node --version) is too old: Node >= 20 is needed"; exit 1; }
flags=()
if [[ $(node -p 'typeof WebSocket') != function ]]; then
    flags+=(--experimental-websocket)
fi

if [[ -z "${SUBSOCKET_BIN:-}" ]]; then
    SUBSOCKET_BIN=$PWD/target/ci/subsocket
    [[ -x "$SUBSOCKET_BIN" ]] || cargo build --profile ci --bins -q
fi
[[ -x "$SUBSOCKET_BIN" ]] || { log "no gateway binary at $SUBSOCKET_BIN"; exit 1; }
export SUBSOCKET_BIN

files=()
for f in clients/js/test/*.test.mjs; do
    [[ -z "${1:-}" || "$f" == *"$1"* ]] && files+=("$f")
done
[[ ${#files[@]} -gt 0 ]] || { log "no test file matches '${1:-}'"; exit 1; }

log "node $(node --version) ${flags[*]:-}, gateway $SUBSOCKET_BIN, ${#files[@]} files"
if [[ ! -d clients/js/node_modules/ws ]]; then
    log "npm ci in clients/js (the ws package, for the compressed tests)"
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
# One file at a time (each runs gateways of two cores on this small machine); every test is
# bounded, and the whole run is stopped after 150 s.
timeout -k 5 150 node "${flags[@]}" --test --test-concurrency=1 --test-timeout=60000 \
    --test-reporter=spec "${files[@]}"
