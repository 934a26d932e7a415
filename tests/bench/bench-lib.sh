#!/bin/bash
# SPDX-License-Identifier: MIT
# Sourced by bench-http and bench-idle: the servers they compare, started the
# same way.  Set BENCH (the script's name, for messages) before sourcing; the
# script's own arguments are AIOTOOLS-SERVE [MODULE].
#
# Defaults are the build tree ($top_builddir, else the current directory): the
# real program under daemon/.libs with LD_LIBRARY_PATH at the tree's .libs, not
# libtool's wrapper script.  NGINX_CONNECTIONS (default 4096) is nginx's
# worker_connections; SERVE_ARGS, more options for aiotools-serve.
top=${top_builddir:-.}
if [ $# -eq 0 ] && [ -x "$top/daemon/.libs/aiotools-serve" ]; then
        SERVE=$top/daemon/.libs/aiotools-serve
        export LD_LIBRARY_PATH="$top/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
        SERVE=${1:-$top/daemon/aiotools-serve}
fi
MODULE=${2:-$top/examples/.libs/http-hello.so}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for f in "$SERVE" "$MODULE" "$NGINX"; do
        [ -e "$f" ] || { echo "$BENCH: $f not found (run make; apt-get install nginx-light)" >&2; exit 1; }
done

tmp=$(mktemp -d "/tmp/$BENCH.XXXXXX") || exit 1
pids=()

# Stops every server we started: SIGTERM, then SIGKILL to its whole process
# group (each runs under setsid) if it is still there after 5 s.
stop_servers() {
        local p i
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
        for p in "${pids[@]}"; do
                for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
                kill -KILL -- "-$p" 2>/dev/null
                wait "$p" 2>/dev/null
        done
        pids=()
}
cleanup() {
        stop_servers
        [ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Waits until 127.0.0.1:$1 accepts a connection (pid $2 must stay alive).
wait_port() {
        local i
        for i in $(seq 500); do
                kill -0 "$2" 2>/dev/null || return 1
                (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
                sleep 0.02
        done
        return 1
}

# start_aiotools WORKERS PIN -> sets aio_port
start_aiotools() {
        local log=$tmp/aiotools-$1.log i
        : > "$log"
        # shellcheck disable=SC2086 # SERVE_ARGS is a word list
        setsid $2 "$SERVE" -w "$1" -b 127.0.0.1:0 --stop-timeout 2 ${SERVE_ARGS:-} "$MODULE" 2>"$log" &
        pids+=($!)
        for i in $(seq 500); do
                grep -q ' ready: ' "$log" && break
                kill -0 "$!" 2>/dev/null || break
                sleep 0.02
        done
        aio_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n1)
        if ! grep -q ' ready: ' "$log" || [ -z "$aio_port" ]; then
                echo "$BENCH: aiotools-serve did not become ready:" >&2; cat "$log" >&2; exit 1
        fi
}

# worker_connections + 64, but no more than the hard fd limit (nginx cannot
# raise its limit beyond it and says so in an alert).
nginx_nofile() {
        local want=$((${NGINX_CONNECTIONS:-4096} + 64)) hard
        hard=$(ulimit -Hn)
        if [ "$hard" != unlimited ] && [ "$want" -gt "$hard" ]; then want=$hard; fi
        echo "$want"
}

# start_nginx WORKERS PIN -> sets ngx_port
start_nginx() {
        local dir=$tmp/nginx-$1 try
        mkdir -p "$dir/tmp"
        for try in 1 2 3 4 5; do
                # Below the ephemeral range (32768-60999), where a client of ours may sit.
                ngx_port=$((20000 + RANDOM % 12000))
                (exec 3<>"/dev/tcp/127.0.0.1/$ngx_port") 2>/dev/null && continue
                cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $1;
pid $dir/nginx.pid;
error_log $dir/error.log;
worker_rlimit_nofile $(nginx_nofile);
events { worker_connections ${NGINX_CONNECTIONS:-4096}; }
http {
        access_log off;
        keepalive_timeout 65;
        keepalive_requests 100000000;
        client_body_temp_path $dir/tmp;
        proxy_temp_path $dir/tmp;
        fastcgi_temp_path $dir/tmp;
        uwsgi_temp_path $dir/tmp;
        scgi_temp_path $dir/tmp;
        default_type text/plain;
        server {
                listen 127.0.0.1:$ngx_port;
                location / { return 200 "hello\n"; }
        }
}
EOF
                setsid $2 "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>>"$dir/error.log" &
                pids+=($!)
                wait_port "$ngx_port" "$!" && return 0
                pids=("${pids[@]:0:${#pids[@]}-1}")
        done
        echo "$BENCH: nginx did not start:" >&2; cat "$dir/error.log" >&2; exit 1
}

# Answers "hello\n" with 200?  A benchmark of a wrong answer is no benchmark.
check_hello() {
        local body
        body=$(curl -s -m 5 "http://127.0.0.1:$2/") || { echo "$BENCH: $1 did not answer" >&2; exit 1; }
        [ "$body" = hello ] || { echo "$BENCH: $1 answered '$body'" >&2; exit 1; }
}

