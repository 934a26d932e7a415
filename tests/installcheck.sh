#!/bin/sh
# SPDX-License-Identifier: MIT
# An installed libaiotools-server as a module author meets it: builds
# tests/installcheck-mod.c out of the tree with nothing but
#   cc -shared -fPIC mod.c -o mod.so $(pkg-config --cflags --libs libaiotools-server)
# then has the installed aiotools-serve --check it, serves it on 127.0.0.1 with
# two workers and talks to it with a real client (python3).  Run by
# `make installcheck` (PKG_CONFIG_PATH and AIOT_SERVE point into the install)
# and by contrib/ci-packages.sh against the installed .deb packages (the
# system's pkg-config and /usr/bin/aiotools-serve).
#   AIOT_SERVE     the aiotools-serve to run (default: the one on PATH)
#   AIOT_PREFIX    pkg-config's prefix variable, for an install under DESTDIR
#   CC             the compiler (default: cc)
# Exits 0 when every step passed; prints one line per step.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
serve=${AIOT_SERVE:-$(command -v aiotools-serve || echo aiotools-serve)}
cc=${CC:-cc}
tmp=$(mktemp -d)
pid=
cleanup() {
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() {
        echo "FAIL: $*"
        [ -f "$tmp/serve.log" ] && sed 's/^/  serve: /' "$tmp/serve.log"
        exit 1
}

pc() { pkg-config ${AIOT_PREFIX:+--define-variable=prefix="$AIOT_PREFIX"} "$@" libaiotools-server; }

# The .pc resolves without libev.pc (Debian's libev-dev ships none).
pc --exists || fail "pkg-config finds no usable libaiotools-server.pc (PKG_CONFIG_PATH=${PKG_CONFIG_PATH:-})"
[ -z "$(pc --print-requires --print-requires-private)" ] || fail "the .pc requires other .pc files: $(pc --print-requires --print-requires-private)"
pc --static --libs >/dev/null || fail "pkg-config --static --libs libaiotools-server failed"
echo "ok: pkg-config libaiotools-server $(pc --modversion): $(pc --cflags --libs)"

cp "$here/installcheck-mod.c" "$tmp/mod.c"
# shellcheck disable=SC2046
(cd "$tmp" && $cc -Wall -Wextra -Werror -shared -fPIC mod.c -o mod.so $(pc --cflags --libs)) ||
        fail "$cc could not build a module against the installed headers"
echo "ok: built mod.so out of the tree with $cc"

"$serve" --check "$tmp/mod.so" || fail "$serve --check rejected mod.so"
echo "ok: $serve --check mod.so"

if ! command -v python3 >/dev/null 2>&1; then
        [ "${CI:-}" = true ] && fail "python3 (the client) is missing; CI=true requires it"
        echo "SKIP: no python3 for the client; mod.so was not served"
        exit 0
fi
"$serve" -w 2 -b 127.0.0.1:0 "$tmp/mod.so" >"$tmp/serve.log" 2>&1 &
pid=$!
port=
for _ in $(seq 200); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$tmp/serve.log" | head -n 1)
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || fail "$serve exited before listening"
        sleep 0.05
done
[ -n "$port" ] || fail "$serve logged no 'listening on 127.0.0.1:PORT' within 10 s"
answer=$(python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
out = b""
for word in (b"deb", b"world"):
    s.sendall(word + b"\n")
    while not out.endswith(b"\n"):
        d = s.recv(4096)
        if not d:
            break
        out += d
    out += b"|"
print(out.decode().replace("\n", ""))
PY
) || fail "the client got no answer from 127.0.0.1:$port"
[ "$answer" = "hello, deb|hello, world|" ] || fail "the client got '$answer', not 'hello, deb|hello, world|'"
echo "ok: served on 127.0.0.1:$port with 2 workers; the client got '$answer'"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" = 0 ] || fail "$serve exited with $rc after SIGTERM, not 0"
echo "ok: SIGTERM stopped it cleanly (exit 0)"
