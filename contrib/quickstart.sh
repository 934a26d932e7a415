#!/bin/sh
# Quick start for a fresh Debian machine (run as root from a clone of the tree):
#   contrib/quickstart.sh run    install what is missing, build, serve the echo example
#   contrib/quickstart.sh test   install what is missing, build, run `make check`,
#                                `make check-nopidfd` (the same under a no-pidfd
#                                seccomp filter), then make check again in an
#                                ASan+UBSan build
# Builds live in ./build and ./build-asan so the source tree stays clean.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
build="$top/build"

# Build and test dependencies, as Debian package names.
DEPS="build-essential autoconf automake libtool pkg-config libev-dev libsystemd-dev
      check libsubunit-dev libseccomp-dev mandoc valgrind systemd python3 bc wrk
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user bash-completion"
# TLS (issue 15): OpenSSL to build it, the openssl and curl clients for tests/proof-tls.sh.
DEPS="$DEPS libssl-dev openssl curl"

install_missing() {
        missing=""
        for p in $DEPS; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
                        missing="$missing $p"
        done
        [ -z "$missing" ] && return 0
        if [ "$(id -u)" -ne 0 ]; then
                echo "quickstart: missing packages:$missing (run as root, or apt-get install them)" >&2
                exit 1
        fi
        echo "quickstart: installing$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
}

# build DIR [CONFIGURE-ARGS...]: configure (once) and build the tree in DIR.
build() {
        dir=$1
        shift
        cd "$top"
        [ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] || ./autogen.sh
        mkdir -p "$dir"
        cd "$dir"
        [ -f Makefile ] || ../configure "$@"
        make -j"$(nproc)"
}

# check DIR [TARGET]: runs make TARGET (default check) there and prints every
# Check suite's summary.
check() {
        rc=0
        cd "$1"
        make -j"$(nproc)" "${2:-check}" || rc=$?
        echo "quickstart: results in $1"
        find tests -name '*.log' | sort | while read -r log; do
                sed -n -E "s|^([0-9]+%: Checks: .*)|  ${log%.log}: \\1|p" "$log"
        done
        grep -E '^# (TOTAL|PASS|SKIP|FAIL|ERROR)' test-suite.log || true
        [ $rc -eq 0 ] || tail -n 100 test-suite.log
        return $rc
}

case "${1:-}" in
run)
        install_missing
        build "$build" --enable-werror
        echo "quickstart: serving the echo example module on 127.0.0.1:8080 with 2 workers"
        echo "quickstart: talk to it from another terminal: nc 127.0.0.1 8080 (every line comes back)"
        echo "quickstart: Ctrl-C here stops it (open connections get up to 30 s to finish)"
        exec ./daemon/aiotools-serve -w 2 -b 127.0.0.1:8080 examples/.libs/echo.so
        ;;
test)
        install_missing
        build "$build" --enable-werror
        check "$build"
        # The whole suite again as on a kernel without pidfd (pre-5.3).
        check "$build" check-nopidfd
        build "$top/build-asan" --enable-werror --enable-sanitizers
        check "$top/build-asan"
        ;;
*)
        echo "usage: $0 run|test" >&2
        exit 2
        ;;
esac
