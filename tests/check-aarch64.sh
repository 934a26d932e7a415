#!/bin/sh
# SPDX-License-Identifier: MIT
# The aarch64 context switch, tested where no aarch64 machine is at hand:
# cross-builds tests/ctx-standalone.c with src/runtime/arch/switch-aarch64.S as a static
# binary and runs it under qemu-user.
#
# Needs Debian's gcc-aarch64-linux-gnu and qemu-user.  Without them the test is
# skipped (exit 77), except in CI (CI=true), where a missing tool is a failure:
# CI installs both, so a skip there would hide an untested switch.
# AARCH64_CC and QEMU_AARCH64 override the tool names.
set -u

srcdir=${top_srcdir:-$(dirname "$0")/..}
builddir=${top_builddir:-.}
cc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
qemu=${QEMU_AARCH64:-qemu-aarch64}
out=$builddir/tests/ctx-standalone-aarch64

missing() {
        if [ "${CI:-}" = true ]; then
                echo "check-aarch64: $1 is missing; CI must install it (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2
                exit 1
        fi
        echo "check-aarch64: $1 not found, skipped (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2
        exit 77
}

command -v "$cc" >/dev/null 2>&1 || missing "$cc"
command -v "$qemu" >/dev/null 2>&1 || missing "$qemu"

mkdir -p "$builddir/tests"
# Both an optimised build (values live in callee-saved registers) and one with
# branch protection (BTI landing pads, PAC in the C code around the switch).
for flags in "-O2" "-O1 -mbranch-protection=standard"; do
        # shellcheck disable=SC2086 # flags is a word list
        if ! "$cc" -static $flags -Wall -Wextra -Werror -I"$srcdir/src" -I"$srcdir/tests" -o "$out" \
                "$srcdir/tests/ctx-standalone.c" "$srcdir/src/runtime/ctx.c" "$srcdir/src/runtime/arch/switch-aarch64.S" -lm; then
                echo "check-aarch64: cross build failed ($flags)" >&2
                exit 1
        fi
        result=$("$qemu" "$out")
        rc=$?
        echo "$result"
        if [ "$rc" -ne 0 ] || [ "$(echo "$result" | tail -n 1)" != ok ]; then
                echo "check-aarch64: ctx-standalone failed under $qemu ($flags): exit $rc" >&2
                exit 1
        fi
done
rm -f "$out"
echo "check-aarch64: aarch64 switch ok under $qemu"
