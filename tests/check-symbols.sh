#!/bin/sh
# The shared library exports exactly the functions its public headers declare:
# every exported symbol is a declared aiot_* function, and every declared
# function is exported.  Internal aiot__* names must stay hidden.
set -u
lib="${top_builddir:-.}/.libs/libaiotools-server.so"
inc="${top_srcdir:-.}/include"
[ -f "$lib" ] || { echo "FAIL: $lib not built"; exit 1; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# Defined dynamic symbols, minus the version node itself (an absolute symbol).
nm -D --defined-only "$lib" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u > "$tmp/exported"
# Function names declared in the public headers: an identifier followed by "(",
# on a line that is not a comment and not a function-pointer typedef.
grep -hE '^[A-Za-z_].*\baiot_[a-z0-9_]+[[:space:]]*\(' "$inc"/aiotools.h "$inc"/aiotools/*.h |
        grep -vE '^[[:space:]]*(/\*|\*|typedef)' |
        grep -oE '\baiot_[a-z0-9_]+[[:space:]]*\(' | sed 's/[[:space:](]*$//' | sort -u > "$tmp/declared"

fail=0
bad=$(grep -vE '^aiot_[a-z0-9]' "$tmp/exported" || true)
[ -n "$bad" ] && { echo "FAIL: exported symbols outside the aiot_ namespace:"; echo "$bad"; fail=1; }
bad=$(grep -E '^aiot__' "$tmp/exported" || true)
[ -n "$bad" ] && { echo "FAIL: internal aiot__ symbols exported:"; echo "$bad"; fail=1; }
bad=$(comm -23 "$tmp/exported" "$tmp/declared")
[ -n "$bad" ] && { echo "FAIL: exported but not declared in include/:"; echo "$bad"; fail=1; }
bad=$(comm -13 "$tmp/exported" "$tmp/declared")
[ -n "$bad" ] && { echo "FAIL: declared in include/ but not exported:"; echo "$bad"; fail=1; }
echo "exported symbols: $(wc -l < "$tmp/exported"), declared functions: $(wc -l < "$tmp/declared")"
# A library with no exports at all means the grep above matched nothing.
[ -s "$tmp/exported" ] || { echo "FAIL: no exported symbols"; fail=1; }
[ $fail -eq 0 ] && echo "PASS: exported symbols match the public headers"
exit $fail
