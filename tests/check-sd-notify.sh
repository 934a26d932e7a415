#!/bin/sh
# The sd API under the real notify-listener (tests/tools, python3): the
# exact sequence of datagrams tests/sd-notify-helper sends, each with the
# helper's pid as sender, on a path socket and on an abstract one.  In a build
# without libsystemd, nothing may be sent.
# The tools directory is $AIOTOOLS_SHARED_TOOLS (default: tests/tools).  Missing tools skip the test (77), except under CI=true.
set -u
src="${top_srcdir:-.}"
bld="${top_builddir:-.}"
tools="${AIOTOOLS_SHARED_TOOLS:-$src/tests/tools}"
nl="$tools/notify-listener"
helper="$bld/tests/sd-notify-helper"

. "$src/tests/need.sh"
[ -f "$nl" ] || missing "notify-listener at $nl (set AIOTOOLS_SHARED_TOOLS)"
need python3 python3
[ -x "$helper" ] || { echo "FAIL: $helper not built"; exit 1; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0

run() { # $1: label, rest: notify-listener options
        label=$1
        shift
        # The listener alone writes $tmp/out; the helper reports in $tmp/helper.
        rm -f "$tmp/helper"
        if ! python3 "$nl" --timeout 20 --watchdog-usec 400000 "$@" -- "$helper" "$tmp/helper" \
                > "$tmp/out" 2> "$tmp/err"; then
                echo "FAIL [$label]: helper or listener failed:"
                cat "$tmp/out" "$tmp/err" "$tmp/helper"
                fail=1
                return
        fi
        pid=$(sed -n 's/^helper pid=\([0-9]*\) .*/\1/p' "$tmp/helper")
        wd=$(sed -n 's/^helper pid=[0-9]* watchdog_usec=\([0-9]*\)$/\1/p' "$tmp/helper")
        # Drop the timestamps, keep "pid=N MESSAGE"; blank MONOTONIC_USEC's value.
        cut -d' ' -f2- "$tmp/out" | sed 's/MONOTONIC_USEC=[0-9][0-9]*/MONOTONIC_USEC=N/' > "$tmp/got"
        if grep -q '^helper build=nosystemd$' "$tmp/helper"; then
                # A build without libsystemd: every call is a no-op.
                : > "$tmp/want"
                wantwd=0
                wantsent=0
        else
                wantsent=6
                cat > "$tmp/want" <<EOT
pid=$pid READY=1;MAINPID=$pid;STATUS=sd-notify-helper ready
pid=$pid WATCHDOG=1
pid=$pid RELOADING=1;MONOTONIC_USEC=N;STATUS=reloading
pid=$pid READY=1;MAINPID=$pid;STATUS=reloaded
pid=$pid STATUS=custom 42
pid=$pid STOPPING=1
EOT
                wantwd=400000
        fi
        if [ -z "$pid" ] || ! diff -u "$tmp/want" "$tmp/got"; then
                echo "FAIL [$label]: unexpected notify sequence; listener output:"
                cat "$tmp/out"
                fail=1
        elif ! grep -q "^helper sent=$wantsent\$" "$tmp/helper"; then
                echo "FAIL [$label]: want $wantsent calls to report 'sent'; helper said:"
                cat "$tmp/helper"
                fail=1
        elif [ "$wd" != "$wantwd" ]; then
                echo "FAIL [$label]: aiot_sd_watchdog_usec gave '$wd', want $wantwd"
                fail=1
        else
                echo "PASS [$label]: $(wc -l < "$tmp/got") messages, watchdog_usec=$wd"
                sed 's/^/  /' "$tmp/got"
        fi
}
run path
run abstract --abstract
exit $fail
