#!/bin/sh
# The shared library exports exactly the functions its public headers declare,
# and the version script names exactly those: every exported symbol is a
# declared aiot_* function, every declared function is exported and listed in
# src/libaiotools-server.sym, which lists nothing else.  Internal aiot__ names
# must stay hidden.
set -u
lib="${top_builddir:-.}/.libs/libaiotools-server.so"
inc="${top_srcdir:-.}/include"
sym="${top_srcdir:-.}/src/libaiotools-server.sym"
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

# The names of the version script's global: section.
sed -n '/^global:/,/^local:/p' "$sym" | sed -n 's/^[[:space:]]*\(aiot_[a-z0-9_]*\);$/\1/p' | sort -u > "$tmp/listed"

fail=0
bad=$(comm -3 "$tmp/listed" "$tmp/declared")
[ -n "$bad" ] && { echo "FAIL: $sym and the headers differ (left: only listed, right: only declared):"; echo "$bad"; fail=1; }
bad=$(grep -vE '^aiot_[a-z0-9]' "$tmp/exported" || true)
[ -n "$bad" ] && { echo "FAIL: exported symbols outside the aiot_ namespace:"; echo "$bad"; fail=1; }
bad=$(grep -E '^aiot__' "$tmp/exported" || true)
[ -n "$bad" ] && { echo "FAIL: internal aiot__ symbols exported:"; echo "$bad"; fail=1; }
bad=$(comm -23 "$tmp/exported" "$tmp/declared")
[ -n "$bad" ] && { echo "FAIL: exported but not declared in include/:"; echo "$bad"; fail=1; }
bad=$(comm -13 "$tmp/exported" "$tmp/declared")
[ -n "$bad" ] && { echo "FAIL: declared in include/ but not exported:"; echo "$bad"; fail=1; }
echo "exported symbols: $(wc -l < "$tmp/exported"), declared functions: $(wc -l < "$tmp/declared"), listed in the version script: $(wc -l < "$tmp/listed")"
# A library with no exports at all means the grep above matched nothing.
[ -s "$tmp/exported" ] || { echo "FAIL: no exported symbols"; fail=1; }
[ $fail -eq 0 ] && echo "PASS: exported symbols match the public headers and the version script"
exit $fail
