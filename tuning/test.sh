#!/usr/bin/env bash
# Tests tuning/apply, tuning/check and tuning/revert against a fake /proc/sys tree in a temp
# directory (SUBSOCKET_SYSCTL_ROOT), so the host is never touched. Also unit-tests the rule
# logic in lib.sh and runs shellcheck when it is installed. Run by scripts/test.sh (stage
# `tuning`); takes about a second. Exit status 0 only when every assertion held.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
export SUBSOCKET_SYSCTL_ROOT=$tmp/proc/sys
export SUBSOCKET_TUNING_STATE_DIR=$tmp/state
export SUBSOCKET_SYSCTL_D=$tmp/etc/sysctl.d
unset SUBSOCKET_PROFILE

failures=0
pass() { echo "ok   $*"; }
bad() {
    echo "FAIL $*"
    failures=$((failures + 1))
}
# expect_rc WANT NAME CMD...: runs CMD, output into $tmp/out, checks its exit status.
expect_rc() {
    local want=$1 name=$2 rc=0
    shift 2
    "$@" >"$tmp/out" 2>&1 || rc=$?
    if [[ $rc == "$want" ]]; then pass "$name (exit $rc)"; else
        bad "$name: exit $rc, wanted $want; output:"
        sed 's/^/     | /' "$tmp/out"
    fi
}
expect_out() {
    if grep -qE -- "$1" "$tmp/out"; then pass "output has /$1/"; else
        bad "output lacks /$1/:"
        sed 's/^/     | /' "$tmp/out"
    fi
}
expect_value() {
    local key=$1 want=$2 got
    got=$(tr -s ' \t\n' '   ' <"$SUBSOCKET_SYSCTL_ROOT/${key//.//}" | sed 's/ *$//')
    if [[ $got == "$want" ]]; then pass "$key = $want"; else bad "$key = '$got', wanted '$want'"; fi
}
# The whole fake tree as "path: normalized value" lines, to compare before and after.
snapshot() {
    (cd "$SUBSOCKET_SYSCTL_ROOT" && find . -type f | sort | while read -r f; do
        printf '%s: %s\n' "$f" "$(tr -s ' \t\n' '   ' <"$f" | sed 's/ *$//')"
    done)
}

