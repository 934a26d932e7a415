#!/bin/bash
# The real aiotools-serve under the real systemd-socket-activate (and
# notify-listener): workers serve on the passed socket and see its name.
#  A. only the passed socket (--fdname=http), -w 2;
#  B. the passed socket mixed with a --bind address: two listeners, each
#     worker sees both, each with its own name.
# The connection that makes systemd-socket-activate exec the daemon must be
# answered too.  Skips (77) without the tools unless CI=true.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
. "${top_srcdir:-.}/tests/proof-lib.sh"
command -v systemd-socket-activate >/dev/null 2>&1 || missing "systemd-socket-activate is not installed (package systemd)"
command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
[ -f "$NL" ] || missing "notify-listener not found at $NL (set AIOTOOLS_SHARED_TOOLS)"
need_built
tmp=$(mktemp -d) || exit 1
trap 'cleanup_procs; rm -rf "$tmp"' EXIT

# The inode of the LISTEN socket(s) on 127.0.0.1:PORT, from /proc/net/tcp.
listen_inodes() {
        local hex
        hex=$(printf '%04X' "$1")
        awk -v p="0100007F:$hex" '$2 == p && $4 == "0A" { print $10 }' /proc/net/tcp
}
has_socket() { # pid inode
        ls -l /proc/"$1"/fd 2>/dev/null | grep -q "socket:\[$2\]"
}

run_case() { # label, extra server args...
        local label=$1 port out reply dpid w ino a2 p2 i rc
        shift
        port=$(free_port)
        out="$tmp/$label.out"
        python3 "$NL" --jsonl --timeout 60 -- systemd-socket-activate -l "127.0.0.1:$port" --fdname=http \
                -E NOTIFY_SOCKET "$SERVE" -w 2 "$@" "$PROOFMOD" >> "$out" 2>&1 &
        local nlpid=$!
        track "$nlpid"
        # systemd-socket-activate listens first and execs the daemon on the first connection.
        wait_for 10 eval 'test -n "$(listen_inodes "$port")"'
        ino=$(listen_inodes "$port")
        reply=$(ask "$port" name 15)
        dpid=$(children "$nlpid" | head -n1)
        echo "# [$label] first connection: $reply"
        check "[$label] the first connection is answered with the passed socket's name http" \
                grep -q "^name=http address=127.0.0.1:$port index=[01] pid=[0-9]* ppid=$dpid\$" <<<"$reply"
        check "[$label] log: 'listening on 127.0.0.1:$port (socket activation, name http)'" \
                grep -q "listening on 127.0.0.1:$port (socket activation, name http)" "$out"
        check "[$label] READY=1 sent through the forwarded NOTIFY_SOCKET" \
                wait_for 10 grep -q "\"pid\": $dpid, \"fields\": {\"READY\": \"1\"" "$out"
        check "[$label] 2 workers" wait_for 5 eval 'test "$(children "$dpid" | wc -l)" = 2'
        check "[$label] still exactly one listening socket on the port (inode $ino), not rebound" \
                test "$(listen_inodes "$port")" = "$ino"
        for w in $(children "$dpid"); do
                check "[$label] worker $w holds the passed socket" has_socket "$w" "$ino"
        done
        for i in 1 2 3 4 5 6; do
                ask "$port" name 5
        done > "$tmp/$label.names"
        check "[$label] 6 more connections all answered as http by a worker" \
                test "$(grep -c "^name=http address=127.0.0.1:$port index=[01] pid=[0-9]* ppid=$dpid\$" "$tmp/$label.names")" = 6
        if [ $# -gt 0 ]; then
                p2=$(grep -v 'socket activation' "$out" | sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' | head -n1)
                a2=$(ask "$p2" name)
                echo "# [$label] the --bind listener: $a2"
                check "[$label] the --bind listener (port $p2) is served with its own name, not http" \
                        eval 'grep -q "^name=[^ ]* address=127.0.0.1:$p2 index=[01] " <<<"$a2" && ! grep -q "^name=http " <<<"$a2"'
        fi
        kill -TERM "$dpid"
        for i in $(seq 200); do
                alive "$nlpid" || break
                sleep 0.05
        done
        wait "$nlpid"
        rc=$?
        check "[$label] exit status 0 after SIGTERM (got $rc)" test "$rc" = 0
}

run_case activated
run_case mixed -b 127.0.0.1:0
summary
