#!/bin/sh
# Every man page is lint-clean (mandoc -Tlint), and every public function has a
# page that names it.
set -u
src="${top_srcdir:-.}"
. "$src/tests/need.sh"
need mandoc mandoc
fail=0
for page in "$src"/man/*.[1-9]; do
        # A page that is only ".so other.3" is a link; lint its target instead.
        head -n 1 "$page" | grep -q '^\.so ' && continue
        out=$(mandoc -Tlint -W warning "$page" 2>&1)
        if [ -n "$out" ]; then
                echo "FAIL: $page"
                echo "$out"
                fail=1
        fi
done
for fn in $(grep -hE '^[A-Za-z_].*\baiot_[a-z0-9_]+[[:space:]]*\(' "$src"/include/aiotools/*.h |
            grep -vE '^[[:space:]]*(/\*|\*|typedef)' |
            grep -oE '\baiot_[a-z0-9_]+[[:space:]]*\(' | sed 's/[[:space:](]*$//' | sort -u); do
        if ! grep -qw -- "$fn" "$src"/man/*.[1-9]; then
                echo "FAIL: no man page documents $fn"
                fail=1
        fi
done
[ $fail -eq 0 ] && echo "PASS: $(ls "$src"/man/*.[1-9] | wc -l) man pages lint-clean, every public function documented"
exit $fail