# A stock host: the kernel defaults of a 24 GiB machine, written the way /proc prints them
# (tuples with tabs). fs.file-max is already above the profile and must stay so;
# kernel.io_uring_disabled is absent (a kernel before 6.6) and must be skipped.
stock() {
    local key=$1 value=$2 path=$SUBSOCKET_SYSCTL_ROOT/${1//.//}
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$value" >"$path"
}
stock fs.file-max 10000000
stock fs.nr_open 1048576
stock net.core.somaxconn 4096
stock net.ipv4.tcp_max_syn_backlog 2048
stock net.ipv4.tcp_syncookies 1
stock net.core.netdev_max_backlog 1000
stock net.ipv4.tcp_mem $'287901\t383868\t575802'
stock net.ipv4.tcp_rmem $'4096\t131072\t33554432'
stock net.ipv4.tcp_wmem $'4096\t16384\t4194304'
stock net.core.wmem_max 212992
stock net.core.rmem_max 212992
stock net.ipv4.tcp_slow_start_after_idle 1
stock net.ipv4.tcp_max_tw_buckets 131072
stock net.ipv4.tcp_max_orphans 131072
stock net.ipv4.tcp_fin_timeout 60
stock net.ipv4.ip_local_port_range $'32768\t60999'
stock net.ipv4.tcp_tw_reuse 2
stock net.netfilter.nf_conntrack_max 262144
stock vm.max_map_count 65530
before=$(snapshot)

echo "--- rules (lib.sh judge)"
(
    # shellcheck source=tuning/lib.sh
    source "$here/lib.sh"
    rc=0
    t() {
        judge "$1" "$2" "$3"
        if [[ "$VERDICT $TARGET" == "$4" ]]; then echo "ok   judge $1 '$2' '$3' -> $4"; else
            echo "FAIL judge $1 '$2' '$3' -> '$VERDICT $TARGET', wanted '$4'"
            rc=1
        fi
    }
    t at-least "5" "10" "fail 10"
    t at-least "10" "10" "ok 10"
    t at-least "20" "10" "ok 20"
    t at-least "1 9 3" "2 2 2" "fail 2 9 3"
    t at-least "1 2" "1 2 3" "fail 1 2 3"
    t at-most "60" "15" "fail 15"
    t at-most "5" "15" "ok 5"
    t range "32768 60999" "10000 65535" "fail 10000 65535"
    t range "1024 65535" "10000 65535" "ok 1024 65535"
    t range "1024 60999" "10000 65535" "fail 1024 65535"
    t prefer "2" "1" "warn 1"
    t prefer "1" "1" "ok 1"
    exit $rc
) || failures=$((failures + 1))

echo "--- check on a stock host"
expect_rc 1 "check fails below the profile" "$here/check"
expect_out '^fail +fs\.nr_open +1048576'
expect_out '^ok +fs\.file-max +10000000'
expect_out '^fail +net\.ipv4\.tcp_fin_timeout +60'
expect_out '^warn +net\.ipv4\.tcp_tw_reuse +2'
expect_out '^skip +kernel\.io_uring_disabled'
expect_out '^fail +net\.ipv4\.ip_local_port_range +32768 60999'

echo "--- apply --dry-run"
expect_rc 0 "dry run" "$here/apply" --dry-run
expect_out '^set +fs\.nr_open +1048576 -> 2097152'
expect_out 'nothing written'
if [[ $(snapshot) == "$before" ]]; then pass "dry run wrote nothing"; else bad "dry run changed the tree"; fi
if [[ -e $SUBSOCKET_TUNING_STATE_DIR ]]; then bad "dry run created the state dir"; else pass "dry run saved no state"; fi

echo "--- apply"
expect_rc 0 "apply" "$here/apply"
expect_value fs.nr_open 2097152
expect_value fs.file-max 10000000
expect_value net.core.somaxconn 65535
expect_value net.ipv4.tcp_mem "786432 1048576 1572864"
expect_value net.ipv4.tcp_rmem "4096 16384 4194304"
expect_value net.ipv4.tcp_fin_timeout 15
expect_value net.ipv4.ip_local_port_range "10000 65535"
expect_value net.ipv4.tcp_tw_reuse 1
expect_value net.ipv4.tcp_wmem "4096 16384 4194304"
state=$SUBSOCKET_TUNING_STATE_DIR/sysctl.saved
if grep -qxF $'fs.nr_open\t1048576' "$state"; then pass "saved fs.nr_open's old value"; else bad "state lacks fs.nr_open 1048576"; fi
if grep -qxF $'net.ipv4.tcp_mem\t287901 383868 575802' "$state"; then pass "saved tcp_mem"; else bad "state lacks tcp_mem"; fi
if grep -q '^fs\.file-max' "$state"; then bad "saved fs.file-max, which it did not change"; else pass "did not save an unchanged knob"; fi
if grep -q '^net\.ipv4\.tcp_wmem' "$state"; then bad "saved tcp_wmem, which already matched"; else pass "did not save a knob already at the profile"; fi

echo "--- check after apply"
expect_rc 0 "check passes" "$here/check"
expect_out ' 0 fail, 1 skipped'

echo "--- apply again (idempotent)"
cp "$state" "$tmp/state.first"
expect_rc 0 "second apply" "$here/apply"
expect_out 'nothing to change'
if cmp -s "$state" "$tmp/state.first"; then pass "state unchanged"; else bad "second apply changed the saved values"; fi

echo "--- drift, then apply: the saved value stays the original"
printf '128\n' >"$SUBSOCKET_SYSCTL_ROOT/net/core/somaxconn"
expect_rc 1 "check sees the drift" "$here/check"
expect_out '^fail +net\.core\.somaxconn +128'
expect_rc 0 "apply after drift" "$here/apply"
expect_value net.core.somaxconn 65535
if grep -qxF $'net.core.somaxconn\t4096' "$state" && ! grep -q $'somaxconn\t128' "$state"; then
    pass "saved somaxconn is still 4096"
else bad "saved somaxconn changed"; fi

echo "--- persist"
expect_rc 0 "apply --persist" "$here/apply" --persist
persisted=$SUBSOCKET_SYSCTL_D/90-subsocket.conf
if grep -qxF 'fs.nr_open = 2097152' "$persisted" && grep -qxF 'fs.file-max = 10000000' "$persisted"; then
    pass "persisted file has the resulting values (higher ones kept)"
else bad "persisted file wrong: $(cat "$persisted" 2>&1)"; fi
if grep -q io_uring_disabled "$persisted"; then bad "persisted a knob this kernel lacks"; else pass "absent knobs not persisted"; fi

echo "--- revert"
expect_rc 0 "revert --dry-run" "$here/revert" --dry-run
expect_out '^set +fs\.nr_open +2097152 -> 1048576'
expect_value fs.nr_open 2097152
expect_rc 0 "revert" "$here/revert"
if [[ $(snapshot) == "$before" ]]; then pass "every value is back to the stock one"; else
    bad "revert left differences:"
    diff <(echo "$before") <(snapshot) | sed 's/^/     | /' || true
fi
if [[ -e $state ]]; then bad "state file kept after revert"; else pass "state file removed"; fi
if [[ -e $persisted ]]; then bad "persisted sysctl.d file kept after revert"; else pass "persisted file removed"; fi
expect_rc 1 "check fails again after revert" "$here/check"
expect_rc 0 "revert with nothing saved" "$here/revert"
expect_out 'nothing to revert'

echo "--- usage errors and a broken profile"
expect_rc 2 "apply rejects an unknown flag" "$here/apply" --frobnicate
expect_rc 2 "check rejects an argument" "$here/check" extra
printf 'fs.nr_open = 5\n' >"$tmp/broken.conf"
expect_rc 2 "a knob without @check is an error" env SUBSOCKET_PROFILE="$tmp/broken.conf" "$here/check"
expect_out 'has no .# @check. line'
printf '# @check most\nfs.nr_open = 5\n' >"$tmp/broken.conf"
expect_rc 2 "an unknown rule is an error" env SUBSOCKET_PROFILE="$tmp/broken.conf" "$here/check"

echo "--- every knob in the profile has a comment above its @check line"
undocumented=$(awk '/^# @check/ { if (prev !~ /^# ./) print FILENAME ":" NR } { prev = $0 }' "$here/sysctl.d/90-subsocket.conf")
if [[ -z $undocumented ]]; then pass "all knobs documented"; else bad "knobs without a comment at: $undocumented"; fi

echo "--- limits.d, the systemd unit and the profile agree"
profile_nr_open=$(sed -n 's/^fs\.nr_open = //p' "$here/sysctl.d/90-subsocket.conf")
unit=$here/systemd/subsocket.service
unit_nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
if [[ $unit_nofile =~ ^[0-9]+$ ]] && ((unit_nofile <= profile_nr_open)); then
    pass "LimitNOFILE $unit_nofile <= fs.nr_open $profile_nr_open"
else bad "LimitNOFILE '$unit_nofile' must be a number <= fs.nr_open $profile_nr_open"; fi
while read -r _ kind item value; do
    if [[ $item == nofile ]] && ((value > profile_nr_open)); then bad "limits.d $kind nofile $value > fs.nr_open"; fi
done < <(grep -E '^[a-z*]' "$here/limits.d/90-subsocket.conf")
if grep -qE '^subsocket +hard +nofile +'"$unit_nofile"'$' "$here/limits.d/90-subsocket.conf"; then
    pass "limits.d nofile matches the unit"
else bad "limits.d hard nofile differs from LimitNOFILE=$unit_nofile"; fi
# TimeoutStopSec must leave the gateway its shutdown_grace_ms (src/config.rs default 3000).
grace_ms=$(sed -n 's/^ *shutdown_grace_ms: \([0-9_]*\),$/\1/p' "$here/../src/config.rs" | tr -d _)
stop_s=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$unit")
if [[ -n $grace_ms && -n $stop_s ]] && ((stop_s * 1000 > grace_ms)); then
    pass "TimeoutStopSec ${stop_s}s > shutdown_grace_ms ${grace_ms}"
else bad "TimeoutStopSec '${stop_s}' s must exceed shutdown_grace_ms '${grace_ms}'"; fi
if grep -qx 'LimitMEMLOCK=infinity' "$unit" && grep -qx 'Restart=on-failure' "$unit" &&
    grep -qx 'KillSignal=SIGTERM' "$unit" && grep -q '^ExecStart=.* --config ' "$unit"; then
    pass "unit has LimitMEMLOCK, Restart, KillSignal, ExecStart --config"
else bad "unit lacks one of LimitMEMLOCK=infinity, Restart=on-failure, KillSignal=SIGTERM, --config"; fi
if command -v systemd-analyze >/dev/null; then
    # verify also complains that /usr/local/bin/subsocket is missing here; only syntax matters.
    if systemd-analyze verify "$unit" 2>&1 | grep -iE 'unknown|invalid|failed to parse|ignoring'; then
        bad "systemd-analyze verify found the problems above"
    else pass "systemd-analyze verify: no syntax problems"; fi
fi

if command -v shellcheck >/dev/null; then
    echo "--- shellcheck"
    if (cd "$here/.." && shellcheck -x tuning/apply tuning/check tuning/revert tuning/lib.sh tuning/test.sh); then
        pass "shellcheck clean"
    else bad "shellcheck findings above"; fi
else
    echo "--- shellcheck not installed: skipped"
fi

echo
if ((failures > 0)); then
    echo "tuning/test.sh: $failures FAILED"
    exit 1
fi
echo "tuning/test.sh: all passed"
