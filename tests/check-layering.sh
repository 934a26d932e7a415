#!/bin/sh
# SPDX-License-Identifier: MIT
# Dependencies point downwards only (DESIGN.md, "Modules and their dependency
# order"): a file may include the headers of its own layer and of the layers
# below it, never one above.  The layers, lowest first:
#
#   0 toolkit  src/macro.h, config.h
#   1 log      src/log.c                       aiotools/log.h
#   2 fork     src/fork.c, fork-internal.h     aiotools/fork.h
#   3 runtime  src/runtime/                    aiotools/task.h, aiotools/scope.h
#   4 io       src/io.c                        aiotools/io.h
#              src/blocking.c, src/resolve.c   aiotools/blocking.h
#   5 timer    src/timer.c                     aiotools/timer.h
#   6 sd       src/sd.c, sd-internal.h         aiotools/sd.h
#   7 listen   src/listen.c                    aiotools/listen.h
#   8 server   src/server/, src/proctitle.*    aiotools/server.h
#   9 conn     src/conn.c, conn-internal.h,    aiotools/conn.h
#              src/server/serve.c
#  10 module                                   aiotools/module.h, aiotools.h
#
# One arrow is forbidden although it points down: the runtime knows nothing of
# processes (it must not include fork's headers; fork.c detaches its children
# from a dying loop through its own ev_cleanup watchers).
#
# Private headers stay inside their part: src/runtime/runtime-private.h,
# ctx.h and stack.h only in src/runtime/ (the runtime's contract for the
# layers above is src/runtime/runtime.h); src/server/server-internal.h only in
# src/server/.  daemon/, examples/ and the modules the tests load include only
# the public headers (daemon/ also its own cli.h and ctl.h).  The unit tests may reach
# into internals and are not checked.
set -u
src="${top_srcdir:-.}"
cd "$src" || exit 1

# conn sits above server (it serves a worker) although its file lives in
# src/server/: serve.c is the conn layer's and uses the public server API.
# layer_of PATH: the layer of a source or header path (relative to the tree),
# or "" for a path outside the library (system headers).
layer_of() {
        case $1 in
        src/macro.h | config.h) echo 0 ;;
        src/log.c | include/aiotools/log.h) echo 1 ;;
        src/fork.c | src/fork-internal.h | include/aiotools/fork.h) echo 2 ;;
        src/runtime/* | include/aiotools/task.h | include/aiotools/scope.h) echo 3 ;;
        src/io.c | include/aiotools/io.h) echo 4 ;;
        src/blocking.c | src/resolve.c | include/aiotools/blocking.h) echo 4 ;;
        src/timer.c | include/aiotools/timer.h) echo 5 ;;
        src/sd.c | src/sd-internal.h | include/aiotools/sd.h) echo 6 ;;
        src/listen.c | include/aiotools/listen.h) echo 7 ;;
        src/conn.c | src/conn-internal.h | src/server/serve.c | include/aiotools/conn.h) echo 9 ;;
        src/server/* | src/proctitle.c | src/proctitle.h | include/aiotools/server.h) echo 8 ;;
        include/aiotools/module.h | include/aiotools.h) echo 10 ;;
        src/* | include/*) echo "?" ;;
        *) echo "" ;;
        esac
}

# resolve FILE NAME QUOTED: the tree path an #include of NAME in FILE reads, or
# NAME itself when it is not in the tree (a system header).
resolve() {
        dir=$(dirname "$1")
        if [ "$3" = q ] && [ -f "$dir/$2" ]; then
                echo "$dir/$2"
        elif [ -f "src/$2" ]; then
                echo "src/$2"
        elif [ -f "include/$2" ]; then
                echo "include/$2"
        elif [ "$2" = config.h ]; then
                echo config.h
        else
                echo "$2"
        fi
}

fail=0
files=0
edges=0
bad() {
        echo "FAIL: $1"
        fail=1
}

# includes FILE: "q NAME" or "a NAME" for each #include "NAME" / <NAME>.
includes() {
        sed -n -e 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/q \1/p' \
                -e 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*<\([^>]*\)>.*/a \1/p' "$1"
}

# The library and its public headers.
for f in src/*.c src/*.h src/runtime/*.c src/runtime/*.h src/server/*.c src/server/*.h \
        include/aiotools.h include/aiotools/*.h; do
        [ -f "$f" ] || continue
        files=$((files + 1))
        mine=$(layer_of "$f")
        [ "$mine" = "?" ] && { bad "$f belongs to no layer (add it to tests/check-layering.sh)"; continue; }
        includes "$f" > "${TMPDIR:-/tmp}/layering.$$"
        while read -r kind name; do
                path=$(resolve "$f" "$name" "$kind")
                theirs=$(layer_of "$path")
                [ -n "$theirs" ] || continue
                edges=$((edges + 1))
                if [ "$theirs" = "?" ]; then
                        bad "$f includes $path, which belongs to no layer"
                        continue
                fi
                case $path in
                src/runtime/runtime-private.h | src/runtime/ctx.h | src/runtime/stack.h)
                        case $f in src/runtime/*) ;; *) bad "$f includes $path, private to src/runtime/" ;; esac ;;
                src/server/server-internal.h)
                        case $f in src/server/*) ;; *) bad "$f includes $path, private to src/server/" ;; esac ;;
                src/conn-internal.h)
                        case $f in src/conn.c | src/server/serve.c) ;; *) bad "$f includes $path, private to the conn layer" ;; esac ;;
                src/fork-internal.h | include/aiotools/fork.h)
                        case $f in src/runtime/*) bad "$f includes $path: the runtime knows nothing of fork" ;; esac ;;
                esac
                [ "$theirs" -le "$mine" ] ||
                        bad "$f (layer $mine) includes $path (layer $theirs): a dependency upwards"
        done < "${TMPDIR:-/tmp}/layering.$$"
done

# Clients of the library: public headers only.
for f in daemon/*.c daemon/*.h examples/*.c tests/srvtest.c tests/proofmod.c tests/badabi.c tests/nosym.c tests/oldabi.c tests/ctlmod.c; do
        [ -f "$f" ] || continue
        files=$((files + 1))
        includes "$f" > "${TMPDIR:-/tmp}/layering.$$"
        while read -r kind name; do
                path=$(resolve "$f" "$name" "$kind")
                case $path in
                include/*) edges=$((edges + 1)) ;;
                daemon/cli.h | daemon/ctl.h | daemon/conffile.h) edges=$((edges + 1)) ;;
                src/* | config.h) bad "$f includes $path: clients of the library use only include/" ;;
                esac
        done < "${TMPDIR:-/tmp}/layering.$$"
done
rm -f "${TMPDIR:-/tmp}/layering.$$"

echo "files: $files, includes within the tree: $edges"
[ $fail -eq 0 ] && echo "PASS: every include points to the file's own layer or below"
exit $fail
