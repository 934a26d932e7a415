# Sourced by the tests/proof-*.sh harnesses (bash): paths, ok/FAIL checks,
# skip-or-fail for missing tools, polling, and cleanup of every process the
# harness started (by PID: the tracked ones and their children).
#
# Environment: top_srcdir, top_builddir (set by `make check`), CI (true: a
# missing tool fails instead of skipping), AIOTOOLS_SHARED_TOOLS (the directory
# of notify-listener and systemd-sandbox; default tests/tools, where copies of
# the shared tools live).
set -u
src=$(cd "${top_srcdir:-.}" && pwd)
bld=$(cd "${top_builddir:-.}" && pwd)
tools="${AIOTOOLS_SHARED_TOOLS:-$src/tests/tools}"
SERVE="$bld/daemon/aiotools-serve"
HELLO="$bld/examples/.libs/http-hello.so"
PROOFMOD="$bld/tests/.libs/proofmod.so"
NL="$tools/notify-listener"
pass=0
fail=0
tracked=()

missing() {
        if [ "${CI:-}" = true ]; then
                echo "FAIL: $1 (CI=true: it must be present)"
                exit 1
        fi
        echo "SKIP: $1"
        exit 77
}

need_built() {
        local f
        for f in "$SERVE" "$HELLO" "$PROOFMOD"; do
                [ -e "$f" ] || { echo "FAIL: $f not built (run make)"; exit 1; }
        done
}

check() { # description, command...
        local d=$1
        shift
        if "$@"; then
                pass=$((pass + 1))
                echo "ok   - $d"
        else
                fail=$((fail + 1))
                echo "FAIL - $d"
        fi
}

# The direct children of a process (empty if it is gone).
children() {
        cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true
}

# A process and all its descendants, parents first.
tree() {
        local c
        [ -d /proc/"$1" ] || return 0
        echo "$1"
        for c in $(children "$1"); do
                tree "$c"
        done
}

# The live (non-zombie) children of a process.
live_children() {
        local c
        for c in $(children "$1"); do
                alive "$c" && echo "$c"
        done
}

track() { tracked+=("$@"); }

alive() { # pid: running and not a zombie
        local st
        st=$(sed -n 's/^State:\s*\(.\).*/\1/p' /proc/"$1"/status 2>/dev/null) || return 1
        [ -n "$st" ] && [ "$st" != Z ]
}

# Ends every tracked process and its descendants: SIGTERM, then SIGKILL
# after 3 s.  Called from the EXIT trap.
cleanup_procs() {
        local p all=() i
        for p in "${tracked[@]}"; do
                all+=($(tree "$p"))
        done
        [ ${#all[@]} -gt 0 ] || return 0
        for p in "${all[@]}"; do
                kill -TERM "$p" 2>/dev/null
        done
        for i in $(seq 60); do
                for p in "${all[@]}"; do
                        alive "$p" && break
                        p=
                done
                [ -z "$p" ] && return 0
                sleep 0.05
        done
        for p in "${all[@]}"; do
                kill -KILL "$p" 2>/dev/null
        done
}

# wait_for SECONDS command...: polls every 50 ms until the command succeeds.
wait_for() {
        local end=$(( $(date +%s%N) / 1000000 + ${1%.*} * 1000 ))
        shift
        while :; do
                "$@" && return 0
                [ $(( $(date +%s%N) / 1000000 )) -ge $end ] && return 1
                sleep 0.05
        done
}

# The port of the first "listening on HOST:PORT" log line in a file.
log_port() {
        sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$1" | head -n1
}

# A TCP port that was free a moment ago.
free_port() {
        python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# ask PORT LINE [TIMEOUT]: sends one command line to proofmod, prints the answer.
ask() {
        python3 - "$1" "$2" "${3:-10}" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=float(sys.argv[3]))
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while not out.endswith(b"\n"):
    d = s.recv(4096)
    if not d:
        break
    out += d
sys.stdout.write(out.decode())
EOF
}

# http_get PORT: one HTTP/1.1 request with Connection: close; prints the status line.
http_get() {
        python3 - "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
out = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    out += d
print(out.split(b"\r\n", 1)[0].decode())
EOF
}

summary() {
        echo "$pass passed, $fail failed"
        [ "$fail" = 0 ]
}
