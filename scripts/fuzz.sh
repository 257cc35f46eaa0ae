#!/usr/bin/env bash
# Coverage-guided fuzzing of every cargo-fuzz target in fuzz/, on stable Rust.
#
#   scripts/fuzz.sh [SECONDS]        # each target for SECONDS (default 20)
#   scripts/fuzz.sh 60 frame_decoder  # only the named targets
#
# Builds with `-s none` (no sanitizer: stable Rust) and `-a` (debug assertions
# and overflow checks on, so an arithmetic overflow is a finding). Seeds in
# fuzz/seeds/TARGET/ and a dictionary in fuzz/dict/TARGET.dict are used when
# present. libFuzzer's output goes to target/fuzz-logs/TARGET.log; on a crash
# its tail is printed with the reproducer in fuzz/artifacts/TARGET/.
# Exit status: non-zero when any target crashed, hung (>10 s on one input) or
# did not build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS="${1:-20}"
shift || true
[[ "$SECS" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
FLAGS=(-s none -a)
LOGS=target/fuzz-logs

log() { echo "[fuzz] $*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    start=$SECONDS
    cargo install cargo-fuzz --locked -q
    log "cargo-fuzz installed in $((SECONDS - start))s"
fi

[[ -f fuzz/Cargo.toml ]] || { log "no fuzz/Cargo.toml: no fuzz crate to run"; exit 1; }

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
[[ ${#targets[@]} -gt 0 ]] || { log "cargo fuzz list found no targets"; exit 1; }
log "targets: ${targets[*]} (${SECS}s each)"

mkdir -p "$LOGS"
start=$SECONDS
cargo fuzz build "${FLAGS[@]}" >"$LOGS/build.log" 2>&1 || {
    log "cargo fuzz build failed:"
    tail -n 60 "$LOGS/build.log"
    exit 1
}
log "built in $((SECONDS - start))s"

failed=()
for t in "${targets[@]}"; do
    corpus=("fuzz/corpus/$t")
    mkdir -p "fuzz/corpus/$t"
    [[ -d "fuzz/seeds/$t" ]] && corpus+=("fuzz/seeds/$t")
    extra=()
    [[ -f "fuzz/dict/$t.dict" ]] && extra+=("-dict=fuzz/dict/$t.dict")
    t0=$SECONDS
    rc=0
    timeout -k 10 $((SECS + 180)) cargo fuzz run "${FLAGS[@]}" "$t" "${corpus[@]}" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        "${extra[@]}" >"$LOGS/$t.log" 2>&1 || rc=$?
    runs=$(grep -oE '^Done [0-9]+ runs' "$LOGS/$t.log" | grep -oE '[0-9]+' || true)
    cov=$(grep -oE 'cov: [0-9]+' "$LOGS/$t.log" | tail -n1 || true)
    if [[ $rc == 0 ]]; then
        log "$t: ok, ${runs:-?} runs in $((SECONDS - t0))s, ${cov:-cov: ?}, corpus $(find "fuzz/corpus/$t" -type f | wc -l) inputs"
    else
        log "$t: FAILED (exit $rc) after $((SECONDS - t0))s; the end of $LOGS/$t.log:"
        tail -n 80 "$LOGS/$t.log"
        failed+=("$t")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    log "crashed or failed: ${failed[*]} (reproducers in fuzz/artifacts/)"
    exit 1
fi
log "all ${#targets[@]} targets ran ${SECS}s without a crash"
