# shellcheck shell=bash disable=SC2034  # the globals set here (paths, VERDICT, TARGET) are read by the sourcing scripts
# Sourced by tuning/apply, tuning/check and tuning/revert: read the profile, read and write
# sysctl values, decide ok / warn / fail for one knob.
#
# Environment (all optional; the defaults touch the real host):
#   SUBSOCKET_SYSCTL_ROOT       the /proc/sys tree to read and write (tests point it at a copy)
#   SUBSOCKET_TUNING_STATE_DIR  where apply saves the values it replaced (/var/lib/subsocket-tuning)
#   SUBSOCKET_SYSCTL_D          where `apply --persist` writes its sysctl.d file (/etc/sysctl.d)
#   SUBSOCKET_PROFILE           the profile (tuning/sysctl.d/90-subsocket.conf)

TUNING_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROFILE=${SUBSOCKET_PROFILE:-$TUNING_DIR/sysctl.d/90-subsocket.conf}
SYSCTL_ROOT=${SUBSOCKET_SYSCTL_ROOT:-/proc/sys}
STATE_DIR=${SUBSOCKET_TUNING_STATE_DIR:-/var/lib/subsocket-tuning}
SYSCTL_D=${SUBSOCKET_SYSCTL_D:-/etc/sysctl.d}
# One line per knob apply changed: "key<TAB>value before the first apply".
STATE_FILE=$STATE_DIR/sysctl.saved
# The sysctl.d file `apply --persist` wrote (its path), so revert removes exactly that.
PERSIST_FILE=$STATE_DIR/persisted
PERSIST_NAME=90-subsocket.conf

die() {
    echo "${0##*/}: $*" >&2
    exit 2
}

# Collapses runs of blanks and tabs to one space and trims: /proc/sys prints tuples with tabs,
# the profile writes them with spaces.
normalize() {
    local -a parts
    read -ra parts <<<"$1"
    printf '%s' "${parts[*]}"
}

# Prints "key<TAB>mode<TAB>value" for every knob of the profile, in file order.
profile_knobs() {
    [[ -r $PROFILE ]] || die "cannot read the profile $PROFILE"
    local line mode="" n=0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        if [[ $line =~ ^#[[:space:]]*@check[[:space:]]+([a-z-]+)[[:space:]]*$ ]]; then
            mode=${BASH_REMATCH[1]}
            case $mode in
                at-least | at-most | range | prefer) ;;
                *) die "$PROFILE:$n: unknown @check rule '$mode'" ;;
            esac
            continue
        fi
        [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
        if [[ $line =~ ^[[:space:]]*([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
            [[ -n $mode ]] || die "$PROFILE:$n: ${BASH_REMATCH[1]} has no '# @check' line above it"
            printf '%s\t%s\t%s\n' "${BASH_REMATCH[1]}" "$mode" "$(normalize "${BASH_REMATCH[2]}")"
            mode=""
        else
            die "$PROFILE:$n: not a 'key = value' line: $line"
        fi
    done <"$PROFILE"
}

# The file behind a sysctl key: net.core.somaxconn -> $SYSCTL_ROOT/net/core/somaxconn.
knob_path() {
    printf '%s/%s' "$SYSCTL_ROOT" "${1//.//}"
}

# The current value of a knob, normalized; fails when the knob does not exist on this kernel.
read_knob() {
    local path
    path=$(knob_path "$1")
    [[ -r $path ]] || return 1
    normalize "$(<"$path")"
}

# Writes a value and reads it back; fails (with a message) when the kernel refused or changed it.
write_knob() {
    local key=$1 value=$2 path got
    path=$(knob_path "$key")
    if ! { printf '%s\n' "$value" >"$path"; } 2>/dev/null; then
        echo "cannot write $key ($path): are you root?" >&2
        return 1
    fi
    got=$(read_knob "$key") || got="(unreadable)"
    if [[ $got != "$value" ]]; then
        echo "$key: wrote '$value' but the kernel reports '$got'" >&2
        return 1
    fi
}

is_uint() {
    [[ $1 =~ ^[0-9]+$ ]]
}

# Judges one knob. Sets VERDICT (ok | warn | fail) and TARGET: the value that satisfies the
# rule with the least change from the current one (a limit already above the profile is kept).
judge() {
    local mode=$1 cur=$2 want=$3
    local -a c w t
    read -ra c <<<"$cur"
    read -ra w <<<"$want"
    VERDICT=ok
    TARGET=$cur
    if [[ $mode == prefer ]]; then
        if [[ $cur != "$want" ]]; then
            VERDICT=warn
            TARGET=$want
        fi
        return 0
    fi
    local x
    for x in "${c[@]}" "${w[@]}"; do
        is_uint "$x" || die "rule '$mode' needs numbers, got '$cur' vs '$want'"
    done
    if [[ ${#c[@]} != "${#w[@]}" ]]; then
        VERDICT=fail
        TARGET=$want
        return 0
    fi
    local i
    case $mode in
        at-least | at-most)
            for i in "${!w[@]}"; do
                if [[ $mode == at-least ]] && ((c[i] < w[i])); then
                    VERDICT=fail
                    t+=("${w[i]}")
                elif [[ $mode == at-most ]] && ((c[i] > w[i])); then
                    VERDICT=fail
                    t+=("${w[i]}")
                else
                    t+=("${c[i]}")
                fi
            done
            ;;
        range)
            [[ ${#w[@]} == 2 ]] || die "rule 'range' needs 'low high', got '$want'"
            t=("${c[0]}" "${c[1]}")
            if ((c[0] > w[0])); then
                VERDICT=fail
                t[0]=${w[0]}
            fi
            if ((c[1] < w[1])); then
                VERDICT=fail
                t[1]=${w[1]}
            fi
            ;;
    esac
    TARGET="${t[*]}"
}

# Prints one report line: verdict, key, and what it is against what the profile wants.
report() {
    printf '%-5s %-36s %s\n' "$1" "$2" "$3"
}
