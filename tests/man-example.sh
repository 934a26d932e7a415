#!/bin/sh
# SPDX-License-Identifier: MIT
# The example program of libaiotools-server(3) compiles warning-free against
# the build tree's library, runs, and prints what the page says it prints, so
# the documented example cannot rot.
#
# The program is the first literal display (.Bd -literal ... .Ed) of the
# EXAMPLES section; the roff escapes it needs (\e for a backslash, \& before a
# leading dot) are undone here.  It is self-testing: its client tasks connect to
# its own echo server (a worker of aiot_server_run) and check the replies.
set -u

: "${top_builddir:=.}"
: "${top_srcdir:=.}"
page="$top_srcdir/man/libaiotools-server.3"
dir="$top_builddir/tests/man-example.d"

rm -rf "$dir"
mkdir -p "$dir" || exit 1

awk '
        /^\.Sh / { in_ex = ($2 == "EXAMPLES") }
        in_ex && !done && /^\.Bd -literal/ { copying = 1; next }
        copying && /^\.Ed/ { copying = 0; done = 1; next }
        copying { print }
' "$page" | sed -e 's/\\&//g' -e 's/\\(aq/'"'"'/g' -e 's/\\-/-/g' -e 's/\\e/\\/g' > "$dir/example.c"
if ! grep -q 'aiot_worker_serve' "$dir/example.c"; then
        echo "FAIL: no example program found in the EXAMPLES section of $page" >&2
        exit 1
fi

# The compiler and flags the tree is built with (a sanitizer build needs its
# flags on the program too).
mkvar() {
        sed -n "s/^$1 = //p" "$top_builddir/Makefile" | head -n 1
}
CC=$(mkvar CC)
CFLAGS=$(mkvar CFLAGS)
WARN_CFLAGS=$(mkvar WARN_CFLAGS)
SAN_CFLAGS=$(mkvar SAN_CFLAGS)
SAN_LDFLAGS=$(mkvar SAN_LDFLAGS)

# shellcheck disable=SC2086 # the flag variables are word lists
if ! "$top_builddir/libtool" --silent --tag=CC --mode=link $CC $CFLAGS $WARN_CFLAGS -Werror \
        $SAN_CFLAGS $SAN_LDFLAGS -I"$top_srcdir/include" -o "$dir/example" "$dir/example.c" \
        "$top_builddir/libaiotools-server.la"; then
        echo "FAIL: the example of $page does not compile cleanly (source: $dir/example.c)" >&2
        exit 1
fi

timeout 60 "$dir/example" > "$dir/out" 2> "$dir/err"
rc=$?
printf 'client 0: ok\nclient 1: ok\nclient 2: ok\nserved 3 connections\n' > "$dir/expected"
if [ $rc -ne 0 ] || ! cmp -s "$dir/out" "$dir/expected"; then
        echo "FAIL: the example exited with $rc; its output:" >&2
        cat "$dir/out" "$dir/err" >&2
        echo "expected:" >&2
        cat "$dir/expected" >&2
        exit 1
fi
if [ -s "$dir/err" ]; then
        echo "FAIL: the example wrote to stderr:" >&2
        cat "$dir/err" >&2
        exit 1
fi
echo "PASS: the example of libaiotools-server(3) builds and serves 3 connections"
rm -rf "$dir"
exit 0
