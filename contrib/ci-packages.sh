#!/bin/sh
# SPDX-License-Identifier: MIT
# The Debian packages end to end, as CI runs them after the test suite (root,
# Debian 12): from a clean clone of HEAD, installs the build dependencies
# (apt-get build-dep), builds the packages with dpkg-buildpackage (nocheck by
# default: the suite already ran; DEB_BUILD_OPTIONS from the environment wins),
# runs lintian (an error fails), installs them with dpkg -i, builds a module
# against them and serves it (tests/installcheck.sh), checks the installed
# examples, completion and units, runs the instances aiotools-serve@echo (its
# packaged /etc/aiotools-serve/echo.conf), @api and the socket of @http-hello
# under real systemd in tests/tools/systemd-sandbox (ci-packages-systemd.sh),
# then purges them, so that the machine is left as it was.
#   contrib/ci-packages.sh [OUTDIR]   (the .debs are kept in OUTDIR if given)
# Refuses to run when one of the packages is already installed (it would purge it).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "ci-packages: needs root (apt-get, dpkg -i)" >&2; exit 1; }
work=$(mktemp -d)
keep=${1:-}
installed=
export DEBIAN_FRONTEND=noninteractive

say() { echo "ci-packages: $*"; }
fail() { echo "ci-packages: FAIL: $*" >&2; exit 1; }

packages() { sed -n 's/^Package: //p' "$top/debian/control"; }

purge() {
        [ -n "$installed" ] || return 0
        # shellcheck disable=SC2046
        dpkg --purge $(packages) >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; return 1; }
        installed=
        left=$(for p in $(packages); do dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "$p" 2>/dev/null; done | grep -v '^un ' || true)
        [ -z "$left" ] || { echo "ci-packages: still known to dpkg after the purge: $left" >&2; return 1; }
        say "purged $(packages | tr '\n' ' ')"
}
trap 'rc=$?; purge || rc=1; rm -rf "$work"; exit $rc' EXIT
trap 'exit 1' INT TERM

for p in $(packages); do
        if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
                fail "$p is installed already; purge it first (this script purges what it installs)"
        fi
done

# ---- build from a clean clone, with only Debian packages
git clone -q "$top" "$work/src"
say "building $(git -C "$work/src" log -1 --format=%h) in $work/src"
: "${DEB_BUILD_OPTIONS=nocheck}"
export DEB_BUILD_OPTIONS
case " $DEB_BUILD_OPTIONS " in *" nocheck "*) profiles=nocheck ;; *) profiles= ;; esac
apt-get install -y -q --no-install-recommends dpkg-dev lintian >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt-get install dpkg-dev lintian"; }
apt-get build-dep -y -q ${profiles:+-P "$profiles"} "$work/src" >>"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt-get build-dep"; }
# The source package first, from the clean clone (lintian checks it too).
(cd "$work" && dpkg-source -b src) >"$work/source.log" 2>&1 || { cat "$work/source.log"; fail "dpkg-source -b"; }
start=$(date +%s)
(cd "$work/src" && dpkg-buildpackage -us -uc -b ${profiles:+-P"$profiles"}) >"$work/build.log" 2>&1 ||
        { tail -n 60 "$work/build.log"; fail "dpkg-buildpackage -us -uc -b"; }
say "dpkg-buildpackage -us -uc -b (DEB_BUILD_OPTIONS=$DEB_BUILD_OPTIONS): ok in $(( $(date +%s) - start )) s," \
        "$(grep -c 'warning' "$work/build.log" || true) lines with 'warning' in its output"
changes=$(ls "$work"/*.changes)
lrc=0
lintian --fail-on error "$changes" "$work"/*.dsc >"$work/lintian.raw" 2>&1 || lrc=$?
grep -v '^running with root privileges' "$work/lintian.raw" >"$work/lintian.log" || true
say "lintian (binary and source): $(grep -c '^E:' "$work/lintian.log" || true) errors, $(grep -c '^W:' "$work/lintian.log" || true) warnings, $(grep -c '^[IPX]:' "$work/lintian.log" || true) other tags"
sed 's/^/  /' "$work/lintian.log"
[ "$lrc" = 0 ] || fail "lintian exited with $lrc (errors, or it could not run)"
[ -z "$keep" ] || { mkdir -p "$keep" && cp "$work"/*.deb "$changes" "$keep"/; }

# ---- install, use, purge
# The packages of debian/control, not their -dbgsym companions.
debs=$(for p in $(packages); do ls "$work/${p}"_*.deb; done)
installed=yes
# shellcheck disable=SC2086
dpkg -i $debs >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; }
say "installed $(for d in $debs; do printf '%s ' "${d##*/}"; done)"
CC=cc AIOT_SERVE=/usr/bin/aiotools-serve sh "$top/tests/installcheck.sh" >"$work/installcheck.log" 2>&1 ||
        { cat "$work/installcheck.log"; fail "tests/installcheck.sh against the packages"; }
say "a module built against the packages with cc and pkg-config:"
sed 's/^/  /' "$work/installcheck.log"

moddir=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/libaiotools-server
for m in "$moddir"/*.so; do
        aiotools-serve --check "$m" >/dev/null || fail "aiotools-serve --check $m (installed example)"
done
say "aiotools-serve --check accepts every installed example: $(cd "$moddir" && ls ./*.so | sed 's|^\./||' | tr '\n' ' ')"
bash -c '. /usr/share/bash-completion/bash_completion && . /usr/share/bash-completion/completions/aiotools-serve && complete -p aiotools-serve' >/dev/null ||
        fail "the installed bash completion does not load"
verify=$(systemd-analyze verify --man=no /lib/systemd/system/aiotools-serve@.service /lib/systemd/system/aiotools-serve@.socket 2>&1) ||
        fail "systemd-analyze verify of the installed units: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify of the installed units: $verify"
say "bash completion loads; systemd-analyze verify of /lib/systemd/system/aiotools-serve@.{service,socket}: clean"

# ---- the packaged units under real systemd
sbx=${AIOTOOLS_SHARED_TOOLS:-$top/tests/tools}/systemd-sandbox
if ! "$sbx" check >/dev/null 2>&1; then
        [ "${CI:-}" = true ] && fail "systemd-sandbox check: $("$sbx" check 2>&1 | tail -n 1)"
        say "SKIP: no systemd sandbox here ($("$sbx" check 2>&1 | tail -n 1))"
        exit 0
fi
AIOTOOLS_SBX=$sbx AIOTOOLS_SBX_NAME=aiot-pkg-$$ bash "$top/contrib/ci-packages-systemd.sh" || fail "the packaged units in the systemd sandbox"
