#!/bin/sh
# The systemd units in contrib/ pass `systemd-analyze verify` with no output at
# all (unknown keys are only warnings with rc 0, so any output fails), and the
# generated unit has every @VAR@ substituted.  The copy verified here runs the
# build tree's aiotools-serve, so that verify's ExecStart= check is real.
# The hardening exposure score is printed, never judged.
# Without systemd-analyze: skip (77), except under CI=true.
set -u
src="${top_srcdir:-.}"
bld=$(cd "${top_builddir:-.}" && pwd)
in="$src/contrib/aiotools-serve@.service.in"
socket="$src/contrib/aiotools-serve@.socket"
gen="$bld/contrib/aiotools-serve@.service"

. "$src/tests/need.sh"
need systemd-analyze systemd
[ -x "$bld/daemon/aiotools-serve" ] || { echo "FAIL: $bld/daemon/aiotools-serve not built"; exit 1; }
[ -f "$gen" ] || { echo "FAIL: $gen not generated"; exit 1; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0

# The installed unit: nothing left to substitute, absolute paths.
if grep -n '@[a-z_]*@' "$gen"; then
        echo "FAIL: unsubstituted variables in $gen"
        fail=1
fi
grep -q '^ExecStart=/[^ ]*/aiotools-serve ' "$gen" || { echo "FAIL: no absolute ExecStart= in $gen"; fail=1; }

# verify [LABEL DIR]: systemd-analyze verify of the pair in DIR; prints its output.
verify() {
        out=$(cd "$2" && systemd-analyze verify --man=no ./aiotools-serve@.service ./aiotools-serve@.socket 2>&1)
        rc=$?
        if [ $rc -ne 0 ] || [ -n "$out" ]; then
                echo "$1: systemd-analyze verify rc=$rc:"
                echo "$out"
                return 1
        fi
        return 0
}

mkdir "$tmp/units" "$tmp/bogus"
sed -e "s|@bindir@|$bld/daemon|g" -e "s|@moduledir@|/usr/local/lib/libaiotools-server|g" -e "s|@sysconfdir@|/etc|g" "$in" \
        > "$tmp/units/aiotools-serve@.service"
cp "$socket" "$tmp/units/aiotools-serve@.socket"
if verify units "$tmp/units"; then
        echo "PASS: systemd-analyze verify: aiotools-serve@.service and aiotools-serve@.socket clean"
else
        echo "FAIL: the units do not verify cleanly"
        fail=1
fi

# The check itself must be able to fail: an unknown key is only a warning.
cp "$tmp/units/aiotools-serve@.service" "$tmp/units/aiotools-serve@.socket" "$tmp/bogus/"
sed -i 's/^\[Service\]$/[Service]\nBogusKey=1/' "$tmp/bogus/aiotools-serve@.service"
if verify bogus "$tmp/bogus" >/dev/null; then
        echo "FAIL: verify did not notice an unknown key; this test would pass anything"
        fail=1
fi

# Informational: the hardening score (lower is better).
score=$(cd "$tmp/units" && systemd-analyze security --offline=true ./aiotools-serve@.service 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p')
echo "figure: unit-exposure ${score:-unknown} (systemd-analyze security, 0 best .. 10 worst)"
exit $fail
